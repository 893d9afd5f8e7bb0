//! The box a task runs in: what happens between `fork` and `exec`, and how
//! everything inside the box is killed afterwards.
//!
//! Everything in [`Policy::apply_in_child`] runs in the forked child of a
//! multi-threaded process, so it only makes raw system calls (async-signal-safe,
//! no allocation, no locks). The seccomp program is compiled before the fork.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::ConfigError;

/// How long killing a box may take before the runner gives up and reports it.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// How long one kill helper may take (it normally needs well under a
/// millisecond) before it is killed itself and the round retried.
const HELPER_DEADLINE: Duration = Duration::from_millis(200);

/// The unprivileged identity of a slot (only when the runner is root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Real and saved uid of the slot's kill helper: leased with the slot
    /// uids, used by no task (see [`kill_as`]).
    pub killer: u32,
}

/// One `mount(2)` in the task's own mount namespace, its strings built before the fork.
struct Mount {
    source: &'static CStr,
    target: &'static CStr,
    fstype: &'static CStr,
    flags: libc::c_ulong,
    data: CString,
}

/// `setrlimit`'s resource type: an enum typedef in glibc, a plain int in musl
/// (the enclave image's static build).
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// Resource limits, private mounts and the seccomp program, prepared once per runner.
#[derive(Clone)]
pub(crate) struct Policy {
    seccomp: Arc<BpfProgram>,
    rlimits: Vec<(RlimitResource, u64)>,
    /// Made in a mount namespace of the task's own; `None` without root.
    mounts: Option<Arc<[Mount]>>,
}

