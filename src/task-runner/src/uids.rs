//! Exclusive use of the slot uids across processes.
//!
//! At start a runner kills everything its slot uids own, and tasks of one uid
//! share `RLIMIT_NPROC`, so two runners (a server and a CLI, two CLIs, or two
//! `Runner`s in one process) sharing a uid would disturb each other's tasks.
//! Each runner holds an `flock` on one lock file per uid for its whole life;
//! the kernel drops the locks when the process dies.
//!
//! A uid the host's user or group database knows is never used. A missing
//! database (`/etc/passwd` or `/etc/group` absent, as in a minimal enclave
//! image) means nobody owns the uid; any other lookup failure is an error.

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

/// Held locks on a range of slot uids.
#[derive(Debug)]
pub(crate) struct UidLease {
    first: u32,
    slots: u32,
    _locks: Vec<File>,
}

impl UidLease {
    /// Locks the first `slots` consecutive free uids at or above `start`, so
    /// two runners on one host (two servers, a server and the CLI, test
    /// processes) coexist without configuration.
    pub fn take_first_free(parent: &Path, start: u32, slots: u32) -> Result<Self, ConfigError> {
        let len = slots;
        let mut first = start;
        for _ in 0..MAX_TRIES {
            let end = first
                .checked_add(len)
                .filter(|&end| end < u32::MAX)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!("no free slot uid range at or above {start}"))
                })?;
            let mut known = None;
            for id in first..end {
                if known_to_the_host(id)? {
                    known = Some(id);
                    break;
                }
            }
            if let Some(known) = known {
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
        Identity { uid, gid: uid }
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
/// never reach a real account's processes. `ENOENT` from the lookup (glibc
/// and musl say so when the database file is missing) means no such entry;
/// any other failure is an error rather than a guess.
fn known_to_the_host(id: u32) -> Result<bool, ConfigError> {
    use nix::unistd::{Gid, Group, Uid, User};
    if matches!(id, 65534 | 65535) {
        return Ok(true);
    }
    let answer = |what: &str, found: nix::Result<bool>| {
        match found {
        Ok(found) => Ok(found),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(ConfigError::Invalid(format!(
            "looking up {what} {id} in the host's database failed: {e}; cannot tell whether the slot uid is free"
        ))),
    }
    };
    Ok(answer(
        "user",
        User::from_uid(Uid::from_raw(id)).map(|u| u.is_some()),
    )? || answer(
        "group",
        Group::from_gid(Gid::from_raw(id)).map(|g| g.is_some()),
    )?)
}
