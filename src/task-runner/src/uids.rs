//! Exclusive use of the slot uids across processes.
//!
//! A runner kills everything its slot uids own, so two runners (a server and a
//! CLI, two CLIs, or two `Runner`s in one process) sharing a uid would kill each
//! other's tasks. Each runner holds an `flock` on one lock file per slot uid for
//! its whole life; the kernel drops the locks when the process dies.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::ConfigError;

/// Held locks on a range of slot uids.
#[derive(Debug)]
pub(crate) struct UidLease {
    _locks: Vec<File>,
}

impl UidLease {
    /// Locks every uid of `range`, using lock files in `<parent>/nautilus-task-runner-uids`.
    pub fn take(parent: &Path, range: Range<u32>) -> Result<Self, ConfigError> {
        let dir = parent.join("nautilus-task-runner-uids");
        let io_err = |e: io::Error| {
            ConfigError::Invalid(format!("slot uid lock directory {}: {e}", dir.display()))
        };
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(e)),
            _ => {}
        }
        // In a shared temp directory someone else could have created it first and
        // would then control the locks.
        let meta = fs::symlink_metadata(&dir).map_err(io_err)?;
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(ConfigError::Invalid(format!(
                "slot uid lock directory {} must be a directory owned by uid {euid} and writable only by it",
                dir.display()
            )));
        }
        let mut locks = Vec::with_capacity(range.len());
        for uid in range {
            let path = dir.join(format!("{uid}.lock"));
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = io::Error::last_os_error();
                return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    ConfigError::UidInUse(uid)
                } else {
                    io_err(err)
                });
            }
            locks.push(file);
        }
        Ok(Self { _locks: locks })
    }
}
