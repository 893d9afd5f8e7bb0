//! What every task gets in both modes: resource limits, `no_new_privs` and
//! the seccomp filter; and, for the unprivileged mode, how the child enters
//! them before `exec` and how a task's processes are found and killed.
//!
//! The root-mode box (namespaces, private file system, PID 1 reaper) is in
//! [`crate::ns`]; it applies the same [`Policy`] in its own child.
//!
//! Everything in [`Policy::enter`] runs in the forked child of a
//! multi-threaded process, so it only makes raw system calls (async-signal-safe,
//! no allocation, no locks). The seccomp programs are compiled before the fork.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::ConfigError;

/// How long killing an unprivileged task's processes may take before the
/// runner gives up and reports it.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Version of the seccomp profile below, reported in [`crate::Isolation`].
/// Bump it whenever the rules change.
pub(crate) const SECCOMP_PROFILE: &str = "nautilus-seccomp-3";

/// The unprivileged identity of a slot (only when the runner is root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// `setrlimit`'s resource type: an enum typedef in glibc, a plain int in musl
/// (the enclave image's static build).
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// Resource limits and the seccomp programs, prepared once per runner.
#[derive(Clone)]
pub(crate) struct Policy {
    /// Installed in this order; see [`seccomp_programs`].
    seccomp: Arc<[BpfProgram]>,
    rlimits: Arc<[(RlimitResource, u64)]>,
}

impl Policy {
    /// `max_processes` is set (only) when tasks run under slot uids, where
    /// `RLIMIT_NPROC` counts the task's processes alone.
    pub fn new(
        memory_limit_bytes: u64,
        max_file_bytes: u64,
        max_open_files: u64,
        max_processes: Option<u64>,
        deny_memfd: bool,
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
        Ok(Self {
            seccomp: seccomp_programs(deny_memfd)?.into(),
            rlimits: rlimits.into(),
        })
    }

    /// Unprivileged mode: arranges for `cmd`'s child to enter the box just
    /// before `exec` (new session, closed descriptors, [`Policy::enter`]).
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        let policy = self.clone();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe system calls and
        // touches memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Own session and process group: the runner can signal the group and
                // the task has no controlling terminal.
                check(libc::setsid())?;
                libc::umask(0o077);
                // Descriptors some library opened without O_CLOEXEC must not leak into
                // the task (std's own are already close-on-exec).
                set_cloexec_from(3)?;
                policy.set_rlimits()?;
                policy.enter(None, false)?;
                // The runner may have died before the death signal was armed.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// Sets the resource limits. Async-signal-safe.
    pub fn set_rlimits(&self) -> io::Result<()> {
        for &(resource, value) in self.rlimits.iter() {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit with a valid struct.
            check(unsafe { libc::setrlimit(resource, &limit) })?;
        }
        Ok(())
    }

    /// The last steps before `exec`, in this order: the slot identity (if
    /// any), `PR_SET_PDEATHSIG(SIGKILL)` (after the identity switch, which
    /// would clear it) and, unless this process inherited them already
    /// (`confined`), [`Policy::confine`]. Async-signal-safe.
    pub fn enter(&self, identity: Option<Identity>, confined: bool) -> io::Result<()> {
        // SAFETY (whole block): plain system calls on valid arguments.
        unsafe {
            if let Some(id) = identity {
                become_slot(id)?;
            }
            // The kernel clears the death signal when credentials change. It
            // follows the *thread* that forked: tokio runtime workers, which
            // spawn tasks, live as long as the runtime.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
        }
        if confined {
            return Ok(());
        }
        self.confine()
    }

    /// `PR_SET_NO_NEW_PRIVS` and the seccomp filters, which every process
    /// started afterwards inherits: loading them costs about 0.5 ms of CPU
    /// per process (the kernel checks the filter against every system call
    /// to cache the ones it always allows), so the box's reaper loads them
    /// once for itself and `node`. Async-signal-safe.
    pub fn confine(&self) -> io::Result<()> {
        // SAFETY: prctl with constant arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        for program in self.seccomp.iter() {
            seccompiler::apply_filter(program)
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        Ok(())
    }
}

