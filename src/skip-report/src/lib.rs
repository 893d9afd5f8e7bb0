//! How a test that cannot run here says so.
//!
//! `cargo test` captures what a passing test prints, so an `eprintln!` of
//! "SKIPPED" is shown only with `--nocapture`, and a skipped test counts as
//! passed. [`skipped`] instead writes its line straight to the process's
//! stderr, which the capture does not intercept, so it appears in the normal
//! output of `cargo test`; and when `NAUTILUS_SKIPPED_TESTS` names a file (as
//! `make test` does), it appends the line there too, for the count and list
//! `make test` prints after the summary.

use std::io::Write;

/// The variable naming the file that collects skip lines.
pub const SKIPPED_TESTS_ENV: &str = "NAUTILUS_SKIPPED_TESTS";

/// Reports that `test` did not run, and why, e.g.
/// `skipped("a_task_cannot_see_dev_nsm", "needs root")`.
pub fn skipped(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}\n");
    // One write each, so lines of tests running in parallel do not interleave;
    // a failed report must not fail the test.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIPPED_TESTS_ENV) {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// True (after reporting `test` as skipped) when this process is not root.
pub fn needs_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    skipped(test, "needs root");
    true
}

/// Whether the effective uid is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_appended_to_the_summary_file() {
        let dir = std::env::temp_dir().join(format!("skip-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skipped.txt");
        std::env::set_var(SKIPPED_TESTS_ENV, &file);
        skipped("one", "needs root");
        skipped("two", "needs a kernel >= 5.8");
        std::env::remove_var(SKIPPED_TESTS_ENV);
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "SKIPPED one: needs root\nSKIPPED two: needs a kernel >= 5.8\n"
        );
    }
}
