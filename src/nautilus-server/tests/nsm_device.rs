//! `--attestation nsm` with the device as a real enclave's kernel creates it:
//! `/dev/nsm` with mode 0666 (the driver's `.mode = 0666`).
//!
//! No Nitro hardware here, so each test builds the situation in a private
//! mount namespace (`unshare --mount`): a tmpfs over `/dev` holding a 0666
//! character device at `/dev/nsm` (a stand-in: the null device's numbers),
//! then starts the real binary there. The production path stays `/dev/nsm`;
//! only the namespace changes what is behind it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds the enclave-like `/dev` in a private mount namespace, runs `extra`
/// (more shell), then execs the server with `args`, so the server keeps the
/// child's pid.
fn server_in_private_dev(extra: &str, args: &[&str]) -> Command {
    server_in_private_dev_listening(extra, Some("tcp://127.0.0.1:0"), args)
}

fn server_in_private_dev_listening(extra: &str, listen: Option<&str>, args: &[&str]) -> Command {
    let script = format!(
        "set -e
         mount -t tmpfs -o mode=0755 nautilus-test-dev /dev
         mknod -m 666 /dev/null c 1 3
         mknod -m 666 /dev/zero c 1 5
         mknod -m 666 /dev/urandom c 1 9
         mknod -m 666 /dev/nsm c 1 3
         {extra}
         exec \"$0\" \"$@\""
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_nautilus-server"))
        .args(["--attestation", "nsm"])
        // The test connects directly, not through nautilus-proxy.
        .args(["--proxy-protocol", "false"])
        .args(listen.iter().flat_map(|l| ["--listen", l]))
        .args([
            "--tasks-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks"),
        ])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A server process, killed when the test ends, and every line of its stderr.
struct Server {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("unshare started");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log").push(line);
            }
        });
        Self { child, log }
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} in 30 s: {:#?}",
                self.log.lock().expect("log")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_0666_dev_nsm_is_made_root_only_and_the_server_starts() {
    if skip_report::needs_root("a_0666_dev_nsm_is_made_root_only_and_the_server_starts") {
        return;
    }
    let server = Server::spawn(server_in_private_dev("", &[]));
    let banner = server.wait_for("nautilus-server is listening on ");
    let url = banner
        .trim()
        .trim_start_matches("nautilus-server is listening on ")
        .to_owned();

    // The node in the server's own mount namespace, seen through /proc.
    let node = format!("/proc/{}/root/dev/nsm", server.child.id());
    let meta = std::fs::symlink_metadata(&node).expect("the server's /dev/nsm");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o600),
        "{node} is not root-only"
    );
    let said = server.wait_for("made /dev/nsm root-only");
    assert!(said.contains("mode 666"), "{said}");
    assert!(!server.log().contains("accessible to other users"));

    // The stand-in is no NSM: the first request (made at start) fails, and
    // says why.
    let first = server.wait_for("first attestation request failed");
    assert!(first.contains("not a Nitro Secure Module"), "{first}");
    // TLS is on by default with --attestation nsm (the clients pin its key).
    assert!(url.starts_with("https://"), "{url}");
    let resp = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .get(format!("{url}/get_attestation"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 500);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    let error = body["error"].as_str().expect("error sentence");
    assert!(error.contains("not a Nitro Secure Module"), "{error}");
    assert!(error.contains("Inappropriate ioctl"), "{error}");
}

#[test]
fn a_dev_nsm_that_cannot_be_made_root_only_is_refused_with_what_to_do() {
    if skip_report::needs_root("a_dev_nsm_that_cannot_be_made_root_only_is_refused_with_what_to_do")
    {
        return;
    }
    // A read-only /dev: root cannot chmod the node.
    let mut server = Server::spawn(server_in_private_dev("mount -o remount,ro /dev", &[]));
    let status = server.child.wait().expect("server exited");
    assert!(!status.success());
    // Let the reader thread drain what is left.
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("/dev/nsm is accessible to other users"))
        .unwrap_or_else(|| panic!("no refusal in {log}"));
    assert!(line.contains("mode 666"), "{line}");
    assert!(line.contains("Read-only file system"), "{line}");
    assert!(line.contains("chmod 0600 /dev/nsm"), "{line}");
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "one error line: {log}"
    );
}

/// In `nsm` mode the default address is vsock port 3000: the server listens
/// there (or says it could not, on a host without vsock).
#[test]
fn nsm_mode_without_listen_uses_vsock_port_3000() {
    if skip_report::needs_root("nsm_mode_without_listen_uses_vsock_port_3000") {
        return;
    }
    let server = Server::spawn(server_in_private_dev_listening("", None, &[]));
    let line = server.wait_for("vsock://3000");
    assert!(
        line.contains("nautilus-server ready") || line.contains("could not listen on vsock://3000"),
        "{line}"
    );
}
