//! What the binary tells a newcomer at start: the tasks it serves by name,
//! logs a file can hold (no colour codes, no Rust `Some(…)`), JSON logs
//! with `NAUTILUS_LOG_JSON=1`, every default in `--help`, and what to do
//! when the port is taken.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nautilus-server"));
    // No NO_COLOR here: a pipe alone must turn colours off.
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    c
}

fn tasks_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a dev server on a free port; returns its stderr lines up to and
/// including the one that says it is ready (and a little after).
fn start_and_collect(extra_env: &[(&str, &str)]) -> Vec<String> {
    let mut command = server();
    command
        .args(["--attestation", "dev", "--listen", "tcp://127.0.0.1:0"])
        .args(["--tasks-dir", tasks_dir()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let mut child = Killed(command.spawn().expect("started"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until the first attestation is logged: the last line of a start.
    while !lines
        .iter()
        .any(|l: &String| l.contains("attestation works"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("server did not finish starting: {lines:#?}"),
        }
    }
    lines
}

#[test]
fn the_start_log_names_the_tasks_without_colours_or_debug_values() {
    let lines = start_and_collect(&[]);
    let ready = lines
        .iter()
        .find(|l| l.contains("nautilus-server ready"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(ready.contains("tasks=echo,probe,sleep,spin"), "{ready}");
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
        assert!(!line.contains("Some("), "a Rust debug value in {line:?}");
    }
}

#[test]
fn json_logs_take_1_as_yes() {
    let lines = start_and_collect(&[("NAUTILUS_LOG_JSON", "1")]);
    let ready = lines
        .iter()
        .find(|l| l.contains("nautilus-server ready"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let v: serde_json::Value = serde_json::from_str(ready).expect("a JSON log line");
    assert_eq!(v["fields"]["tasks"], "echo,probe,sleep,spin", "{v}");
}

#[test]
fn help_shows_every_default() {
    let out = server().arg("--help").output().expect("ran");
    assert!(out.status.success());
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(!raw.contains('\u{1b}'), "colour codes in --help: {raw}");
    // One block per option: a line that starts with `--` or `-x, --` opens it.
    let mut options: Vec<String> = Vec::new();
    for line in raw.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || (t.starts_with('-') && t.get(2..6) == Some(", --")) {
            options.push(t.to_owned());
        } else if let Some(last) = options.last_mut() {
            last.push(' ');
            last.push_str(t);
        }
    }
    let options: Vec<&String> = options
        .iter()
        .filter(|o| {
            !["--log-json", "-h, --help", "-V, --version"]
                .iter()
                .any(|flag| o.starts_with(flag))
        })
        .collect();
    assert!(options.len() > 20, "{raw}");
    for option in options {
        assert!(option.contains("default"), "no default shown for {option}");
    }
    let help = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    for shown in [
        "[default: 64]",
        "[default: 300]",
        "[default: 1048576]",
        "[default: 536870912]",
        "[default: the number of CPUs]",
        "[default: `node` on PATH]",
    ] {
        assert!(help.contains(shown), "{shown} missing from {help}");
    }
}

#[test]
fn a_port_in_use_names_the_listen_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = server()
        .args(["--attestation", "dev", "--listen", &format!("tcp://{addr}")])
        .args(["--tasks-dir", tasks_dir()])
        .output()
        .expect("ran");
    // 78: refused to start (run.sh does not restart it).
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("could not listen on tcp://{addr}"))
            && err.contains("--listen")
            && err.contains("LISTEN="),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
}
