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
//! The runner:
//! - stages a copy of each task into the work directory
//!   ([`RunnerConfig::work_dir`]) and computes the [`digest`] of that copy,
//!   so `task_digest` describes exactly what ran and the task cannot modify
//!   any task directory. As root this happens once, at [`Runner::new`], for
//!   every task directly under the tasks root, into one root-owned snapshot
//!   that every run uses (the tasks tree, and the way to it, must then be
//!   root-owned and writable by nobody else: in the enclave it is part of
//!   the measured image and cannot change, so copying it per request would
//!   protect nothing; a runner started before a change keeps running what
//!   it staged). Without root each run stages its own copy. Files are opened
//!   without following symlinks or blocking on FIFOs and must be regular
//!   files; each keeps its permission bits masked with 0755, so staging
//!   never widens them (a root-only 0600 file stays unreadable to the task,
//!   yet is staged and digested);
//! - builds the environment from nothing: `PATH=/usr/local/bin:/usr/bin:/bin`,
//!   `HOME` and `TMPDIR` (the same private directory), `NODE_ENV=production`,
//!   `NAUTILUS_TASK_ID` (the result's `task_id`), and the variables named in
//!   [`RunnerConfig::pass_env`] with their values at [`Runner::new`];
//! - starts `node -r <preload> <entry> <args…>` without a shell (with
//!   `--max-old-space-size=<3/4 of the memory limit>` first only where no
//!   slot cgroup limits memory, see [`Isolation::heap_limit`]), cwd = the
//!   staged task directory, stdin
//!   = a pipe carrying the request's bytes (empty when there are none); the
//!   preload makes stdout/stderr blocking (nodejs/node#6456);
//! - gives `node` a session of its own, no leaked descriptors, rlimits
//!   (`RLIMIT_CORE` 0, `RLIMIT_DATA`, `RLIMIT_FSIZE`, `RLIMIT_NOFILE`, and
//!   `RLIMIT_NPROC` when root), `oom_score_adj` 1000 (the OOM killer takes the
//!   task, not the runner), `PR_SET_PDEATHSIG(SIGKILL)`, `PR_SET_NO_NEW_PRIVS`,
//!   and seccomp filters (profile `nautilus-seccomp-4`) at least as strict as
//!   Docker's default for what Node.js does not need (the `sandbox` module
//!   lists them; `docs/isolation.md` too);
//! - drains stdout and stderr continuously, keeping at most
//!   [`RunnerConfig::max_output_bytes`] of each (the rest is discarded and
//!   `*_truncated` set), decoded as UTF-8 with invalid bytes replaced by
//!   U+FFFD; the text stays within the cap (a character the cap cuts in two
//!   is dropped);
//! - on timeout sends SIGTERM to the task's process group from outside it,
//!   waits [`RunnerConfig::kill_grace`], then kills everything the task
//!   started; when the main process ends, likewise kills whatever it left
//!   behind, and waits at most one more second for the output pipes;
//! - when the caller drops [`Runner::run`]'s future: a run still queued
//!   never starts, a running one is killed at once (no grace); both are
//!   counted in [`RunnerStats`]. Whatever the runner deletes (run
//!   directories, leftovers) it deletes without recursion, with a bounded
//!   number of descriptors, whatever the depth; a failure is logged and
//!   counted ([`RunnerStats::cleanup_failures`]), never a crash.
//!
//! ## As root (the enclave's mode)
//!
//! Each run gets a box: fresh mount, IPC, network, UTS, PID and cgroup
//! namespaces under a small PID 1 reaper started with a raw `clone(2)` (the
//! `ns` module says why and lists its steps); a root built from an allowlist
//! (`node` and the libraries its loader opens, [`RunnerConfig::box_paths`],
//! the task snapshot, a generated `/etc`, a minimal `/dev`, its own `/proc`,
//! of `/sys` only the slot's memory limit (where Node.js reads it), and
//! `/tmp` and `/dev/shm` as its only writable places, `noexec`); the
//! slot's own uid ([`RunnerConfig::sandbox_uid_base`]` + i`, leased by the
//! `uids` module, see [`Runner::sandbox_uids`]) and the slot's cgroups (the
//! `cgroup` module). When the reaper ends, the kernel ends everything else
//! in the box. Each slot (up to [`RunnerConfig::warm_pool`]) keeps a warm
//! box whose `node` has started and waits for its one task
//! ([`Runner::start_warm_pool`]). `docs/isolation.md` describes all of it
//! and what a task can still tell; [`Runner::isolation`] and
//! [`Runner::cgroups`] say what is in force, for the attested manifest.
//!
//! ## Without root (development only)
//!
//! Tasks run as the runner's own uid, without namespaces, and can do what
//! that uid can (`docs/isolation.md` lists it): only for trusted tasks.
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
mod cleanup;
mod config;
pub mod declaration;
pub mod digest;
mod egress;
mod error;
mod exec;
mod isolation;
mod limiter;
mod lockfile;
mod node;
mod ns;
mod pool;
mod request;
mod sandbox;
mod snapshot;
mod task;
mod uids;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

pub use cgroup::{CgroupFeature, CgroupSummary};
pub use config::RunnerConfig;
pub use declaration::{
    DeclarationError, EgressHost, SecretValues, TaskDeclaration, DEFAULT_EGRESS_PORT,
    MAX_EGRESS_HOSTS,
};
pub use egress::{
    ConnectFuture, DirectConnect, EgressConnect, EgressLimits, EgressRecord, EgressStream,
};
pub use error::{ConfigError, ErrorKind, TaskError};
pub use isolation::Isolation;
pub use lockfile::{check_installed as check_dependencies, DependencyError};
pub use node::MIN_NODE_MAJOR;
pub use request::{
    normalize_task_path, Resources, TaskInfo, TaskRequest, TaskResult, ValidRequest,
    DEFAULT_TASK_PATH, MAX_ARGS, MAX_ARGS_TOTAL_BYTES, MAX_ARG_BYTES, MAX_STDIN_BYTES,
    MAX_TASK_PATH_BYTES,
};

