//! The attested task server that runs inside an AWS Nitro Enclave.
//!
//! The whole flow fits in a few files:
//!
//! Each module uses only those listed before it: [`config`], [`error`] and
//! [`log_flood`],
//! then [`clients`], [`rate`], [`budget`], [`manifest`], [`metrics`], [`tls`], [`secrets`] and
//! [`state`], then the handlers ([`common`], [`app`], [`operator`]), the
//! [`router`], and [`transport`] on top.
//!
//! * [`config`]: what the server is told at start.
//! * [`tls`]: the TLS key made at start, whose hash the manifest carries.
//! * [`secrets`] and [`operator`]: operator secrets, set over attested TLS
//!   by a pinned operator key, handed to the tasks that declare them.
//! * [`state`]: at start the server makes an ephemeral P-256 key, opens the
//!   attester (the NSM, or the software stand-in in dev mode), builds the
//!   task runner and freezes the [`manifest`].
//! * [`common`]: `GET /get_attestation` asks the attester for a document whose
//!   `public_key` is the server's key and whose `user_data` is the SHA-256 of
//!   the manifest bytes; `GET /health_check`, `GET /manifest`.
//! * [`app`]: `POST /process_data` parses the request, runs the task through
//!   [`task_runner`] and signs the result with [`result_signing`].
//! * [`error`]: every failure is an [`error::EnclaveError`] that becomes a JSON
//!   `{"error": ...}` response with the right status.
//! * [`router`] wires the routes and middleware; [`transport`] listens on TCP
//!   or vsock; [`metrics`] holds the counters `GET /metrics` exports;
//!   [`egress`] opens the tasks' declared connections out (directly or
//!   through the parent).
//!
//! Handlers can be called directly, without HTTP:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{extract::State, Json};
//! use nautilus_server::app::{process_data, TaskRequest};
//! use nautilus_server::common::{ProcessDataRequest, SignedTaskResult};
//! use nautilus_server::state::{AppState, ServerConfig};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = ServerConfig::dev();
//! # config.runner.tasks_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../..").into();
//! let state = Arc::new(AppState::new(config)?);
//! let request = ProcessDataRequest {
//!     payload: TaskRequest {
//!         task_path: Some("nodejs-task".into()),
//!         args: vec!["1".into(), "2".into()],
//!         ..Default::default()
//!     },
//! };
//! // `"signing": "full"` (the default) signs the whole result.
//! let Json(SignedTaskResult::Full(signed)) = process_data(State(state), Json(request)).await?
//! else {
//!     unreachable!("a full result was asked for")
//! };
//! println!("exit code {:?}", signed.response.data.exit_code);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

#![warn(missing_docs)]

pub mod app;
pub mod budget;
pub mod clients;
pub mod common;
pub mod config;
pub mod egress;
pub mod error;
pub mod log_flood;
pub mod manifest;
pub mod metrics;
pub mod operator;
pub mod rate;
pub mod router;
pub mod secrets;
pub mod state;
pub mod tls;
pub mod transport;

/// Version of this server, reported in the manifest and `/health_check`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
