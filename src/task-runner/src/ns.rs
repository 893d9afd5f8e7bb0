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
//! 1. joins the slot's cgroups (and a new cgroup namespace), moves its descriptors to fixed numbers (0–2
//!    the task's stdio, 3 the report pipe) and closes every other one, so no
//!    descriptor of a concurrent run is held by this box (a warm box's
//!    `node` also gets the read end of its control pipe, high up);
//! 2. makes every mount private and builds the box's root from the plan's
//!    allowlist ([`BoxPlan`]): a tmpfs on the work directory holding
//!    read-only binds of `node`, its libraries and the task snapshot, then
//!    `pivot_root`s into it and detaches the host's tree; mounts a minimal
//!    `/dev`, a `/proc` of the new PID namespace (host-wide files masked,
//!    memfds made non-executable), a size-capped `noexec` `/tmp`, writes
//!    `/etc` (and the slot's memory limit where Node.js reads it),
//!    remounts the root read-only, brings up loopback, sets the host name
//!    and overwrites its own command line;
//! 3. raises its OOM score (inherited, and a floor the task cannot lower),
//!    blocks SIGCHLD, SIGTERM and SIGINT, takes `no_new_privs` and the
//!    seccomp filters (loaded once: `node` inherits them), and clones
//!    `node`'s process, which takes a new session, the rlimits and the slot
//!    identity, then `exec`s;
//! 4. drops to the slot identity itself, and loops on `sigtimedwait`: SIGTERM/SIGINT are forwarded to `node`'s
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

