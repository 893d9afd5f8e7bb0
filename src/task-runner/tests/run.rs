//! Behaviour of `Runner::run` with real `node` processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use task_runner::{ErrorKind, Runner, RunnerConfig, TaskError, TaskRequest};

#[tokio::test]
async fn example_task_succeeds_with_args() {
    let runner = Runner::new(config_in(repo_root())).unwrap();
    let result = run_ok(&runner, "./nodejs-task/", &["1", "2", "3"]).await;
    assert_eq!(result.status, "success");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.signal, None);
    assert_eq!(result.task_path, "nodejs-task");
    assert_eq!(result.args, ["1", "2", "3"]);
    assert_eq!(result.stdin_sha256, None);
    assert!(
        result.stdout.starts_with("🚀 Task starting...\n"),
        "{}",
        result.stdout
    );
    assert!(
        result
            .stdout
            .contains(r#"✅ Result: {"count":3,"sum":6,"mean":2"#),
        "{}",
        result.stdout
    );
    let id = uuid::Uuid::parse_str(&result.task_id).unwrap();
    assert_eq!(id.get_version_num(), 4);
    let listed = runner.list_tasks().unwrap();
    let listed = listed
        .iter()
        .find(|t| t.task_path == "nodejs-task")
        .expect("nodejs-task listed");
    assert_eq!(
        listed.task_digest, result.task_digest,
        "digest of what ran == digest of the task on disk"
    );
    assert_eq!(result.task_digest.len(), 64);
}

#[tokio::test]
async fn example_task_fails_on_bad_input() {
    let runner = Runner::new(config_in(repo_root())).unwrap();
    let result = run_ok(&runner, "nodejs-task", &["1", "x"]).await;
    assert_eq!(result.status, "failed");
    assert_eq!(result.exit_code, Some(1));
    assert!(result.stderr.contains("❌ Error:"), "{}", result.stderr);
}

/// The shipped limits demo: every wrong argument gets exit 2, one line saying
/// what was wrong (right about which: a number too large is not "not a whole
/// number", one argument too many is one), and the usage, before it asks for
/// anything.
#[tokio::test]
async fn limits_task_says_what_is_wrong_with_its_arguments() {
    let runner = Runner::new(config_in(repo_root())).unwrap();
    // The runner takes arguments of up to 4096 bytes.
    let long = "9".repeat(4000);
    let cases: &[(&[&str], &str)] = &[
        (&[], "no mode given"),
        (&["bogus", "1", "2"], "unknown mode \"bogus\""),
        (&["memory"], "MiB is missing"),
        (&["memory", "0"], "MiB must be between 1 and 4096, got 0"),
        (
            &["memory", "9999999"],
            "MiB must be between 1 and 4096, got 9999999",
        ),
        (
            &["memory", &long],
            "MiB must be between 1 and 4096, got 99999999999999999999…",
        ),
        (
            &["memory", "1.5"],
            "MiB must be a whole number, got \"1.5\"",
        ),
        (
            &["memory", "0x10"],
            "MiB must be a whole number, got \"0x10\"",
        ),
        (
            &["memory", "1", "2"],
            "too many arguments for memory: 1 more than it takes",
        ),
        (
            &["sockets", "1", "2", "3"],
            "too many arguments for sockets: 1 more than it takes",
        ),
        (
            &["sockets", "1", "x"],
            "ballast MiB must be a whole number, got \"x\"",
        ),
        (
            &["time", "3601"],
            "seconds must be between 1 and 3600, got 3601",
        ),
    ];
    for (args, said) in cases {
        let result = run_ok(&runner, "limits-task", args).await;
        let mut lines = result.stderr.lines();
        assert_eq!(
            (result.exit_code, lines.next(), result.stdout.as_str()),
            (Some(2), Some(format!("limits-task: {said}").as_str()), ""),
            "{args:?}: {}",
            result.stderr
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("usage: memory <MiB 1-4096>")),
            "{args:?}: {}",
            result.stderr
        );
    }
}

