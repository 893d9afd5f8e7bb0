//! The root-mode box: a fresh set of namespaces per run, a private file
//! system view, and a small PID 1 reaper that starts `node`.
//!
//! # Why a raw `clone` and not `std::process::Command`
//!
//! `Command::spawn` waits (on a close-on-exec pipe) until its child has
//! called `exec` or exited, so a reaper that must stay alive *without*
//! exec-ing cannot live in a `pre_exec` hook. A re-exec'd helper binary
//! (bubblewrap's way) would need a second executable in the image or
//! argv tricks. Instead [`spawn`] calls `clone(2)` itself with
//! `CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWPID`
//! and builds the box in that child, which becomes PID 1 of the new PID
//! namespace ("the reaper"):
//!
//! 1. joins the slot's cgroups, moves its descriptors to fixed numbers (0–2
//!    the task's stdio, 3 the report pipe) and closes every other one, so no
//!    descriptor of a concurrent run is held by this box (a warm box's
//!    `node` also gets the read end of its control pipe, high up);
//! 2. makes every mount private, binds the task snapshot read-only over
//!    the work directory (the task sees the staged tasks at
//!    `<work dir>/task` and nothing else of the work directory), mounts a
//!    size-capped `nosuid,nodev,noexec` tmpfs over every directory others
//!    can write (found at start), a minimal `/dev`, a `/proc` of the new PID namespace,
//!    brings up loopback and sets the host name;
//! 3. raises its OOM score (inherited, and a floor the task cannot lower),
//!    blocks SIGCHLD, SIGTERM
//!    and SIGINT, and clones `node`'s process, which takes a new session,
//!    the rlimits, the slot identity, `no_new_privs` and seccomp, then `exec`s;
//! 4. drops to the slot identity and the same seccomp filters itself, and
//!    loops on `sigtimedwait`: SIGTERM/SIGINT are forwarded to `node`'s
//!    process group, children are reaped, and when `node` ends its wait
//!    status goes to the runner over the report pipe and the reaper exits.
//!
//! When PID 1 of a namespace exits, the kernel kills every other process in
//! it and reaps them before the reaper itself becomes a zombie, so once the
//! runner has reaped the reaper, nothing of the run is left: no process, no
//! SysV IPC object (the IPC namespace dies with it), no mount, no file in the
//! tmpfs scratch directories. The reaper dies with the runner
//! (`PR_SET_PDEATHSIG`), and neither the task nor anything it starts can
//! signal it (the kernel drops signals from inside a namespace to its init
//! unless they are blocked and waited for, and SIGKILL/SIGSTOP always).
//!
//! Everything between `clone` and `exec` is async-signal-safe: raw system
//! calls on memory prepared before the `clone`, no allocation, no locks.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::sandbox::{check, close_from, Identity, Policy};

/// The namespaces every run gets.
pub(crate) const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("mount", libc::CLONE_NEWNS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("pid", libc::CLONE_NEWPID),
];

/// The name service's file of host names, which each box gets its own of.
pub(crate) const HOSTS: &str = "/etc/hosts";
/// Host name inside the box.
const HOSTNAME: &[u8] = b"nautilus-task";
/// Where `HOME` and `TMPDIR` point inside the box: a private tmpfs.
pub(crate) const TASK_HOME: &str = "/tmp";
/// The directories a run directory holds, under the work directory.
pub(crate) const CODE_DIR: &str = "task";
/// Candidate directories others may write; whichever exist get a private tmpfs.
const SHARED_CANDIDATES: [&str; 6] = [
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/run/lock",
    "/var/lock",
    "/dev/mqueue",
];
/// How deep, and how many directories, the start-up search for other
/// world-writable directories goes.
const SCAN_DEPTH: usize = 3;
const SCAN_BUDGET: usize = 20_000;

/// Fixed descriptor numbers inside the box.
const FD_REPORT: RawFd = 3;
/// A warm box's control pipe, in the reaper until `node` is cloned.
const FD_CONTROL: RawFd = 4;

