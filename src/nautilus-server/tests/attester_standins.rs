//! What the server does when the attester misbehaves the way a real NSM can:
//! stalls (the driver waits up to 120 s under one mutex) or reports another
//! time than the server's clock (the hypervisor's clock vs. the enclave's).

mod support;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use attestation_dev::{AttestError, AttestationRequest, Attester, Mode};
use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use nautilus_server::state::AppState;
use serde_bytes::ByteBuf;
use support::{config, TestServer};

/// An NSM that does not answer until released (or a minute passed).
struct Stalled {
    release: Mutex<mpsc::Receiver<()>>,
}

impl Attester for Stalled {
    fn mode(&self) -> Mode {
        Mode::Dev
    }

    fn attest(&self, _: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError> {
        let release = self.release.lock().expect("release");
        let _ = release.recv_timeout(Duration::from_secs(60));
        Err(AttestError::NsmUnexpectedResponse)
    }
}

#[tokio::test]
async fn a_stalled_attestation_call_gets_503_with_retry_after_at_its_deadline() {
    let (release, stalled) = mpsc::channel();
    let mut c = config();
    c.attestation_deadline = Duration::from_secs(1);
    let attester = Arc::new(Stalled {
        release: Mutex::new(stalled),
    });
    let s = TestServer::start_with(AppState::with_attester(c, attester).expect("state")).await;

    let started = Instant::now();
    let resp = s.get("/get_attestation").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = support::expect_error(resp, 503).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not finish within 1 s"),
        "{body}"
    );
    // Answered at the deadline, not when the attester gave up (a generous
    // bound: this proves "does not hang").
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let metrics = String::from_utf8(s.get_bytes("/metrics").await.to_vec()).expect("utf-8");
    assert!(
        metrics.contains("nautilus_attestation_timeouts_total 1"),
        "{metrics}"
    );
    let _ = release.send(());
    s.shutdown().await;
}

/// Documents whose timestamp is `behind` the server's clock, like an NSM
/// whose hypervisor clock and the enclave's disagree.
struct Skewed {
    behind: Duration,
}

impl Attester for Skewed {
    fn mode(&self) -> Mode {
        Mode::Dev
    }

    fn attest(&self, req: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError> {
        let now = SystemTime::now() - self.behind;
        let timestamp = now.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        let payload = AttestationDoc::new(
            "dev-skewed".into(),
            Digest::SHA384,
            timestamp,
            BTreeMap::new(),
            vec![1],
            vec![vec![1]],
            Some(req.user_data.to_vec()),
            req.nonce.map(<[u8]>::to_vec),
            Some(req.public_key.to_vec()),
        )
        .to_binary();
        Ok(serde_cbor::to_vec(&(
            ByteBuf::from(vec![0xa0]),
            BTreeMap::<i8, i8>::new(),
            ByteBuf::from(payload),
            ByteBuf::from(vec![0; 96]),
        ))
        .expect("cbor"))
    }
}

#[tokio::test]
async fn the_clock_skew_against_a_fresh_document_is_reported() {
    let attester = Arc::new(Skewed {
        behind: Duration::from_secs(30),
    });
    let s =
        TestServer::start_with(AppState::with_attester(config(), attester).expect("state")).await;
    let before = s.get_json("/health_check").await;
    assert!(before["clock_skew_ms"].is_null(), "{before}");

    assert_eq!(s.get("/get_attestation").await.status(), 200);
    let health = s.get_json("/health_check").await;
    let skew = health["clock_skew_ms"].as_i64().expect("measured");
    assert!((30_000..35_000).contains(&skew), "{health}");

    let metrics = String::from_utf8(s.get_bytes("/metrics").await.to_vec()).expect("utf-8");
    let gauge: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nautilus_clock_skew_seconds "))
        .unwrap_or_else(|| panic!("no skew gauge in {metrics}"))
        .parse()
        .expect("number");
    assert!((30.0..35.0).contains(&gauge), "{gauge}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_dev_server_reports_a_skew_near_zero() {
    let s = TestServer::start(config()).await;
    assert_eq!(s.get("/get_attestation").await.status(), 200);
    let health = s.get_json("/health_check").await;
    let skew = health["clock_skew_ms"].as_i64().expect("measured");
    // The dev attester stamps documents with this same clock.
    assert!(skew.abs() < 5_000, "{health}");
    s.shutdown().await;
}
