//! What the boot test needs on the host, installed when missing from Debian
//! and crates.io only, and cached between runs:
//! `qemu-system-x86` (for `vhost-user-vsock-pci`), a Debian cloud kernel
//! with its vsock and virtio-pci modules, and `vhost-device-vsock`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};

/// Pinned: the boot test depends on its CLI and its hybrid-vsock handshake.
pub const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";
/// The Debian meta-package naming the current cloud kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// The guest needs these (and what they depend on) unless built in:
/// virtio over PCI, then the vsock transport over virtio.
const ROOT_MODULES: &[&str] = &["virtio_pci", "vmw_vsock_virtio_transport"];

/// Everything installed and found.
pub struct Deps {
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// The cloud kernel's `vmlinuz`.
    pub kernel: PathBuf,
    /// Uncompressed modules, named `NN-name.ko` so lexical order loads
    /// dependencies first (the image's init convention).
    pub modules_dir: PathBuf,
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
    let (kernel, modules_dir) = ensure_kernel(cache)?;
    let vhost_device_vsock = ensure_vhost_device_vsock(cache).map_err(Err)?;
    Ok(Deps {
        qemu,
        vhost_device_vsock,
        kernel,
        modules_dir,
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
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"vhost-user-vsock-pci\""))
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
        // bookworm's QEMU 7.2 already has vhost-user-vsock-pci.
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
                "{QEMU} from Debian has no vhost-user-vsock-pci device"
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

fn ensure_kernel(cache: &Path) -> Result<(PathBuf, PathBuf), Result<Unavailable, anyhow::Error>> {
    let dir = cache.join("kernel");
    let (vmlinuz, modules) = (dir.join("vmlinuz"), dir.join("modules"));
    if dir.join("complete").exists() {
        return Ok((vmlinuz, modules));
    }
    if !is_root() {
        return Err(Ok(Unavailable(
            "downloading the Debian cloud kernel needs root (apt-get download)".into(),
        )));
    }
    let package = with_apt_lists(|| {
        let deps = run(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
        deps.lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache depends {KERNEL_META_PACKAGE}: no linux-image"))
    })
    .map_err(|e| {
        Ok(Unavailable(format!(
            "no Debian cloud kernel package: {e:#}"
        )))
    })?;
    eprintln!("boot-test: downloading {package} from Debian");
    unpack_kernel(cache, &dir, &package).map_err(Err)?;
    Ok((vmlinuz, modules))
}

fn unpack_kernel(cache: &Path, dir: &Path, package: &str) -> anyhow::Result<()> {
    let tmp = cache.join(format!("kernel.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    with_apt_lists(|| {
        run(Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(&tmp))
    })?;
    let deb = fs::read_dir(&tmp)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download wrote no .deb")?;
    let tree = tmp.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;

    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no boot/vmlinuz-* in the kernel package")?;
    // Debian moved modules from /lib to /usr/lib.
    let modules_root = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d))
        .find(|d| d.is_dir())
        .context("no lib/modules in the kernel package")?;
    let version_dir = fs::read_dir(&modules_root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .context("empty lib/modules")?;

    let out = tmp.join("out");
    fs::create_dir_all(out.join("modules"))?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))?;
    let builtin = fs::read_to_string(version_dir.join("modules.builtin")).unwrap_or_default();
    for (i, (name, bytes)) in module_closure(&version_dir, &builtin)?
        .into_iter()
        .enumerate()
    {
        fs::write(
            out.join("modules").join(format!("{:02}-{name}.ko", 10 + i)),
            bytes,
        )?;
    }
    fs::write(out.join("package"), package)?;
    fs::write(out.join("complete"), "")?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&out, dir)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// The modules [`ROOT_MODULES`] need, dependencies first, uncompressed.
fn module_closure(version_dir: &Path, builtin: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    index_modules(&version_dir.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for root in ROOT_MODULES {
        visit(root, &files, builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            for ext in [".ko", ".ko.xz"] {
                if let Some(stem) = name.strip_suffix(ext) {
                    // modprobe treats - and _ alike in module names.
                    files.insert(stem.replace('-', "_"), path.clone());
                }
            }
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &str,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        let built_in = builtin
            .lines()
            .any(|l| l.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")) == Some(name));
        ensure!(
            built_in,
            "kernel has module {name} neither as a file nor built in"
        );
        return Ok(());
    };
    let bytes = if path.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .context("running xz -dc")?;
        ensure!(out.status.success(), "xz -dc {} failed", path.display());
        out.stdout
    } else {
        fs::read(path)?
    };
    for dep in modinfo_depends(&bytes) {
        visit(&dep, files, builtin, seen, order)?;
    }
    order.push((name.to_owned(), bytes));
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` strings.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_come_from_modinfo() {
        let ko =
            b"\x7fELF...\0license=GPL\0depends=virtio,vmw_vsock-virtio_transport_common\0name=x\0";
        assert_eq!(
            modinfo_depends(ko),
            ["virtio", "vmw_vsock_virtio_transport_common"]
        );
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }
}
