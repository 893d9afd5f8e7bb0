//! Verification of AWS Nitro Enclaves attestation documents.
//!
//! An attestation document is a COSE_Sign1 structure signed (ES384) by a
//! short-lived leaf certificate that chains to the AWS Nitro Enclaves root. Its
//! payload names the enclave image (PCRs) and carries the enclave's `public_key`,
//! `user_data` and the requester's `nonce`. This crate turns untrusted bytes into a
//! [`VerifiedDocument`] only if all of that checks out:
//!
//! ```no_run
//! use attestation_verify::{AttestationDocument, ExpectedPcrs, Policy, TrustedRoot};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let bytes: Vec<u8> = Vec::new(); let pcr_file = b""; let nonce = [0u8; 32];
//! let root = TrustedRoot::aws_nitro()?;
//! let policy = Policy::default()
//!     .expected_pcrs(ExpectedPcrs::from_pcr_file(pcr_file)?.0)
//!     .expected_nonce(nonce);
//! let doc = AttestationDocument::from_bytes(&bytes)?.verify(&root, &policy)?;
//! println!("{}", serde_json::to_string(&doc.summary())?);
//! # Ok(()) }
//! ```
//!
//! # What is checked
//! - **Structure** ([`AttestationDocument::from_bytes`]): at most
//!   [`MAX_DOCUMENT_LEN`] bytes; optional tag 18; a 4-element COSE_Sign1 array whose
//!   protected header says ES384 (-35); a 96-byte signature; the payload fields and
//!   types of the NSM specification (definite or indefinite map); no trailing bytes
//!   after the COSE array, the protected header or the payload. Up to
//!   [`MAX_UNKNOWN_FIELDS`] unknown payload fields are tolerated and skipped, each
//!   nested at most [`MAX_NESTING_DEPTH`] deep; duplicate known fields are rejected;
//!   `cabundle` holds at most [`MAX_CABUNDLE_LEN`] certificates.
//! - **Chain**: `cabundle[0]` is byte-identical to the [`TrustedRoot`]; each
//!   certificate is signed (ECDSA P-256/P-384, SHA-256/SHA-384) by the one before,
//!   the leaf by the last; the issuer name matches; every certificate is valid at
//!   the check time (`notBefore <= t <= notAfter` in milliseconds, both ends
//!   inclusive as RFC 5280 §4.1.2.5 says); CA certificates have `cA = true` and the
//!   leaf does not.
//!   AuthorityKeyIdentifier, key usage and path length are not checked.
//! - **Signature**: ES384 over `["Signature1", protected, h'', payload]` with the
//!   leaf's P-384 key, over the header and payload bytes exactly as received.
//! - **Policy** ([`Policy`]): document age and future skew, debug mode, expected
//!   PCRs, expected nonce.
//!
//! Errors are [`Error`] (the document is bad, with the precise reason) and
//! [`ConfigError`] (a root or PCR file supplied by the caller is bad). The PCR
//! file formats accepted are specified in [`pcr_file`].

mod chain;
mod document;
mod error;
pub mod pcr_file;
mod policy;
mod root;
mod verified;

pub use document::{
    AttestationDocument, MAX_CABUNDLE_LEN, MAX_DOCUMENT_LEN, MAX_NESTING_DEPTH,
    MAX_OPTIONAL_FIELD_LEN, MAX_UNKNOWN_FIELDS,
};
pub use error::{CertPosition, ConfigError, Error};
pub use pcr_file::{PcrFileFormat, MAX_PCR_FILE_LEN};
pub use policy::{CheckTime, ExpectedPcrs, Policy, DEFAULT_MAX_AGE, DEFAULT_MAX_FUTURE_SKEW};
pub use root::{TrustedRoot, AWS_NITRO_ROOT_G1_SHA256};
pub use verified::{verify, AttestationSummary, VerifiedDocument};
