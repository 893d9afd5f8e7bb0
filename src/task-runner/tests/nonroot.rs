//! The weaker, non-root mode: the runner and its tasks share one unprivileged
//! uid. When the tests run as root, the CLI is started as `nobody` to exercise
//! it; otherwise every other test binary already runs in this mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;

/// Copies the CLI and some fixture tasks where `nobody` can reach them.
fn world_readable_copy(dir: &Path, tasks: &[&str]) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("task-runner");
    std::fs::copy(env!("CARGO_BIN_EXE_task-runner"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for task in tasks {
        let to = dir.join("tasks").join(task);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["package.json", "index.js"] {
            std::fs::copy(fixtures().join(task).join(file), to.join(file)).unwrap();
        }
        for d in [to.as_path(), to.parent().unwrap()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

fn run_as_nobody(dir: &Path, task: &str) -> serde_json::Value {
    let out = Command::new(dir.join("task-runner"))
        .args(["--tasks-dir", "tasks", "--task", task, "--timeout", "20"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&stdout)
}

#[test]
fn unprivileged_runner_still_cleans_up_grandchildren() {
    if skip_unless_root("start the CLI as nobody (non-root tests already run in this mode)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    world_readable_copy(
        dir.path(),
        &["detach", "hold-stdout", "introspect", "lock-home"],
    );

    let seen = json(
        run_as_nobody(dir.path(), "introspect")["stdout"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        seen["uid"], NOBODY,
        "without root the task keeps the runner's uid"
    );

    let result = run_as_nobody(dir.path(), "detach");
    let pids: Vec<i64> =
        serde_json::from_value(json(result["stdout"].as_str().unwrap())["pids"].clone()).unwrap();
    // Dead is all an unprivileged runner can promise: it is no subreaper, so
    // reaping the orphans falls to init.
    for pid in pids {
        assert!(!alive(pid), "grandchild {pid} survived the task");
    }

    let result = run_as_nobody(dir.path(), "lock-home");
    let home = json(result["stdout"].as_str().unwrap())["home"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !Path::new(&home).exists(),
        "run directory {home} survived the run"
    );

    let started = Instant::now();
    let result = run_as_nobody(dir.path(), "hold-stdout");
    assert_eq!(result["stdout"], "main done\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
