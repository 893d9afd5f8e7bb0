//! The `nautilus-server` binary: start-up refusal without an NSM, and a
//! graceful SIGTERM.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

mod support;
use support::binary::{server, spawn_announced, Running};

#[test]
fn nsm_mode_without_a_device_exits_and_names_the_dev_flag() {
    if std::path::Path::new("/dev/nsm").exists() {
        skip_report::skipped(
            "nsm_mode_without_a_device_exits_and_names_the_dev_flag",
            "this machine has a real /dev/nsm",
        );
        return;
    }
    let out = server()
        .args(["--listen", "tcp://127.0.0.1:0"])
        .output()
        .expect("server ran");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--attestation dev"), "{err}");
    assert!(err.contains("/dev/nsm"), "{err}");
}

/// Starts a dev server on a free port and returns it with its base URL,
/// read from the banner it prints.
fn start_dev(grace_secs: u64) -> (Running, String) {
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    start(server(), tasks, grace_secs)
}

fn start(mut command: Command, tasks: &str, grace_secs: u64) -> (Running, String) {
    command
        .args(["--attestation", "dev", "--listen", "tcp://127.0.0.1:0"])
        .args(["--tasks-dir", tasks])
        .args(["--shutdown-grace-secs", &grace_secs.to_string()]);
    spawn_announced(command, Duration::from_secs(30))
}

fn sigterm(child: &Running) {
    let pid = i32::try_from(child.0.id()).expect("pid fits");
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(child: &mut Running, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            panic!("server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_then_exits_0() {
    let (mut child, url) = start_dev(10);
    let http = reqwest::Client::new();
    let task = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}/process_data");
        async move {
            http.post(url)
                .json(&json!({"payload": {"task_path": "sleep", "args": ["1500"]}}))
                .send()
                .await
        }
    });
    // Wait until the task is running before asking the server to stop.
    wait_running(&http, &url).await;
    sigterm(&child);
    let resp = task.await.expect("join").expect("answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["response"]["data"]["stdout"], "slept 1500 ms\n");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

#[tokio::test]
async fn sigterm_stops_tasks_that_outlive_the_grace_period() {
    let (mut child, url) = start_dev(1);
    let http = reqwest::Client::new();
    // The marker names this run's task process in /proc/*/cmdline.
    let marker = format!("marker-{}", uuid::Uuid::new_v4());
    let task = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}/process_data");
        let body =
            json!({"payload": {"task_path": "spin", "timeout_secs": 60, "args": [marker.clone()]}});
        async move { http.post(url).json(&body).send().await }
    });
    // A slot is taken before the task's process starts: wait for the process.
    for _ in 0..400 {
        if processes_with(&marker) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(processes_with(&marker), 1, "the task is running");
    let start = Instant::now();
    sigterm(&child);

    // The listener closes at once: new connections are refused while the
    // running task gets its grace period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = http.get(format!("{url}/health_check")).send().await;
    assert!(
        late.is_err(),
        "a new connection was accepted after SIGTERM: {late:?}"
    );

    // The stopped task's request still gets an answer, and the server exits
    // 0 long before the task's own 60 s timeout, leaving nothing behind.
    let resp = task.await.expect("join").expect("answered");
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(processes_with(&marker), 0, "the task outlived the server");
}

/// Live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            cmdline
                .split(|&b| b == 0 || b == b' ')
                .any(|arg| arg == needle.as_bytes())
        })
        .count()
}

