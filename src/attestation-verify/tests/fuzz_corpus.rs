//! Replays the cargo-fuzz seeds (and any local corpus and crash artifacts) through the same
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
fn seeds_corpus_and_artifacts_replay_without_panicking() {
    let seeds = files_in(&fuzz_dir().join("seeds/parse_document"));
    assert_eq!(seeds.len(), 19, "the seeds are the 19 real documents");
    for path in &seeds {
        let data = std::fs::read(path).unwrap();
        assert!(parse_document(&data), "seed {} verifies", path.display());
    }
    // The fuzzer's local corpus and crash reproducers (not in git) must not panic.
    let corpus = files_in(&fuzz_dir().join("corpus/parse_document"));
    let artifacts = files_in(&fuzz_dir().join("artifacts/parse_document"));
    for path in corpus.iter().chain(&artifacts) {
        parse_document(&std::fs::read(path).unwrap());
    }
}
