//! The operator's endpoints: `GET /secrets/nonce` and `POST /secrets` (see
//! [`crate::secrets`]). Both answer only over the server's attested TLS.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;

use crate::config::Channel;
use crate::error::EnclaveError;
use crate::secrets::{SecretError, SecretPut};
use crate::state::AppState;

/// Body of `GET /secrets/nonce`.
#[derive(Debug, Serialize)]
pub struct NonceResponse {
    /// Hex of 32 random bytes, good for one update within a minute.
    pub nonce: String,
}

/// Body of a successful `POST /secrets`.
#[derive(Debug, Serialize)]
pub struct PutResponse {
    /// The secret that was set (never its value).
    pub set: String,
}

fn require_tls(channel: Option<Extension<Channel>>) -> Result<(), EnclaveError> {
    match channel {
        Some(Extension(Channel::Tls)) => Ok(()),
        _ => Err(SecretError::PlainChannel.into()),
    }
}

/// `GET /secrets/nonce`.
pub async fn nonce(
    State(state): State<Arc<AppState>>,
    channel: Option<Extension<Channel>>,
) -> Result<Json<NonceResponse>, EnclaveError> {
    require_tls(channel)?;
    let nonce = state.secrets().nonce()?;
    Ok(Json(NonceResponse {
        nonce: hex::encode(nonce),
    }))
}

/// Zeroes the request body, which holds the value, before it is freed. The
/// body is the buffer the router read it into, so this handler holds the
/// only reference; if not, the server's zeroing allocator wipes it when the
/// last holder frees it.
fn wipe(body: Bytes) {
    use zeroize::Zeroize;
    if let Ok(mut body) = body.try_into_mut() {
        body.as_mut().zeroize();
    }
}

/// `POST /secrets`. The body is parsed here, not by axum's `Json`, whose
/// rejection texts quote the body: an error must never echo a value.
pub async fn put(
    State(state): State<Arc<AppState>>,
    channel: Option<Extension<Channel>>,
    body: Bytes,
) -> Result<Json<PutResponse>, EnclaveError> {
    require_tls(channel)?;
    let put = serde_json::from_slice::<SecretPut>(&body);
    wipe(body);
    let name = state
        .secrets()
        .put(put.map_err(|_| SecretError::Malformed)?)?;
    // The name only: values are never logged.
    tracing::info!(secret = %name, "operator secret set");
    Ok(Json(PutResponse { set: name }))
}
