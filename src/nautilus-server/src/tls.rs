//! The server's TLS identity: a key made in memory at start, never written
//! anywhere, and a self-signed certificate for it. No CA vouches for it:
//! the manifest carries the SHA-256 of its SubjectPublicKeyInfo, the
//! attestation document carries the manifest's hash, and clients pin that.

use std::sync::Arc;

use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

/// Why the TLS identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not make the key or the certificate.
    #[error("could not generate the TLS key and certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("could not configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS key and certificate, as a rustls server configuration.
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
    spki_sha256: [u8; 32],
}

/// The certificate's subject name. Clients do not check it (they pin the
/// key), but a certificate needs one.
const SUBJECT: &str = "nautilus-enclave";

impl TlsIdentity {
    /// A fresh P-256 key and a self-signed certificate for it, served with
    /// HTTP/2 or HTTP/1.1 as the client's ALPN asks.
    pub fn generate() -> Result<Self, TlsError> {
        let rcgen::CertifiedKey {
            cert,
            signing_key: key_pair,
        } = rcgen::generate_simple_self_signed(vec![SUBJECT.to_owned()])?;
        let spki_sha256 = Sha256::digest(key_pair.subject_public_key_info()).into();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            spki_sha256,
        })
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
    pub fn spki_sha256(&self) -> &[u8; 32] {
        &self.spki_sha256
    }

    /// The rustls configuration to accept connections with.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}
