//! Runs Node.js tasks in a box and reports exactly what happened.
//!
//! A *task* is a directory under a tasks root that holds a `package.json` and
//! its entry file (`main`, default `index.js`). [`Runner::run`] accepts a task
//! at any depth (`group/task`), but [`Runner::list_tasks`] lists only the
//! direct subdirectories of the root, and the server runs only listed tasks:
//! to be served, a task must sit directly under the root. A [`Runner`]
//! validates a [`TaskRequest`], waits for a free slot (at most
//! [`RunnerConfig::max_concurrent`] at once, at most [`RunnerConfig::max_queue`]
//! waiting, else [`TaskError::Busy`]), and runs `node <entry> <args…>` in a box,
//! returning a [`TaskResult`] whose field names are a signed wire contract.
//!
//! # The box
//!
//! For every run the runner:
//! - stages a copy of the task directory into a fresh private run directory
//!   (directories 0755, files 0644, owned by the runner) and computes the
//!   [`digest`] of that copy, so `task_digest` describes exactly what ran and
//!   the task cannot modify any task directory. Files are opened without
//!   following symlinks or blocking on FIFOs and must be regular files; when
//!   root, the tasks tree (and the way to it) must be root-owned and writable
//!   by nobody else, checked at [`Runner::new`] and on every run;
//! - builds the environment from nothing: `PATH=/usr/local/bin:/usr/bin:/bin`,
//!   `HOME` and `TMPDIR` (a per-run directory, removed afterwards),
//!   `NODE_ENV=production`, `NAUTILUS_TASK_ID` (the result's `task_id`), and the
//!   variables named in [`RunnerConfig::pass_env`] with their values at
//!   [`Runner::new`];
//! - starts `node --max-old-space-size=<3/4 of the memory limit> -r <preload>
//!   <entry> <args…>` without a shell, cwd = the staged task directory, stdin
//!   = the request's bytes or `/dev/null`; the preload makes stdout/stderr
//!   blocking (nodejs/node#6456);
//! - when root, puts the task in its slot's cgroup (see [`CgroupSummary`]
//!   and below), joined in the child before anything else;
//! - in the child, before `exec`: a new session, leaked descriptors closed,
//!   rlimits (`RLIMIT_CORE` 0, `RLIMIT_DATA`, `RLIMIT_FSIZE`, `RLIMIT_NOFILE`,
//!   and `RLIMIT_NPROC` when root), `oom_score_adj` 1000 (the OOM killer takes
//!   the task, not the runner), when root a mount namespace of its own (see
//!   below), the slot identity, `PR_SET_PDEATHSIG(SIGKILL)` (after the
//!   identity switch, which would clear it), `PR_SET_NO_NEW_PRIVS`, and a
//!   seccomp filter that makes
//!   `socket(AF_VSOCK, …)`, `socketpair(AF_VSOCK, …)` and `io_uring_setup` fail
//!   with `EPERM`;
//! - drains stdout and stderr continuously, keeping at most
//!   [`RunnerConfig::max_output_bytes`] of each (the rest is discarded and
//!   `*_truncated` set), decoded as UTF-8 with invalid bytes replaced by
//!   U+FFFD; the text stays within the cap (a character the cap cuts in two
//!   is dropped);
//! - if the runner dies, its tasks' main processes die with it; a dropped
//!   [`Runner`] empties its slots, and the CLI kills its task on SIGINT/SIGTERM;
//! - on timeout sends SIGTERM to the task's process group from outside it,
//!   waits [`RunnerConfig::kill_grace`], then kills the whole box; when the
//!   main process ends, kills whatever it left behind, reaps it, and waits at
//!   most one more second for the output pipes.
//!
//! ## Root vs. non-root
//!
//! When the runner is root (as in the enclave), slot `i` runs as uid and gid
//! [`RunnerConfig::sandbox_uid_base`]` + i` with no supplementary groups. The
//! task then cannot read or ptrace the runner's memory, signal it, write any
//! task directory, or touch a concurrent task. Each task also gets a private
//! mount namespace (all mounts made private first, so nothing propagates to
//! the host) with a fresh `/proc` mounted `hidepid=2`: it sees only its own
//! uid's processes, so neither the runner nor other tasks' command lines
//! (client input); and a tmpfs on `/dev/shm` of at most
//! [`RunnerConfig::max_file_bytes`] that disappears with the task. On
//! kernels before 5.8 procfs options are per pid namespace and mounting that
//! `/proc` would switch the host's `/proc` to `hidepid=2` as well, so there
//! tasks keep the shared `/proc` and the runner logs a warning (use a 5.10
//! enclave kernel). Everything a task started is
//! killed with `kill(-1, SIGKILL)` issued with the slot uid as *effective*
//! uid, which the kernel applies to every process of that uid in one pass;
//! that includes `setsid`/double-forked grandchildren. The helper process
//! that issues it has a *killer* uid (leased with the slot uids, used by no
//! task) as its real and saved uid, so no task can signal it (a task spinning
//! on `kill(-1, SIGSTOP)` cannot freeze the kill); a helper that stops or
//! hangs anyway is killed after a short deadline and the round repeated. The
//! runner process also becomes a
//! child subreaper (`PR_SET_CHILD_SUBREAPER`, set by [`Runner::new`]), so a
//! task's orphans are reparented to it and their zombies reaped at once; a
//! slot's process count is back to zero before its next task. (Other orphaned
//! descendants of the same process would be adopted too; the runner only
//! reaps processes of its slot uids.)
//!
//! The slot uids must belong to nothing else on the host. A runner locks its
//! uid range (`flock` on files in `/run/nautilus-task-runner-uids`, or under
//! the work directory when `/run` is missing or not root's alone) for its
//! lifetime, taking the first free range of `max_concurrent` slot uids plus
//! the killer uid right after them, at or above
//! [`RunnerConfig::sandbox_uid_base`]. A range is free when no other runner
//! holds any of its uids and none of them is a user or group the host knows
//! (`getpwuid`/`getgrgid`) or 65534/65535. So a second runner (another
//! server, the CLI) moves up instead of sharing, and [`Runner::sandbox_uids`]
//! tells which slot range was taken.
//!
//! When root, each slot also has a cgroup in every hierarchy that carries
//! the memory, pids or cpu controller (cgroup v2 where they can be enabled,
//! v1 otherwise), nested under the runner's own cgroup there:
//! `<own>/nautilus-<first slot uid>/slot-<i>`. It caps the slot's memory as
//! the kernel counts it (shared and `MAP_GROWSDOWN` mappings, tmpfs and page
//! cache included, which `RLIMIT_DATA` misses) at
//! [`RunnerConfig::memory_limit_bytes`] with swap off, its processes and
//! threads at [`RunnerConfig::max_processes`], and gives every slot an equal
//! CPU weight, all slots together half the runner's. Running out of memory
//! kills the whole task (v2 `memory.oom.group`; on v1 the runner, told by an
//! eventfd), never the runner; the result then has signal `SIGKILL` and
//! stderr ends with a note saying the memory limit was reached. A slot is
//! emptied after every run and the cgroups are removed with the runner.
//! [`Runner::cgroups`] says what is in force; with no usable controller only
//! the rlimits apply, and the runner logs that at start.
//!
//! When the runner is not root, tasks run as the runner's own uid. They can
//! then read the runner's `/proc/<pid>/environ` and memory, signal it, and
//! write wherever the runner can, task directories included. Leftover
//! processes are found by process group and by the `NAUTILUS_TASK_ID` marker
//! in `/proc/<pid>/environ`; a process that leaves the group *and* rewrites its
//! environment escapes (the result still arrives: output pipes are cut off
//! after one second). `RLIMIT_NPROC` is not set (it would count the runner's
//! own threads). Use non-root mode for development only.
//!
//! In both modes a task can write to world-writable places such as `/tmp`
//! (bounded per file by `RLIMIT_FSIZE`). When root, the runner removes the
//! entries a slot uid owns at the top of `/tmp`, `/var/tmp` and `/dev/shm`
//! after each run, before the slot is reused; deeper files (inside another
//! world-writable directory) and, without root, all such files outlive the
//! run.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use task_runner::{Runner, RunnerConfig, TaskRequest};
//!
//! let runner = Runner::new(RunnerConfig::default())?;
//! let result = runner
//!     .run(TaskRequest { args: vec!["1".into(), "2".into()], ..TaskRequest::default() })
//!     .await?;
//! println!("{} {}", result.status, result.stdout);
//! # Ok(()) }
//! ```

