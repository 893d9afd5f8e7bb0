//! The online flow: attest once, then run tasks and verify every answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attestation_verify::{AttestationDocument, Policy, TrustedRoot, VerifiedDocument};
use rand_core::{OsRng, RngCore};
use reqwest::{StatusCode, Url};
use result_signing::{decode_public_key, SignedResponse, TaskResult, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::result::{
    normalize_task_path, verify_result, Expected, ResultError, DEFAULT_CLOCK_SKEW,
};

/// Largest `/get_attestation` body: a 64 KiB document as hex, plus framing.
const MAX_ATTESTATION_RESPONSE: usize = 256 * 1024;
/// Largest `/manifest` body.
const MAX_MANIFEST_RESPONSE: usize = 1024 * 1024;
/// Room for everything in a result besides stdout and stderr.
const RESULT_OVERHEAD: usize = 1024 * 1024;
/// JSON may escape each output byte as `\u00XX`.
const JSON_ESCAPE_FACTOR: usize = 6;
/// Bytes of random nonce per request.
const NONCE_BYTES: usize = 32;
/// Time for the server to queue, start and clean up a task beyond its timeout.
const TASK_MARGIN: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{what} from {url} exceeds {limit} bytes")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: usize,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("attestation document rejected: {0}")]
    Attestation(#[from] attestation_verify::Error),
    #[error("bad verification input: {0}")]
    Config(#[from] attestation_verify::ConfigError),
    #[error("attestation document carries no public key")]
    NoPublicKey,
    #[error("attested public key is not a P-256 SEC1 point ({len} bytes)")]
    BadPublicKey { len: usize },
    #[error("manifest does not match the attestation: its SHA-256 is {got}, the document's user_data is {expected}")]
    ManifestMismatch { expected: String, got: String },
    #[error("task {0:?} is not in the attested manifest")]
    UnknownTask(String),
    #[error("result rejected: {0}")]
    Result(#[from] ResultError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A task to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskSpec {
    pub task_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

impl TaskSpec {
    pub fn new(task_path: impl Into<String>) -> Self {
        Self {
            task_path: task_path.into(),
            ..Self::default()
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn stdin(mut self, stdin: impl Into<String>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    spec: &'a TaskSpec,
    nonce: &'a str,
}

#[derive(Serialize)]
struct ProcessDataRequest<'a> {
    payload: Payload<'a>,
}

/// One task entry of the attested manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestTask {
    pub task_path: String,
    pub task_digest: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ManifestLimits {
    max_output_bytes: usize,
    default_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct ManifestBody {
    server_version: String,
    attestation: String,
    limits: ManifestLimits,
    tasks: Vec<ManifestTask>,
}

/// `/manifest`, checked against the attestation's `user_data`.
#[derive(Debug, Clone)]
pub struct Manifest {
    raw: Vec<u8>,
    body: ManifestBody,
}

impl Manifest {
    /// The exact bytes whose SHA-256 the enclave attested.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
    pub fn server_version(&self) -> &str {
        &self.body.server_version
    }
    /// `"nsm"` or `"dev"`, as the server describes itself.
    pub fn attestation_mode(&self) -> &str {
        &self.body.attestation
    }
    pub fn tasks(&self) -> &[ManifestTask] {
        &self.body.tasks
    }
    pub fn task(&self, task_path: &str) -> Option<&ManifestTask> {
        let wanted = normalize_task_path(task_path);
        self.body.tasks.iter().find(|t| t.task_path == wanted)
    }
}

/// A result whose signature and contents were verified.
#[derive(Debug, Clone)]
pub struct VerifiedResult {
    signed: SignedResponse<TaskResult>,
}

impl VerifiedResult {
    pub fn data(&self) -> &TaskResult {
        &self.signed.response.data
    }
    pub fn timestamp_ms(&self) -> u64 {
        self.signed.response.timestamp_ms
    }
    /// The response exactly as signed, for archiving or re-verification.
    pub fn signed(&self) -> &SignedResponse<TaskResult> {
        &self.signed
    }
}

/// A connection to one attested enclave.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    document: VerifiedDocument,
    key: VerifyingKey,
    manifest: Manifest,
}

impl Client {
    /// Attests the server at `url`: fetches a document for a fresh nonce,
    /// verifies it under `root` and `policy` (any nonce set in `policy` is
    /// replaced by the fresh one), checks that `user_data` is the SHA-256 of
    /// `/manifest`, and keeps the attested key.
    pub async fn connect(
        url: &str,
        root: TrustedRoot,
        policy: Policy,
    ) -> Result<Self, ClientError> {
        let base = parse_base(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Http {
                url: url.to_owned(),
                source,
            })?;

        let nonce = random_nonce();
        let attestation_url = join(
            &base,
            &format!("get_attestation?nonce={}", hex::encode(nonce)),
        )?;
        let body = get(
            &http,
            &attestation_url,
            MAX_ATTESTATION_RESPONSE,
            "attestation response",
        )
        .await?;
        #[derive(Deserialize)]
        struct AttestationResponse {
            attestation: String,
        }
        let response: AttestationResponse = parse_json(&body, "attestation response")?;
        let document_bytes =
            hex::decode(&response.attestation).map_err(|e| ClientError::Malformed {
                what: "attestation document hex",
                reason: e.to_string(),
            })?;
        let document = AttestationDocument::from_bytes(&document_bytes)?
            .verify(&root, &policy.expected_nonce(nonce.to_vec()))?;

        let pk = document.public_key().ok_or(ClientError::NoPublicKey)?;
        let key = decode_public_key(pk).ok_or(ClientError::BadPublicKey { len: pk.len() })?;

        let manifest_url = join(&base, "manifest")?;
        let raw = get(&http, &manifest_url, MAX_MANIFEST_RESPONSE, "manifest").await?;
        let got = Sha256::digest(&raw);
        let attested = document.user_data().unwrap_or_default();
        if got[..] != *attested {
            return Err(ClientError::ManifestMismatch {
                expected: hex::encode(attested),
                got: hex::encode(got),
            });
        }
        let body: ManifestBody = parse_json(&raw, "manifest")?;

        Ok(Self {
            http,
            base,
            document,
            key,
            manifest: Manifest { raw, body },
        })
    }

    pub fn attestation(&self) -> &VerifiedDocument {
        &self.document
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Runs a task with a fresh nonce and returns it only if the answer is
    /// signed by the attested key and echoes exactly this request.
    pub async fn run_task(&self, spec: &TaskSpec) -> Result<VerifiedResult, ClientError> {
        let digest = self
            .manifest
            .task(&spec.task_path)
            .ok_or_else(|| ClientError::UnknownTask(spec.task_path.clone()))?
            .task_digest
            .clone();
        let nonce = hex::encode(random_nonce());
        let url = join(&self.base, "process_data")?;
        let limits = &self.manifest.body.limits;
        let limit = limits
            .max_output_bytes
            .saturating_mul(2 * JSON_ESCAPE_FACTOR)
            .saturating_add(RESULT_OVERHEAD);
        let timeout = Duration::from_secs(spec.timeout_secs.unwrap_or(limits.default_timeout_secs))
            .saturating_add(TASK_MARGIN);

        let not_before_ms = now_ms();
        let request = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .json(&ProcessDataRequest {
                payload: Payload {
                    spec,
                    nonce: &nonce,
                },
            });
        let body = send(request, &url, limit, "task result").await?;
        let not_after_ms = now_ms();
        let signed: SignedResponse<TaskResult> = parse_json(&body, "task result")?;

        verify_result(
            &signed,
            &self.key,
            &Expected {
                task_path: &spec.task_path,
                args: &spec.args,
                stdin: spec.stdin.as_deref().map(str::as_bytes),
                nonce: &nonce,
                task_digest: Some(&digest),
                not_before_ms,
                not_after_ms,
                clock_skew: DEFAULT_CLOCK_SKEW,
            },
        )?;
        Ok(VerifiedResult { signed })
    }
}

fn random_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn parse_base(url: &str) -> Result<Url, ClientError> {
    let bad = |reason: String| ClientError::Url {
        url: url.to_owned(),
        reason,
    };
    let mut base = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// are supported".into()));
    }
    // Make relative joins append to the path instead of replacing its last segment.
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    Ok(base)
}

fn join(base: &Url, path: &str) -> Result<Url, ClientError> {
    base.join(path).map_err(|e| ClientError::Url {
        url: format!("{base}{path}"),
        reason: e.to_string(),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Malformed {
        what,
        reason: e.to_string(),
    })
}

async fn get(
    http: &reqwest::Client,
    url: &Url,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    send(
        http.get(url.clone()).timeout(Duration::from_secs(30)),
        url,
        limit,
        what,
    )
    .await
}

/// Sends, then reads at most `limit` bytes; a non-2xx answer becomes
/// [`ClientError::Status`] with the server's `error` sentence.
async fn send(
    request: reqwest::RequestBuilder,
    url: &Url,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    let http_err = |source| ClientError::Http {
        url: url.to_string(),
        source,
    };
    let mut response = request.send().await.map_err(http_err)?;
    let status = response.status();
    let too_large = || ClientError::TooLarge {
        what,
        url: url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_err)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if status != StatusCode::OK {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(500).collect());
        return Err(ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    Ok(body)
}
