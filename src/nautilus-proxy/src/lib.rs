//! The parent-side proxy: accepts TCP connections and relays each one to a
//! single upstream, the enclave's vsock port (or, for tests and VMs, a TCP
//! address or a hybrid-vsock Unix socket).
//!
//! Every wall a client could lean on has a limit: a connection cap that
//! refuses at once, bounded buffers ([`relay::BUFFER_BYTES`] per direction),
//! deadlines for the first byte, connecting, idleness and stalled writes, and
//! a bounded drain on shutdown.

pub mod egress;
pub mod relay;
pub mod server;
pub mod upstream;

pub use relay::{End, Limits, Report, Side};
pub use server::{serve, ListenAddr, ProxyConfig, Stopped};
pub use upstream::Upstream;
