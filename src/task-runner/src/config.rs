//! Runner configuration and its defaults.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use crate::egress::{EgressConnect, EgressLimits};
use crate::error::ConfigError;

const MIB: u64 = 1024 * 1024;

/// Everything an operator can tune. [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Directory whose subdirectories are tasks. Default `"."`.
    pub tasks_dir: PathBuf,
    /// Explicit `node` binary; `None` searches `PATH` once, in [`Runner::new`](crate::Runner::new).
    pub node: Option<PathBuf>,
    /// Largest timeout a request may ask for. Default 300 s.
    pub max_timeout_secs: u64,
    /// Timeout when a request names none. Default 30 s.
    pub default_timeout_secs: u64,
    /// Cap on captured bytes, per stream. Default 1 MiB.
    pub max_output_bytes: usize,
    /// `RLIMIT_DATA` of the task and, when root, its cgroup's memory limit
    /// (shared memory, tmpfs and page cache included); V8's old space is
    /// capped at 3/4 of it. Default 512 MiB.
    pub memory_limit_bytes: u64,
    /// Tasks running at once. Default: available parallelism.
    pub max_concurrent: usize,
    /// Runs allowed to wait for a slot; past that, [`TaskError::Busy`](crate::TaskError::Busy). Default 64.
    pub max_queue: usize,
    /// Time between SIGTERM and SIGKILL on timeout. Default 2 s.
    pub kill_grace: Duration,
    /// Names of runner environment variables passed through to tasks.
    pub pass_env: Vec<String>,
    /// When the runner is root, slot `i` runs as uid and gid `base + i`, where
    /// `base` is the first free range at or above this value (other runners
    /// hold theirs). These ids must not belong to anything else on the host.
    /// Default 61000.
    pub sandbox_uid_base: u32,
    /// Where per-run directories (the staged code) are created: a directory
    /// on a file system that allows `exec` (native addons are mapped
    /// executable) and, as root, not inside `/tmp`, `/dev`, `/etc` or
    /// `/proc` (every box mounts its own there).
    /// `None`: [`DEFAULT_ROOT_WORK_DIR`](crate::DEFAULT_ROOT_WORK_DIR) as
    /// root, the system temp directory otherwise. Checked at
    /// [`Runner::new`](crate::Runner::new).
    pub work_dir: Option<PathBuf>,
    /// Cap on the bytes of one task directory (staged per run). Default 64 MiB.
    pub max_task_bytes: u64,
    /// Cap on the entries of one task directory. Default 10 000.
    pub max_task_files: usize,
    /// `RLIMIT_FSIZE`: largest file a task may write. Default 64 MiB.
    pub max_file_bytes: u64,
    /// As root, size of each private tmpfs a task can write (`/tmp`, which
    /// holds `HOME`, and `/dev/shm`). Default 64 MiB.
    pub max_scratch_bytes: u64,
    /// `RLIMIT_NOFILE` of the task. Default 1024.
    pub max_open_files: u64,
    /// `RLIMIT_NPROC` (threads and processes of the slot uid; Node needs about a dozen).
    /// Only applied when root, where each slot has its own uid; also the
    /// slot cgroup's `pids.max`. Default 64.
    pub max_processes: u64,
    /// As root, how many slots keep a warm box: `node` already started in
    /// the slot's box, waiting for its task (see
    /// [`Runner::start_warm_pool`](crate::Runner::start_warm_pool)). `None`:
    /// every slot; `Some(0)` turns the pool off (every run starts `node`
    /// itself). Without root there is no pool. Default `None`.
    pub warm_pool: Option<usize>,
    /// As root, host paths (files or directories, at the same path) shown
    /// read-only in every box besides `node` and its libraries: for tasks
    /// that run another program of the image. Default none.
    pub box_paths: Vec<PathBuf>,
    /// Caps on a task's egress (see [`EgressLimits`]).
    pub egress: EgressLimits,
    /// How egress connections go out; `None`: [`DirectConnect`](crate::DirectConnect).
    pub egress_connect: Option<Arc<dyn EgressConnect>>,
    /// For tests: a PEM file of CA certificates every task trusts besides
    /// Node's own store (`NODE_EXTRA_CA_CERTS`). A server refuses it with
    /// real attestation.
    pub egress_test_ca: Option<PathBuf>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            tasks_dir: PathBuf::from("."),
            node: None,
            max_timeout_secs: 300,
            default_timeout_secs: 30,
            max_output_bytes: MIB as usize,
            memory_limit_bytes: 512 * MIB,
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_queue: 64,
            kill_grace: Duration::from_secs(2),
            pass_env: Vec::new(),
            sandbox_uid_base: 61000,
            work_dir: None,
            max_task_bytes: 64 * MIB,
            max_task_files: 10_000,
            max_file_bytes: 64 * MIB,
            max_scratch_bytes: 64 * MIB,
            max_open_files: 1024,
            max_processes: 64,
            warm_pool: None,
            box_paths: Vec::new(),
            egress: EgressLimits::default(),
            egress_connect: None,
            egress_test_ca: None,
        }
    }
}

/// Variables the runner sets itself; an operator cannot override them through `pass_env`.
pub(crate) const RESERVED_ENV: &[&str] =
    &["PATH", "HOME", "TMPDIR", "NODE_ENV", "NAUTILUS_TASK_ID"];

impl RunnerConfig {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.max_timeout_secs == 0 {
            return invalid("max_timeout_secs must be at least 1");
        }
        if !(1..=self.max_timeout_secs).contains(&self.default_timeout_secs) {
            return invalid("default_timeout_secs must be within 1..=max_timeout_secs");
        }
        if self.max_concurrent == 0 {
            return invalid("max_concurrent must be at least 1");
        }
        if self.memory_limit_bytes < 64 * MIB {
            return invalid(
                "memory_limit_bytes must be at least 64 MiB (Node.js needs it to start)",
            );
        }
        if self.max_processes < 16 {
            return invalid(
                "max_processes must be at least 16 (Node.js runs about a dozen threads)",
            );
        }
        if self.max_scratch_bytes < MIB {
            return invalid("max_scratch_bytes must be at least 1 MiB");
        }
        let e = &self.egress;
        if e.max_connections == 0 || e.max_bytes_out == 0 || e.max_bytes_in == 0 {
            return invalid("egress limits (connections, bytes out, bytes in) must be at least 1");
        }
        if !(1..=300).contains(&e.connect_timeout_secs) {
            return invalid("egress connect_timeout_secs must be within 1..=300");
        }
        if self.max_open_files < 64 {
            return invalid("max_open_files must be at least 64");
        }
        // The slot uids must be valid ids.
        let slots = u32::try_from(self.max_concurrent).ok();
        if slots
            .and_then(|n| self.sandbox_uid_base.checked_add(n))
            .is_none_or(|end| end >= u32::MAX - 1)
            || self.sandbox_uid_base == 0
        {
            return invalid("sandbox_uid_base + max_concurrent must be a valid non-root uid");
        }
        for name in &self.pass_env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(ConfigError::Invalid(format!(
                    "pass_env name {name:?} is not a variable name"
                )));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "pass_env cannot override {name}, the runner sets it"
                )));
            }
        }
        Ok(())
    }

    /// V8 old-space cap matching `memory_limit_bytes`: 3/4 of it, leaving room for
    /// code, buffers and the runtime's own allocations.
    pub(crate) fn heap_limit_mib(&self) -> u64 {
        self.memory_limit_bytes / MIB * 3 / 4
    }
}
