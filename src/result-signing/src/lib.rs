//! The signed answer of `POST /process_data`: its wire types, the exact bytes
//! that are signed, and how to sign and verify them.
//!
//! The server signs, clients verify, and third parties (a JS verifier,
//! on-chain code) rebuild the signed bytes themselves, so the layout below is
//! a contract. Nothing in this crate depends on the server or the client.
//!
//! # The JSON a client receives
//!
//! ```json
//! {"response": {"intent": 0, "timestamp_ms": 1700000000000, "data": { ...TaskResult... }},
//!  "signature": "<128 lowercase hex digits>"}
//! ```
//!
//! The server writes every field, `None` as `null`; unknown fields are
//! refused. A verifier must not accept a second spelling of the same signed
//! bytes that its reader would see as other values, so the signature is lower
//! case only, and the JavaScript verifier (`clients/js/lib/result.js`) also refuses
//! missing fields, `null` outside `Option` fields, integers given as
//! strings, non-integers, integers above 2^53-1 (which a JS number cannot hold
//! exactly; the server's millisecond values are far below) and strings with
//! lone surrogates (which UTF-8 encoding would turn into U+FFFD).
//!
//! # The signed bytes
//!
//! The signature covers the [BCS] encoding of [`IntentMessage`]`<`[`TaskResult`]`>`,
//! fields in declaration order, nothing else (no JSON, no domain prefix
//! besides `intent`):
//!
//! | field | type | BCS encoding |
//! |---|---|---|
//! | `intent` | `u8` | 1 byte; [`INTENT_TASK_RESULT`] = 0 |
//! | `timestamp_ms` | `u64` | 8 bytes little-endian |
//! | `data.task_id` | `String` | ULEB128 byte length, UTF-8 bytes |
//! | `data.task_path` | `String` | same |
//! | `data.task_digest` | `String` | same (64 lowercase hex digits) |
//! | `data.args` | `Vec<String>` | ULEB128 count, then each string |
//! | `data.stdin_sha256` | `Option<String>` | `00`, or `01` then the string |
//! | `data.nonce` | `Option<String>` | same |
//! | `data.status` | `String` | `"success"` or `"failed"` |
//! | `data.exit_code` | `Option<i32>` | `00`, or `01` then 4 bytes little-endian |
//! | `data.signal` | `Option<String>` | e.g. `"SIGKILL"` |
//! | `data.stdout` | `String` | |
//! | `data.stderr` | `String` | |
//! | `data.stdout_truncated` | `bool` | `00` / `01` |
//! | `data.stderr_truncated` | `bool` | `00` / `01` |
//! | `data.execution_time_ms` | `u64` | 8 bytes little-endian |
//! | `data.limit` | `Option<String>` | the runner's limit the run hit: `"memory"`, `"time"`, `"pids"`, `"output"` |
//! | `data.resources` | `Option<Resources>` | `00`, or `01` then `cpu_time_ms` and `peak_memory_bytes`, each `u64` |
//! | `data.egress` | `Vec<EgressEntry>` | ULEB128 count, then each entry: |
//! | `  .host` | `String` | a destination the task declared and connected to |
//! | `  .port` | `u16` | 2 bytes little-endian |
//! | `  .connections` | `u64` | 8 bytes little-endian |
//! | `  .bytes_out` | `u64` | same: bytes the task sent there |
//! | `  .bytes_in` | `u64` | same: bytes it received from there |
//!
//! `limit` and `resources` are what the runner and the kernel know (a
//! memory kill in the task's cgroup, the runner's own timer, the cgroup's
//! refused forks, the output cap; the box's CPU time and its cgroup's peak
//! memory), never read from the task's output, so a task cannot forge them;
//! so is `egress`, counted by the runner's relay (see `docs/egress.md`).
//!
//! The signature is ECDSA over NIST P-256 with SHA-256 of those bytes,
//! serialized as `r || s` (32 + 32 bytes, big-endian), with `s` in the lower
//! half of the group order ("low-S"). Verifiers here reject high-S signatures,
//! so a signature has exactly one valid encoding.
//!
//! # A worked example
//!
//! `tests/vectors/task_result_v1.json` holds a fixed key, a fixed message, its
//! BCS bytes and its signature; `tests/vector.rs` and `clients/js/test/result-format.test.cjs`
//! check every file in `tests/vectors/`. The v1 message, with `args = ["1", "2"]`, `stdin_sha256 = None`,
//! `nonce = Some("00ff")`, `exit_code = Some(0)`, encodes as:
//!
//! ```text
//! 00                                  intent = 0
//! 00 68 e5 cf 8b 01 00 00             timestamp_ms = 1700000000000
//! 24 "0b8f4c5e-…"                     task_id: length 0x24 = 36, then 36 bytes
//! 0b "nodejs-task"                    task_path
//! 40 "e3b0…"                          task_digest: 64 hex digits
//! 02 01 "1" 01 "2"                    args: 2 strings
//! 00                                  stdin_sha256 = None
//! 01 04 "00ff"                        nonce = Some("00ff")
//! 07 "success"                        status
//! 01 00 00 00 00                      exit_code = Some(0)
//! 00                                  signal = None
//! 0c "hello world\n"                  stdout
//! 00                                  stderr = ""
//! 00 00                               stdout_truncated, stderr_truncated
//! 2a 00 00 00 00 00 00 00             execution_time_ms = 42
//! 00                                  limit = None
//! 01 …                                resources = Some: 8 + 8 bytes
//! 00                                  egress: no entries
//! ```
//!
//! Lengths are ULEB128, 7 bits per byte, low bits first: a 200-byte stdout
//! starts `c8 01`. `task_result_v2.json` pins the longer forms (a 372-byte
//! non-ASCII stdout, `f4 02`; a 16384-byte stderr, `80 80 01`) along with a
//! killed task (`exit_code = None`, `signal = Some("SIGKILL")`);
//! `task_result_v3.json` a task that exited with code 3; `task_result_v4.json`
//! a task that reached two declared hosts (`egress`).
//!
//! # The compact form (`"signing": "compact"`)
//!
//! A whole result can carry up to 1 MiB per output stream, far beyond what a
//! Sui transaction argument holds (16 KiB). Asked with `"signing": "compact"`
//! in the request's payload, the server signs [`CompactTaskResult`] instead:
//! [`TaskResult`] with each output text replaced by the lowercase hex SHA-256
//! of its UTF-8 bytes and its byte length; every other field is the same, in
//! the same place. The texts still come back, beside the signed message:
//!
//! ```json
//! {"response": {"intent": 1, "timestamp_ms": 1700000000000, "data": { ...CompactTaskResult... }},
//!  "signature": "<128 lowercase hex digits>",
//!  "stdout": "hello world\n", "stderr": ""}
//! ```
//!
//! Its own intent, [`INTENT_TASK_RESULT_COMPACT`] = 1, keeps the two forms
//! apart: a task that controls its stdout can never make a full message that
//! also reads as a compact one. The signed bytes are the BCS encoding of
//! `IntentMessage<CompactTaskResult>`:
//!
//! | field | type | BCS encoding |
//! |---|---|---|
//! | `intent` | `u8` | 1 byte; [`INTENT_TASK_RESULT_COMPACT`] = 1 |
//! | `timestamp_ms` … `data.signal` | | as in the full form |
//! | `data.stdout_sha256` | `String` | `40` then 64 lowercase hex digits |
//! | `data.stdout_len` | `u64` | 8 bytes little-endian: bytes of UTF-8 in `stdout` |
//! | `data.stderr_sha256` | `String` | same, of `stderr` |
//! | `data.stderr_len` | `u64` | same |
//! | `data.stdout_truncated` … `data.egress` | | as in the full form |
//!
//! A verifier checks the signature over those bytes, then that the SHA-256
//! and length of each returned text are the signed ones
//! ([`CompactSignedResponse::verify`] does both). The v1 message above is
//! 324 bytes in compact form, v2's 17,036 bytes become 421; `tests/vectors/compact/` pins the compact form
//! of every full vector. Fields appended to [`TaskResult`] are appended to
//! [`CompactTaskResult`] in the same order ([`TaskResult::compact`] fails to
//! compile until they are).
//!
//! [BCS]: https://github.com/diem/bcs

