//! Where the server listens: TCP for local use and the parent-side proxy,
//! vsock inside the enclave (no socat in the image).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::Router;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// A listen address: `tcp://HOST:PORT` or `vsock://PORT` (any CID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Vsock { port: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum ListenParseError {
    #[error("listen address {0:?} must start with tcp:// or vsock://")]
    Scheme(String),
    #[error("{0:?} is not a TCP socket address (HOST:PORT with a numeric IP)")]
    Tcp(String),
    #[error("{0:?} is not a vsock port (a number below 2^32-1)")]
    VsockPort(String),
}

impl FromStr for Listen {
    type Err = ListenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            let addr = addr
                .parse()
                .map_err(|_| ListenParseError::Tcp(addr.to_owned()))?;
            Ok(Listen::Tcp(addr))
        } else if let Some(port) = s.strip_prefix("vsock://") {
            // u32::MAX is VMADDR_PORT_ANY, not a port one can be reached on.
            match port.parse::<u32>() {
                Ok(p) if p != u32::MAX => Ok(Listen::Vsock { port: p }),
                _ => Err(ListenParseError::VsockPort(port.to_owned())),
            }
        } else {
            Err(ListenParseError::Scheme(s.to_owned()))
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "tcp://{a}"),
            Listen::Vsock { port } => write!(f, "vsock://{port}"),
        }
    }
}

/// A bound listener, so callers learn the real address (port 0) before
/// serving.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Vsock(VsockListener),
}

impl Bound {
    pub async fn bind(listen: Listen) -> std::io::Result<Self> {
        Ok(match listen {
            Listen::Tcp(addr) => Bound::Tcp(tokio::net::TcpListener::bind(addr).await?),
            Listen::Vsock { port } => {
                Bound::Vsock(VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?)
            }
        })
    }

    pub fn local_addr(&self) -> std::io::Result<Listen> {
        Ok(match self {
            Bound::Tcp(l) => Listen::Tcp(l.local_addr()?),
            Bound::Vsock(l) => Listen::Vsock {
                port: l.local_addr()?.port(),
            },
        })
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => {
                axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Bound::Vsock(l) => {
                axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_print_back() {
        for s in ["tcp://127.0.0.1:3000", "tcp://[::1]:8080", "vsock://3000"] {
            let l: Listen = s.parse().expect(s);
            assert_eq!(l.to_string(), s);
        }
        for bad in [
            "127.0.0.1:3000",
            "http://127.0.0.1:3000",
            "tcp://localhost:3000",
            "tcp://127.0.0.1",
            "vsock://",
            "vsock://-1",
            "vsock://4294967295",
            "vsock://3:5000",
        ] {
            assert!(bad.parse::<Listen>().is_err(), "{bad} accepted");
        }
    }

    /// Binding is all this machine allows: nothing can connect to a vsock
    /// listener locally (the boot test in a VM covers real traffic).
    #[tokio::test]
    async fn vsock_listener_binds_and_reports_its_port() {
        match Bound::bind(Listen::Vsock { port: 47_123 }).await {
            Ok(bound) => assert_eq!(
                bound.local_addr().expect("local addr"),
                Listen::Vsock { port: 47_123 }
            ),
            // A kernel without the vsock transport loaded cannot even create
            // the socket; say so instead of pretending it was tested.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                eprintln!("SKIPPED vsock bind: kernel has no AF_VSOCK support ({e})")
            }
            Err(e) => panic!("vsock bind failed: {e}"),
        }
    }
}