/// The limits demo's sockets mode counts only pairs still connected. Run
/// straight under `node` with few descriptors, the accepting end runs out
/// first for one parity of the limit (libuv then accepts and closes the
/// connection): the demo used to count those closed pairs and the bytes
/// once written to them (400 pairs, 85 MiB, on 41 descriptors).
#[test]
fn limits_task_sockets_counts_only_live_pairs() {
    use std::os::unix::process::CommandExt;
    let script = repo_root().join("limits-task/index.js");
    let runs: Vec<_> = [40u64, 41]
        .into_iter()
        .map(|nofile| {
            let mut cmd = std::process::Command::new("node");
            cmd.arg(&script).args(["sockets", "256"]);
            cmd.stdout(std::process::Stdio::piped());
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in
            // the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            (nofile, cmd.spawn().expect("node"))
        })
        .collect();
    for (nofile, mut child) in runs {
        // The mode bounds itself (60 s, and 3 s without progress).
        let ended = eventually(Duration::from_secs(90), || {
            child.try_wait().expect("wait").is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(ended && out.status.success(), "{nofile}: {stdout}");
        let report = json(stdout.lines().last().unwrap_or(""));
        let pairs = report["pairs"].as_u64().expect("pairs");
        let held = report["held_bytes"].as_u64().expect("held_bytes");
        // Each live pair is two descriptors; each holds at most the
        // kernel's largest send and receive buffers.
        let most = |file: &str| -> u64 {
            let text = std::fs::read_to_string(file).unwrap();
            text.split_whitespace().last().unwrap().parse().unwrap()
        };
        let per_pair = most("/proc/sys/net/ipv4/tcp_wmem") + most("/proc/sys/net/ipv4/tcp_rmem");
        assert!(
            (1..=nofile / 2).contains(&pairs) && held <= pairs * per_pair,
            "{nofile} descriptors: {report}"
        );
    }
}

#[tokio::test]
async fn non_zero_exit_is_reported() {
    let result = run_ok(&runner(), "exit-with", &["7"]).await;
    assert_eq!(
        (result.status.as_str(), result.exit_code, result.signal),
        ("failed", Some(7), None)
    );
    assert_eq!(result.stderr, "exiting with 7\n");
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let runner = runner();
    for sig in ["SIGKILL", "SIGSEGV"] {
        let result = run_ok(&runner, "self-signal", &[sig]).await;
        assert_eq!(result.status, "failed");
        assert_eq!(result.exit_code, None);
        assert_eq!(result.signal.as_deref(), Some(sig));
        assert_eq!(result.stdout, "about to be signalled\n");
    }
}

/// Long enough for node to start and print on a loaded machine.
const TIMEOUT_SECS: u64 = 3;

#[tokio::test]
async fn task_ignoring_sigterm_times_out_within_timeout_plus_grace() {
    let runner = runner();
    let grace = runner.config().kill_grace;
    let timeout = Duration::from_secs(TIMEOUT_SECS);
    let check = |arg: &'static str| {
        let runner = runner.clone();
        async move {
            let req = TaskRequest {
                timeout_secs: Some(TIMEOUT_SECS),
                ..request("ignore-term", &[arg])
            };
            let started = Instant::now();
            let err = run(&runner, req).await.unwrap_err();
            let took = started.elapsed();
            assert!(
                took >= timeout + grace,
                "{arg}: returned before timeout + grace: {took:?}"
            );
            assert!(
                took <= timeout + grace + Duration::from_secs(1),
                "{arg}: took {took:?}"
            );
            assert_eq!(err.kind(), ErrorKind::Timeout);
            assert_eq!(
                err.to_string(),
                format!(
                    "Failed to execute Node.js task: Task execution timed out after {TIMEOUT_SECS} seconds"
                )
            );
            let TaskError::Timeout { secs, partial } = err else {
                panic!("{err:?}")
            };
            assert_eq!(secs, TIMEOUT_SECS);
            assert_eq!(partial.signal.as_deref(), Some("SIGKILL"));
            assert_eq!(partial.status, "failed");
            partial.stdout
        }
    };
    // "stop" also SIGSTOPs its own process group: the runner signals from outside it.
    let (running, stopped) = tokio::join!(check("run"), check("stop"));
    // SIGTERM came first, then (ignored) SIGKILL.
    assert_eq!(running, "started\nSIGTERM ignored\n");
    // A stopped task cannot handle SIGTERM; SIGKILL ends it all the same.
    assert_eq!(stopped, "started\n");
}

#[tokio::test]
async fn task_ending_on_sigterm_is_not_killed() {
    let runner = runner();
    let req = TaskRequest {
        timeout_secs: Some(TIMEOUT_SECS),
        ..request("term-goodbye", &[])
    };
    let started = Instant::now();
    let err = run(&runner, req).await.unwrap_err();
    let took = started.elapsed();
    let TaskError::Timeout { partial, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(partial.stdout, "started\ngoodbye\n");
    assert_eq!((partial.exit_code, partial.signal), (Some(0), None));
    // It left at SIGTERM, well within the grace period.
    assert!(
        took < Duration::from_secs(TIMEOUT_SECS) + runner.config().kill_grace,
        "took {took:?}"
    );
}

#[tokio::test]
async fn detached_and_double_forked_grandchildren_do_not_survive() {
    let runner = runner();
    let result = run_ok(&runner, "detach", &[]).await;
    assert_eq!(result.status, "success", "{}", result.stderr);
    let pids: Vec<i64> = serde_json::from_value(json(&result.stdout)["pids"].clone()).unwrap();
    assert_eq!(pids.len(), 2);
    if let Some(slots) = runner.sandbox_uids() {
        // The pids are the box's own (its PID namespace); from outside, what
        // counts is that no process of the slot uids is left, not even a
        // zombie: the box's end reaped them all before the result came out.
        settled(&runner).await;
        let left = not_warm(&runner, processes_of(&slots));
        assert!(
            left.is_empty(),
            "processes of the slot uids survived: {left:?}"
        );
        let zombies: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
                        .is_some_and(|uid| slots.contains(&uid))
                })
            })
            .collect();
        let zombies = not_warm(&runner, zombies);
        assert!(
            zombies.is_empty(),
            "slot uid /proc entries left: {zombies:?}"
        );
    } else {
        // Orphans go to init, whose reaping is not the runner's to prove.
        for pid in pids {
            assert!(!alive(pid), "grandchild {pid} survived the task");
        }
        skip_report::skipped("no process or zombie of the task is left", "needs root");
    }
}

