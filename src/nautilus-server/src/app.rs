//! `POST /process_data`: run one task and sign what happened.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use result_signing::{EgressEntry, IntentMessage, TaskResult, INTENT_TASK_RESULT};
use serde::{Deserialize, Serialize};

use crate::common::{parse_hex_nonce, ProcessDataRequest, ProcessedDataResponse};
use crate::error::EnclaveError;
use crate::state::{now_ms, AppState};

/// Longest `nonce` a client may attach to a task, in bytes (hex digits / 2).
pub const MAX_TASK_NONCE_BYTES: usize = 64;

/// The task to run: the `payload` of a `/process_data` request. Every field
/// is optional; `{}` runs `nodejs-task` with no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Task directory relative to the tasks root; default `nodejs-task`.
    #[serde(default)]
    pub task_path: Option<String>,
    /// Seconds before the task is stopped; default and maximum are in the
    /// manifest's `limits`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Passed to the task as argv, never through a shell.
    #[serde(default)]
    pub args: Vec<String>,
    /// Bytes for the task's stdin; when absent stdin reads as end-of-file.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Hex chosen by the client and echoed (lower-cased) in the signed data,
    /// so the client can tell a fresh answer from a replay.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// The task `{"payload": {}}` runs: the example from the product description.
pub use task_runner::DEFAULT_TASK_PATH;

/// The route: [`process_data`], with a body that is not the JSON asked for
/// answered as an [`EnclaveError`] (see [`EnclaveError::Json`]).
pub async fn process_data_route(
    state: State<Arc<AppState>>,
    request: Result<Json<ProcessDataRequest<TaskRequest>>, JsonRejection>,
) -> Result<Json<ProcessedDataResponse<TaskResult>>, EnclaveError> {
    process_data(state, request?).await
}

/// Runs the task and returns its result signed with the attested key.
pub async fn process_data(
    State(state): State<Arc<AppState>>,
    Json(request): Json<ProcessDataRequest<TaskRequest>>,
) -> Result<Json<ProcessedDataResponse<TaskResult>>, EnclaveError> {
    let TaskRequest {
        task_path,
        timeout_secs,
        args,
        stdin,
        nonce,
    } = request.payload;
    // Validate what the server owns before spending a slot on the task.
    let nonce = nonce
        .map(|n| parse_hex_nonce(&n, MAX_TASK_NONCE_BYTES).map(hex::encode))
        .transpose()?;

    let task_path = task_path.as_deref().unwrap_or(DEFAULT_TASK_PATH);
    // Only the manifest decides, not what is on disk: every task that is not
    // listed gets the same answer, which tells nothing of the server's files.
    let task_path = task_runner::normalize_task_path(task_path)?;
    if state.manifest().task(&task_path).is_none() {
        return Err(EnclaveError::NotInManifest(task_path));
    }

    let run = task_runner::TaskRequest {
        task_path,
        timeout_secs,
        args,
        stdin,
    };
    let outcome = state.runner.run(run).await;
    state.metrics.record_task(&outcome);
    let result = outcome?;
    tracing::info!(
        task_id = %result.task_id,
        task_path = %result.task_path,
        task_digest = %result.task_digest,
        status = %result.status,
        exit_code = ?result.exit_code,
        signal = ?result.signal,
        execution_time_ms = result.execution_time_ms,
        "task finished"
    );

    let data = signed_data(result, nonce);
    let signed = state.sign(IntentMessage::new(INTENT_TASK_RESULT, now_ms(), data))?;
    Ok(Json(signed))
}

fn signed_data(r: task_runner::TaskResult, nonce: Option<String>) -> TaskResult {
    TaskResult {
        task_id: r.task_id,
        task_path: r.task_path,
        task_digest: r.task_digest,
        args: r.args,
        stdin_sha256: r.stdin_sha256,
        nonce,
        status: r.status,
        exit_code: r.exit_code,
        signal: r.signal,
        stdout: r.stdout,
        stderr: r.stderr,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
        execution_time_ms: r.execution_time_ms,
        limit: r.limit,
        resources: r.resources.map(|u| result_signing::Resources {
            cpu_time_ms: u.cpu_time_ms,
            peak_memory_bytes: u.peak_memory_bytes,
        }),
        egress: r
            .egress
            .into_iter()
            .map(|e| EgressEntry {
                host: e.host,
                port: e.port,
                connections: e.connections,
                bytes_out: e.bytes_out,
                bytes_in: e.bytes_in,
            })
            .collect(),
    }
}
