//! Egress (root mode): a task reaches exactly the destinations its
//! [`TaskDeclaration`](crate::TaskDeclaration) lists, with its own TLS.
//!
//! Each box has a network namespace with loopback only. For a task that
//! declares destinations, before its code runs, the runner
//! - writes the slot's hosts file (bound read-only over the box's
//!   `/etc/hosts`): each declared name maps to its own address
//!   `127.0.0.<2 + i>`, in declaration order;
//! - binds a TCP listener in the box's namespace on that address and each
//!   declared port (on a short-lived thread that joins the namespace: the
//!   box's for a warm box, a fresh one the box then joins for a cold start);
//! - accepts there and relays each connection's bytes, unchanged, to the
//!   declared `host:port` through an [`EgressConnect`] (directly, through
//!   `nautilus-proxy`, or over vsock to the parent: the server decides).
//!
//! So `fetch("https://api.example.org/")` resolves through `/etc/hosts`,
//! connects to the listener, and its TLS handshake (Node's own root store,
//! certificate checks in the box) goes end to end to the real host: the
//! relay sees ciphertext only. Everything else fails fast inside the box:
//! another name is not in `/etc/hosts` and no DNS server is reachable
//! (`ENOTFOUND`, or `EAI_AGAIN` where the resolver tries a server), an IP
//! literal has no route (`ENETUNREACH`) or nothing listening on loopback
//! (`ECONNREFUSED`), and so has a declared name on a port it did not declare.
//!
//! Limits ([`EgressLimits`]): connections open at once (past it a new one is
//! closed at once), bytes each way over the whole run (past it the
//! connection that crossed the line is cut), and the time to connect out.
//! Every relayed connection is cut when the task ends. What went where is
//! counted per destination ([`EgressRecord`], part of the signed result).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::declaration::EgressHost;

const MIB: u64 = 1024 * 1024;
/// Read size of the relay, per direction.
const CHUNK: usize = 16 * 1024;

/// Per-run egress limits. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EgressLimits {
    /// Connections open at once. Default 8.
    pub max_connections: usize,
    /// Bytes the task may send, over all its connections. Default 16 MiB.
    pub max_bytes_out: u64,
    /// Bytes the task may receive, over all its connections. Default 16 MiB.
    pub max_bytes_in: u64,
    /// Time to open a connection out, in seconds. Default 10.
    pub connect_timeout_secs: u64,
}

impl Default for EgressLimits {
    fn default() -> Self {
        Self {
            max_connections: 8,
            max_bytes_out: 16 * MIB,
            max_bytes_in: 16 * MIB,
            connect_timeout_secs: 10,
        }
    }
}

/// What one destination carried during a run; the signed result lists one
/// per destination the task connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    /// The declared host name.
    pub host: String,
    /// The declared port.
    pub port: u16,
    /// Connections relayed to it (connected out).
    pub connections: u64,
    /// Bytes the task sent to it.
    pub bytes_out: u64,
    /// Bytes it sent to the task.
    pub bytes_in: u64,
}

/// A connection out, as an [`EgressConnect`] opens it.
pub trait EgressStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> EgressStream for T {}

/// What [`EgressConnect::connect`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn EgressStream>>> + Send + 'a>>;

/// Opens a TCP connection to a declared destination, however the host
/// reaches the world. Only declared destinations are ever asked for.
pub trait EgressConnect: fmt::Debug + Send + Sync {
    /// Connects to `dest`; the relay bounds the time it may take.
    fn connect<'a>(&'a self, dest: &'a EgressHost) -> ConnectFuture<'a>;
}

/// Connects straight out, resolving the name with the host's resolver (the
/// default; development hosts).
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectConnect;

impl EgressConnect for DirectConnect {
    fn connect<'a>(&'a self, dest: &'a EgressHost) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect((dest.host.as_str(), dest.port)).await?;
            Ok(Box::new(stream) as Box<dyn EgressStream>)
        })
    }
}

/// Refusals the runner counts (each also logged).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Connections closed at once: the task had `max_connections` open.
    pub connections: AtomicU64,
    /// Connections cut: the task's bytes out or in reached their cap.
    pub bytes: AtomicU64,
    /// Connections out that failed or timed out.
    pub connect: AtomicU64,
}

/// The hosts file of a box whose task declares `egress`: loopback names,
/// then each declared name on its own address.
pub(crate) fn hosts_file(egress: &[EgressHost]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost nautilus-task\n::1\tlocalhost\n");
    for (i, name) in names(egress).iter().enumerate() {
        text.push_str(&format!("{}\t{name}\n", address(i)));
    }
    text
}

/// Each slot's hosts file, `<work dir>/<slot uid>-hosts` (so a crashed
/// runner's fall to the start-up sweep), root's, 0644, bound read-only over
/// `/etc/hosts` in every box of the slot. A run rewrites it in place (the
/// bind follows the inode) before its task's code starts; a slot has one box
/// at a time. Removed with the runner.
pub(crate) struct HostsFiles {
    paths: Vec<PathBuf>,
}