/// The namespaces every run gets. The mount namespace is a copy of the
/// plan's template, the cgroup namespace the reaper's own `unshare` once it
/// is in the slot's cgroups (its root is then the slot).
pub(crate) const NAMESPACES: [(&str, libc::c_int); 6] = [
    ("mount", libc::CLONE_NEWNS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// Host name inside the box.
const HOSTNAME: &[u8] = b"nautilus-task";
/// Where `HOME` and `TMPDIR` point inside the box: a private tmpfs.
pub(crate) const TASK_HOME: &str = "/tmp";
/// The directories a run directory holds, under the work directory.
pub(crate) const CODE_DIR: &str = "task";
/// The box's own root: directories, mount points, links and the generated
/// `/etc` files; read-only once built.
const ROOT_DATA: &CStr = c"size=1m,nr_inodes=4096,mode=755";
/// Mount points every box gets on its root, each with a mount of its own.
const BOX_DIRS: [&str; 4] = ["/dev", "/etc", "/proc", "/tmp"];
/// The box's `/etc`: generated, nothing of the host's.
const ETC_FILES: [(&CStr, &[u8]); 2] = [
    (c"/etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    (c"/etc/nsswitch.conf", b"hosts: files dns\n"),
];
/// What Node.js reads to size its V8 heap (libuv's
/// `uv_get_constrained_memory`: the memory controller's files under
/// `/sys/fs/cgroup` at the path `/proc/self/cgroup` shows, which the box's
/// cgroup namespace makes `/`), for cgroup v1 and v2 alike. Where the slot
/// has a memory limit the box's `/sys` holds these files, each saying that
/// limit, and nothing else: `node` then needs no V8 flag (which would cost
/// it its start-up code cache) to keep its heap within the slot.
const MEMORY_LIMIT_FILES: [&CStr; 4] = [
    c"/sys/fs/cgroup/memory.max",
    c"/sys/fs/cgroup/memory.high",
    c"/sys/fs/cgroup/memory/memory.limit_in_bytes",
    c"/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
];
/// Parents first.
const SYS_DIRS: [&CStr; 4] = [
    c"/sys",
    c"/sys/fs",
    c"/sys/fs/cgroup",
    c"/sys/fs/cgroup/memory",
];
/// Host-wide `/proc` files that tell a task about other tenants (load,
/// memory, I/O): `/dev/null` is bound over each. `/proc/pressure` gets an
/// empty read-only tmpfs.
const PROC_MASKED: [&CStr; 5] = [
    c"/proc/loadavg",
    c"/proc/meminfo",
    c"/proc/vmstat",
    c"/proc/zoneinfo",
    c"/proc/diskstats",
];
/// What the box's PID 1 is called (`/proc/1/cmdline` and `comm`).
const REAPER_NAME: &[u8] = b"nautilus-box\0";
/// The per-PID-namespace sysctl (Linux 6.3+) that makes every memfd
/// non-executable.
pub(crate) const MEMFD_NOEXEC: &str = "/proc/sys/vm/memfd_noexec";

/// Fixed descriptor numbers inside the box.
const FD_REPORT: RawFd = 3;
/// A warm box's control pipe, in the reaper until `node` is cloned.
const FD_CONTROL: RawFd = 4;

/// Report pipe messages: three native-endian `u32`s.
const MSG_LEN: usize = 12;
const MSG_ERROR: u32 = 1;
const MSG_STATUS: u32 = 2;

/// The steps of building the box, named in errors.
const STEPS: [&str; 10] = [
    "moving descriptors",
    "building the box's file system",
    "bringing up loopback",
    "setting the host name",
    "raising the OOM score",
    "joining the cgroup",
    "starting node's process",
    "dropping privileges",
    "executing node",
    "joining the egress network namespace",
];
const STEP_FDS: u32 = 0;
const STEP_FS: u32 = 1;
const STEP_NET: u32 = 2;
const STEP_UTS: u32 = 3;
const STEP_OOM: u32 = 4;
const STEP_CGROUP: u32 = 5;
const STEP_FORK: u32 = 6;
const STEP_ENTER: u32 = 7;
const STEP_EXEC: u32 = 8;
const STEP_NETNS: u32 = 9;

/// What a path of the box's root is: a directory, a symbolic link, or a
/// read-only bind of a host file or (recursively) directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Link,
    File,
    Tree,
}

/// One entry of the box's root: `at` is its path prefixed with the work
/// directory (where the root is built before the box pivots into it),
/// `src` a link's target or the host path bound there.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    src: CString,
    at: CString,
}

/// The layout every box gets, decided once at start: a fresh tmpfs root
/// holding read-only binds of exactly what `node` needs (found by asking
/// its dynamic loader), the task snapshot and nothing else of the host.
#[derive(Debug)]
pub(crate) struct BoxPlan {
    /// Canonical work directory: the root is built on a tmpfs mounted here,
    /// and inside the box the same path shows the task snapshot, read-only.
    work_dir: CString,
    /// The snapshot's mount point while the root is built.
    code_at: CString,
    /// `<work_dir>/task`: the task's code and working directory.
    code_dir: CString,
    /// Parents first.
    entries: Vec<Entry>,
    /// tmpfs options of `/tmp` and `/dev/shm`.
    scratch_data: CString,
    /// Where the runner's own command line lies in memory (the reaper, a
    /// copy of it, overwrites it with [`REAPER_NAME`]).
    argv: (usize, usize),
    /// Whether [`MEMFD_NOEXEC`] exists (else seccomp denies `memfd_create`).
    pub memfd_sysctl: bool,
    /// The slot's memory limit as [`MEMORY_LIMIT_FILES`] say it, when the
    /// slots have one.
    memory_limit: Option<Vec<u8>>,
    /// The mount namespace holding the box's root, built once by
    /// [`BoxPlan::seal`]: each box copies it (no unmount, so no RCU grace
    /// period, per box) and adds its own `/proc`, `/tmp` and `/dev/shm`.
    template: Option<OwnedFd>,
}

/// Why the box cannot be planned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("the work directory {0} must not be inside {1}, where every box mounts its own (choose another --work-dir)")]
    WorkDirShadowed(PathBuf, &'static str),
    #[error("{0} contains a NUL byte")]
    Nul(PathBuf),
    #[error("{0}: {1} (the box shows it read-only)")]
    Expose(PathBuf, io::Error),
    #[error("{0}: more than {MAX_LINKS} symbolic links")]
    Loop(PathBuf),
}

/// Symbolic links followed while exposing one path.
const MAX_LINKS: usize = 40;

impl BoxPlan {
    /// Plans the box for runs staged under `work_dir` (canonical), with
    /// `scratch_bytes` of tmpfs for `/tmp` and `/dev/shm`, `node` and its
    /// libraries bound in, and `extra` host paths too.
    pub fn new(
        work_dir: &Path,
        scratch_bytes: u64,
        node: Option<&Path>,
        extra: &[PathBuf],
    ) -> Result<Self, PlanError> {
        if let Some(dir) = BOX_DIRS.iter().find(|d| work_dir.starts_with(d)) {
            return Err(PlanError::WorkDirShadowed(work_dir.to_owned(), dir));
        }
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| PlanError::Nul(p.to_owned()))
        };
        let at = |p: &Path| work_dir.join(p.strip_prefix("/").unwrap_or(p));
        let mut tree = Tree::new();
        for dir in BOX_DIRS.iter().map(Path::new).chain([work_dir]) {
            for d in dir.ancestors().filter(|d| d.parent().is_some()) {
                tree.insert(d.to_owned(), (Kind::Dir, PathBuf::new()));
            }
        }
        let mut wanted: Vec<PathBuf> = extra.to_vec();
        if let Some(node) = node {
            wanted.push(node.to_owned());
            wanted.extend(loaded_by(node));
        }
        for path in &wanted {
            expose(path, &mut tree, 0)?;
        }
        let inside_tree = |path: &Path| {
            tree.iter()
                .any(|(t, (k, _))| *k == Kind::Tree && path != t && path.starts_with(t))
        };
        let entries = tree
            .iter()
            .filter(|(path, _)| !inside_tree(path))
            .map(|(path, (kind, src))| {
                Ok(Entry {
                    kind: *kind,
                    src: c(src)?,
                    at: c(&at(path))?,
                })
            })
            .collect::<Result<_, PlanError>>()?;
        Ok(Self {
            work_dir: c(work_dir)?,
            code_at: c(&at(work_dir))?,
            code_dir: c(&work_dir.join(CODE_DIR))?,
            entries,
            // Digits and ASCII only: no NUL inside.
            scratch_data: CString::new(format!("size={scratch_bytes},mode=1777"))
                .map_err(|_| PlanError::Nul(PathBuf::from("tmpfs options")))?,
            argv: own_argv(),
            memfd_sysctl: Path::new(MEMFD_NOEXEC).exists(),
            memory_limit: None,
            template: None,
        })
    }

    /// Builds the box's root once, with the task snapshot `run_dir` and,
    /// when the slots have a memory limit of `memory_limit` bytes, the files
    /// that show it to Node.js; in a mount namespace of its own (a
    /// short-lived child's, held by a descriptor). Blocking.
    pub fn seal(&mut self, run_dir: &Path, memory_limit: Option<u64>) -> io::Result<()> {
        self.memory_limit = memory_limit.map(|bytes| format!("{bytes}\n").into_bytes());
        // One seal at a time in a process: a seal's child waits for EOF on
        // its `hold` pipe, and a second seal's child forked meanwhile would
        // inherit that pipe's write end while waiting on its own, each
        // keeping the other's open for ever (two runners started at once
        // deadlocked this way in the server's tests).
        static SEALING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = SEALING.lock().unwrap_or_else(|e| e.into_inner());
        let run_dir = cstr(run_dir.as_os_str())?;
        let (done_r, done_w) = pipe2()?;
        let (hold_r, hold_w) = pipe2()?;
        // SAFETY: the child makes only async-signal-safe calls on memory
        // prepared before the fork, then exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                // Only the parent's end may hold the pipe open.
                libc::close(hold_w.as_raw_fd());
                let built = rc(libc::unshare(libc::CLONE_NEWNS))
                    .and_then(|()| build_root(self, &run_dir))
                    .map_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO), |()| 0);
                libc::write(done_w.as_raw_fd(), (&built as *const i32).cast(), 4);
                let mut byte = 0u8;
                libc::read(hold_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        check(pid)?;
        drop((done_w, hold_r));
        let mut errno = [0u8; 4];
        let read = std::io::Read::read_exact(&mut std::fs::File::from(done_r), &mut errno);
        let ns = read.and_then(|()| match i32::from_ne_bytes(errno) {
            0 => std::fs::File::open(format!("/proc/{pid}/ns/mnt")),
            e => Err(io::Error::from_raw_os_error(e)),
        });
        drop(hold_w);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        self.template = Some(ns?.into());
        Ok(())
    }

    /// Where the task's code is, inside the box.
    pub fn code_dir(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.code_dir.as_bytes()))
    }

    /// The host paths bound into the box (for the isolation summary).
    pub fn exposed(&self) -> Vec<String> {
        let bound = self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File | Kind::Tree));
        bound
            .map(|e| e.src.to_string_lossy().into_owned())
            .collect()
    }
}

