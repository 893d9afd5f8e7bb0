//! TLS without a CA: the server's certificate is accepted only if the SHA-256
//! of its SubjectPublicKeyInfo is the `tls_spki_sha256` of the attested
//! manifest.
//!
//! The attestation document and the manifest are signed and hashed, so they
//! may be fetched before the key is known: until then every key presented is
//! recorded (the handshake's signature is still checked, so the server holds
//! the key it showed), and once the attestation is verified every recorded
//! key must be the attested one. From then on only that key is accepted.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};

/// SHA-256 of the SubjectPublicKeyInfo of a DER certificate.
pub fn spki_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    Some(Sha256::digest(spki).into())
}

#[derive(Debug, Default)]
struct PinState {
    /// The attested key, once known.
    pinned: Option<[u8; 32]>,
    /// Every key presented before that.
    seen: Vec<[u8; 32]>,
    /// The last key refused after pinning, with the pin.
    refused: Option<([u8; 32], [u8; 32])>,
}

/// A rustls verifier that pins one SPKI hash; see the module docs.
#[derive(Debug)]
pub(crate) struct SpkiPin {
    state: Mutex<PinState>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// At most this many different keys are recorded before pinning (a server
/// shows one; a relay in between could show many).
const MAX_SEEN: usize = 16;

impl SpkiPin {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PinState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `attested`; returns a key presented earlier that differs from it.
    pub(crate) fn pin(&self, attested: [u8; 32]) -> Option<[u8; 32]> {
        let mut state = self.lock();
        state.pinned = Some(attested);
        state.seen.iter().copied().find(|seen| *seen != attested)
    }

    /// The pin and the key last refused against it.
    pub(crate) fn refused(&self) -> Option<([u8; 32], [u8; 32])> {
        self.lock().refused
    }

    /// A rustls client configuration that verifies with this pin.
    pub(crate) fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for SpkiPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(presented) = spki_sha256(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        };
        let mut state = self.lock();
        match state.pinned {
            Some(pinned) if pinned == presented => Ok(ServerCertVerified::assertion()),
            Some(pinned) => {
                state.refused = Some((pinned, presented));
                Err(rustls::Error::General(format!(
                    "TLS key mismatch: the server presented SPKI SHA-256 {}, the attested manifest pins {}",
                    hex::encode(presented),
                    hex::encode(pinned)
                )))
            }
            None => {
                if !state.seen.contains(&presented) {
                    if state.seen.len() >= MAX_SEEN {
                        return Err(rustls::Error::General(
                            "too many different TLS keys presented before attestation".into(),
                        ));
                    }
                    state.seen.push(presented);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
