//! Runner memory stays bounded whatever a task prints. Alone in its own test
//! binary so no other test's allocations blur the measurement.

mod common;

use common::*;

/// Peak resident set size of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn printing_hundreds_of_megabytes_keeps_runner_memory_bounded() {
    const PRINTED: u64 = 128 << 20;
    let runner = runner();
    let cap = runner.config().max_output_bytes;
    let before = peak_rss();
    let result = run_ok(&runner, "flood", &[&PRINTED.to_string()]).await;
    let grown = peak_rss().saturating_sub(before);
    assert_eq!(result.status, "success");
    assert_eq!((result.stdout.len(), result.stderr.len()), (cap, cap));
    assert!(result.stdout_truncated && result.stderr_truncated);
    // Two capped buffers, their lossy copies and read chunks: a few MiB, against
    // 256 MiB printed.
    eprintln!(
        "task printed {} MiB; runner peak RSS grew by {} KiB",
        (2 * PRINTED) >> 20,
        grown >> 10
    );
    assert!(grown < 16 << 20, "runner peak RSS grew by {grown} bytes");
}
