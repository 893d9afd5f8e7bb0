//! A box's standard streams are its own whatever descriptor numbers the
//! runner's pipes happen to get. The reaper moves them to 0–2 and its report
//! pipe to 3; a runner whose descriptor 3 is free when a box starts (a test
//! binary whose other tests have ended, a server started with a stream
//! closed) once gave the box its report pipe's write end as stdin: the task
//! read EBADF from descriptor 0 and could write fake reports there.
//!
//! One test in its own binary, so that nothing else in the process takes
//! descriptor 3 between the test freeing it and the runner starting a box.

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use common::*;
use task_runner::{Runner, RunnerConfig, TaskRequest};

/// The box's report pipe number (`ns::FD_REPORT`).
const FD_REPORT: RawFd = 3;

/// Reads its stdin (descriptor 0), tells what it got and what descriptor 0
/// is, tries to write a report-sized message to it (the read end of a pipe
/// refuses), and writes to the other standard streams.
const READS_STDIN: &str = r#"'use strict';
const fs = require('node:fs');
let stdin;
try { stdin = fs.readFileSync(0, 'utf8'); } catch (e) { stdin = 'error ' + e.code; }
let written;
try { written = fs.writeSync(0, 'x'.repeat(12)); } catch (e) { written = 'error ' + e.code; }
process.stderr.write('to stderr');
process.stdout.write(JSON.stringify({ stdin, written, fifo: fs.fstatSync(0).isFIFO() }));
"#;

/// Takes descriptor number `fd` if it is free (a `/dev/null`), without ever
/// touching a descriptor someone else holds: opens until the number is
/// reached or passed, keeps only `fd`.
fn hold(fd: RawFd) -> Option<OwnedFd> {
    let mut opened = Vec::new();
    loop {
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        match f.as_raw_fd() {
            n if n == fd => return Some(f),
            n if n > fd => return None,
            _ => opened.push(f),
        }
    }
}

#[test]
fn a_box_reads_its_own_stdin_whatever_numbers_its_pipes_get() {
    if skip_unless_root("the box's descriptors (root mode)") {
        return;
    }
    // Before the runtime and the runner exist, so that they take other numbers.
    let mut held = hold(FD_REPORT);
    assert!(held.is_some(), "descriptor {FD_REPORT} is taken at start");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("stdin");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("package.json"), "{}").unwrap();
    std::fs::write(dir.join("index.js"), READS_STDIN).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for warm_pool in [0, 1] {
            let runner = Runner::new(RunnerConfig {
                max_concurrent: 1,
                warm_pool: Some(warm_pool),
                ..config_in(root.path())
            })
            .unwrap();
            runner.start_warm_pool();
            settled(&runner).await;
            // Bounded: a few runs, each started (cold) or refilled (warm)
            // with descriptor 3 free in the runner.
            for round in 0..4 {
                for stdin in [None, Some("from stdin")] {
                    drop(held.take());
                    let req = TaskRequest {
                        stdin: stdin.map(str::to_owned),
                        ..request("stdin", &[])
                    };
                    let r = run(&runner, req).await.unwrap();
                    let what = format!("warm pool {warm_pool}, round {round}: {r:?}");
                    assert_eq!(r.status, "success", "{what}");
                    assert_eq!(r.stderr, "to stderr", "{what}");
                    let seen = json(&r.stdout);
                    assert_eq!(seen["stdin"], stdin.unwrap_or(""), "{what}");
                    assert_eq!(seen["written"], "error EBADF", "{what}");
                    assert_eq!(seen["fifo"], true, "{what}");
                    settled(&runner).await;
                    // Taken back unless the runner holds it now (a warm
                    // box's pipe): then the next run uses that box.
                    held = hold(FD_REPORT);
                }
            }
        }
    });
}