use p256::ecdsa::signature::{Signer, Verifier};
pub use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `intent` of a signed task result. Other intents are reserved so that a
/// signature over one kind of message can never be replayed as another.
pub const INTENT_TASK_RESULT: u8 = 0;

/// `intent` of a signed [`CompactTaskResult`].
pub const INTENT_TASK_RESULT_COMPACT: u8 = 1;

/// Which form of a result the server signs: a request option, `"full"` by default.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Signing {
    /// [`TaskResult`], texts included.
    #[default]
    Full,
    /// [`CompactTaskResult`]: the texts' SHA-256 and lengths, the texts beside.
    Compact,
}

/// `intent` of an operator's secret update ([`SecretUpdate`]), signed by
/// the operator's key, never the server's.
pub const INTENT_SECRET_UPDATE: u8 = 2;

/// An operator's request to set one secret in one server: the value travels
/// beside it (only its SHA-256 is signed), the nonce is one the server
/// handed out, good for one update.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretUpdate {
    /// The secret's name, as tasks declare it.
    pub name: String,
    /// Hex SHA-256 of the value's UTF-8 bytes.
    pub value_sha256: String,
    /// Hex of the server's nonce.
    pub nonce: String,
}

/// What a task did, as signed by the server. Field order is the BCS layout:
/// never reorder, only append in a new intent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub task_id: String,
    pub task_path: String,
    pub task_digest: String,
    pub args: Vec<String>,
    pub stdin_sha256: Option<String>,
    pub nonce: Option<String>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub execution_time_ms: u64,
    pub limit: Option<String>,
    pub resources: Option<Resources>,
    /// One entry per declared destination the task connected to (see
    /// `docs/egress.md`); empty when it reached none.
    pub egress: Vec<EgressEntry>,
}