use digest::TreeLimits;
use exec::{Ending, SpawnSpec, Watch};
use ns::BoxPlan;
use sandbox::{Identity, Policy};

/// `PATH` inside the box.
const TASK_PATH_ENV: &str = "/usr/local/bin:/usr/bin:/bin";
const PRELOAD: &str = include_str!("preload.cjs");
/// The preload's name in the snapshot or a run directory.
const PRELOAD_FILE: &str = "preload.cjs";
/// Work directory of a root runner when none is configured.
pub const DEFAULT_ROOT_WORK_DIR: &str = "/var/lib/nautilus-task-runner";
/// How long the start-up sweep may take to kill a crashed predecessor's tasks.
const SWEEP_DEADLINE: Duration = Duration::from_secs(5);

/// Load and counters of a [`Runner`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RunnerStats {
    /// Tasks holding a slot.
    pub running: usize,
    /// Runs waiting for a slot.
    pub queued: usize,
    /// Runs whose caller went away before they started: they never ran.
    pub abandoned_queued: u64,
    /// Runs whose caller went away while they ran: stopped at once.
    pub abandoned_running: u64,
    /// Run directories or leftovers that could not be removed (each logged).
    pub cleanup_failures: u64,
    /// Warm boxes waiting for a task now.
    pub warm_ready: usize,
    /// Runs handed to a warm box.
    pub warm_runs: u64,
    /// Runs that started `node` themselves (no warm box for their slot).
    pub cold_runs: u64,
    /// Warm boxes found dead or stopped before use, and discarded.
    pub warm_discarded: u64,
    /// Egress connections closed at once: the task had its maximum open.
    pub egress_refused_connections: u64,
    /// Egress connections cut: the task's bytes out or in reached their cap.
    pub egress_refused_bytes: u64,
    /// Egress connections whose connection out failed or timed out.
    pub egress_connect_failed: u64,
}

/// Runs tasks; cheap to clone (all clones share slots and state).
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Counters {
    abandoned_queued: AtomicU64,
    abandoned_running: AtomicU64,
    cleanup_failures: AtomicU64,
    warm_runs: AtomicU64,
    cold_runs: AtomicU64,
    warm_discarded: AtomicU64,
    egress: Arc<egress::Refusals>,
}

struct Inner {
    /// Warm boxes; dropped (killed) first, before the cgroups and the
    /// snapshot they use.
    pool: pool::Pool,
    pool_started: AtomicBool,
    config: RunnerConfig,
    /// Canonical tasks root.
    root: PathBuf,
    node: Option<node::Node>,
    policy: Policy,
    /// Whether tasks get slot uids and a box of namespaces (the runner is root).
    privileged: bool,
    limiter: Arc<limiter::Limiter>,
    /// Set once by [`Runner::shutdown`]; a refill waiting for its run's
    /// caller stops waiting then.
    shutting_down: watch::Sender<bool>,
    /// Turns true when running tasks must be killed for shutdown.
    cancel: watch::Sender<bool>,
    pass_env: Vec<(OsString, OsString)>,
    /// Canonical work directory.
    work_dir: PathBuf,
    /// Every task, staged once (when privileged). Named after the uid lease,
    /// so declared (and dropped) before it: a runner that takes the uids next
    /// must not find it half removed.
    snapshot: Option<snapshot::Snapshot>,
    /// One cgroup per slot (when privileged and the host has controllers).
    /// Named after the uid lease, so declared (and dropped) before it.
    cgroups: cgroup::Cgroups,
    /// Each slot's `/etc/hosts` (when privileged and the host has one).
    /// Named after the uid lease, so declared (and dropped) before it.
    hosts: Option<egress::HostsFiles>,
    /// The slot uids (when privileged).
    uids: Option<uids::UidLease>,
    /// The box layout (when privileged).
    plan: Option<BoxPlan>,
    /// How egress connections go out.
    connector: Arc<dyn EgressConnect>,
    /// Hex SHA-256 of the test CA tasks trust besides Node's store.
    test_ca_sha256: Option<String>,
    isolation: Isolation,
    /// `--max-old-space-size`, only where no slot cgroup limits memory:
    /// any V8 flag makes Node.js skip its start-up code cache (about 4 ms
    /// of CPU per start here).
    heap_flag: Option<OsString>,
    counters: Counters,
}