/// Report pipe messages: three native-endian `u32`s.
const MSG_LEN: usize = 12;
const MSG_ERROR: u32 = 1;
const MSG_STATUS: u32 = 2;

/// The steps of building the box, named in errors.
const STEPS: [&str; 15] = [
    "moving descriptors",
    "making mounts private",
    "binding the task code",
    "mounting scratch tmpfs",
    "building /dev",
    "mounting /proc",
    "bringing up loopback",
    "setting the host name",
    "raising the OOM score",
    "joining the cgroup",
    "starting node's process",
    "dropping privileges",
    "executing node",
    "joining the egress network namespace",
    "binding /etc/hosts",
];
const STEP_FDS: u32 = 0;
const STEP_PRIVATE: u32 = 1;
const STEP_CODE: u32 = 2;
const STEP_SCRATCH: u32 = 3;
const STEP_DEV: u32 = 4;
const STEP_PROC: u32 = 5;
const STEP_NET: u32 = 6;
const STEP_UTS: u32 = 7;
const STEP_OOM: u32 = 8;
const STEP_CGROUP: u32 = 9;
const STEP_FORK: u32 = 10;
const STEP_ENTER: u32 = 11;
const STEP_EXEC: u32 = 12;
const STEP_NETNS: u32 = 13;
const STEP_HOSTS: u32 = 14;

/// The layout every box gets, decided once at start.
#[derive(Debug)]
pub(crate) struct BoxPlan {
    /// Canonical work directory: run directories live here, and inside the
    /// box it shows the run's own directory, read-only.
    work_dir: CString,
    /// `<work_dir>/task`: the task's code and working directory.
    code_dir: CString,
    /// Directories others can write on the host, outside `/dev`, parents first.
    scratch: Vec<CString>,
    /// The same, for the isolation summary (including `/dev/shm`).
    pub scratch_paths: Vec<String>,
    /// tmpfs options of a scratch directory.
    scratch_data: CString,
    /// Whether the host has an `/etc/hosts` to bind each box's own over
    /// (see [`crate::egress`]).
    pub has_hosts: bool,
}

/// Why the box cannot be planned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("the work directory {0} must not be inside {1}, which others can write: the task's own tmpfs hides it there (choose another --work-dir)")]
    WorkDirShared(PathBuf, String),
    #[error("{0} contains a NUL byte")]
    Nul(PathBuf),
}

impl BoxPlan {
    /// Plans the box for runs staged under `work_dir` (canonical), with
    /// `scratch_bytes` of tmpfs per scratch directory.
    pub fn new(work_dir: &Path, scratch_bytes: u64) -> Result<Self, PlanError> {
        let shared = find_shared_dirs(work_dir);
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| PlanError::Nul(p.to_owned()))
        };
        if let Some(dir) = shared.iter().find(|d| work_dir.starts_with(d)) {
            return Err(PlanError::WorkDirShared(
                work_dir.to_owned(),
                dir.display().to_string(),
            ));
        }
        let mut scratch_paths: Vec<String> =
            shared.iter().map(|d| d.display().to_string()).collect();
        scratch_paths.push("/dev/shm".to_owned());
        scratch_paths.sort();
        scratch_paths.dedup();
        Ok(Self {
            work_dir: c(work_dir)?,
            code_dir: c(&work_dir.join(CODE_DIR))?,
            scratch: shared
                .iter()
                .filter(|d| !d.starts_with("/dev"))
                .map(|d| c(d))
                .collect::<Result<_, _>>()?,
            scratch_paths,
            // Digits and ASCII only: no NUL inside.
            scratch_data: CString::new(format!("size={scratch_bytes},mode=1777"))
                .map_err(|_| PlanError::Nul(PathBuf::from("tmpfs options")))?,
            has_hosts: Path::new(HOSTS).is_file(),
        })
    }

    /// Where the task's code is, inside the box.
    pub fn code_dir(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.code_dir.as_bytes()))
    }
}

