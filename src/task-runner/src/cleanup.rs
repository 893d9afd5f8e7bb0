//! Removing directory trees without recursion, finding processes, and the
//! start-up sweep.
//!
//! A task decides the shape of what it leaves: `std::fs::remove_dir_all`
//! recurses once per level, so a 30 000-deep tree (a few lines of
//! JavaScript) overflows a tokio worker's stack and aborts the whole
//! process, and with one descriptor per level it runs out of descriptors
//! first. [`remove_tree`] walks down and back up with at most three open
//! descriptors and a heap-allocated list of names, whatever the depth.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Removes the tree at `path` (a directory, or any other file, which is just
/// unlinked). Never follows symlinks, never recurses on the stack, and holds
/// at most three descriptors at a time. Directories whose mode locks out
/// their owner (a task sharing the runner's uid can leave those) are opened
/// up with `chmod` on the descriptor, never on a path. Stops at the first
/// error and returns it, leaving the rest in place. A missing `path` is no
/// error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    let top = open_dir(libc::AT_FDCWD, &cstring(path.as_os_str())?)?;
    let top_id = file_id(&top)?;
    let mut cur = top;
    // Names from the top down to `cur`, each followed by a NUL.
    let mut names: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match first_entry(&cur, &mut buf)? {
            Some((name, true)) => {
                let child = match open_dir(cur.as_raw_fd(), &name) {
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                        unlock(&cur, &name)?;
                        open_dir(cur.as_raw_fd(), &name)?
                    }
                    other => other?,
                };
                names.extend_from_slice(name.as_bytes_with_nul());
                cur = child;
            }
            Some((name, false)) => {
                // SAFETY: unlinkat on a directory descriptor we hold and a C string.
                check(unsafe { libc::unlinkat(cur.as_raw_fd(), name.as_ptr(), 0) })?;
            }
            None if names.is_empty() => break,
            None => {
                let parent = open_dir(cur.as_raw_fd(), c"..")?;
                // Drop the last name's NUL, then the name itself.
                names.pop();
                let start = names.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
                let name = CString::new(&names[start..])
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                names.truncate(start);
                drop(cur);
                // SAFETY: as above, with AT_REMOVEDIR.
                check(unsafe {
                    libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR)
                })?;
                cur = parent;
                if names.is_empty() && file_id(&cur)? != top_id {
                    // Someone moved a directory while it was being emptied:
                    // `..` led elsewhere. Stop rather than delete the wrong tree.
                    return Err(io::Error::other("the tree was moved while it was removed"));
                }
            }
        }
    }
    drop(cur);
    fs::remove_dir(path)
}

pub(crate) fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A system call's result: `Err(errno)` when it returned a negative value.
pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens the directory `name` relative to `dirfd` without following a symlink.
fn open_dir(dirfd: libc::c_int, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: openat on a valid descriptor (or AT_FDCWD) and a C string.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the owner full access to the directory `name` in `dir`, through a
/// descriptor of the directory itself (no path is followed).
fn unlock(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: openat with O_PATH on a held descriptor and a C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: as in open_dir.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // fchmod refuses O_PATH descriptors; the /proc link names this very directory.
    fs::set_permissions(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
}

fn file_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat into a zeroed struct on a held descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

/// The first entry of `dir` other than `.` and `..`, and whether it is a
/// directory. Reads from the start each time: entries already removed are gone.
fn first_entry(dir: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(CString, bool)>> {
    // SAFETY: lseek on a held descriptor.
    if unsafe { libc::lseek(dir.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        // SAFETY: getdents64 into a buffer of the given length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut at = 0usize;
        let n = n as usize;
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
        while at + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let kind = buf[at + 18];
            let name_bytes = &buf[at + 19..(at + reclen).min(n)];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..end];
            at += reclen.max(1);
            if name == b"." || name == b".." {
                continue;
            }
            let is_dir = match kind {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => {
                    let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidData)?;
                    // SAFETY: fstatat without following, into a zeroed struct.
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    check(unsafe {
                        libc::fstatat(
                            dir.as_raw_fd(),
                            c.as_ptr(),
                            &mut st,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })?;
                    st.st_mode & libc::S_IFMT == libc::S_IFDIR
                }
                _ => false,
            };
            let name = CString::new(name).map_err(|_| io::ErrorKind::InvalidData)?;
            return Ok(Some((name, is_dir)));
        }
    }
}

/// Every live (not zombie) process in `/proc`.
pub(crate) fn live_processes() -> impl Iterator<Item = libc::pid_t> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| live_status(pid).is_some())
}

