//! The accept loop: connection cap, one log line per connection, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::relay::{relay, Limits, Report};
use crate::upstream::Upstream;

/// Everything the proxy needs besides its listener.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where every connection goes.
    pub upstream: Upstream,
    /// Connections relayed at once; past this, new ones are closed at once.
    pub max_connections: u32,
    /// Per-connection deadlines.
    pub limits: Limits,
    /// On shutdown, how long open connections may go on before they are cut.
    pub drain_timeout: Duration,
}

/// A `tcp://IP:PORT` listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("listen address {0:?} must be tcp://IP:PORT (a numeric IP, e.g. tcp://0.0.0.0:3000)")]
pub struct ListenParseError(String);

impl FromStr for ListenAddr {
    type Err = ListenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("tcp://")
            .and_then(|a| a.parse().ok())
            .map(ListenAddr)
            .ok_or_else(|| ListenParseError(s.to_owned()))
    }
}

/// How the proxy stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections still open at the drain deadline, cut then.
    pub cut: usize,
}

/// Relays every connection accepted on `listener` until `shutdown`
/// resolves; then stops accepting and lets open connections finish within
/// the drain timeout.
pub async fn serve(
    listener: TcpListener,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let config = Arc::new(config);
    let max = config.max_connections;
    let slots = Arc::new(Semaphore::new(max as usize));
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Closed before reading anything: the client learns at once
            // instead of waiting in a queue it cannot see.
            drop(stream);
            tracing::warn!(
                conn = id,
                %peer,
                to_upstream = 0,
                to_client = 0,
                duration_ms = 0,
                end = %format_args!("refused: {max} connections open (--max-connections)"),
                "connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = Arc::clone(&config);
        let mut cut = cut_rx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let cut = async move {
                // An error means the sender is gone: the proxy is exiting.
                let _ = cut.wait_for(|c| *c).await;
            };
            let report = relay(stream, &config.upstream, &config.limits, cut).await;
            log(id, peer, started, &report);
            drop(permit);
        });
    }
    drop(listener);
    let open = max as usize - slots.available_permits();
    tracing::info!(
        open,
        drain_timeout_secs = config.drain_timeout.as_secs(),
        "draining: no new connections, waiting for open ones"
    );
    let all_closed = Arc::clone(&slots).acquire_many_owned(max);
    if tokio::time::timeout(config.drain_timeout, all_closed)
        .await
        .is_ok()
    {
        return Stopped { cut: 0 };
    }
    let cut = max as usize - slots.available_permits();
    let _ = cut_tx.send(true);
    // Long enough for the cut connections to write their log lines.
    let _ = tokio::time::timeout(Duration::from_secs(2), slots.acquire_many(max)).await;
    Stopped { cut }
}

fn log(id: u64, peer: SocketAddr, started: Instant, report: &Report) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                conn = id,
                %peer,
                to_upstream = report.to_upstream,
                to_client = report.to_client,
                duration_ms,
                end = %report.end,
                "connection"
            )
        };
    }
    if report.end.is_normal() {
        line!(info);
    } else {
        line!(warn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "tcp://127.0.0.1:3000".parse(),
            Ok(ListenAddr("127.0.0.1:3000".parse().expect("addr")))
        );
        assert!("tcp://[::]:0".parse::<ListenAddr>().is_ok());
        for bad in [
            "127.0.0.1:3000",
            "tcp://localhost:3000",
            "vsock://3000",
            "tcp://1.2.3.4",
        ] {
            let err = bad.parse::<ListenAddr>().expect_err(bad);
            assert!(err.to_string().contains(bad));
        }
    }
}
