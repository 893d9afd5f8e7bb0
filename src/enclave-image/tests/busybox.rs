//! The image's busybox (`enclave/busybox.sh`): built from Debian's source
//! package pinned in `enclave/inputs.lock` (kind `src`) with the committed
//! `enclave/busybox.config`, by the pinned musl gcc, reproducibly; a source
//! file that does not match its pin and a config kconfig would change are
//! refused. What the image carries of it is checked in `image.rs`.
//!
//! Downloads the two source files (2.5 MB) once into the shared cache; the
//! first test builds busybox once in a fresh cache (about half a minute on
//! an idle machine) besides the shared cached build.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{listed_applets, outcome, repo};

/// Runs `script` (a copy of enclave/busybox.sh, or the one itself) under
/// `umask` in `cwd` with `envs`; (success, stdout, stderr).
fn busybox_sh(
    script: &Path,
    umask: &str,
    cwd: &Path,
    envs: &[(&str, &str)],
) -> (bool, String, String) {
    outcome(
        Command::new("sh")
            .args(["-c", "umask \"$1\" && exec \"$2\"", "sh", umask])
            .arg(script)
            .current_dir(cwd)
            .envs(envs.iter().copied())
            .output()
            .expect("running enclave/busybox.sh"),
    )
}

/// The shared cached build (what `make image` puts into the image) and a
/// second one from scratch in a fresh build cache, elsewhere, with another
/// umask, zone and locale: the same bytes, a static binary whose `--list` is
/// exactly the committed applet list.
#[test]
fn two_builds_from_the_pinned_source_in_other_places_are_byte_identical() {
    let script = repo().join("enclave/busybox.sh");
    let (ok, first, stderr) = busybox_sh(&script, "022", &repo(), &[]);
    assert!(ok, "busybox.sh failed:\n{stderr}");
    let first = PathBuf::from(first.trim());

    let elsewhere = tempfile::Builder::new()
        .prefix("other place")
        .tempdir()
        .unwrap();
    let builds = elsewhere.path().join("deeper/builds");
    let (ok, second, stderr) = busybox_sh(
        &script,
        "077",
        elsewhere.path(),
        &[
            ("BUSYBOX_CACHE", builds.to_str().unwrap()),
            ("TZ", "Pacific/Auckland"),
            ("LC_ALL", "C.UTF-8"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert!(ok, "the second busybox build failed:\n{stderr}");
    assert!(
        stderr.contains("building busybox 1:1.35.0-4+deb12u1 from source"),
        "the second build was not built from scratch:\n{stderr}"
    );
    let second = PathBuf::from(second.trim());
    assert!(second.starts_with(&builds), "{}", second.display());
    let (a, b) = (
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
    );
    assert!(
        a == b,
        "{} and {} differ",
        first.display(),
        second.display()
    );

    let elf = goblin::elf::Elf::parse(&a).unwrap();
    assert!(
        elf.interpreter.is_none() && elf.libraries.is_empty(),
        "not static"
    );
    let out = Command::new(&first).arg("--list").output().unwrap();
    assert!(out.status.success());
    let mut listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, listed_applets());
}

/// A cached source tarball that is not the pinned one is removed and, with
/// no network to fetch the real one, the build stops naming the pin; nothing
/// is built.
#[test]
fn a_source_file_that_does_not_match_its_pin_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let builds = tempfile::tempdir().unwrap();
    let planted = cache.path().join("busybox_1.35.0.orig.tar.bz2");
    std::fs::write(&planted, b"not busybox's source").unwrap();
    let nowhere = "http://127.0.0.1:9";
    let (ok, stdout, stderr) = busybox_sh(
        &repo().join("enclave/busybox.sh"),
        "022",
        cache.path(),
        &[
            ("CACHE", cache.path().to_str().unwrap()),
            ("BUSYBOX_CACHE", builds.path().to_str().unwrap()),
            ("http_proxy", nowhere),
            ("https_proxy", nowhere),
            ("HTTPS_PROXY", nowhere),
        ],
    );
    assert!(!ok, "a tampered source was accepted: {stdout}");
    assert!(
        stderr.contains("could not download busybox_1.35.0.orig.tar.bz2 matching sha256:faeeb244"),
        "{stderr}"
    );
    assert!(
        !planted.exists(),
        "the tampered tarball stayed in the cache"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(std::fs::read_dir(builds.path()).unwrap().count(), 0);
}

/// The committed config is kconfig's own, complete: one that kconfig would
/// change (here an option whose dependency, wget, is off) is refused with a
/// diff before busybox is compiled, so no option can come or go unseen.
#[test]
fn a_config_that_kconfig_would_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = dir.path().join("enclave");
    std::fs::create_dir(&enclave).unwrap();
    for file in [
        "busybox.sh",
        "busybox.applets",
        "busybox.config",
        "inputs.lock",
        "musl-cc.sh",
    ] {
        std::fs::copy(repo().join("enclave").join(file), enclave.join(file)).unwrap();
    }
    let config = enclave.join("busybox.config");
    let text = std::fs::read_to_string(&config).unwrap();
    let off = "# CONFIG_FEATURE_WGET_AUTHENTICATION is not set\n";
    assert!(text.contains(off));
    std::fs::write(
        &config,
        text.replace(off, "CONFIG_FEATURE_WGET_AUTHENTICATION=y\n"),
    )
    .unwrap();
    let builds = dir.path().join("builds");
    let (ok, stdout, stderr) = busybox_sh(
        &enclave.join("busybox.sh"),
        "022",
        dir.path(),
        &[("BUSYBOX_CACHE", builds.to_str().unwrap())],
    );
    assert!(!ok, "a stale config was built: {stdout}");
    assert!(
        stderr.contains("enclave/busybox.config is not what kconfig makes of it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("-CONFIG_FEATURE_WGET_AUTHENTICATION=y"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&builds).unwrap().count(),
        0,
        "a build was left in the cache"
    );
}
