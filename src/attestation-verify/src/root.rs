//! The trust anchor: the pinned AWS Nitro Enclaves root, or one the caller names.

use der::Decode;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::error::ConfigError;

/// The AWS Nitro Enclaves root G1 certificate (DER), as AWS publishes it.
const AWS_NITRO_ROOT_G1_DER: &[u8] = include_bytes!("../roots/aws_nitro_root_g1.der");

/// SHA-256 of the embedded root's DER, the value AWS documents for it.
/// `build.rs` refuses to build if the embedded file does not hash to it.
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// The certificate a document's `cabundle[0]` must be byte-identical to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedRoot {
    der: Vec<u8>,
}

impl TrustedRoot {
    /// The embedded AWS Nitro Enclaves root G1, checked against its pinned SHA-256.
    ///
    /// Fails only if the crate was built from a tampered copy of the root.
    pub fn aws_nitro() -> Result<Self, ConfigError> {
        let got = hex::encode(Sha256::digest(AWS_NITRO_ROOT_G1_DER));
        if got != AWS_NITRO_ROOT_G1_SHA256 {
            return Err(ConfigError::RootPinMismatch {
                expected: AWS_NITRO_ROOT_G1_SHA256.to_owned(),
                got,
            });
        }
        Self::from_der(AWS_NITRO_ROOT_G1_DER)
    }

    /// A different root (e.g. a development CA), given as one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, ConfigError> {
        Certificate::from_der(der).map_err(|e| ConfigError::InvalidRoot(e.to_string()))?;
        Ok(Self { der: der.to_vec() })
    }

    /// A different root (e.g. a development CA), given as one PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self, ConfigError> {
        // Decode the armour to the exact DER inside it (rather than parsing and
        // re-encoding), because `cabundle[0]` is compared byte for byte.
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| ConfigError::InvalidRoot(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(ConfigError::InvalidRoot(format!(
                "PEM label is {label:?}, expected \"CERTIFICATE\""
            )));
        }
        Self::from_der(&der)
    }

    /// Accepts PEM (if the bytes look like text with a PEM header) or DER.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN") => Self::from_pem(text),
            _ => Self::from_der(bytes),
        }
    }

    /// The root certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Hex SHA-256 of the DER, as root pins are usually written.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }
}
