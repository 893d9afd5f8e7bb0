//! Small system calls PID 1 makes: modules, device permissions, loopback,
//! the RNG seed, power-off.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether a module was loaded by this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    /// The kernel already had it (`EEXIST`).
    Already,
}

/// The `*.ko` files directly in `dir`, sorted bytewise by file name; none when
/// `dir` does not exist.
pub fn modules_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut modules: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "ko") && p.is_file())
        .collect();
    modules.sort_by(|a, b| {
        a.file_name()
            .map(|n| n.as_bytes())
            .cmp(&b.file_name().map(|n| n.as_bytes()))
    });
    modules
}

/// Loads the (uncompressed) kernel module at `path` with `finit_module`.
pub fn load_module(path: &Path) -> io::Result<Loaded> {
    let file = File::open(path)?;
    let params = c"";
    // SAFETY: finit_module with an open descriptor and a NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(Loaded::Now);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(Loaded::Already)
    } else {
        Err(err)
    }
}

/// Makes `path` owned by root:root with mode 0600, then checks that it is.
pub fn restrict_to_root(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::chown(path, Some(0), Some(0))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    let meta = fs::metadata(path)?;
    if meta.uid() != 0 || meta.gid() != 0 || meta.mode() & 0o7777 != 0o600 {
        return Err(io::Error::other(format!(
            "still owned by {}:{} with mode {:o}",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Sets `IFF_UP` on the loopback interface.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2), closed below through OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Why the RNG could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("opening /dev/nsm failed")]
    Open,
    #[error("the NSM refused GetRandom: {0}")]
    Nsm(String),
    #[error("the NSM returned no random bytes")]
    Empty,
    #[error("crediting the entropy to /dev/random failed: {0}")]
    Credit(io::Error),
}

/// Asks the NSM for random bytes until `want` are gathered (each answer
/// carries up to 256) and credits them to the kernel RNG. Returns the count.
pub fn seed_rng_from_nsm(want: usize) -> Result<usize, SeedError> {
    use aws_nitro_enclaves_nsm_api::api::{Request, Response};
    use aws_nitro_enclaves_nsm_api::driver;
    let fd = driver::nsm_init();
    if fd < 0 {
        return Err(SeedError::Open);
    }
    let mut seed = Vec::with_capacity(want);
    let result = loop {
        if seed.len() >= want {
            break Ok(());
        }
        match driver::nsm_process_request(fd, Request::GetRandom) {
            Response::GetRandom { random } if random.is_empty() => break Err(SeedError::Empty),
            Response::GetRandom { random } => seed.extend_from_slice(&random),
            other => break Err(SeedError::Nsm(format!("{other:?}"))),
        }
    };
    driver::nsm_exit(fd);
    result?;
    seed.truncate(want);
    credit_entropy(&seed).map_err(SeedError::Credit)?;
    Ok(seed.len())
}

/// Whether the enclave runs in debug mode: the NSM then reports PCR0 as all
/// zeros (AWS documents debug-mode PCRs as zeros). False when it cannot ask.
pub fn nsm_debug_mode() -> bool {
    use aws_nitro_enclaves_nsm_api::api::{Request, Response};
    use aws_nitro_enclaves_nsm_api::driver;
    let fd = driver::nsm_init();
    if fd < 0 {
        return false;
    }
    let answer = driver::nsm_process_request(fd, Request::DescribePCR { index: 0 });
    driver::nsm_exit(fd);
    matches!(answer, Response::DescribePCR { data, .. } if !data.is_empty() && data.iter().all(|b| *b == 0))
}

/// `RNDADDENTROPY` on `/dev/random`: mixes `bytes` in and credits them fully.
fn credit_entropy(bytes: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    let len = libc::c_int::try_from(bytes.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&(len * 8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    let random = fs::OpenOptions::new().write(true).open("/dev/random")?;
    // SAFETY: info is a valid rand_pool_info followed by buf_size bytes.
    if unsafe {
        libc::ioctl(
            random.as_raw_fd(),
            RNDADDENTROPY as libc::Ioctl,
            info.as_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the machine: SIGTERM to every process, up to two seconds reaping,
/// SIGKILL to the rest, `sync`, then `reboot(RB_AUTOBOOT)` as AWS's init does
/// (the enclave ends on reboot). Never returns.
pub fn power_off() -> ! {
    crate::log("ending the enclave: stopping every process");
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        crate::reaper::reap_exited();
        // ECHILD: nothing left to wait for.
        // SAFETY: waitpid with WNOHANG and a null status pointer.
        let none_left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } < 0;
        if none_left {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    crate::reaper::reap_exited();
    crate::log("rebooting: the enclave ends here");
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure; PID 1 must not exit (the kernel panics).
    crate::log(format_args!(
        "reboot(RB_AUTOBOOT) failed: {}",
        io::Error::last_os_error()
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        crate::reaper::reap_exited();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn extra_modules_load_in_bytewise_name_order_and_only_ko_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["20-b.ko", "10-a.ko", "B.ko", "notes.txt", "30-c.ko.xz"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        fs::create_dir(dir.path().join("40-dir.ko")).unwrap();
        let names: Vec<String> = modules_in(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a.ko", "20-b.ko", "B.ko"]);
        assert!(modules_in(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn a_shared_device_node_becomes_root_only() {
        if !nix_is_root() {
            eprintln!("SKIPPED a_shared_device_node_becomes_root_only: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("nsm");
        fs::write(&node, b"").unwrap();
        fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&node, Some(1), Some(1)).unwrap();
        restrict_to_root(&node).unwrap();
        let meta = fs::metadata(&node).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o600)
        );
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
