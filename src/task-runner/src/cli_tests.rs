//! The `task-runner` binary: exit codes and JSON shapes.
//!
//! These live in the binary itself (its test build, `harness = false`), so
//! that `cargo test --bin task-runner` runs them: the test build's `main`
//! runs them, and each spawns its own executable with [`RUN_AS_CLI`] set,
//! which then is the real CLI.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::common::*;
use std::os::unix::process::CommandExt;

fn cli(args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the test executable");
    let mut cmd = Command::new(exe);
    cmd.arg0("task-runner")
        .env(RUN_AS_CLI, "1")
        .args(args)
        .current_dir(repo_root());
    cmd
}

fn output(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let stdout = String::from_utf8(stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one JSON line: {stdout:?}"
    );
    (
        status.code().unwrap(),
        json(&stdout),
        String::from_utf8(stderr).unwrap(),
    )
}

const RESULT_FIELDS: [&str; 16] = [
    "args",
    "egress",
    "execution_time_ms",
    "exit_code",
    "limit",
    "resources",
    "signal",
    "status",
    "stderr",
    "stderr_truncated",
    "stdin_sha256",
    "stdout",
    "stdout_truncated",
    "task_digest",
    "task_id",
    "task_path",
];

fn fields(v: &serde_json::Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn success_prints_the_result_and_exits_0() {
    let (code, v, _) = output(&mut cli(&[
        "--task",
        "nodejs-task",
        "--timeout",
        "30",
        "--",
        "4",
        "5",
    ]));
    assert_eq!(code, 0, "{v}");
    assert_eq!(fields(&v), BTreeSet::from(RESULT_FIELDS));
    assert_eq!(v["status"], "success");
    assert_eq!(v["args"], serde_json::json!(["4", "5"]));
    assert!(v["stdout"].as_str().unwrap().contains(r#""sum":9"#), "{v}");
}

fn failed_task_exits_1() {
    let (code, v, _) = output(&mut cli(&["--task", "nodejs-task", "--", "nope"]));
    assert_eq!(code, 1, "{v}");
    assert_eq!(fields(&v), BTreeSet::from(RESULT_FIELDS));
    assert_eq!(v["status"], "failed");
    assert_eq!(v["exit_code"], 1);
}

fn assert_error(code: i32, v: &serde_json::Value, stderr: &str, sentence: &str) {
    assert_eq!(code, 2, "{v}");
    assert_eq!(*v, serde_json::json!({ "error": sentence }));
    assert!(stderr.contains(sentence), "stderr: {stderr}");
}

fn unrunnable_or_timed_out_exits_2() {
    let (code, v, err) = output(&mut cli(&["--task", "missing-task"]));
    assert_error(
        code,
        &v,
        &err,
        "Failed to execute Node.js task: Task directory does not exist: missing-task",
    );

    let tasks = fixtures();
    let (code, v, err) = output(&mut cli(&[
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--task",
        "ignore-term",
        "--timeout",
        "1",
    ]));
    assert_error(
        code,
        &v,
        &err,
        "Failed to execute Node.js task: Task execution timed out after 1 seconds",
    );

    let (code, v, err) = output(cli(&["--task", "nodejs-task"]).env("PATH", ""));
    assert_error(code, &v, &err, "Failed to execute Node.js task: Failed to check Node.js installation. Is Node.js installed?");
}

/// Run from another directory (here a sticky, world-writable one like
/// `/tmp`), the default tasks directory `.` holds no such task: that is what
/// the user is told, not that the directory's owner or mode is wrong.
fn from_another_directory_the_task_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let (code, v, err) = output(cli(&["--task", "nodejs-task"]).current_dir(dir.path()));
    assert_error(
        code,
        &v,
        &err,
        "Failed to execute Node.js task: Task directory does not exist: nodejs-task",
    );
    assert!(
        err.contains("looked in") && err.contains("--tasks-dir"),
        "{err}"
    );
    assert!(!err.contains("owned by root"), "{err}");
}

fn runner_environment_stays_out_of_the_task() {
    let tasks = fixtures();
    let stdin = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(stdin.path(), "from a file").unwrap();
    let (code, v, _) = output(
        cli(&[
            "--tasks-dir",
            tasks.to_str().unwrap(),
            "--task",
            "introspect",
            "--pass-env",
            "ALLOWED_VAR",
        ])
        .env("NAUTILUS_TEST_SECRET", "signing-key-material")
        .env("ALLOWED_VAR", "visible")
        .env("NODE_OPTIONS", "--require /nonexistent.js"),
    );
    assert_eq!(code, 0, "{v}");
    let stdout = v["stdout"].as_str().unwrap();
    assert!(
        !stdout.contains("signing-key-material"),
        "secret leaked: {stdout}"
    );
    let env = json(stdout)["env"].clone();
    assert_eq!(env["ALLOWED_VAR"], "visible");
    assert!(
        env.get("NAUTILUS_TEST_SECRET").is_none() && env.get("NODE_OPTIONS").is_none(),
        "{env}"
    );

    let (code, v, _) = output(&mut cli(&[
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--task",
        "stdin-echo",
        "--stdin-file",
        stdin.path().to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{v}");
    assert_eq!(json(v["stdout"].as_str().unwrap())["text"], "from a file");
}

/// Starts the CLI on a long `sleep` task tagged with a unique argument and
/// returns it with the task's node pid, once that process is running.
fn cli_with_running_task(marker: &str) -> (std::process::Child, i64) {
    let tasks = fixtures();
    let mut cli = cli(&[
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--task",
        "sleep",
        "--timeout",
        "60",
        "--",
        "60000",
        marker,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut task = Vec::new();
    let started = eventually(Duration::from_secs(10), || {
        task = node_processes_with_arg(marker);
        !task.is_empty()
    });
    if !started {
        let _ = cli.kill();
        panic!("the task never started: {:?}", cli.wait_with_output());
    }
    assert_eq!(task.len(), 1, "{task:?}");
    (cli, task[0])
}

/// Asserts `pid` is gone within a few seconds; kills it (not to leak it) if not.
fn assert_dies(pid: i64, what: &str) {
    let died = eventually(Duration::from_secs(5), || !alive(pid));
    if !died {
        // SAFETY: kill(2) on the leftover task process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(died, "{what}: task process {pid} outlived the CLI");
}

fn task_dies_with_a_killed_cli() {
    let marker = format!("marker-{}", uuid::Uuid::new_v4());
    let (mut cli, task) = cli_with_running_task(&marker);
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert_dies(task, "SIGKILL to the CLI");
}

fn sigterm_to_the_cli_kills_the_task_and_reports_it() {
    let marker = format!("marker-{}", uuid::Uuid::new_v4());
    let (cli, task) = cli_with_running_task(&marker);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(cli.id() as libc::pid_t, libc::SIGTERM) };
    let out = cli.wait_with_output().unwrap();
    assert_dies(task, "SIGTERM to the CLI");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert_eq!(
        json(&stdout),
        serde_json::json!({ "error": "Task runner is shutting down" })
    );
}

/// Without --stdin-file the task's stdin is an empty pipe of its own, not the CLI's stdin:
/// here an open pipe that never ends, on which a task reading to the end would hang.
fn absent_stdin_reads_as_eof_even_when_the_cli_has_an_open_stdin() {
    let tasks = fixtures();
    let run = |task: &str| {
        let mut child = cli(&[
            "--tasks-dir",
            tasks.to_str().unwrap(),
            "--task",
            task,
            "--timeout",
            "10",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let held_open = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        drop(held_open);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        json(json(&stdout)["stdout"].as_str().unwrap())
    };
    assert_eq!(run("stdin-echo")["bytes"], 0);
    let stdin = &run("introspect")["stdin"];
    assert!(
        stdin["path"].as_str().unwrap().starts_with("pipe:"),
        "{stdin}"
    );
    assert_eq!(stdin["fifo"], true, "{stdin}");
}

/// --stdin-file reads at most one byte past the limit and says which limit.
/// (A regular file, not /dev/zero: should this regress, the test must fail,
/// not exhaust the machine's memory.)
fn oversized_stdin_file_is_refused_with_the_limit() {
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'z'; task_runner::MAX_STDIN_BYTES + 1]).unwrap();
    let path = big.path().to_str().unwrap();
    let (code, v, err) = output(&mut cli(&["--task", "nodejs-task", "--stdin-file", path]));
    let sentence = format!(
        "{path} holds more than {} bytes, the limit for a task's stdin",
        task_runner::MAX_STDIN_BYTES
    );
    assert_error(code, &v, &err, &sentence);
}

fn bad_command_lines_get_the_error_contract() {
    let (code, v, err) = output(&mut cli(&["--bogus"]));
    assert_error(
        code,
        &v,
        &err,
        "unexpected argument '--bogus' found; see --help",
    );
    let (code, v, err) = output(&mut cli(&["--timeout", "soon"]));
    assert_error(
        code,
        &v,
        &err,
        "invalid value 'soon' for '--timeout <TIMEOUT>': invalid digit found in string; see --help",
    );
}

fn help_and_version_print_and_exit_0() {
    for (flag, expected) in [
        ("--help", "Usage: task-runner"),
        ("--version", "task-runner "),
    ] {
        let out = cli(&[flag]).output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}: {stdout}");
        assert!(stdout.contains(expected), "{flag}: {stdout}");
    }
}

/// Runs the CLI with a stdout pipe whose read end is already closed, as
/// `task-runner ... | head -c 10` leaves it; returns the exit status and stderr.
fn with_closed_stdout(cmd: &mut Command) -> (i32, String) {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let out = cmd
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn closed_stdout_keeps_the_exit_status_without_a_panic() {
    let cases: [(&[&str], i32); 4] = [
        (&["--task", "nodejs-task", "--", "1"], 0),
        (&["--task", "nodejs-task", "--", "nope"], 1),
        (&["--task", "missing-task"], 2),
        (&["--bogus"], 2),
    ];
    for (args, expected) in cases {
        let (code, stderr) = with_closed_stdout(&mut cli(args));
        assert_eq!(code, expected, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if expected == 2 {
            assert!(
                !stderr.is_empty(),
                "{args:?}: the reason goes to stderr too"
            );
        }
    }
}

/// Set in the environment of the spawned test executable: be the CLI.
pub(crate) const RUN_AS_CLI: &str = "TASK_RUNNER_TEST_RUN_AS_CLI";

/// Every test above; a function missing here is dead code, which the lints
/// refuse, so none can be forgotten.
pub(crate) fn trials() -> Vec<libtest_mimic::Trial> {
    macro_rules! trials {
        ($($name:ident),* $(,)?) => {
            vec![$(libtest_mimic::Trial::test(stringify!($name), || {
                $name();
                Ok(())
            })),*]
        };
    }
    trials![
        success_prints_the_result_and_exits_0,
        failed_task_exits_1,
        unrunnable_or_timed_out_exits_2,
        runner_environment_stays_out_of_the_task,
        from_another_directory_the_task_is_not_found,
        task_dies_with_a_killed_cli,
        sigterm_to_the_cli_kills_the_task_and_reports_it,
        absent_stdin_reads_as_eof_even_when_the_cli_has_an_open_stdin,
        oversized_stdin_file_is_refused_with_the_limit,
        bad_command_lines_get_the_error_contract,
        help_and_version_print_and_exit_0,
        closed_stdout_keeps_the_exit_status_without_a_panic,
    ]
}
