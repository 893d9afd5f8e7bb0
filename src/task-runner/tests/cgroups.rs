//! Memory, process count and CPU per run by cgroup: the attacks that get past
//! rlimits alone. Root only (cgroups are root's), skipped with a message
//! otherwise.

mod common;

use common::*;
use task_runner::{Runner, RunnerConfig, TaskError, TaskRequest, TaskResult};

const MIB: u64 = 1 << 20;

fn attack(mode: &str, bytes: u64) -> TaskRequest {
    TaskRequest {
        timeout_secs: Some(20),
        ..request("mem-attack", &[mode, &bytes.to_string()])
    }
}

/// The largest "touched N" the attack's python reported.
fn touched(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("touched ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// 1.5 GiB touched through a mapping RLIMIT_DATA does not count must end the
/// whole task (SIGKILL) at the memory limit; the runner lives on.
async fn memory_attack_is_stopped_at_the_limit(mode: &str) {
    if skip_unless_root(&format!("memory cgroup against a {mode} mapping")) {
        return;
    }
    let limit = 512 * MIB;
    let runner = Runner::new(RunnerConfig {
        memory_limit_bytes: limit,
        ..config()
    })
    .unwrap();
    let result: TaskResult = match run(&runner, attack(mode, 1536 * MIB)).await {
        Ok(result) => result,
        Err(TaskError::Timeout { partial, .. }) => panic!(
            "the task outlived the attack: {} MiB touched under a {} MiB limit\n{}",
            touched(&partial.stdout) / MIB,
            limit / MIB,
            partial.stdout
        ),
        Err(e) => panic!("run failed: {e}"),
    };
    let got = touched(&result.stdout);
    eprintln!(
        "{mode}: {} MiB touched under a {} MiB limit; signal {:?}; stderr: {}",
        got / MIB,
        limit / MIB,
        result.signal,
        result.stderr.trim()
    );
    assert!(got >= 64 * MIB, "the attack did not run: {result:?}");
    assert!(got < limit, "{} MiB touched: {result:?}", got / MIB);
    assert!(!result.stdout.contains("done"), "{result:?}");
    assert_eq!(result.status, "failed");
    assert_eq!(result.signal.as_deref(), Some("SIGKILL"), "{result:?}");
    assert!(
        result.stderr.contains("memory limit"),
        "the result does not say the memory limit was hit: {result:?}"
    );
    // Only the task died: the runner still runs tasks.
    let after = run_ok(&runner, "exit-with", &["0"]).await;
    assert_eq!(after.status, "success", "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_anonymous_memory_counts_against_the_limit() {
    memory_attack_is_stopped_at_the_limit("shared").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grows_down_mappings_count_against_the_limit() {
    memory_attack_is_stopped_at_the_limit("growsdown").await;
}

/// A tenant with 50 `setsid` busy loops gets about the CPU of a tenant with
/// one, not 50 times as much. A ratio of CPU times measured by the tasks in
/// the same window, whatever the machine's load.
#[tokio::test(flavor = "multi_thread")]
async fn many_processes_do_not_buy_more_cpu() {
    if skip_unless_root("per-slot CPU weight") {
        return;
    }
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 2,
        max_processes: 128,
        ..config()
    })
    .unwrap();
    let (many, one) = tokio::join!(
        run_ok(&runner, "cpu-share", &["many", "50"]),
        run_ok(&runner, "cpu-share", &["one"]),
    );
    let (many, one) = (json(&many.stdout), json(&one.stdout));
    // CPU milliseconds per wall millisecond of each tenant's window.
    let rate = |seen: &serde_json::Value| {
        seen["cpu_ms"].as_f64().unwrap() / seen["window_ms"].as_f64().unwrap()
    };
    let (many_rate, one_rate) = (rate(&many), rate(&one));
    eprintln!("CPU share: 50 processes {many_rate:.3} cores ({many}), 1 process {one_rate:.3} cores ({one})");
    assert_eq!(many["processes"], 50, "{many}");
    assert!(one_rate > 0.0, "{one}");
    // Equal weights give about 1:1 (2:1 at most on two cores); without
    // cgroups it is about 50:1.
    assert!(
        many_rate < 4.0 * one_rate,
        "50 processes got {many_rate:.3} cores, one process {one_rate:.3}"
    );
}
