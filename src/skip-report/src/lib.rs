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
    report(test, reason, std::env::var_os(SKIPPED_TESTS_ENV).as_deref());
}

fn report(test: &str, reason: &str, summary: Option<&std::ffi::OsStr>) {
    let line = format!("SKIPPED {test}: {reason}\n");
    // One write each, so lines of tests running in parallel do not interleave;
    // a failed report must not fail the test.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = summary {
        append(&line, path);
    }
}

fn append(line: &str, path: &std::ffi::OsStr) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
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
        // Only the file part: the stderr line would look like a real skip.
        append("SKIPPED one: needs root\n", file.as_os_str());
        append("SKIPPED two: needs a kernel >= 5.8\n", file.as_os_str());
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "SKIPPED one: needs root\nSKIPPED two: needs a kernel >= 5.8\n"
        );
    }

    /// The point of this crate: the line shows in a plain `cargo test` run,
    /// whose capture hides a passing test's `eprintln!`. Runs this very test
    /// binary as a child, as cargo would, and reads what it printed.
    #[test]
    fn a_skip_line_shows_without_nocapture() {
        const CHILD: &str = "SKIP_REPORT_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            skipped("demo_test", "shown despite the capture");
            eprintln!("CAPTURED");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_skip_line_shows_without_nocapture"])
            .env(CHILD, "1")
            .env_remove(SKIPPED_TESTS_ENV)
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("SKIPPED demo_test: shown despite the capture\n"),
            "{stderr}"
        );
        // The harness did capture what the test printed the usual way.
        assert!(!stderr.contains("CAPTURED"), "{stderr}");
    }
}