#[tokio::test]
async fn grandchild_holding_stdout_does_not_delay_the_result() {
    let started = Instant::now();
    let result = run_ok(&runner(), "hold-stdout", &[]).await;
    assert_eq!(result.status, "success");
    assert_eq!(result.stdout, "main done\n");
    // The grandchild would hold the pipe for 60 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_utf8_output_becomes_replacement_characters() {
    let result = run_ok(&runner(), "raw-bytes", &[]).await;
    assert_eq!(result.status, "success", "{}", result.stderr);
    assert_eq!(result.stdout, "a\u{FFFD}\u{FFFD}b");
    assert!(!result.stdout_truncated);
}

#[tokio::test]
async fn large_output_before_process_exit_arrives_whole() {
    let result = run_ok(&runner(), "big-exit", &[]).await;
    assert_eq!(result.status, "success");
    assert_eq!(result.stdout.len(), 500_000);
    assert!(result.stdout.bytes().all(|b| b == b'o'));
    assert_eq!(result.stderr.len(), 500_000);
    assert!(!result.stdout_truncated && !result.stderr_truncated);
}

#[tokio::test]
async fn output_is_capped_and_marked_truncated() {
    let runner = Runner::new(RunnerConfig {
        max_output_bytes: 100_000,
        ..config()
    })
    .unwrap();
    let result = run_ok(&runner, "flood", &["1000000"]).await;
    assert_eq!(result.status, "success");
    assert_eq!(
        (result.stdout.len(), result.stderr.len()),
        (100_000, 100_000)
    );
    assert!(result.stdout_truncated && result.stderr_truncated);

    // The cap falls inside a character (100 000 is no multiple of the euro
    // sign's 3 bytes): only whole characters are kept, within the cap.
    let result = run_ok(&runner, "flood", &["300000", "\u{20ac}"]).await;
    for (text, truncated) in [
        (&result.stdout, result.stdout_truncated),
        (&result.stderr, result.stderr_truncated),
    ] {
        assert!(text.len() <= 100_000, "{} bytes", text.len());
        assert_eq!(text.len(), 99_999);
        assert!(text.chars().all(|c| c == '\u{20ac}'));
        assert!(truncated);
    }

    // A task printing forever keeps its capped output when it times out.
    let err = run(
        &runner,
        TaskRequest {
            timeout_secs: Some(TIMEOUT_SECS),
            ..request("flood", &["-1"])
        },
    )
    .await
    .unwrap_err();
    let TaskError::Timeout { partial, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(partial.stdout.len(), 100_000);
    assert!(partial.stdout_truncated && partial.stderr_truncated);
}

#[tokio::test]
async fn allocating_gigabytes_fails_cleanly() {
    let runner = Runner::new(RunnerConfig {
        memory_limit_bytes: 256 << 20,
        ..config()
    })
    .unwrap();
    let (buffer, heap) = tokio::join!(
        run_ok(&runner, "hog", &["buffer"]),
        run_ok(&runner, "hog", &["heap"])
    );
    for result in [buffer, heap] {
        assert_eq!(result.status, "failed", "{result:?}");
        assert!(
            result.exit_code.is_some_and(|c| c != 0) || result.signal.is_some(),
            "{result:?}"
        );
        assert!(!result.stdout.contains("allocated"), "{}", result.stdout);
    }
    // The runner is unharmed.
    assert_eq!(run_ok(&runner, "exit-with", &["0"]).await.status, "success");
}

#[tokio::test]
async fn stdin_is_delivered_or_reads_as_eof() {
    let runner = runner();
    let text = "hello, task\n";
    let given = run(
        &runner,
        TaskRequest {
            stdin: Some(text.to_owned()),
            ..request("stdin-echo", &[])
        },
    )
    .await
    .unwrap();
    let seen = json(&given.stdout);
    assert_eq!(seen["text"], text);
    assert_eq!(given.stdin_sha256.as_deref(), seen["sha256"].as_str());

    let big = "y".repeat(task_runner::MAX_STDIN_BYTES);
    let given = run(
        &runner,
        TaskRequest {
            stdin: Some(big),
            ..request("stdin-echo", &[])
        },
    )
    .await
    .unwrap();
    assert_eq!(json(&given.stdout)["bytes"], task_runner::MAX_STDIN_BYTES);

    let absent = run(
        &runner,
        TaskRequest {
            timeout_secs: Some(10),
            ..request("stdin-echo", &[])
        },
    )
    .await
    .unwrap();
    assert_eq!(json(&absent.stdout)["bytes"], 0);
    assert_eq!(absent.stdin_sha256, None);
}

#[tokio::test]
async fn bad_requests_are_rejected_before_running() {
    let runner = runner();
    let long = "a".repeat(300);
    for path in [
        "",
        ".",
        "/etc",
        "/tmp/x",
        "..",
        "../fixtures",
        "a/../b",
        "a\0b",
        "a\tb",
        "a\u{1b}b",
        long.as_str(),
    ] {
        let err = run(&runner, request(path, &[])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{path:?}: {err}");
    }
    let cases = [
        TaskRequest {
            timeout_secs: Some(0),
            ..request("sleep", &["1"])
        },
        TaskRequest {
            timeout_secs: Some(301),
            ..request("sleep", &["1"])
        },
        TaskRequest {
            args: vec!["x".into(); 65],
            ..request("sleep", &[])
        },
        TaskRequest {
            args: vec!["x".repeat(4097)],
            ..request("sleep", &[])
        },
        TaskRequest {
            args: vec!["x".repeat(4096); 17],
            ..request("sleep", &[])
        },
        TaskRequest {
            args: vec!["a\0b".into()],
            ..request("sleep", &[])
        },
        TaskRequest {
            stdin: Some("z".repeat(task_runner::MAX_STDIN_BYTES + 1)),
            ..request("sleep", &[])
        },
    ];
    for req in cases {
        let err = run(&runner, req.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{req:?}: {err}");
    }
}

#[tokio::test]
async fn symlink_out_of_the_tasks_dir_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("package.json"), "{}").unwrap();
    std::fs::write(outside.path().join("index.js"), "").unwrap();
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
    let runner = Runner::new(config_in(root.path())).unwrap();
    let err = run(&runner, request("escape", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert!(
        err.to_string().contains("outside the tasks directory"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_task_and_missing_package_json() {
    let runner = runner();
    let err = run(&runner, request("does-not-exist", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Failed to execute Node.js task: Task directory does not exist: does-not-exist"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = run(&runner, request("no-package", &[])).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Failed to execute Node.js task: package.json not found in task directory"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// A runner built with `node` as its Node.js, which it must refuse: every run
/// fails fast with the contract sentence.
async fn assert_node_refused(node: &std::path::Path) {
    let runner = Runner::new(RunnerConfig {
        node: Some(node.into()),
        ..config()
    })
    .unwrap();
    assert_eq!(runner.node_version(), None);
    for _ in 0..2 {
        let started = Instant::now();
        let err = run(&runner, request("sleep", &["1"])).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(err.kind(), ErrorKind::NodeMissing);
        assert_eq!(
            err.to_string(),
            "Failed to execute Node.js task: Failed to check Node.js installation. Is Node.js installed?"
        );
    }
}

#[tokio::test]
async fn missing_node_fails_every_run_fast() {
    assert_node_refused("/nonexistent/bin/node".as_ref()).await;
}

#[tokio::test]
async fn node_older_than_18_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node");
    // Answers the version check like Node.js 16 and runs anything else, as
    // old Node.js would.
    let script = "#!/bin/sh\nif [ \"$1\" = --version ]; then echo v16.20.0; else echo ran; fi\n";
    std::fs::write(&node, script).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_node_refused(&node).await;
}

#[tokio::test]
async fn concurrent_tasks_all_complete_in_distinct_slots() {
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 3,
        max_queue: 8,
        ..config()
    })
    .unwrap();
    let runs: Vec<_> = (0..7)
        .map(|_| {
            let runner = runner.clone();
            tokio::spawn(async move { run_ok(&runner, "sleep", &["300"]).await })
        })
        .collect();
    let mut seen = Vec::new();
    for handle in runs {
        let result = handle.await.unwrap();
        assert_eq!(result.status, "success");
        let v = json(&result.stdout);
        seen.push((
            v["uid"].as_u64().unwrap(),
            v["start"].as_u64().unwrap(),
            v["end"].as_u64().unwrap(),
        ));
    }
    // Every slot is freed (once its warm box is back).
    settled(&runner).await;
    // Never more than max_concurrent at once: count the runs in progress at
    // each start.
    let most = seen
        .iter()
        .map(|a| seen.iter().filter(|b| b.1 <= a.1 && a.1 < b.2).count())
        .max()
        .unwrap();
    assert!(most <= 3, "{most} runs overlapped: {seen:?}");
    assert!(most >= 2, "runs did not run concurrently: {seen:?}");
    if is_root() {
        let slots = runner.sandbox_uids().expect("root");
        for (i, a) in seen.iter().enumerate() {
            assert!(
                (u64::from(slots.start)..u64::from(slots.end)).contains(&a.0),
                "uid {} outside the slot range",
                a.0
            );
            for b in &seen[i + 1..] {
                let overlap = a.1 < b.2 && b.1 < a.2;
                assert!(
                    !(overlap && a.0 == b.0),
                    "overlapping runs shared uid {}",
                    a.0
                );
            }
        }
    }
}

#[tokio::test]
async fn busy_past_the_queue() {
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 1,
        max_queue: 1,
        ..config()
    })
    .unwrap();
    let first = tokio::spawn({
        let runner = runner.clone();
        async move { run_ok(&runner, "sleep", &["1500"]).await }
    });
    wait_for(|| runner.stats().running == 1).await;
    let second = tokio::spawn({
        let runner = runner.clone();
        async move { run_ok(&runner, "sleep", &["10"]).await }
    });
    wait_for(|| runner.stats().queued == 1).await;
    let err = run(&runner, request("sleep", &["10"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert_eq!(first.await.unwrap().status, "success");
    assert_eq!(second.await.unwrap().status, "success");
}

#[tokio::test]
async fn shutdown_stops_queued_and_kills_running() {
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 1,
        max_queue: 4,
        ..config()
    })
    .unwrap();
    let spawn_sleeper = || {
        let runner = runner.clone();
        tokio::spawn(async move { run(&runner, request("sleep", &["20000"])).await })
    };
    let running = spawn_sleeper();
    wait_for(|| runner.stats().running == 1).await;
    let queued = spawn_sleeper();
    wait_for(|| runner.stats().queued == 1).await;
    let started = Instant::now();
    tokio::time::timeout(RUN_BOUND, runner.shutdown(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(runner.stats().running, 0);
    for handle in [running, queued] {
        assert_eq!(
            handle.await.unwrap().unwrap_err().kind(),
            ErrorKind::ShuttingDown
        );
    }
    assert_eq!(
        run(&runner, request("sleep", &["1"]))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::ShuttingDown
    );
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Dropping `Runner::run`'s future (what a server does when its client goes
/// away) abandons the run: a queued one leaves the queue and never starts, a
/// running one is killed at once, without the grace period, and its slot
/// freed.
#[tokio::test]
async fn a_dropped_run_leaves_the_queue_or_is_killed() {
    // A grace long enough that skipping it shows.
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 1,
        kill_grace: Duration::from_secs(30),
        ..config()
    })
    .expect("runner");
    // Ignores SIGTERM: only the kill ends it.
    let spin = || TaskRequest {
        timeout_secs: Some(60),
        ..request("ignore-term", &["run"])
    };
    let until = |what: &'static str, done: fn(task_runner::RunnerStats) -> bool| {
        let runner = runner.clone();
        async move {
            for _ in 0..1000 {
                if done(runner.stats()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}: {:?}", runner.stats());
        }
    };
    let running = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run(spin()).await }
    });
    until("the first run holds the slot", |s| s.running == 1).await;
    let queued = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run(spin()).await }
    });
    until("the second run waits", |s| s.queued == 1).await;

    queued.abort();
    until("the queued run left", |s| {
        s.queued == 0 && s.abandoned_queued == 1
    })
    .await;
    let started = Instant::now();
    running.abort();
    until("the running task was killed", |s| {
        s.running == 0 && s.abandoned_running == 1
    })
    .await;
    // Generously inside the 30 s kill grace a timeout would have waited.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = runner.stats();
    assert_eq!(
        (stats.running, stats.queued),
        (0, 0),
        "the queued run never started"
    );
}

