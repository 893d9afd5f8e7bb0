//! One relayed connection: both directions, half-close, deadlines.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use crate::upstream::{ConnectError, Upstream};

/// Bytes buffered per direction: at most twice this per connection, whatever
/// either side sends or fails to read.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Opening the upstream connection (hybrid-vsock handshake included).
    pub connect: Duration,
    /// From accept to the client's first byte. The upstream connection is
    /// opened only then, so silent sockets never reach the enclave.
    pub first_byte: Duration,
    /// No byte moved in either direction for this long: the connection ends.
    pub idle: Duration,
    /// One write (to either side) that makes no progress for this long: the
    /// reader is not reading and the connection ends.
    pub write: Duration,
    /// After the upstream has closed and everything it sent has reached the
    /// client, how long the client may still send before its side is closed
    /// too. Nothing more can come back, so a client that stays longer only
    /// holds a slot (a byte every few minutes kept it for the idle timeout).
    pub upstream_eof_linger: Duration,
}

/// One side of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The TCP client.
    Client,
    /// The upstream (the enclave).
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their sending half (a normal end).
    Closed,
    /// The upstream closed, all it sent was delivered, and the client did
    /// not close within [`Limits::upstream_eof_linger`] (a normal end).
    UpstreamFinished(Duration),
    /// The client closed without sending a byte; no upstream was opened.
    ClientSentNothing,
    /// The client sent nothing within [`Limits::first_byte`].
    FirstByteTimeout(Duration),
    /// The upstream could not be reached.
    ConnectFailed(ConnectError),
    /// Nothing moved either way within [`Limits::idle`].
    IdleTimeout(Duration),
    /// A write towards this side stalled for [`Limits::write`].
    WriteTimeout(Side, Duration),
    /// Reading from or writing to this side failed (a reset, mostly).
    Error(Side, io::Error),
    /// Still open when the proxy's drain deadline passed.
    Cut,
}

impl End {
    /// A normal end rather than something an operator may want to look at.
    pub fn is_normal(&self) -> bool {
        matches!(
            self,
            End::Closed | End::ClientSentNothing | End::UpstreamFinished(_)
        )
    }
}

impl End {
    /// A short name of how it ended, for counting suppressed log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            End::Closed | End::UpstreamFinished(_) => "closed",
            End::ClientSentNothing => "client sent nothing",
            End::FirstByteTimeout(_) => "first-byte timeout",
            End::ConnectFailed(_) => "upstream unreachable",
            End::IdleTimeout(_) => "idle timeout",
            End::WriteTimeout(..) => "write timeout",
            End::Error(..) => "error",
            End::Cut => "cut",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::UpstreamFinished(d) => write!(
                f,
                "closed: upstream finished, client still open after {d:?}"
            ),
            End::ClientSentNothing => f.write_str("client closed before sending anything"),
            End::FirstByteTimeout(d) => write!(f, "first-byte timeout: client silent for {d:?}"),
            End::ConnectFailed(e) => write!(f, "upstream unreachable: {e}"),
            End::IdleTimeout(d) => write!(f, "idle timeout: nothing moved for {d:?}"),
            End::WriteTimeout(side, d) => {
                write!(f, "write timeout: {side} did not read for {d:?}")
            }
            End::Error(side, e) => write!(f, "{side} error: {e}"),
            End::Cut => f.write_str("cut at the end of the shutdown drain"),
        }
    }
}

/// What one connection did, for its log line.
#[derive(Debug)]
pub struct Report {
    /// Bytes relayed from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes relayed from the upstream to the client.
    pub to_client: u64,
    /// How it ended.
    pub end: End,
}

/// Relays `client` to one new connection to `upstream` until both sides are
/// done, a deadline passes, either side fails, or `cut` resolves.
pub async fn relay<C>(
    client: C,
    upstream: &Upstream,
    limits: &Limits,
    cut: impl Future<Output = ()>,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    relay_with_preamble(client, upstream, &[], limits, cut).await
}

