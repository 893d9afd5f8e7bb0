//! What the server is told at start: attestation mode, task runner settings,
//! request and connection limits, where egress goes. The bottom of the
//! crate: it uses nothing else of it but [`crate::egress`] (which uses
//! nothing of the crate), and everything else may use it.

use std::time::Duration;

use task_runner::RunnerConfig;

use crate::egress::EgressRoute;

/// Where attestation documents come from: the NSM (the only mode a verifier
/// trusting the AWS root accepts), or the dev stand-in for local development
/// and tests, whose documents carry zero PCRs, a `dev-` module id and a root
/// nobody else trusts.
pub use attestation_dev::Mode as AttestationMode;

/// Server settings that are not transport: the binary maps flags onto this.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where attestation documents come from.
    pub attestation: AttestationMode,
    /// Everything about running tasks.
    pub runner: RunnerConfig,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a browser; empty = no CORS.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// On shutdown, how long running tasks may take before they are stopped.
    pub shutdown_grace: Duration,
    /// Longest an attestation call may take before its request gets 503.
    /// The NSM driver itself waits up to 120 s, under a lock its hardware RNG
    /// also takes.
    pub attestation_deadline: Duration,
    /// Connection limits and deadlines.
    pub http: HttpLimits,
    /// Where the tasks' egress connections go (the runner's connector is
    /// made from it).
    pub egress_route: EgressRoute,
    /// Terminate TLS in the server, with a key made at start whose hash the
    /// manifest carries (see [`crate::tls`]).
    pub tls: bool,
    /// Public keys of the operators who may set secrets (see
    /// [`crate::secrets`]); listed in the manifest.
    pub operator_keys: Vec<result_signing::VerifyingKey>,
}

impl ServerConfig {
    /// Dev attestation and the runner's defaults: what tests and examples use.
    pub fn dev() -> Self {
        Self {
            attestation: AttestationMode::Dev,
            egress_route: EgressRoute::Direct,
            tls: false,
            ..Self::default()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            attestation: AttestationMode::Nsm,
            runner: RunnerConfig::default(),
            max_body_bytes: 2 * 1024 * 1024,
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            attestation_deadline: DEFAULT_ATTESTATION_DEADLINE,
            http: HttpLimits::default(),
            egress_route: EgressRoute::parent(),
            tls: true,
            operator_keys: Vec::new(),
        }
    }
}

/// Default of [`ServerConfig::attestation_deadline`].
pub const DEFAULT_ATTESTATION_DEADLINE: Duration = Duration::from_secs(10);

/// Limits on connections and the bytes they make the server hold. Every
/// state a connection can be in has a deadline, so a client that stops making
/// progress loses its connection; every byte the server buffers for a client
/// is bounded.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once; past this the server stops accepting
    /// until one closes (further clients wait in the kernel's backlog).
    pub max_connections: usize,
    /// How long a connection may go without a request in progress: from
    /// accept, or from its last response, until the next request's headers
    /// are complete. Covers silent sockets, protocol detection, slow headers
    /// and keep-alive on both HTTP/1.1 and HTTP/2.
    pub idle_timeout: Duration,
    /// Total time for a request body, from its headers to its last byte;
    /// later bodies get 408.
    pub body_timeout: Duration,
    /// A write to the client that makes no progress for this long closes
    /// the connection; so does a connection still busy this long after it
    /// was asked to close (HTTP/2 flow control a client never opens).
    pub write_timeout: Duration,
    /// Request-body bytes all connections together may have buffered;
    /// beyond it a request gets 503 with `Retry-After` before more is read.
    pub max_buffered_body_bytes: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_streams: u32,
    /// An HTTP/2 connection that sends nothing for this long is pinged, and
    /// closed if the ping is not answered within the same time.
    pub http2_keepalive: Duration,
    /// Every connection starts with a PROXY protocol v2 header naming the
    /// client (`nautilus-proxy --proxy-protocol true`); connections without
    /// one are closed. Only for a listener nobody but the proxy can reach.
    pub proxy_protocol: bool,
    /// What one client (one address) may hold.
    pub per_client: ClientShares,
    /// After [`BODY_RATE_GRACE`], a request body must have arrived at this
    /// many bytes a second on average, or it gets 408.
    pub min_body_bytes_per_sec: u64,
}

/// How long a body may take before [`HttpLimits::min_body_bytes_per_sec`]
/// applies: a slow start is not an attack.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientShares {
    /// Connections open at once; more are closed at once.
    pub connections: usize,
    /// Requests in flight at once; more get 429.
    pub requests: usize,
    /// Tasks waiting for a turn at once; more get 429.
    pub queued_tasks: usize,
}

impl Default for ClientShares {
    fn default() -> Self {
        Self {
            connections: 64,
            requests: 32,
            queued_tasks: 8,
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_buffered_body_bytes: 64 * 1024 * 1024,
            http2_max_streams: 8,
            http2_keepalive: Duration::from_secs(20),
            proxy_protocol: false,
            per_client: ClientShares::default(),
            min_body_bytes_per_sec: 1024,
        }
    }
}

/// How a request reached the server: the transport puts one on every
/// request, so a handler can refuse what must not travel in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Plain TCP or vsock: the parent instance reads every byte.
    Plain,
    /// TLS terminated in the server with its attested key.
    Tls,
}
