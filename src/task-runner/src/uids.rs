//! Exclusive use of the slot uids across processes.
//!
//! A runner kills everything its slot uids own, so two runners (a server and a
//! CLI, two CLIs, or two `Runner`s in one process) sharing a uid would kill each
//! other's tasks. Each runner holds an `flock` on one lock file per uid for its
//! whole life; the kernel drops the locks when the process dies.
//!
//! Besides its slot uids a runner leases one more, the *killer* uid: the kill
//! helper runs with it as real and saved uid (see `sandbox::kill_as`), so no
//! task, whose uid is a slot uid, can signal the helper.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::sandbox::Identity;
use crate::ConfigError;

/// Why a range could not be locked.
enum Taken {
    /// Another runner holds this uid.
    InUse(u32),
    Failed(ConfigError),
}

/// How many ranges [`UidLease::take_first_free`] tries before giving up.
const MAX_TRIES: u32 = 256;

/// Held locks on a range of slot uids plus the killer uid right after it.
#[derive(Debug)]
pub(crate) struct UidLease {
    first: u32,
    slots: u32,
    _locks: Vec<File>,
}

impl UidLease {
    /// Locks the first `slots + 1` consecutive free uids at or above `start`
    /// (the slots, then the killer), so two runners on one host (two servers, a
    /// server and the CLI, test processes) coexist without configuration.
    pub fn take_first_free(parent: &Path, start: u32, slots: u32) -> Result<Self, ConfigError> {
        let len = slots + 1;
        let mut first = start;
        for _ in 0..MAX_TRIES {
            let end = first
                .checked_add(len)
                .filter(|&end| end < u32::MAX)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!("no free slot uid range at or above {start}"))
                })?;
            if let Some(known) = (first..end).find(|&id| known_to_the_host(id)) {
                first = known + 1;
                continue;
            }
            match Self::take(parent, first..end) {
                Ok(locks) => {
                    return Ok(Self {
                        first,
                        slots,
                        _locks: locks,
                    })
                }
                Err(Taken::InUse(uid)) => first = uid + 1,
                Err(Taken::Failed(e)) => return Err(e),
            }
        }
        Err(ConfigError::Invalid(format!(
            "no {len} free consecutive slot uids at or above {start} after {MAX_TRIES} tries"
        )))
    }

    /// Where the lock files live: under `/run` when it is root's alone (a
    /// fixed place every runner on the host agrees on, that no other user can
    /// occupy first), else under `fallback` (the work directory).
    pub fn lock_parent(fallback: &Path) -> &Path {
        let run = Path::new("/run");
        match fs::symlink_metadata(run) {
            Ok(meta) if meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0 => run,
            _ => fallback,
        }
    }

    /// The slot uids.
    pub fn slots(&self) -> Range<u32> {
        self.first..self.first + self.slots
    }

    /// Identity of slot `index` (below the slot count).
    pub fn slot(&self, index: u32) -> Identity {
        let uid = self.first + index;
        Identity {
            uid,
            gid: uid,
            killer: self.first + self.slots,
        }
    }

    /// Locks every uid of `range`, using lock files in `<parent>/nautilus-task-runner-uids`.
    fn take(parent: &Path, range: Range<u32>) -> Result<Vec<File>, Taken> {
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
        Ok(locks)
    }
}

/// A shared lock on `uid`'s lock file under `parent` when no runner holds
/// that uid: while it is kept, no runner can take it. `None` when a runner
/// holds it, or no lock file exists here (then nothing is known about it).
pub(crate) fn lock_if_free(parent: &Path, uid: u32) -> Option<File> {
    let path = parent
        .join("nautilus-task-runner-uids")
        .join(format!("{uid}.lock"));
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // SAFETY: flock on a descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// Whether `id` means something on this host: a user or group of that number
/// exists, or it is one of the conventional overflow ids (65534 `nobody`,
/// 65535, `(uid_t)-1` in 16 bits). Killing everything a slot uid owns must
/// never reach a real account's processes.
fn known_to_the_host(id: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    matches!(id, 65534 | 65535)
        || !matches!(User::from_uid(Uid::from_raw(id)), Ok(None))
        || !matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
}