impl Runner {
    /// Checks `config`, resolves the tasks root and locates Node.js. A missing
    /// or too old Node.js is not an error here: every run then fails fast with
    /// [`TaskError::NodeMissing`].
    ///
    /// When root: checks the work directory and that the kernel gives every
    /// namespace the box needs, locks the slot uids, and sweeps away whatever
    /// a crashed predecessor left under them (processes, task snapshots).
    /// Blocking.
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
        let work_dir = prepare_work_dir(&config, privileged)?;
        let counters = Counters::default();
        let (uids, plan) = if privileged {
            check_root_owned(&root)?;
            let missing: Vec<String> = ns::probe_namespaces()
                .into_iter()
                .filter_map(|(name, r)| r.err().map(|e| format!("{name} ({e})")))
                .collect();
            if !missing.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "the kernel does not let the runner create these namespaces: {}; root mode needs them all",
                    missing.join(", ")
                )));
            }
            let plan = BoxPlan::new(
                &work_dir,
                config.max_scratch_bytes,
                node.as_ref().map(|n| n.path.as_path()),
                &config.box_paths,
            )
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            // `check` made sure max_concurrent fits a u32.
            let uids = uids::UidLease::take_first_free(
                uids::UidLease::lock_parent(&work_dir),
                config.sandbox_uid_base,
                config.max_concurrent as u32,
            )?;
            sweep(&work_dir, uids.slots(), &counters)?;
            (Some(uids), Some(plan))
        } else {
            (None, None)
        };
        let test_ca = config
            .egress_test_ca
            .as_deref()
            .map(read_test_ca)
            .transpose()?;
        let mut env_extra = Vec::new();
        let snapshot = match &uids {
            Some(lease) => {
                let mut files = vec![
                    (PRELOAD_FILE, PRELOAD),
                    (pool::BOOTSTRAP_FILE, pool::BOOTSTRAP),
                ];
                if let Some(ca) = &test_ca {
                    files.push((TEST_CA_FILE, ca.as_str()));
                    env_extra.push((
                        "NODE_EXTRA_CA_CERTS".into(),
                        work_dir.join(TEST_CA_FILE).into(),
                    ));
                }
                Some(snapshot::Snapshot::build(
                    &root,
                    work_dir.join(format!("{}-snapshot", lease.slots().start)),
                    tree_limits(&config, true),
                    &files,
                )?)
            }
            None => {
                if let Some(path) = &config.egress_test_ca {
                    env_extra.push(("NODE_EXTRA_CA_CERTS".into(), path.clone().into()));
                }
                None
            }
        };
        let hosts = match &uids {
            Some(lease) => Some(
                egress::HostsFiles::create(&work_dir, lease.slots()).map_err(|e| {
                    ConfigError::Invalid(format!("creating the slots' hosts files: {e}"))
                })?,
            ),
            None => None,
        };
        let pool_size = match (privileged, config.warm_pool) {
            (true, size) => size.unwrap_or(config.max_concurrent),
            (false, Some(0)) => 0,
            (false, _) => {
                tracing::info!(
                    "no warm pool without root (each run stages its task): runs start cold"
                );
                0
            }
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
        // Where the slots have a memory limit, the box shows it to Node.js,
        // which sizes its heap from it: no V8 flag (see `heap_limit`).
        let memory_limit = cgroups.summary().memory_max_bytes;
        let mut plan = plan;
        if let (Some(plan), Some(snapshot)) = (&mut plan, &snapshot) {
            plan.seal(&snapshot.dir, memory_limit).map_err(|e| {
                ConfigError::Invalid(format!("building the box's root from its allowlist: {e}"))
            })?;
        }
        let heap_flag = match (&plan, memory_limit) {
            (Some(_), Some(_)) => None,
            _ => Some(OsString::from(format!(
                "--max-old-space-size={}",
                config.heap_limit_mib()
            ))),
        };
        let policy = Policy::new(
            config.memory_limit_bytes,
            config.max_file_bytes,
            config.max_open_files,
            // Where the slot's pids cgroup holds the limit it is the wall, and
            // it counts what it refuses (a signed `limit: "pids"`). The kernel
            // checks RLIMIT_NPROC first, so that stays only as a backstop
            // above it; without the cgroup it is the wall.
            privileged.then_some(match cgroups.summary().pids_max {
                Some(pids) => pids.saturating_mul(2),
                None => config.max_processes,
            }),
            plan.as_ref().is_some_and(|p| !p.memfd_sysctl),
        )?;
        let isolation = describe(plan.as_ref(), &config, heap_flag.as_ref());
        let pass_env = config
            .pass_env
            .iter()
            .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
            .chain(env_extra)
            .collect();
        let connector = config
            .egress_connect
            .clone()
            .unwrap_or_else(|| Arc::new(DirectConnect));
        let limiter = limiter::Limiter::new(config.max_concurrent, config.max_queue);
        Ok(Runner {
            inner: Arc::new(Inner {
                pool: pool::Pool::new(config.max_concurrent, pool_size),
                pool_started: AtomicBool::new(false),
                config,
                root,
                node,
                policy,
                privileged,
                limiter,
                shutting_down: watch::Sender::new(false),
                cancel: watch::Sender::new(false),
                pass_env,
                work_dir,
                cgroups,
                uids,
                plan,
                hosts,
                connector,
                test_ca_sha256: test_ca.map(|ca| hex::encode(Sha256::digest(ca.as_bytes()))),
                snapshot,
                isolation,
                heap_flag,
                counters,
            }),
        })
    }

    /// Fills the warm pool (root mode; see [`RunnerConfig::warm_pool`]): a
    /// box with `node` started and waiting, for each pooled slot that is
    /// free. Later runs refill their slot themselves, off the caller's path.
    /// The first run calls it too; a server calls it once it listens, so
    /// that even the first request finds warm boxes. Must be called within
    /// a tokio runtime, on a thread that lives as long as the runner (the
    /// boxes die with the thread that started them).
    pub fn start_warm_pool(&self) {
        self.inner.start_pool();
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

    /// Whether tasks run under per-slot uids in a box of namespaces (the runner is root).
    pub fn is_privileged(&self) -> bool {
        self.inner.privileged
    }

    /// The isolation in force, as detected at start.
    pub fn isolation(&self) -> &Isolation {
        &self.inner.isolation
    }

    /// Hex SHA-256 of the PEM file of [`RunnerConfig::egress_test_ca`], as
    /// loaded at start.
    pub fn egress_test_ca_sha256(&self) -> Option<&str> {
        self.inner.test_ca_sha256.as_deref()
    }

    /// The work directory in use (canonical).
    pub fn work_dir(&self) -> &Path {
        &self.inner.work_dir
    }

    /// The uids the slots run under, when privileged: the first free range at
    /// or above [`RunnerConfig::sandbox_uid_base`].
    pub fn sandbox_uids(&self) -> Option<std::ops::Range<u32>> {
        self.inner.uids.as_ref().map(uids::UidLease::slots)
    }

    /// The first process (the PID 1 reaper) of each warm box waiting now;
    /// `node` is its child. For monitoring: these processes are the pool's,
    /// not leftovers of a run.
    pub fn warm_box_pids(&self) -> Vec<u32> {
        self.inner.pool.pids()
    }

    /// Current load and counters.
    pub fn stats(&self) -> RunnerStats {
        let c = &self.inner.counters;
        RunnerStats {
            running: self.inner.limiter.running(),
            queued: self.inner.limiter.queued(),
            abandoned_queued: c.abandoned_queued.load(Ordering::Relaxed),
            abandoned_running: c.abandoned_running.load(Ordering::Relaxed),
            cleanup_failures: c.cleanup_failures.load(Ordering::Relaxed),
            warm_ready: self.inner.pool.ready(),
            warm_runs: c.warm_runs.load(Ordering::Relaxed),
            cold_runs: c.cold_runs.load(Ordering::Relaxed),
            warm_discarded: c.warm_discarded.load(Ordering::Relaxed),
            egress_refused_connections: c.egress.connections.load(Ordering::Relaxed),
            egress_refused_bytes: c.egress.bytes.load(Ordering::Relaxed),
            egress_connect_failed: c.egress.connect.load(Ordering::Relaxed),
        }
    }

    /// Checks that `task_path` names a task (validation rules and the contract
    /// errors of [`Runner::run`]) and returns its normalized form, as results
    /// report it. Lets a caller apply its own policy, such as an allow-list,
    /// before spending a slot. Blocking file I/O (a `realpath`).
    pub fn resolve_task(&self, task_path: &str) -> Result<String, TaskError> {
        let path = request::normalize_task_path(task_path)?;
        self.inner.locate(&path)?;
        Ok(path)
    }

    /// Every task directly under the tasks root (a directory holding
    /// `package.json`), sorted by path, with its digest. Blocking file I/O.
    pub fn list_tasks(&self) -> Result<Vec<TaskInfo>, TaskError> {
        let inner = &self.inner;
        if let Some(snapshot) = &inner.snapshot {
            return snapshot
                .tasks()
                .map(|(name, staged)| match staged {
                    Ok(staged) => Ok(TaskInfo {
                        task_path: name.clone(),
                        task_digest: staged.digest.clone(),
                        egress: staged.declaration.egress.clone(),
                        secrets: staged.declaration.secrets.clone(),
                    }),
                    Err(refused) => Err(refused.to_error()),
                })
                .collect();
        }
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
            // A bad declaration refuses the listing (as the snapshot does
            // as root); a task without an entry never runs.
            let declaration = match task::entry_point(&task.dir) {
                Ok(_) => TaskDeclaration::read(&task.dir)?,
                Err(_) => TaskDeclaration::default(),
            };
            tasks.push(TaskInfo {
                task_path: task.task_path,
                task_digest,
                egress: declaration.egress,
                secrets: declaration.secrets,
            });
        }
        Ok(tasks)
    }

    /// Validates `req`, waits for a slot and runs the task.
    ///
    /// Dropping the returned future cancels the run: a run still waiting for
    /// a slot never starts, a running task is killed at once and its slot
    /// freed (both counted in [`RunnerStats`]). The run is supervised on a
    /// task of its own, so nothing is left behind either way.
    pub async fn run(&self, req: TaskRequest) -> Result<TaskResult, TaskError> {
        self.run_with_secrets(req, Arc::default()).await
    }

    /// [`Runner::run`], handing the task the operator secrets its
    /// `package.json` declares (see [`TaskDeclaration`]) from `secrets`, as
    /// environment variables of their names; a declared secret missing from
    /// `secrets` fails the run with [`TaskError::SecretMissing`] before it
    /// takes a slot. A run with secrets always starts cold: a warm box was
    /// started before anyone knew which task it would run.
    pub async fn run_with_secrets(
        &self,
        req: TaskRequest,
        secrets: Arc<SecretValues>,
    ) -> Result<TaskResult, TaskError> {
        let inner = self.inner.clone();
        // Dropped with this future: the run then sees its caller gone, and
        // the slot's refill knows the caller has its answer.
        let (_caller, gone) = oneshot::channel::<()>();
        let (_answered, answered) = oneshot::channel::<()>();
        // The caller's span (the server's request id) follows the run.
        tokio::spawn(
            async move { inner.run(req, secrets, gone, answered).await }
                .instrument(tracing::Span::current()),
        )
        .await
        .map_err(|e| TaskError::internal("task supervisor failed", e))?
    }

    /// Stops accepting runs (new and queued ones fail with
    /// [`TaskError::ShuttingDown`]), gives running tasks `grace` to finish, then
    /// kills them. Returns when nothing is left running.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shutting_down.send_replace(true);
        inner.limiter.close();
        inner.pool.clear();
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
            // Options as their value or absent, never `Some(…)`.
            memory_max = s.memory_max_bytes,
            swap_max = s.swap_max_bytes,
            pids_max = s.pids_max,
            slot_cpu_weight = s.slot_cpu_weight,
            tasks_cpu_weight = s.tasks_cpu_weight,
            note,
            "cgroups in force per task slot"
        );
        // Once, at start: each feature the kernel lacks and what stands in.
        for f in s.features.iter().filter(|f| !f.available) {
            tracing::warn!(feature = %f.name, "cgroup feature missing: {}", f.detail);
        }
    }
}

