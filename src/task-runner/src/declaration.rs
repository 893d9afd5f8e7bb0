//! What a task declares about itself in its `package.json`, under `"nautilus"`:
//! the destinations it may reach and the operator secrets it needs.
//!
//! ```json
//! {"name": "fetch-task", "main": "index.js",
//!  "nautilus": {"egress": ["api.open-meteo.com:443", "example.org"],
//!               "secrets": ["WEATHER_API_KEY"]}}
//! ```
//!
//! The declaration lives in the task's own files, so the task digest covers
//! it, and the server lists it in the attested manifest. It is parsed once
//! per task (at start as root) into one [`TaskDeclaration`]; a malformed one
//! refuses the task, and a server refuses to start with such a task.
//!
//! Unknown keys under `"nautilus"` are refused rather than ignored: a typo
//! (`"egres"`) would otherwise silently give the task no network, or a
//! field the runner does not enforce would look enforced.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::RESERVED_ENV;
use crate::TaskError;

/// Most hosts a task may declare: each gets its own loopback address in its
/// box, and a listener per port.
pub const MAX_EGRESS_HOSTS: usize = 32;
/// The port of an entry that names none.
pub const DEFAULT_EGRESS_PORT: u16 = 443;
/// Longest host name (RFC 1035: 253 characters in text form).
const MAX_HOST_BYTES: usize = 253;
/// Longest label of a host name.
const MAX_LABEL_BYTES: usize = 63;
/// Most secrets one task may declare.
pub const MAX_SECRETS: usize = 16;
/// Longest secret name.
pub const MAX_SECRET_NAME: usize = 64;

/// Everything a task declares under `"nautilus"` in its `package.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskDeclaration {
    /// The destinations the task may open TCP connections to (its TLS is its
    /// own); empty: no network but its own loopback.
    pub egress: Vec<EgressHost>,
    /// Names of the operator secrets the task needs, each handed to it as
    /// an environment variable of that name. A run fails before it starts
    /// when one of them is not set.
    pub secrets: Vec<String>,
}

/// Operator secret values by name, as the runner receives them: zeroed when
/// dropped. Only the names a task declares reach it.
pub type SecretValues = BTreeMap<String, Zeroizing<String>>;

/// One allowed destination: a host name (lower case, never an IP literal)
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressHost {
    /// The host name, lower case.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for EgressHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Serialize for EgressHost {
    /// As `"host:port"`, the form the manifest lists.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a declaration is refused. The texts say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    /// `"nautilus"` is not an object with known keys, or a field is not a
    /// list of strings.
    #[error("package.json \"nautilus\" is not valid: {0} (expected {{\"egress\": [\"host[:port]\", ...], \"secrets\": [\"NAME\", ...]}})")]
    Shape(String),
    /// More than [`MAX_EGRESS_HOSTS`] entries.
    #[error("package.json \"nautilus\".\"egress\" has {0} entries, at most {MAX_EGRESS_HOSTS} are allowed")]
    TooMany(usize),
    /// One entry is not a host name with an optional port.
    #[error("package.json \"nautilus\".\"egress\" entry {entry:?}: {why}")]
    Entry {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The secrets list is too long, names one twice, or a name is not usable.
    #[error("package.json \"nautilus\".\"secrets\": {0}")]
    Secrets(String),
}

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
    nautilus: Option<serde_json::Value>,
}

/// The `"nautilus"` object as written. Add a field here and to
/// [`TaskDeclaration`] to declare something new.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    egress: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
}

impl TaskDeclaration {
    /// Reads and checks the declaration in `dir/package.json` (a regular
    /// file of bounded size); no `"nautilus"` object declares nothing.
    pub fn read(dir: &Path) -> Result<Self, TaskError> {
        Self::from_package_json(&crate::task::read_package_json(dir)?)
            .map_err(|e| TaskError::InvalidTask(e.to_string()))
    }

    /// Parses the declaration out of a whole `package.json`. A file without
    /// `"nautilus"` declares nothing.
    pub fn from_package_json(bytes: &[u8]) -> Result<Self, DeclarationError> {
        let package: PackageJson =
            serde_json::from_slice(bytes).map_err(|e| DeclarationError::Shape(e.to_string()))?;
        match package.nautilus {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(value) => Self::from_value(value),
        }
    }