/// Existing directories others can write, canonical, without those nested
/// in another one (its tmpfs hides them): [`SHARED_CANDIDATES`] (`/tmp`
/// always, even when not world-writable: `HOME` lives there) and whatever a
/// bounded search below `/` finds, outside `/proc`, `/sys`, `/dev` (which
/// the box replaces) and `work_dir`.
fn find_shared_dirs(work_dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<PathBuf> = SHARED_CANDIDATES
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .filter(|d| d.is_dir())
        .collect();
    let skip = [
        Path::new("/proc"),
        Path::new("/sys"),
        Path::new("/dev"),
        work_dir,
    ];
    let mut queue = vec![(PathBuf::from("/"), 0usize)];
    let mut budget = SCAN_BUDGET;
    while let Some((dir, depth)) = queue.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if budget == 0 {
                tracing::warn!(
                    "stopped searching for world-writable directories after {SCAN_BUDGET}"
                );
                queue.clear();
                break;
            }
            budget -= 1;
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if !meta.is_dir() || skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            if meta.mode() & 0o002 != 0 {
                found.push(path);
            } else if depth + 1 < SCAN_DEPTH {
                queue.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found.dedup();
    let mut outer: Vec<PathBuf> = Vec::new();
    for dir in found {
        if !outer.iter().any(|o| dir.starts_with(o)) {
            outer.push(dir);
        }
    }
    outer
}

/// Everything one run needs, prepared before the `clone`.
pub(crate) struct Spec<'a> {
    pub node: &'a Path,
    /// Arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// The complete environment.
    pub env: &'a [(OsString, OsString)],
    /// The snapshot (holding `task/`), bound over the work directory.
    pub run_dir: &'a Path,
    pub identity: Identity,
    /// `node`'s working directory (inside the box).
    pub cwd: &'a Path,
    /// A warm box: `node` gets the read end of a control pipe at this
    /// descriptor number (where the task's code is told later).
    pub control: Option<RawFd>,
    /// The slot's cgroups: the reaper joins them first, so it and everything
    /// it starts run inside.
    pub cgroup: crate::cgroup::Join,
    /// The slot's own hosts file, bound read-only over `/etc/hosts`.
    pub hosts: Option<&'a Path>,
    /// A network namespace the runner made (with the task's egress
    /// listeners in it) that the box joins instead of making its own.
    pub netns: Option<RawFd>,
}

/// The parent's ends of the task's standard streams.
pub(crate) struct Stdio {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    /// A warm box's control pipe.
    pub control: Option<pipe::Sender>,
}

/// A running box, from the runner's side.
pub(crate) struct NsChild {
    /// The reaper, PID 1 of the box's PID namespace.
    pid: libc::pid_t,
    report: pipe::Receiver,
    pending: Vec<u8>,
    reaped: bool,
}

/// How the box ended, as the reaper reported it.
pub(crate) enum Report {
    /// `node` ended with this status.
    Exited(ExitStatus),
    /// Building the box or starting `node` failed.
    Failed(String),
    /// The reaper is gone without a word (killed).
    Gone,
}

fn pipe2() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: descriptors pipe2 just returned, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Memory the child reads: built before the clone, never freed there.
struct ChildArgs<'a> {
    plan: &'a BoxPlan,
    policy: &'a Policy,
    run_dir: &'a CStr,
    cwd: &'a CStr,
    node: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    identity: Identity,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    /// The control pipe's read end, and its number in `node`.
    control: Option<(RawFd, RawFd)>,
    cgroup: crate::cgroup::Join,
    signals: libc::sigset_t,
    hosts: Option<&'a CStr>,
    netns: Option<RawFd>,
}

