//! Runs `nodejs-task` through the server's handler without HTTP and checks
//! the signature, as a client would.
//!
//! ```text
//! cargo run --example task_runner_demo -- 3 4 5
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use nautilus_server::app::{process_data, TaskRequest};
use nautilus_server::common::ProcessDataRequest;
use nautilus_server::state::{AppState, ServerConfig};
use result_signing::{decode_public_key, SignedTaskResult, INTENT_TASK_RESULT};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ServerConfig::dev();
    // The example task lives at the repository root.
    config.runner.tasks_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state = Arc::new(AppState::new(config)?);

    let request = ProcessDataRequest {
        payload: TaskRequest {
            task_path: Some("nodejs-task".into()),
            args: std::env::args().skip(1).collect(),
            nonce: Some("c0ffee".into()),
            ..Default::default()
        },
    };
    let Json(signed) = process_data(State(Arc::clone(&state)), Json(request)).await?;

    let key = decode_public_key(state.public_key()).ok_or_else(|| anyhow::anyhow!("bad key"))?;
    match &signed {
        SignedTaskResult::Full(full) => full.verify(&key, INTENT_TASK_RESULT)?,
        SignedTaskResult::Compact(compact) => {
            compact.verify(&key)?;
        }
    }
    println!("{}", serde_json::to_string_pretty(&signed)?);
    eprintln!(
        "signature verified with public key {}",
        hex::encode(state.public_key())
    );
    Ok(())
}
