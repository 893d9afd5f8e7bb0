//! PCR files: the measurements of an image build, as the build tools write them.
//!
//! # Accepted formats (a specification other clients can mirror)
//!
//! A PCR file is at most [`MAX_PCR_FILE_LEN`] bytes of UTF-8 text. Its format is
//! decided by its first character that is not JSON whitespace (space, tab, CR, LF):
//! `{` means JSON, anything else means eif_build text. Nothing else is accepted;
//! in particular a capture with a status line before the JSON (`nitro-cli
//! build-enclave … 2>&1`, AWS `eif_build`'s stdout) is refused, because the
//! first line is then neither JSON nor a `<hex> PCRn` line.
//!
//! **nitro-cli JSON** ([`PcrFileFormat::NitroCliJson`]): one JSON object with a
//! `"Measurements"` member, as `nitro-cli build-enclave` (stdout) and `nitro-cli
//! describe-eif --eif-path IMAGE.eif` print it. Other top-level members
//! (`EifVersion`, `IsSigned`, …) are ignored. `"Measurements"` must be a
//! *measurements object* (below).
//!
//! **Measurements JSON** ([`PcrFileFormat::MeasurementsJson`]): a JSON object
//! without `"Measurements"`, which must itself be a measurements object.
//!
//! A *measurements object* has only these members: `"HashAlgorithm"` (optional,
//! a string starting with `Sha384`, as nitro-cli writes `"Sha384 { ... }"`) and
//! one or more of `"PCR0"` … `"PCR8"` (exactly these names), each a string of
//! exactly 96 hex digits (48 bytes, SHA-384), either case. Anything else is
//! refused. JSON duplicate keys are not looked for (the last one wins, as with
//! `JSON.parse`).
//!
//! **eif_build text** ([`PcrFileFormat::EifBuildText`]): what `eif_build
//! --pcrs_output FILE` writes (the `eif_build` that StageX packages, used by
//! MystenLabs' nautilus as `out/nitro.pcrs`):
//!
//! ```text
//! <96 hex digits> PCR0
//! <96 hex digits> PCR1
//! <96 hex digits> PCR2
//! ```
//!
//! The text is split into lines at LF (a CR before it is dropped). Each line,
//! trimmed of spaces and tabs, is either empty (skipped) or exactly two fields
//! separated by spaces or tabs: 96 hex digits, either case, then a name `PCR0` …
//! `PCR8`. At least one line must name a PCR, and no PCR may be named twice.
//!
//! In every format at least one PCR is required, and every PCR given must then
//! match the document: PCRs absent from the file are not checked.
//!
//! Every refusal is a [`ConfigError::PcrFile`], whose message says what was
//! wrong, names the accepted formats and how to produce one.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::policy::ExpectedPcrs;

/// Largest PCR file [`ExpectedPcrs::from_pcr_file`] reads. Real ones are under
/// 1 KiB (`describe-eif` with a signing certificate is the largest).
pub const MAX_PCR_FILE_LEN: usize = 64 * 1024;

/// PCR0 … PCR8 are the registers a Nitro image build measures.
const MAX_PCR_INDEX: u8 = 8;
/// SHA-384, the only hash Nitro uses for PCRs, in hex.
const PCR_HEX_LEN: usize = 96;

/// Which of the accepted formats a PCR file was in (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcrFileFormat {
    /// `{"Measurements": {...}, ...}`: `nitro-cli build-enclave` or `describe-eif`.
    NitroCliJson,
    /// The measurements object alone: `{"HashAlgorithm": ..., "PCR0": ...}`.
    MeasurementsJson,
    /// `eif_build --pcrs_output`: one `<hex> PCRn` line per register.
    EifBuildText,
}

impl fmt::Display for PcrFileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PcrFileFormat::NitroCliJson => "nitro-cli JSON ({\"Measurements\": {...}})",
            PcrFileFormat::MeasurementsJson => "measurements JSON ({\"PCR0\": ...})",
            PcrFileFormat::EifBuildText => "eif_build text (<hex> PCRn lines)",
        })
    }
}