/// The isolation summary for a runner with `plan` (root) or without (unprivileged).
fn describe(
    plan: Option<&BoxPlan>,
    config: &RunnerConfig,
    heap_flag: Option<&OsString>,
) -> Isolation {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    let heap_limit = heap_flag.map_or_else(
        || "cgroup".to_owned(),
        |flag| flag.to_string_lossy().into_owned(),
    );
    match plan {
        Some(plan) => {
            let oom_score_floor = isolation::has_cap_sys_resource();
            let mut missing = Vec::new();
            if !oom_score_floor {
                missing.push("oom_score_adj floor: the runner lacks CAP_SYS_RESOURCE, so a task can lower its OOM score from 1000 (the OOM killer may then pick the runner)".to_owned());
                tracing::warn!("{}", missing[0]);
            }
            Isolation {
                mode: "root".into(),
                kernel: isolation::kernel_release(),
                namespaces: strings(&ns::NAMESPACES.map(|(name, _)| name)),
                pid1_reaper: true,
                private_proc: true,
                private_dev: true,
                network: "loopback-only".into(),
                readonly_code: true,
                box_root: plan.exposed(),
                scratch_dirs: strings(&["/dev/shm", ns::TASK_HOME]),
                scratch_bytes: config.max_scratch_bytes,
                scratch_noexec: true,
                memfd_noexec: if plan.memfd_sysctl { "sysctl" } else { "seccomp" }.into(),
                oom_score_floor,
                seccomp_profile: sandbox::SECCOMP_PROFILE.into(),
                slot_uids: true,
                heap_limit,
                missing,
            }
        }
        None => Isolation {
            mode: "unprivileged".into(),
            kernel: isolation::kernel_release(),
            network: "host".into(),
            memfd_noexec: "none".into(),
            seccomp_profile: sandbox::SECCOMP_PROFILE.into(),
            heap_limit,
            missing: vec![
                "slot uids, namespaces, private /proc, /dev, network and scratch: the runner is not root".into(),
            ],
            ..Isolation::default()
        },
    }
}

