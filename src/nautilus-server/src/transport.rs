//! Where the server listens: TCP for local use and the parent-side proxy,
//! vsock inside the enclave (no socat in the image); with TLS, each
//! accepted stream is wrapped in it before HTTP sees a byte.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use tower::ServiceExt;

use crate::clients::{read_proxy_header, ClientKey};
use crate::config::Channel;
pub use crate::config::HttpLimits;
use crate::router::router;
use crate::state::AppState;

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

/// HTTP/1 read buffer, and so the largest request head (larger: 431).
const H1_MAX_BUF: usize = 64 * 1024;
/// Largest HTTP/2 header block (larger: the stream is refused).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Response bytes queued per HTTP/2 stream before the body waits.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

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

    /// Serves the application until `shutdown` resolves; then closes the
    /// listener (new connections are refused), asks every connection to
    /// close and waits for in-flight requests to finish.
    pub async fn serve(
        self,
        state: Arc<AppState>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        match self {
            Bound::Tcp(l) => serve_on(l, state, shutdown).await,
            Bound::Vsock(l) => serve_on(l, state, shutdown).await,
        }
    }
}

/// What the accept loop needs of a listener. Not axum's `Listener`: that one
/// retries errors by itself (tokio-vsock's silently), so they could not be
/// counted.
trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static;
    /// The `transport` label of this listener's metrics.
    const NAME: &'static str;
    /// A connection and its peer's IP address, if it has one.
    fn accept(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(Self::Io, Option<std::net::IpAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    const NAME: &'static str = "tcp";
    async fn accept(&mut self) -> std::io::Result<(Self::Io, Option<std::net::IpAddr>)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Responses are written whole; waiting to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer.ip())))
    }
}

impl Accept for VsockListener {
    type Io = tokio_vsock::VsockStream;
    const NAME: &'static str = "vsock";
    async fn accept(&mut self) -> std::io::Result<(Self::Io, Option<std::net::IpAddr>)> {
        // A CID says nothing about the client behind the parent's proxy.
        Ok((VsockListener::accept(self).await?.0, None))
    }
}

/// A second handle on a connection's socket that wakes only on a socket
/// error: a reset peer. hyper does not read while a request is in progress
/// (so that a half-close (FIN) still gets its answer), so without this a
/// reset client's run would go on to the end.
fn reset_watch(
    io: &impl std::os::fd::AsFd,
) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = io.as_fd().try_clone_to_owned().ok()?;
    // SAFETY: an OwnedFd stays open and is the same descriptor until the
    // AsyncFd that owns it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::ERROR) }.ok()
}

/// Resolves once the peer has reset the connection.
async fn peer_reset(watch: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    match watch {
        Some(fd) => {
            let _ = fd.ready(tokio::io::Interest::ERROR).await;
        }
        None => std::future::pending().await,
    }
}

/// Who is on the other end of `io`: from its PROXY header when the server
/// expects one (read within the idle deadline, before any TLS or HTTP byte),
/// else its peer address. None: the connection is to be closed.
async fn identify<I: AsyncRead + Unpin>(
    io: &mut I,
    peer: Option<std::net::IpAddr>,
    limits: &HttpLimits,
) -> Option<ClientKey> {
    let from_peer = peer.map_or(ClientKey::UNKNOWN, ClientKey::from);
    if !limits.proxy_protocol {
        return Some(from_peer);
    }
    match tokio::time::timeout(limits.idle_timeout, read_proxy_header(io)).await {
        Ok(Ok(Some(addr))) => Some(ClientKey::from(addr.ip())),
        // LOCAL: the proxy itself (a health check), not a relayed client.
        Ok(Ok(None)) => Some(from_peer),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed");
            None
        }
        Err(_) => None,
    }
}

/// After an accept error that is about the server (out of descriptors or
/// memory) rather than one connection, wait this long before the next try:
/// accepting again at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

