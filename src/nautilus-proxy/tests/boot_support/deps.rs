//! What the boot test needs on the host, installed when missing from Debian
//! and crates.io only, and cached between runs: `qemu-system-x86` (its
//! `microvm` machine with `vhost-user-vsock-device` on virtio-mmio) and
//! `vhost-device-vsock`. The kernel is the image's own (enclave/inputs.lock).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};

/// Pinned: the boot test depends on its CLI and its hybrid-vsock handshake.
pub const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// Everything installed and found.
pub struct Deps {
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// Whether KVM works here; TCG otherwise.
    pub kvm: bool,
}

/// Why the boot test cannot run at all on this machine.
pub struct Unavailable(pub String);

/// `$NAUTILUS_BOOT_TEST_CACHE`, else `$XDG_CACHE_HOME/nautilus/boot-test`,
/// else `~/.cache/nautilus/boot-test`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NAUTILUS_BOOT_TEST_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("nautilus/boot-test")
}

/// Installs what is missing. `Err(Ok(_))`: the packages cannot be
/// installed here at all (skip, loudly); `Err(Err(_))`: a real failure.
pub fn ensure(cache: &Path) -> Result<Deps, Result<Unavailable, anyhow::Error>> {
    fs::create_dir_all(cache)
        .with_context(|| format!("creating {}", cache.display()))
        .map_err(Err)?;
    let qemu = ensure_qemu()?;
    let vhost_device_vsock = ensure_vhost_device_vsock(cache).map_err(Err)?;
    Ok(Deps {
        qemu,
        vhost_device_vsock,
        kvm: kvm_usable(),
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Runs an apt command; if it fails, refreshes the package lists once and
/// retries (a fresh machine may have none, or stale ones).
fn with_apt_lists<T>(f: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
    f().or_else(|first| {
        eprintln!("boot-test: {first:#}; running apt-get update and retrying");
        apt_get(&["update", "-q"]).context("apt-get update")?;
        f()
    })
}

fn qemu_has_vsock_device(qemu: &str) -> bool {
    Command::new(qemu)
        .args(["-device", "help"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"vhost-user-vsock-device\""))
}

fn ensure_qemu() -> Result<PathBuf, Result<Unavailable, anyhow::Error>> {
    const QEMU: &str = "qemu-system-x86_64";
    if !qemu_has_vsock_device(QEMU) {
        if !is_root() {
            return Err(Ok(Unavailable(
                "qemu-system-x86 is not installed and installing it needs root".into(),
            )));
        }
        eprintln!("boot-test: installing qemu-system-x86 from Debian");
        // bookworm's QEMU 7.2 already has microvm and vhost-user-vsock-device.
        with_apt_lists(|| {
            apt_get(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
        })
        .map_err(|e| {
            Ok(Unavailable(format!(
                "cannot install qemu-system-x86: {e:#}"
            )))
        })?;
        if !qemu_has_vsock_device(QEMU) {
            return Err(Err(anyhow::anyhow!(
                "{QEMU} from Debian has no vhost-user-vsock-device"
            )));
        }
    }
    Ok(PathBuf::from(QEMU))
}

/// `/dev/kvm` opens and the CPU advertises virtualization; without the
/// flag (some nested hosts) KVM guests hang before the kernel prints.
fn kvm_usable() -> bool {
    let opens = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    opens
        && flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn ensure_vhost_device_vsock(cache: &Path) -> anyhow::Result<PathBuf> {
    let root = cache.join(format!("vhost-device-vsock-{VHOST_DEVICE_VSOCK_VERSION}"));
    let bin = root.join("bin/vhost-device-vsock");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!(
        "boot-test: cargo install vhost-device-vsock {VHOST_DEVICE_VSOCK_VERSION} (once; cached)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "--locked",
            "--quiet",
            "vhost-device-vsock",
            "--version",
        ])
        .arg(VHOST_DEVICE_VSOCK_VERSION)
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install vhost-device-vsock {VHOST_DEVICE_VSOCK_VERSION} failed ({status})");
    }
    Ok(bin)
}