async fn wait_running(http: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        let h: serde_json::Value = http
            .get(format!("{url}/health_check"))
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("json");
        if h["running"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task never started");
}

/// The server marks itself non-dumpable, so even a task running under the
/// server's own uid (the non-root development mode) cannot read its
/// environment or memory. Without `harden_process` this test fails.
#[tokio::test]
async fn the_server_is_not_dumpable_even_to_tasks_of_its_own_uid() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_report::skipped(
            "the_server_is_not_dumpable_even_to_tasks_of_its_own_uid",
            "needs root to start the server as another user",
        );
        return;
    }
    const NOBODY: u32 = 65534;
    // The checkout may sit where `nobody` cannot enter: copy the binary and
    // the probe task to a directory it can read.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.path().join("nautilus-server");
    std::fs::copy(env!("CARGO_BIN_EXE_nautilus-server"), &bin).expect("copy binary");
    let probe = dir.path().join("tasks/probe");
    std::fs::create_dir_all(&probe).expect("mkdir");
    for f in ["package.json", "index.js"] {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks/probe/");
        std::fs::copy(format!("{src}{f}"), probe.join(f)).expect("copy task");
    }
    for d in [dir.path().join("tasks"), probe.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let mut command = Command::new(&bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("NAUTILUS_TEST_SECRET", "hunter2")
        .uid(NOBODY)
        .gid(NOBODY);
    let (mut child, url) = start(command, &dir.path().join("tasks").to_string_lossy(), 1);
    let pid = child.0.id().to_string();
    let resp = reqwest::Client::new()
        .post(format!("{url}/process_data"))
        .json(&json!({"payload": {"task_path": "probe", "args": [pid]}}))
        .send()
        .await
        .expect("answered");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(
        body["response"]["data"]["stdout"]
            .as_str()
            .expect("stdout")
            .trim(),
    )
    .expect("probe output");
    assert_eq!(seen["environ"], "EACCES", "{seen}");
    assert_eq!(seen["mem"], "EACCES", "{seen}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// `--dev-root-out` (what `make run` uses) writes the root that verifies the
/// server's documents, and only that server's.
#[tokio::test]
async fn dev_root_out_writes_the_root_that_verifies_the_documents() {
    use attestation_verify::{AttestationDocument, Policy, TrustedRoot};
    let dir = tempfile::tempdir().expect("tempdir");
    let root_file = dir.path().join("out/dev-root.pem");
    let mut command = server();
    command.arg("--dev-root-out").arg(&root_file);
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let (mut child, url) = start(command, tasks, 1);

    let pem = std::fs::read_to_string(&root_file).expect("root written, parent created");
    let root = TrustedRoot::from_pem(&pem).expect("a PEM certificate");
    let body: serde_json::Value = reqwest::get(format!("{url}/get_attestation?nonce=01"))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let doc = hex::decode(body["attestation"].as_str().expect("attestation")).expect("hex");
    let verified = AttestationDocument::from_bytes(&doc)
        .expect("AWS format")
        .verify(
            &root,
            &Policy::default().allow_debug(true).expected_nonce(vec![1]),
        )
        .expect("verifies with the written root");
    assert!(verified.module_id().starts_with("dev-"));

    // A second server cannot bind the same address, and must leave the first
    // one's root file alone.
    let mut second = server();
    second.arg("--dev-root-out").arg(&root_file);
    let addr = url.trim_start_matches("http://");
    let out = second
        .args([
            "--attestation",
            "dev",
            "--listen",
            &format!("tcp://{addr}"),
            "--tasks-dir",
            tasks,
        ])
        .output()
        .expect("second server ran");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not listen"));
    assert_eq!(std::fs::read_to_string(&root_file).expect("root"), pem);

    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// 3 HTTP/2 prior-knowledge connections, each trying 100 streams of
/// `POST /process_data` that send 1.9 MB and never end: the server's memory
/// stays bounded (a few streams per connection, a body budget, a total body
/// deadline) and `/health_check` keeps answering new clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_of_unfinished_bodies_keep_memory_bounded() {
    let mut command = server();
    command.args(["--body-timeout-secs", "4"]);
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let (child, url) = start(command, tasks, 1);
    let pid = child.0.id();
    let addr = url.trim_start_matches("http://").to_owned();
    let before = rss(pid);
    let body = bytes::Bytes::from(vec![b' '; 1_900_000]);
    let answers = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u32>::new()));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (addr, body, answers) = (addr.clone(), body.clone(), Arc::clone(&answers));
        attackers.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(connection);
            let mut open = Vec::new();
            for _ in 0..100 {
                let Ok(mut ready) = client.clone().ready().await else {
                    return;
                };
                let request = axum::http::Request::post(format!("http://{addr}/process_data"))
                    .header("content-type", "application/json")
                    .body(())
                    .expect("request");
                let Ok((response, mut send)) = ready.send_request(request, false) else {
                    return;
                };
                let _ = send.send_data(body.clone(), false);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    if let Ok(r) = response.await {
                        *answers
                            .lock()
                            .expect("lock")
                            .entry(r.status().as_u16())
                            .or_default() += 1;
                    }
                });
                // Never ended: the stream stays open until the server gives up.
                open.push(send);
            }
            std::future::pending::<()>().await;
        });
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss(pid));
        let health = http.get(format!("{url}/health_check")).send().await;
        assert!(
            health.as_ref().is_ok_and(|r| r.status() == 200),
            "/health_check during the attack: {health:?}"
        );
        peak = peak.max(rss(pid));
    }
    attackers.abort_all();
    let answers = answers.lock().expect("lock").clone();
    eprintln!(
        "server RSS {} MiB before, {} MiB at most during the attack; answers to the attack: {answers:?}",
        before >> 20,
        peak >> 20
    );
    assert!(peak < 150 << 20, "server RSS reached {} MiB", peak >> 20);
    // The deadline, not luck, ended the streams: each got its 408.
    assert!(answers.get(&408).copied().unwrap_or(0) >= 3, "{answers:?}");
    sigterm(&child);
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Body memory within its budget (issue 24: it peaked near 3× the 64 MiB
/// budget). 64 clients each send 2 MiB bodies, whole and at full speed, 4
/// times over (512 MiB offered, 128 MiB at once) against a 16 MiB budget:
/// the server's peak RSS (`VmHWM`, so no peak between two samples is
/// missed) grows by less than twice the budget (the bodies held, their
/// parse, hyper's read buffers). With the budget lifted to 1 GiB the same
/// test peaks far above it, so the bound is the budget's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_bodies_keep_the_peak_rss_within_the_body_budget() {
    const BUDGET: u64 = 16 << 20;
    let peak = large_bodies_peak(BUDGET).await;
    assert!(
        peak < 2 * BUDGET,
        "peak RSS grew by {} MiB under a {} MiB body budget",
        peak >> 20,
        BUDGET >> 20
    );
}