/// Switches the calling (forked, root) process to the slot identity for good:
/// no supplementary groups, real, effective and saved ids all the slot's.
/// Raw calls: glibc's wrappers coordinate all threads of a process, which is
/// pointless (and unsafe) after fork.
pub(crate) unsafe fn become_slot(id: Identity) -> io::Result<()> {
    check(
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) as libc::c_int,
    )?;
    check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) as libc::c_int)?;
    check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) as libc::c_int)?;
    if libc::geteuid() != id.uid || libc::getegid() != id.gid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Makes a running task (same uid as the runner) the OOM killer's first
/// choice from outside. Raising the score needs no privilege; the task may
/// lower it again, which only matters in the non-root mode that is
/// documented as weaker. (As root the box writes it before dropping
/// privileges, which also makes it a floor.)
pub(crate) fn prefer_for_oom_kill_pid(pid: libc::pid_t) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), b"1000")
}

/// Marks every descriptor from `first` up close-on-exec. `close_range` needs
/// Linux 5.11; older kernels (enclave kernels may be 4.14 or 5.10) get a loop
/// over the descriptor table. Async-signal-safe.
pub(crate) unsafe fn set_cloexec_from(first: libc::c_int) -> io::Result<()> {
    let rc = libc::syscall(
        libc::SYS_close_range,
        first as u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    if rc == 0 {
        return Ok(());
    }
    for fd in first..fd_table_end()? {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
        }
    }
    Ok(())
}

/// Closes every descriptor from `first` up (a loop before Linux 5.9).
/// Async-signal-safe.
pub(crate) unsafe fn close_from(first: libc::c_int) -> io::Result<()> {
    if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) == 0 {
        return Ok(());
    }
    for fd in first..fd_table_end()? {
        libc::close(fd);
    }
    Ok(())
}

unsafe fn fd_table_end() -> io::Result<libc::c_int> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
    Ok(libc::c_int::try_from(limit.rlim_cur)
        .unwrap_or(libc::c_int::MAX)
        .min(1 << 20))
}

pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
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

/// System calls a Node.js task never needs and that widen the kernel surface
/// it can reach, after Docker's default profile: namespaces, mounts, the
/// keyrings, tracing and other processes' memory, BPF, perf, userfaultfd,
/// kernel modules and kexec, reboot, swap, accounting, file handles,
/// io_uring (which can create sockets without `socket()`), clock and host
/// name changes, and obsolete calls. Most need privileges a slot uid lacks
/// anyway; denying them also closes the kernel bugs behind them.
fn always_denied() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_process_madvise,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_lookup_dcookie,
        libc::SYS_fanotify_init,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
        libc::SYS_nfsservctl,
        libc::SYS_afs_syscall,
        libc::SYS_tuxcall,
    ]);
    calls
}