impl HostsFiles {
    /// Creates one file per slot uid, declaring no destination.
    pub fn create(work_dir: &Path, slots: std::ops::Range<u32>) -> io::Result<Self> {
        let mut files = Self { paths: Vec::new() };
        for uid in slots {
            let path = work_dir.join(format!("{uid}-hosts"));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)?;
            files.paths.push(path);
            files.write(files.paths.len() - 1, &[])?;
        }
        Ok(files)
    }

    /// The file of slot `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.paths.get(index).map(PathBuf::as_path)
    }

    /// Rewrites slot `index`'s file for a task declaring `egress`. Blocking
    /// (a few hundred bytes).
    pub fn write(&self, index: usize, egress: &[EgressHost]) -> io::Result<()> {
        let path = self
            .path(index)
            .ok_or_else(|| io::Error::other("no hosts file for this slot"))?;
        // In place: truncating, never replacing, keeps the box's bind on it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        std::io::Write::write_all(&mut file, hosts_file(egress).as_bytes())
    }
}

impl Drop for HostsFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "could not remove a hosts file");
            }
        }
    }
}

/// The distinct names, in declaration order.
fn names(egress: &[EgressHost]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for e in egress {
        if !names.contains(&e.host.as_str()) {
            names.push(&e.host);
        }
    }
    names
}

/// The box address of the `i`-th name (at most 32 names: 127.0.0.2 to .33).
fn address(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// Which network namespace the listeners go in.
pub(crate) enum Netns {
    /// A new one, which the box then joins (a cold start).
    Fresh,
    /// The one of this process (a warm box's reaper).
    Of(libc::pid_t),
}

/// Listeners bound in a box's network namespace.
pub(crate) struct Bound {
    /// The namespace, when [`Netns::Fresh`] made it (the box joins it).
    pub netns: Option<OwnedFd>,
    listeners: Vec<(EgressHost, std::net::TcpListener)>,
}

/// Binds a listener for each declared destination in the namespace `netns`
/// names. Blocking (a thread joins the namespace; about a millisecond).
pub(crate) fn bind(netns: Netns, egress: &[EgressHost]) -> io::Result<Bound> {
    let names = names(egress);
    std::thread::scope(|s| {
        s.spawn(|| {
            let made = enter(netns)?;
            let mut listeners = Vec::with_capacity(egress.len());
            for dest in egress {
                let i = names
                    .iter()
                    .position(|n| *n == dest.host)
                    .ok_or_else(|| io::Error::other("a declared name went missing"))?;
                let listener = std::net::TcpListener::bind((address(i), dest.port))?;
                listener.set_nonblocking(true)?;
                listeners.push((dest.clone(), listener));
            }
            Ok(Bound {
                netns: made,
                listeners,
            })
        })
        .join()
        .map_err(|_| io::Error::other("the egress listener thread panicked"))?
    })
}

/// Moves the calling thread (a short-lived one) into the namespace; returns
/// it when it is new.
fn enter(netns: Netns) -> io::Result<Option<OwnedFd>> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let made = match netns {
        Netns::Fresh => {
            // SAFETY: unshare(2) on this thread only (network namespaces
            // are per thread); the thread ends after binding.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            let fd = check(unsafe {
                libc::open(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: a descriptor open(2) just returned, owned by nobody else.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        Netns::Of(pid) => {
            let path = std::ffi::CString::new(format!("/proc/{pid}/ns/net"))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: open, setns and close on a descriptor this block owns.
            unsafe {
                let fd = check(libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
                let joined = check(libc::setns(fd, libc::CLONE_NEWNET));
                libc::close(fd);
                joined?;
            }
            None
        }
    };
    // SAFETY: ioctls on a socket the call opens and closes.
    unsafe { crate::ns::loopback_up() }?;
    Ok(made)
}

/// One destination's counters during a run.
#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

/// What every relay of one run shares.
struct Shared {
    limits: EgressLimits,
    connector: Arc<dyn EgressConnect>,
    refusals: Arc<Refusals>,
    open: AtomicUsize,
    out_left: AtomicU64,
    in_left: AtomicU64,
}

/// The relays of one run: dropped (or [`finish`](Session::finish)ed), every
/// listener and connection closes.
pub(crate) struct Session {
    tasks: JoinSet<()>,
    counts: Vec<(EgressHost, Arc<Counts>)>,
}

impl Session {
    /// Starts accepting on `bound`'s listeners. Within a tokio runtime.
    pub fn start(
        bound: Bound,
        connector: Arc<dyn EgressConnect>,
        limits: EgressLimits,
        refusals: Arc<Refusals>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            limits,
            connector,
            refusals,
            open: AtomicUsize::new(0),
            out_left: AtomicU64::new(limits.max_bytes_out),
            in_left: AtomicU64::new(limits.max_bytes_in),
        });
        let mut tasks = JoinSet::new();
        let mut counts = Vec::new();
        for (dest, listener) in bound.listeners {
            let listener = TcpListener::from_std(listener)?;
            let c = Arc::new(Counts::default());
            counts.push((dest.clone(), c.clone()));
            tasks.spawn(accept(listener, dest, c, shared.clone()));
        }
        Ok(Self { tasks, counts })
    }

    /// Cuts everything and says what went where: one record per destination
    /// the task connected to, in declaration order.
    pub fn finish(mut self) -> Vec<EgressRecord> {
        self.tasks.abort_all();
        self.counts
            .iter()
            .filter(|(_, c)| c.connections.load(Ordering::Relaxed) > 0)
            .map(|(dest, c)| EgressRecord {
                host: dest.host.clone(),
                port: dest.port,
                connections: c.connections.load(Ordering::Relaxed),
                bytes_out: c.bytes_out.load(Ordering::Relaxed),
                bytes_in: c.bytes_in.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Accepts the task's connections to one destination; its relays end with it.
async fn accept(listener: TcpListener, dest: EgressHost, counts: Arc<Counts>, shared: Arc<Shared>) {
    let mut relays = JoinSet::new();
    loop {
        let inside = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(%dest, error = %e, "egress accept failed");
                    continue;
                }
            },
            // Reap finished relays so the set does not grow.
            Some(_) = relays.join_next(), if !relays.is_empty() => continue,
        };
        let open = shared.open.fetch_add(1, Ordering::SeqCst);
        if open >= shared.limits.max_connections {
            shared.open.fetch_sub(1, Ordering::SeqCst);
            shared.refusals.connections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%dest, max = shared.limits.max_connections, "egress connection refused: too many open");
            drop(inside);
            continue;
        }
        relays.spawn(relay(inside, dest.clone(), counts.clone(), shared.clone()));
    }
}

/// Relays one connection of the task to `dest`.
async fn relay(inside: TcpStream, dest: EgressHost, counts: Arc<Counts>, shared: Arc<Shared>) {
    struct Open<'a>(&'a AtomicUsize);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _open = Open(&shared.open);
    let timeout = Duration::from_secs(shared.limits.connect_timeout_secs);
    let outside = match tokio::time::timeout(timeout, shared.connector.connect(&dest)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            shared.refusals.connect.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%dest, error = %e, "egress connection failed");
            return;
        }
        Err(_) => {
            shared.refusals.connect.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%dest, ?timeout, "egress connection timed out");
            return;
        }
    };
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let (in_r, in_w) = tokio::io::split(inside);
    let (out_r, out_w) = tokio::io::split(outside);
    let up = pump(in_r, out_w, &shared.out_left, &counts.bytes_out);
    let down = pump(out_r, in_w, &shared.in_left, &counts.bytes_in);
    // Both directions to their end; the first failure (a cap, a reset) ends both.
    if let Err(e) = tokio::try_join!(up, down) {
        if e.get_ref().is_some_and(|e| e.is::<CapReached>()) {
            shared.refusals.bytes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%dest, "egress connection cut: the task's byte cap was reached");
        }
    }
}

