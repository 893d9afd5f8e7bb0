//! The accept loop: connection cap, per-source shares, the PROXY header,
//! one log line per connection (under a budget), drain.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::log_budget::LogBudget;
use crate::relay::{relay_with_preamble, Limits, Report};
use crate::sources::{Refusal, SourceLimits, Sources};
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
    /// What one client address may hold and open.
    pub per_source: SourceLimits,
    /// Connection log lines per second (five seconds' worth in a burst);
    /// past it they are counted and summed up once a second.
    pub log_lines_per_sec: u32,
    /// Send a PROXY protocol v2 header with the client's address first on
    /// every upstream connection, so the server can tell clients apart.
    pub proxy_protocol: bool,
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
    let sources = Sources::new(config.per_source);
    let budget = Arc::new(LogBudget::new(config.log_lines_per_sec));
    let summaries = tokio::spawn(summarise_suppressed(Arc::clone(&budget)));
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
                if budget.allow("accept failed") {
                    tracing::warn!(error = %e, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        // The source's share first: a flood from one address is refused on
        // its own bucket without touching the slots everyone shares.
        let admitted = sources.admit(peer.ip()).and_then(|a| {
            Arc::clone(&slots)
                .try_acquire_owned()
                .map(|p| (a, p))
                .map_err(|_| Refusal::Full)
        });
        let (share, permit) = match admitted {
            Ok(held) => held,
            Err(refusal) => {
                // Closed before reading anything: the client learns at once
                // instead of waiting in a queue it cannot see.
                drop(stream);
                log_refusal(&budget, id, peer, refusal, &config);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let preamble = if config.proxy_protocol {
            stream
                .local_addr()
                .ok()
                .and_then(|local| proxy_header(peer, local))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let config = Arc::clone(&config);
        let budget = Arc::clone(&budget);
        let mut cut = cut_rx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let cut = async move {
                // An error means the sender is gone: the proxy is exiting.
                let _ = cut.wait_for(|c| *c).await;
            };
            let report =
                relay_with_preamble(stream, &config.upstream, &preamble, &config.limits, cut).await;
            if budget.allow(report.end.kind()) {
                log(id, peer, started, &report);
            }
            drop(permit);
            drop(share);
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
    summaries.abort();
    Stopped { cut }
}

/// The PROXY protocol v2 header for one client connection: `peer` is the
/// client, `local` the address it connected to. None only if the builder
/// fails, which it does not for plain addresses.
pub fn proxy_header(peer: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    // An IPv4 client on an IPv6 listener shows up v4-mapped; both sides of
    // the header must be one family.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (peer, local) = match (canonical(peer), canonical(local)) {
        (p @ SocketAddr::V4(_), l @ SocketAddr::V6(_)) => (
            p,
            SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), l.port()),
        ),
        pair => pair,
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (peer, local),
    )
    .build()
    .ok()
}

/// Once a second, one line for the connection lines the budget turned away.
async fn summarise_suppressed(budget: Arc<LogBudget>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some((total, by_kind)) = budget.take_suppressed() {
            tracing::warn!(
                suppressed = total,
                by_end = %by_kind,
                "connection lines over --log-lines-per-sec, counted instead"
            );
        }
    }
}

fn log_refusal(
    budget: &LogBudget,
    id: u64,
    peer: SocketAddr,
    refusal: Refusal,
    config: &ProxyConfig,
) {
    let kind = match refusal {
        Refusal::Full => "refused: proxy full",
        Refusal::SourceCap => "refused: source cap",
        Refusal::SourceRate => "refused: source rate",
    };
    if !budget.allow(kind) {
        return;
    }
    let why = match refusal {
        Refusal::Full => format!(
            "refused: {} connections open (--max-connections)",
            config.max_connections
        ),
        Refusal::SourceCap => format!(
            "refused: {} connections open from this source (--max-connections-per-source)",
            config.per_source.max_connections
        ),
        Refusal::SourceRate => format!(
            "refused: over {} new connections/s from this source (--max-accepts-per-source-per-sec)",
            config.per_source.accepts_per_sec
        ),
    };
    tracing::warn!(
        conn = id,
        %peer,
        to_upstream = 0,
        to_client = 0,
        duration_ms = 0,
        end = %why,
        "connection"
    );
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
