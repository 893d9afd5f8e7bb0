//! The C compiler of `make image` (ring's C and assembly in the server) is the
//! one `enclave/inputs.lock` pins by SHA-256 (kind `cc`), unpacked by
//! `enclave/musl-cc.sh`, never the host's: it runs its own `cc1` and `as`,
//! compiles against musl's headers, names itself in what it compiles, and a
//! package that does not match its pin is refused.
//!
//! Downloads the six pinned packages (35 MB) once into the shared cache.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs musl-cc.sh with `envs`; (success, stdout, stderr).
fn musl_cc(envs: &[(&str, &Path)]) -> (bool, String, String) {
    let out = Command::new(repo().join("enclave/musl-cc.sh"))
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("running enclave/musl-cc.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_pinned_compiler_runs_its_own_parts_against_musl() {
    let (ok, stdout, stderr) = musl_cc(&[]);
    assert!(ok, "musl-cc.sh failed:\n{stderr}");
    let tree = PathBuf::from(stdout.trim());
    assert!(tree.join("cc").is_file(), "{}", tree.display());

    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("probe.c");
    // glibc's headers define __GLIBC__; musl's do not.
    std::fs::write(
        &source,
        "#include <stdio.h>\n#ifdef __GLIBC__\n#error glibc headers\n#endif\n\
         int probe(const char *s) { return puts(s); }\n",
    )
    .unwrap();
    let object = work.path().join("probe.o");
    let out = Command::new(tree.join("cc"))
        .arg("-v")
        .arg("-O2")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // The compiler proper and the assembler it ran, and the headers it read.
    let tree_text = tree.to_string_lossy();
    let cc1 = log
        .lines()
        .find(|l| l.contains("/cc1 "))
        .expect("gcc -v names cc1");
    assert!(cc1.trim_start().starts_with(&*tree_text), "{cc1}");
    let assembler = log
        .lines()
        .find(|l| l.contains("/as "))
        .expect("gcc -v names as");
    assert!(
        assembler.trim_start().starts_with(&*tree_text),
        "{assembler}"
    );
    assert!(
        log.contains(&format!("{tree_text}/usr/include/x86_64-linux-musl")),
        "{log}"
    );
    // What ends up in the binaries: the pinned version, by name.
    let bytes = std::fs::read(&object).unwrap();
    let comment = b"GCC: (Debian 12.2.0-14+deb12u1) 12.2.0";
    assert!(
        bytes.windows(comment.len()).any(|w| w == comment),
        "the object does not name the pinned gcc"
    );
}

#[test]
fn a_compiler_package_that_does_not_match_its_pin_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    // The cached gcc-12 package, tampered with; no network to fetch another.
    let planted = cache.path().join("gcc-12_12.2.0-14+deb12u1_amd64.deb");
    std::fs::write(&planted, b"not the pinned gcc").unwrap();
    let nowhere = Path::new("http://127.0.0.1:9");
    let (ok, stdout, stderr) = musl_cc(&[
        ("CACHE", cache.path()),
        ("NAUTILUS_CACHE", base.path()),
        ("http_proxy", nowhere),
        ("https_proxy", nowhere),
        ("HTTPS_PROXY", nowhere),
    ]);
    assert!(!ok, "a tampered compiler was accepted: {stdout}");
    assert!(
        stderr.contains("could not download gcc-12 12.2.0-14+deb12u1 matching sha256:b46f33cc"),
        "{stderr}"
    );
    assert!(
        !planted.exists(),
        "the tampered package stayed in the cache"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        !base.path().join("musl-cc").exists(),
        "something was unpacked"
    );
}
