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
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=0755",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
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
    let target = root.join(mount.target.trim_start_matches('/'));
    std::fs::create_dir_all(&target)?;
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let source = c(mount.source.as_bytes())?;
    let target = c(target.as_os_str().as_bytes())?;
    let fstype = c(mount.fstype.as_bytes())?;
    let data = c(mount.data.as_bytes())?;
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
