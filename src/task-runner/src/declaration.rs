//! What a task declares about itself in its `package.json`, under
//! `"nautilus"`: the operator secrets it needs. The file is part of the
//! task's digest, so the declaration is attested with the code.
//!
//! ```json
//! { "main": "index.js", "nautilus": { "secrets": ["WEATHER_API_KEY"] } }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::RESERVED_ENV;
use crate::TaskError;

/// A task's `"nautilus"` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDeclaration {
    /// Names of the operator secrets the task needs, each handed to it as
    /// an environment variable of that name. A run fails before it starts
    /// when one of them is not set.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Most secrets one task may declare.
pub const MAX_SECRETS: usize = 16;
/// Longest secret name.
pub const MAX_SECRET_NAME: usize = 64;

/// Operator secret values by name, as the runner receives them: zeroed when
/// dropped. Only the names a task declares reach it.
pub type SecretValues = BTreeMap<String, Zeroizing<String>>;

/// Why a secret name is refused, or `None` when it is a usable one: an
/// environment variable name of capitals, digits and `_`, not starting with
/// a digit, not one the runner sets itself nor `NAUTILUS_*` or `NODE_*`.
pub fn check_secret_name(name: &str) -> Option<String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if name.is_empty()
        || name.len() > MAX_SECRET_NAME
        || !ok_chars
        || name.as_bytes()[0].is_ascii_digit()
    {
        return Some(format!(
            "secret name {name:?} must be 1 to {MAX_SECRET_NAME} capitals, digits or _, not starting with a digit"
        ));
    }
    if RESERVED_ENV.contains(&name) || name.starts_with("NAUTILUS_") || name.starts_with("NODE_") {
        return Some(format!(
            "secret name {name:?} is reserved (the runner or Node.js use it)"
        ));
    }
    None
}

#[derive(Deserialize)]
struct PackageJson {
    #[serde(default)]
    nautilus: Option<TaskDeclaration>,
}

/// Largest `package.json` read.
const MAX_PACKAGE_JSON_BYTES: u64 = 1024 * 1024;

impl TaskDeclaration {
    /// Reads and checks the declaration in `dir/package.json`; no
    /// `"nautilus"` object declares nothing.
    pub fn read(dir: &Path) -> Result<Self, TaskError> {
        let invalid = |msg: String| TaskError::InvalidTask(msg);
        let package = dir.join("package.json");
        let meta = fs::symlink_metadata(&package).map_err(|_| TaskError::PackageJsonMissing)?;
        if !meta.is_file() || meta.len() > MAX_PACKAGE_JSON_BYTES {
            return Err(invalid(format!(
                "package.json must be a regular file of at most {MAX_PACKAGE_JSON_BYTES} bytes"
            )));
        }
        let text =
            fs::read(&package).map_err(|e| TaskError::internal("reading package.json", e))?;
        let parsed: PackageJson = serde_json::from_slice(&text)
            .map_err(|e| invalid(format!("package.json is not valid: {e}")))?;
        let declaration = parsed.nautilus.unwrap_or_default();
        declaration.check().map_err(invalid)?;
        Ok(declaration)
    }

    fn check(&self) -> Result<(), String> {
        if self.secrets.len() > MAX_SECRETS {
            return Err(format!(
                "package.json declares {} secrets, at most {MAX_SECRETS} are allowed",
                self.secrets.len()
            ));
        }
        for (i, name) in self.secrets.iter().enumerate() {
            if let Some(problem) = check_secret_name(name) {
                return Err(format!("package.json nautilus.secrets: {problem}"));
            }
            if self.secrets[..i].contains(name) {
                return Err(format!(
                    "package.json nautilus.secrets names {name:?} twice"
                ));
            }
        }
        Ok(())
    }

    /// The environment for a run: each declared secret from `values`, or
    /// [`TaskError::SecretMissing`] naming the first one not set.
    pub(crate) fn secret_env(
        &self,
        task_path: &str,
        values: &SecretValues,
    ) -> Result<Vec<(String, Zeroizing<String>)>, TaskError> {
        self.secrets
            .iter()
            .map(|name| match values.get(name) {
                Some(value) => Ok((name.clone(), value.clone())),
                None => Err(TaskError::SecretMissing {
                    task_path: task_path.to_owned(),
                    name: name.clone(),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_unreserved_variable_names() {
        for ok in ["WEATHER_API_KEY", "K", "_X1"] {
            assert_eq!(check_secret_name(ok), None, "{ok}");
        }
        for bad in [
            "",
            "lower",
            "1ST",
            "A-B",
            "A B",
            "PATH",
            "HOME",
            "NODE_OPTIONS",
            "NAUTILUS_TASK_ID",
        ] {
            assert!(check_secret_name(bad).is_some(), "{bad:?} accepted");
        }
        assert!(check_secret_name(&"A".repeat(65)).is_some());
    }

    #[test]
    fn declarations_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |text: &str| fs::write(dir.path().join("package.json"), text).expect("write");
        write(r#"{"main": "index.js"}"#);
        assert_eq!(
            TaskDeclaration::read(dir.path()).expect("plain"),
            TaskDeclaration::default()
        );
        write(r#"{"nautilus": {"secrets": ["A", "B"]}}"#);
        assert_eq!(
            TaskDeclaration::read(dir.path()).expect("two").secrets,
            ["A", "B"]
        );
        for bad in [
            r#"{"nautilus": {"secrets": ["A", "A"]}}"#,
            r#"{"nautilus": {"secrets": ["PATH"]}}"#,
            r#"{"nautilus": {"secrets": "A"}}"#,
        ] {
            write(bad);
            let err = TaskDeclaration::read(dir.path()).expect_err(bad);
            assert!(matches!(err, TaskError::InvalidTask(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_missing_secret_is_named() {
        let d = TaskDeclaration {
            secrets: vec!["A".into(), "B".into()],
        };
        let mut values = SecretValues::new();
        values.insert("A".into(), Zeroizing::new("a".into()));
        let err = d.secret_env("t", &values).expect_err("B unset");
        assert!(err.to_string().contains("\"B\""), "{err}");
        assert!(!err.to_string().contains("\"a\""), "{err}");
        values.insert("B".into(), Zeroizing::new("b".into()));
        assert_eq!(d.secret_env("t", &values).expect("both").len(), 2);
    }
}