mod cgroup;
mod config;
pub mod digest;
mod error;
mod exec;
mod limiter;
mod node;
mod request;
mod sandbox;
mod task;
mod uids;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::Instrument;

pub use cgroup::CgroupSummary;
pub use config::RunnerConfig;
pub use error::{ConfigError, ErrorKind, TaskError};
pub use node::MIN_NODE_MAJOR;
pub use request::{
    normalize_task_path, TaskInfo, TaskRequest, TaskResult, ValidRequest, DEFAULT_TASK_PATH,
    MAX_ARGS, MAX_ARGS_TOTAL_BYTES, MAX_ARG_BYTES, MAX_STDIN_BYTES, MAX_TASK_PATH_BYTES,
};

use digest::TreeLimits;
use exec::{Ending, SpawnSpec, Watch};
use sandbox::{BoxKind, Identity, Policy};

/// `PATH` inside the box.
const TASK_PATH_ENV: &str = "/usr/local/bin:/usr/bin:/bin";
const PRELOAD: &str = include_str!("preload.cjs");

/// Load of a [`Runner`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RunnerStats {
    /// Tasks holding a slot.
    pub running: usize,
    /// Runs waiting for a slot.
    pub queued: usize,
    /// Runs abandoned by their caller while waiting for a slot (never ran),
    /// since start.
    pub abandoned_queued: u64,
    /// Runs abandoned by their caller while running (killed), since start.
    pub abandoned_running: u64,
}