impl Policy {
    /// `max_processes` is set (only) when tasks run under slot uids; then each
    /// task also gets its own mount namespace with a `/proc` that shows only
    /// its own uid's processes (`hidepid=2`), and a private `/dev/shm` of at
    /// most `max_file_bytes` that vanishes with the task.
    pub fn new(
        memory_limit_bytes: u64,
        max_file_bytes: u64,
        max_open_files: u64,
        max_processes: Option<u64>,
    ) -> Result<Self, ConfigError> {
        let mut rlimits = vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_DATA, memory_limit_bytes),
            (libc::RLIMIT_FSIZE, max_file_bytes),
            (libc::RLIMIT_NOFILE, max_open_files),
        ];
        // RLIMIT_NPROC counts every thread of the real uid; without a uid of its own
        // the task would share the count with the runner, so it is only set per slot.
        if let Some(n) = max_processes {
            rlimits.push((libc::RLIMIT_NPROC, n));
        }
        let mounts = max_processes
            .is_some()
            .then(|| private_mounts(max_file_bytes));
        Ok(Self {
            seccomp: Arc::new(seccomp_program()?),
            rlimits,
            mounts,
        })
    }

    /// Arranges for `cmd`'s child to enter the box just before `exec`:
    /// slot cgroups, new session, closed descriptors, rlimits, OOM score, private mounts,
    /// identity, death signal, `PR_SET_NO_NEW_PRIVS` and the seccomp filter,
    /// in that order.
    pub fn install(
        &self,
        cmd: &mut tokio::process::Command,
        identity: Option<Identity>,
        cgroup: crate::cgroup::Join,
    ) {
        let policy = self.clone();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe system calls and
        // touches memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || policy.apply_in_child(parent, identity, cgroup));
        }
    }

    fn apply_in_child(
        &self,
        parent: libc::pid_t,
        identity: Option<Identity>,
        cgroup: crate::cgroup::Join,
    ) -> io::Result<()> {
        // SAFETY (whole function): plain system calls on valid arguments.
        unsafe {
            // cgroup: first, so everything from here on, and all the task
            // starts, is counted in the slot's cgroups (needs root: before
            // the identity switch).
            cgroup.enter()?;
            // Own session and process group: the runner can signal the group and
            // the task has no controlling terminal.
            check(libc::setsid())?;
            libc::umask(0o077);
            // Descriptors some library opened without O_CLOEXEC must not leak into
            // the task (std's own are already close-on-exec).
            set_cloexec_from(3)?;
            for &(resource, value) in &self.rlimits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(resource, &limit))?;
            }
            // Before the identity switch, which makes /proc/self root-owned until
            // exec. Written as root, 1000 also becomes the floor the task cannot
            // lower (oom_score_adj_min). Without root, a non-dumpable runner (the
            // server) leaves /proc/self root-owned in this child too: the runner
            // then sets the score from outside once node runs (`prefer_for_oom_kill_pid`).
            if identity.is_some() {
                prefer_for_oom_kill()?;
            }
            if let Some(mounts) = &self.mounts {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing mounted here may propagate back to the host.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for m in mounts.iter() {
                    check(libc::mount(
                        m.source.as_ptr(),
                        m.target.as_ptr(),
                        m.fstype.as_ptr(),
                        m.flags,
                        m.data.as_ptr().cast(),
                    ))?;
                }
            }
            if let Some(id) = identity {
                // Raw calls: glibc's wrappers coordinate all threads of a process,
                // which is pointless (and unsafe) after fork.
                check(
                    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                        as libc::c_int,
                )?;
                check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) as libc::c_int)?;
                check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) as libc::c_int)?;
                if libc::geteuid() != id.uid || libc::getegid() != id.gid {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            // After the identity switch: the kernel clears the death signal when
            // credentials change. It follows the *thread* that forked: tokio
            // runtime workers, which spawn tasks, live as long as the runtime.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // The runner may have died before the death signal was armed.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        seccompiler::apply_filter(&self.seccomp)
            .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// The mounts of a task's namespace. A fresh procfs with `hidepid=2` lists
/// only the processes of the task's own uid: not the runner, not other tasks
/// (whose command lines carry client input). Procfs options are per mount
/// only since Linux 5.8; before that they belong to the pid namespace, and
/// mounting one would silently switch the host's `/proc` to `hidepid=2` too.
/// The runner does not change the host behind the operator's back, so on such
/// kernels tasks keep the shared `/proc` (and a warning says so).
/// A tmpfs over `/dev/shm` (when the host has one) keeps shared memory
/// private, bounded, and gone with the task.
fn private_mounts(shm_bytes: u64) -> Arc<[Mount]> {
    let sealed = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut mounts = Vec::new();
    if kernel_at_least(5, 8) {
        mounts.push(Mount {
            source: c"proc",
            target: c"/proc",
            fstype: c"proc",
            flags: sealed,
            data: c"hidepid=2".to_owned(),
        });
    } else {
        tracing::warn!(
            "kernel older than 5.8: a private hidepid /proc would change the host's /proc, \
             so tasks can see each other's processes and command lines"
        );
    }
    if std::path::Path::new("/dev/shm").is_dir() {
        // Digits and ASCII only: no NUL inside.
        if let Ok(data) = CString::new(format!("size={shm_bytes},mode=1777")) {
            mounts.push(Mount {
                source: c"tmpfs",
                target: c"/dev/shm",
                fstype: c"tmpfs",
                flags: sealed,
                data,
            });
        }
    }
    mounts.into()
}

/// Whether the running kernel's version is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_release(&release) >= Some((major, minor))
}

/// `"6.18.3-arch1"` → `(6, 18)`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Makes the calling process the OOM killer's first choice, so a task, not
/// the runner, dies when memory runs out. Async-signal-safe.
unsafe fn prefer_for_oom_kill() -> io::Result<()> {
    let fd = libc::open(
        c"/proc/self/oom_score_adj".as_ptr(),
        libc::O_WRONLY | libc::O_CLOEXEC,
    );
    check(fd)?;
    let value = b"1000";
    let written = libc::write(fd, value.as_ptr().cast(), value.len());
    let result = match written {
        n if n == value.len() as isize => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    };
    libc::close(fd);
    result
}

/// Makes a running task (same uid as the runner) the OOM killer's first
/// choice from outside: the non-root counterpart of `prefer_for_oom_kill`.
/// Raising the score needs no privilege; the task may lower it again, which
/// only matters in the non-root mode that is documented as weaker.
pub(crate) fn prefer_for_oom_kill_pid(pid: libc::pid_t) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), b"1000")
}