/// Starts a box running `node`. Must be called on a thread that lives as long
/// as the run (a tokio worker, not a blocking-pool thread): the reaper's
/// death signal follows the thread that cloned it.
pub(crate) fn spawn(plan: &BoxPlan, policy: &Policy, spec: &Spec) -> io::Result<(NsChild, Stdio)> {
    let node = cstr(spec.node.as_os_str())?;
    let args: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        })
        .collect::<Result<_, _>>()?;
    let argv: Vec<*const libc::c_char> = std::iter::once(node.as_ptr())
        .chain(args.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let run_dir = cstr(spec.run_dir.as_os_str())?;
    let cwd = cstr(spec.cwd.as_os_str())?;
    let hosts = spec.hosts.map(|h| cstr(h.as_os_str())).transpose()?;

    let (in_r, in_w) = pipe2()?;
    let control = spec
        .control
        .map(|at| pipe2().map(|p| (p, at)))
        .transpose()?;
    let (out_r, out_w) = pipe2()?;
    let (err_r, err_w) = pipe2()?;
    let (report_r, report_w) = pipe2()?;
    // SAFETY: sigemptyset/sigaddset on a local set.
    let signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        set
    };
    let args = ChildArgs {
        plan,
        policy,
        run_dir: &run_dir,
        cwd: &cwd,
        node: &node,
        argv: &argv,
        envp: &envp,
        identity: spec.identity,
        stdin: in_r.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        control: control.as_ref().map(|((r, _), at)| (r.as_raw_fd(), *at)),
        cgroup: spec.cgroup,
        signals,
        hosts: hosts.as_deref(),
        netns: spec.netns,
    };
    let mut flags = NAMESPACES.iter().fold(0, |f, (_, flag)| f | flag);
    if spec.netns.is_some() {
        flags &= !libc::CLONE_NEWNET;
    }
    // SAFETY: a fork-like clone (no new stack, no shared memory). The child
    // runs `reaper`, which makes only async-signal-safe calls on `args`
    // (valid: the child has its own copy of this stack) and never returns.
    let pid = unsafe { spec.cgroup.fork(flags) };
    if pid == 0 {
        // SAFETY: see above.
        unsafe { reaper(&args) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop((in_r, out_w, err_w, report_w));
    let control = match control {
        Some(((r, w), _)) => {
            drop(r);
            Some(pipe::Sender::from_owned_fd(w)?)
        }
        None => None,
    };
    let child = NsChild {
        pid: pid as libc::pid_t,
        report: pipe::Receiver::from_owned_fd(report_r)?,
        pending: Vec::new(),
        reaped: false,
    };
    let stdio = Stdio {
        stdin: pipe::Sender::from_owned_fd(in_w)?,
        stdout: pipe::Receiver::from_owned_fd(out_r)?,
        stderr: pipe::Receiver::from_owned_fd(err_r)?,
        control,
    };
    Ok((child, stdio))
}

impl NsChild {
    /// Waits for the reaper's report. Cancel-safe.
    pub async fn report(&mut self) -> Report {
        loop {
            if self.pending.len() >= MSG_LEN {
                let word = |i: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&self.pending[4 * i..4 * i + 4]);
                    u32::from_ne_bytes(b)
                };
                let (kind, a, b) = (word(0), word(1), word(2));
                self.pending.drain(..MSG_LEN);
                return match kind {
                    MSG_STATUS => Report::Exited(ExitStatus::from_raw(a as i32)),
                    MSG_ERROR => Report::Failed(format!(
                        "{}: {}",
                        STEPS
                            .get(a as usize)
                            .copied()
                            .unwrap_or("setting up the box"),
                        io::Error::from_raw_os_error(b as i32)
                    )),
                    _ => Report::Failed("garbled report from the box".to_owned()),
                };
            }
            let mut buf = [0u8; MSG_LEN];
            match self.report.read(&mut buf).await {
                Ok(0) | Err(_) => return Report::Gone,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Asks `node` to stop: the reaper forwards it to `node`'s process group.
    pub fn terminate(&self) {
        if !self.reaped {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether the box is alive and idle as far as the runner can see: the
    /// reaper has not reported (nor gone), and neither it nor a child of it
    /// is stopped or dead. Reads a few `/proc` files.
    pub fn is_waiting(&self) -> bool {
        if self.reaped || !self.pending.is_empty() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on our own open descriptor, without waiting.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
            return false;
        }
        let running = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
                .is_some_and(|state| !matches!(state, 'T' | 't' | 'Z' | 'X'))
        };
        let pid = self.pid.to_string();
        // Without CONFIG_PROC_CHILDREN only the reaper is checked.
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        running(&pid) && children.split_whitespace().all(running)
    }

    pub fn mark_reaped(&mut self) {
        self.reaped = true;
    }

    /// Kills the box and waits until the kernel has reaped all of it
    /// (blocking; for shutdown, where the slot cgroups go next).
    pub fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill and waitpid on our own unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        loop {
            let rc = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL) };
            if rc == self.pid || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        self.reaped = true;
    }
}