/// Every namespace flag `clone(2)` knows (CLONE_NEWTIME shares its bit with
/// the exit signal there and only works through `unshare`/`clone3`).
const CLONE_NEW_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `personality(2)` values Docker's profile allows: `PER_LINUX` (0),
/// `PER_LINUX32` (8), `UNAME26` (0x20000), the last two combined, and the
/// query `0xffffffff`.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The seccomp programs, installed one after the other:
/// 1. everything allowed except, with `EPERM`: [`always_denied`], each also
///    under its x32 number, and every x32-only number (512–547);
///    `memfd_create` where the kernel cannot make memfds non-executable
///    (`deny_memfd`: Node.js does not use it);
///    `clone` with any `CLONE_NEW*` flag; `socket`/`socketpair` with
///    `AF_VSOCK` (inside an enclave vsock is the one way out, to the parent
///    instance); `personality` other than [`ALLOWED_PERSONALITIES`];
/// 2. `clone3` fails with `ENOSYS`: its flags sit in memory a filter cannot
///    read, and libc falls back to `clone` (checked above) on `ENOSYS`.
///
/// Foreign architectures (e.g. the i386 `socketcall` entry point) kill the process.
fn seccomp_programs(deny_memfd: bool) -> Result<Vec<BpfProgram>, ConfigError> {
    let dword = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
    };
    let vsock_family = || -> Result<Vec<SeccompRule>, ConfigError> {
        let cond = dword(0, SeccompCmpOp::Eq, libc::AF_VSOCK as u64)?;
        Ok(vec![SeccompRule::new(vec![cond])?])
    };
    let namespace_flags = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| {
            Ok(SeccompRule::new(vec![dword(
                0,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])?)
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let odd_personality = vec![SeccompRule::new(
        ALLOWED_PERSONALITIES
            .iter()
            .map(|&p| dword(0, SeccompCmpOp::Ne, p))
            .collect::<Result<Vec<_>, _>>()?,
    )?];

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in always_denied() {
        deny(&mut denied, nr, Vec::new());
    }
    if deny_memfd {
        deny(&mut denied, libc::SYS_memfd_create, Vec::new());
    }
    // The x32 ABI's own numbers (ptrace 521, process_vm_readv 539, …).
    #[cfg(target_arch = "x86_64")]
    for nr in 512..=547 {
        denied.insert(nr | X32_SYSCALL_BIT, Vec::new());
    }
    deny(&mut denied, libc::SYS_socket, vsock_family()?);
    deny(&mut denied, libc::SYS_socketpair, vsock_family()?);
    deny(&mut denied, libc::SYS_clone, namespace_flags);
    deny(&mut denied, libc::SYS_personality, odd_personality);
    let mut clone3 = BTreeMap::new();
    deny(&mut clone3, libc::SYS_clone3, Vec::new());

    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        ConfigError::Invalid(format!(
            "seccomp: unsupported architecture {}",
            std::env::consts::ARCH
        ))
    })?;
    let program = |rules, errno: i32| -> Result<BpfProgram, ConfigError> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )?;
        Ok(filter.try_into()?)
    };
    Ok(vec![
        program(denied, libc::EPERM)?,
        program(clone3, libc::ENOSYS)?,
    ])
}

fn deny(rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, with: Vec<SeccompRule>) {
    #[cfg(target_arch = "x86_64")]
    rules.insert(nr | X32_SYSCALL_BIT, with.clone());
    rules.insert(nr, with);
}

/// Finds everything an unprivileged task started, to kill it: the task's
/// process group, plus any process whose environment still carries
/// `NAUTILUS_TASK_ID=<id>`. Weaker than the root box: a process that
/// rewrites its own environment and leaves the group escapes.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    pub pgid: libc::pid_t,
    pub marker: Vec<u8>,
}

/// The task's processes could not be killed in time.
#[derive(Debug, thiserror::Error)]
#[error("processes of the task were still alive after {KILL_DEADLINE:?}: {0:?}")]
pub(crate) struct KillError(Vec<libc::pid_t>);

impl Marker {
    /// SIGKILLs the group and every marked process, and returns once none of
    /// them is alive. Blocking.
    pub fn kill_all(&self) -> Result<(), KillError> {
        let me = std::process::id() as libc::pid_t;
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            // SAFETY: plain kill(2); failure just means the group is gone.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            let found: Vec<_> = live_processes()
                .filter(|&pid| pid != me && environ_has(pid, &self.marker))
                .collect();
            for &pid in &found {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if found.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(KillError(found));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Every live (not zombie) process in /proc.
fn live_processes() -> impl Iterator<Item = libc::pid_t> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .is_some_and(|s| !s.trim_start().starts_with(['Z', 'X']))
            })
        })
}

fn environ_has(pid: libc::pid_t, marker: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker))
}