/// What a run used, as the runner measured it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What one destination carried during a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    pub host: String,
    pub port: u16,
    pub connections: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// [`TaskResult`] with each output text replaced by its SHA-256 (lowercase
/// hex of the UTF-8 bytes) and byte length: what `"signing": "compact"`
/// signs. Field order is the BCS layout; fields appended to [`TaskResult`]
/// are appended here in the same order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompactTaskResult {
    pub task_id: String,
    pub task_path: String,
    pub task_digest: String,
    pub args: Vec<String>,
    pub stdin_sha256: Option<String>,
    pub nonce: Option<String>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout_sha256: String,
    pub stdout_len: u64,
    pub stderr_sha256: String,
    pub stderr_len: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub execution_time_ms: u64,
    pub limit: Option<String>,
    pub resources: Option<Resources>,
    pub egress: Vec<EgressEntry>,
}

/// Lowercase hex SHA-256 and byte length of a text's UTF-8 bytes.
fn digest_of(text: &str) -> (String, u64) {
    // A `usize` always fits a `u64` on the targets this builds for.
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    (hex::encode(Sha256::digest(text.as_bytes())), len)
}

impl TaskResult {
    /// The compact form of this result: the one mapping from the full form,
    /// used by the signer and by verifiers alike.
    pub fn compact(&self) -> CompactTaskResult {
        // Destructured without `..`: a field added to `TaskResult` fails to
        // compile here until the compact form carries it too.
        let TaskResult {
            task_id,
            task_path,
            task_digest,
            args,
            stdin_sha256,
            nonce,
            status,
            exit_code,
            signal,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            execution_time_ms,
            limit,
            resources,
            egress,
        } = self;
        let (stdout_sha256, stdout_len) = digest_of(stdout);
        let (stderr_sha256, stderr_len) = digest_of(stderr);
        CompactTaskResult {
            task_id: task_id.clone(),
            task_path: task_path.clone(),
            task_digest: task_digest.clone(),
            args: args.clone(),
            stdin_sha256: stdin_sha256.clone(),
            nonce: nonce.clone(),
            status: status.clone(),
            exit_code: *exit_code,
            signal: signal.clone(),
            stdout_sha256,
            stdout_len,
            stderr_sha256,
            stderr_len,
            stdout_truncated: *stdout_truncated,
            stderr_truncated: *stderr_truncated,
            execution_time_ms: *execution_time_ms,
            limit: limit.clone(),
            resources: *resources,
            egress: egress.clone(),
        }
    }
}