impl Drop for NsChild {
    /// A box nobody supervises any more (the run was dropped midway) is
    /// killed; a thread reaps it, so its slot uid holds no process for long.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = std::thread::Builder::new()
            .name("box-reaper".into())
            .spawn(move || {
                // SAFETY: waitpid on our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
            });
    }
}

/// Writes a report message. Async-signal-safe.
unsafe fn send(kind: u32, a: u32, b: u32) {
    let mut msg = [0u8; MSG_LEN];
    msg[..4].copy_from_slice(&kind.to_ne_bytes());
    msg[4..8].copy_from_slice(&a.to_ne_bytes());
    msg[8..].copy_from_slice(&b.to_ne_bytes());
    libc::write(FD_REPORT, msg.as_ptr().cast(), MSG_LEN);
}

/// Reports a failed step and exits. Async-signal-safe.
unsafe fn fail(step: u32, err: io::Error) -> ! {
    send(
        MSG_ERROR,
        step,
        err.raw_os_error().unwrap_or(libc::EIO) as u32,
    );
    libc::_exit(127)
}

fn or_fail<T>(step: u32, r: io::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // SAFETY: only reached in the box's processes.
        Err(e) => unsafe { fail(step, e) },
    }
}

fn rc(r: libc::c_int) -> io::Result<()> {
    check(r)
}