/// The `status` of process `pid`, if it is alive (not a zombie).
fn live_status(pid: libc::pid_t) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let state = status.lines().find_map(|l| l.strip_prefix("State:"))?;
    (!state.trim_start().starts_with(['Z', 'X'])).then_some(status)
}

/// Whether `pid` is alive with a real, effective or saved uid in `uids`.
fn owned_by(pid: libc::pid_t, uids: &std::ops::Range<u32>) -> bool {
    live_status(pid).is_some_and(|status| {
        let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"));
        ids.is_some_and(|ids| {
            ids.split_whitespace()
                .take(3)
                .filter_map(|u| u.parse().ok())
                .any(|u| uids.contains(&u))
        })
    })
}

/// SIGKILLs every live process owned by a uid in `uids` (only ever called
/// for slot uids this runner holds the lease on, before it serves), until
/// none is left or `deadline` passes. Each process is pinned with a pidfd
/// and checked again through it, so a recycled pid is never hit. Returns
/// the survivors.
pub(crate) fn kill_processes_of(
    uids: &std::ops::Range<u32>,
    deadline: Duration,
) -> Vec<libc::pid_t> {
    let end = Instant::now() + deadline;
    loop {
        let found: Vec<_> = live_processes().filter(|&p| owned_by(p, uids)).collect();
        if found.is_empty() || Instant::now() >= end {
            return found;
        }
        for pid in found {
            // SAFETY: pidfd_open on a pid; the descriptor, if any, is owned below.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                // No pidfds (before Linux 5.3): a plain kill, re-checked just before.
                if owned_by(pid, uids) {
                    // SAFETY: kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                continue;
            }
            // SAFETY: the descriptor pidfd_open returned.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
            if owned_by(pid, uids) {
                // SAFETY: pidfd_send_signal on the pinned process.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a `depth`-deep chain of directories `d/d/d/…` under `top`
    /// iteratively (chdir-free, with openat), a file at the bottom.
    fn deep_tree(top: &Path, depth: usize) {
        fs::create_dir(top).unwrap();
        let mut cur = open_dir(libc::AT_FDCWD, &cstring(top.as_os_str()).unwrap()).unwrap();
        for _ in 0..depth {
            // SAFETY: mkdirat on a held descriptor and a C string.
            assert_eq!(
                unsafe { libc::mkdirat(cur.as_raw_fd(), c"d".as_ptr(), 0o755) },
                0
            );
            cur = open_dir(cur.as_raw_fd(), c"d").unwrap();
        }
        // SAFETY: as above; the file descriptor is closed at once.
        let fd = unsafe {
            libc::openat(
                cur.as_raw_fd(),
                c"leaf".as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        assert!(fd >= 0);
        unsafe { libc::close(fd) };
    }

    /// `std::fs::remove_dir_all` overflows the stack or runs out of
    /// descriptors on such a tree (issue 7, finding 1).
    #[test]
    fn a_100_000_deep_tree_is_removed() {
        // On tmpfs when there is one: removing 100 000 directories from a disk
        // mounted with `discard` takes minutes of waiting for the device.
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let top = dir.path().join("deep");
        deep_tree(&top, 100_000);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn symlinks_are_removed_not_followed_and_locked_directories_opened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let top = dir.path().join("top");
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::write(top.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/link")).unwrap();
        fs::set_permissions(top.join("a/b"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists(), "a symlink was followed");
        remove_tree(&top).unwrap();
    }
}
