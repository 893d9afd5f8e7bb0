//! TLS parts for tests, used by `nautilus-server`'s, `nautilus-client`'s and
//! the boot test's TLS checks (one copy instead of three).
//!
//! - [`Capture`]: a rustls verifier that accepts any certificate (the
//!   handshake signature is still checked) and keeps it, to look at what a
//!   server presents, or to be a malicious relay's side towards the enclave.
//! - [`spki_sha256`]: the hash the manifest's `tls_spki_sha256` carries,
//!   computed here independently of the client's own code.
//! - [`byte_relay`]: forwards bytes untouched (what `nautilus-proxy` is) and
//!   records them: what a parent instance sees.
//! - [`terminating_relay`]: terminates TLS with its own self-signed
//!   certificate and forwards the plaintext over its own TLS connection (what
//!   a malicious parent would run).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The name clients put in their ClientHello (the server ignores it).
pub const SERVER_NAME: &str = "nautilus-enclave";

/// Accepts any certificate and keeps the last one presented; handshake
/// signatures are verified, so the peer holds the key it showed.
#[derive(Debug)]
pub struct Capture {
    cert: Mutex<Option<Vec<u8>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl Capture {
    /// A client configuration trusting any certificate, offering `alpn`, and
    /// the capture that records what was presented.
    pub fn client_config(alpn: &[&[u8]]) -> (rustls::ClientConfig, Arc<Self>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let capture = Arc::new(Self {
            cert: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&capture) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (config, capture)
    }

    /// The DER certificate presented last, if any.
    pub fn cert(&self) -> Option<Vec<u8>> {
        self.cert.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.cert.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` trusting any certificate, offering `alpn`,
/// and the capture holding the certificate presented.
pub async fn connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Arc<Capture>)> {
    let (config, capture) = Capture::client_config(alpn);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).expect("a valid server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok((tls, capture))
}

/// `GET path` with `Connection: close` over `stream`; the whole answer.
pub async fn http1_get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: nautilus\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut out = Vec::new();
    // A TLS peer that closes without close_notify ends the read with an
    // error after the answer: what was read is the answer.
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Hex SHA-256 of the SubjectPublicKeyInfo of a DER certificate.
pub fn spki_sha256(cert: &[u8]) -> String {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert).expect("an X.509 certificate");
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .expect("SPKI DER");
    hex::encode(Sha256::digest(spki))
}

/// Everything a [`byte_relay`] forwarded, both directions in one buffer
/// (at most [`Seen::LIMIT`] bytes are kept).
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    pub const LIMIT: usize = 64 << 20;

    fn record(&self, bytes: &[u8]) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = Self::LIMIT.saturating_sub(seen.len());
        seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// A copy of the bytes seen so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `needle` occurs in what was seen.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes().windows(needle.len()).any(|w| w == needle)
    }
}

/// A relay on a loopback port that forwards bytes to `upstream` untouched
/// (what `nautilus-proxy` does) and records them.
pub async fn byte_relay(upstream: SocketAddr) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let recorder = seen.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let seen = recorder.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (down_read, down_write) = down.into_split();
                let (up_read, up_write) = up.into_split();
                tokio::join!(
                    pump(down_read, up_write, &seen),
                    pump(up_read, down_write, &seen)
                );
            });
        }
    });
    (addr, seen)
}

/// Copies `from` to `to`, recording each chunk, until either side ends.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, seen: &Seen) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.record(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Terminates TLS with its own self-signed certificate, opens its own TLS
/// connection to `upstream` (accepting whatever it presents) and forwards
/// the plaintext: it reads everything. Returns its address and the hex
/// SHA-256 of its own SPKI.
pub async fn terminating_relay(upstream: SocketAddr) -> (SocketAddr, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).expect("cert");
    let spki = spki_sha256(cert.der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(signing_key.serialize_der()).into(),
        )
        .expect("server config");
    let (client, _) = Capture::client_config(&[]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let (acceptor, connector) = (acceptor.clone(), connector.clone());
            tokio::spawn(async move {
                let Ok(mut down) = acceptor.accept(down).await else {
                    return;
                };
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let name = ServerName::try_from(SERVER_NAME).expect("name");
                let Ok(mut up) = connector.connect(name, up).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    (addr, spki)
}
