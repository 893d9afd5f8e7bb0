//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

pub mod https;

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
/// `NAUTILUS_WARM_POOL` (as the server reads it) sets the warm pool: `make
/// test` runs the suite with the default pool and again with `0`.
pub fn config() -> RunnerConfig {
    RunnerConfig {
        tasks_dir: fixtures(),
        max_concurrent: 4,
        warm_pool: std::env::var("NAUTILUS_WARM_POOL")
            .ok()
            .map(|v| v.parse().expect("NAUTILUS_WARM_POOL must be a number")),
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

/// Live `node` processes with `marker` among their arguments (or in their
/// title: see the `sleep` fixture).
pub fn node_processes_with_arg(marker: &str) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&pid| {
            let is_node = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "node"));
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|&b| b == 0 || b == b' ');
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

/// A tasks root (root-owned, 0700) holding one task, `probe`: a copy of the
/// running test binary and an entry that runs it with the task's arguments
/// and passes on its output. The binary is staged with the task, so it runs
/// from the task's read-only code, the one place a task may execute from.
/// Returns the root and a config for it (room for the binary in the task).
pub fn probe_tasks() -> (tempfile::TempDir, RunnerConfig) {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let task = root.path().join("probe");
    std::fs::create_dir(&task).unwrap();
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(task.join("package.json"), "{}").unwrap();
    std::fs::write(
        task.join("index.js"),
        r#"'use strict';
const { spawnSync } = require('node:child_process');
const probe = require('node:path').join(__dirname, 'probe');
const r = spawnSync(probe, process.argv.slice(2), { encoding: 'utf8', env: { RUST_TEST_THREADS: '1' } });
if (r.error) {
  console.error(`spawn failed: ${r.error.message}`);
  process.exit(98);
}
process.stdout.write(r.stdout);
process.stderr.write(r.stderr);
process.exitCode = r.status ?? 99;
"#,
    )
    .unwrap();
    let bin = task.join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let size = std::fs::metadata(&bin).unwrap().len();
    let config = RunnerConfig {
        max_task_bytes: size + (1 << 20),
        ..config_in(root.path())
    };
    (root, config)
}

/// Runs the ignored test `name` of this test binary inside the box (see
/// [`probe_tasks`]) with `args` after `--`, and returns its output lines
/// of the form `key=value`.
pub async fn run_probe(
    runner: &Runner,
    name: &str,
    args: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let mut all = vec!["--ignored", "--exact", name, "--nocapture", "--"];
    all.extend_from_slice(args);
    let result = run_ok(runner, "probe", &all).await;
    assert_eq!(result.status, "success", "{result:?}");
    eprintln!("{name}: {}{}", result.stdout, result.stderr);
    result
        .stdout
        .lines()
        // The harness's "test name ... " prefixes the probe's first line.
        .map(|l| l.rsplit_once(" ... ").map_or(l, |(_, rest)| rest))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The arguments a probe got after `--` (the test harness ignores them).
pub fn probe_args() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// "ok", the errno name, or the error, for the result of the last system call.
pub fn outcome(rc: i64) -> String {
    if rc >= 0 {
        return "ok".to_owned();
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(libc::ENOSYS) => "ENOSYS".to_owned(),
        Some(libc::EACCES) => "EACCES".to_owned(),
        Some(libc::ENOENT) => "ENOENT".to_owned(),
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT".to_owned(),
        Some(libc::EINVAL) => "EINVAL".to_owned(),
        _ => err.to_string(),
    }
}

/// Waits (bounded) until no run holds a slot: a finished run's slot is
/// held until its warm box is back.
pub async fn settled(runner: &Runner) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runner.stats().running > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the runner did not settle: {:?}",
            runner.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `pids` without the processes of the runner's waiting warm boxes (their
/// reapers and those reapers' children).
pub fn not_warm(runner: &Runner, pids: Vec<String>) -> Vec<String> {
    let warm: Vec<String> = runner.warm_box_pids().iter().map(u32::to_string).collect();
    let parent = |pid: &str| stat_field(pid, 1).unwrap_or_default();
    pids.into_iter()
        .filter(|p| !warm.contains(p) && !warm.contains(&parent(p)))
        .collect()
}

/// Field `index` of `/proc/<pid>/stat` counted after the command name (0:
/// the state letter, 1: the parent pid), or `None` when `pid` is gone. The
/// name is in parentheses and may hold spaces and `)`: fields start after
/// the last `)`.
pub fn stat_field(pid: impl std::fmt::Display, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(index)
        .map(str::to_owned)
}

/// Whether this process has CAP_SYS_RESOURCE (effective).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_SYS_RESOURCE, linux/capability.h.
    caps & (1 << 24) != 0
}

/// The host's `/usr` and the links into it, for `RunnerConfig::box_paths`:
/// the tests whose tasks run `sh`, `sleep` or `python3`.
pub fn host_usr() -> Vec<PathBuf> {
    ["/usr", "/bin", "/lib", "/lib64", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}
