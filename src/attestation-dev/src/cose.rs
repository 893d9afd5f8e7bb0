//! The COSE_Sign1 envelope (RFC 9052) as the NSM emits it: untagged, ES384, no unprotected
//! headers.
//!
//! Hand-written over serde_cbor because the envelope is four fields and the available COSE
//! crate (aws-nitro-enclaves-cose) pulls in OpenSSL; serde_cbor is what the NSM API speaks.

use std::collections::BTreeMap;

use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use serde_bytes::Bytes;

use crate::AttestError;

/// COSE header label `alg`.
const HEADER_ALG: i8 = 1;
/// COSE algorithm ES384: ECDSA with P-384 and SHA-384.
const ALG_ES384: i8 = -35;

/// Signs `payload` with `key` and returns `[protected, {}, payload, signature]`.
pub(crate) fn sign1(payload: &[u8], key: &SigningKey) -> Result<Vec<u8>, AttestError> {
    let protected = serde_cbor::to_vec(&BTreeMap::from([(HEADER_ALG, ALG_ES384)]))
        .map_err(AttestError::Encoding)?;
    let to_be_signed = serde_cbor::to_vec(&(
        "Signature1",
        Bytes::new(&protected),
        Bytes::new(&[]),
        Bytes::new(payload),
    ))
    .map_err(AttestError::Encoding)?;
    // p384's default digest for ECDSA is SHA-384, and a `Signature` is fixed-size `r || s`,
    // which is COSE's encoding (not DER).
    let signature: Signature = key.sign(&to_be_signed);
    let unprotected: BTreeMap<i8, i8> = BTreeMap::new();
    serde_cbor::to_vec(&(
        Bytes::new(&protected),
        unprotected,
        Bytes::new(payload),
        Bytes::new(&signature.to_bytes()),
    ))
    .map_err(AttestError::Encoding)
}