/// The box's root as planned, by path (parents sort first).
type Tree = std::collections::BTreeMap<PathBuf, (Kind, PathBuf)>;

/// Adds `path` to the root as the host resolves it: every symbolic link on
/// the way is recreated, the file (or directory) it ends at is bound.
fn expose(path: &Path, tree: &mut Tree, links: usize) -> Result<(), PlanError> {
    use std::path::Component;
    if links > MAX_LINKS {
        return Err(PlanError::Loop(path.to_owned()));
    }
    let parts: Vec<Component> = path.components().collect();
    let mut here = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        match part {
            Component::Normal(name) => here.push(name),
            Component::ParentDir => {
                here.pop();
                continue;
            }
            _ => continue,
        }
        let meta =
            std::fs::symlink_metadata(&here).map_err(|e| PlanError::Expose(path.to_owned(), e))?;
        if meta.is_symlink() {
            let target =
                std::fs::read_link(&here).map_err(|e| PlanError::Expose(path.to_owned(), e))?;
            let rest: PathBuf = parts[i + 1..].iter().collect();
            let next = here
                .parent()
                .unwrap_or(Path::new("/"))
                .join(&target)
                .join(rest);
            tree.insert(here, (Kind::Link, target));
            return expose(&next, tree, links + 1);
        }
        if i + 1 == parts.len() {
            let kind = if meta.is_dir() {
                Kind::Tree
            } else {
                Kind::File
            };
            tree.insert(here.clone(), (kind, here));
            return Ok(());
        }
        tree.entry(here.clone())
            .or_insert((Kind::Dir, PathBuf::new()));
    }
    Ok(())
}