/// Runs tasks; cheap to clone (all clones share slots and state).
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    config: RunnerConfig,
    /// Canonical tasks root.
    root: PathBuf,
    node: Option<node::Node>,
    policy: Policy,
    /// Whether tasks get slot uids (the runner is root).
    privileged: bool,
    limiter: Arc<limiter::Limiter>,
    shutting_down: AtomicBool,
    /// Turns true when running tasks must be killed for shutdown.
    cancel: watch::Sender<bool>,
    abandoned_queued: AtomicU64,
    abandoned_running: AtomicU64,
    pass_env: Vec<(OsString, OsString)>,
    work_dir: PathBuf,
    /// One cgroup per slot (when privileged and the host has controllers).
    /// Named after the uid lease, so declared (and dropped) before it.
    cgroups: cgroup::Cgroups,
    /// The slot and killer uids (when privileged).
    uids: Option<uids::UidLease>,
}

impl Runner {
    /// Checks `config`, resolves the tasks root and locates Node.js. A missing
    /// or too old Node.js is not an error here: every run then fails fast with
    /// [`TaskError::NodeMissing`].
    ///
    /// When root, locks the slot uids and makes this process a child subreaper
    /// (see the crate docs).
    pub fn new(config: RunnerConfig) -> Result<Runner, ConfigError> {
        config.check()?;
        let root =
            std::fs::canonicalize(&config.tasks_dir).map_err(|source| ConfigError::TasksDir {
                path: config.tasks_dir.clone(),
                source,
            })?;
        let node = node::locate(config.node.as_deref(), std::env::var_os("PATH").as_deref());
        if node.is_none() {
            tracing::warn!("no usable Node.js (>= v{MIN_NODE_MAJOR}) found; every run will fail");
        }
        // SAFETY: geteuid cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        if !privileged {
            tracing::warn!(
                "not running as root: tasks share the runner's uid (weaker isolation, see docs)"
            );
        }
        let work_dir = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        if privileged {
            check_root_owned(&root)?;
            check_traversable(&work_dir)?;
            sandbox::become_subreaper()
                .map_err(|e| ConfigError::Invalid(format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
        }
        let uids = if privileged {
            // `check` made sure max_concurrent fits a u32.
            Some(uids::UidLease::take_first_free(
                uids::UidLease::lock_parent(&work_dir),
                config.sandbox_uid_base,
                config.max_concurrent as u32,
            )?)
        } else {
            None
        };
        let cgroups = match &uids {
            // The uid lease makes the tag unique among live runners, and
            // tells which other runners' groups are left from dead ones.
            Some(lease) => cgroup::Cgroups::new(
                lease.slots().start,
                config.max_concurrent,
                cgroup::Limits {
                    memory_bytes: config.memory_limit_bytes,
                    pids: config.max_processes,
                },
                &|uid| uids::lock_if_free(uids::UidLease::lock_parent(&work_dir), uid),
            ),
            None => cgroup::Cgroups::none("the runner is not root"),
        };
        log_cgroups(cgroups.summary());
        let policy = Policy::new(
            config.memory_limit_bytes,
            config.max_file_bytes,
            config.max_open_files,
            privileged.then_some(config.max_processes),
        )?;
        let pass_env = config
            .pass_env
            .iter()
            .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
            .collect();
        let limiter = limiter::Limiter::new(config.max_concurrent, config.max_queue);
        Ok(Runner {
            inner: Arc::new(Inner {
                config,
                root,
                node,
                policy,
                privileged,
                limiter,
                shutting_down: AtomicBool::new(false),
                cancel: watch::Sender::new(false),
                abandoned_queued: AtomicU64::new(0),
                abandoned_running: AtomicU64::new(0),
                pass_env,
                work_dir,
                uids,
                cgroups,
            }),
        })
    }

    /// The per-slot cgroup limits in force (see [`CgroupSummary`]).
    pub fn cgroups(&self) -> &CgroupSummary {
        self.inner.cgroups.summary()
    }

    /// Version of the Node.js in use (e.g. `"v20.11.1"`), `None` if none was found.
    pub fn node_version(&self) -> Option<&str> {
        self.inner.node.as_ref().map(|n| n.version.as_str())
    }

    /// The configuration this runner was built with.
    pub fn config(&self) -> &RunnerConfig {
        &self.inner.config
    }

    /// Whether tasks run under per-slot uids (the runner is root).
    pub fn is_privileged(&self) -> bool {
        self.inner.privileged
    }

    /// The uids the slots run under, when privileged: the first free range at
    /// or above [`RunnerConfig::sandbox_uid_base`].
    pub fn sandbox_uids(&self) -> Option<std::ops::Range<u32>> {
        self.inner.uids.as_ref().map(uids::UidLease::slots)
    }

    /// Current load.
    pub fn stats(&self) -> RunnerStats {
        RunnerStats {
            running: self.inner.limiter.running(),
            queued: self.inner.limiter.queued(),
            abandoned_queued: self.inner.abandoned_queued.load(Ordering::Relaxed),
            abandoned_running: self.inner.abandoned_running.load(Ordering::Relaxed),
        }
    }

    /// Checks that `task_path` names a task (validation rules and the contract
    /// errors of [`Runner::run`]) and returns its normalized form, as results
    /// report it. Lets a caller apply its own policy, such as an allow-list,
    /// before spending a slot. Blocking file I/O (a `realpath`).
    pub fn resolve_task(&self, task_path: &str) -> Result<String, TaskError> {
        let path = request::normalize_task_path(task_path)?;
        Ok(task::resolve(&self.inner.root, &path)?.task_path)
    }

    /// Every task directly under the tasks root (a directory holding
    /// `package.json`), sorted by path, with its digest. Blocking file I/O.
    pub fn list_tasks(&self) -> Result<Vec<TaskInfo>, TaskError> {
        let inner = &self.inner;
        let entries = std::fs::read_dir(&inner.root)
            .map_err(|e| TaskError::internal("listing the tasks directory", e))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut tasks = Vec::new();
        for name in names {
            let Ok(path) = request::normalize_task_path(&name) else {
                continue;
            };
            let Ok(task) = task::resolve(&inner.root, &path) else {
                continue;
            };
            let task_digest = digest::digest_tree(&task.dir, inner.tree_limits())?;
            tasks.push(TaskInfo {
                task_path: task.task_path,
                task_digest,
            });
        }
        Ok(tasks)
    }

    /// Validates `req`, waits for a slot and runs the task.
    ///
    /// Dropping the returned future abandons the run: a run still waiting for
    /// a slot leaves the queue and never starts; a running task is killed at
    /// once (no grace: nobody will read its result), and its slot is freed
    /// once the box is empty. Both are counted in [`RunnerStats`].
    pub async fn run(&self, req: TaskRequest) -> Result<TaskResult, TaskError> {
        let inner = self.inner.clone();
        // The run is a task of its own so that clean-up finishes even when
        // this future is dropped; `_caller` is dropped with it, which is what
        // tells the run its caller is gone.
        let (_caller, abandoned) = tokio::sync::oneshot::channel();
        // The caller's span (the server's request id) follows the run.
        tokio::spawn(
            async move { inner.run(req, abandoned).await }.instrument(tracing::Span::current()),
        )
        .await
        .map_err(|e| TaskError::internal("task supervisor failed", e))?
    }

    /// Stops accepting runs (new and queued ones fail with
    /// [`TaskError::ShuttingDown`]), gives running tasks `grace` to finish, then
    /// kills them. Returns when nothing is left running.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        inner.limiter.close();
        let mut running = inner.limiter.watch_running();
        if tokio::time::timeout(grace, running.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            inner.cancel.send_replace(true);
            let _ = running.wait_for(|n| *n == 0).await;
        }
    }
}

