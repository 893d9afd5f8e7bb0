//! The C compiler of `make image` (ring's C and assembly in the server) is the
//! one `enclave/inputs.lock` pins by SHA-256 (kind `cc`), unpacked by
//! `enclave/musl-cc.sh`, never the host's: it runs its own `cc1` and `as`,
//! compiles against musl's headers, names itself in what it compiles, and a
//! package that does not match its pin is refused.
//!
//! Downloads the six pinned packages (35 MB) once into the shared cache.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{outcome, repo};

/// Runs musl-cc.sh with `envs`; (success, stdout, stderr).
fn musl_cc(envs: &[(&str, &Path)]) -> (bool, String, String) {
    outcome(
        Command::new(repo().join("enclave/musl-cc.sh"))
            .envs(envs.iter().map(|(k, v)| (*k, *v)))
            .output()
            .expect("running enclave/musl-cc.sh"),
    )
}

#[test]
fn the_pinned_compiler_runs_its_own_parts_against_musl() {
    let (ok, stdout, stderr) = musl_cc(&[]);
    assert!(ok, "musl-cc.sh failed:\n{stderr}");
    let tree = PathBuf::from(stdout.trim());
    assert!(tree.join("cc").is_file(), "{}", tree.display());

    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("probe.c");
    // glibc's headers define __GLIBC__; musl's do not.
    std::fs::write(
        &source,
        "#include <stdio.h>\n#ifdef __GLIBC__\n#error glibc headers\n#endif\n\
         int probe(const char *s) { return puts(s); }\n",
    )
    .unwrap();
    let object = work.path().join("probe.o");
    let out = Command::new(tree.join("cc"))
        .arg("-v")
        .arg("-O2")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // The compiler proper and the assembler it ran, and the headers it read.
    let tree_text = tree.to_string_lossy();
    let cc1 = log
        .lines()
        .find(|l| l.contains("/cc1 "))
        .expect("gcc -v names cc1");
    assert!(cc1.trim_start().starts_with(&*tree_text), "{cc1}");
    let assembler = log
        .lines()
        .find(|l| l.contains("/as "))
        .expect("gcc -v names as");
    assert!(
        assembler.trim_start().starts_with(&*tree_text),
        "{assembler}"
    );
    assert!(
        log.contains(&format!("{tree_text}/usr/include/x86_64-linux-musl")),
        "{log}"
    );
    // What ends up in the binaries: the pinned version, by name.
    let bytes = std::fs::read(&object).unwrap();
    let comment = b"GCC: (Debian 12.2.0-14+deb12u1) 12.2.0";
    assert!(
        bytes.windows(comment.len()).any(|w| w == comment),
        "the object does not name the pinned gcc"
    );
}

#[test]
fn a_compiler_package_that_does_not_match_its_pin_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    // The cached gcc-12 package, tampered with; no network to fetch another.
    let planted = cache.path().join("gcc-12_12.2.0-14+deb12u1_amd64.deb");
    std::fs::write(&planted, b"not the pinned gcc").unwrap();
    let nowhere = Path::new("http://127.0.0.1:9");
    let (ok, stdout, stderr) = musl_cc(&[
        ("CACHE", cache.path()),
        ("NAUTILUS_CACHE", base.path()),
        ("http_proxy", nowhere),
        ("https_proxy", nowhere),
        ("HTTPS_PROXY", nowhere),
    ]);
    assert!(!ok, "a tampered compiler was accepted: {stdout}");
    assert!(
        stderr.contains("could not download gcc-12 12.2.0-14+deb12u1 matching sha256:b46f33cc"),
        "{stderr}"
    );
    assert!(
        !planted.exists(),
        "the tampered package stayed in the cache"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        !base.path().join("musl-cc").exists(),
        "something was unpacked"
    );
}

/// The Rust binaries of the image are linked by the pinned gcc and binutils'
/// `ld`, not the host's `cc` and `ld` (rustc's musl target names no linker, so
/// without one it runs `cc` from PATH, and that runs the host's `ld`): the
/// host's binutils would decide the layout of the measured binaries.
///
/// `make enclave-binaries` runs with a PATH whose `cc`, `gcc`, `ld`, ... only
/// write down that they ran and fail; its cargo is a script that builds a
/// small Rust program for the enclave's target with the real cargo and the
/// environment the Makefile gave it (the image's own binaries take minutes).
#[test]
fn make_enclave_binaries_links_with_the_pinned_linker_not_the_hosts() {
    let work = tempfile::tempdir().unwrap();
    let host_tools = work.path().join("host-tools");
    let ran = work.path().join("host-tools-ran");
    std::fs::create_dir(&host_tools).unwrap();
    for tool in [
        "cc",
        "gcc",
        "c99",
        "ld",
        "ld.bfd",
        "ld.gold",
        "ld.lld",
        "x86_64-linux-gnu-gcc",
        "x86_64-linux-gnu-ld",
        "x86_64-linux-musl-gcc",
        "musl-gcc",
    ] {
        let path = host_tools.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\nexit 1\n", ran.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    let program = work.path().join("probe");
    std::fs::create_dir_all(program.join("src")).unwrap();
    std::fs::write(
        program.join("Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        program.join("src/main.rs"),
        "fn main() { println!(\"linked\"); }\n",
    )
    .unwrap();
    let real_cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let cargo = work.path().join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\nexec '{real_cargo}' build --offline --release --target x86_64-unknown-linux-musl \
             --manifest-path '{}/Cargo.toml' --target-dir '{}/target'\n",
            program.display(),
            program.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let path = format!(
        "{}:{}",
        host_tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "enclave-binaries"])
        .arg(format!("CARGO={}", cargo.display()))
        .env("PATH", &path)
        .output()
        .expect("running make");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let host_runs = std::fs::read_to_string(&ran).unwrap_or_default();
    assert!(
        host_runs.is_empty(),
        "the host's tools ran while linking the enclave's binaries:\n{host_runs}\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    let binary = program.join("target/x86_64-unknown-linux-musl/release/probe");
    let run = Command::new(&binary).output().expect("running the probe");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "linked\n");
}
