//! The boot test: `make image` builds `out/nitro.eif`; its own sections
//! (kernel, cmdline, ramdisks, extracted with the image tool) boot in QEMU
//! with `nautilus.attestation=dev` added to the cmdline, and a test-only
//! initramfs of vsock modules appended after the image's. Then, through
//! client → TCP → `nautilus-proxy` → hybrid-vsock Unix socket → guest vsock
//! → `nautilus-server`: health check, attestation, verified runs of both
//! example tasks, 20 concurrent verified runs, a server crash and its
//! restart by `run.sh`, and a clean power-off.
//!
//! Ignored in a plain `cargo test` because `make boot-test` (part of
//! `make test`) runs it with the binaries it needs built.

mod boot_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use boot_support::deps::{self, Unavailable};
use boot_support::vm::Vm;
use nautilus_client::{Client, Policy, TaskSpec, TrustedRoot};
use support::{http_get, Proxy};

/// The server's vsock port inside the image (`run.sh`).
const SERVER_PORT: u32 = 3000;
/// Boot to a listening server; generous for software emulation on a busy host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
#[ignore = "boots the image in a VM: `make boot-test` (part of `make test`) runs it"]
fn the_image_boots_in_a_vm_and_serves_verified_results_through_the_proxy() {
    let started = Instant::now();
    let deps = match deps::ensure(&deps::cache_dir()) {
        Ok(d) => d,
        Err(Ok(Unavailable(why))) => {
            skip_report::skipped("boot test", &why);
            return;
        }
        Err(Err(e)) => panic!("boot test set-up failed: {e:#}"),
    };
    eprintln!(
        "boot-test: tools ready after {:?} (accelerator: {})",
        started.elapsed(),
        if deps.kvm {
            "KVM"
        } else {
            "TCG, no usable KVM"
        }
    );
    let repo = support::repo_root();
    let work = tempfile::tempdir().expect("work dir");
    let boot = prepare_boot(&repo, &deps, work.path()).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("boot-test: image built after {:?}", started.elapsed());

    let mut vm = Vm::start(
        &deps,
        work.path(),
        &boot.kernel,
        &boot.initrd,
        &boot.cmdline,
    )
    .unwrap_or_else(|e| panic!("starting the VM: {e:#}"));
    let outcome = scenario(&mut vm, work.path());
    if let Err(e) = outcome {
        eprintln!(
            "===== VM console =====\n{}\n===== end of console =====",
            vm.console()
        );
        panic!("boot test failed: {e:#}");
    }
    eprintln!("boot-test: passed in {:?}", started.elapsed());
}

