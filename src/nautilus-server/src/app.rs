//! `POST /process_data`: run one task and sign what happened.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::{Extension, Json};
use result_signing::{
    EgressEntry, IntentMessage, SignedTaskResult, Signing, TaskResult, INTENT_TASK_RESULT,
};
use serde::{Deserialize, Serialize};

use crate::clients::{ClientKey, QueueRefusal};
use crate::common::{parse_hex_nonce, ProcessDataRequest};
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
    /// Passed to the task as argv, never through a shell. At most
    /// [`task_runner::MAX_ARGS`]: a longer array is refused while it is
    /// parsed, not after half a million strings were allocated (a 2 MiB body
    /// of empty strings took 66 ms of an async worker).
    #[serde(default, deserialize_with = "bounded_args")]
    pub args: Vec<String>,
    /// Bytes for the task's stdin; when absent stdin reads as end-of-file.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Hex chosen by the client and echoed (lower-cased) in the signed data,
    /// so the client can tell a fresh answer from a replay.
    #[serde(default)]
    pub nonce: Option<String>,
    /// What is signed: `"full"` (default) signs the whole result; `"compact"`
    /// signs the outputs' SHA-256 and lengths instead of the texts, small
    /// enough for a chain to check, and returns the texts beside it.
    #[serde(default)]
    pub signing: Signing,
}

fn bounded_args<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {} strings", task_runner::MAX_ARGS)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut args = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                if args.len() == task_runner::MAX_ARGS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {max} arguments given, at most {max} are allowed",
                        max = task_runner::MAX_ARGS
                    )));
                }
                args.push(arg);
            }
            Ok(args)
        }
    }
    d.deserialize_seq(Bounded)
}

/// The task `{"payload": {}}` runs: the example from the product description.
pub use task_runner::DEFAULT_TASK_PATH;

/// The route: [`process_data`], with a body that is not the JSON asked for
/// answered as an [`EnclaveError`] (see [`EnclaveError::Json`]).
pub async fn process_data_route(
    state: State<Arc<AppState>>,
    client: Option<Extension<ClientKey>>,
    request: Result<Json<ProcessDataRequest<TaskRequest>>, JsonRejection>,
) -> Result<Json<SignedTaskResult>, EnclaveError> {
    let request = request?;
    let client = client.map_or(ClientKey::UNKNOWN, |Extension(c)| c);
    // Round robin between clients: one client's queued tasks do not delay
    // another's by more than one turn each.
    let turn = match state.turns.turn(client).await {
        Ok(turn) => turn,
        Err(refusal) => {
            if refusal == QueueRefusal::Full {
                state.metrics.task_shed();
            }
            return Err(refusal.into());
        }
    };
    let response = process_data(state, request).await;
    drop(turn);
    response
}

/// Runs the task and returns its result signed with the attested key.
pub async fn process_data(
    State(state): State<Arc<AppState>>,
    Json(request): Json<ProcessDataRequest<TaskRequest>>,
) -> Result<Json<SignedTaskResult>, EnclaveError> {
    let TaskRequest {
        task_path,
        timeout_secs,
        args,
        stdin,
        nonce,
        signing,
    } = request.payload;
    // Validate what the server owns before spending a slot on the task.
    let nonce = nonce
        .map(|n| parse_hex_nonce(&n, MAX_TASK_NONCE_BYTES).map(hex::encode))
        .transpose()?;

    let task_path = task_path.as_deref().unwrap_or(DEFAULT_TASK_PATH);
    // Only the manifest decides what runs, not what is on disk.
    let task_path = task_runner::normalize_task_path(task_path)?;
    if state.manifest().task(&task_path).is_none() {
        return Err(state.why_not_served(task_path).await);
    }

    let run = task_runner::TaskRequest {
        task_path,
        timeout_secs,
        args,
        stdin,
    };
    let outcome = state
        .runner
        .run_with_secrets(run, state.secrets().values())
        .await;
    state.metrics.record_task(&outcome);
    let result = outcome?;
    tracing::info!(
        task_id = %result.task_id,
        task_path = %result.task_path,
        task_digest = %result.task_digest,
        status = %result.status,
        // Options as their value or absent, never `Some(…)`.
        exit_code = result.exit_code,
        signal = result.signal.as_deref(),
        execution_time_ms = result.execution_time_ms,
        "task finished"
    );

    let message = IntentMessage::new(INTENT_TASK_RESULT, now_ms(), signed_data(result, nonce));
    let signed = match signing {
        Signing::Full => SignedTaskResult::Full(state.sign(message)?),
        Signing::Compact => SignedTaskResult::Compact(state.sign_compact(message)?),
    };
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