/// Marks every descriptor from `first` up close-on-exec. `close_range` needs
/// Linux 5.11; older kernels (enclave kernels may be 4.14 or 5.10) get a loop
/// over the descriptor table. Async-signal-safe.
unsafe fn set_cloexec_from(first: libc::c_int) -> io::Result<()> {
    let rc = libc::syscall(
        libc::SYS_close_range,
        first as u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    if rc == 0 {
        return Ok(());
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
    let end = libc::c_int::try_from(limit.rlim_cur)
        .unwrap_or(libc::c_int::MAX)
        .min(1 << 20);
    for fd in first..end {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
        }
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bit x32-ABI system call numbers carry on x86-64. The kernel accepts them under
/// the x86-64 audit arch, so each denied call is listed under both numbers.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// The seccomp program: everything allowed except
/// - `socket(AF_VSOCK, ..)` and `socketpair(AF_VSOCK, ..)`: inside an enclave vsock
///   is the one way out, to the parent instance;
/// - `io_uring_setup`: io_uring can create sockets without calling `socket()`.
///
/// Both fail with `EPERM`. Foreign architectures (e.g. the i386 `socketcall`
/// entry point) kill the process.
fn seccomp_program() -> Result<BpfProgram, ConfigError> {
    let vsock_family = || -> Result<Vec<SeccompRule>, ConfigError> {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )?;
        Ok(vec![SeccompRule::new(vec![cond])?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut deny = |nr: i64, with: Vec<SeccompRule>| -> Result<(), ConfigError> {
        #[cfg(target_arch = "x86_64")]
        rules.insert(nr | X32_SYSCALL_BIT, with.clone());
        rules.insert(nr, with);
        Ok(())
    };
    deny(libc::SYS_socket, vsock_family()?)?;
    deny(libc::SYS_socketpair, vsock_family()?)?;
    deny(libc::SYS_io_uring_setup, Vec::new())?;
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        ConfigError::Invalid(format!(
            "seccomp: unsupported architecture {}",
            std::env::consts::ARCH
        ))
    })?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// How to find everything a task started, to kill it.
#[derive(Debug, Clone)]
pub(crate) enum BoxKind {
    /// Every process of this (slot-private) uid belongs to the task.
    Uid(Identity),
    /// Same uid as the runner: the task's process group, plus any process whose
    /// environment still carries `NAUTILUS_TASK_ID=<id>`. Weaker: a process that
    /// rewrites its own environment and leaves the group escapes.
    Marker { pgid: libc::pid_t, marker: Vec<u8> },
}

/// The box could not be emptied in time.
#[derive(Debug, thiserror::Error)]
#[error("processes of the task were still alive after {KILL_DEADLINE:?}: {0:?}")]
pub(crate) struct KillError(Vec<libc::pid_t>);

impl BoxKind {
    /// SIGKILLs everything in the box and returns once none of it is left.
    /// `main` (the task's main process, reaped by its supervisor) is not
    /// waited for here. Blocking.
    ///
    /// With a slot uid the runner is a child subreaper (see [`become_subreaper`]),
    /// so every orphan of the task ends up as its child: this waits until each
    /// one is dead *and reaped*, so the slot's process count (`RLIMIT_NPROC`)
    /// is zero for the next task. Without a slot uid, orphans go to init and
    /// only live processes are awaited.
    pub fn kill_all(&self, main: Option<libc::pid_t>) -> Result<(), KillError> {
        let me = std::process::id() as libc::pid_t;
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            let left: Vec<libc::pid_t> = match self {
                Self::Uid(id) => {
                    kill_as(*id);
                    let mut left = Vec::new();
                    for p in processes().filter(|p| p.uid == id.uid && Some(p.pid) != main) {
                        match (p.zombie, p.ppid == me) {
                            (true, true) => {
                                // SAFETY: waitpid on a zombie child that no one else waits for.
                                let reaped = unsafe {
                                    libc::waitpid(p.pid, std::ptr::null_mut(), libc::WNOHANG)
                                };
                                // 0: a thread-group leader shows as a zombie while
                                // its other threads are still exiting, and cannot be
                                // reaped yet. Try again next round.
                                if reaped == 0 {
                                    left.push(p.pid);
                                }
                            }
                            // Its parent is being killed too; the zombie is then
                            // reparented to this subreaper and reaped next round.
                            (true, false) | (false, _) => left.push(p.pid),
                        }
                    }
                    left
                }
                Self::Marker { pgid, marker } => {
                    // SAFETY: plain kill(2); failure just means the group is gone.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let found: Vec<_> = processes()
                        .filter(|p| !p.zombie && p.pid != me && environ_has(p.pid, marker))
                        .map(|p| p.pid)
                        .collect();
                    for &pid in &found {
                        // SAFETY: as above.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    found
                }
            };
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(KillError(left));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Makes the calling process adopt its orphaned descendants, so the processes a
/// task leaves behind are reaped by the runner (promptly, and counted against
/// nothing once gone) instead of waiting for init.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl on the calling process.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
}

/// Forks a helper that calls `kill(-1, SIGKILL)` with the slot uid as its
/// *effective* uid: the kernel then signals every process of that uid in one
/// pass under the task-list lock, so a fork bomb cannot outrun it (a process
/// with a pending SIGKILL cannot fork).
///
/// The helper's real and saved uid are the killer uid, which no task has:
/// kill(2) lets a sender signal a process when the sender's real or
/// effective uid equals the target's real or saved uid, so the helper reaches
/// the task but the task cannot reach the helper (a task spinning on
/// `kill(-1, SIGSTOP)` would otherwise freeze it). Should the helper still
/// stop or hang, it is killed after [`HELPER_DEADLINE`]; the caller loops.
fn kill_as(id: Identity) {
    // SAFETY: the child makes only raw system calls, then _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            if !become_killer(id) {
                libc::_exit(2);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        }
    }
    if pid > 0 {
        reap_helper(pid);
    }
}

/// Switches the calling (forked, root) process to the kill helper's
/// credentials: gid and real/saved uid `id.killer`, effective uid `id.uid`.
/// Raw system calls only (see [`Policy::apply_in_child`]).
unsafe fn become_killer(id: Identity) -> bool {
    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
        && libc::syscall(libc::SYS_setresgid, id.killer, id.killer, id.killer) == 0
        && libc::syscall(libc::SYS_setresuid, id.killer, id.uid, id.killer) == 0
}

/// Waits for the kill helper `pid` to exit; SIGKILLs it if it stops or
/// outlives [`HELPER_DEADLINE`].
fn reap_helper(pid: libc::pid_t) {
    let deadline = Instant::now() + HELPER_DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::WUNTRACED) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
        let stopped = rc == pid && libc::WIFSTOPPED(status);
        if rc == pid && !stopped {
            return;
        }
        if stopped || Instant::now() >= deadline {
            // SAFETY: kill and waitpid on our own child. SIGKILL ends a stopped
            // process too, and the helper blocks on nothing, so the wait is short.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                while libc::waitpid(pid, &mut status, 0) < 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// World-writable directories where a task can leave files behind.
const SHARED_SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// Removes the entries at the top of [`SHARED_SCRATCH`] that `uid` owns, so a
/// task's files neither outlive it nor meet the slot's next task. Symlinks
/// are removed, never followed. Run once the slot's processes are dead: the
/// sticky bit keeps every other uid from renaming these entries.
pub(crate) fn remove_leftovers(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for dir in SHARED_SCRATCH {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.uid() != uid {
                continue;
            }
            let path = entry.path();
            let removed = if meta.is_dir() {
                // Never follows symlinks (openat/unlinkat with O_NOFOLLOW).
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::error!(path = %path.display(), error = %e, "could not remove a task's leftover");
            }
        }
    }
}

/// What the runner needs to know about one process.
struct ProcInfo {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    /// Real uid.
    uid: u32,
    /// Exited, waiting to be reaped.
    zombie: bool,
}

/// Every process in /proc (those that vanish while being read are skipped).
fn processes() -> impl Iterator<Item = ProcInfo> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            parse_status(
                pid,
                &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
            )
        })
}

fn parse_status(pid: libc::pid_t, status: &str) -> Option<ProcInfo> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let state = field("State:")?;
    Some(ProcInfo {
        pid,
        ppid: field("PPid:")?.parse().ok()?,
        uid: field("Uid:")?.split_whitespace().next()?.parse().ok()?,
        zombie: state.starts_with('Z') || state.starts_with('X'),
    })
}

