//! Replays the cargo-fuzz corpus (and any saved crash artifacts) through the same
//! parse → verify path as `fuzz/fuzz_targets/parse_document.rs`, so that path runs
//! on stable in CI even where the fuzzer itself cannot.

use std::path::{Path, PathBuf};

use attestation_verify::{AttestationDocument, CheckTime, Policy, TrustedRoot};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The fuzz target's body. Returns whether the input verified.
fn parse_document(data: &[u8]) -> bool {
    let Ok(doc) = AttestationDocument::from_bytes(data) else {
        return false;
    };
    let root = TrustedRoot::aws_nitro().unwrap();
    let policy = Policy::default()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true);
    doc.verify(&root, &policy).is_ok()
}

#[test]
fn corpus_and_artifacts_replay_without_panicking() {
    let seeds = files_in(&fuzz_dir().join("corpus/parse_document"));
    let seed_docs: Vec<_> = seeds
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cbor"))
        .collect();
    assert_eq!(
        seed_docs.len(),
        19,
        "seed corpus holds the 19 real documents"
    );
    for path in &seed_docs {
        let data = std::fs::read(path).unwrap();
        assert!(parse_document(&data), "seed {} verifies", path.display());
    }
    // Whatever the fuzzer added locally, and crash reproducers, must not panic.
    let extra = seeds.iter().filter(|p| !seed_docs.contains(p));
    for path in extra.chain(&files_in(&fuzz_dir().join("artifacts/parse_document"))) {
        parse_document(&std::fs::read(path).unwrap());
    }
}