/// The libraries `node` loads, as its dynamic loader finds them (the paths
/// it opens, links included), and the loader itself. Empty for a static
/// binary, which runs `-e 0` instead.
fn loaded_by(node: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new(node)
        .args(["-e", "0"])
        .env_clear()
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// This process's command line in memory (`/proc/self/stat` fields 48 and
/// 49), `(0, 0)` when unknown.
fn own_argv() -> (usize, usize) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let field = |n: usize| -> Option<usize> {
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(n - 3)?
            .parse()
            .ok()
    };
    match (field(48), field(49)) {
        (Some(start), Some(end)) if start < end => (start, end),
        _ => (0, 0),
    }
}

/// Everything one run needs, prepared before the `clone`.
pub(crate) struct Spec<'a> {
    pub node: &'a Path,
    /// Arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// The complete environment.
    pub env: &'a [(OsString, OsString)],
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

/// `NAME=value` strings for `execve`, which hold the operator secrets of
/// the run: zeroed when dropped, whichever way [`spawn`] returns.
struct WipedEnv(Vec<CString>);

impl Drop for WipedEnv {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for entry in &mut self.0 {
            std::mem::take(entry).into_bytes_with_nul().zeroize();
        }
    }
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
    let env = WipedEnv(
        spec.env
            .iter()
            .map(|(k, v)| {
                // Sized for the NUL too: CString::new must not reallocate
                // (and free, unwiped) a buffer holding a secret.
                let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
                kv.extend_from_slice(k.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            })
            .collect::<Result<_, _>>()?,
    );
    let argv: Vec<*const libc::c_char> = std::iter::once(node.as_ptr())
        .chain(args.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .0
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
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
    let mut flags = NAMESPACES.iter().fold(0, |f, (_, flag)| f | flag) & !libc::CLONE_NEWCGROUP;
    if spec.netns.is_some() {
        // The box joins the namespace that holds its egress listeners.
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
    // A copy of the box's root (before the descriptors close below).
    let template = a.plan.template.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    // The slot's hosts file is cloned as a detached mount while the runner's
    // mounts are still in this namespace (a bind from another namespace's
    // mount is refused), then attached over the copy's `/etc/hosts`: the
    // same file, which the runner rewrites for each run (warm boxes too).
    let hosts = a.hosts.map(|path| open_tree_clone(path));
    let entered = rc(libc::setns(template, libc::CLONE_NEWNS))
        .and_then(|()| rc(libc::unshare(libc::CLONE_NEWNS)))
        .and_then(|()| match hosts {
            Some(tree) => tree.and_then(|fd| attach_hosts(fd)),
            None => Ok(()),
        });
    // Step 1: descriptors. Everything first moves above 10, so moving to the
    // fixed numbers never overwrites one still needed; then all else closes.
    // All of them move before the report pipe takes number 3: the runner's
    // pipes get whatever numbers are free, 3 included (a runner whose low
    // descriptors were closed), and a stream moved after it would be the
    // report pipe's write end (the task's stdin read EBADF, and its writes
    // would reach the runner as reports).
    let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
    let report = high(a.report);
    let netns = a.netns.map(high);
    let stdin = high(a.stdin);
    let stdout = high(a.stdout);
    let stderr = high(a.stderr);
    let control = a.control.map(|(fd, _)| high(fd));
    if report < 0 {
        libc::_exit(127);
    }
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
    or_fail(
        STEP_CGROUP,
        joined.and_then(|()| rc(libc::unshare(libc::CLONE_NEWCGROUP))),
    );

    let plan = a.plan;
    or_fail(STEP_FS, entered.and_then(|()| fill_box(plan)));
    // The box's PID 1 says nothing of the runner: its command line (the
    // runner's, copied by clone) is overwritten and it gets a name of its own.
    let (start, end) = plan.argv;
    if end > start + REAPER_NAME.len() + 1 {
        std::ptr::write_bytes(start as *mut u8, 0, end - start);
        std::ptr::copy_nonoverlapping(REAPER_NAME.as_ptr(), start as *mut u8, REAPER_NAME.len());
        // A last byte that is not NUL makes the kernel show the area as a
        // process title: up to the first NUL, so not its length either.
        *((end - 1) as *mut u8) = b' ';
    }
    libc::prctl(
        libc::PR_SET_NAME,
        REAPER_NAME.as_ptr() as libc::c_ulong,
        0,
        0,
        0,
    );
    or_fail(STEP_NET, loopback_up());
    or_fail(
        STEP_UTS,
        rc(libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len())),
    );
    // Written as root, before the identity switch: 1000 also becomes the
    // floor the task cannot go below (oom_score_adj_min), and node inherits it.
    or_fail(
        STEP_OOM,
        write_file(c"/proc/self/oom_score_adj", b"1000", 0),
    );
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
    // Once for the reaper and node, which inherits them: nothing left to
    // do here needs a call the filters deny.
    or_fail(STEP_ENTER, a.policy.confine());

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
    or_fail(STEP_ENTER, a.policy.enter(Some(a.identity), true));
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
        a.policy.enter(Some(a.identity), true)
    })();
    or_fail(STEP_ENTER, setup);
    libc::execve(a.node.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    fail(STEP_EXEC, io::Error::last_os_error())
}

