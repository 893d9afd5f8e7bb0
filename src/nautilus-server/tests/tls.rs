//! TLS terminated in the server (`--tls on`): real rustls handshakes over
//! loopback, HTTP/2 and HTTP/1.1 by ALPN, the key's hash in the attested
//! manifest, and the idle deadline covering the handshake.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use support::{config, TestServer};
use tls_test_support::{http1_get, spki_sha256, Capture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn tls_config() -> nautilus_server::state::ServerConfig {
    let mut c = config();
    c.tls = true;
    c
}

async fn connect(s: &TestServer, alpn: &[&[u8]]) -> (TlsStream<TcpStream>, Arc<Capture>) {
    tls_test_support::connect(s.addr(), alpn)
        .await
        .expect("TLS handshake")
}

/// The manifest carries the hash of the key the server presents, so the
/// attestation (user_data = SHA-256 of the manifest) binds the TLS key.
#[tokio::test]
async fn the_manifest_pins_the_key_the_server_presents() {
    let s = TestServer::start(tls_config()).await;
    let (tls, capture) = connect(&s, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answer = http1_get(tls, "/manifest").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let manifest: serde_json::Value = serde_json::from_str(body).expect("manifest JSON");
    let presented = capture.cert().expect("a certificate");
    assert_eq!(manifest["tls_spki_sha256"], spki_sha256(&presented));
    assert_eq!(
        Sha256::digest(body.as_bytes())[..],
        s.state.manifest().sha256()[..],
        "served verbatim"
    );
    s.shutdown().await;

    // A second server makes its own key.
    let other = TestServer::start(tls_config()).await;
    let (_, capture) = connect(&other, &[b"http/1.1"]).await;
    let again = capture.cert().expect("a certificate");
    assert_ne!(spki_sha256(&again), spki_sha256(&presented));
    other.shutdown().await;
}

#[tokio::test]
async fn without_tls_the_manifest_says_null_and_plain_http_works() {
    let s = TestServer::start(config()).await;
    let manifest = s.get_json("/manifest").await;
    assert!(manifest["tls_spki_sha256"].is_null(), "{manifest}");
    s.shutdown().await;
}

/// ALPN `h2` gets HTTP/2 on the TLS stream.
#[tokio::test]
async fn http2_by_alpn() {
    let s = TestServer::start(tls_config()).await;
    let (tls, _) = connect(&s, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut client, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = axum::http::Request::get("https://nautilus-enclave/health_check")
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let health: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(health["status"], "ok");
    s.shutdown().await;
}

/// Plain HTTP to a TLS port gets no answer: nothing is served in the clear.
#[tokio::test]
async fn plain_http_to_a_tls_server_gets_no_answer() {
    let s = TestServer::start(tls_config()).await;
    let mut tcp = TcpStream::connect(s.addr()).await.expect("connect");
    tcp.write_all(b"GET /health_check HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "answered in the clear: {out:?}"
    );
    s.shutdown().await;
}

/// The handshake is inside the idle deadline: a client that takes most of
/// it for the handshake and most of it again for its request headers loses
/// the connection, as a slow plain-HTTP client would. (A deadline that
/// restarted after the handshake would let it in, and let a slow client
/// hold a connection twice as long.)
#[tokio::test]
async fn the_handshake_counts_against_the_idle_deadline() {
    let mut c = tls_config();
    c.http.idle_timeout = Duration::from_millis(1500);
    let s = TestServer::start(c).await;

    // Within the deadline: answered.
    let (tls, _) = connect(&s, &[b"http/1.1"]).await;
    assert!(http1_get(tls, "/health_check")
        .await
        .starts_with("HTTP/1.1 200"));

    // Silent for 1 s before the handshake, 1 s more before the headers.
    let (client, _) = Capture::client_config(&[]);
    let tcp = TcpStream::connect(s.addr()).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("x").expect("name"), tcp)
        .await
        .expect("handshake within the deadline");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let answer = http1_get(tls, "/health_check").await;
    assert!(
        !answer.contains("200"),
        "served past the deadline: {answer}"
    );
    assert!(
        s.metric("nautilus_connections_closed_total{reason=\"idle\"}")
            .await
            >= 1.0
    );

    // A TCP connection that never starts the handshake is closed as idle.
    let mut silent = TcpStream::connect(s.addr()).await.expect("connect");
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    s.shutdown().await;
}

/// Garbage instead of a ClientHello ends the connection and is counted.
#[tokio::test]
async fn a_failed_handshake_is_counted() {
    let s = TestServer::start(tls_config()).await;
    let mut tcp = TcpStream::connect(s.addr()).await.expect("connect");
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let mut counted = 0.0;
    for _ in 0..50 {
        counted = s
            .metric("nautilus_connections_closed_total{reason=\"tls_handshake\"}")
            .await;
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 1.0);
    s.shutdown().await;
}
