//! Errors returned by [`Runner`](crate::Runner).

use crate::TaskResult;

/// Prefix shared by every error about running a task; part of the wire contract.
const PREFIX: &str = "Failed to execute Node.js task";

/// Why a task did not produce a [`TaskResult`].
///
/// The `Display` texts are a contract with clients (they end up in the server's
/// error bodies), so they are fixed here, next to the variants.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The request breaks a rule (path form, argument limits, stdin size, timeout range).
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// No directory at the requested task path.
    #[error("{PREFIX}: Task directory does not exist: {0}")]
    TaskDirMissing(String),
    /// The task directory holds no `package.json`.
    #[error("{PREFIX}: package.json not found in task directory")]
    PackageJsonMissing,
    /// The task directory exists but cannot be run as it is (bad `package.json`,
    /// missing entry file, too large, special files).
    #[error("{PREFIX}: Invalid task: {0}")]
    InvalidTask(String),
    /// The task ran past its timeout and was killed; `partial` holds what it printed.
    #[error("{PREFIX}: Task execution timed out after {secs} seconds")]
    Timeout {
        /// The timeout that was enforced.
        secs: u64,
        /// Everything known about the run when it was killed.
        partial: Box<TaskResult>,
    },
    /// No usable `node` binary was found when the runner started.
    #[error("{PREFIX}: Failed to check Node.js installation. Is Node.js installed?")]
    NodeMissing,
    /// Every slot is busy and the waiting queue is full.
    #[error("Task runner is busy: too many tasks running or waiting, try again later")]
    Busy,
    /// The runner is shutting down and accepts no more work.
    #[error("Task runner is shutting down")]
    ShuttingDown,
    /// The task declares an operator secret that is not set (the run did
    /// not start). Names the secret, never a value.
    #[error("{PREFIX}: task {task_path} needs the operator secret {name:?}, which is not set; the operator sets it with `nautilus-client secrets put`")]
    SecretMissing {
        /// The task.
        task_path: String,
        /// The secret's name.
        name: String,
    },
    /// Something failed on the runner's side (I/O, spawning, cleanup).
    #[error("{PREFIX}: {0}")]
    Internal(String),
}

/// Coarse classification of a [`TaskError`], for mapping onto protocol status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's request is malformed (HTTP 400).
    InvalidRequest,
    /// The task does not exist (HTTP 404).
    NotFound,
    /// The task exists but is not runnable (HTTP 500: tasks are part of the
    /// deployment, so this is the operator's fault, not the caller's).
    InvalidTask,
    /// The task exceeded its timeout (HTTP 504).
    Timeout,
    /// Node.js is not available (HTTP 503).
    NodeMissing,
    /// Capacity exhausted (HTTP 503, retry later).
    Busy,
    /// The runner is stopping (HTTP 503).
    ShuttingDown,
    /// A secret the task declares is not set (HTTP 503, until the operator sets it).
    SecretMissing,
    /// Runner-side failure (HTTP 500).
    Internal,
}

impl TaskError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Self::TaskDirMissing(_) | Self::PackageJsonMissing => ErrorKind::NotFound,
            Self::InvalidTask(_) => ErrorKind::InvalidTask,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::NodeMissing => ErrorKind::NodeMissing,
            Self::Busy => ErrorKind::Busy,
            Self::ShuttingDown => ErrorKind::ShuttingDown,
            Self::SecretMissing { .. } => ErrorKind::SecretMissing,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {err}"))
    }
}

/// A [`RunnerConfig`](crate::RunnerConfig) that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The tasks directory cannot be resolved.
    #[error("tasks directory {path}: {source}")]
    TasksDir {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why it could not be resolved.
        source: std::io::Error,
    },
    /// A numeric limit is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The seccomp filter could not be built.
    #[error("building the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::BackendError),
}