/// The message that is signed: a typed payload with an intent and the
/// signing time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IntentMessage<T> {
    pub intent: u8,
    pub timestamp_ms: u64,
    pub data: T,
}

/// The JSON body of a successful `POST /process_data`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedResponse<T> {
    pub response: IntentMessage<T>,
    /// Hex of the 64-byte `r || s` signature.
    pub signature: String,
}

/// The JSON body of `POST /process_data` with `"signing": "compact"`: the
/// signed compact message, and the texts it carries the digests of.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompactSignedResponse {
    pub response: IntentMessage<CompactTaskResult>,
    /// Hex of the 64-byte `r || s` signature over the compact message.
    pub signature: String,
    /// The task's stdout; its SHA-256 and length are signed.
    pub stdout: String,
    /// The task's stderr; its SHA-256 and length are signed.
    pub stderr: String,
}

/// A signed answer in either form, as the server sends it (untagged: the
/// form is told by the fields; a client knows which one it asked for).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum SignedTaskResult {
    Full(SignedResponse<TaskResult>),
    Compact(CompactSignedResponse),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("message cannot be BCS-encoded: {0}")]
    Encode(#[from] bcs::Error),
    #[error("signature is not 128 lowercase hex digits (64 bytes, r || s)")]
    MalformedSignature,
    #[error("signature is not low-S normalized")]
    HighS,
    #[error("signature does not verify against the attested public key")]
    BadSignature,
    #[error("intent is {found}, expected {expected}")]
    WrongIntent { expected: u8, found: u8 },
    #[error("the returned {stream} does not match the signed {stream}_sha256 and {stream}_len")]
    OutputMismatch { stream: &'static str },
}

impl<T: Serialize> IntentMessage<T> {
    pub fn new(intent: u8, timestamp_ms: u64, data: T) -> Self {
        Self {
            intent,
            timestamp_ms,
            data,
        }
    }

    /// The exact bytes the signature covers.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(bcs::to_bytes(self)?)
    }

    /// Signs with RFC 6979 deterministic nonces and returns the low-S form.
    pub fn sign(self, key: &SigningKey) -> Result<SignedResponse<T>, Error> {
        let bytes = self.signing_bytes()?;
        let signature: Signature = key.sign(&bytes);
        let signature = signature.normalize_s().unwrap_or(signature);
        Ok(SignedResponse {
            response: self,
            signature: hex::encode(signature.to_bytes()),
        })
    }
}

impl<T: Serialize> IntentMessage<T> {
    /// Checks that `key` made `signature` (hex `r || s`, see
    /// [`parse_signature`]) over exactly this message, with the expected
    /// intent. Both signed forms verify through here.
    pub fn verify(
        &self,
        signature: &str,
        key: &VerifyingKey,
        expected_intent: u8,
    ) -> Result<(), Error> {
        if self.intent != expected_intent {
            return Err(Error::WrongIntent {
                expected: expected_intent,
                found: self.intent,
            });
        }
        let signature = parse_signature(signature)?;
        let bytes = self.signing_bytes()?;
        key.verify(&bytes, &signature)
            .map_err(|_| Error::BadSignature)
    }
}

