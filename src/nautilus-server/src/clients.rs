//! Who a client is, and its share of the server: connections, requests in
//! flight, and a turn in a task queue served round robin between clients,
//! so one client's flood costs the others at most their share.
//!
//! A client is its address: from the PROXY protocol v2 header when the
//! server sits behind `nautilus-proxy` (inside the enclave every connection
//! comes from the parent), else the TCP peer; IPv6 cut to its /64. Over
//! vsock without a header all connections are one client.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

pub use crate::config::ClientShares as Shares;

/// A client's identity for every per-client limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// Every connection whose address is unknown (vsock without a PROXY
    /// header, handlers called directly).
    pub const UNKNOWN: ClientKey = ClientKey(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => ClientKey(IpAddr::V6((u128::from(v6) & !((1 << 64) - 1)).into())),
            v4 => ClientKey(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a PROXY protocol header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed or failed before the header was complete.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY protocol v2 header (the server was told to expect one).
    #[error("the connection did not start with a PROXY protocol v2 header")]
    Missing,
    /// A v2 signature with a header that does not parse.
    #[error("bad PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// The fixed part of a v2 header: signature, version/command, family,
/// length.
const V2_FIXED: usize = 16;
/// Largest v2 header accepted: the addresses plus a few TLVs. `nautilus-proxy`
/// sends none; others may send a few dozen bytes.
const V2_MAX: usize = 1024;

/// Reads a PROXY protocol v2 header, and nothing after it, from `io`: the
/// client's address (None for a `LOCAL` header, which health checkers of a
/// load balancer send, or an address family without IPs).
pub async fn read_proxy_header<I: AsyncRead + Unpin>(
    io: &mut I,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; V2_FIXED];
    io.read_exact(&mut buf).await?;
    if !buf.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(ProxyHeaderError::Missing);
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(ProxyHeaderError::Invalid(format!(
            "{len} bytes of addresses, at most {V2_MAX}"
        )));
    }
    buf.resize(V2_FIXED + len, 0);
    io.read_exact(&mut buf[V2_FIXED..]).await?;
    let header = ppp::v2::Header::try_from(buf.as_slice())
        .map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    })
}

#[derive(Debug, Default)]
struct Held {
    connections: usize,
    requests: usize,
}

/// The shares every client holds now.
#[derive(Debug)]
pub struct Clients {
    shares: Shares,
    held: Mutex<HashMap<ClientKey, Held>>,
}

/// Which share a client is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverShare {
    /// Its connections.
    Connections(usize),
    /// Its requests in flight.
    Requests(usize),
    /// Its queued tasks.
    QueuedTasks(usize),
}

impl std::fmt::Display for OverShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverShare::Connections(n) => write!(f, "{n} connections open (its share)"),
            OverShare::Requests(n) => write!(f, "{n} requests in flight (its share)"),
            OverShare::QueuedTasks(n) => write!(f, "{n} tasks queued (its share)"),
        }
    }
}

impl From<OverShare> for crate::error::EnclaveError {
    fn from(o: OverShare) -> Self {
        crate::error::EnclaveError::OverShare(o.to_string())
    }
}

impl From<QueueRefusal> for crate::error::EnclaveError {
    fn from(r: QueueRefusal) -> Self {
        match r {
            QueueRefusal::Full => crate::error::EnclaveError::QueueFull,
            QueueRefusal::OverShare(o) => o.into(),
        }
    }
}

/// One connection or request counted against its client; released on drop.
#[derive(Debug)]
pub struct Share {
    clients: Arc<Clients>,
    key: ClientKey,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Request,
}

