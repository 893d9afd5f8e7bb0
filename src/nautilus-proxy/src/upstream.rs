//! Where connections are relayed to, and how to open one connection there.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_vsock::{VsockAddr, VsockStream};

/// The one upstream every accepted connection is relayed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `vsock://CID:PORT`: the enclave, from the parent instance.
    Vsock {
        /// The enclave's context id (3 or more).
        cid: u32,
        /// The vsock port the server listens on.
        port: u32,
    },
    /// `tcp://HOST:PORT`: a server reachable over TCP (local tests, a dev server).
    Tcp {
        /// A host name or IP address.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// `unix:PATH#PORT`: hybrid vsock as Firecracker and `vhost-device-vsock`
    /// expose a guest's vsock to the host: a Unix socket on which each
    /// connection first says `CONNECT <port>\n` and gets `OK <n>\n` back.
    Unix {
        /// The host-side Unix socket.
        path: PathBuf,
        /// The guest's vsock port.
        port: u32,
    },
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamParseError {
    /// None of the known schemes.
    #[error("upstream {0:?} must be vsock://CID:PORT, tcp://HOST:PORT or unix:PATH#PORT")]
    Scheme(String),
    /// `vsock://` without two numbers.
    #[error("vsock upstream {0:?} must be vsock://CID:PORT with a numeric CID and port")]
    Vsock(String),
    /// A CID no enclave can have.
    #[error(
        "vsock CID {0} is not an enclave's: 0, 1 and 2 are the hypervisor, the local machine and \
         the host, 4294967295 means any; enclaves have CID 3 or more"
    )]
    ReservedCid(u32),
    /// `tcp://` without `HOST:PORT`.
    #[error("tcp upstream {0:?} must be tcp://HOST:PORT with a port from 1 to 65535")]
    Tcp(String),
    /// `unix:` without `PATH#PORT`.
    #[error(
        "unix upstream {0:?} must be unix:PATH#PORT (the hybrid-vsock Unix socket, then the \
         guest's vsock port)"
    )]
    Unix(String),
    /// 4294967295 is `VMADDR_PORT_ANY`, not a port anything listens on.
    #[error("vsock port {0} is not a port one can connect to")]
    Port(u32),
}

/// `VMADDR_CID_ANY` and `VMADDR_PORT_ANY`.
const ANY: u32 = u32::MAX;
/// CIDs 0 (hypervisor), 1 (local) and 2 (host) are never an enclave.
const FIRST_GUEST_CID: u32 = 3;

fn vsock_port(
    s: &str,
    whole: &str,
    err: fn(String) -> UpstreamParseError,
) -> Result<u32, UpstreamParseError> {
    let port: u32 = s.parse().map_err(|_| err(whole.to_owned()))?;
    if port == ANY {
        return Err(UpstreamParseError::Port(port));
    }
    Ok(port)
}

impl FromStr for Upstream {
    type Err = UpstreamParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| UpstreamParseError::Vsock(s.to_owned()))?;
            let cid: u32 = cid
                .parse()
                .map_err(|_| UpstreamParseError::Vsock(s.to_owned()))?;
            if cid < FIRST_GUEST_CID || cid == ANY {
                return Err(UpstreamParseError::ReservedCid(cid));
            }
            let port = vsock_port(port, s, UpstreamParseError::Vsock)?;
            Ok(Upstream::Vsock { cid, port })
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            let bad = || UpstreamParseError::Tcp(s.to_owned());
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            // `[::1]` is how an IPv6 address carries a port; keep the brackets
            // out of the host so the resolver sees the bare address.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() || port == 0 || host.contains(['/', '?', '#', '@']) {
                return Err(bad());
            }
            Ok(Upstream::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(rest) = s.strip_prefix("unix:") {
            let (path, port) = rest
                .rsplit_once('#')
                .ok_or_else(|| UpstreamParseError::Unix(s.to_owned()))?;
            if path.is_empty() {
                return Err(UpstreamParseError::Unix(s.to_owned()));
            }
            let port = vsock_port(port, s, UpstreamParseError::Unix)?;
            Ok(Upstream::Unix {
                path: PathBuf::from(path),
                port,
            })
        } else {
            Err(UpstreamParseError::Scheme(s.to_owned()))
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Upstream::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Upstream::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Upstream::Unix { path, port } => write!(f, "unix:{}#{port}", path.display()),
        }
    }
}

/// Any byte stream the relay can use.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// An open upstream connection, whatever its transport.
pub type BoxStream = Box<dyn Stream>;

/// Why no upstream connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting (and, for hybrid vsock, the handshake) took too long.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The transport refused.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The hybrid-vsock handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// Why a hybrid-vsock `CONNECT` was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket closed before answering: nothing listens on that port in the guest.
    #[error("hybrid vsock closed the connection after CONNECT {0} (is anything listening on that port in the guest?)")]
    Closed(u32),
    /// Anything but `OK <number>`.
    #[error("hybrid vsock answered {reply:?} to CONNECT {port}, expected \"OK <port>\"")]
    Refused {
        /// The vsock port asked for.
        port: u32,
        /// What came back, lossily decoded.
        reply: String,
    },
    /// Reading or writing the handshake failed.
    #[error("hybrid vsock handshake: {0}")]
    Io(#[from] io::Error),
}

