//! Feeds arbitrary bytes through the whole document path: parse, then (if that
//! succeeds) verify against the embedded root at the document's own timestamp, so
//! the chain and signature code also sees inputs that survive parsing.
//!
//! Any panic, hang or runaway allocation is a bug; an `Err` is the expected outcome.
#![no_main]

use attestation_verify::{AttestationDocument, CheckTime, Policy, TrustedRoot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = AttestationDocument::from_bytes(data) else {
        return;
    };
    let Ok(root) = TrustedRoot::aws_nitro() else {
        return;
    };
    let policy = Policy::default()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true);
    let _ = doc.verify(&root, &policy);
});
