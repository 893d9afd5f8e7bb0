//! The image is reproducible: two clones of the committed HEAD, in different
//! directories, each compiling its own static musl binaries from scratch
//! under a different umask, time zone, locale and wall-clock time, write
//! byte-identical `out/nitro.eif` and `out/nitro.pcrs`.
//!
//! `enclave/check-reproducible.sh` does the two builds (the one code path,
//! also for users); this test runs it, then checks what it left: two real
//! clones of HEAD, each with its own compiled binaries, and one byte compare of
//! their outputs. Ignored in a plain `cargo test` because it compiles the
//! release binaries twice (minutes); `make repro-test`, part of `make test`,
//! runs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use enclave_image::eif;

mod support;
use support::repo;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Removes the clones' cargo target directories (hundreds of MB each) however
/// the test ends; after a failure their outputs stay for a look, after a pass
/// the test removes the clones.
struct RemoveTargets(Vec<PathBuf>);

impl Drop for RemoveTargets {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::remove_dir_all(dir.join("target"));
        }
    }
}

const RELEASE: &str = "target/enclave/x86_64-unknown-linux-musl/release";

#[test]
#[ignore = "two full release builds: `make repro-test` (part of `make test`) runs it"]
fn two_clones_compiled_from_scratch_build_byte_identical_images() {
    let work = repo().join("target/repro-test");
    fs::create_dir_all(&work).unwrap();
    let one = work.join("one");
    let two = work.join("deeper/still/two");
    let _cleanup = RemoveTargets(vec![one.clone(), two.clone()]);

    let status = Command::new("sh")
        .arg(repo().join("enclave/check-reproducible.sh"))
        .arg(&work)
        .current_dir(repo())
        .status()
        .expect("running enclave/check-reproducible.sh");
    assert!(
        status.success(),
        "enclave/check-reproducible.sh failed: the two builds differ or one failed (output above; outputs in {})",
        work.display()
    );

    // What the script did, checked here rather than taken from its word.
    let head = git(&repo(), &["rev-parse", "HEAD"]);
    for clone in [&one, &two] {
        assert_eq!(
            git(clone, &["rev-parse", "HEAD"]),
            head,
            "{} is not at HEAD",
            clone.display()
        );
        assert_eq!(
            git(clone, &["rev-parse", "--show-toplevel"]),
            clone.to_string_lossy(),
            "{} is not a clone of its own",
            clone.display()
        );
        for bin in ["nautilus-init", "nautilus-server", "enclave-image"] {
            assert!(
                clone.join(RELEASE).join(bin).is_file(),
                "{} did not compile {bin} itself",
                clone.display()
            );
        }
    }
    // Different paths of different depth: nothing path-dependent can hide.
    assert_ne!(one.components().count(), two.components().count());

    let first = fs::read(one.join("out/nitro.eif")).unwrap();
    let second = fs::read(two.join("out/nitro.eif")).unwrap();
    let first_pcrs = fs::read_to_string(one.join("out/nitro.pcrs")).unwrap();
    let second_pcrs = fs::read_to_string(two.join("out/nitro.pcrs")).unwrap();
    // The compare itself is only worth something on a real image: both files
    // parse, and the PCRs file is the EIF's own measurement.
    let info = eif::read_eif(&one.join("out/nitro.eif"), None).expect("the EIF parses");
    assert_eq!(
        first_pcrs.trim_end(),
        info.pcrs.to_measurements_json().trim_end()
    );
    assert!(
        first.len() > 10_000_000,
        "an image of {} bytes is not the real one",
        first.len()
    );

    assert!(
        first == second && first_pcrs == second_pcrs,
        "the two clones' images differ"
    );
    for clone in [&one, &work.join("deeper")] {
        fs::remove_dir_all(clone).unwrap();
    }
}
