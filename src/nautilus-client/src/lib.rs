//! Talk to a Nautilus enclave and believe only what verifies.
//!
//! Two layers:
//!
//! * [`result`]: offline checks of a signed `/process_data` answer: the
//!   signature under an attested key, and that the signed data echoes what
//!   was asked (task, arguments, stdin hash, nonce, freshness).
//! * [`Client`]: the online flow. [`Client::connect`] fetches
//!   `/get_attestation` with a fresh random nonce, verifies it with
//!   [`attestation_verify`] against a trusted root and a [`Policy`], checks
//!   that the document's `user_data` is the SHA-256 of `/manifest`, and keeps
//!   the attested key. [`Client::run_task`] then posts each task with a fresh
//!   nonce and returns only results that pass every check in [`result`].
//!
//! ```no_run
//! use nautilus_client::{Client, Policy, TaskSpec, TrustedRoot, ExpectedPcrs};
//! # async fn demo() -> Result<(), nautilus_client::ClientError> {
//! let (pcrs, _format) = ExpectedPcrs::from_pcr_file(&std::fs::read("out/nitro.pcrs")?)?;
//! let client = Client::connect(
//!     "http://127.0.0.1:3000",
//!     TrustedRoot::aws_nitro()?,
//!     Policy::default().expected_pcrs(pcrs),
//! )
//! .await?;
//! let result = client.run_task(&TaskSpec::new("nodejs-task").args(["1", "2"])).await?;
//! println!("{}", result.data().stdout);
//! # Ok(()) }
//! ```
//!
//! With an `https://` URL no CA is involved: the server's certificate is
//! accepted only if the SHA-256 of its SubjectPublicKeyInfo is the
//! `tls_spki_sha256` of the attested manifest ([`ClientError::TlsKeyMismatch`]
//! otherwise), so a relay that terminates TLS (the parent instance, say) is
//! refused. Plain `http://` to an `nsm` server is refused unless
//! [`ConnectOptions::insecure_http`] is set.
//!
//! The crate shares only wire types ([`result_signing`]) with the server.

#![warn(missing_docs)]

mod client;
mod pin;
/// Offline verification of attestation documents (the whole
/// `attestation-verify` crate), e.g. for archived documents.
pub use attestation_verify as attestation;
pub mod result;

pub use attestation_verify::{
    AttestationSummary, CheckTime, ExpectedPcrs, Policy, TrustedRoot, VerifiedDocument,
};
pub use client::{
    Client, ClientError, ConnectOptions, Manifest, ManifestTask, TaskSpec, VerifiedResult,
};
pub use pin::spki_sha256;
pub use result::{Expected, ResultError};
/// The operator's key type for [`Client::put_secret`] (P-256 ECDSA).
pub use result_signing::SigningKey;
pub use result_signing::{SignedTaskResult, Signing};