/// Longest answer accepted: `OK ` and a 10-digit port and `\n` fit easily.
const MAX_REPLY: usize = 32;

/// The client side of the hybrid-vsock handshake.
///
/// Reads the reply one byte at a time: whatever the guest sends after the
/// newline is relay data and must stay in the socket.
pub async fn hybrid_handshake<S>(stream: &mut S, port: u32) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut reply = Vec::with_capacity(MAX_REPLY);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && reply.is_empty() => {
                return Err(HandshakeError::Closed(port))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        if byte == b'\n' {
            let ok = reply
                .strip_prefix(b"OK ")
                .and_then(|n| std::str::from_utf8(n).ok())
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if ok {
                return Ok(());
            }
            break;
        }
        reply.push(byte);
        if reply.len() >= MAX_REPLY {
            break;
        }
    }
    Err(HandshakeError::Refused {
        port,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })
}

impl Upstream {
    /// Opens one connection, handshake included, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<BoxStream, ConnectError> {
        tokio::time::timeout(timeout, self.connect_now())
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn connect_now(&self) -> Result<BoxStream, ConnectError> {
        Ok(match self {
            Upstream::Vsock { cid, port } => {
                Box::new(VsockStream::connect(VsockAddr::new(*cid, *port)).await?)
            }
            Upstream::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // Requests and responses are small and latency-bound.
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Upstream::Unix { path, port } => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                hybrid_handshake(&mut stream, *port).await?;
                Box::new(stream)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_and_print_back() {
        for s in [
            "vsock://16:3000",
            "vsock://3:1",
            "tcp://127.0.0.1:3000",
            "tcp://[::1]:8080",
            "tcp://localhost:3000",
            "unix:/tmp/vm.sock#3000",
            "unix:relative/v.sock#5",
        ] {
            let u: Upstream = s.parse().expect(s);
            assert_eq!(u.to_string(), s);
        }
        assert_eq!(
            "vsock://16:3000".parse(),
            Ok(Upstream::Vsock {
                cid: 16,
                port: 3000
            })
        );
        assert_eq!(
            "unix:/a#b#7".parse(),
            Ok(Upstream::Unix {
                path: "/a#b".into(),
                port: 7
            })
        );
    }

    #[test]
    fn reserved_cids_are_refused_with_the_reason() {
        for cid in [0, 1, 2, u32::MAX] {
            let err = format!("vsock://{cid}:3000")
                .parse::<Upstream>()
                .unwrap_err();
            assert_eq!(err, UpstreamParseError::ReservedCid(cid));
            assert!(err.to_string().contains("enclaves have CID 3 or more"));
        }
    }

    #[test]
    fn malformed_upstreams_are_refused() {
        for bad in [
            "",
            "16:3000",
            "http://127.0.0.1:3000",
            "vsock://16",
            "vsock://16:",
            "vsock://x:3000",
            "vsock://16:-1",
            "vsock://16:4294967295",
            "vsock://-3:3000",
            "tcp://127.0.0.1",
            "tcp://:3000",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:65536",
            "tcp://h/x:3000",
            "unix:/tmp/vm.sock",
            "unix:#3000",
            "unix:/tmp/vm.sock#",
            "unix:/tmp/vm.sock#4294967295",
        ] {
            let err = bad.parse::<Upstream>().expect_err(bad);
            assert!(err.to_string().contains(bad) || matches!(err, UpstreamParseError::Port(_)));
        }
    }

    async fn handshake_against(reply: &'static [u8]) -> Result<Vec<u8>, HandshakeError> {
        let (mut ours, mut theirs) = tokio::io::duplex(256);
        let guest = tokio::spawn(async move {
            let mut line = [0u8; 13];
            theirs.read_exact(&mut line).await.expect("CONNECT line");
            assert_eq!(&line, b"CONNECT 3000\n");
            let _ = theirs.write_all(reply).await;
            // Dropping our end is the guest closing its socket.
        });
        hybrid_handshake(&mut ours, 3000).await?;
        guest.await.expect("guest");
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.expect("rest");
        Ok(rest)
    }

    #[tokio::test]
    async fn handshake_leaves_data_after_ok_in_the_stream() {
        let rest = handshake_against(b"OK 1073741824\nHTTP/1.1 200")
            .await
            .expect("ok");
        assert_eq!(rest, b"HTTP/1.1 200");
    }

    #[tokio::test]
    async fn handshake_refusals_say_what_came_back() {
        for (reply, want) in [
            (&b""[..], "closed the connection after CONNECT 3000"),
            (b"ERR no listener\n", "\"ERR no listener\""),
            (b"OK\n", "\"OK\""),
            (b"OK x\n", "\"OK x\""),
            (b"OK 12", "\"OK 12\""),
            (b"OOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOO", "expected"),
        ] {
            let err = handshake_against(reply).await.expect_err("refused");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }
}
