//! A real server on a loopback port, for the HTTP tests.
#![allow(dead_code)] // each test binary uses a different part

pub mod binary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use tokio::sync::oneshot;

pub fn fixture_tasks() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Dev attestation, fixture tasks, short timeouts.
pub fn config() -> ServerConfig {
    let mut c = ServerConfig::dev();
    c.runner.tasks_dir = fixture_tasks();
    c.runner.max_timeout_secs = 20;
    c.runner.default_timeout_secs = 10;
    c.runner.kill_grace = Duration::from_millis(500);
    c
}

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(AppState::new(config).expect("server state")).await
    }

    /// Serves `state` (e.g. one built around a stand-in attester).
    pub async fn start_with(state: AppState) -> Self {
        let state = Arc::new(state);
        let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind loopback");
        let Listen::Tcp(addr) = bound.local_addr().expect("local addr") else {
            unreachable!("bound to TCP")
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(bound.serve(Arc::clone(&state), async move {
            let _ = stopped.await;
        }));
        // The server's TLS key is pinned by the clients (their tests); here
        // any certificate will do.
        let tls = state.tls().is_some();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(tls)
            .build()
            .expect("http client");
        let scheme = if tls { "https" } else { "http" };
        Self {
            base: format!("{scheme}://{addr}"),
            state,
            http,
            stop: Some(stop),
            serving: Some(serving),
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .split_once("://")
            .expect("scheme")
            .1
            .parse()
            .expect("socket address")
    }

    /// The value of the first `/metrics` line that starts with `line_start`
    /// (name and labels), 0 when there is none.
    pub async fn metric(&self, line_start: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request answered")
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.expect("JSON body")
    }

    pub async fn get_bytes(&self, path: &str) -> axum::body::Bytes {
        self.get(path).await.bytes().await.expect("body")
    }

    /// `POST /process_data` with `{"payload": payload}`.
    pub async fn process(&self, payload: serde_json::Value) -> reqwest::Response {
        self.post_json("/process_data", &serde_json::json!({ "payload": payload }))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request answered")
    }

    /// Stops accepting, stops running tasks and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.state.runner().shutdown(Duration::from_secs(1)).await;
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(Duration::from_secs(10), serving)
                .await
                .expect("server drained in time")
                .expect("server task");
        }
    }
}

/// Asserts the response is a JSON error with this status and returns its body.
pub async fn expect_error(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct:?}"
    );
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error sentence in {body}"
    );
    body
}

/// Every child of this process but the warm boxes waiting in `server`'s
/// pool, zombies included, as "pid name state" (as root, a task's box; its
/// grandchildren stay in the box's PID namespace).
pub fn children_but_warm(server: &TestServer) -> Vec<String> {
    let warm: Vec<String> = server
        .state
        .runner()
        .warm_box_pids()
        .iter()
        .map(u32::to_string)
        .collect();
    children()
        .into_iter()
        .filter(|c| !warm.iter().any(|w| c.split(' ').next() == Some(w.as_str())))
        .collect()
}

/// Every child of this process, zombies included, as "pid name state" (as
/// root, a task's box; its grandchildren stay in the box's PID namespace).
pub fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("PPid:") == me).then(|| {
                format!(
                    "{} {} {}",
                    e.file_name().to_string_lossy(),
                    field("Name:"),
                    field("State:")
                )
            })
        })
        .collect()
}

/// Polls until `done` or `within` has passed; returns how long it took.
pub async fn eventually(
    within: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}