/// [`relay`], writing `preamble` (a PROXY protocol header) to the upstream
/// before the client's first byte. It is not counted in [`Report`].
pub async fn relay_with_preamble<C>(
    client: C,
    upstream: &Upstream,
    preamble: &[u8],
    limits: &Limits,
    cut: impl Future<Output = ()>,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let to_upstream = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let end = tokio::select! {
        end = run(client, upstream, preamble, limits, &to_upstream, &to_client) => end,
        () = cut => End::Cut,
    };
    Report {
        to_upstream: to_upstream.into_inner(),
        to_client: to_client.into_inner(),
        end,
    }
}

async fn run<C>(
    mut client: C,
    upstream: &Upstream,
    preamble: &[u8],
    limits: &Limits,
    to_upstream: &AtomicU64,
    to_client: &AtomicU64,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut outbound_buf = vec![0u8; BUFFER_BYTES];
    let first = match timeout(limits.first_byte, client.read(&mut outbound_buf)).await {
        Err(_) => return End::FirstByteTimeout(limits.first_byte),
        Ok(Err(e)) => return End::Error(Side::Client, e),
        Ok(Ok(0)) => return End::ClientSentNothing,
        Ok(Ok(n)) => n,
    };
    let mut upstream = match upstream.connect(limits.connect).await {
        Ok(s) => s,
        Err(e) => return End::ConnectFailed(e),
    };
    if !preamble.is_empty() {
        match timeout(limits.write, upstream.write_all(preamble)).await {
            Err(_) => return End::WriteTimeout(Side::Upstream, limits.write),
            Ok(Err(e)) => return End::Error(Side::Upstream, e),
            Ok(Ok(())) => {}
        }
    }
    let clock = Clock::new();
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let outbound = async {
        let dir = Direction::new(
            Side::Client,
            Side::Upstream,
            to_upstream,
            &clock,
            limits.write,
        );
        dir.pump(client_r, upstream_w, outbound_buf, first).await
    };
    let inbound = async {
        let dir = Direction::new(
            Side::Upstream,
            Side::Client,
            to_client,
            &clock,
            limits.write,
        );
        dir.pump(upstream_r, client_w, vec![0u8; BUFFER_BYTES], 0)
            .await
    };
    tokio::pin!(outbound, inbound);
    let (mut out_done, mut in_done) = (false, false);
    // Set once the upstream has closed and all it sent was delivered.
    let mut linger_until = None;
    while !(out_done && in_done) {
        let linger = async {
            match linger_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let finished = tokio::select! {
            r = &mut outbound, if !out_done => { out_done = true; r }
            r = &mut inbound, if !in_done => {
                in_done = true;
                linger_until = Some(Instant::now() + limits.upstream_eof_linger);
                r
            }
            () = clock.idle(limits.idle) => return End::IdleTimeout(limits.idle),
            () = linger => return End::UpstreamFinished(limits.upstream_eof_linger),
        };
        // One direction failing ends both: the other side sees the close.
        if let Err(end) = finished {
            return end;
        }
    }
    End::Closed
}

/// When a byte last moved, either way.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One direction of a connection.
struct Direction<'a> {
    from: Side,
    to: Side,
    moved: &'a AtomicU64,
    clock: &'a Clock,
    write_limit: Duration,
}

impl<'a> Direction<'a> {
    fn new(
        from: Side,
        to: Side,
        moved: &'a AtomicU64,
        clock: &'a Clock,
        write_limit: Duration,
    ) -> Self {
        Self {
            from,
            to,
            moved,
            clock,
            write_limit,
        }
    }

    /// Copies until `from` closes its sending half, then closes ours towards
    /// `to` (half-close) so the other direction can go on.
    async fn pump<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        mut buf: Vec<u8>,
        mut pending: usize,
    ) -> Result<(), End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if pending > 0 {
                self.deadline(writer.write_all(&buf[..pending])).await?;
                self.moved.fetch_add(pending as u64, Ordering::Relaxed);
                self.clock.touch();
            }
            pending = reader
                .read(&mut buf)
                .await
                .map_err(|e| End::Error(self.from, e))?;
            if pending == 0 {
                return self.deadline(writer.shutdown()).await;
            }
            self.clock.touch();
        }
    }

    async fn deadline(&self, write: impl Future<Output = io::Result<()>>) -> Result<(), End> {
        match timeout(self.write_limit, write).await {
            Err(_) => Err(End::WriteTimeout(self.to, self.write_limit)),
            Ok(r) => r.map_err(|e| End::Error(self.to, e)),
        }
    }
}
