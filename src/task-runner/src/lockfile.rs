//! Does a task's `node_modules` hold what its `package-lock.json` pins?
//!
//! The image installs a task's dependencies with `npm ci` from its lockfile;
//! a local tasks directory may not have run it (or may hold other versions).
//! A task whose `node_modules` does not match would fail on every call with
//! `Cannot find module …`, signed, so a server refuses it at start and says
//! how to install them instead.
//!
//! What is checked, from `packages` (lockfile versions 2 and 3) or, for
//! version 1, the top-level `dependencies`: every package npm would install
//! with `--omit=dev` (dev-only and linked entries are skipped, optional ones
//! may be missing) has a `package.json` at its place whose `version` is the
//! pinned one. Integrity is not rechecked: `npm ci` did that when it installed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

/// Largest `package-lock.json` read.
const MAX_LOCKFILE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest installed `package.json` read.
const MAX_PACKAGE_JSON_BYTES: u64 = 1024 * 1024;

/// Why a task's installed dependencies do not match its lockfile.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DependencyError {
    #[error("package-lock.json cannot be read: {0}")]
    Unreadable(String),
    #[error("{0} is not installed")]
    Missing(String),
    #[error("{name} {installed} is installed but package-lock.json pins {locked}")]
    WrongVersion {
        name: String,
        installed: String,
        locked: String,
    },
}

#[derive(Deserialize)]
struct Lockfile {
    #[serde(default)]
    packages: Option<BTreeMap<String, Locked>>,
    /// Lockfile version 1.
    #[serde(default)]
    dependencies: Option<BTreeMap<String, Locked>>,
}

#[derive(Deserialize)]
struct Locked {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    dev: bool,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    link: bool,
}

#[derive(Deserialize)]
struct Installed {
    #[serde(default)]
    version: Option<String>,
}

/// Checks the task directory `dir`. `Ok` when it has no lockfile.
pub fn check_installed(dir: &Path) -> Result<(), DependencyError> {
    let lock_path = dir.join("package-lock.json");
    if !lock_path.exists() {
        return Ok(());
    }
    let text = read_capped(&lock_path, MAX_LOCKFILE_BYTES).map_err(DependencyError::Unreadable)?;
    let lock: Lockfile =
        serde_json::from_slice(&text).map_err(|e| DependencyError::Unreadable(e.to_string()))?;
    let wanted: Vec<(String, Locked)> = match (lock.packages, lock.dependencies) {
        (Some(packages), _) => packages
            .into_iter()
            .filter(|(key, _)| key.starts_with("node_modules/") || key.contains("/node_modules/"))
            .collect(),
        (None, Some(deps)) => deps
            .into_iter()
            .map(|(name, l)| (format!("node_modules/{name}"), l))
            .collect(),
        (None, None) => Vec::new(),
    };
    for (place, locked) in wanted {
        if locked.dev || locked.link {
            continue;
        }
        let name = package_name(&place);
        let installed = match read_capped(
            &dir.join(&place).join("package.json"),
            MAX_PACKAGE_JSON_BYTES,
        ) {
            Ok(bytes) => bytes,
            Err(_) if locked.optional => continue,
            Err(_) => return Err(DependencyError::Missing(name.to_owned())),
        };
        let installed: Installed = serde_json::from_slice(&installed)
            .map_err(|_| DependencyError::Missing(name.to_owned()))?;
        if let (Some(locked), installed) = (locked.version, installed.version) {
            if installed.as_deref() != Some(locked.as_str()) {
                return Err(DependencyError::WrongVersion {
                    name: name.to_owned(),
                    installed: installed.unwrap_or_else(|| "(no version)".to_owned()),
                    locked,
                });
            }
        }
    }
    Ok(())
}

/// `node_modules/a/node_modules/@s/b` → `@s/b`.
fn package_name(place: &str) -> &str {
    place
        .rsplit_once("node_modules/")
        .map_or(place, |(_, name)| name)
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    const LOCK: &str = r#"{"name": "t", "lockfileVersion": 3, "packages": {
        "": {"dependencies": {"ms": "2.1.3", "@s/b": "1.0.0"}},
        "node_modules/ms": {"version": "2.1.3"},
        "node_modules/@s/b": {"version": "1.0.0"},
        "node_modules/@s/b/node_modules/ms": {"version": "1.0.0"},
        "node_modules/dev-only": {"version": "9.9.9", "dev": true},
        "node_modules/fsevents": {"version": "2.3.3", "optional": true}
    }}"#;

    #[test]
    fn a_task_without_lockfile_is_not_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_installed(dir.path()), Ok(()));
    }

    #[test]
    fn installed_dependencies_match_missing_and_other_versions_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "package-lock.json", LOCK);
        // Checked in path order: the scoped package comes first.
        assert_eq!(
            check_installed(d),
            Err(DependencyError::Missing("@s/b".into()))
        );
        write(d, "node_modules/ms/package.json", r#"{"version": "2.1.3"}"#);
        write(
            d,
            "node_modules/@s/b/package.json",
            r#"{"version": "1.0.0"}"#,
        );
        assert_eq!(
            check_installed(d),
            Err(DependencyError::Missing("ms".into())),
            "the nested copy is missing"
        );
        write(
            d,
            "node_modules/@s/b/node_modules/ms/package.json",
            r#"{"version": "1.0.1"}"#,
        );
        assert_eq!(
            check_installed(d),
            Err(DependencyError::WrongVersion {
                name: "ms".into(),
                installed: "1.0.1".into(),
                locked: "1.0.0".into()
            })
        );
        write(
            d,
            "node_modules/@s/b/node_modules/ms/package.json",
            r#"{"version": "1.0.0"}"#,
        );
        // Dev-only and missing optional packages are not required.
        assert_eq!(check_installed(d), Ok(()));
    }

    #[test]
    fn lockfile_version_1_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "package-lock.json",
            r#"{"lockfileVersion": 1, "dependencies": {"ms": {"version": "2.1.3"}}}"#,
        );
        assert_eq!(
            check_installed(d),
            Err(DependencyError::Missing("ms".into()))
        );
        write(d, "package-lock.json", "not json");
        assert!(matches!(
            check_installed(d),
            Err(DependencyError::Unreadable(_))
        ));
    }
}