struct Boot {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

/// `make image`, then the EIF's own sections plus the modules initramfs.
fn prepare_boot(repo: &Path, deps: &deps::Deps, work: &Path) -> anyhow::Result<Boot> {
    let make = std::env::var_os("MAKE").unwrap_or_else(|| "make".into());
    let status = Command::new(make)
        .arg("-C")
        .arg(repo)
        .arg("--no-print-directory")
        .arg("image")
        .arg(format!("KERNEL={}", deps.kernel.display()))
        .stdin(Stdio::null())
        .status()
        .context("running make image")?;
    ensure!(status.success(), "make image failed ({status})");

    let tool = repo.join("target/enclave/x86_64-unknown-linux-musl/release/enclave-image");
    let sections = work.join("eif");
    run_tool(
        Command::new(&tool)
            .arg("extract")
            .arg(repo.join("out/nitro.eif"))
            .arg("--out-dir")
            .arg(&sections),
    )?;
    let mut ramdisks: Vec<(u32, PathBuf)> = std::fs::read_dir(&sections)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("ramdisk-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    ramdisks.sort();
    ensure!(!ramdisks.is_empty(), "the EIF has no ramdisk");

    // The test-only archive: /nautilus/modules/NN-name.ko, which the
    // image's init loads in lexical order.
    let modules_root = work.join("modules-root");
    let modules = modules_root.join("nautilus/modules");
    std::fs::create_dir_all(&modules)?;
    for entry in std::fs::read_dir(&deps.modules_dir)? {
        let entry = entry?;
        std::fs::copy(entry.path(), modules.join(entry.file_name()))?;
    }
    let modules_cpio = work.join("modules.cpio.gz");
    run_tool(
        Command::new(&tool)
            .arg("cpio")
            .arg("--root")
            .arg(&modules_root)
            .arg("--out")
            .arg(&modules_cpio),
    )?;

    // The kernel unpacks concatenated (4-byte aligned) archives in order,
    // as the Nitro loader places an EIF's ramdisks one after the other.
    let mut initrd = Vec::new();
    for path in ramdisks.iter().map(|(_, p)| p).chain([&modules_cpio]) {
        initrd.extend(std::fs::read(path)?);
        initrd.resize(initrd.len().next_multiple_of(4), 0);
    }
    let initrd_path = work.join("initrd");
    std::fs::write(&initrd_path, initrd)?;

    let cmdline = std::fs::read_to_string(sections.join("cmdline"))?;
    Ok(Boot {
        kernel: sections.join("kernel"),
        initrd: initrd_path,
        // The one documented switch; everything else is the image's own.
        cmdline: format!("{} nautilus.attestation=dev", cmdline.trim()),
    })
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("{cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

/// The dev root the guest's `run.sh` prints after `from`, and the offset past it.
fn dev_root(vm: &mut Vm, from: usize, timeout: Duration) -> anyhow::Result<(String, usize)> {
    let end = vm.wait_for("nautilus-dev-root-end", from, timeout)?;
    let console = vm.console();
    let block = &console[from..end];
    let begin = block
        .rfind("nautilus-dev-root-begin")
        .context("dev root end without begin")?;
    // The server logs to the same console while run.sh prints the root, so
    // a log line can land between the markers: keep only the PEM block.
    let mut in_pem = false;
    let pem: String = block[begin..]
        .lines()
        .map(str::trim)
        .filter(|l| {
            let begin = l.starts_with("-----BEGIN CERTIFICATE-----");
            let end = l.starts_with("-----END CERTIFICATE-----");
            // Base64 lines have no spaces; log lines do.
            let keep = begin || end || (in_pem && !l.contains(' '));
            in_pem = (in_pem || begin) && !end;
            keep
        })
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(
        pem.contains("BEGIN CERTIFICATE"),
        "no PEM between the markers: {pem}"
    );
    Ok((pem, end))
}

fn scenario(vm: &mut Vm, work: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The init's steps, then the server inside listening on vsock.
    let booted = vm.wait_for("nautilus-init: starting /run.sh", 0, BOOT_TIMEOUT)?;
    vm.wait_for("loaded /nautilus/modules/", 0, Duration::ZERO)
        .context("the init loaded no test modules")?;
    let listening = vm.wait_for("nautilus-server ready", booted, BOOT_TIMEOUT)?;
    let ready_line = vm.console()[listening..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        ready_line.contains(&format!("listen=vsock://{SERVER_PORT}")),
        "the server is not listening on vsock port {SERVER_PORT}: {ready_line}"
    );
    let (pem, after_root) = dev_root(vm, booted, BOOT_TIMEOUT)?;
    eprintln!("boot-test: server listening on vsock port {SERVER_PORT} in the guest");
    let root_file = work.join("dev-root.pem");
    std::fs::write(&root_file, &pem)?;

    let upstream = format!("unix:{}#{SERVER_PORT}", vm.uds.display());
    // The VM's server runs with dev attestation, which expects no PROXY
    // header (the test support turns it off).
    let proxy = runtime.block_on(Proxy::start(&["--upstream", &upstream]));
    let url = proxy.url();

    let health = runtime.block_on(http_get(proxy.addr, "/health_check"));
    ensure!(health.starts_with("HTTP/1.1 200"), "health check: {health}");

    let attest = client_cli(work, &["attest", "--url", &url], &root_file)?;
    ensure!(attest.contains("\"manifest\""), "attest printed {attest}");

    let run = client_cli(
        work,
        &[
            "run",
            "--url",
            &url,
            "--task",
            "nodejs-task",
            "--",
            "2",
            "3",
        ],
        &root_file,
    )?;
    let stdout = signed_stdout(&run)?;
    ensure!(stdout.contains("\"sum\":5"), "nodejs-task printed {stdout}");
    let run = client_cli(
        work,
        &["run", "--url", &url, "--task", "ms-task", "--", "2 days"],
        &root_file,
    )?;
    let stdout = signed_stdout(&run)?;
    ensure!(stdout.contains("172800000"), "ms-task printed {stdout}");
    eprintln!("boot-test: verified results from both example tasks");

    runtime.block_on(concurrent_runs(&url, &pem, 20))?;
    eprintln!("boot-test: 20 concurrent verified runs through the proxy");

    // A crash: the dev-only console hook SIGKILLs the server; run.sh
    // restarts it (with a new key and, in dev mode, a new dev root).
    let before_kill = vm.console().len().max(after_root).max(listening);
    vm.type_line("nautilus-kill-server")?;
    let died = vm.wait_for("exited with status", before_kill, STEP_TIMEOUT)?;
    let (pem, _) = dev_root(vm, died, BOOT_TIMEOUT)?;
    std::fs::write(&root_file, &pem)?;
    let run = client_cli(
        work,
        &["run", "--url", &url, "--task", "nodejs-task", "--", "7"],
        &root_file,
    )?;
    ensure!(
        signed_stdout(&run)?.contains("\"sum\":7"),
        "after restart: {run}"
    );
    eprintln!("boot-test: run.sh restarted the killed server; verified run after the restart");

    drop(proxy);
    let before_stop = vm.console().len();
    vm.type_line("nautilus-poweroff")?;
    let status = vm.wait_exit(STEP_TIMEOUT)?;
    ensure!(status.success(), "QEMU exited with {status}");
    vm.wait_for("reboot: Power down", before_stop, Duration::ZERO)
        .context("the guest did not power off cleanly")?;
    eprintln!("boot-test: the VM powered off cleanly");
    Ok(())
}

/// `nautilus-client ARGS --root ROOT --allow-debug`; its stdout on exit 0.
fn client_cli(work: &Path, args: &[&str], root: &Path) -> anyhow::Result<String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_nautilus-proxy")).with_file_name("nautilus-client");
    ensure!(
        bin.exists(),
        "{} is missing: `make boot-test` builds it (cargo build --bin nautilus-client)",
        bin.display()
    );
    let (out, err) = (work.join("client.out"), work.join("client.err"));
    let mut child = support::die_with_parent(&mut Command::new(&bin))
        .args(args.iter().take_while(|a| **a != "--"))
        .arg("--root")
        .arg(root)
        // Dev attestation documents carry all-zero PCRs, like debug mode.
        .arg("--allow-debug")
        .args(args.iter().skip_while(|a| **a != "--"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nautilus-client {args:?} did not finish within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out)?;
    let stderr = std::fs::read_to_string(&err)?;
    eprintln!("boot-test: nautilus-client {args:?} -> {status}\n{stdout}{stderr}");
    ensure!(
        status.success(),
        "nautilus-client {args:?} failed ({status}): {stderr}"
    );
    Ok(stdout)
}

/// The task's stdout inside the signed result the client printed.
fn signed_stdout(printed: &str) -> anyhow::Result<String> {
    fn find(v: &serde_json::Value) -> Option<&str> {
        match v {
            serde_json::Value::Object(m) => m
                .get("stdout")
                .and_then(|s| s.as_str())
                .or_else(|| m.values().find_map(find)),
            _ => None,
        }
    }
    let v: serde_json::Value = serde_json::from_str(printed.trim()).context("client output")?;
    find(&v)
        .map(str::to_owned)
        .context("no stdout in the signed result")
}

/// `n` runs at once over one attested client (so over `n` connections), each verified.
async fn concurrent_runs(url: &str, pem: &str, n: usize) -> anyhow::Result<()> {
    let root = TrustedRoot::from_pem(pem)?;
    let client = Client::connect(url, root, Policy::default().allow_debug(true)).await?;
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        runs.spawn(async move {
            let spec = TaskSpec::new("nodejs-task").args([i.to_string()]);
            (i, client.run_task(&spec).await)
        });
    }
    while let Some(joined) = runs.join_next().await {
        let (i, result) = joined?;
        let result = result.with_context(|| format!("concurrent run {i}"))?;
        let data = result.data();
        ensure!(data.exit_code == Some(0), "run {i}: {data:?}");
        ensure!(
            data.stdout.contains(&format!("\"sum\":{i}")),
            "run {i}: {}",
            data.stdout
        );
    }
    Ok(())
}