    fn from_value(value: serde_json::Value) -> Result<Self, DeclarationError> {
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| DeclarationError::Shape(e.to_string()))?;
        if raw.egress.len() > MAX_EGRESS_HOSTS {
            return Err(DeclarationError::TooMany(raw.egress.len()));
        }
        let mut egress: Vec<EgressHost> = Vec::with_capacity(raw.egress.len());
        for entry in &raw.egress {
            let host = parse_entry(entry).map_err(|why| DeclarationError::Entry {
                entry: entry.clone(),
                why,
            })?;
            if egress.contains(&host) {
                return Err(DeclarationError::Entry {
                    entry: entry.clone(),
                    why: format!("{host} is listed twice"),
                });
            }
            egress.push(host);
        }
        check_secrets(&raw.secrets).map_err(DeclarationError::Secrets)?;
        Ok(Self {
            egress,
            secrets: raw.secrets,
        })
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

/// At most [`MAX_SECRETS`] usable names, none twice.
fn check_secrets(secrets: &[String]) -> Result<(), String> {
    if secrets.len() > MAX_SECRETS {
        return Err(format!(
            "{} secrets are declared, at most {MAX_SECRETS} are allowed",
            secrets.len()
        ));
    }
    for (i, name) in secrets.iter().enumerate() {
        if let Some(problem) = check_secret_name(name) {
            return Err(problem);
        }
        if secrets[..i].contains(name) {
            return Err(format!("{name:?} is named twice"));
        }
    }
    Ok(())
}

/// `host` or `host:port`, host a DNS name of at least two labels.
fn parse_entry(entry: &str) -> Result<EgressHost, String> {
    if entry.contains(['[', ']']) || entry.matches(':').count() > 1 {
        return Err(
            "IP literals are not allowed, only host names (the box resolves only declared names)"
                .into(),
        );
    }
    let (host, port) = match entry.split_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (entry, DEFAULT_EGRESS_PORT),
    };
    let host = host.to_ascii_lowercase();
    check_host(&host)?;
    Ok(EgressHost { host, port })
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(format!("port {port:?} is not a number from 1 to 65535"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// A host name as RFC 1123 allows it (letters, digits, hyphens; labels of 1
/// to 63; no trailing dot), with at least two labels and a last label that
/// is not all digits (so no IPv4 literal in any notation), and not
/// `localhost` (RFC 6761: it names the machine the relay runs on).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host name is empty".into());
    }
    if host.contains('*') {
        return Err(
            "wildcards are not allowed: list each host name (each gets its own address in the box)"
                .into(),
        );
    }
    if host.len() > MAX_HOST_BYTES {
        return Err(format!(
            "the host name is longer than {MAX_HOST_BYTES} characters"
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(
                "the host name has an empty label (no leading, trailing or double dots)".into(),
            );
        }
        if label.len() > MAX_LABEL_BYTES {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL_BYTES} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} has characters other than letters, digits and '-' (write internationalized names in their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "IP literals are not allowed, only host names (the box resolves only declared names)"
                .into(),
        );
    }
    if labels.len() < 2 {
        return Err("a single-label name is not allowed: write the fully qualified name (e.g. api.example.org)".into());
    }
    if last == "localhost" {
        return Err("localhost names the relay's own machine: it is not a destination".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn parse(json: &str) -> Result<TaskDeclaration, DeclarationError> {
        TaskDeclaration::from_package_json(json.as_bytes())
    }

    fn entry(e: &str) -> Result<EgressHost, String> {
        parse_entry(e)
    }

    #[test]
    fn no_field_declares_nothing() {
        assert_eq!(
            parse(r#"{"main":"index.js"}"#).unwrap(),
            TaskDeclaration::default()
        );
        assert_eq!(
            parse(r#"{"nautilus":{}}"#).unwrap(),
            TaskDeclaration::default()
        );
        assert_eq!(
            parse(r#"{"nautilus":null}"#).unwrap(),
            TaskDeclaration::default()
        );
    }

    #[test]
    fn parses_the_documented_shape() {
        let d = parse(r#"{"nautilus":{"egress":["api.open-meteo.com:443","Example.ORG","a.example.org:8443"]}}"#)
            .unwrap();
        let listed: Vec<String> = d.egress.iter().map(ToString::to_string).collect();
        assert_eq!(
            listed,
            [
                "api.open-meteo.com:443",
                "example.org:443",
                "a.example.org:8443"
            ]
        );
        assert_eq!(
            serde_json::to_string(&d.egress).unwrap(),
            r#"["api.open-meteo.com:443","example.org:443","a.example.org:8443"]"#
        );
    }

    #[test]
    fn refuses_ip_literals_wildcards_and_bad_names() {
        for bad in [
            "1.2.3.4",
            "1.2.3.4:443",
            "127.0.0.1",
            "[::1]:443",
            "::1",
            "2130706433",
            "0x7f000001",
            "*.example.org",
            "example",
            "localhost",
            "a.localhost",
            "example.org.",
            ".example.org",
            "a..example.org",
            "-a.example.org",
            "a_b.example.org",
            "ex ample.org",
            "exämple.org",
            "",
            ":443",
            "example.org:",
            "example.org:0",
            "example.org:65536",
            "example.org:+1",
            "example.org:https",
        ] {
            assert!(entry(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(entry(&format!("{}.org", "a".repeat(64))).is_err());
        assert!(entry(&format!("{}.org", "a.".repeat(126))).is_err());
        assert!(entry("xn--exmple-cua.org:443").is_ok());
        assert!(entry("1.example.org").is_ok());
    }

    #[test]
    fn refuses_malformed_declarations_with_a_clear_message() {
        let err = parse(r#"{"nautilus":{"egres":["example.org"]}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `egres`"), "{err}");
        let err = parse(r#"{"nautilus":{"egress":"example.org"}}"#).unwrap_err();
        assert!(matches!(err, DeclarationError::Shape(_)), "{err}");
        let err = parse(r#"{"nautilus":["example.org"]}"#).unwrap_err();
        assert!(matches!(err, DeclarationError::Shape(_)), "{err}");
        let err =
            parse(r#"{"nautilus":{"egress":["example.org","EXAMPLE.org:443"]}}"#).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let err = parse(r#"{"nautilus":{"egress":["1.2.3.4"]}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "package.json \"nautilus\".\"egress\" entry \"1.2.3.4\": IP literals are not allowed, only host names (the box resolves only declared names)"
        );
    }

    #[test]
    fn caps_the_number_of_entries() {
        let hosts: Vec<String> = (0..=MAX_EGRESS_HOSTS)
            .map(|i| format!("\"h{i}.example.org\""))
            .collect();
        let json = format!(r#"{{"nautilus":{{"egress":[{}]}}}}"#, hosts.join(","));
        assert_eq!(
            parse(&json).unwrap_err(),
            DeclarationError::TooMany(MAX_EGRESS_HOSTS + 1)
        );
        let json = format!(
            r#"{{"nautilus":{{"egress":[{}]}}}}"#,
            hosts[..MAX_EGRESS_HOSTS].join(",")
        );
        assert_eq!(parse(&json).unwrap().egress.len(), MAX_EGRESS_HOSTS);
    }

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
    fn egress_and_secrets_are_declared_together() {
        let d = parse(r#"{"nautilus":{"egress":["example.org"],"secrets":["API_KEY"]}}"#)
            .expect("both");
        assert_eq!(d.egress[0].to_string(), "example.org:443");
        assert_eq!(d.secrets, ["API_KEY"]);
        let err = parse(r#"{"nautilus":{"egress":["example.org"],"secret":["API_KEY"]}}"#)
            .expect_err("typo");
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
        let err = parse(r#"{"nautilus":{"secrets":["PATH"]}}"#).expect_err("reserved");
        assert!(matches!(err, DeclarationError::Secrets(_)), "{err}");
    }

    #[test]
    fn a_missing_secret_is_named() {
        let d = TaskDeclaration {
            secrets: vec!["A".into(), "B".into()],
            ..TaskDeclaration::default()
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