/// Flags of every mount a task can write: nothing set-uid, no devices, no programs.
const SEALED: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// mount(2) on C strings, `None` a null pointer. Async-signal-safe.
unsafe fn mount(
    src: Option<&CStr>,
    at: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    rc(libc::mount(
        ptr(src),
        at.as_ptr(),
        ptr(fstype),
        flags,
        ptr(data).cast(),
    ))
}

/// A tmpfs at `at`. Async-signal-safe.
unsafe fn tmpfs(at: &CStr, flags: libc::c_ulong, options: &CStr) -> io::Result<()> {
    mount(Some(c"tmpfs"), at, Some(c"tmpfs"), flags, Some(options))
}

/// A read-only, `nosuid` bind of `src` at `at` (recursive for a
/// directory), with `flags` (`MS_NODEV`, …).
unsafe fn bind_ro(src: &CStr, at: &CStr, recursive: bool, flags: libc::c_ulong) -> io::Result<()> {
    let rec = if recursive { libc::MS_REC } else { 0 };
    mount(Some(src), at, None, libc::MS_BIND | rec, None)?;
    mount(
        None,
        at,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | flags,
        None,
    )
}

/// The box's root, in a fresh mount namespace: a tmpfs on the work
/// directory holding the plan's entries and the snapshot (`run_dir`,
/// reached through the working directory once the tmpfs hides it), made
/// `/` (the host's tree detached), with `/dev` and `/etc`; read-only.
/// Async-signal-safe.
unsafe fn build_root(plan: &BoxPlan, run_dir: &CStr) -> io::Result<()> {
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    libc::umask(0o022);
    rc(libc::chdir(run_dir.as_ptr()))?;
    tmpfs(&plan.work_dir, libc::MS_NOSUID | libc::MS_NODEV, ROOT_DATA)?;
    for e in &plan.entries {
        match e.kind {
            Kind::Dir | Kind::Tree => rc(libc::mkdir(e.at.as_ptr(), 0o755))?,
            Kind::Link => rc(libc::symlink(e.src.as_ptr(), e.at.as_ptr()))?,
            Kind::File => {
                let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
                libc::close(rc_fd(libc::open(e.at.as_ptr(), flags, 0o444))?);
            }
        }
        if matches!(e.kind, Kind::File | Kind::Tree) {
            bind_ro(&e.src, &e.at, e.kind == Kind::Tree, libc::MS_NODEV)?;
        }
    }
    bind_ro(c".", &plan.code_at, false, libc::MS_NODEV)?;
    rc(libc::chdir(plan.work_dir.as_ptr()))?;
    rc(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
    rc(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
    rc(libc::chdir(c"/".as_ptr()))?;
    build_dev()?;
    for (path, bytes) in ETC_FILES {
        write_file(path, bytes, libc::O_CREAT | libc::O_EXCL)?;
    }
    if let Some(limit) = &plan.memory_limit {
        for dir in SYS_DIRS {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST {
                return Err(io::Error::last_os_error());
            }
        }
        for path in MEMORY_LIMIT_FILES {
            write_file(path, limit, libc::O_CREAT | libc::O_EXCL)?;
        }
    }
    // The root holds only what was bound or written above.
    let ro = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount(None, c"/", None, ro, None)
}

/// A detached copy of the mount holding `path` (just that file), to be
/// attached in another mount namespace. Async-signal-safe.
unsafe fn open_tree_clone(path: &CStr) -> io::Result<RawFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    let fd = libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags);
    rc_fd(fd as RawFd)
}