/// A runner's uid lease is what tells another runner that the snapshot,
/// cgroups and leftovers named after those uids are in use. Released before
/// they are gone, a runner starting at that moment takes the uids and trips
/// over the half-removed snapshot (it failed CI once this way).
#[test]
fn a_runner_frees_its_uids_only_after_what_is_named_after_them_is_gone() {
    use std::os::fd::AsRawFd;
    if skip_unless_root("a runner frees its uids only after its snapshot is gone") {
        return;
    }
    for _ in 0..5 {
        // A range of its own: another test's runner taking the uids the
        // moment they are free would look like this one still holding them.
        let runner = Runner::new(RunnerConfig {
            sandbox_uid_base: 64_700,
            ..config()
        })
        .unwrap();
        let uid = runner
            .sandbox_uids()
            .expect("root runner has slot uids")
            .start;
        let snapshot = runner.work_dir().join(format!("{uid}-snapshot"));
        assert!(snapshot.is_dir(), "{} missing", snapshot.display());
        let lock = ["/run", runner.work_dir().to_str().unwrap()]
            .iter()
            .map(|p| std::path::Path::new(p).join(format!("nautilus-task-runner-uids/{uid}.lock")))
            .find(|p| p.exists())
            .expect("the runner's uid lock file");
        let lock = std::fs::File::open(lock).unwrap();
        let dropping = std::thread::spawn(move || drop(runner));
        // Spins until the lease is free. Holding a shared lock then keeps
        // every other runner off these uids, so nothing named after them may
        // exist any more.
        loop {
            let finished = dropping.is_finished();
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
                assert!(
                    !snapshot.exists(),
                    "uid {uid} was free while {} still existed",
                    snapshot.display()
                );
                break;
            }
            assert!(!finished, "the dropped runner still holds uid {uid}");
            std::thread::yield_now();
        }
        dropping.join().unwrap();
    }
}