fn accept_error_is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// The accept loop. Hand-written instead of `axum::serve`, which has no
/// deadlines, no connection limit and no accept-error accounting.
async fn serve_on<L: Accept>(
    mut listener: L,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = state.config().http.clone();
    let builder = Arc::new(http_builder(&limits, state.config().max_body_bytes));
    let app = router(Arc::clone(&state));
    let tls = state
        .tls()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config()));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let idle_set = Arc::new(IdleSet::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (mut io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                state.metrics.accept_error(L::NAME);
                tracing::warn!(transport = L::NAME, error = %e, "accept failed");
                if !accept_error_is_per_connection(&e) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // At the cap, a client is waiting (this one): make room by closing
        // the connection idle the longest, so keep-alive connections that
        // send a cheap request now and then cannot hold every slot. With
        // none idle, this client waits for a slot as the backlog does.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                idle_set.evict_longest_idle();
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    // The semaphore is never closed, so acquiring cannot fail.
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let connection = Connection {
            builder: Arc::clone(&builder),
            app: app.clone(),
            tls: tls.clone(),
            state: Arc::clone(&state),
            limits: limits.clone(),
            stop: stop_rx.clone(),
            idle_set: Arc::clone(&idle_set),
        };
        tokio::spawn(async move {
            let Some(client) = identify(&mut io, peer, &connection.limits).await else {
                connection.state.metrics.connection_closed("proxy_header");
                return;
            };
            let Ok(share) = connection.state.clients.connection(client) else {
                // Closed before a byte is read: its other connections go on.
                connection.state.metrics.connection_closed("client_share");
                return;
            };
            let watch = reset_watch(&io);
            connection.serve(io, client, watch).await;
            drop(share);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is gone.
    let _ = slots.acquire_many(permits(limits.max_connections)).await;
}

fn permits(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn http_builder(limits: &HttpLimits, max_body: usize) -> auto::Builder<TokioExecutor> {
    // One body's worth of flow-control window per stream and per connection:
    // a client can have at most that much in flight unread, however many
    // streams it opens (at least the protocol's default window).
    let window = u32::try_from(max_body)
        .unwrap_or(u32::MAX)
        .clamp(65_535, (1 << 31) - 1);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // A client that sends its request and closes its sending half (as
        // `nc -N` does) still gets the answer, and its task is not abandoned.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .adaptive_window(false)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(limits.http2_keepalive)
        .keep_alive_timeout(limits.http2_keepalive);
    builder
}

/// One accepted connection and what it needs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    /// Set when the server terminates TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
    /// The server's idle connections, longest idle first to go at the cap.
    idle_set: Arc<IdleSet>,
}

impl Connection {
    async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        self,
        io: I,
        client: ClientKey,
        watch: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    ) {
        let metrics = &self.state.metrics;
        let _open = metrics.connection_opened();
        // Under TLS, so a client that reads nothing stalls the TLS writes too.
        let io = WriteDeadline::new(io, self.limits.write_timeout);
        let timed_out = io.timed_out.clone();
        let Some(acceptor) = self.tls.clone() else {
            let first_idle = self.limits.idle_timeout;
            return self
                .serve_http(io, Channel::Plain, first_idle, &timed_out, client, watch)
                .await;
        };
        // The handshake counts against the idle deadline: from accept to the
        // first request's headers is one idle timeout, with or without TLS.
        let accepted = tokio::time::Instant::now();
        let mut stop = self.stop.clone();
        let handshake = tokio::select! {
            done = tokio::time::timeout(self.limits.idle_timeout, acceptor.accept(io)) => done,
            _ = stop.wait_for(|s| *s) => return,
        };
        match handshake {
            Err(_) => metrics.connection_closed("idle"),
            Ok(Err(e)) => {
                metrics.connection_closed("tls_handshake");
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            Ok(Ok(tls)) => {
                let left = self.limits.idle_timeout.saturating_sub(accepted.elapsed());
                self.serve_http(tls, Channel::Tls, left, &timed_out, client, watch)
                    .await;
            }
        }
    }

    /// Serves HTTP on `io` until it closes, goes idle (the first request's
    /// headers must be complete within `first_idle`) or the server stops.
    async fn serve_http<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: I,
        channel: Channel,
        first_idle: Duration,
        timed_out: &Arc<AtomicBool>,
        client: ClientKey,
        watch: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    ) {
        let metrics = &self.state.metrics;
        let (activity, mut watch_activity) = watch::channel(Activity::default());
        let deliveries = Arc::new(Deliveries::default());
        let service = Tracked {
            app: self.app.clone(),
            channel,
            activity: Arc::new(activity),
            deliveries: Arc::clone(&deliveries),
            client,
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::pin!(conn);
        let mut stop = self.stop.clone();
        let entry = self.idle_set.join();
        let reason = tokio::select! {
            result = conn.as_mut() => {
                self.ended(result.err(), timed_out);
                return;
            }
            () = idle(&mut watch_activity, first_idle, self.limits.idle_timeout, &entry) => "idle",
            () = entry.evicted.notified() => "evicted",
            () = deliveries.stalled(self.limits.write_timeout) => "stalled",
            () = peer_reset(watch.as_ref()) => {
                // Dropping the connection drops its requests: their runs
                // are abandoned.
                metrics.connection_closed("reset");
                return;
            }
            _ = stop.wait_for(|s| *s) => "shutdown",
        };
        conn.as_mut().graceful_shutdown();
        if reason == "shutdown" {
            // Requests in flight finish (the runner's grace bounds them);
            // the binary bounds the whole drain.
            let result = conn.await;
            self.ended(result.err(), timed_out);
            return;
        }
        metrics.connection_closed(reason);
        if watch_activity.borrow().busy() && reason == "evicted" {
            // A request arrived as it was chosen: it gets the write timeout
            // to finish.
            if tokio::time::timeout(self.limits.write_timeout, conn)
                .await
                .is_err()
            {
                metrics.connection_closed("close_timeout");
            }
            return;
        }
        // Nothing is owed on an idle connection (no request in progress, no
        // response being delivered) and nothing can be delivered on a
        // stalled one: one poll writes what closing writes (HTTP/2's GOAWAY),
        // then the connection is dropped. Waiting for a graceful HTTP/2
        // close would wait for the answer to its ping, which a silent peer
        // never sends (it held the slot for the write timeout more).
        let _ = tokio::time::timeout(Duration::ZERO, conn).await;
    }

    fn ended(
        &self,
        error: Option<Box<dyn std::error::Error + Send + Sync>>,
        timed_out: &Arc<AtomicBool>,
    ) {
        if timed_out.load(Ordering::Relaxed) {
            self.state.metrics.connection_closed("write_timeout");
        }
        if let Some(e) = error {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Requests in progress on a connection, how many have started, and the
/// responses still being delivered.
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    in_flight: usize,
    started: u64,
    /// Response bodies not yet delivered in full.
    delivering: usize,
}

impl Activity {
    fn busy(&self) -> bool {
        self.in_flight > 0 || self.delivering > 0
    }
}

/// Resolves once the connection has had no request in progress and no
/// response being delivered for `timeout` (counting from the end of the
/// last), or, before its first request, for `first`.
async fn idle(
    activity: &mut watch::Receiver<Activity>,
    first: Duration,
    timeout: Duration,
    entry: &IdleEntry,
) {
    let mut timeout_now = first;
    loop {
        // The sender lives as long as the connection's service.
        let Ok(now) = activity.wait_for(|a| !a.busy()).await.map(|a| *a) else {
            return;
        };
        entry.set_idle(true);
        let busy = activity.wait_for(|a| a.busy() || a.started != now.started);
        let woke = tokio::time::timeout(timeout_now, busy).await;
        entry.set_idle(false);
        if woke.is_err() {
            return;
        }
        timeout_now = timeout;
    }
}

/// The server's connections that are idle now (no request in progress, no
/// response being delivered), with since when; at the connection cap the
/// longest idle is asked to close.
#[derive(Debug, Default)]
struct IdleSet(std::sync::Mutex<IdleConnections>);

#[derive(Debug, Default)]
struct IdleConnections {
    next: u64,
    idle: std::collections::BTreeMap<(tokio::time::Instant, u64), Arc<tokio::sync::Notify>>,
    since: std::collections::HashMap<u64, tokio::time::Instant>,
}

impl IdleSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleConnections> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection's place in the set, out of it until it is idle.
    fn join(self: &Arc<Self>) -> IdleEntry {
        let mut c = self.lock();
        let id = c.next;
        c.next += 1;
        IdleEntry {
            set: Arc::clone(self),
            id,
            evicted: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Asks the connection idle the longest to close; false when none is.
    fn evict_longest_idle(&self) -> bool {
        let mut c = self.lock();
        let Some(((_, id), evicted)) = c.idle.pop_first() else {
            return false;
        };
        c.since.remove(&id);
        // Stored if the connection is not waiting yet: it closes when it does.
        evicted.notify_one();
        true
    }
}

/// One connection's place in the [`IdleSet`]; leaves it on drop.
struct IdleEntry {
    set: Arc<IdleSet>,
    id: u64,
    /// Notified when this connection is to make room.
    evicted: Arc<tokio::sync::Notify>,
}

impl IdleEntry {
    fn set_idle(&self, idle: bool) {
        let mut c = self.set.lock();
        if let Some(since) = c.since.remove(&self.id) {
            c.idle.remove(&(since, self.id));
        }
        if idle {
            let now = tokio::time::Instant::now();
            c.since.insert(self.id, now);
            c.idle.insert((now, self.id), Arc::clone(&self.evicted));
        }
    }
}

impl Drop for IdleEntry {
    fn drop(&mut self) {
        self.set_idle(false);
    }
}

/// The response bodies of a connection still being delivered, each with
/// when it last handed over a frame.
#[derive(Debug, Default)]
struct Deliveries(std::sync::Mutex<DeliveryTimes>);

#[derive(Debug, Default)]
struct DeliveryTimes {
    next: u64,
    last: std::collections::HashMap<u64, tokio::time::Instant>,
}

impl Deliveries {
    fn times(&self) -> std::sync::MutexGuard<'_, DeliveryTimes> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(&self) -> u64 {
        let mut t = self.times();
        let id = t.next;
        t.next += 1;
        t.last.insert(id, tokio::time::Instant::now());
        id
    }

    fn progress(&self, id: u64) {
        if let Some(at) = self.times().last.get_mut(&id) {
            *at = tokio::time::Instant::now();
        }
    }

    fn end(&self, id: u64) {
        self.times().last.remove(&id);
    }

    /// Resolves once a response has made no progress for `timeout`: an
    /// HTTP/2 peer keeping its flow-control window at zero (hyper does not
    /// poll a body without window), while cheap requests with empty answers
    /// keep the connection from being idle. Per response, so other streams'
    /// answers do not count as its progress. Checked at least every
    /// `timeout`: a stall is seen within twice the timeout.
    async fn stalled(&self, timeout: Duration) {
        loop {
            let oldest = self.times().last.values().min().copied();
            let wake = match oldest {
                Some(at) if at.elapsed() >= timeout => return,
                Some(at) => at + timeout,
                None => tokio::time::Instant::now() + timeout,
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// The application as a hyper service that reports its requests to the
/// connection's idle deadline.
#[derive(Clone)]
struct Tracked {
    app: Router,
    channel: Channel,
    activity: Arc<watch::Sender<Activity>>,
    deliveries: Arc<Deliveries>,
    /// Every request carries its client for the per-client shares.
    client: ClientKey,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.client);
        let guard = InFlight::begin(Arc::clone(&self.activity));
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(self.channel);
        let response = self.app.clone().oneshot(req);
        let activity = Arc::clone(&self.activity);
        let deliveries = Arc::clone(&self.deliveries);
        Box::pin(async move {
            let response = response.await;
            // Counted as delivering before the request stops being in
            // flight, so the connection is never idle in between.
            let response =
                response.map(|r| r.map(|body| Delivering::wrap(body, activity, deliveries)));
            drop(guard);
            response
        })
    }
}

/// A response body on its way to the client, counted in the connection's
/// [`Activity`] until it has ended or been dropped.
struct Delivering {
    body: axum::body::Body,
    activity: Arc<watch::Sender<Activity>>,
    deliveries: Arc<Deliveries>,
    id: u64,
}

impl Delivering {
    /// `body`, counted until it ends.
    fn wrap(
        body: axum::body::Body,
        activity: Arc<watch::Sender<Activity>>,
        deliveries: Arc<Deliveries>,
    ) -> axum::body::Body {
        activity.send_modify(|a| a.delivering += 1);
        let id = deliveries.start();
        axum::body::Body::new(Self {
            body,
            activity,
            deliveries,
            id,
        })
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        self.deliveries.end(self.id);
        self.activity.send_modify(|a| a.delivering -= 1);
    }
}

impl axum::body::HttpBody for Delivering {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if frame.is_ready() {
            self.deliveries.progress(self.id);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One request in progress; ends when the response is ready or the request
/// is dropped (client gone, stream reset).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn begin(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.started += 1;
        });
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.in_flight -= 1);
    }
}

/// A connection whose writes fail with `TimedOut` once one has been stuck
/// (the client reads nothing) for the timeout.
struct WriteDeadline<I> {
    io: I,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl<I> WriteDeadline<I> {
    fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client read nothing for {timeout:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, poll)
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
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => skip_report::skipped(
                "vsock bind",
                &format!("kernel has no AF_VSOCK support ({e})"),
            ),
            Err(e) => panic!("vsock bind failed: {e}"),
        }
    }
}