/// Attaches the detached hosts file `tree` over `/etc/hosts` of the current
/// mount namespace, read-only. Async-signal-safe.
unsafe fn attach_hosts(tree: RawFd) -> io::Result<()> {
    // MOVE_MOUNT_F_EMPTY_PATH: move `tree` itself (not in the libc crate).
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let moved = rc(libc::syscall(
        libc::SYS_move_mount,
        tree,
        c"".as_ptr(),
        libc::AT_FDCWD,
        c"/etc/hosts".as_ptr(),
        MOVE_MOUNT_F_EMPTY_PATH,
    ) as libc::c_int);
    libc::close(tree);
    moved?;
    let ro = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    mount(None, c"/etc/hosts", None, ro, None)
}

/// A box's own part of its file system, on its copy of the root: a `/proc`
/// of its PID namespace, a fresh `/tmp` and `/dev/shm`. Async-signal-safe.
unsafe fn fill_box(plan: &BoxPlan) -> io::Result<()> {
    mount_proc(plan)?;
    tmpfs(c"/tmp", SEALED, &plan.scratch_data)?;
    tmpfs(c"/dev/shm", SEALED, &plan.scratch_data)
}

/// A `/proc` of the box's PID namespace, host-wide files masked, memfds
/// made non-executable where the kernel can. Async-signal-safe.
unsafe fn mount_proc(plan: &BoxPlan) -> io::Result<()> {
    mount(Some(c"proc"), c"/proc", Some(c"proc"), SEALED, None)?;
    for file in PROC_MASKED {
        // Reads as empty.
        bind_ro(c"/dev/null", file, false, libc::MS_NOEXEC)?;
    }
    // Only with CONFIG_PSI.
    if libc::access(c"/proc/pressure".as_ptr(), libc::F_OK) == 0 {
        tmpfs(c"/proc/pressure", SEALED | libc::MS_RDONLY, c"size=0")?;
    }
    if plan.memfd_sysctl {
        write_file(c"/proc/sys/vm/memfd_noexec", b"2", 0)?;
    }
    Ok(())
}

/// A minimal private `/dev`: the harmless character devices, the standard
/// stream links and `/dev/shm` (each box mounts its own). No NSM, vsock,
/// kmsg, mem or disk.
unsafe fn build_dev() -> io::Result<()> {
    tmpfs(
        c"/dev",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"size=64k,mode=755",
    )?;
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

/// Writes `bytes` to `path`, opened with `O_WRONLY` and `flags` (a new file
/// gets mode 0644). Async-signal-safe.
unsafe fn write_file(path: &CStr, bytes: &[u8], flags: libc::c_int) -> io::Result<()> {
    let fd = libc::open(
        path.as_ptr(),
        libc::O_WRONLY | libc::O_CLOEXEC | flags,
        0o644,
    );
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