/// The task's bytes one way reached their cap.
#[derive(Debug, thiserror::Error)]
#[error("the task's egress byte cap was reached")]
struct CapReached;

/// Copies `from` to `to` until end of file (then half-closes `to`), taking
/// each chunk out of `budget` first: a chunk that does not fit is not sent,
/// and the copy fails with [`CapReached`].
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    budget: &AtomicU64,
    carried: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let fits = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n as u64)
            })
            .is_ok();
        if !fits {
            return Err(io::Error::other(CapReached));
        }
        to.write_all(&buf[..n]).await?;
        carried.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, port: u16) -> EgressHost {
        EgressHost {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn each_name_gets_its_own_address() {
        let text = hosts_file(&[
            dest("a.example.org", 443),
            dest("b.example.org", 443),
            dest("a.example.org", 8443),
        ]);
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost nautilus-task\n::1\tlocalhost\n127.0.0.2\ta.example.org\n127.0.0.3\tb.example.org\n"
        );
        assert_eq!(address(31), std::net::Ipv4Addr::new(127, 0, 0, 33));
    }

    #[tokio::test]
    async fn pump_stops_before_the_chunk_that_would_cross_the_cap() {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let (c, mut d) = tokio::io::duplex(64 * 1024);
        let budget = AtomicU64::new(10);
        let carried = AtomicU64::new(0);
        a.write_all(b"0123456789").await.unwrap();
        a.flush().await.unwrap();
        let (b_r, _b_w) = tokio::io::split(b);
        let (_c_r, c_w) = tokio::io::split(c);
        let copy = tokio::spawn(async move {
            let r = pump(b_r, c_w, &budget, &carried).await;
            (r, carried.load(Ordering::Relaxed))
        });
        let mut got = [0u8; 10];
        d.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123456789");
        a.write_all(b"x").await.unwrap();
        let (result, carried) = copy.await.unwrap();
        assert!(result.unwrap_err().get_ref().unwrap().is::<CapReached>());
        assert_eq!(carried, 10);
    }
}