/// How much the peak RSS of a server with a body budget of `budget` grows
/// while 64 clients send it 2 MiB bodies.
async fn large_bodies_peak(budget: u64) -> u64 {
    let mut command = server();
    command.args(["--max-buffered-body-bytes", &budget.to_string()]);
    // One address: its shares must cover the 64 clients.
    command.args(["--max-requests-per-client", "128"]);
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let (child, url) = start(command, tasks, 1);
    let pid = child.0.id();
    let addr = url.trim_start_matches("http://").to_owned();
    // Warm: the allocator's arenas and the first connections.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let _ = http.get(format!("{url}/health_check")).send().await;
    }
    let before = peak_rss(pid);
    // 2 MiB less a little: one string argument, refused (400) once parsed.
    let arg = "x".repeat((2 << 20) - 100);
    let body = format!(r#"{{"payload":{{"task_path":"echo","args":["{arg}"]}}}}"#);
    let request = Arc::new(format!(
        "POST /process_data HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u32>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (addr, request, statuses) = (addr.clone(), Arc::clone(&request), Arc::clone(&statuses));
        clients.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..4 {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    continue;
                };
                let _ = s.write_all(request.as_bytes()).await;
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer)).await;
                let status =
                    String::from_utf8_lossy(answer.get(9..12).unwrap_or_default()).into_owned();
                *statuses.lock().expect("lock").entry(status).or_default() += 1;
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let grown = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "body budget {} MiB: peak RSS grew by {} MiB; answers {:?}",
        budget >> 20,
        grown >> 20,
        statuses.lock().expect("lock")
    );
    sigterm(&child);
    grown
}

