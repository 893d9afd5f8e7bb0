//! PID 1's duty: start the service, reap every process that dies meanwhile.
//!
//! Orphans anywhere in the system are re-parented to PID 1 (or, in tests, to
//! the nearest child subreaper) and stay zombies until it waits for them.
//! [`supervise`] waits for *any* child until the one it started exits.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

/// How a supervised command ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command's own exit status.
    pub status: ExitStatus,
    /// Other children (orphans re-parented to us) reaped while it ran.
    pub orphans_reaped: usize,
}

/// Spawns `command` and reaps every child of this process until it exits.
///
/// Children that are not the command (orphans) are reaped and counted. This
/// process must be PID 1 or a child subreaper for orphans to reach it.
pub fn supervise(command: &mut Command) -> io::Result<Outcome> {
    let child = command.spawn()?;
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::other("child pid out of range"))?;
    let mut orphans_reaped = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return Ok(Outcome {
                status: ExitStatus::from_raw(status),
                orphans_reaped,
            });
        }
        if reaped > 0 {
            orphans_reaped += 1;
            continue;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Reaps every child that has already exited, without blocking; returns how many.
pub fn reap_exited() -> usize {
    let mut count = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return count;
        }
        count += 1;
    }
}
