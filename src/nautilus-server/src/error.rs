//! Every failure a client can see, and how it becomes an HTTP response.
//!
//! Each variant maps to one status; the body is always JSON with an `error`
//! sentence. Task-runner sentences are passed through unchanged: they are part
//! of the product's contract.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use task_runner::{ErrorKind, TaskError};

/// How long a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// A failed request; [`IntoResponse`] turns it into status + JSON.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// The request is malformed or outside a limit.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not the JSON asked for (or has the wrong content type).
    #[error("{}", json_rejection_text(.0))]
    Json(#[from] JsonRejection),
    /// The body is over the limit (declared or counted).
    #[error("request body is larger than the {0}-byte limit")]
    BodyTooLarge(usize),
    /// The body did not arrive in full within the body deadline.
    #[error("request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The server-wide budget for buffered request bodies is used up.
    #[error("the server is receiving too many request bodies at once, retry shortly")]
    BodyBudget,
    /// The body arrived slower than the minimum data rate.
    #[error("request body arrived slower than {0} bytes/s")]
    BodyTooSlow(u64),
    /// This client holds its share of the server already (its connections,
    /// requests in flight or queued tasks); others are not affected.
    #[error("this client has {0}; retry when one has finished")]
    OverShare(String),
    /// The whole task queue is full.
    #[error("the server's task queue is full, retry shortly")]
    QueueFull,
    /// The body could not be read (the client broke the stream).
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The task runner refused or could not finish the task.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The task is not listed in the attested manifest, whatever is on disk
    /// under that name. The product's wording starts the sentence.
    #[error(
        "Failed to execute Node.js task: Task directory does not exist: {0} (it is not a task \
         of this server: GET /manifest lists the tasks it runs)"
    )]
    NotInManifest(String),
    /// A task directory that was not there when the server started: tasks
    /// are read once, at start.
    #[error(
        "Failed to execute Node.js task: task {0} was added after the server started; the server \
         reads its tasks once, at start: restart it to serve {0} (GET /manifest lists the tasks \
         it runs)"
    )]
    AddedAfterStart(String),
    /// A task found at start whose installed dependencies do not match its
    /// lockfile: served, every call would fail with `Cannot find module`.
    #[error("Failed to execute Node.js task: {}", refusal_text(task, why))]
    TaskRefused {
        /// The task's path.
        task: String,
        /// What does not match.
        why: task_runner::DependencyError,
    },
    /// Too many attestation requests at once.
    #[error("attestation is busy, retry shortly")]
    AttestationBusy,
    /// This client asked the NSM faster than its share; retry after this.
    #[error("this client asks for attestation documents faster than its share of {0} a second; retry after the Retry-After seconds, or ask without a nonce to share the server's recent document")]
    AttestationClientRate(u32, std::time::Duration),
    /// All clients together asked the NSM faster than it may be asked.
    #[error("the server is asked for attestation documents faster than {0} a second; retry after the Retry-After seconds")]
    AttestationServerRate(u32, std::time::Duration),
    /// The attestation call did not finish within its deadline (a stalled NSM).
    #[error("the attestation call did not finish within {} s (the NSM is stalled or overloaded); retry later", .0.as_secs_f64())]
    AttestationTimeout(std::time::Duration),
    /// The NSM (or dev attester) failed to produce a document.
    #[error("attestation failed: {0}")]
    Attestation(#[from] attestation_dev::AttestError),
    /// The result could not be signed (BCS encoding failed).
    #[error("could not sign the result: {0}")]
    Signing(#[from] result_signing::Error),
    /// An operator secret update was refused.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EnclaveError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            EnclaveError::BadRequest(_) | EnclaveError::BodyRead(_) => StatusCode::BAD_REQUEST,
            EnclaveError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EnclaveError::BodyTimeout(_) | EnclaveError::BodyTooSlow(_) => {
                StatusCode::REQUEST_TIMEOUT
            }
            EnclaveError::OverShare(_) | EnclaveError::AttestationClientRate(..) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EnclaveError::BodyBudget | EnclaveError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            // Unparseable and ill-shaped bodies alike are the caller's: 400, not 422.
            EnclaveError::Json(r) if r.status() == StatusCode::UNPROCESSABLE_ENTITY => {
                StatusCode::BAD_REQUEST
            }
            EnclaveError::Json(r) => r.status(),
            EnclaveError::NotInManifest(_) | EnclaveError::AddedAfterStart(_) => {
                StatusCode::NOT_FOUND
            }
            // The deployment's fault, like a task whose package.json is bad.
            EnclaveError::TaskRefused { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            EnclaveError::AttestationBusy
            | EnclaveError::AttestationTimeout(_)
            | EnclaveError::AttestationServerRate(..) => StatusCode::SERVICE_UNAVAILABLE,
            EnclaveError::Task(e) => match e.kind() {
                ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::NodeMissing
                | ErrorKind::Busy
                | ErrorKind::ShuttingDown
                | ErrorKind::SecretMissing => StatusCode::SERVICE_UNAVAILABLE,
                // A task baked into the image that cannot run (bad package.json,
                // missing entry file) is a fault of the deployment, not the caller.
                ErrorKind::InvalidTask | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            EnclaveError::Secret(e) => {
                use crate::secrets::SecretError as S;
                match e {
                    S::Malformed | S::Undeclared(_) | S::BadValue(_) | S::ValueMismatch => {
                        StatusCode::BAD_REQUEST
                    }
                    S::PlainChannel | S::NoOperator | S::Signature | S::Nonce => {
                        StatusCode::FORBIDDEN
                    }
                }
            }
            EnclaveError::Attestation(_) | EnclaveError::Signing(_) | EnclaveError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Why a task is not served and how to fix it, for the start-up log and the
/// answer alike.
pub(crate) fn refusal_text(task: &str, why: &task_runner::DependencyError) -> String {
    format!(
        "task {task} is not served: its node_modules does not match its package-lock.json \
         ({why}). Install its dependencies with `npm ci --omit=dev --ignore-scripts --prefix \
         {task}` in the tasks directory (`make run` does this for the tasks of the repository), \
         then restart the server"
    )
}

/// axum's text, except for bodies that are not JSON at all: a path into a
/// document that could not be read (`payload.?: EOF while parsing…`) means
/// nothing to the caller, so those say what is wrong with the JSON itself.
fn json_rejection_text(rejection: &JsonRejection) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            let json = e.inner();
            if json.is_eof() {
                return format!("request body is incomplete JSON: {json}");
            }
            if json.is_syntax() {
                return format!("request body is not valid JSON: {json}");
            }
            if json.is_data() {
                return shape_text(&e.path().to_string(), json);
            }
        }
        source = e.source();
    }
    rejection.body_text()
}

/// A body of the wrong shape, in plain words at its field path: `payload:
/// expected an object, got integer 5`, not serde's Rust type names
/// (`expected struct TaskRequest`) or positions.
fn shape_text(path: &str, json: &serde_json::Error) -> String {
    let full = json.to_string();
    // serde_json appends " at line L column C"; the path says where.
    let message = match full.rsplit_once(" at line ") {
        Some((message, _)) if json.line() != 0 => message,
        _ => full.as_str(),
    };
    let place = if path.is_empty() || path == "." {
        "request body".to_owned()
    } else {
        path.to_owned()
    };
    let plain = |expected: &str| -> String {
        let expected = expected.trim();
        if expected.starts_with("struct ") || expected == "a map" {
            "an object".to_owned()
        } else if expected == "a sequence" {
            "an array".to_owned()
        } else if expected.starts_with('u') && expected[1..].chars().all(|c| c.is_ascii_digit()) {
            "a whole number of at least 0".to_owned()
        } else {
            expected.to_owned()
        }
    };
    let found = |found: &str| -> String {
        match found {
            "sequence" => "an array".to_owned(),
            "map" => "an object".to_owned(),
            other => other.replace("floating point", "number").replace('`', ""),
        }
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return format!("{place}: expected {}, got {}", plain(expected), found(got));
        }
    }
    if let Some(field) = message.strip_prefix("unknown field ") {
        let field = field.split(", expected").next().unwrap_or(field);
        let allowed = message
            .split_once("expected one of ")
            .map(|(_, a)| format!(" (allowed: {})", a.replace('`', "")))
            .unwrap_or_default();
        return format!("{place}: unknown field {}{allowed}", field.replace('`', ""));
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("{place}: missing field {}", field.replace('`', ""));
    }
    format!("{place}: {message}")
}

impl IntoResponse for EnclaveError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Timeouts and load shedding are caused by callers; only real faults
        // are errors in the log.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        }
        let body = match &self {
            // A timed-out task still produced output the caller may need to
            // diagnose it; it is not signed because the task did not finish.
            EnclaveError::Task(TaskError::Timeout { partial, .. }) => json!({
                "error": self.to_string(),
                "task_id": partial.task_id,
                "stdout": partial.stdout,
                "stderr": partial.stderr,
                "stdout_truncated": partial.stdout_truncated,
                "stderr_truncated": partial.stderr_truncated,
            }),
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            // A stalled NSM is not cleared in a second: come back after
            // about as long as a call may take.
            let retry_after = match &self {
                EnclaveError::AttestationTimeout(deadline) => {
                    HeaderValue::from(deadline.as_secs().max(1))
                }
                // When the next call is allowed, rounded up.
                EnclaveError::AttestationClientRate(_, wait)
                | EnclaveError::AttestationServerRate(_, wait) => {
                    HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)
                }
                _ => HeaderValue::from_static(RETRY_AFTER_SECS),
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}
