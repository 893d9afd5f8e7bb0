//! The online flow: attest once, then run tasks and verify every answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use attestation_verify::{AttestationDocument, Policy, TrustedRoot, VerifiedDocument};
use rand_core::{OsRng, RngCore};
use reqwest::{StatusCode, Url};
use result_signing::{
    decode_public_key, encode_public_key, CompactSignedResponse, IntentMessage, SecretUpdate,
    SignedResponse, SignedTaskResult, Signing, SigningKey, TaskResult, VerifyingKey,
    INTENT_SECRET_UPDATE,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pin::SpkiPin;
use crate::result::{
    normalize_task_path, verify_signed, Expected, ResultError, DEFAULT_CLOCK_SKEW,
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
/// Most of an error body read to find the server's message.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest server-supplied text kept in an error message, in characters.
const MAX_SERVER_TEXT: usize = 300;
/// Time for the server to queue, start and clean up a task beyond its timeout.
const TASK_MARGIN: Duration = Duration::from_secs(120);

/// Why a server could not be attested or a result could not be trusted.
///
/// Variants that wrap a cause expose it through [`std::error::Error::source`]
/// instead of repeating it in their own message; print the whole chain (e.g.
/// `anyhow`'s `{:#}`) to see every reason. Text that comes from the server
/// is escaped and shortened before it is stored here, so any of these
/// messages is one line that is safe to print on a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL does not parse, or is not `http://` or `https://`.
    #[error("invalid server URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be sent or its answer not read (connection,
    /// TLS or timeout).
    #[error("request to {url} failed")]
    Http {
        /// The URL requested.
        url: String,
        /// The transport's reason.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 200.
    #[error("{url} answered HTTP {status}: {message}{}", retry_hint(*.retry_after))]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's `error` sentence (or the start of its body), with
        /// control characters escaped and cut to a few hundred characters.
        message: String,
        /// For 503 Service Unavailable: how long the server asked us to
        /// wait (`Retry-After`, in seconds), if it said.
        retry_after: Option<Duration>,
    },
    /// A response body was larger than this client accepts for it; reading
    /// stopped at the limit.
    #[error("{what} from {url} exceeds {limit} bytes")]
    TooLarge {
        /// Which response.
        what: &'static str,
        /// The URL requested.
        url: String,
        /// The cap, in bytes.
        limit: usize,
    },
    /// A response is not the JSON (or hex) it must be.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which response or field.
        what: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// The attestation document failed verification.
    #[error("attestation document rejected")]
    Attestation(#[from] attestation_verify::Error),
    /// The trusted root or policy given to the client is unusable.
    #[error("bad verification input")]
    Config(#[from] attestation_verify::ConfigError),
    /// The verified document has no `public_key`, so no result could be checked.
    #[error("attestation document carries no public key")]
    NoPublicKey,
    /// The attested `public_key` is not an uncompressed or compressed P-256 point.
    #[error("attested public key is not a P-256 SEC1 point ({len} bytes)")]
    BadPublicKey {
        /// Length of the key found.
        len: usize,
    },
    /// `/manifest` is not the manifest the enclave attested: its SHA-256
    /// differs from the document's `user_data`.
    #[error("manifest does not match the attestation: its SHA-256 is {got}, the document's user_data is {expected}")]
    ManifestMismatch {
        /// The attested `user_data`, hex.
        expected: String,
        /// SHA-256 of the `/manifest` body received, hex.
        got: String,
    },
    /// The task asked for is not in the attested manifest, so its result
    /// could not be tied to attested code.
    #[error("task {0:?} is not in the attested manifest")]
    UnknownTask(String),
    /// A signed result failed verification.
    #[error("result rejected")]
    Result(#[from] ResultError),
    /// The server's TLS certificate is not the one the enclave attested:
    /// something between client and enclave terminates TLS.
    #[error("TLS key mismatch: the server presented a certificate whose SPKI SHA-256 is {presented}, but the attested manifest pins {attested}; something between this client and the enclave (a relay, or the parent instance) terminates TLS")]
    TlsKeyMismatch {
        /// The manifest's `tls_spki_sha256`.
        attested: String,
        /// SHA-256 of the SPKI presented, hex.
        presented: String,
    },
    /// An `https://` URL, but the attested manifest pins no TLS key (the
    /// server runs with `--tls off`).
    #[error("the attested manifest pins no TLS key (tls_spki_sha256 is null: the server runs with --tls off), so this https:// connection cannot be tied to the enclave; use http://")]
    NoTlsKey,
    /// Plain `http://` to an enclave (`nsm`): the parent instance would read
    /// every request and answer.
    #[error("refusing plain http:// to an nsm enclave: the parent instance would read every request and result; use https:// (the server's TLS key is pinned through the attestation), or pass --insecure-http to accept that")]
    InsecureHttp,
    /// Secrets go only over attested TLS, and this connection is plain HTTP.
    #[error("operator secrets travel only over the enclave's attested TLS: use an https:// URL")]
    SecretsNeedTls,
    /// The signing key is not one the attested image pins.
    #[error(
        "operator key {key} is not pinned by this enclave image (its manifest lists {pinned:?})"
    )]
    NotAnOperator {
        /// Hex compressed SEC1 of the key used.
        key: String,
        /// The manifest's operator keys.
        pinned: Vec<String>,
    },
    /// No task in the attested manifest declares the secret.
    #[error("no task in the attested manifest declares a secret named {name:?} (declared: {declared:?})")]
    UndeclaredSecret {
        /// The name asked for.
        name: String,
        /// Every declared name.
        declared: Vec<String>,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Reading a local file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `", retry after N s"` when the server said when to come back.
fn retry_hint(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

/// A task to run: the `payload` of a `/process_data` request, minus the
/// nonce, which [`Client::run_task`] adds fresh for every call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskSpec {
    /// Task directory on the server, as listed in the manifest.
    pub task_path: String,
    /// Seconds before the server stops the task; the server's default if `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Command-line arguments for the task.
    pub args: Vec<String>,
    /// Text fed to the task's stdin; the signed result carries its SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// What the enclave signs: the whole result (default) or the compact
    /// form (the outputs' SHA-256 and lengths; small enough for a chain).
    pub signing: Signing,
}

impl TaskSpec {
    /// A spec for `task_path` with no arguments, no stdin and the server's
    /// default timeout.
    pub fn new(task_path: impl Into<String>) -> Self {
        Self {
            task_path: task_path.into(),
            ..Self::default()
        }
    }

    /// Replaces the arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the stdin text.
    pub fn stdin(mut self, stdin: impl Into<String>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Sets the timeout in seconds.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// Sets which form of the result the enclave signs.
    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = signing;
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
    /// Task directory, normalized (no `.` or empty segments).
    pub task_path: String,
    /// Hex digest of the task's files; every signed result for this task
    /// must carry the same value.
    pub task_digest: String,
    /// The destinations (`host:port`) the task declares; every signed
    /// `egress` entry must be one of them. Empty: no network.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Operator secrets the task declares (names).
    #[serde(default)]
    pub secrets: Vec<String>,
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
    /// Absent from servers older than TLS support.
    #[serde(default)]
    tls_spki_sha256: Option<String>,
    /// Hex SEC1 keys of the operators who may set secrets.
    #[serde(default)]
    operator_keys: Vec<String>,
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
    /// The server's version string.
    pub fn server_version(&self) -> &str {
        &self.body.server_version
    }
    /// `"nsm"` or `"dev"`, as the server describes itself.
    pub fn attestation_mode(&self) -> &str {
        &self.body.attestation
    }
    /// Hex SHA-256 of the SPKI of the server's TLS key, `None` without TLS.
    pub fn tls_spki_sha256(&self) -> Option<&str> {
        self.body.tls_spki_sha256.as_deref()
    }
    /// Hex compressed SEC1 P-256 keys of the operators the image pins.
    pub fn operator_keys(&self) -> &[String] {
        &self.body.operator_keys
    }
    /// Every task the enclave image can run.
    pub fn tasks(&self) -> &[ManifestTask] {
        &self.body.tasks
    }
    /// The entry for `task_path`, compared after normalization (so
    /// `./nodejs-task/` finds `nodejs-task`).
    pub fn task(&self, task_path: &str) -> Option<&ManifestTask> {
        let wanted = normalize_task_path(task_path);
        self.body.tasks.iter().find(|t| t.task_path == wanted)
    }
}

/// A result whose signature and contents were verified.
#[derive(Debug, Clone)]
pub struct VerifiedResult {
    signed: SignedTaskResult,
    /// The whole result; in the compact form, rebuilt from the signed
    /// message and the texts whose digests it carries.
    message: IntentMessage<TaskResult>,
}

impl VerifiedResult {
    /// What the task did: output, exit code, status, timing.
    pub fn data(&self) -> &TaskResult {
        &self.message.data
    }
    /// When the enclave signed the result, in ms since the UNIX epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.message.timestamp_ms
    }
    /// The response exactly as received, for archiving, re-verification or
    /// (compact form) submitting to a chain.
    pub fn signed(&self) -> &SignedTaskResult {
        &self.signed
    }
}

/// How [`Client::connect_with`] may connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Accept plain `http://` to an `nsm` enclave, where the parent instance
    /// reads every request and result.
    pub insecure_http: bool,
}

/// A connection to one attested enclave.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The attested TLS key, for `https://`.
    pin: Option<Arc<SpkiPin>>,
    base: Url,
    document: VerifiedDocument,
    key: VerifyingKey,
    manifest: Manifest,
    /// When, on our monotonic clock, the document was asked for and received.
    attested_between: (Instant, Instant),
}

impl Client {
    /// Attests the server at `url`: fetches a document for a fresh nonce,
    /// verifies it under `root` and `policy` (any nonce set in `policy` is
    /// replaced by the fresh one), checks that `user_data` is the SHA-256 of
    /// `/manifest`, and keeps the attested key.
    ///
    /// With `https://`, the server's TLS key must be the manifest's
    /// `tls_spki_sha256`; plain `http://` to an `nsm` enclave is refused
    /// (see [`Client::connect_with`]).
    pub async fn connect(
        url: &str,
        root: TrustedRoot,
        policy: Policy,
    ) -> Result<Self, ClientError> {
        Self::connect_with(url, root, policy, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(
        url: &str,
        root: TrustedRoot,
        policy: Policy,
        options: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let base = parse_base(url)?;
        let http_err = |source| ClientError::Http {
            url: url.to_owned(),
            source,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let pin = (base.scheme() == "https").then(SpkiPin::new);
        if let Some(pin) = &pin {
            let tls = pin
                .client_config()
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().map_err(http_err)?;
        let bind = |e| bind_error(pin.as_deref(), e);

        let nonce = random_nonce();
        let asked = Instant::now();
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
        .await
        .map_err(bind)?;
        let received = Instant::now();
        #[derive(Deserialize)]
        struct AttestationResponse {
            attestation: String,
        }
        let response: AttestationResponse = parse_json(&body, "attestation response")?;
        let document_bytes =
            hex::decode(&response.attestation).map_err(|e| ClientError::Malformed {
                what: "attestation document hex",
                reason: printable(&e.to_string()),
            })?;
        let document = AttestationDocument::from_bytes(&document_bytes)?
            .verify(&root, &policy.expected_nonce(nonce.to_vec()))?;

        let pk = document.public_key().ok_or(ClientError::NoPublicKey)?;
        let key = decode_public_key(pk).ok_or(ClientError::BadPublicKey { len: pk.len() })?;

        let manifest_url = join(&base, "manifest")?;
        let raw = get(&http, &manifest_url, MAX_MANIFEST_RESPONSE, "manifest")
            .await
            .map_err(bind)?;
        let got = Sha256::digest(&raw);
        let attested = document.user_data().unwrap_or_default();
        if got[..] != *attested {
            return Err(ClientError::ManifestMismatch {
                expected: hex::encode(attested),
                got: hex::encode(got),
            });
        }
        let body: ManifestBody = parse_json(&raw, "manifest")?;
        match &pin {
            Some(pin) => {
                let attested = body
                    .tls_spki_sha256
                    .as_deref()
                    .ok_or(ClientError::NoTlsKey)?;
                let attested: [u8; 32] = hex::decode(attested)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| ClientError::Malformed {
                        what: "manifest tls_spki_sha256",
                        reason: "not 64 hex digits".into(),
                    })?;
                if let Some(presented) = pin.pin(attested) {
                    return Err(ClientError::TlsKeyMismatch {
                        attested: hex::encode(attested),
                        presented: hex::encode(presented),
                    });
                }
            }
            None if body.attestation == "nsm" && !options.insecure_http => {
                return Err(ClientError::InsecureHttp)
            }
            None => {}
        }

        Ok(Self {
            http,
            pin,
            base,
            document,
            key,
            manifest: Manifest { raw, body },
            attested_between: (asked, received),
        })
    }

    /// The verified attestation document this connection trusts.
    pub fn attestation(&self) -> &VerifiedDocument {
        &self.document
    }

    /// The attested key every result must be signed with.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The attested manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Runs a task with a fresh nonce and returns it only if the answer is
    /// signed by the attested key and echoes exactly this request.
    pub async fn run_task(&self, spec: &TaskSpec) -> Result<VerifiedResult, ClientError> {
        let listed = self
            .manifest
            .task(&spec.task_path)
            .ok_or_else(|| ClientError::UnknownTask(spec.task_path.clone()))?;
        let digest = listed.task_digest.clone();
        let egress = listed.egress.clone();
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
        let sent = Instant::now();
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
        let body = send(request, &url, limit, "task result")
            .await
            .map_err(|e| bind_error(self.pin.as_deref(), e))?;
        let not_after_ms = now_ms();
        let answered = Instant::now();
        // The document's clock at signing time: its timestamp plus what
        // passed since, at least from its arrival to our request, at most
        // from our asking for it to the answer.
        let (asked, received) = self.attested_between;
        let doc_ms = self.document.timestamp_ms();
        let elapsed_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let attested_window_ms = (
            doc_ms.saturating_add(elapsed_ms(sent.saturating_duration_since(received))),
            doc_ms.saturating_add(elapsed_ms(answered.saturating_duration_since(asked))),
        );
        // Parsed as the form asked for: a server answering in the other one
        // is refused here, by the exact field set.
        let signed = match spec.signing {
            Signing::Full => SignedTaskResult::Full(parse_json::<SignedResponse<TaskResult>>(
                &body,
                "task result",
            )?),
            Signing::Compact => SignedTaskResult::Compact(parse_json::<CompactSignedResponse>(
                &body,
                "compact task result",
            )?),
        };

        let message = verify_signed(
            &signed,
            &self.key,
            &Expected {
                task_path: &spec.task_path,
                args: &spec.args,
                stdin: spec.stdin.as_deref().map(str::as_bytes),
                nonce: &nonce,
                task_digest: Some(&digest),
                egress: Some(&egress),
                not_before_ms,
                not_after_ms,
                clock_skew: DEFAULT_CLOCK_SKEW,
                attested_window_ms: Some(attested_window_ms),
            },
        )?;
        Ok(VerifiedResult { signed, message })
    }
}

/// A failed request over a pinned connection whose certificate was refused
/// becomes [`ClientError::TlsKeyMismatch`], the reason, rather than the
/// transport error that wraps it.
fn bind_error(pin: Option<&SpkiPin>, e: ClientError) -> ClientError {
    match (pin.and_then(|p| p.refused()), &e) {
        (Some((attested, presented)), ClientError::Http { .. }) => ClientError::TlsKeyMismatch {
            attested: hex::encode(attested),
            presented: hex::encode(presented),
        },
        _ => e,
    }
}

impl Client {
    /// Sets the operator secret `name` to `value` in this enclave: checks
    /// that the attested manifest pins `key` and that a task declares
    /// `name`, fetches a fresh nonce, and posts the update signed by `key`
    /// over the pinned TLS connection (never plain HTTP).
    pub async fn put_secret(
        &self,
        key: &SigningKey,
        name: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        if self.pin.is_none() {
            return Err(ClientError::SecretsNeedTls);
        }
        let ours = hex::encode(encode_public_key(key.verifying_key()));
        let pinned = &self.manifest.body.operator_keys;
        if !pinned.contains(&ours) {
            return Err(ClientError::NotAnOperator {
                key: ours,
                pinned: pinned.clone(),
            });
        }
        if !self
            .manifest
            .tasks()
            .iter()
            .any(|t| t.secrets.iter().any(|s| s == name))
        {
            let mut declared: Vec<String> = self
                .manifest
                .tasks()
                .iter()
                .flat_map(|t| t.secrets.iter().cloned())
                .collect();
            declared.sort();
            declared.dedup();
            return Err(ClientError::UndeclaredSecret {
                name: name.to_owned(),
                declared,
            });
        }
        let bind = |e| bind_error(self.pin.as_deref(), e);
        let nonce_url = join(&self.base, "secrets/nonce")?;
        let body = get(&self.http, &nonce_url, MAX_ERROR_BODY, "secrets nonce")
            .await
            .map_err(bind)?;
        #[derive(Deserialize)]
        struct NonceBody {
            nonce: String,
        }
        let NonceBody { nonce } = parse_json(&body, "secrets nonce")?;
        let update = IntentMessage::new(
            INTENT_SECRET_UPDATE,
            now_ms(),
            SecretUpdate {
                name: name.to_owned(),
                value_sha256: hex::encode(Sha256::digest(value.as_bytes())),
                nonce,
            },
        )
        .sign(key)
        .map_err(|e| ClientError::Malformed {
            what: "secret update",
            reason: e.to_string(),
        })?;
        let url = join(&self.base, "secrets")?;
        let request = self
            .http
            .post(url.clone())
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({ "update": update, "value": value }));
        send(request, &url, MAX_ERROR_BODY, "secrets answer")
            .await
            .map_err(bind)?;
        Ok(())
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
        // serde's messages may quote the server's text.
        reason: printable(&e.to_string()),
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

/// Sends, then reads at most `limit` bytes of a 200 answer, failing with
/// [`ClientError::TooLarge`] as soon as the body passes it. Any other status
/// becomes [`ClientError::Status`] with the server's `error` sentence.
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
    if status != StatusCode::OK {
        let retry_after = (status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| retry_after(response.headers()))
            .flatten();
        // Only the start matters for the message; the rest is never read.
        let (body, _) = read_up_to(&mut response, MAX_ERROR_BODY)
            .await
            .map_err(http_err)?;
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let raw = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            message: printable(&raw),
            retry_after,
        });
    }
    let too_large = || ClientError::TooLarge {
        what,
        url: url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match read_up_to(&mut response, limit).await.map_err(http_err)? {
        (body, true) => Ok(body),
        (_, false) => Err(too_large()),
    }
}

/// Reads the body until it ends (`true`) or would pass `limit` bytes
/// (`false`, with the first `limit` bytes); never holds more than `limit`.
async fn read_up_to(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// `Retry-After` as delay-seconds, the form the Nautilus server sends; an
/// HTTP-date is ignored rather than trusted to our clock.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// Makes server-controlled text safe to print as part of a one-line
/// message: control characters (newlines, ESC, ...) and other non-printable
/// characters are escaped Rust-style (`\n`, `\u{1b}`), and the result is cut
/// at [`MAX_SERVER_TEXT`] characters, marked with `…`.
fn printable(raw: &str) -> String {
    let mut out = String::new();
    let mut len = 0;
    for c in raw.chars() {
        // Quotes are harmless on a terminal; escaping them would only clutter.
        let keep = matches!(c, '"' | '\'');
        let escaped = c.escape_debug();
        let n = if keep { 1 } else { escaped.len() };
        if len + n > MAX_SERVER_TEXT {
            out.push('…');
            break;
        }
        len += n;
        if keep {
            out.push(c);
        } else {
            out.extend(escaped);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_becomes_one_short_printable_line() {
        let raw = format!(
            "bad\r\nline \u{1b}[31mred\u{1b}[0m \"q\" ✅ {}",
            "x".repeat(1000)
        );
        let out = printable(&raw);
        assert!(!out.chars().any(char::is_control), "{out:?}");
        assert!(
            out.starts_with(r#"bad\r\nline \u{1b}[31mred\u{1b}[0m "q" ✅ "#),
            "{out}"
        );
        assert!(out.ends_with('…'));
        assert_eq!(out.chars().count(), MAX_SERVER_TEXT + 1);
        assert_eq!(printable("short"), "short");
    }
}
