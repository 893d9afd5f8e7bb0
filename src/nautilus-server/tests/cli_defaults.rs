//! What `nautilus-server --help` promises about its defaults, and that a
//! started server keeps it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nautilus-server"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    c
}

#[test]
fn help_states_the_mode_dependent_listen_default() {
    let out = server().arg("--help").output().expect("ran");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("vsock://3000 with `--attestation nsm`"),
        "{help}"
    );
    assert!(
        help.contains("tcp://127.0.0.1:3000 with `--attestation dev`"),
        "{help}"
    );
}

/// A dev server started without `--listen` uses tcp://127.0.0.1:3000: it
/// listens there, or (if another program holds the port) says it could not.
#[test]
fn a_dev_server_without_listen_uses_loopback_port_3000() {
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let mut child = server()
        .args(["--attestation", "dev", "--tasks-dir", tasks])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("started");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on http://127.0.0.1:3000")
                || line.contains("could not listen on tcp://127.0.0.1:3000")
            {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("the server named tcp://127.0.0.1:3000");
}

/// Start-up failures are one log line saying what to do: no repeated
/// causes, no driver noise, and no backtrace even with RUST_BACKTRACE=1; the
/// exit status is 78 (refused to start), which run.sh does not restart.
#[test]
fn start_up_errors_are_one_line_even_with_rust_backtrace() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let listen = format!("tcp://127.0.0.1:{port}");
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let mut cases = vec![(
        vec![
            "--attestation",
            "dev",
            "--listen",
            listen.as_str(),
            "--tasks-dir",
            tasks,
        ],
        format!("could not listen on {listen}"),
    )];
    if !std::path::Path::new("/dev/nsm").exists() {
        cases.push((
            vec!["--attestation", "nsm", "--listen", "tcp://127.0.0.1:0"],
            "outside an enclave, start the server with `--attestation dev`".to_owned(),
        ));
    }
    for (args, needle) in cases {
        let out = server()
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("ran");
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // The server's own lines (the task runner may log about leftovers of
        // other runs on a shared machine).
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(" task_runner"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(&needle), "{args:?}: {err}");
        assert!(lines[0].contains("ERROR"), "{err}");
        assert!(
            !err.contains("backtrace") && !err.contains("<unknown>"),
            "{err}"
        );
        if needle.contains("enclave") {
            assert_eq!(err.matches("/dev/nsm").count(), 1, "{err}");
        }
    }
    // Arguments it cannot parse: refused to start too.
    let out = server().arg("--no-such-flag").output().expect("ran");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    drop(taken);
}

/// Egress flags and declarations that cannot work stop the start with one
/// line saying what to fix.
#[test]
fn egress_misconfigurations_refuse_to_start() {
    let tasks = tempfile::tempdir().expect("tempdir");
    let bad = tasks.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    std::fs::write(
        bad.join("package.json"),
        r#"{"main":"index.js","nautilus":{"egress":["203.0.113.7:443"]}}"#,
    )
    .expect("write");
    std::fs::write(bad.join("index.js"), "").expect("write");
    let ca = tasks.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
    let dir = tasks.path().to_str().expect("utf-8");
    let ca = ca.to_str().expect("utf-8");
    for (args, needle) in [
        (
            vec!["--attestation", "dev", "--listen", "tcp://127.0.0.1:0", "--tasks-dir", dir],
            "package.json \"nautilus\".\"egress\" entry \"203.0.113.7:443\": IP literals are not allowed",
        ),
        (
            vec!["--attestation", "nsm", "--listen", "tcp://127.0.0.1:0", "--egress-test-ca", ca],
            "--egress-test-ca is for tests",
        ),
    ] {
        let out = server().args(&args).output().expect("ran");
        // 78: refused to start (run.sh does not restart it).
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
