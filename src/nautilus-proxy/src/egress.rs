//! Egress mode: the enclave's tasks reach the outside world through the
//! parent, and only where the parent's operator allows.
//!
//! The server in the enclave opens one connection per task connection
//! (vsock to the parent, CID 3, port [`DEFAULT_EGRESS_PORT`] by default) and
//! asks for a destination with an HTTP `CONNECT host:port` request (RFC 9110
//! §9.3.6, so any HTTP proxy can stand in for this one in development). The
//! proxy answers `403` unless `host:port` is on its own allowlist
//! (`--egress-allow`, exact names and ports: defence in depth, a compromised
//! server still reaches nothing else), resolves the name on the parent (or
//! uses the address the entry pins), connects, answers `200` and relays
//! bytes both ways. The bytes are the task's TLS records: the parent never
//! sees plaintext.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The vsock port the proxy's egress mode listens on by default (the
/// classic HTTP proxy port: the protocol is HTTP `CONNECT`).
pub const DEFAULT_EGRESS_PORT: u32 = 3128;
/// Longest `CONNECT` request head read.
const MAX_HEAD_BYTES: usize = 4096;

/// One allowlist entry: `host:port`, or `host:port=IP` to pin the address
/// instead of resolving the name on the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Lower case.
    pub host: String,
    pub port: u16,
    pub pin: Option<IpAddr>,
}

/// Why an allowlist entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("egress allowlist entry {0:?} must be HOST:PORT or HOST:PORT=IP (a host name, a port from 1 to 65535)")]
pub struct AllowedParseError(String);

impl FromStr for Allowed {
    type Err = AllowedParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AllowedParseError(s.to_owned());
        let (target, pin) = match s.split_once('=') {
            Some((t, ip)) => (t, Some(ip.parse().map_err(|_| err())?)),
            None => (s, None),
        };
        let (host, port) = target.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(err)?;
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if host.is_empty() || !host.chars().all(plain) {
            return Err(err());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            pin,
        })
    }
}

/// Where the egress mode listens: `vsock://PORT` (the parent, for the
/// enclave) or `tcp://IP:PORT` (development and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressListen {
    Vsock(u32),
    Tcp(SocketAddr),
}

/// Why an egress listen address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("egress listen address {0:?} must be vsock://PORT or tcp://IP:PORT")]
pub struct EgressListenParseError(String);

impl FromStr for EgressListen {
    type Err = EgressListenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EgressListenParseError(s.to_owned());
        if let Some(port) = s.strip_prefix("vsock://") {
            return port.parse().map(Self::Vsock).map_err(|_| err());
        }
        s.strip_prefix("tcp://")
            .and_then(|a| a.parse().ok())
            .map(Self::Tcp)
            .ok_or_else(err)
    }
}

impl std::fmt::Display for EgressListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vsock(port) => write!(f, "vsock://{port}"),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// The egress mode's settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The only destinations connected to.
    pub allow: Vec<Allowed>,
    /// Connections relayed at once; past this, new ones are closed at once.
    pub max_connections: u32,
    /// Time for the `CONNECT` head to arrive.
    pub head_timeout: Duration,
    /// Time to connect to the destination.
    pub connect_timeout: Duration,
}

/// A stream the egress mode accepted.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A bound egress listener.
pub enum EgressListener {
    Vsock(tokio_vsock::VsockListener),
    Tcp(tokio::net::TcpListener),
}

impl EgressListener {
    /// Binds `addr`.
    pub async fn bind(addr: EgressListen) -> std::io::Result<Self> {
        Ok(match addr {
            EgressListen::Vsock(port) => Self::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port),
            )?),
            EgressListen::Tcp(addr) => Self::Tcp(tokio::net::TcpListener::bind(addr).await?),
        })
    }

    /// The bound address (the port chosen for `tcp://…:0`).
    pub fn local(&self) -> std::io::Result<EgressListen> {
        Ok(match self {
            Self::Vsock(l) => EgressListen::Vsock(l.local_addr()?.port()),
            Self::Tcp(l) => EgressListen::Tcp(l.local_addr()?),
        })
    }

    async fn accept(&self) -> std::io::Result<(Box<dyn Stream>, String)> {
        Ok(match self {
            Self::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                (Box::new(s), format!("vsock:{}", peer.cid()))
            }
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                (Box::new(s), peer.to_string())
            }
        })
    }
}

