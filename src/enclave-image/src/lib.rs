//! Reproducible enclave images: one code path decides the bytes for both
//! `make image` and `make build-eif`.
//!
//! - [`cpio`]: a deterministic newc cpio writer (and reader), gzip'd with a
//!   fixed header;
//! - [`eif`]: the EIF v4 writer and reader, PCR0/1/2 as AWS defines them, and
//!   nitro-cli's measurements JSON;
//! - [`provenance`]: the kernel version and compilers recorded in the
//!   metadata;
//! - [`verify_digest`]: checks a downloaded input against its pinned hash
//!   (npm `sha512-<base64>` integrity or `sha256:<hex>`).
//!
//! The CLI (`enclave-image`) wraps them: `cpio`, `eif`, `describe`,
//! `extract`, `list`, `verify`.

pub mod cpio;
pub mod eif;
pub mod provenance;

use std::io::Read;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// Why an input does not match its pin.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported hash {0:?}: expected sha512-<base64> (npm integrity) or sha256:<hex>")]
    Unsupported(String),
    #[error("{path}: {algorithm} is {actual}, the pin says {expected}")]
    Mismatch {
        path: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
}

/// Checks the file at `path` against `pin` (`sha512-<base64>` as npm's
/// `dist.integrity`, or `sha256:<hex>` as Debian's index).
pub fn verify_digest(path: &Path, pin: &str) -> Result<(), DigestError> {
    let (algorithm, expected, actual) = if let Some(b64) = pin.strip_prefix("sha512-") {
        let digest = hash_file::<Sha512>(path)?;
        (
            "sha512",
            b64.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(digest),
        )
    } else if let Some(hex_digest) = pin.strip_prefix("sha256:") {
        let digest = hash_file::<Sha256>(path)?;
        (
            "sha256",
            hex_digest.to_ascii_lowercase(),
            hex::encode(digest),
        )
    } else {
        return Err(DigestError::Unsupported(pin.to_owned()));
    };
    if expected != actual {
        return Err(DigestError::Mismatch {
            path: path.display().to_string(),
            algorithm,
            expected,
            actual,
        });
    }
    Ok(())
}

fn hash_file<D: Digest>(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().to_vec());
        }
        hasher.update(&buf[..n]);
    }
}
