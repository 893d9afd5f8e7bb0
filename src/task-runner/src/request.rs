//! The request a caller sends, its validation, and the result it gets back.

use serde::{Deserialize, Serialize};

use crate::{RunnerConfig, TaskError};

/// Longest accepted task path, in bytes.
pub const MAX_TASK_PATH_BYTES: usize = 255;
/// Most arguments a task may receive.
pub const MAX_ARGS: usize = 64;
/// Longest single argument, in bytes.
pub const MAX_ARG_BYTES: usize = 4 * 1024;
/// Largest sum of argument lengths, in bytes.
pub const MAX_ARGS_TOTAL_BYTES: usize = 64 * 1024;
/// Largest stdin, in bytes.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// One request to run a task. Missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Task directory relative to the tasks root. Default `"nodejs-task"`.
    #[serde(default = "default_task_path")]
    pub task_path: String,
    /// Seconds before the task is killed; `None` takes the configured default.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Arguments after the entry file, passed as argv (no shell).
    #[serde(default)]
    pub args: Vec<String>,
    /// Bytes written to the task's stdin; `None` gives it an immediate end-of-file.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// The task run when a request names none: the repository's example.
pub const DEFAULT_TASK_PATH: &str = "nodejs-task";

fn default_task_path() -> String {
    DEFAULT_TASK_PATH.to_owned()
}

impl Default for TaskRequest {
    fn default() -> Self {
        Self {
            task_path: default_task_path(),
            timeout_secs: None,
            args: Vec::new(),
            stdin: None,
        }
    }
}

/// A request that passed [`TaskRequest::validate`].
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// `task_path` with `.` and empty components removed, `/`-separated.
    pub task_path: String,
    /// The timeout to enforce, in seconds.
    pub timeout_secs: u64,
    /// The arguments, unchanged.
    pub args: Vec<String>,
    /// The stdin bytes, unchanged.
    pub stdin: Option<String>,
}

impl TaskRequest {
    /// Checks every limit and the form of the path, without touching the file
    /// system. [`Runner::run`](crate::Runner::run) does the same.
    pub fn validate(&self, config: &RunnerConfig) -> Result<ValidRequest, TaskError> {
        let task_path = normalize_task_path(&self.task_path)?;
        let timeout_secs = self.timeout_secs.unwrap_or(config.default_timeout_secs);
        if !(1..=config.max_timeout_secs).contains(&timeout_secs) {
            return Err(invalid(format!(
                "timeout_secs must be between 1 and {}, got {timeout_secs}",
                config.max_timeout_secs
            )));
        }
        check_args(&self.args)?;
        if let Some(stdin) = &self.stdin {
            if stdin.len() > MAX_STDIN_BYTES {
                return Err(invalid(format!(
                    "stdin is {} bytes, at most {MAX_STDIN_BYTES} are allowed",
                    stdin.len()
                )));
            }
        }
        Ok(ValidRequest {
            task_path,
            timeout_secs,
            args: self.args.clone(),
            stdin: self.stdin.clone(),
        })
    }
}

fn invalid(msg: String) -> TaskError {
    TaskError::InvalidRequest(msg)
}

