//! The endpoints every Nautilus server has, whatever its tasks:
//! attestation, manifest, health and metrics.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::clients::ClientKey;
use crate::error::EnclaveError;
use crate::state::AppState;

pub use result_signing::{IntentMessage, SignedTaskResult, Signing, TaskResult};

/// The body of every `POST /process_data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDataRequest<T> {
    /// The endpoint-specific request.
    pub payload: T,
}

/// A signed answer: `{"response": {"intent", "timestamp_ms", "data"}, "signature"}`.
pub type ProcessedDataResponse<T> = result_signing::SignedResponse<T>;

/// Longest nonce the NSM accepts in an attestation document.
pub const MAX_ATTESTATION_NONCE_BYTES: usize = 512;

/// Parses a client nonce: non-empty hex of at most `max` bytes.
pub fn parse_hex_nonce(hex_nonce: &str, max: usize) -> Result<Vec<u8>, EnclaveError> {
    // Check the length before decoding so an oversized nonce costs nothing.
    if hex_nonce.len() > max * 2 {
        return Err(EnclaveError::BadRequest(format!(
            "nonce is too long: {} hex digits, at most {} ({max} bytes) allowed",
            hex_nonce.len(),
            max * 2
        )));
    }
    if hex_nonce.is_empty() {
        return Err(EnclaveError::BadRequest("nonce is empty".into()));
    }
    hex::decode(hex_nonce)
        .map_err(|e| EnclaveError::BadRequest(format!("nonce is not valid hex: {e}")))
}

/// `GET /`: liveness for load balancers and humans.
pub async fn ping() -> &'static str {
    "Pong!"
}

/// Query of `GET /get_attestation`. Unknown parameters are refused, so a
/// caller cannot believe it chose `public_key` or `user_data`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationQuery {
    /// Hex, at most [`MAX_ATTESTATION_NONCE_BYTES`] bytes.
    pub nonce: Option<String>,
}

/// Body of `GET /get_attestation`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetAttestationResponse {
    /// Hex of the COSE_Sign1 attestation document.
    pub attestation: String,
}

/// Returns a fresh attestation document binding the server's public key and
/// the manifest hash; the caller may only choose the nonce.
/// Requests without a nonce share one recent document (see
/// [`AppState::attestation_for`]).
pub async fn get_attestation(
    State(state): State<Arc<AppState>>,
    client: Option<Extension<ClientKey>>,
    Query(query): Query<AttestationQuery>,
) -> Result<Json<GetAttestationResponse>, EnclaveError> {
    let client = client.map_or(ClientKey::UNKNOWN, |Extension(c)| c);
    let nonce = query
        .nonce
        .as_deref()
        .map(|n| parse_hex_nonce(n, MAX_ATTESTATION_NONCE_BYTES))
        .transpose()?;
    let document = state.attestation_for(client, nonce).await?;
    Ok(Json(GetAttestationResponse {
        attestation: hex::encode(document),
    }))
}

/// `HEAD /get_attestation`: the headers a GET would have, without asking
/// the NSM for a document.
pub async fn attestation_head() -> impl IntoResponse {
    [(header::CONTENT_TYPE, "application/json")]
}

/// The manifest bytes, verbatim: their SHA-256 is the attested `user_data`.
pub async fn manifest(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.manifest().bytes().clone(),
    )
}

/// Body of `GET /health_check`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Hex of the attested public key (compressed SEC1).
    pub pk: String,
    /// `ok`, or `degraded` when Node.js is missing and every task would fail.
    pub status: String,
    /// `nsm` or `dev`.
    pub attestation: String,
    /// `node --version` of the runner's Node.js, if found.
    pub node_version: Option<String>,
    /// Tasks listed in the manifest.
    pub tasks: usize,
    /// Per-task cgroup limits in force, as in the manifest.
    pub cgroups: task_runner::CgroupSummary,
    /// Tasks running now.
    pub running: usize,
    /// Tasks waiting for a slot.
    pub queued: usize,
    /// Server version.
    pub version: String,
    /// The task isolation in force (the same as in the attested manifest).
    pub isolation: task_runner::Isolation,
    /// Server clock minus the timestamp of the latest fresh attestation
    /// document (the hypervisor's clock, for the NSM); `null` before the first.
    pub clock_skew_ms: Option<i64>,
    /// Operator secrets the tasks declare: which are set (names only).
    pub secrets: SecretsStatus,
}

/// Declared operator secrets, by whether they are set.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SecretsStatus {
    /// Set: the tasks that declare them can run.
    pub set: Vec<String>,
    /// Not set: the tasks that declare them fail until the operator sets them.
    pub missing: Vec<String>,
}

/// `GET /health_check`.
pub async fn health_check(State(state): State<Arc<AppState>>) -> Json<HealthCheck> {
    let stats = state.runner().stats();
    let node_version = state.runner().node_version().map(str::to_owned);
    Json(HealthCheck {
        pk: hex::encode(state.public_key()),
        // Without Node.js every task fails: say so rather than "ok".
        status: if node_version.is_some() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        attestation: state.attestation_mode().as_str().into(),
        node_version,
        tasks: state.manifest().task_count(),
        cgroups: state.runner().cgroups().clone(),
        running: stats.running,
        queued: stats.queued,
        version: crate::SERVER_VERSION.into(),
        isolation: state.runner().isolation().clone(),
        clock_skew_ms: state.clock_skew().map(|s| s.skew_ms),
        secrets: {
            let mut status = SecretsStatus::default();
            for (name, set) in state.secrets().status() {
                let list = if set {
                    &mut status.set
                } else {
                    &mut status.missing
                };
                list.push(name.to_owned());
            }
            status
        },
    })
}

/// `GET /metrics`: see [`crate::metrics`].
pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, EnclaveError> {
    // Tasks waiting for their turn are queued tasks too.
    let mut stats = state.runner().stats();
    stats.queued += state.tasks_waiting();
    stats.abandoned_queued += state.tasks_abandoned_waiting();
    let body = state
        .metrics
        .scrape(&stats, state.body_budget.in_use())
        .map_err(|e| EnclaveError::Internal(format!("metrics encoding failed: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
