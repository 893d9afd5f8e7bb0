//! The parent-side proxy: accepts TCP connections and relays each one to a
//! single upstream, the enclave's vsock port (or, for tests and VMs, a TCP
//! address or a hybrid-vsock Unix socket).
//!
//! Every wall a client could lean on has a limit: a connection cap that
//! refuses at once, a share of it per client address (connections open and
//! opened per second), bounded buffers ([`relay::BUFFER_BYTES`] per
//! direction), deadlines for the first byte, connecting, idleness, stalled
//! writes and a client lingering after the upstream closed, log lines under a
//! budget, and a bounded drain on shutdown.

pub mod egress;
pub mod fd_limit;
pub mod log_budget;
pub mod relay;
pub mod server;
pub mod sources;
pub mod upstream;

pub use relay::{End, Limits, Report, Side};
pub use server::{proxy_header, serve, ListenAddr, ProxyConfig, Stopped};
pub use sources::{Refusal, SourceLimits};
pub use upstream::Upstream;
