//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use task_runner::{Runner, RunnerConfig, TaskError, TaskRequest, TaskResult};

/// Upper bound for any single run in the tests.
pub const RUN_BOUND: Duration = Duration::from_secs(30);

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks")
}

/// The repository root, which holds the example `nodejs-task`.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixtures with four slots. Each runner takes its own free slot uid range.
pub fn config() -> RunnerConfig {
    RunnerConfig {
        tasks_dir: fixtures(),
        max_concurrent: 4,
        ..RunnerConfig::default()
    }
}

pub fn config_in(tasks_dir: impl Into<PathBuf>) -> RunnerConfig {
    RunnerConfig {
        tasks_dir: tasks_dir.into(),
        ..config()
    }
}

pub fn runner() -> Runner {
    Runner::new(config()).expect("runner")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn request(task: &str, args: &[&str]) -> TaskRequest {
    TaskRequest {
        task_path: task.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..TaskRequest::default()
    }
}

/// Runs with a hard bound so a hung run fails the test instead of hanging it.
pub async fn run(runner: &Runner, req: TaskRequest) -> Result<TaskResult, TaskError> {
    tokio::time::timeout(RUN_BOUND, runner.run(req))
        .await
        .expect("run did not finish within the test bound")
}

pub async fn run_ok(runner: &Runner, task: &str, args: &[&str]) -> TaskResult {
    match run(runner, request(task, args)).await {
        Ok(result) => result,
        Err(e) => panic!("{task} {args:?} failed to run: {e}"),
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether `pid` is a live process (zombies, which are dead and only wait to be
/// reaped by their parent, count as gone).
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains("X (dead)"))),
        Err(_) => false,
    }
}

/// Whether `pid` exists at all, zombie or not.
pub fn has_proc_entry(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Prints why a root-only check is skipped; returns whether to skip.
pub fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    skip_report::skipped(what, "needs root");
    true
}

/// Live processes with any of their uids (real, effective, saved, fs) in `uids`.
pub fn processes_of(uids: &std::ops::Range<u32>) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.parse::<i64>().is_ok_and(alive))
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| {
                    ids.split_whitespace()
                        .filter_map(|u| u.parse().ok())
                        .any(|u| uids.contains(&u))
                })
        })
        .collect()
}

/// Live `node` processes with `marker` among their arguments.
pub fn node_processes_with_arg(marker: &str) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|&b| b == 0);
            let is_node = args.next().is_some_and(|argv0| argv0.ends_with(b"node"));
            is_node && args.any(|a| a == marker.as_bytes()) && alive(pid)
        })
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `bound` passes; returns whether it held.
pub fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