impl Drop for Inner {
    /// Runs hold a reference to `Inner`, so this runs once none is left, or
    /// when the async runtime dropped runs midway (their main processes are
    /// killed on drop, but not what they started): empties every slot.
    fn drop(&mut self) {
        let Some(uids) = &self.uids else { return };
        for index in 0..self.config.max_concurrent as u32 {
            if let Err(e) = BoxKind::Uid(uids.slot(index)).kill_all(None) {
                tracing::error!(error = %e, "slot processes survived the runner");
            }
        }
    }
}

/// One line at start: which cgroup controllers are in force, or that only
/// the rlimits are.
fn log_cgroups(s: &CgroupSummary) {
    let note = s.note.as_deref().unwrap_or("");
    if s.controllers.is_empty() {
        tracing::warn!("no cgroup controller usable ({note}): tasks are bounded by rlimits only");
    } else {
        tracing::info!(
            version = %s.version,
            controllers = %s.controllers.join(","),
            memory_max = ?s.memory_max_bytes,
            swap_max = ?s.swap_max_bytes,
            pids_max = ?s.pids_max,
            slot_cpu_weight = ?s.slot_cpu_weight,
            tasks_cpu_weight = ?s.tasks_cpu_weight,
            note,
            "cgroups in force per task slot"
        );
    }
}

