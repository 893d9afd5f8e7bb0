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

/// Why a range could not be locked.
enum Taken {
    /// Another runner holds this uid.
    InUse(u32),
    Failed(ConfigError),
}

/// How many ranges [`UidLease::take_first_free`] tries before giving up.
const MAX_TRIES: u32 = 256;

/// Held locks on a range of slot uids.
#[derive(Debug)]
pub(crate) struct UidLease {
    first: u32,
    _locks: Vec<File>,
}

impl UidLease {
    /// Locks the first `len` consecutive free uids at or above `start`, so two
    /// runners on one host (two servers, a server and the CLI, test processes)
    /// coexist without configuration.
    pub fn take_first_free(parent: &Path, start: u32, len: u32) -> Result<Self, ConfigError> {
        let mut first = start;
        for _ in 0..MAX_TRIES {
            let end = first
                .checked_add(len)
                .filter(|&end| end < u32::MAX)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!("no free slot uid range at or above {start}"))
                })?;
            match Self::take(parent, first..end) {
                Ok(lease) => return Ok(lease),
                Err(Taken::InUse(uid)) => first = uid + 1,
                Err(Taken::Failed(e)) => return Err(e),
            }
        }
        Err(ConfigError::Invalid(format!(
            "no {len} free consecutive slot uids at or above {start} after {MAX_TRIES} tries"
        )))
    }

    /// The first uid of the range.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// Locks every uid of `range`, using lock files in `<parent>/nautilus-task-runner-uids`.
    fn take(parent: &Path, range: Range<u32>) -> Result<Self, Taken> {
        let first = range.start;
        let dir = parent.join("nautilus-task-runner-uids");
        let io_err = |e: io::Error| {
            Taken::Failed(ConfigError::Invalid(format!(
                "slot uid lock directory {}: {e}",
                dir.display()
            )))
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
            return Err(Taken::Failed(ConfigError::Invalid(format!(
                "slot uid lock directory {} must be a directory owned by uid {euid} and writable only by it",
                dir.display()
            ))));
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
                    Taken::InUse(uid)
                } else {
                    io_err(err)
                });
            }
            locks.push(file);
        }
        Ok(Self {
            first,
            _locks: locks,
        })
    }
}
