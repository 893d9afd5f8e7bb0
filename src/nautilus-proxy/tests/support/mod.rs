//! The `nautilus-proxy` binary as a child process, and the upstreams it
//! relays to in tests: a real dev-mode server and a hybrid-vsock stand-in.
#![allow(dead_code)] // each test binary uses a different part

pub mod legit;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

/// The repository root, whose `nodejs-task` the dev server serves.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `nautilus-proxy`, killed on drop; its stderr is collected.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts the proxy on a loopback port with these extra arguments.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nautilus-proxy"));
        // The dev servers and raw upstreams here expect no PROXY header
        // unless a test asks for one (through this variable).
        cmd.env("NAUTILUS_PROXY_PROXY_PROTOCOL", "false");
        cmd.envs(env.iter().copied());
        Self::spawn(die_with_parent(&mut cmd).args(args)).await
    }

    /// Starts the proxy with its `RLIMIT_NOFILE` set to `(soft, hard)`.
    pub async fn start_with_rlimit(args: &[&str], (soft, hard): (u64, u64)) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nautilus-proxy"));
        cmd.env("NAUTILUS_PROXY_PROXY_PROTOCOL", "false");
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                )
                .map_err(std::io::Error::from)
            });
        }
        Self::spawn(die_with_parent(&mut cmd).args(args)).await
    }

    async fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .args(["--listen", "tcp://127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nautilus-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("proxy: {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut proxy = Self {
            child,
            addr: "0.0.0.0:0".parse().expect("placeholder"),
            log,
        };
        let ready = proxy
            .wait_for_line(|l| l.contains("nautilus-proxy ready"))
            .await;
        let addr = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen=tcp://"))
            .expect("listen address in the ready line");
        proxy.addr = addr.parse().expect("socket address");
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first log line matching `pred`, waiting up to 20 s for it
    /// without blocking the test's runtime (its upstreams run there).
    pub async fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let guard = self.log.lock().expect("log lock");
                if let Some(l) = guard.iter().find(|l| pred(l)) {
                    return l.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "no such log line; log:\n{}",
                    guard.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log lines about connections.
    pub fn connection_lines(&self) -> Vec<String> {
        let guard = self.log.lock().expect("log lock");
        guard
            .iter()
            .filter(|l| l.contains(" connection "))
            .cloned()
            .collect()
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits up to 30 s for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Children die with the test even when it is killed (a CI time-out).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        })
    }
}

/// The value of `key=` in a log line (numbers and single words).
pub fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_owned()
}

/// A dev-mode `nautilus-server` on a loopback port, serving the repository's tasks.
pub struct DevServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
}

impl DevServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A dev server whose configuration `tweak` changes first.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::dev();
        config.runner.tasks_dir = repo_root();
        tweak(&mut config);
        let state = Arc::new(AppState::new(config).expect("server state"));
        let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
        let Listen::Tcp(addr) = bound.local_addr().expect("addr") else {
            unreachable!("tcp")
        };
        tokio::spawn(bound.serve(Arc::clone(&state), std::future::pending()));
        Self { addr, state }
    }

    pub fn root(&self) -> nautilus_client::TrustedRoot {
        nautilus_client::TrustedRoot::from_pem(self.state.dev_root_pem().expect("dev root"))
            .expect("root")
    }
}

/// A hybrid-vsock stand-in, as `vhost-device-vsock` exposes a guest: a Unix
/// socket that takes `CONNECT <port>\n`, answers `OK <n>\n` and then carries
/// the stream, here to a TCP address standing in for the guest's listener.
pub struct HybridVsock {
    pub path: PathBuf,
    pub handshakes: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl HybridVsock {
    /// Forwards connections for `port` to `target`; any other port is
    /// closed after the request, as `vhost-device-vsock` does when nothing
    /// listens in the guest.
    pub async fn start(port: u32, target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).expect("bind unix");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&handshakes);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let Some(line) = read_line(&mut conn).await else {
                        return;
                    };
                    if line != format!("CONNECT {port}") {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut guest) = TcpStream::connect(target).await else {
                        return;
                    };
                    // The host-side port vhost-device-vsock assigns.
                    if conn.write_all(b"OK 1073741824\n").await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut guest).await;
                });
            }
        });
        Self {
            path,
            handshakes,
            _dir: dir,
        }
    }

    pub fn upstream(&self, port: u32) -> String {
        format!("unix:{}#{port}", self.path.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn read_line(conn: &mut tokio::net::UnixStream) -> Option<String> {
    let mut line = Vec::new();
    while line.len() < 64 {
        match conn.read_u8().await.ok()? {
            b'\n' => return String::from_utf8(line).ok(),
            b => line.push(b),
        }
    }
    None
}

/// `GET path` over a fresh connection with `Connection: close`; the whole answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: nautilus\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("response");
    answer
}
