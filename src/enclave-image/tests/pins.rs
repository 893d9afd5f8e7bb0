//! The two build paths pin the same outside inputs: every Debian package and
//! Debian source file (busybox's) in
//! `enclave/inputs.lock` (which `make image` fetches) is in the Containerfile
//! (which `make build-eif` fetches) with the same SHA-256 and the same
//! content-addressed snapshot.debian.org file id, and both name the file the
//! same way in the download cache.

use std::collections::BTreeMap;
use std::path::Path;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `cache file name -> (sha256, sha1)` of the Debian packages in inputs.lock
/// (the kernel package included) and of the Debian source files (`src`).
fn lock_debs() -> BTreeMap<String, (String, String)> {
    repo_file("enclave/inputs.lock")
        .lines()
        .filter(|l| ["deb ", "kernel ", "src "].iter().any(|k| l.starts_with(k)))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 6, "inputs.lock: {l}");
            let file = cols[4].rsplit('/').next().unwrap().to_owned();
            let sha256 = cols[3].strip_prefix("sha256:").expect(l).to_owned();
            let sha1 = cols[5].strip_prefix("sha1:").expect(l).to_owned();
            (file, (sha256, sha1))
        })
        .collect()
}

/// The same map from the Containerfile's `ADD --checksum=sha256:… \ URL /cache/FILE`.
fn containerfile_debs() -> BTreeMap<String, (String, String)> {
    let text = repo_file("Containerfile").replace("\\\n", " ");
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("ADD --checksum=sha256:")?;
            let cols: Vec<&str> = rest.split_whitespace().collect();
            let sha1 = cols
                .get(1)?
                .strip_prefix("https://snapshot.debian.org/file/")?;
            let file = cols.get(2)?.strip_prefix("/cache/")?;
            Some((file.to_owned(), (cols[0].to_owned(), sha1.to_owned())))
        })
        .collect()
}

#[test]
fn both_build_paths_pin_the_same_debian_packages_by_content() {
    let lock = lock_debs();
    assert!(!lock.is_empty(), "no deb in inputs.lock");
    for (sha256, sha1) in lock.values() {
        assert_eq!(sha256.len(), 64, "{sha256}");
        assert_eq!(sha1.len(), 40, "{sha1}");
        assert!(sha1.bytes().all(|b| b.is_ascii_hexdigit()), "{sha1}");
    }
    assert_eq!(lock, containerfile_debs());
}