fn environ_has(pid: libc::pid_t, marker: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.3-arch1-1\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(
            parse_release("4.14.355-275.572.amzn2.x86_64"),
            Some((4, 14))
        );
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("4.14.1") < Some((5, 8)));
        assert!(parse_release("5.8.0") >= Some((5, 8)));
    }

    use super::*;

    fn skip_unless_root(what: &str) -> bool {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return false;
        }
        skip_report::skipped(what, "needs root");
        true
    }

    /// Forks a child that runs `f` (raw system calls only) and exits with its result.
    fn fork_with(f: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child only runs `f`, which makes raw system calls, then _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
            if pid == 0 {
                libc::_exit(f());
            }
            pid
        }
    }

    fn exit_code(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn kill_and_reap(pid: libc::pid_t) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }

    /// Takes the slot identity fully, as a task has it. Raw system calls only.
    unsafe fn become_slot(id: Identity) -> bool {
        libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) == 0
            && libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) == 0
    }

    /// Leases uids so no concurrently running test runner uses them.
    fn identity() -> (crate::uids::UidLease, Identity) {
        let temp = std::env::temp_dir();
        let parent = crate::uids::UidLease::lock_parent(&temp);
        let lease = crate::uids::UidLease::take_first_free(parent, 61_000, 1).expect("uid lease");
        let id = lease.slot(0);
        (lease, id)
    }

    #[test]
    fn a_task_cannot_signal_the_kill_helper_but_the_helper_reaches_the_task() {
        if skip_unless_root("kill helper credentials") {
            return;
        }
        let (_lease, id) = identity();
        // SAFETY (closures): raw system calls in forked children.
        let helper = fork_with(|| unsafe {
            if !become_killer(id) {
                return 2;
            }
            loop {
                libc::pause();
            }
        });
        let task = fork_with(|| unsafe {
            if !become_slot(id) {
                return 2;
            }
            loop {
                libc::pause();
            }
        });
        // Both have switched identity well within this time.
        std::thread::sleep(Duration::from_millis(100));
        let task_to_helper = fork_with(|| unsafe {
            if !become_slot(id) {
                return 2;
            }
            let denied =
                libc::kill(helper, libc::SIGSTOP) == -1 && *libc::__errno_location() == libc::EPERM;
            i32::from(!denied)
        });
        let helper_to_task =
            fork_with(|| unsafe { i32::from(!(become_killer(id) && libc::kill(task, 0) == 0)) });
        let (denied, reached) = (exit_code(task_to_helper), exit_code(helper_to_task));
        kill_and_reap(helper);
        kill_and_reap(task);
        assert_eq!(denied, 0, "a slot process could SIGSTOP the kill helper");
        assert_eq!(reached, 0, "the kill helper cannot signal a slot process");
    }

    /// Runs `reap_helper(pid)` on a thread; on a hang, kills `pid` to free it and fails.
    fn reap_within(pid: libc::pid_t, bound: Duration) -> Duration {
        let (done, finished) = std::sync::mpsc::channel();
        let started = Instant::now();
        let waiter = std::thread::spawn(move || {
            reap_helper(pid);
            let _ = done.send(());
        });
        let hung = finished.recv_timeout(bound).is_err();
        if hung {
            kill_and_reap(pid);
        }
        waiter.join().unwrap();
        assert!(!hung, "reap_helper hung on helper {pid}");
        started.elapsed()
    }

    #[test]
    fn a_stopped_helper_is_killed_and_reaped() {
        // SAFETY: raw system calls in the forked child.
        let pid = fork_with(|| unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
            0
        });
        reap_within(pid, Duration::from_secs(5));
        // SAFETY: probing a pid we no longer own.
        let gone = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } < 0;
        assert!(gone, "helper {pid} was not reaped");
    }

    #[test]
    fn a_late_helper_is_killed_after_the_deadline() {
        // SAFETY: raw system calls in the forked child.
        let pid = fork_with(|| unsafe {
            loop {
                libc::pause();
            }
        });
        let took = reap_within(pid, Duration::from_secs(5));
        assert!(took >= HELPER_DEADLINE, "returned after {took:?}");
    }
}