/// Resolves, creates if needed, and checks the work directory: staged code
/// is executed from there (native addons are mapped executable), so its
/// file system must allow `exec`; as root it must be root's alone and the
/// slot uids must be able to reach it.
fn prepare_work_dir(config: &RunnerConfig, privileged: bool) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let invalid = |msg: String| ConfigError::Invalid(msg);
    let configured = match &config.work_dir {
        Some(dir) => dir.clone(),
        None if privileged => PathBuf::from(DEFAULT_ROOT_WORK_DIR),
        None => std::env::temp_dir(),
    };
    if privileged && !configured.exists() {
        // Root's alone; the box shows it on its own root, so the way to it
        // (a minimal image has no /var/lib) needs no particular mode.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&configured)
            .map_err(|e| {
                invalid(format!(
                    "creating the work directory {}: {e}",
                    configured.display()
                ))
            })?;
    }
    let dir = std::fs::canonicalize(&configured)
        .map_err(|e| invalid(format!("work directory {}: {e}", configured.display())))?;
    let stat = nix::sys::statvfs::statvfs(&dir)
        .map_err(|e| invalid(format!("work directory {}: {e}", dir.display())))?;
    use nix::sys::statvfs::FsFlags;
    if stat.flags().contains(FsFlags::ST_NOEXEC) {
        return Err(invalid(format!(
            "work directory {} is on a noexec file system: tasks with native addons could not load them; choose another with --work-dir (NAUTILUS_WORK_DIR)",
            dir.display()
        )));
    }
    if stat.flags().contains(FsFlags::ST_RDONLY) {
        return Err(invalid(format!(
            "work directory {} is on a read-only file system; choose another with --work-dir (NAUTILUS_WORK_DIR)",
            dir.display()
        )));
    }
    if privileged {
        let meta = std::fs::metadata(&dir)
            .map_err(|e| invalid(format!("work directory {}: {e}", dir.display())))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(invalid(format!(
                "work directory {} must be owned by root and writable by nobody else (uid {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(dir)
}

use std::os::unix::fs::DirBuilderExt;

/// Before serving, as root: kills every process a slot uid still owns and
/// removes the run directories earlier runs under these uids left (a box
/// writes nothing else of the host's, and its IPC namespace dies with it), so a crashed
/// predecessor never leaves a trap for this runner. Only this runner holds
/// the lease on these uids.
fn sweep(
    work_dir: &Path,
    slots: std::ops::Range<u32>,
    counters: &Counters,
) -> Result<(), ConfigError> {
    let survivors = cleanup::kill_processes_of(&slots, SWEEP_DEADLINE);
    if !survivors.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "processes of the slot uids {slots:?} survived SIGKILL for {SWEEP_DEADLINE:?}: {survivors:?}"
        )));
    }
    let remove = |path: &Path| {
        if let Err(e) = cleanup::remove_tree(path) {
            counters.cleanup_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), error = %e, "could not remove a leftover of an earlier run");
        }
    };
    if let Ok(entries) = std::fs::read_dir(work_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(uid, _)| uid.parse::<u32>().ok())
                .is_some_and(|uid| slots.contains(&uid));
            if ours {
                remove(&entry.path());
            }
        }
    }
    Ok(())
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

/// The test CA's name in the snapshot.
const TEST_CA_FILE: &str = "egress-test-ca.pem";
/// Largest test CA file read.
const MAX_TEST_CA_BYTES: u64 = 64 * 1024;

