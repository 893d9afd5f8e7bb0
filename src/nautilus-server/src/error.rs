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
    /// Too many attestation requests at once.
    #[error("attestation is busy, retry shortly")]
    AttestationBusy,
    /// The attestation call did not finish within its deadline (a stalled NSM).
    #[error("the attestation call did not finish within {} s (the NSM is stalled or overloaded); retry later", .0.as_secs_f64())]
    AttestationTimeout(std::time::Duration),
    /// The NSM (or dev attester) failed to produce a document.
    #[error("attestation failed: {0}")]
    Attestation(#[from] attestation_dev::AttestError),
    /// The result could not be signed (BCS encoding failed).
    #[error("could not sign the result: {0}")]
    Signing(#[from] result_signing::Error),
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
            EnclaveError::OverShare(_) => StatusCode::TOO_MANY_REQUESTS,
            EnclaveError::BodyBudget | EnclaveError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            // Unparseable and ill-shaped bodies alike are the caller's: 400, not 422.
            EnclaveError::Json(r) if r.status() == StatusCode::UNPROCESSABLE_ENTITY => {
                StatusCode::BAD_REQUEST
            }
            EnclaveError::Json(r) => r.status(),
            EnclaveError::NotInManifest(_) => StatusCode::NOT_FOUND,
            EnclaveError::AttestationBusy | EnclaveError::AttestationTimeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EnclaveError::Task(e) => match e.kind() {
                ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::NodeMissing | ErrorKind::Busy | ErrorKind::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                // A task baked into the image that cannot run (bad package.json,
                // missing entry file) is a fault of the deployment, not the caller.
                ErrorKind::InvalidTask | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            EnclaveError::Attestation(_) | EnclaveError::Signing(_) | EnclaveError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
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
        }
        source = e.source();
    }
    rejection.body_text()
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
                _ => HeaderValue::from_static(RETRY_AFTER_SECS),
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}
