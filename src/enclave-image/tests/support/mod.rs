//! What more than one test of the image reads from the checkout.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// The checkout's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A finished command as the tests read it: (success, stdout, stderr).
pub fn outcome(out: Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The applet names `enclave/busybox.applets` lists (the ones run.sh runs),
/// sorted: what the image's busybox must offer, and nothing else.
pub fn listed_applets() -> Vec<String> {
    let list = repo().join("enclave/busybox.applets");
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split('#').next()?.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}
