//! Where the server listens: TCP for local use and the parent-side proxy,
//! vsock inside the enclave (no socat in the image).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// A listen address: `tcp://HOST:PORT` or `vsock://PORT` (any CID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// Any CID, this port.
    Vsock {
        /// The vsock port.
        port: u32,
    },
}

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListenParseError {
    /// Neither `tcp://` nor `vsock://`.
    #[error("listen address {0:?} must start with tcp:// or vsock://")]
    Scheme(String),
    /// Not `IP:PORT`.
    #[error("{0:?} is not a TCP socket address (HOST:PORT with a numeric IP)")]
    Tcp(String),
    /// Not a usable port number.
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

/// Slowest a client may be to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past this the server stops accepting until
/// one closes, so a flood of idle sockets cannot exhaust descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// A bound listener, so callers learn the real address (port 0) before
/// serving.
pub enum Bound {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A vsock listener (inside the enclave).
    Vsock(VsockListener),
}

impl Bound {
    /// Binds the address.
    pub async fn bind(listen: Listen) -> std::io::Result<Self> {
        Ok(match listen {
            Listen::Tcp(addr) => Bound::Tcp(tokio::net::TcpListener::bind(addr).await?),
            Listen::Vsock { port } => {
                Bound::Vsock(VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?)
            }
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<Listen> {
        Ok(match self {
            Bound::Tcp(l) => Listen::Tcp(l.local_addr()?),
            Bound::Vsock(l) => Listen::Vsock {
                port: l.local_addr()?.port(),
            },
        })
    }

    /// Serves until `shutdown` resolves; then closes the listener (new
    /// connections are refused) and waits for in-flight requests to finish.
    pub async fn serve(self, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
        match self {
            Bound::Tcp(l) => serve_on(l, router, shutdown).await,
            Bound::Vsock(l) => serve_on(l, router, shutdown).await,
        }
    }
}

/// The accept loop. Hand-written instead of `axum::serve` because that one
/// has no header-read timeout and no connection limit (slowloris-style
/// clients would hold the server's sockets forever).
async fn serve_on<L>(mut listener: L, router: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    L::Io: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = async {
                // The semaphore is never closed, so acquiring cannot fail.
                let permit = Arc::clone(&slots).acquire_owned().await.ok()?;
                let (io, _) = listener.accept().await;
                Some((permit, io))
            } => accepted,
        };
        let Some((permit, io)) = accepted else { break };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => skip_report::skipped(
                "vsock bind",
                &format!("kernel has no AF_VSOCK support ({e})"),
            ),
            Err(e) => panic!("vsock bind failed: {e}"),
        }
    }
}
