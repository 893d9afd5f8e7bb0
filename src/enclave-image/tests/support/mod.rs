//! What more than one test of the image reads from the checkout.

use std::path::Path;

/// The applet names `enclave/busybox.applets` lists (the ones run.sh runs),
/// sorted: what the image's busybox must offer, and nothing else.
pub fn listed_applets() -> Vec<String> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../enclave/busybox.applets");
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split('#').next()?.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}
