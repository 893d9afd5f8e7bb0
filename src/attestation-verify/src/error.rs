//! Error types: [`Error`] for anything wrong with a document, [`ConfigError`] for
//! anything wrong with what the caller supplied (a root certificate, a PCR file).

use std::fmt;

/// Where a certificate sits in the document's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertPosition {
    /// `cabundle[i]`; index 0 is the root.
    CaBundle(usize),
    /// The `certificate` field: the enclave's leaf certificate.
    Leaf,
}

impl fmt::Display for CertPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertPosition::CaBundle(i) => write!(f, "cabundle[{i}]"),
            CertPosition::Leaf => f.write_str("leaf certificate"),
        }
    }
}

/// Why an attestation document was rejected.
///
/// Variants are grouped by the stage that failed: size and CBOR structure, COSE
/// header, payload fields, certificate chain, COSE signature, and policy. Each one
/// carries what is needed to tell exactly what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // --- structure ---
    #[error("document is {len} bytes, more than the {max}-byte limit")]
    InputTooLarge { len: usize, max: usize },
    #[error("document is truncated: input ended inside the {context}")]
    Truncated { context: &'static str },
    #[error("malformed CBOR in the {context}: {reason}")]
    MalformedCbor {
        context: &'static str,
        reason: String,
    },
    #[error("{count} trailing byte(s) after the {context}")]
    TrailingBytes { context: &'static str, count: usize },
    #[error("CBOR nesting deeper than {max} levels in the {context}")]
    NestingTooDeep { context: &'static str, max: usize },
    #[error("unexpected CBOR tag {tag} on the COSE_Sign1 structure (only tag 18 is allowed)")]
    UnexpectedTag { tag: u64 },

    // --- COSE header ---
    #[error("protected header has no algorithm (label 1)")]
    MissingAlgorithm,
    #[error("unsupported COSE algorithm {found}: only ES384 (-35) is accepted")]
    UnsupportedAlgorithm { found: i64 },
    #[error("protected header marks labels as critical; none are understood")]
    CriticalHeader,
    #[error("COSE signature is {len} bytes; ES384 signatures are 96 bytes (r || s)")]
    SignatureLength { len: usize },

    // --- payload fields ---
    #[error("payload field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("payload field `{field}` appears more than once")]
    DuplicateField { field: String },
    #[error("payload field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("payload has more than {max} unknown fields")]
    TooManyUnknownFields { max: usize },
    #[error("PCR entry is invalid: {reason}")]
    InvalidPcr { reason: String },

    // --- certificate chain ---
    #[error("cabundle[0] is not the trusted root (SHA-256 {got}, expected {expected})")]
    RootMismatch { expected: String, got: String },
    #[error("{cert}: cannot parse certificate: {reason}")]
    CertificateParse { cert: CertPosition, reason: String },
    #[error("{cert}: unsupported signature algorithm {oid} (only ecdsa-with-SHA256/SHA384)")]
    UnsupportedCertSignatureAlgorithm { cert: CertPosition, oid: String },
    #[error("{cert}: unsupported public key: {reason}")]
    UnsupportedPublicKey { cert: CertPosition, reason: String },
    #[error("{cert}: signature does not verify under the issuer's key")]
    CertificateSignature { cert: CertPosition },
    #[error("{cert}: issuer name does not match the subject of the certificate before it")]
    IssuerMismatch { cert: CertPosition },
    #[error(
        "{cert}: not valid at {at_ms} ms (valid from {not_before_ms} ms to {not_after_ms} ms, UNIX time)"
    )]
    CertificateNotValidAt {
        cert: CertPosition,
        at_ms: u64,
        not_before_ms: u64,
        not_after_ms: u64,
    },
    #[error("{cert}: basicConstraints says it is not a CA, but it issues the next certificate")]
    NotACa { cert: CertPosition },
    #[error("leaf certificate is a CA (basicConstraints cA = true)")]
    LeafIsCa,
    #[error("{cert}: malformed extension: {reason}")]
    BadExtension { cert: CertPosition, reason: String },

    // --- COSE signature ---
    #[error("COSE signature does not verify with the leaf certificate's key")]
    CoseSignature,

    // --- policy ---
    #[error("system clock is before the UNIX epoch")]
    ClockBeforeEpoch,
    #[error("document is too old: timestamp {timestamp_ms} ms is {age_ms} ms before check time {at_ms} ms (max age {max_age_ms} ms)")]
    DocumentTooOld {
        timestamp_ms: u64,
        at_ms: u64,
        age_ms: u64,
        max_age_ms: u64,
    },
    #[error("document is from the future: timestamp {timestamp_ms} ms is after check time {at_ms} ms by more than the allowed {max_skew_ms} ms")]
    DocumentFromFuture {
        timestamp_ms: u64,
        at_ms: u64,
        max_skew_ms: u64,
    },
    #[error("debug-mode document (PCR0, PCR1, PCR2 all zero) and debug documents are not allowed")]
    DebugMode,
    #[error("PCR{index} mismatch: expected {expected}, got {got}")]
    PcrMismatch {
        index: u8,
        expected: String,
        got: String,
    },
    #[error("PCR{index} is expected but absent from the document")]
    PcrMissing { index: u8 },
    #[error("nonce mismatch: expected {expected}, got {}", got.as_deref().unwrap_or("none"))]
    NonceMismatch {
        expected: String,
        got: Option<String>,
    },
}

/// Why a caller-supplied root certificate or expected-PCR set was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("root certificate is not valid PEM/DER: {0}")]
    InvalidRoot(String),
    #[error("embedded AWS root has SHA-256 {got}, not the pinned {expected}")]
    RootPinMismatch { expected: String, got: String },
    #[error("PCR index {0} is out of range (0-31)")]
    PcrIndexOutOfRange(u64),
    #[error("PCR{index} value is {len} bytes; PCRs are 32, 48 or 64 bytes")]
    PcrLength { index: u8, len: usize },
    /// The reason; the message adds the accepted formats (see [`crate::pcr_file`]).
    #[error(
        "PCR file not accepted: {0}. Accepted: nitro-cli's measurements JSON (`nitro-cli \
         describe-eif --eif-path IMAGE.eif > FILE`, or what `nitro-cli build-enclave` prints \
         on stdout) or eif_build's --pcrs_output text (one `<hex> PCRn` line per PCR)"
    )]
    PcrFile(String),
}
