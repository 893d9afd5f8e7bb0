//! Produce AWS Nitro Enclaves attestation documents.
//!
//! An attestation document is a COSE_Sign1 structure whose payload binds a caller-chosen
//! `public_key`, `user_data` and `nonce` to the enclave's PCRs, signed by a certificate that
//! chains to a root CA. This crate has one idea: *something that produces those documents*,
//! behind one trait, [`Attester`], with two implementations:
//!
//! - [`NsmAttester`] asks the real Nitro Secure Module through `/dev/nsm`. It only works inside
//!   a Nitro Enclave; [`NsmAttester::open`] fails with [`AttestError::NsmUnavailable`]
//!   elsewhere, and never falls back to anything.
//! - [`DevAttester`] is a software stand-in for local development and tests. It generates a
//!   dev root CA, an intermediate and a short-lived leaf at start, and issues documents in the
//!   exact AWS format (untagged COSE_Sign1, ES384, the AWS payload map with sixteen zeroed
//!   48-byte PCRs as in debug mode), so the same verifier accepts them once it is told to trust
//!   [`DevAttester::root_pem`]. Every name in it says "dev" and "NOT AWS": `module_id` starts
//!   with `dev-` and no certificate mentions `aws.nitro-enclaves`, so a dev document can never
//!   pass for one from a production enclave.
//!
//! ```
//! use attestation_dev::{AttestationRequest, Attester, DevAttester, Mode};
//!
//! let attester = DevAttester::generate()?;
//! assert_eq!(attester.mode(), Mode::Dev);
//! let document = attester.attest(AttestationRequest {
//!     public_key: &[2; 33],
//!     user_data: b"sha-256 of the manifest",
//!     nonce: Some(b"client nonce"),
//! })?;
//! // Hand `document` to the client, and `attester.root_pem()` to whoever must trust it.
//! # assert!(!document.is_empty());
//! # Ok::<(), attestation_dev::AttestError>(())
//! ```
//!
//! Both implementations enforce the NSM's input limits (see [`MAX_FIELD_BYTES`]) before doing
//! any work, so a request that dev mode accepts is one the real NSM accepts too.

mod cose;
mod dev;
mod nsm;

pub use dev::DevAttester;
pub use nsm::{NsmAttester, Restricted};

/// The largest `public_key`, `user_data` or `nonce` the NSM accepts, in bytes.
///
/// AWS documents each field as `bstr .size (0..1024)` (`public_key`: `1..1024`).
pub const MAX_FIELD_BYTES: usize = 1024;

/// Which kind of [`Attester`] produced a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The Nitro Secure Module of a real enclave.
    Nsm,
    /// The software stand-in, signed by a dev root CA.
    Dev,
}

impl Mode {
    /// The lowercase name used on the command line and in JSON: `"nsm"` or `"dev"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nsm => "nsm",
            Mode::Dev => "dev",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// Parses [`Mode::as_str`]'s names, for command lines and configuration.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nsm" => Ok(Mode::Nsm),
            "dev" => Ok(Mode::Dev),
            other => Err(format!(
                "attestation mode {other:?} is neither `nsm` nor `dev`"
            )),
        }
    }
}

/// What an attestation document binds to the enclave's identity.
#[derive(Debug, Clone, Copy)]
pub struct AttestationRequest<'a> {
    /// The key clients should trust: 1 to [`MAX_FIELD_BYTES`] bytes.
    pub public_key: &'a [u8],
    /// Application data: at most [`MAX_FIELD_BYTES`] bytes.
    pub user_data: &'a [u8],
    /// A caller's freshness nonce: at most [`MAX_FIELD_BYTES`] bytes; `None` is CBOR null.
    pub nonce: Option<&'a [u8]>,
}

impl AttestationRequest<'_> {
    /// Checks the NSM's limits, so both implementations reject exactly the same requests.
    fn validate(&self) -> Result<(), AttestError> {
        if self.public_key.is_empty() {
            return Err(AttestError::EmptyPublicKey);
        }
        let fields = [
            ("public_key", Some(self.public_key)),
            ("user_data", Some(self.user_data)),
            ("nonce", self.nonce),
        ];
        for (field, value) in fields {
            let len = value.map_or(0, <[u8]>::len);
            if len > MAX_FIELD_BYTES {
                return Err(AttestError::FieldTooLarge {
                    field,
                    len,
                    max: MAX_FIELD_BYTES,
                });
            }
        }
        Ok(())
    }
}

/// Produces signed attestation documents. The server holds one as `Arc<dyn Attester>`.
pub trait Attester: Send + Sync {
    /// Which kind of attester this is.
    fn mode(&self) -> Mode;

    /// Returns an untagged COSE_Sign1 attestation document binding `req`.
    fn attest(&self, req: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError>;
}

/// Why no attestation document could be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// `/dev/nsm` could not be opened: this is not a Nitro Enclave.
    #[error("cannot open {path}: {error}; this is not a Nitro Enclave (or its NSM driver is not loaded)")]
    NsmUnavailable {
        /// The device path that was tried.
        path: String,
        /// Why it could not be opened.
        error: std::io::Error,
    },
    /// The NSM device is open to other users and could not be made
    /// root-only, so tasks could attest keys of their choosing; refuse to
    /// serve rather than vouch for them.
    #[error("{path} is accessible to other users (owner uid {uid}, mode {mode:o}) and must be root-only (0600): {reason}")]
    NsmExposed {
        /// The device path.
        path: String,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
        /// Why it could not be fixed, and what to do.
        reason: String,
    },
    /// The request to the NSM driver failed.
    #[error("{}", nsm_io_message(.0))]
    NsmIo(std::io::Error),