/// Reads [`RunnerConfig::egress_test_ca`]: PEM certificates, bounded.
fn read_test_ca(path: &Path) -> Result<String, ConfigError> {
    let invalid =
        |why: String| ConfigError::Invalid(format!("egress test CA {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?;
    if meta.len() > MAX_TEST_CA_BYTES {
        return Err(invalid(format!("larger than {MAX_TEST_CA_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(text)
}

/// Without root, a run's own directory: `task/` (the staged copy that
/// runs), the preload and the task's home.
struct RunDir {
    path: PathBuf,
    task: PathBuf,
    /// `HOME` and `TMPDIR`.
    home: PathBuf,
    /// The entry file, relative to `task`.
    entry: PathBuf,
    digest: String,
}

/// Where a task runs from.
enum Located {
    /// Root: staged at start; paths as the box shows them.
    Staged {
        cwd: PathBuf,
        entry: PathBuf,
        digest: String,
        declaration: TaskDeclaration,
    },
    /// Without root: the task's directory, staged per run.
    Dir(task::ResolvedTask),
}

/// How `node` starts: what a cold start runs, or a warm box's bootstrap.
struct Launch {
    /// The main module, absolute.
    entry: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    home: PathBuf,
    preload: PathBuf,
    /// A warm box's control descriptor.
    control: Option<libc::c_int>,
}

/// Caps on a task tree. Root reads the tasks: only root may be able to
/// change them meanwhile.
fn tree_limits(config: &RunnerConfig, privileged: bool) -> TreeLimits {
    TreeLimits {
        max_entries: config.max_task_files,
        max_bytes: config.max_task_bytes,
        dir_owner: privileged.then_some(0),
    }
}

impl Inner {
    fn tree_limits(&self) -> TreeLimits {
        tree_limits(&self.config, self.privileged)
    }

    /// Removes a run directory (blocking), logging and counting a failure.
    fn remove_run_dir(&self, path: &Path) {
        if let Err(e) = cleanup::remove_tree(path) {
            self.counters
                .cleanup_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), error = %e, "could not remove a run directory");
        }
    }

    /// Where `task_path` (normalized) runs from: its entry in the snapshot
    /// (root), or its directory to stage (without root). Errors as a
    /// per-run staging would give them.
    fn locate(&self, task_path: &str) -> Result<Located, TaskError> {
        let (Some(snapshot), Some(plan)) = (&self.snapshot, &self.plan) else {
            return Ok(Located::Dir(task::resolve(&self.root, task_path)?));
        };
        match snapshot.get(task_path) {
            Some(Ok(staged)) => {
                let entry = staged.entry.as_ref().map_err(snapshot::Refused::to_error)?;
                let cwd = plan.code_dir().join(task_path);
                Ok(Located::Staged {
                    entry: cwd.join(entry),
                    cwd,
                    digest: staged.digest.clone(),
                    declaration: staged.declaration.clone(),
                })
            }
            Some(Err(refused)) => Err(refused.to_error()),
            None => {
                // Say what is wrong with the path itself, if anything.
                task::resolve(&self.root, task_path)?;
                Err(TaskError::TaskDirMissing(format!(
                    "{task_path} (as root, only the tasks directly under the tasks directory when the runner started run)"
                )))
            }
        }
    }

    /// The environment and box of a run in slot `index` under `task_id`.
    fn spec(
        &self,
        index: usize,
        identity: Option<Identity>,
        task_id: String,
        secrets: &[(String, zeroize::Zeroizing<String>)],
        launch: Launch,
    ) -> SpawnSpec {
        let mut env = vec![
            (OsString::from("PATH"), OsString::from(TASK_PATH_ENV)),
            ("HOME".into(), launch.home.clone().into()),
            ("TMPDIR".into(), launch.home.into()),
            ("NODE_ENV".into(), "production".into()),
            ("NAUTILUS_TASK_ID".into(), task_id.clone().into()),
        ];
        env.extend(self.pass_env.iter().cloned());
        // Last: a declared secret wins over a passed-through variable.
        env.extend(
            secrets
                .iter()
                .map(|(name, value)| (name.into(), value.as_str().into())),
        );
        let env = exec::Env(env);
        SpawnSpec {
            node: self
                .node
                .as_ref()
                .map(|n| n.path.clone())
                .unwrap_or_default(),
            node_args: self
                .heap_flag
                .iter()
                .cloned()
                .chain(["-r".into(), launch.preload.into()])
                .collect(),
            entry: launch.entry,
            args: launch.args,
            cwd: launch.cwd,
            env,
            task_id,
            control: launch.control,
            boxed: identity.filter(|_| self.snapshot.is_some()),
            hosts: self
                .hosts
                .as_ref()
                .and_then(|h| h.path(index))
                .map(Path::to_path_buf),
            netns: None,
            cgroup: self
                .cgroups
                .slot(index)
                .map_or(cgroup::Join::NONE, cgroup::Slot::join),
        }
    }

    /// Starts a warm box in slot `index` (root mode). Must run on a thread
    /// that outlives the box.
    fn spawn_warm(&self, index: usize) -> Result<pool::Warm, TaskError> {
        let (Some(plan), Some(uids)) = (&self.plan, &self.uids) else {
            return Err(TaskError::Internal("a warm box needs root mode".into()));
        };
        // Slot indexes are below max_concurrent, which `check` made sure fits a u32.
        let identity = uids.slot(index as u32);
        // Above every descriptor node opens while it boots: the task finds
        // the numbers a plain start gives.
        let control = libc::c_int::try_from(self.config.max_open_files - 1).map_err(|_| {
            TaskError::Internal("max_open_files is too large for a warm box".into())
        })?;
        let task_id = uuid::Uuid::new_v4().to_string();
        let launch = Launch {
            entry: self.work_dir.join(pool::BOOTSTRAP_FILE),
            args: vec![control.to_string()],
            cwd: plan.code_dir(),
            home: PathBuf::from(ns::TASK_HOME),
            preload: self.work_dir.join(PRELOAD_FILE),
            control: Some(control),
        };
        let spec = self.spec(index, Some(identity), task_id.clone(), &[], launch);
        let boxed = exec::spawn(spec, &self.policy, self.plan.as_ref())?;
        Ok(pool::Warm { boxed, task_id })
    }

    /// Kills whatever is left in slot `index`'s cgroups and waits until
    /// they are empty. Blocking.
    fn empty_slot(&self, index: usize) {
        if let Some(cgroup) = self.cgroups.slot(index) {
            if let Err(e) = cgroup.empty() {
                tracing::error!(error = %e, "slot cgroup could not be emptied");
            }
        }
    }

    /// Puts a warm box in the pooled slot `slot` holds, then frees the slot.
    fn refill(&self, slot: limiter::Slot) {
        let index = slot.index();
        if index >= self.pool.size() || self.pool.has(index) || *self.shutting_down.borrow() {
            return;
        }
        match self.spawn_warm(index) {
            Ok(warm) => self.pool.put(index, warm),
            Err(e) => tracing::warn!(slot = index, error = %e, "could not start a warm box"),
        }
        // A shutdown that began meanwhile has already cleared the pool.
        if *self.shutting_down.borrow() {
            self.pool.clear();
        }
        drop(slot);
    }

    /// Fills every free pooled slot, once.
    fn start_pool(&self) {
        if self.pool.size() == 0
            || self.node.is_none()
            || self.pool_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let mut held = Vec::new();
        while let Some(slot) = self.limiter.try_acquire() {
            held.push(slot);
        }
        for slot in held {
            self.refill(slot);
        }
    }

    async fn run(
        self: Arc<Self>,
        req: TaskRequest,
        secrets: Arc<SecretValues>,
        mut gone: oneshot::Receiver<()>,
        answered: oneshot::Receiver<()>,
    ) -> Result<TaskResult, TaskError> {
        if *self.shutting_down.borrow() {
            return Err(TaskError::ShuttingDown);
        }
        if self.node.is_none() {
            return Err(TaskError::NodeMissing);
        }
        let req = req.validate(&self.config)?;
        let located = self.locate(&req.task_path)?;
        let secret_env = match &located {
            Located::Staged { declaration, .. } => declaration.clone(),
            Located::Dir(task) => TaskDeclaration::read(&task.dir)?,
        }
        .secret_env(&req.task_path, &secrets)?;
        drop(secrets);
        self.start_pool();
        let slot = tokio::select! {
            slot = self.limiter.acquire() => slot?,
            _ = &mut gone => {
                self.counters.abandoned_queued.fetch_add(1, Ordering::Relaxed);
                tracing::info!("caller went away before the task started; not running it");
                return Err(TaskError::Internal("abandoned by its caller while queued".into()));
            }
        };
        let index = slot.index();
        // Slot indexes are below max_concurrent, which `check` made sure fits a u32.
        let identity = self.uids.as_ref().map(|u| u.slot(index as u32));

        // Without root the task has the host's network: nothing to relay.
        let mut egress: Vec<EgressHost> = Vec::new();
        let (launch, digest, run_dir) = match located {
            Located::Staged {
                cwd,
                entry,
                digest,
                declaration,
            } => {
                egress = declaration.egress;
                (
                    Launch {
                        entry,
                        args: Vec::new(),
                        cwd,
                        home: PathBuf::from(ns::TASK_HOME),
                        preload: self.work_dir.join(PRELOAD_FILE),
                        control: None,
                    },
                    digest,
                    None,
                )
            }
            Located::Dir(task) => {
                let this = self.clone();
                let run_dir = tokio::task::spawn_blocking(move || this.prepare(&task.dir))
                    .await
                    .map_err(|e| TaskError::internal("preparing the run", e))??;
                (
                    Launch {
                        entry: run_dir.task.join(&run_dir.entry),
                        args: Vec::new(),
                        cwd: run_dir.task.clone(),
                        home: run_dir.home.clone(),
                        preload: run_dir.path.join(PRELOAD_FILE),
                        control: None,
                    },
                    run_dir.digest.clone(),
                    Some(run_dir.path),
                )
            }
        };
        let cgroup = self.cgroups.slot(index);
        let oom_before = cgroup.and_then(cgroup::Slot::oom_kills);
        let pids_before = cgroup.and_then(cgroup::Slot::pids_refused);
        let peak = cgroup.and_then(cgroup::Slot::peak_from_now);
        if let Some(hosts) = &self.hosts {
            hosts
                .write(index, &egress)
                .map_err(|e| TaskError::internal("writing the box's hosts file", e))?;
        }
        let mut session = None;
        let mut started = None;
        // A warm box's environment was fixed before this run was known.
        let warm = if secret_env.is_empty() {
            self.pool.take(index)
        } else {
            None
        };
        if let Some(mut warm) = warm {
            let message = serde_json::json!({
                "cwd": launch.cwd.to_str(),
                "entry": launch.entry.to_str(),
                "args": &req.args,
            });
            let handed = if !warm.boxed.is_ready() {
                Err(TaskError::Internal(
                    "the warm box is dead or stopped".into(),
                ))
            } else {
                match self.egress_into(&egress, &warm.boxed) {
                    Ok(s) => {
                        session = s;
                        warm.boxed.hand_over(message.to_string().as_bytes()).await
                    }
                    Err(e) => Err(e),
                }
            };
            match handed {
                Ok(()) => {
                    self.counters.warm_runs.fetch_add(1, Ordering::Relaxed);
                    started = Some(Ok((warm.boxed, warm.task_id)));
                }
                Err(e) => {
                    self.counters.warm_discarded.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "discarded the slot's warm box; starting cold");
                }
            }
        }
        let started = started.unwrap_or_else(|| {
            self.counters.cold_runs.fetch_add(1, Ordering::Relaxed);
            let task_id = uuid::Uuid::new_v4().to_string();
            let mut spec = self.spec(
                index,
                identity,
                task_id.clone(),
                &secret_env,
                Launch {
                    args: req.args.clone(),
                    ..launch
                },
            );
            if self.hosts.is_some() && !egress.is_empty() {
                // The listeners exist before the box does: the box joins
                // the namespace that holds them.
                let (netns, s) = self.egress_session(egress::Netns::Fresh, &egress)?;
                spec.netns = netns;
                session = Some(s);
            }
            // Spawned here, on a runtime worker: the box's death signal
            // follows the spawning thread, which must outlive the run.
            exec::spawn(spec, &self.policy, self.plan.as_ref()).map(|b| (b, task_id))
        });
        let watch = Watch {
            timeout: Duration::from_secs(req.timeout_secs),
            grace: self.config.kill_grace,
            max_output: self.config.max_output_bytes,
            cancel: self.cancel.subscribe(),
            abandoned: gone,
            oom: cgroup.and_then(cgroup::Slot::oom_event),
        };
        let stdin = req.stdin.as_ref().map(|s| s.as_bytes().to_vec());
        let (mut outcome, task_id) = match started {
            Ok((boxed, task_id)) => (exec::supervise(boxed, stdin, watch).await, task_id),
            Err(e) => (Err(e), String::new()),
        };
        // Connections die with the task.
        let egress_records = session.map(egress::Session::finish).unwrap_or_default();
        if outcome
            .as_ref()
            .is_ok_and(|o| o.ending == Ending::Abandoned)
        {
            self.counters
                .abandoned_running
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("caller went away while the task ran; stopped it");
        }
        // A box whose reaper emptied it is still being reaped: the slot's
        // cgroups are emptied after that, off the caller's path.
        let reaping = match &mut outcome {
            Ok(o) => o.reaping.take(),
            Err(_) => None,
        };
        let empty_now = reaping.is_none();
        // Blocking: the run directory (without root) goes, and the slot's
        // cgroups must be empty before the slot is used again.
        let this = self.clone();
        let (oom_killed, pids_refused, peak) = tokio::task::spawn_blocking(move || {
            if let Some(path) = run_dir {
                this.remove_run_dir(&path);
            }
            let cgroup = this.cgroups.slot(index)?;
            if empty_now {
                this.empty_slot(index);
            }
            Some((
                cgroup.oom_kills() > oom_before,
                cgroup.pids_refused() > pids_before,
                peak.and_then(|p| p.read()),
            ))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or((false, false, None));
        // The slot is freed once it is empty and its warm box is back, off
        // the caller's path: the new box starts only once the caller has its
        // answer (its future ended: returned or dropped), so that booting
        // it does not compete with signing and sending the response.
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(reaping) = reaping {
                let _ = reaping.await;
                let emptied = this.clone();
                let _ = tokio::task::spawn_blocking(move || emptied.empty_slot(index)).await;
            }
            // Only for a box to start: a cold slot is free at once. Err once
            // the sender is dropped, which is the only way it ends; a caller
            // may keep the run's future while it shuts the runner down (the
            // CLI on SIGTERM), which then waits for this slot.
            if index < this.pool.size() {
                let mut stopping = this.shutting_down.subscribe();
                tokio::select! {
                    _ = answered => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            }
            this.refill(slot)
        });
        let outcome = outcome?;

        let cap = self.config.max_output_bytes;
        let (stdout, stdout_truncated) = outcome.stdout.into_text(cap);
        let (stderr, stderr_truncated) = outcome.stderr.into_text(cap);
        // On v1 the runner's own kill may beat the OOM killer to it, which
        // then has nothing left to count.
        let limit = if oom_killed || outcome.ending == Ending::OutOfMemory {
            tracing::warn!(task_id, "task killed at its memory limit");
            Some("memory")
        } else if outcome.ending == Ending::TimedOut {
            Some("time")
        } else if pids_refused {
            Some("pids")
        } else if stdout_truncated || stderr_truncated {
            Some("output")
        } else {
            None
        };
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
            execution_time_ms: millis(outcome.elapsed),
            limit: limit.map(str::to_owned),
            resources: outcome.cpu.map(|cpu| Resources {
                cpu_time_ms: millis(cpu),
                peak_memory_bytes: peak.unwrap_or(0),
            }),
            egress: egress_records,
        };
        match outcome.ending {
            Ending::Exited | Ending::OutOfMemory => Ok(result),
            Ending::TimedOut => Err(TaskError::Timeout {
                secs: req.timeout_secs,
                partial: Box::new(result),
            }),
            Ending::Cancelled => Err(TaskError::ShuttingDown),
            Ending::Abandoned => Err(TaskError::Internal(
                "abandoned by its caller while running".into(),
            )),
        }
    }

    /// Binds `egress`'s listeners in `netns` and starts relaying from them;
    /// returns the namespace when it is new.
    fn egress_session(
        &self,
        netns: egress::Netns,
        egress: &[EgressHost],
    ) -> Result<(Option<std::os::fd::OwnedFd>, egress::Session), TaskError> {
        let mut bound = egress::bind(netns, egress)
            .map_err(|e| TaskError::internal("binding the task's egress listeners", e))?;
        let netns = bound.netns.take();
        let session = egress::Session::start(
            bound,
            self.connector.clone(),
            self.config.egress,
            self.counters.egress.clone(),
        )
        .map_err(|e| TaskError::internal("starting the task's egress relay", e))?;
        Ok((netns, session))
    }

    /// For a warm box about to get a task declaring `egress`: its listeners,
    /// in the box's own namespace.
    fn egress_into(
        &self,
        egress: &[EgressHost],
        boxed: &exec::Boxed,
    ) -> Result<Option<egress::Session>, TaskError> {
        if self.hosts.is_none() || egress.is_empty() {
            return Ok(None);
        }
        let pid = boxed
            .pid()
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .ok_or_else(|| TaskError::Internal("the warm box has no process".into()))?;
        Ok(Some(self.egress_session(egress::Netns::Of(pid), egress)?.1))
    }

    /// Without root: creates the run directory (staged task, digest, entry
    /// point, preload, home).
    fn prepare(&self, task_dir: &Path) -> Result<RunDir, TaskError> {
        let io = |what: &'static str| move |e: std::io::Error| TaskError::internal(what, e);
        let path = self
            .work_dir
            .join(format!("nautilus-run-{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io("creating the run directory"))?;
        let staged = (|| {
            let task = path.join(ns::CODE_DIR);
            task::stage(task_dir, &task, self.tree_limits())?;
            let digest = digest::digest_tree(&task, self.tree_limits())?;
            let entry = task::entry_point(&task)?;
            let preload = path.join(PRELOAD_FILE);
            std::fs::write(&preload, PRELOAD).map_err(io("writing the preload"))?;
            std::fs::set_permissions(&preload, std::fs::Permissions::from_mode(0o644))
                .map_err(io("securing the preload"))?;
            let home = path.join("home");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&home)
                .map_err(io("creating the task's home"))?;
            Ok(RunDir {
                path: path.clone(),
                task,
                home,
                entry,
                digest,
            })
        })();
        if staged.is_err() {
            self.remove_run_dir(&path);
        }
        staged
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runner_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<super::Runner>();
        assert_send_sync::<super::TaskError>();
    }
}