/// Returns the canonical textual form of a task path, or why it is not acceptable.
/// Symlinks are checked later, against the real file system.
pub fn normalize_task_path(path: &str) -> Result<String, TaskError> {
    if path.len() > MAX_TASK_PATH_BYTES {
        return Err(invalid(format!(
            "task_path is longer than {MAX_TASK_PATH_BYTES} bytes"
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid(
            "task_path contains NUL or control characters".to_owned(),
        ));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "task_path must be relative to the tasks directory".to_owned(),
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("task_path must not contain '..'".to_owned())),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(invalid("task_path is empty".to_owned()));
    }
    Ok(parts.join("/"))
}

fn check_args(args: &[String]) -> Result<(), TaskError> {
    if args.len() > MAX_ARGS {
        return Err(invalid(format!(
            "{} arguments given, at most {MAX_ARGS} are allowed",
            args.len()
        )));
    }
    let mut total = 0usize;
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES {
            return Err(invalid(format!(
                "argument {i} is longer than {MAX_ARG_BYTES} bytes"
            )));
        }
        if arg.contains('\0') {
            return Err(invalid(format!("argument {i} contains a NUL byte")));
        }
        total += arg.len();
    }
    if total > MAX_ARGS_TOTAL_BYTES {
        return Err(invalid(format!(
            "arguments total {total} bytes, at most {MAX_ARGS_TOTAL_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// What happened when a task ran. Field names are a contract: the server signs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// UUID v4 of this run; also the task's `NAUTILUS_TASK_ID`.
    pub task_id: String,
    /// Normalized task path.
    pub task_path: String,
    /// Lowercase hex digest of the files that ran (see [`crate::digest`]).
    pub task_digest: String,
    /// Arguments as given.
    pub args: Vec<String>,
    /// Hex SHA-256 of stdin, `None` when no stdin was given.
    pub stdin_sha256: Option<String>,
    /// `"success"` when the exit code is 0, else `"failed"`.
    pub status: String,
    /// Exit code, `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Signal name such as `"SIGKILL"` when killed by one.
    pub signal: Option<String>,
    /// Captured stdout, invalid UTF-8 replaced, at most
    /// [`RunnerConfig::max_output_bytes`](crate::RunnerConfig::max_output_bytes) bytes.
    pub stdout: String,
    /// Captured stderr, invalid UTF-8 replaced, at most
    /// [`RunnerConfig::max_output_bytes`](crate::RunnerConfig::max_output_bytes) bytes.
    pub stderr: String,
    /// Stdout passed the cap and was cut.
    pub stdout_truncated: bool,
    /// Stderr passed the cap and was cut.
    pub stderr_truncated: bool,
    /// Wall time from spawning `node` until its main process ended.
    pub execution_time_ms: u64,
    /// The runner's limit the run ran into, as the kernel and the runner
    /// know it (never from the task's output): `"memory"` (killed in its
    /// cgroup), `"time"` (timed out), `"pids"` (its cgroup refused a
    /// process), `"output"` (output cut at the cap), in that order of
    /// precedence; `None` when it hit none.
    pub limit: Option<String>,
    /// What the run used (root mode: its slot's cgroup and its box's
    /// processes); `None` without root.
    pub resources: Option<Resources>,
    /// One entry per declared destination the task connected to, in
    /// declaration order (root mode; empty otherwise).
    pub egress: Vec<crate::EgressRecord>,
}

/// What one run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// User and system CPU time of every process of the box, `node`'s
    /// start-up included (for a warm box, too, before its task came).
    pub cpu_time_ms: u64,
    /// Peak memory of the slot's cgroup during the run (as the kernel
    /// charges it: page cache, tmpfs and socket buffers included); 0 where
    /// the kernel cannot measure it per run (cgroup v2 before Linux 6.12).
    pub peak_memory_bytes: u64,
}

/// A runnable task, as listed by [`Runner::list_tasks`](crate::Runner::list_tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Path relative to the tasks root.
    pub task_path: String,
    /// Digest of its files.
    pub task_digest: String,
    /// The destinations it declares (`"host:port"`, see
    /// [`TaskDeclaration`](crate::TaskDeclaration)); empty: no network.
    pub egress: Vec<crate::EgressHost>,
    /// The operator secrets its `package.json` declares (listed only when
    /// there are any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_harmless_forms() {
        assert_eq!(normalize_task_path("./a//b/").unwrap(), "a/b");
        assert_eq!(normalize_task_path("nodejs-task").unwrap(), "nodejs-task");
    }

    #[test]
    fn rejects_dangerous_forms() {
        for bad in [
            "",
            ".",
            "./",
            "/etc",
            "../x",
            "a/../b",
            "a\0b",
            "a\nb",
            "a\u{7f}b",
            &"a".repeat(256),
        ] {
            let err = normalize_task_path(bad).unwrap_err();
            assert!(
                matches!(err, TaskError::InvalidRequest(_)),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn enforces_argument_limits() {
        let ok = vec!["x".repeat(MAX_ARG_BYTES); 15];
        assert!(check_args(&ok).is_ok());
        assert!(check_args(&vec![String::new(); MAX_ARGS + 1]).is_err());
        assert!(check_args(&["x".repeat(MAX_ARG_BYTES + 1)]).is_err());
        assert!(check_args(&vec!["x".repeat(MAX_ARG_BYTES); 17]).is_err());
        assert!(check_args(&["a\0".to_owned()]).is_err());
    }
}