    /// A request field exceeds what the NSM accepts.
    #[error("{field} is {len} bytes; the NSM accepts at most {max}")]
    FieldTooLarge {
        /// The document field: `public_key`, `user_data` or `nonce`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_FIELD_BYTES`].
        max: usize,
    },

    /// The request has an empty public key, which the NSM's format does not allow.
    #[error("public_key is empty; an attestation document's public key must be 1 to {MAX_FIELD_BYTES} bytes")]
    EmptyPublicKey,

    /// The NSM answered the request with an error code.
    #[error("the NSM rejected the attestation request: {0:?}")]
    NsmRejected(aws_nitro_enclaves_nsm_api::api::ErrorCode),

    /// The NSM answered with something other than an attestation document.
    #[error("the NSM answered an attestation request with an unexpected response")]
    NsmUnexpectedResponse,

    /// The system clock cannot be expressed as a document timestamp or certificate validity.
    #[error("the system clock is outside the range an attestation document can carry")]
    Clock,

    /// Generating or encoding a dev key failed.
    #[error("generating a dev signing key failed: {0}")]
    DevKey(#[source] p384::pkcs8::Error),

    /// Generating a dev certificate failed.
    #[error("generating a dev certificate failed: {0}")]
    DevCertificate(#[source] rcgen::Error),

    /// CBOR encoding of the document failed.
    #[error("encoding the attestation document as CBOR failed: {0}")]
    Encoding(#[source] serde_cbor::Error),
}

fn nsm_io_message(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOTTY) => {
            format!("the NSM request failed ({e}): /dev/nsm is not a Nitro Secure Module")
        }
        // Both drivers answer an unknown ioctl number (and AWS's older one
        // also unreadable buffers) with EINVAL.
        Some(libc::EINVAL) => format!(
            "the NSM request failed ({e}): the driver refused the request's ioctl number or buffers"
        ),
        Some(libc::ETIMEDOUT) => format!(
            "the NSM request failed ({e}): the NSM did not answer within the driver's 120 s"
        ),
        _ => format!("the NSM request failed: {e}"),
    }
}

/// The `timestamp` (ms since the UNIX epoch) of an attestation document: the
/// time of the Nitro hypervisor for an NSM document. Does not verify it.
pub fn document_timestamp_ms(document: &[u8]) -> Result<u64, AttestError> {
    let (_protected, _unprotected, payload, _signature): (
        serde_bytes::ByteBuf,
        serde_cbor::Value,
        serde_bytes::ByteBuf,
        serde_bytes::ByteBuf,
    ) = serde_cbor::from_slice(document).map_err(AttestError::Encoding)?;
    let doc = aws_nitro_enclaves_nsm_api::api::AttestationDoc::from_binary(&payload)
        .map_err(|_| AttestError::NsmUnexpectedResponse)?;
    Ok(doc.timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documents_timestamp_is_read_back() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let doc = DevAttester::generate()
            .unwrap()
            .attest(AttestationRequest {
                public_key: &[2; 33],
                user_data: b"",
                nonce: None,
            })
            .unwrap();
        let ts = document_timestamp_ms(&doc).unwrap();
        assert!(
            ts + 1000 >= before && ts <= before + 60_000,
            "{ts} vs {before}"
        );
        assert!(document_timestamp_ms(&doc[1..]).is_err());
    }

    fn request(
        public_key: &[u8],
        user_data: &[u8],
        nonce: Option<&[u8]>,
    ) -> Result<(), AttestError> {
        AttestationRequest {
            public_key,
            user_data,
            nonce,
        }
        .validate()
    }

    #[test]
    fn limits_are_inclusive() {
        let max = [7; MAX_FIELD_BYTES];
        request(&max, &max, Some(&max)).unwrap();
        request(&[1], &[], None).unwrap();
        request(&[1], &[], Some(&[])).unwrap();
    }

    #[test]
    fn each_oversized_field_is_named() {
        let max = [7; MAX_FIELD_BYTES];
        let over = [7; MAX_FIELD_BYTES + 1];
        for (field, result) in [
            ("public_key", request(&over, &max, Some(&max))),
            ("user_data", request(&max, &over, Some(&max))),
            ("nonce", request(&max, &max, Some(&over))),
        ] {
            match result {
                Err(AttestError::FieldTooLarge { field: f, len, max }) => {
                    assert_eq!((f, len, max), (field, MAX_FIELD_BYTES + 1, MAX_FIELD_BYTES));
                }
                other => panic!("{field}: expected FieldTooLarge, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_public_key_is_rejected() {
        assert!(matches!(
            request(&[], &[], None),
            Err(AttestError::EmptyPublicKey)
        ));
    }

    #[test]
    fn mode_names() {
        assert_eq!(Mode::Nsm.to_string(), "nsm");
        assert_eq!(Mode::Dev.as_str(), "dev");
    }

    #[test]
    fn attesters_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NsmAttester>();
        assert_send_sync::<DevAttester>();
        assert_send_sync::<std::sync::Arc<dyn Attester>>();
    }
}