/// PID 1 of the box. Async-signal-safe throughout; never returns.
unsafe fn reaper(a: &ChildArgs) -> ! {
    // The slot's cgroups first, before its descriptors are closed below (as
    // root, before the identity switch): everything from here on counts there.
    let joined = a.cgroup.enter();
    // Step 1: descriptors. Everything first moves above 10, so moving to the
    // fixed numbers never overwrites one still needed; then all else closes.
    let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
    let report = high(a.report);
    if report < 0 {
        libc::_exit(127);
    }
    // Moved up before the report pipe takes its number, which it may hold.
    let netns = a.netns.map(high);
    if libc::dup2(report, FD_REPORT) < 0
        || libc::fcntl(FD_REPORT, libc::F_SETFD, libc::FD_CLOEXEC) < 0
    {
        libc::_exit(127);
    }
    if let Some(fd) = netns {
        or_fail(
            STEP_NETNS,
            rc_fd(fd).and_then(|fd| {
                let joined = rc(libc::setns(fd, libc::CLONE_NEWNET));
                libc::close(fd);
                joined
            }),
        );
    }
    let stdin = high(a.stdin);
    let stdout = high(a.stdout);
    let stderr = high(a.stderr);
    let control = a.control.map(|(fd, _)| high(fd));
    let moved = (|| -> io::Result<()> {
        rc(libc::dup2(rc_fd(stdin)?, 0))?;
        rc(libc::dup2(rc_fd(stdout)?, 1))?;
        rc(libc::dup2(rc_fd(stderr)?, 2))?;
        match control {
            Some(fd) => {
                rc(libc::dup2(rc_fd(fd)?, FD_CONTROL))?;
                close_from(FD_CONTROL + 1)
            }
            None => close_from(FD_REPORT + 1),
        }
    })();
    or_fail(STEP_FDS, moved);
    or_fail(STEP_CGROUP, joined);

    let plan = a.plan;
    let none = std::ptr::null::<libc::c_char>();
    or_fail(
        STEP_PRIVATE,
        rc(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )),
    );
    // Before the work directory is covered: the slot's file lives there.
    if let Some(hosts) = a.hosts {
        or_fail(STEP_HOSTS, bind_read_only(hosts, c"/etc/hosts"));
    }
    // The run directory, read-only, in place of the whole work directory.
    or_fail(
        STEP_CODE,
        rc(libc::mount(
            a.run_dir.as_ptr(),
            plan.work_dir.as_ptr(),
            none,
            libc::MS_BIND,
            std::ptr::null(),
        ))
        .and_then(|()| {
            rc(libc::mount(
                none,
                plan.work_dir.as_ptr(),
                none,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ))
        }),
    );
    let sealed = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for dir in &plan.scratch {
        or_fail(
            STEP_SCRATCH,
            rc(libc::mount(
                c"tmpfs".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                sealed,
                plan.scratch_data.as_ptr().cast(),
            )),
        );
    }
    or_fail(STEP_DEV, build_dev(plan));
    or_fail(
        STEP_PROC,
        rc(libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            sealed,
            std::ptr::null(),
        )),
    );
    or_fail(STEP_NET, loopback_up());
    or_fail(
        STEP_UTS,
        rc(libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len())),
    );
    // Written as root, before the identity switch: 1000 also becomes the
    // floor the task cannot go below (oom_score_adj_min), and node inherits it.
    or_fail(STEP_OOM, write_file(c"/proc/self/oom_score_adj", b"1000"));
    // Blocked before node exists, so its SIGCHLD cannot be missed. A blocked
    // signal reaches a namespace's init even with the default disposition.
    or_fail(
        STEP_FORK,
        rc(libc::sigprocmask(
            libc::SIG_BLOCK,
            &a.signals,
            std::ptr::null_mut(),
        )),
    );

    let node = libc::syscall(
        libc::SYS_clone,
        libc::SIGCHLD as libc::c_ulong,
        0usize,
        0usize,
        0usize,
        0usize,
    );
    if node == 0 {
        start_node(a);
    }
    if node < 0 {
        fail(STEP_FORK, io::Error::last_os_error());
    }
    let node = node as libc::pid_t;
    // The reaper holds none of the task's streams (their end of file is the
    // task's) and not the control pipe.
    for fd in [0, 1, 2, FD_CONTROL] {
        libc::close(fd);
    }
    or_fail(STEP_ENTER, a.policy.enter(Some(a.identity)));
    // The runner may have died before the death signal was armed: its end of
    // the report pipe is then closed.
    let mut pfd = libc::pollfd {
        fd: FD_REPORT,
        events: 0,
        revents: 0,
    };
    if libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & libc::POLLERR != 0 {
        libc::_exit(127);
    }
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let sig = libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &a.signals as *const libc::sigset_t,
            &mut info as *mut libc::siginfo_t,
            std::ptr::null::<libc::timespec>(),
            8usize,
        ) as libc::c_int;
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            if libc::kill(-node, sig) < 0 {
                libc::kill(node, sig);
            }
        } else if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL);
                if pid <= 0 {
                    break;
                }
                if pid == node {
                    send(MSG_STATUS, status as u32, 0);
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    libc::_exit(code);
                }
            }
        }
    }
}

