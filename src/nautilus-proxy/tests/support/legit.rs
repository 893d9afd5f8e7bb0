//! The legitimate client that runs beside every attack: a bounded number of
//! requests from its own loopback address, counted. The server's attack
//! tests include this file too.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

/// The legitimate client's address; attackers use others in 127/8.
pub const LEGIT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Longest one legitimate request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// What the legitimate client saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub total: usize,
    /// Every attempt's time, failed ones included.
    pub times: Vec<Duration>,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
}

impl Tally {
    pub fn success_rate(&self) -> f64 {
        self.ok as f64 / self.total.max(1) as f64
    }

    pub fn p99(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.get((t.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    /// Above 90 % success and p99 under 4 s: loose, a count rather than a
    /// benchmark, on a 2-core machine shared with other builds (the old code
    /// failed on success, or at the 5 s request timeout).
    pub fn assert_kept_up(&self, what: &str) {
        eprintln!(
            "{what}: legit {}/{} ok, p99 {:?}",
            self.ok,
            self.total,
            self.p99()
        );
        assert!(
            self.success_rate() > 0.9,
            "{what}: legitimate client got {}/{} answers; first failures: {:?}",
            self.ok,
            self.total,
            self.failures
        );
        assert!(
            self.p99() < Duration::from_secs(4),
            "{what}: legitimate p99 {:?}",
            self.p99()
        );
    }
}

/// The task the legitimate client runs against a server serving the
/// repository's tasks.
pub const NODEJS_TASK: &str = r#"{"payload":{"task_path":"nodejs-task","args":["2","3"]}}"#;

/// `requests` requests to `addr` from [`LEGIT`], one at a time with `gap`
/// between them: `GET /health_check`, and every fifth a real task
/// (`nodejs-task 2 3`) through `POST /process_data`.
pub async fn run(addr: SocketAddr, requests: usize, gap: Duration) -> Tally {
    run_with(addr, requests, gap, NODEJS_TASK).await
}

/// [`run`] with `task` (a `/process_data` body) as the task.
pub async fn run_with(addr: SocketAddr, requests: usize, gap: Duration, task: &str) -> Tally {
    let mut tally = Tally::default();
    for i in 0..requests {
        let started = Instant::now();
        let outcome = if i % 5 == 4 {
            timeout(REQUEST_TIMEOUT, run_task(addr, task)).await
        } else {
            timeout(REQUEST_TIMEOUT, health(addr)).await
        };
        tally.times.push(started.elapsed());
        tally.total += 1;
        match outcome {
            Ok(Ok(())) => tally.ok += 1,
            Ok(Err(e)) if tally.failures.len() < 5 => tally.failures.push(e),
            Err(_) if tally.failures.len() < 5 => tally.failures.push("timed out".into()),
            _ => {}
        }
        tokio::time::sleep(gap).await;
    }
    tally
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<String, String> {
    let mut s = connect_from(LEGIT, addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn health(addr: SocketAddr) -> Result<(), String> {
    let answer = exchange(
        addr,
        b"GET /health_check HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n",
    )
    .await?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("health: {:?}", answer.get(..answer.len().min(80))))
    }
}

async fn run_task(addr: SocketAddr, body: &str) -> Result<(), String> {
    let request = format!(
        "POST /process_data HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, request.as_bytes()).await?;
    if answer.starts_with("HTTP/1.1 200") && answer.contains("\"exit_code\":0") {
        Ok(())
    } else {
        Err(format!("task: {:?}", answer.get(..answer.len().min(200))))
    }
}