/// Parses a hex signature strictly: exactly 128 lowercase hex digits, both
/// scalars in range, low-S.
pub fn parse_signature(hex_signature: &str) -> Result<Signature, Error> {
    // `hex` also accepts upper case; refusing it gives every signature one
    // spelling, exactly as the JS verifier requires.
    let digits = hex_signature.as_bytes();
    if !digits
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Error::MalformedSignature);
    }
    let mut raw = [0u8; 64];
    hex::decode_to_slice(digits, &mut raw).map_err(|_| Error::MalformedSignature)?;
    let signature = Signature::from_slice(&raw).map_err(|_| Error::MalformedSignature)?;
    if signature.normalize_s().is_some() {
        return Err(Error::HighS);
    }
    Ok(signature)
}

impl<T: Serialize> SignedResponse<T> {
    /// This response's signature, parsed strictly ([`parse_signature`]).
    pub fn parsed_signature(&self) -> Result<Signature, Error> {
        parse_signature(&self.signature)
    }

    /// Checks that `key` signed exactly this response with the expected intent.
    pub fn verify(&self, key: &VerifyingKey, expected_intent: u8) -> Result<(), Error> {
        self.response.verify(&self.signature, key, expected_intent)
    }
}

impl CompactSignedResponse {
    /// Signs the compact form of `message` and returns it with the texts.
    pub fn sign(message: IntentMessage<TaskResult>, key: &SigningKey) -> Result<Self, Error> {
        let compact = IntentMessage::new(
            INTENT_TASK_RESULT_COMPACT,
            message.timestamp_ms,
            message.data.compact(),
        );
        let SignedResponse {
            response,
            signature,
        } = compact.sign(key)?;
        Ok(Self {
            response,
            signature,
            stdout: message.data.stdout,
            stderr: message.data.stderr,
        })
    }

    /// Checks that `key` signed the compact message with intent
    /// [`INTENT_TASK_RESULT_COMPACT`] and that the returned texts are the
    /// ones it carries the SHA-256 and length of; returns the whole result
    /// (intent [`INTENT_TASK_RESULT_COMPACT`]) for the caller's own checks.
    pub fn verify(&self, key: &VerifyingKey) -> Result<IntentMessage<TaskResult>, Error> {
        self.response
            .verify(&self.signature, key, INTENT_TASK_RESULT_COMPACT)?;
        let d = &self.response.data;
        let full = TaskResult {
            task_id: d.task_id.clone(),
            task_path: d.task_path.clone(),
            task_digest: d.task_digest.clone(),
            args: d.args.clone(),
            stdin_sha256: d.stdin_sha256.clone(),
            nonce: d.nonce.clone(),
            status: d.status.clone(),
            exit_code: d.exit_code,
            signal: d.signal.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            stdout_truncated: d.stdout_truncated,
            stderr_truncated: d.stderr_truncated,
            execution_time_ms: d.execution_time_ms,
            limit: d.limit.clone(),
            resources: d.resources,
            egress: d.egress.clone(),
        };
        // The one mapping decides: whatever it signs over must come back.
        let again = full.compact();
        if (&again.stdout_sha256, again.stdout_len) != (&d.stdout_sha256, d.stdout_len) {
            return Err(Error::OutputMismatch { stream: "stdout" });
        }
        if again != *d {
            return Err(Error::OutputMismatch { stream: "stderr" });
        }
        Ok(IntentMessage::new(
            self.response.intent,
            self.response.timestamp_ms,
            full,
        ))
    }
}

/// The attested form of a public key: 33-byte compressed SEC1.
pub fn encode_public_key(key: &VerifyingKey) -> Vec<u8> {
    key.to_encoded_point(true).as_bytes().to_vec()
}

/// Parses a SEC1 P-256 point (compressed or not), as found in an
/// attestation document's `public_key`.
pub fn decode_public_key(sec1: &[u8]) -> Option<VerifyingKey> {
    VerifyingKey::from_sec1_bytes(sec1).ok()
}
