//! `/get_attestation` over a real socket, checked by the production verifier.

mod support;

use std::time::Duration;

use attestation_verify::{AttestationDocument, Error as VerifyError, Policy, TrustedRoot};
use result_signing::{decode_public_key, SignedResponse, TaskResult, INTENT_TASK_RESULT};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{config, TestServer};

async fn fetch_document(s: &TestServer, query: &str) -> Vec<u8> {
    let resp = s.get(&format!("/get_attestation{query}")).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    hex::decode(body["attestation"].as_str().expect("attestation field")).expect("hex")
}

#[tokio::test]
async fn signed_results_verify_against_the_freshly_attested_key() {
    let s = TestServer::start(config()).await;
    let root =
        TrustedRoot::from_pem(s.state.dev_root_pem().expect("dev root")).expect("dev root parses");
    let nonce = "5eed".repeat(16);

    let doc = fetch_document(&s, &format!("?nonce={nonce}")).await;
    let policy = Policy::default()
        .allow_debug(true)
        .expected_nonce(hex::decode(&nonce).expect("hex"));
    let verified = AttestationDocument::from_bytes(&doc)
        .expect("AWS format")
        .verify(&root, &policy)
        .expect("verifies with the dev root");

    assert!(
        verified.module_id().starts_with("dev-"),
        "{}",
        verified.module_id()
    );
    assert!(verified.is_debug(), "dev documents carry zero PCRs");
    assert_eq!(
        verified.nonce(),
        Some(hex::decode(&nonce).expect("hex").as_slice())
    );

    let manifest = s.get_bytes("/manifest").await;
    assert_eq!(
        verified.user_data(),
        Some(&Sha256::digest(&manifest)[..]),
        "user_data binds /manifest"
    );

    let pk = verified.public_key().expect("document carries the key");
    assert_eq!(pk.len(), 33);
    let key = decode_public_key(pk).expect("P-256 point");

    let resp = s
        .process(json!({"task_path": "echo", "args": ["x"], "nonce": "abcd"}))
        .await;
    assert_eq!(resp.status(), 200);
    let signed: SignedResponse<TaskResult> = resp.json().await.expect("signed");
    signed
        .verify(&key, INTENT_TASK_RESULT)
        .expect("signed by the attested key");
    assert_eq!(signed.response.data.nonce.as_deref(), Some("abcd"));
    s.shutdown().await;
}

#[tokio::test]
async fn dev_documents_are_refused_by_default_policies() {
    let s = TestServer::start(config()).await;
    let doc = fetch_document(&s, "").await;
    let parsed = AttestationDocument::from_bytes(&doc).expect("AWS format");

    // The AWS root never accepts a dev document.
    let aws = TrustedRoot::aws_nitro().expect("embedded root");
    let err = parsed
        .verify(&aws, &Policy::default().allow_debug(true))
        .expect_err("not AWS");
    assert!(matches!(err, VerifyError::RootMismatch { .. }), "{err}");

    // Even with the dev root, debug-mode PCRs need explicit consent.
    let dev = TrustedRoot::from_pem(s.state.dev_root_pem().expect("dev root")).expect("pem");
    let err = parsed
        .verify(&dev, &Policy::default())
        .expect_err("debug refused");
    assert!(matches!(err, VerifyError::DebugMode), "{err}");

    // The largest nonce the NSM takes, 512 bytes, is accepted and bound.
    let big = vec![0xa5u8; 512];
    let doc = fetch_document(&s, &format!("?nonce={}", hex::encode(&big))).await;
    let verified = AttestationDocument::from_bytes(&doc)
        .expect("AWS format")
        .verify(
            &dev,
            &Policy::default().allow_debug(true).expected_nonce(big),
        )
        .expect("512-byte nonce round-trips");
    assert_eq!(verified.nonce().map(<[u8]>::len), Some(512));

    // No nonce asked → none in the document.
    let verified = parsed
        .verify(&dev, &Policy::default().allow_debug(true))
        .expect("verifies");
    assert_eq!(verified.nonce(), None);
    s.shutdown().await;
}

/// Attestation calls are bounded in flight but a burst is served, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_attestation_requests_is_served() {
    // All from one address: its share of requests in flight must cover the
    // burst (the share itself is tested in availability.rs).
    let mut c = config();
    c.http.per_client.requests = 128;
    // And its NSM rate (the rates are tested in availability.rs).
    c.attestation_limits =
        nautilus_server::config::AttestationLimits::new(1000, 1000, Duration::from_secs(2));
    let s = TestServer::start(c).await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let http = s.http.clone();
        let url = s.url(&format!("/get_attestation?nonce={i:08x}"));
        burst.spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut ok = 0;
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.expect("join").expect("answered"), 200);
        ok += 1;
    }
    assert_eq!(ok, 64);
    s.shutdown().await;
}

/// Requests without a nonce share one recent document (one NSM call per
/// period, however many ask); a nonce gets a fresh one; with sharing off,
/// every request gets its own.
#[tokio::test]
async fn requests_without_a_nonce_share_one_recent_document() {
    let s = TestServer::start(config()).await;
    let a = s.get_json("/get_attestation").await;
    let b = s.get_json("/get_attestation").await;
    assert_eq!(a["attestation"], b["attestation"]);
    let fresh = s.get_json("/get_attestation?nonce=01").await;
    assert_ne!(a["attestation"], fresh["attestation"]);
    s.shutdown().await;

    let mut c = config();
    c.attestation_limits.shared_for = Duration::ZERO;
    let s = TestServer::start(c).await;
    let a = s.get_json("/get_attestation").await;
    let b = s.get_json("/get_attestation").await;
    assert_ne!(a["attestation"], b["attestation"]);
    s.shutdown().await;
}