/// Root reads the tasks under `root` (canonical): nobody else may be able to
/// change the tree or swap it out. `root` must be owned by root and writable
/// by nobody else; so must every directory above it, unless sticky (like
/// `/tmp`: others can then not rename root's entries).
fn check_root_owned(root: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    for dir in root.ancestors() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", dir.display())))?;
        let shared = meta.mode() & 0o022 != 0 && (dir == root || meta.mode() & 0o1000 == 0);
        if meta.uid() != 0 || shared {
            return Err(ConfigError::Invalid(format!(
                "tasks directory {}: {} must be owned by root and writable by nobody else (uid {}, mode {:o})",
                root.display(),
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Slot uids reach their run directories through `work_dir`: every directory
/// on the way must be searchable by others (a checkout under `/root` is not).
fn check_traversable(work_dir: &Path) -> Result<(), ConfigError> {
    let real = std::fs::canonicalize(work_dir)
        .map_err(|e| ConfigError::Invalid(format!("work directory {}: {e}", work_dir.display())))?;
    for dir in real.ancestors() {
        let mode = std::fs::metadata(dir)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", dir.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(ConfigError::Invalid(format!(
                "work directory {}: {} is not searchable by the task uids (mode {:o})",
                work_dir.display(),
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// A staged run directory: `task/` (the copy that runs), `home/` and the preload.
struct RunDir {
    temp: tempfile::TempDir,
    task: PathBuf,
    home: PathBuf,
    preload: PathBuf,
    entry: PathBuf,
    digest: String,
}

impl RunDir {
    /// Deletes the run directory. A task sharing the runner's uid may have left
    /// directories without owner permissions in its home; those are restored
    /// and the removal retried. Only then: restoring follows paths, which a
    /// surviving task could swap for symlinks, so it must never run as root
    /// (which needs no permission bits to delete anyway).
    fn remove(self, privileged: bool) {
        let path = self.temp.path().to_owned();
        let closed = self.temp.close();
        if closed.is_ok() {
            return;
        }
        if !privileged {
            restore_owner_access(&path);
            if std::fs::remove_dir_all(&path).is_ok() {
                return;
            }
        }
        if let Err(e) = closed {
            tracing::error!(path = %path.display(), error = %e, "could not remove a run directory");
        }
    }
}

/// Gives the owner full access to every directory under `dir`. Follows
/// symlinks: only for a runner that shares its uid with the task.
fn restore_owner_access(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            restore_owner_access(&entry.path());
        }
    }
}

impl Inner {
    fn tree_limits(&self) -> TreeLimits {
        TreeLimits {
            max_entries: self.config.max_task_files,
            max_bytes: self.config.max_task_bytes,
            // Root reads the tasks: only root may be able to change them meanwhile.
            dir_owner: self.privileged.then_some(0),
        }
    }

    async fn run(
        self: Arc<Self>,
        req: TaskRequest,
        mut abandoned: exec::Abandoned,
    ) -> Result<TaskResult, TaskError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(TaskError::ShuttingDown);
        }
        let node = self.node.as_ref().ok_or(TaskError::NodeMissing)?;
        let req = req.validate(&self.config)?;
        let task = task::resolve(&self.root, &req.task_path)?;
        let slot = tokio::select! {
            slot = self.limiter.acquire() => slot?,
            _ = &mut abandoned => {
                self.abandoned_queued.fetch_add(1, Ordering::Relaxed);
                return Err(TaskError::Internal("abandoned by its caller while queued".into()));
            }
        };
        // Slot indexes are below max_concurrent, which `check` made sure fits a u32.
        let identity = self.uids.as_ref().map(|u| u.slot(slot.index() as u32));
        let task_id = uuid::Uuid::new_v4().to_string();

        let this = self.clone();
        let run_dir = tokio::task::spawn_blocking(move || {
            if let Some(id) = identity {
                // Whatever a crashed predecessor left under this uid must not meet the new task.
                BoxKind::Uid(id)
                    .kill_all(None)
                    .map_err(|e| TaskError::internal("clearing the slot", e))?;
            }
            this.prepare(&task.dir, identity)
        })
        .await
        .map_err(|e| TaskError::internal("preparing the run", e))??;

        let mut env = vec![
            (OsString::from("PATH"), OsString::from(TASK_PATH_ENV)),
            ("HOME".into(), run_dir.home.clone().into()),
            ("TMPDIR".into(), run_dir.home.clone().into()),
            ("NODE_ENV".into(), "production".into()),
            ("NAUTILUS_TASK_ID".into(), task_id.clone().into()),
        ];
        env.extend(self.pass_env.iter().cloned());
        let cgroup = self.cgroups.slot(slot.index());
        let oom_before = cgroup.and_then(cgroup::Slot::oom_kills);
        let spec = SpawnSpec {
            node: node.path.clone(),
            node_args: vec![
                format!("--max-old-space-size={}", self.config.heap_limit_mib()).into(),
                "-r".into(),
                run_dir.preload.clone().into(),
            ],
            entry: run_dir.entry.clone(),
            args: req.args.clone(),
            cwd: run_dir.task.clone(),
            env,
            identity,
            task_id: task_id.clone(),
            piped_stdin: req.stdin.is_some(),
            cgroup: cgroup.map_or(cgroup::Join::NONE, cgroup::Slot::join),
        };
        let watch = Watch {
            timeout: Duration::from_secs(req.timeout_secs),
            grace: self.config.kill_grace,
            max_output: self.config.max_output_bytes,
            cancel: self.cancel.subscribe(),
            abandoned,
            oom: cgroup.and_then(cgroup::Slot::oom_event),
        };
        let stdin = req.stdin.as_ref().map(|s| s.as_bytes().to_vec());
        let outcome = match exec::spawn(spec, &self.policy) {
            Ok(boxed) => exec::supervise(boxed, stdin, watch).await,
            Err(e) => Err(e),
        };
        let digest = run_dir.digest.clone();
        // Removing the run directory is blocking I/O; the slot is held until it
        // and whatever the task left in shared scratch directories are gone.
        let privileged = self.privileged;
        let this = self.clone();
        let index = slot.index();
        let oom_killed = tokio::task::spawn_blocking(move || {
            run_dir.remove(privileged);
            if let Some(id) = identity {
                sandbox::remove_leftovers(id.uid);
            }
            let cgroup = this.cgroups.slot(index)?;
            if let Err(e) = cgroup.empty() {
                tracing::error!(error = %e, "slot cgroup could not be emptied");
            }
            Some(cgroup.oom_kills() > oom_before)
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
        drop(slot);
        let outcome = outcome?;

        let cap = self.config.max_output_bytes;
        let (stdout, stdout_truncated) = outcome.stdout.into_text(cap);
        let (mut stderr, mut stderr_truncated) = outcome.stderr.into_text(cap);
        // On v1 the runner's own kill may beat the OOM killer to it, which
        // then has nothing left to count.
        if oom_killed || outcome.ending == Ending::OutOfMemory {
            tracing::warn!(task_id, "task killed at its memory limit");
            stderr_truncated |= append_note(&mut stderr, cap, &self.oom_note());
        }
        let result = TaskResult {
            task_id,
            task_path: req.task_path,
            task_digest: digest,
            args: req.args,
            stdin_sha256: req
                .stdin
                .as_ref()
                .map(|s| hex::encode(Sha256::digest(s.as_bytes()))),
            status: if outcome.status.success() {
                "success"
            } else {
                "failed"
            }
            .to_owned(),
            exit_code: outcome.status.code(),
            signal: exec::signal_name(&outcome.status),
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            execution_time_ms: u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        match outcome.ending {
            Ending::Exited | Ending::OutOfMemory => Ok(result),
            Ending::TimedOut => Err(TaskError::Timeout {
                secs: req.timeout_secs,
                partial: Box::new(result),
            }),
            Ending::Cancelled => Err(TaskError::ShuttingDown),
            Ending::Abandoned => {
                self.abandoned_running.fetch_add(1, Ordering::Relaxed);
                Err(TaskError::Internal(
                    "abandoned by its caller while running".into(),
                ))
            }
        }
    }

    /// What a task killed at its memory limit finds at the end of its stderr.
    fn oom_note(&self) -> String {
        format!(
            "\n[nautilus] task killed: it reached its memory limit of {} bytes \
             (out of memory in its cgroup)\n",
            self.config.memory_limit_bytes
        )
    }

    /// Creates the run directory: staged task, digest, entry point, home, preload.
    fn prepare(&self, task_dir: &Path, identity: Option<Identity>) -> Result<RunDir, TaskError> {
        let io = |what: &'static str| move |e: std::io::Error| TaskError::internal(what, e);
        let temp = tempfile::Builder::new()
            .prefix("nautilus-run-")
            .tempdir_in(&self.work_dir)
            .map_err(io("creating the run directory"))?;
        // Traversable but not listable: the slot uid reaches its own paths only.
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(io("securing the run directory"))?;
        if let Some(owner) = self.tree_limits().dir_owner {
            // The walk checks the task's own tree; this, the way there from the root.
            for dir in task_dir.ancestors().filter(|d| d.starts_with(&self.root)) {
                digest::check_trusted(dir, owner)?;
            }
        }
        let staged = temp.path().join("task");
        task::stage(task_dir, &staged, self.tree_limits())?;
        let digest = digest::digest_tree(&staged, self.tree_limits())?;
        let entry = task::entry_point(&staged)?;

        let home = temp.path().join("home");
        std::fs::create_dir(&home).map_err(io("creating the task's home"))?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
            .map_err(io("securing the home"))?;
        if let Some(id) = identity {
            std::os::unix::fs::chown(&home, Some(id.uid), Some(id.gid))
                .map_err(io("handing the home to the slot"))?;
        }
        let preload = temp.path().join("preload.cjs");
        std::fs::write(&preload, PRELOAD).map_err(io("writing the preload"))?;
        std::fs::set_permissions(&preload, std::fs::Permissions::from_mode(0o644))
            .map_err(io("securing the preload"))?;
        Ok(RunDir {
            temp,
            task: staged,
            home,
            preload,
            entry,
            digest,
        })
    }
}

/// Appends the runner's `note` to a task's captured text, dropping as much of
/// the text's end as the cap requires (a cut character included); returns
/// whether anything was dropped.
fn append_note(text: &mut String, cap: usize, note: &str) -> bool {
    let room = cap.saturating_sub(note.len());
    let cut = text.len() > room;
    if cut {
        let mut at = room;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text.push_str(note);
    cut
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_note_always_fits_the_cap() {
        let mut text = "ab\u{e9}".repeat(10);
        assert!(super::append_note(&mut text, 12, "!note!"));
        assert_eq!(text, "ab\u{e9}ab!note!");
        let mut short = String::from("x");
        assert!(!super::append_note(&mut short, 12, "!note!"));
        assert_eq!(short, "x!note!");
    }

    #[test]
    fn runner_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<super::Runner>();
        assert_send_sync::<super::TaskError>();
    }
}
