//! Documents from `attestation-dev`'s software stand-in verify under its dev root,
//! and only there, and only when debug-mode documents are allowed (its PCRs are
//! zero, as a debug enclave's are).

use attestation_dev::{AttestationRequest, Attester, DevAttester};
use attestation_verify::{Error, Policy, TrustedRoot, AWS_NITRO_ROOT_G1_SHA256};
use sha2::{Digest, Sha256};

#[test]
fn dev_documents_verify_only_under_the_dev_root_with_debug_allowed() {
    let attester = DevAttester::generate().unwrap();
    let document = attester
        .attest(AttestationRequest {
            public_key: &[2; 33],
            user_data: b"manifest digest",
            nonce: Some(b"client nonce"),
        })
        .unwrap();
    let dev_root = TrustedRoot::from_der(attester.root_der()).unwrap();
    // The document was made just now, so the default check time (now) and age limit apply.
    let debug_allowed = Policy::default()
        .allow_debug(true)
        .expected_nonce(*b"client nonce");

    let verified = attestation_verify::verify(&document, &dev_root, &debug_allowed).unwrap();
    assert!(verified.is_debug());
    assert!(verified.module_id().starts_with("dev-"));
    assert_eq!(verified.public_key(), Some(&[2; 33][..]));
    assert_eq!(verified.user_data(), Some(&b"manifest digest"[..]));
    // The PEM the dev server hands out names the same root.
    assert_eq!(
        TrustedRoot::from_pem(&attester.root_pem()).unwrap(),
        dev_root
    );

    assert_eq!(
        attestation_verify::verify(&document, &dev_root, &Policy::default()).unwrap_err(),
        Error::DebugMode
    );
    assert_eq!(
        attestation_verify::verify(
            &document,
            &TrustedRoot::aws_nitro().unwrap(),
            &debug_allowed
        )
        .unwrap_err(),
        Error::RootMismatch {
            expected: AWS_NITRO_ROOT_G1_SHA256.to_owned(),
            got: hex::encode(Sha256::digest(attester.root_der())),
        }
    );
}