impl Clients {
    /// No client holds anything yet.
    pub fn new(shares: Shares) -> Arc<Self> {
        Arc::new(Self {
            shares,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The shares in force.
    pub fn shares(&self) -> Shares {
        self.shares
    }

    /// Counts one more connection of `key`, unless it holds its share.
    pub fn connection(self: &Arc<Self>, key: ClientKey) -> Result<Share, OverShare> {
        self.take(key, Kind::Connection)
    }

    /// Counts one more request in flight of `key`, unless it holds its share.
    pub fn request(self: &Arc<Self>, key: ClientKey) -> Result<Share, OverShare> {
        self.take(key, Kind::Request)
    }

    fn take(self: &Arc<Self>, key: ClientKey, kind: Kind) -> Result<Share, OverShare> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let h = held.entry(key).or_default();
        let (n, max, over) = match kind {
            Kind::Connection => (
                &mut h.connections,
                self.shares.connections,
                OverShare::Connections(self.shares.connections),
            ),
            Kind::Request => (
                &mut h.requests,
                self.shares.requests,
                OverShare::Requests(self.shares.requests),
            ),
        };
        if *n >= max {
            return Err(over);
        }
        *n += 1;
        Ok(Share {
            clients: Arc::clone(self),
            key,
            kind,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .clients
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = held.get_mut(&self.key) {
            match self.kind {
                Kind::Connection => h.connections = h.connections.saturating_sub(1),
                Kind::Request => h.requests = h.requests.saturating_sub(1),
            }
            if h.connections == 0 && h.requests == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Turns to run a task, handed out round robin between clients: each
/// client waits in its own line, and when a turn frees up the next client in
/// the rotation gets it, however many tasks another client has queued.
#[derive(Debug)]
pub struct FairQueue {
    inner: Mutex<Queue>,
    abandoned: std::sync::atomic::AtomicU64,
    max_queued: usize,
    per_client: usize,
}

#[derive(Debug)]
struct Queue {
    free: usize,
    queued: usize,
    lines: HashMap<ClientKey, VecDeque<oneshot::Sender<()>>>,
    rotation: VecDeque<ClientKey>,
}

/// Why no turn was queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// Every place in the queue is taken: the server is full (503).
    Full,
    /// This client has its share of the queue already (429).
    OverShare(OverShare),
}

/// A turn to run one task; the next waiting client gets it on drop.
#[derive(Debug)]
pub struct Turn(Arc<FairQueue>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in a client's line; if it is dropped after a turn was handed to
/// it but before it was taken, the turn goes on to the next client.
struct Waiting {
    queue: Arc<FairQueue>,
    key: ClientKey,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.queue.release();
            } else {
                self.queue.leave(self.key);
            }
        }
    }
}

impl FairQueue {
    /// `turns` tasks at once, `max_queued` waiting in all, `per_client`
    /// waiting per client.
    pub fn new(turns: usize, max_queued: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Queue {
                free: turns,
                queued: 0,
                lines: HashMap::new(),
                rotation: VecDeque::new(),
            }),
            max_queued,
            per_client,
            abandoned: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Waits for `key`'s turn, or refuses at once when the queue or the
    /// client's share of it is full.
    pub async fn turn(self: &Arc<Self>, key: ClientKey) -> Result<Turn, QueueRefusal> {
        let rx = {
            let mut q = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if q.free > 0 && q.queued == 0 {
                q.free -= 1;
                return Ok(Turn(Arc::clone(self)));
            }
            let line_len = q.lines.get(&key).map_or(0, VecDeque::len);
            if line_len >= self.per_client {
                return Err(QueueRefusal::OverShare(OverShare::QueuedTasks(
                    self.per_client,
                )));
            }
            if q.queued >= self.max_queued {
                return Err(QueueRefusal::Full);
            }
            let (tx, rx) = oneshot::channel();
            if line_len == 0 {
                q.rotation.push_back(key);
            }
            q.lines.entry(key).or_default().push_back(tx);
            q.queued += 1;
            rx
        };
        let mut waiting = Waiting {
            queue: Arc::clone(self),
            key,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set just above");
        // The sender is only dropped after a send: a turn was handed over.
        let _ = rx.await;
        waiting.rx = None;
        Ok(Turn(Arc::clone(self)))
    }

    /// A turn came back: hand it to the next client in the rotation whose
    /// waiter is still there.
    fn release(&self) {
        let mut q = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        q.free += 1;
        while q.free > 0 {
            let Some(key) = q.rotation.pop_front() else {
                break;
            };
            let Some(line) = q.lines.get_mut(&key) else {
                continue;
            };
            let Some(tx) = line.pop_front() else {
                q.lines.remove(&key);
                continue;
            };
            let more = !line.is_empty();
            if more {
                q.rotation.push_back(key);
            } else {
                q.lines.remove(&key);
            }
            q.queued -= 1;
            if tx.send(()).is_ok() {
                q.free -= 1;
            }
        }
    }

    /// A waiter of `key` went away before its turn: its place is freed now,
    /// not when its turn would have come.
    fn leave(&self, key: ClientKey) {
        self.abandoned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut q = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(line) = q.lines.get_mut(&key) else {
            return;
        };
        let before = line.len();
        line.retain(|tx| !tx.is_closed());
        let left = before - line.len();
        if line.is_empty() {
            q.lines.remove(&key);
            q.rotation.retain(|k| *k != key);
        }
        q.queued -= left;
    }

    /// Waiters that went away before their turn.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tasks waiting for a turn.
    pub fn queued(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> ClientKey {
        ClientKey::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn ipv6_clients_are_their_64() {
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::ffff:2".parse().expect("ip");
        assert_eq!(ClientKey::from(a), ClientKey::from(b));
    }

    #[test]
    fn a_client_gets_its_share_and_others_theirs() {
        let c = Clients::new(Shares {
            connections: 1,
            requests: 2,
            queued_tasks: 1,
        });
        let a = c.connection(key(1)).expect("first");
        assert_eq!(c.connection(key(1)).unwrap_err(), OverShare::Connections(1));
        let _b = c.connection(key(2)).expect("another client");
        drop(a);
        let _a = c.connection(key(1)).expect("freed");
        let _r1 = c.request(key(1)).expect("r1");
        let _r2 = c.request(key(1)).expect("r2");
        assert_eq!(c.request(key(1)).unwrap_err(), OverShare::Requests(2));
    }

    #[tokio::test]
    async fn turns_go_round_robin_between_clients() {
        let q = FairQueue::new(1, 100, 100);
        let first = q.turn(key(1)).await.expect("free turn");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = tokio::task::JoinSet::new();
        // Client 1 queues five, then client 2 one: 2 must not wait for all five.
        for (i, k) in [1, 1, 1, 1, 1, 2].into_iter().enumerate() {
            let queue = Arc::clone(&q);
            let order = Arc::clone(&order);
            waiters.spawn(async move {
                let turn = queue.turn(key(k)).await.expect("queued");
                order.lock().expect("lock").push(k);
                drop(turn);
            });
            // Queue in this order.
            while q.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        while waiters.join_next().await.is_some() {}
        let order = order.lock().expect("lock").clone();
        assert_eq!(order[..2], [1, 2], "{order:?}");
    }

    #[tokio::test]
    async fn a_clients_queue_share_and_the_whole_queue_are_bounded() {
        let q = FairQueue::new(1, 3, 2);
        let _t = q.turn(key(1)).await.expect("free");
        let q1 = Arc::clone(&q);
        let a = tokio::spawn(async move { q1.turn(key(1)).await.map(drop) });
        let q2 = Arc::clone(&q);
        let b = tokio::spawn(async move { q2.turn(key(1)).await.map(drop) });
        while q.queued() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            q.turn(key(1)).await.unwrap_err(),
            QueueRefusal::OverShare(OverShare::QueuedTasks(2))
        );
        let q3 = Arc::clone(&q);
        let c = tokio::spawn(async move { q3.turn(key(2)).await.map(drop) });
        while q.queued() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.turn(key(3)).await.unwrap_err(), QueueRefusal::Full);
        // A waiter that gives up leaves its place and takes no turn.
        a.abort();
        drop(_t);
        b.await.expect("b").expect("b's turn");
        c.await.expect("c").expect("c's turn");
        assert_eq!(q.queued(), 0);
        let _again = q.turn(key(4)).await.expect("the turn came back");
    }
}
