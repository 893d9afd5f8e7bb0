//! The file systems PID 1 mounts, as a table, and the code that mounts them.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One mount: `mount(source, root/target, fstype, flags, data)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    /// Absolute path inside the root.
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
    /// Options an older kernel may not know: on `EINVAL` the mount is retried
    /// with `data` alone.
    pub preferred: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// What the image mounts, in order (a target's parent is mounted before it).
/// Tasks run from `/tasks` on the initramfs root, so `/tmp` and `/run` can be
/// `noexec`; `/dev` needs device nodes, so it is only `nosuid`.
pub const TABLE: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        preferred: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        preferred: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
        preferred: "",
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
        preferred: "",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
        preferred: "",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=0755",
        preferred: "",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        // Every task joins its slot's cgroup; without this (Linux 6.0+) each
        // join waits for an RCU grace period, ~10 ms per task.
        preferred: "favordynmods",
    },
];

/// What happened to one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    Now,
    /// Something was mounted there already (`EBUSY`), e.g. a devtmpfs the
    /// kernel mounted itself.
    Already,
}

/// Mounts every entry of `table` under `root` (`/` in the image; a test
/// directory in tests), creating missing targets with mode 0755. Carries on
/// past failures: each entry gets its own outcome.
pub fn mount_all<'a>(root: &Path, table: &'a [Mount]) -> Vec<(&'a Mount, io::Result<Mounted>)> {
    table
        .iter()
        .map(|mount| (mount, mount_one(root, mount)))
        .collect()
}

fn mount_one(root: &Path, mount: &Mount) -> io::Result<Mounted> {
    if !mount.preferred.is_empty() {
        let preferred = if mount.data.is_empty() {
            mount.preferred.to_owned()
        } else {
            format!("{},{}", mount.data, mount.preferred)
        };
        match mount_with(root, mount, &preferred) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => return other,
        }
    }
    mount_with(root, mount, mount.data)
}

fn mount_with(root: &Path, mount: &Mount, data: &str) -> io::Result<Mounted> {
    let target = root.join(mount.target.trim_start_matches('/'));
    std::fs::create_dir_all(&target)?;
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let source = c(mount.source.as_bytes())?;
    let target = c(target.as_os_str().as_bytes())?;
    let fstype = c(mount.fstype.as_bytes())?;
    let data = c(data.as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            mount.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(Mounted::Now);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        Ok(Mounted::Already)
    } else {
        Err(err)
    }
}

/// Where the initramfs root is bound while [`leave_rootfs`] moves it.
const REBIND_AT: &str = "/.nautilus-root";

/// Makes `/` a bind mount of the initramfs instead of the initramfs mount
/// itself (what `switch_root` does, without copying anything): bind the
/// root recursively onto a directory, move that mount onto `/`, `chroot`
/// into it. The kernel refuses `pivot_root(2)` while the root is the initial
/// rootfs (`EINVAL`: it has no parent mount), and the task runner builds
/// every box with `pivot_root`; after this the root has one (the rootfs
/// beneath), and nothing else changes: same files, same memory.
/// PID 1 only, before anything else is mounted.
pub fn leave_rootfs() -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (at, root, dot) = (c(REBIND_AT)?, c("/")?, c(".")?);
    let rc = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on valid C strings; null pointers where
    // mount(2) takes none.
    unsafe {
        match rc(libc::mkdir(at.as_ptr(), 0o700)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        rc(libc::mount(
            root.as_ptr(),
            at.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        rc(libc::chdir(at.as_ptr()))?;
        rc(libc::mount(
            dot.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ))?;
        rc(libc::chroot(dot.as_ptr()))?;
        rc(libc::chdir(root.as_ptr()))?;
        // The empty mount point, seen through the bind: not part of the image.
        let _ = libc::rmdir(at.as_ptr());
    }
    Ok(())
}
