//! The real `nautilus-server` binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The binary with a clean environment (only `PATH`) and warnings logged.
pub fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nautilus-server"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn");
    c
}

/// A server process that is killed if the test fails before it exits, and
/// the lines it has written to stderr so far.
pub struct Running(pub Child, Arc<Mutex<Vec<String>>>);

impl Running {
    pub fn logged(&self, needle: &str) -> bool {
        !self.lines_with(needle).is_empty()
    }

    /// The lines logged so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.1
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `command` (stdout discarded, stderr collected) and waits at most
/// `within` for the banner that names its base URL.
pub fn spawn_announced(mut command: Command, within: Duration) -> (Running, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server started");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("nautilus-server is listening on ") {
                let _ = tx.send(url.to_owned());
            }
            log.lock().expect("log lock").push(line);
        }
    });
    let running = Running(child, logs);
    let url = rx
        .recv_timeout(within)
        .expect("the server announced its address");
    (running, url)
}