/// Serves the egress mode until the task is dropped.
pub async fn serve_egress(listener: EgressListener, config: EgressConfig) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections as usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "egress connection refused: too many open");
            continue;
        };
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let outcome = handle(stream, &config).await;
            match outcome {
                Ok((dest, up, down)) => {
                    tracing::info!(%peer, dest, to_destination = up, to_enclave = down, "egress connection")
                }
                Err(why) => tracing::warn!(%peer, "egress connection refused: {why}"),
            }
            drop(permit);
        });
    }
}

/// Why a `CONNECT` was not relayed; the text is logged.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no complete CONNECT request head within the deadline or {MAX_HEAD_BYTES} bytes")]
    Head,
    #[error("not a CONNECT host:port request")]
    NotConnect,
    #[error("{0} is not on the egress allowlist (--egress-allow)")]
    NotAllowed(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("relaying: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the request head, checks it, connects and relays. Returns the
/// destination and the bytes each way.
async fn handle(
    mut client: Box<dyn Stream>,
    config: &EgressConfig,
) -> Result<(String, u64, u64), Refusal> {
    let (target, rest) = tokio::time::timeout(config.head_timeout, read_head(&mut client))
        .await
        .map_err(|_| Refusal::Head)??;
    let answer = |status: &'static str| {
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    };
    let Some(allowed) = allowed(&config.allow, &target) else {
        let _ = client.write_all(answer("403 Forbidden").as_bytes()).await;
        return Err(Refusal::NotAllowed(target));
    };
    let connect = async {
        match allowed.pin {
            Some(ip) => TcpStream::connect((ip, allowed.port)).await,
            None => TcpStream::connect((allowed.host.as_str(), allowed.port)).await,
        }
    };
    let mut upstream = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = client.write_all(answer("502 Bad Gateway").as_bytes()).await;
            return Err(Refusal::Connect(target, e.to_string()));
        }
        Err(_) => {
            let _ = client
                .write_all(answer("504 Gateway Timeout").as_bytes())
                .await;
            return Err(Refusal::Connect(target, "timed out".into()));
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    upstream.write_all(&rest).await?;
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok((target, up + rest.len() as u64, down))
}

/// The allowlist entry for `target` (`host:port`), exact match.
fn allowed<'a>(allow: &'a [Allowed], target: &str) -> Option<&'a Allowed> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.to_ascii_lowercase();
    allow.iter().find(|a| a.host == host && a.port == port)
}

/// Reads the `CONNECT` head; returns its target and any bytes after it.
async fn read_head(client: &mut Box<dyn Stream>) -> Result<(String, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(Refusal::Head);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if req.method != Some("CONNECT") {
                    return Err(Refusal::NotConnect);
                }
                let target = req.path.ok_or(Refusal::NotConnect)?.to_owned();
                return Ok((target, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
            _ => return Err(Refusal::NotConnect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_entries() {
        assert_eq!(
            "API.example.org:443".parse(),
            Ok(Allowed {
                host: "api.example.org".into(),
                port: 443,
                pin: None
            })
        );
        assert_eq!(
            "egress.nautilus.test:8443=127.0.0.1"
                .parse::<Allowed>()
                .map(|a| a.pin),
            Ok(Some("127.0.0.1".parse().unwrap()))
        );
        for bad in [
            "example.org",
            "example.org:0",
            ":443",
            "a b:1",
            "x.org:1=nope",
            "*.org:443",
        ] {
            assert!(bad.parse::<Allowed>().is_err(), "{bad}");
        }
        let list = vec!["a.example.org:443".parse().unwrap()];
        assert!(allowed(&list, "A.example.org:443").is_some());
        assert!(allowed(&list, "a.example.org:444").is_none());
        assert!(allowed(&list, "b.example.org:443").is_none());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!("vsock://3128".parse(), Ok(EgressListen::Vsock(3128)));
        assert!("tcp://127.0.0.1:0".parse::<EgressListen>().is_ok());
        assert!("tcp://localhost:1".parse::<EgressListen>().is_err());
    }
}
