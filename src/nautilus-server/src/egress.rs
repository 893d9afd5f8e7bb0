//! How the tasks' egress leaves the server (see `docs/egress.md`).
//!
//! The task runner relays each connection a task opens to a declared
//! destination; this module opens the connection out:
//! - `direct`: straight to the destination, resolving the name with the
//!   host's resolver (development);
//! - `tcp://HOST:PORT` or `vsock://CID:PORT`: through `nautilus-proxy`'s
//!   egress mode (or any HTTP proxy), asking with HTTP `CONNECT host:port`.
//!   In the enclave that is the parent, `vsock://3:3128`, whose own
//!   allowlist decides again.

use std::fmt;
use std::io;
use std::str::FromStr;

use task_runner::{ConnectFuture, EgressConnect, EgressHost, EgressStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The parent instance's vsock CID, seen from an enclave.
pub const PARENT_CID: u32 = 3;
/// The vsock port `nautilus-proxy --egress-listen` uses by default.
pub const DEFAULT_EGRESS_VSOCK_PORT: u32 = 3128;
/// Longest proxy answer head read.
const MAX_ANSWER_BYTES: usize = 4096;

/// Where egress connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRoute {
    /// Straight out.
    Direct,
    /// Through an HTTP `CONNECT` proxy over TCP.
    Tcp {
        /// The proxy's host name or IP.
        host: String,
        /// Its port.
        port: u16,
    },
    /// Through an HTTP `CONNECT` proxy over vsock.
    Vsock {
        /// The proxy's CID ([`PARENT_CID`] from an enclave).
        cid: u32,
        /// Its port.
        port: u32,
    },
}

impl EgressRoute {
    /// The route in an enclave: the parent's proxy.
    pub fn parent() -> Self {
        Self::Vsock {
            cid: PARENT_CID,
            port: DEFAULT_EGRESS_VSOCK_PORT,
        }
    }

    /// The connector the task runner uses.
    pub fn connector(&self) -> std::sync::Arc<dyn EgressConnect> {
        match self {
            Self::Direct => std::sync::Arc::new(task_runner::DirectConnect),
            _ => std::sync::Arc::new(ProxyConnect(self.clone())),
        }
    }
}

/// Why an egress route was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("egress route {0:?} must be direct, tcp://HOST:PORT or vsock://CID:PORT")]
pub struct EgressRouteParseError(String);

impl FromStr for EgressRoute {
    type Err = EgressRouteParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EgressRouteParseError(s.to_owned());
        if s == "direct" {
            return Ok(Self::Direct);
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or_else(err)?;
            return Ok(Self::Vsock {
                cid: cid.parse().map_err(|_| err())?,
                port: port.parse().map_err(|_| err())?,
            });
        }
        let rest = s.strip_prefix("tcp://").ok_or_else(err)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(err)?;
        if host.is_empty() {
            return Err(err());
        }
        Ok(Self::Tcp {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for EgressRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct => f.write_str("direct"),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

impl serde::Serialize for EgressRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Connects through an HTTP `CONNECT` proxy.
#[derive(Debug)]
struct ProxyConnect(EgressRoute);

impl EgressConnect for ProxyConnect {
    fn connect<'a>(&'a self, dest: &'a EgressHost) -> ConnectFuture<'a> {
        Box::pin(async move {
            let mut stream: Box<dyn EgressStream> = match &self.0 {
                EgressRoute::Tcp { host, port } => {
                    Box::new(tokio::net::TcpStream::connect((host.as_str(), *port)).await?)
                }
                EgressRoute::Vsock { cid, port } => Box::new(
                    tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                        .await?,
                ),
                EgressRoute::Direct => return Err(io::Error::other("not a proxy route")),
            };
            handshake(&mut stream, dest).await?;
            Ok(stream)
        })
    }
}

/// Asks the proxy for `dest`; `Ok` once it answered 200 (nothing after the
/// head is read: the destination's bytes stay in the stream).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    dest: &EgressHost,
) -> io::Result<()> {
    stream
        .write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .await?;
    // Byte by byte: the head is short, and reading past it would take the
    // destination's first bytes.
    let mut head = Vec::with_capacity(64);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER_BYTES {
            return Err(io::Error::other("the egress proxy's answer is too long"));
        }
        head.push(stream.read_u8().await?);
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut answer = httparse::Response::new(&mut headers);
    match answer.parse(&head) {
        Ok(httparse::Status::Complete(_)) if answer.code == Some(200) => Ok(()),
        Ok(httparse::Status::Complete(_)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the egress proxy refused {dest}: {} {}",
                answer.code.unwrap_or(0),
                answer.reason.unwrap_or("")
            ),
        )),
        _ => Err(io::Error::other("the egress proxy's answer is not HTTP")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_print_back() {
        for s in [
            "direct",
            "tcp://127.0.0.1:3128",
            "tcp://[::1]:3128",
            "vsock://3:3128",
        ] {
            assert_eq!(s.parse::<EgressRoute>().unwrap().to_string(), s);
        }
        assert_eq!(EgressRoute::parent().to_string(), "vsock://3:3128");
        for bad in ["", "tcp://:1", "vsock://3", "http://x:1", "tcp://x:99999"] {
            assert!(bad.parse::<EgressRoute>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_naming_the_destination() {
        let dest = EgressHost {
            host: "a.example.org".into(),
            port: 443,
        };
        let (mut ours, mut proxy) = tokio::io::duplex(4096);
        let answer = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            let n = proxy.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"CONNECT a.example.org:443 HTTP/1.1\r\n"));
            proxy
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let err = handshake(&mut ours, &dest).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the egress proxy refused a.example.org:443: 403 Forbidden"
        );
        answer.await.unwrap();
    }
}