/// A server out of file descriptors logs and counts its failed accepts, and
/// serves again once descriptors are free.
#[tokio::test]
async fn accept_errors_are_logged_and_counted() {
    use std::os::unix::process::CommandExt;
    // 1024: the least the server starts with (every task gets 1024 open
    // files); this test's own 1100 sockets need more than a default soft limit.
    nautilus_server::state::raise_descriptor_limit().expect("raise our own limit");
    let mut command = server();
    // One address holds all the sockets: its share must not close them first.
    command.args(["--max-connections-per-client", "4096"]);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let (mut child, url) = start(command, tasks, 1);
    let addr = url.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::new();
    for _ in 0..1100 {
        sockets.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let mut logged = false;
    for _ in 0..200 {
        if child.logged("accept failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logged,
        "no accept error logged with 1100 sockets and 1024 descriptors"
    );
    drop(sockets);
    let metrics = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("answered once descriptors are free")
        .text()
        .await
        .expect("text");
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nautilus_accept_errors_total{transport=\"tcp\"}"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{metrics}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// The number a summary line gives for the lines it stands for
/// ("290 more like `request failed` ...").
fn suppressed_count(summary: &str) -> u64 {
    summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, next)| *next == "more")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"))
}

/// A flood of one cheap request that the server logs at ERROR each time (a
/// task refused at start: 500, "request failed") writes a few lines and then
/// one line per 10 s saying how many more there were, not one line per
/// request: nothing is lost from the count, and the log is not the attack.
#[tokio::test]
async fn a_flood_of_one_logged_error_is_summed_up_not_written_per_request() {
    const FLOOD: u64 = 300;
    // Lines one call site may write per 10 s window (`log_flood`).
    const PER_WINDOW: u64 = 10;
    let tasks = tempfile::tempdir().expect("tempdir");
    let task = tasks.path().join("dep-task");
    std::fs::create_dir_all(&task).expect("task dir");
    std::fs::write(
        task.join("package.json"),
        r#"{"name": "dep-task", "version": "1.0.0", "main": "index.js"}"#,
    )
    .expect("package.json");
    std::fs::write(task.join("index.js"), "require('ms')\n").expect("index.js");
    // Its lockfile pins a dependency that is not installed: refused at start.
    std::fs::write(
        task.join("package-lock.json"),
        r#"{"name": "dep-task", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "dep-task", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}},
    "node_modules/ms": {"version": "2.1.3"}
  }}"#,
    )
    .expect("package-lock.json");
    let tasks_dir = tasks.path().to_str().expect("utf-8 temp path");
    let (mut child, url) = start(server(), tasks_dir, 1);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for _ in 0..FLOOD {
        let resp = http
            .post(format!("{url}/process_data"))
            .json(&json!({"payload": {"task_path": "dep-task"}}))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 500);
    }

    // Every request is accounted for, as its own line or in a summary (one
    // per window, every 10 s): wait for the last summary, bounded.
    let count = || {
        let lines = child.lines_with("request failed");
        let (summaries, written): (Vec<String>, Vec<String>) =
            lines.into_iter().partition(|l| l.contains(" more like "));
        let suppressed: u64 = summaries.iter().map(|l| suppressed_count(l)).sum();
        (written.len() as u64, summaries, suppressed)
    };
    let mut accounted = count();
    for _ in 0..300 {
        if accounted.0 + accounted.2 >= FLOOD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        accounted = count();
    }
    let (written, summaries, suppressed) = accounted;
    println!("{FLOOD} refused requests: {written} lines written, {suppressed} summed up in {summaries:?}");
    // Each window lets PER_WINDOW through; the flood may straddle window
    // boundaries on a slow machine, and each boundary it straddles leaves a
    // summary (or is the last, partial window).
    assert!(
        written <= PER_WINDOW * (summaries.len() as u64 + 2),
        "{written} lines for {FLOOD} requests with {} summaries",
        summaries.len()
    );
    assert_eq!(
        written + suppressed,
        FLOOD,
        "every request is in the log or in a summary: {summaries:?}"
    );
    for summary in &summaries {
        assert!(
            summary.contains("src/nautilus-server/src/error.rs:")
                && summary.contains("in the last 10 s"),
            "the summary names the call site and the window: {summary}"
        );
    }
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}