fn rc_fd(fd: RawFd) -> io::Result<RawFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// `node`'s own process in the box. Async-signal-safe; never returns.
unsafe fn start_node(a: &ChildArgs) -> ! {
    let setup = (|| -> io::Result<()> {
        // Own session and process group: SIGTERM reaches the group, and the
        // task has no controlling terminal.
        rc(libc::setsid())?;
        libc::umask(0o077);
        a.policy.set_rlimits()?;
        if let Some((_, at)) = a.control {
            // High up (below RLIMIT_NOFILE), so node's own descriptors get
            // the numbers they get in a plain start; the bootstrap closes it.
            rc(libc::dup2(FD_CONTROL, at))?;
            rc(libc::close(FD_CONTROL))?;
        }
        rc(libc::chdir(a.cwd.as_ptr()))?;
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        rc(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        // The runner (Rust) ignores SIGPIPE; node expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        a.policy.enter(Some(a.identity))
    })();
    or_fail(STEP_ENTER, setup);
    libc::execve(a.node.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    fail(STEP_EXEC, io::Error::last_os_error())
}

/// Binds `source` over `target`, read-only, `nosuid,nodev,noexec`.
unsafe fn bind_read_only(source: &CStr, target: &CStr) -> io::Result<()> {
    let none = std::ptr::null::<libc::c_char>();
    rc(libc::mount(
        source.as_ptr(),
        target.as_ptr(),
        none,
        libc::MS_BIND,
        std::ptr::null(),
    ))?;
    rc(libc::mount(
        none,
        target.as_ptr(),
        none,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        std::ptr::null(),
    ))
}

/// A minimal private `/dev`: the harmless character devices, the standard
/// stream links and a private `/dev/shm`. No NSM, vsock, kmsg, mem or disk.
unsafe fn build_dev(plan: &BoxPlan) -> io::Result<()> {
    rc(libc::mount(
        c"tmpfs".as_ptr(),
        c"/dev".as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"size=64k,mode=755".as_ptr().cast(),
    ))?;
    let old = libc::umask(0);
    // No /dev/tty: a task has no controlling terminal, and Node.js does not open it.
    let nodes: [(&CStr, u32, u32); 5] = [
        (c"/dev/null", 1, 3),
        (c"/dev/zero", 1, 5),
        (c"/dev/full", 1, 7),
        (c"/dev/random", 1, 8),
        (c"/dev/urandom", 1, 9),
    ];
    for (path, major, minor) in nodes {
        rc(libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        ))?;
    }
    let links: [(&CStr, &CStr); 4] = [
        (c"/proc/self/fd", c"/dev/fd"),
        (c"/proc/self/fd/0", c"/dev/stdin"),
        (c"/proc/self/fd/1", c"/dev/stdout"),
        (c"/proc/self/fd/2", c"/dev/stderr"),
    ];
    for (target, link) in links {
        rc(libc::symlink(target.as_ptr(), link.as_ptr()))?;
    }
    rc(libc::mkdir(c"/dev/shm".as_ptr(), 0o1777))?;
    rc(libc::mount(
        c"tmpfs".as_ptr(),
        c"/dev/shm".as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        plan.scratch_data.as_ptr().cast(),
    ))?;
    libc::umask(old);
    Ok(())
}

/// `struct ifreq` with the flags member, as SIOCGIFFLAGS/SIOCSIFFLAGS use it.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings up the new network namespace's loopback: the task may talk to
/// itself over 127.0.0.1, and to nothing else.
pub(crate) unsafe fn loopback_up() -> io::Result<()> {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    let result = rc(libc::ioctl(
        sock,
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut req,
    ))
    .and_then(|()| {
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        rc(libc::ioctl(sock, libc::SIOCSIFFLAGS as libc::Ioctl, &req))
    });
    libc::close(sock);
    result
}

unsafe fn write_file(path: &CStr, bytes: &[u8]) -> io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = write_all(fd, bytes);
    libc::close(fd);
    result
}

unsafe fn write_all(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    match n {
        n if n == bytes.len() as isize => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}

/// Which of [`NAMESPACES`] this kernel lets the runner create: each is tried
/// in a short-lived child.
pub(crate) fn probe_namespaces() -> Vec<(&'static str, Result<(), io::Error>)> {
    NAMESPACES
        .iter()
        .map(|&(name, flag)| {
            // SAFETY: a fork-like clone whose child only exits.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flag | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            };
            if pid == 0 {
                // SAFETY: the child leaves at once.
                unsafe { libc::_exit(0) };
            }
            if pid < 0 {
                return (name, Err(io::Error::last_os_error()));
            }
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
            (name, Ok(()))
        })
        .collect()
}
