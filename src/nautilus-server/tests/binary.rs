//! The `nautilus-server` binary: start-up refusal without an NSM, and a
//! graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nautilus-server"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn");
    c
}

#[test]
fn nsm_mode_without_a_device_exits_and_names_the_dev_flag() {
    if std::path::Path::new("/dev/nsm").exists() {
        eprintln!("SKIPPED: this machine has a real /dev/nsm");
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
fn start_dev(grace_secs: u64) -> (std::process::Child, String) {
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let mut child = server()
        .args([
            "--attestation",
            "dev",
            "--listen",
            "tcp://127.0.0.1:0",
            "--tasks-dir",
            tasks,
        ])
        .args(["--shutdown-grace-secs", &grace_secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server started");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("nautilus-server is listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its address");
    (child, url)
}

fn sigterm(child: &std::process::Child) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
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
    let task = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}/process_data");
        async move {
            http.post(url)
                .json(&json!({"payload": {"task_path": "spin", "timeout_secs": 60}}))
                .send()
                .await
        }
    });
    wait_running(&http, &url).await;
    let start = Instant::now();
    sigterm(&child);
    // The request still gets an answer, and the server exits 0 long before
    // the task's own 60 s timeout.
    let resp = task.await.expect("join").expect("answered");
    let status = resp.status().as_u16();
    let body = resp.text().await.expect("body");
    assert!(matches!(status, 200 | 503 | 504), "{status}: {body}");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert!(start.elapsed() < Duration::from_secs(30));
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
