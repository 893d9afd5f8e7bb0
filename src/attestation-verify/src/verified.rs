//! The verification pipeline and its output.

use std::collections::BTreeMap;

use p384::ecdsa::signature::Verifier;
use serde::{Deserialize, Serialize};

use crate::chain::{self, EcKey};
use crate::document::{AttestationDocument, Payload};
use crate::error::{CertPosition, Error};
use crate::policy::Policy;
use crate::root::TrustedRoot;

impl AttestationDocument {
    /// Verifies the document against `root` and `policy`.
    ///
    /// Order: certificate chain at the policy's check time, COSE signature with the
    /// leaf key, then the policy (freshness, debug mode, PCRs, nonce). The first
    /// failure is returned.
    pub fn verify(&self, root: &TrustedRoot, policy: &Policy) -> Result<VerifiedDocument, Error> {
        let fields = &self.fields;
        let at_ms = policy.resolve_check_time(fields.timestamp_ms)?;
        let leaf_key = chain::verify_chain(root, &fields.cabundle, &fields.certificate, at_ms)?;
        let EcKey::P384(leaf_key) = leaf_key else {
            return Err(Error::UnsupportedPublicKey {
                cert: CertPosition::Leaf,
                reason: "ES384 needs a P-384 key".into(),
            });
        };
        // `from_slice` rejects r or s out of range: that is a bad signature too.
        let signature = p384::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| Error::CoseSignature)?;
        leaf_key
            .verify(&self.sig_structure(), &signature)
            .map_err(|_| Error::CoseSignature)?;

        let debug = is_debug(&fields.pcrs);
        policy.check(fields, at_ms, debug)?;
        Ok(VerifiedDocument {
            payload: fields.clone(),
            debug,
        })
    }
}

/// Parses and verifies in one call: [`AttestationDocument::from_bytes`] then
/// [`AttestationDocument::verify`].
pub fn verify(
    bytes: &[u8],
    root: &TrustedRoot,
    policy: &Policy,
) -> Result<VerifiedDocument, Error> {
    AttestationDocument::from_bytes(bytes)?.verify(root, policy)
}

/// A debug-mode enclave reports PCR0, PCR1 and PCR2 as all zeroes.
fn is_debug(pcrs: &BTreeMap<u8, Vec<u8>>) -> bool {
    (0..3).all(|i| pcrs.get(&i).is_some_and(|v| v.iter().all(|&b| b == 0)))
}

/// An attestation document whose chain, signature and policy all checked out.
/// Only [`AttestationDocument::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedDocument {
    payload: Payload,
    debug: bool,
}

impl VerifiedDocument {
    /// The enclave's `module_id` (instance and enclave id).
    pub fn module_id(&self) -> &str {
        &self.payload.module_id
    }

    /// When the NSM produced the document, in ms since the UNIX epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.payload.timestamp_ms
    }

    /// The PCR digest algorithm; always `"SHA384"`.
    pub fn digest(&self) -> &str {
        &self.payload.digest
    }

    /// All PCRs the document carries, by index.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.payload.pcrs
    }

    /// One PCR, if present.
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.payload.pcrs.get(&index).map(Vec::as_slice)
    }

    /// `public_key`: `None` if null or absent, `Some(&[])` if an empty byte string.
    pub fn public_key(&self) -> Option<&[u8]> {
        self.payload.public_key.as_deref()
    }

    /// `user_data`, with the same null/empty distinction as [`Self::public_key`].
    pub fn user_data(&self) -> Option<&[u8]> {
        self.payload.user_data.as_deref()
    }

    /// `nonce`, with the same null/empty distinction as [`Self::public_key`].
    pub fn nonce(&self) -> Option<&[u8]> {
        self.payload.nonce.as_deref()
    }

    /// Whether this is a debug-mode enclave (PCR0, PCR1, PCR2 all zero).
    pub fn is_debug(&self) -> bool {
        self.debug
    }

    /// The leaf (enclave) certificate, DER.
    pub fn leaf_certificate(&self) -> &[u8] {
        &self.payload.certificate
    }

    /// The JSON-friendly summary (hex-encoded byte fields).
    pub fn summary(&self) -> AttestationSummary {
        let p = &self.payload;
        AttestationSummary {
            module_id: p.module_id.clone(),
            timestamp_ms: p.timestamp_ms,
            digest: p.digest.clone(),
            pcrs: p.pcrs.iter().map(|(&i, v)| (i, hex::encode(v))).collect(),
            public_key: p.public_key.as_ref().map(hex::encode),
            user_data: p.user_data.as_ref().map(hex::encode),
            nonce: p.nonce.as_ref().map(hex::encode),
            debug: self.debug,
        }
    }
}

/// The verified fields in the form the CLI prints:
/// `{"module_id", "timestamp_ms", "digest", "pcrs": {"0": hex, ...}, "public_key",
/// "user_data", "nonce", "debug"}`, byte fields as lowercase hex, null when absent
/// (an empty byte string is `""`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationSummary {
    pub module_id: String,
    pub timestamp_ms: u64,
    pub digest: String,
    pub pcrs: BTreeMap<u8, String>,
    pub public_key: Option<String>,
    pub user_data: Option<String>,
    pub nonce: Option<String>,
    pub debug: bool,
}