impl ExpectedPcrs {
    /// Reads a PCR file in one of the accepted formats (see the [module
    /// docs](crate::pcr_file)) and says which one it was.
    pub fn from_pcr_file(bytes: &[u8]) -> Result<(Self, PcrFileFormat), ConfigError> {
        if bytes.len() > MAX_PCR_FILE_LEN {
            return Err(refuse(format!(
                "{} bytes, more than the {MAX_PCR_FILE_LEN}-byte limit",
                bytes.len()
            )));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| refuse(format!("not UTF-8 text ({e})")))?;
        if text.trim_start_matches(is_json_whitespace).starts_with('{') {
            from_json(text)
        } else {
            Ok((from_eif_build_text(text)?, PcrFileFormat::EifBuildText))
        }
    }
}

fn from_json(text: &str) -> Result<(ExpectedPcrs, PcrFileFormat), ConfigError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| refuse(format!("not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| refuse("not a JSON object".into()))?;
    match object.get("Measurements") {
        Some(inner) => {
            let inner = inner
                .as_object()
                .ok_or_else(|| refuse("\"Measurements\" is not an object".into()))?;
            Ok((measurements(inner)?, PcrFileFormat::NitroCliJson))
        }
        None => Ok((measurements(object)?, PcrFileFormat::MeasurementsJson)),
    }
}

fn measurements(object: &Map<String, Value>) -> Result<ExpectedPcrs, ConfigError> {
    let mut pcrs = ExpectedPcrs::new();
    for (key, value) in object {
        if key == "HashAlgorithm" {
            if !value.as_str().is_some_and(|s| s.starts_with("Sha384")) {
                return Err(refuse(format!("HashAlgorithm is {value}, not Sha384")));
            }
            continue;
        }
        let index = pcr_index(key).ok_or_else(|| {
            refuse(format!(
                "unexpected member {key:?} (a measurements object has only HashAlgorithm and PCR0-PCR8)"
            ))
        })?;
        let hex_value = value
            .as_str()
            .ok_or_else(|| refuse(format!("{key} is {value}, not a hex string")))?;
        pcrs.insert(index, pcr_value(key, hex_value)?)?;
    }
    require_some(pcrs)
}

fn from_eif_build_text(text: &str) -> Result<ExpectedPcrs, ConfigError> {
    let mut pcrs = ExpectedPcrs::new();
    for (number, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let fields: Vec<&str> = line.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
        let (hex_value, name) = match fields[..] {
            [] => continue,
            [hex_value, name] => (hex_value, name),
            _ => return Err(not_a_pcr_line(number + 1, line)),
        };
        let index = pcr_index(name).ok_or_else(|| not_a_pcr_line(number + 1, line))?;
        let value = pcr_value(name, hex_value)?;
        if pcrs.iter().any(|(i, _)| i == index) {
            return Err(refuse(format!(
                "{name} appears twice (line {})",
                number + 1
            )));
        }
        pcrs.insert(index, value)?;
    }
    require_some(pcrs)
}

/// `PCR0` … `PCR8`, spelled exactly so.
fn pcr_index(name: &str) -> Option<u8> {
    let digits = name.strip_prefix("PCR")?;
    match digits.as_bytes() {
        [d @ b'0'..=b'9'] if d - b'0' <= MAX_PCR_INDEX => Some(d - b'0'),
        _ => None,
    }
}

fn pcr_value(name: &str, hex_value: &str) -> Result<Vec<u8>, ConfigError> {
    let chars = hex_value.chars().count();
    if chars != PCR_HEX_LEN {
        return Err(refuse(format!(
            "{name} has {chars} characters; a SHA-384 PCR is {PCR_HEX_LEN} hex digits"
        )));
    }
    hex::decode(hex_value).map_err(|e| refuse(format!("{name} is not hex: {e}")))
}

fn require_some(pcrs: ExpectedPcrs) -> Result<ExpectedPcrs, ConfigError> {
    if pcrs.is_empty() {
        return Err(refuse("no PCR0-PCR8 values".into()));
    }
    Ok(pcrs)
}

fn not_a_pcr_line(number: usize, line: &str) -> ConfigError {
    let shown: String = line.chars().take(60).collect();
    let more = if shown.len() < line.len() { "…" } else { "" };
    refuse(format!(
        "line {number} is not `<hex> PCRn`: {shown:?}{more}"
    ))
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn refuse(reason: String) -> ConfigError {
    ConfigError::PcrFile(reason)
}
