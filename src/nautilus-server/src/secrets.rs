//! Operator secrets: values an operator sets at run time, after verifying
//! the attestation, for the tasks that declare them (see
//! [`task_runner::TaskDeclaration`]).
//!
//! Only an operator whose P-256 public key the measured image pins
//! (`--operator-key`, listed in the manifest) may set one: each update is an
//! [`IntentMessage`] of intent [`INTENT_SECRET_UPDATE`] signed by that key,
//! carrying a nonce this server handed out (`GET /secrets/nonce`), used once
//! and valid for [`NONCE_TTL`]; so a replayed update, or one signed by anyone
//! else, is refused. Updates travel only over the server's attested TLS: the
//! value is in the request. Values live in this process's memory only,
//! zeroed when replaced or dropped, and are lost on restart; they never
//! appear in a log line, a metric, a result or an error message (errors
//! name secrets, never values).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use result_signing::{SecretUpdate, SignedResponse, VerifyingKey, INTENT_SECRET_UPDATE};
use sha2::{Digest, Sha256};
use task_runner::SecretValues;
use zeroize::Zeroizing;

/// How long a nonce from `GET /secrets/nonce` may be used.
pub const NONCE_TTL: Duration = Duration::from_secs(60);
/// Nonces outstanding at once; the oldest goes first.
pub const MAX_OUTSTANDING_NONCES: usize = 64;
/// Largest secret value, in bytes.
pub const MAX_SECRET_VALUE: usize = 64 * 1024;

/// Why a secret update was refused. No variant holds a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The request came over plain HTTP, which the parent instance reads.
    #[error("operator secrets travel only over the server's attested TLS: this request came in plain HTTP, which the parent instance can read; use an https:// URL (the server needs --tls on)")]
    PlainChannel,
    /// The image pins no operator key.
    #[error("this image pins no operator key (--operator-key), so no one may set secrets")]
    NoOperator,
    /// The body is not `{"update": {...}, "value": "..."}`.
    #[error("the body must be JSON {{\"update\": <signed secret update>, \"value\": <string>}}")]
    Malformed,
    /// No task declares a secret of this name.
    #[error("no task in the manifest declares a secret named {0:?}")]
    Undeclared(String),
    /// The value is too large or cannot be an environment variable.
    #[error("the value of {0:?} must be at most {MAX_SECRET_VALUE} bytes and contain no NUL byte")]
    BadValue(String),
    /// The value is not the one signed.
    #[error("the value's SHA-256 is not the value_sha256 of the signed update")]
    ValueMismatch,
    /// Not an intent-1 message signed by a pinned operator key.
    #[error("the update is not signed by an operator key this image pins")]
    Signature,
    /// The nonce was never handed out, was used already, or expired.
    #[error("the nonce is unknown, used or expired: fetch a fresh one from GET /secrets/nonce")]
    Nonce,
}

/// `POST /secrets` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    /// The operator's signed update.
    pub update: SignedResponse<SecretUpdate>,
    /// The value, whose SHA-256 the update carries.
    pub value: Zeroizing<String>,
}

/// The operator keys, the values and the outstanding nonces.
pub struct SecretStore {
    operators: Vec<VerifyingKey>,
    declared: BTreeSet<String>,
    values: RwLock<Arc<SecretValues>>,
    nonces: Mutex<VecDeque<([u8; 32], Instant)>>,
}

impl SecretStore {
    /// A store for the secrets named in `declared`, settable by `operators`.
    pub fn new(operators: Vec<VerifyingKey>, declared: BTreeSet<String>) -> Self {
        Self {
            operators,
            declared,
            values: RwLock::default(),
            nonces: Mutex::default(),
        }
    }

    /// The values now, for one run: a snapshot that later updates do not change.
    pub fn values(&self) -> Arc<SecretValues> {
        Arc::clone(&self.values.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Declared names, each with whether it is set.
    pub fn status(&self) -> Vec<(&str, bool)> {
        let values = self.values();
        self.declared
            .iter()
            .map(|name| (name.as_str(), values.contains_key(name)))
            .collect()
    }

    /// A fresh nonce for one update.
    pub fn nonce(&self) -> Result<[u8; 32], SecretError> {
        if self.operators.is_empty() {
            return Err(SecretError::NoOperator);
        }
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        nonces.retain(|(_, at)| now.duration_since(*at) < NONCE_TTL);
        if nonces.len() >= MAX_OUTSTANDING_NONCES {
            nonces.pop_front();
        }
        nonces.push_back((nonce, now));
        Ok(nonce)
    }

    /// Checks and applies one update; returns the secret's name.
    pub fn put(&self, put: SecretPut) -> Result<String, SecretError> {
        if self.operators.is_empty() {
            return Err(SecretError::NoOperator);
        }
        let SecretPut { update, value } = put;
        let data = &update.response.data;
        if !self.declared.contains(&data.name) {
            return Err(SecretError::Undeclared(data.name.clone()));
        }
        if value.len() > MAX_SECRET_VALUE || value.contains('\0') {
            return Err(SecretError::BadValue(data.name.clone()));
        }
        if hex::encode(Sha256::digest(value.as_bytes())) != data.value_sha256 {
            return Err(SecretError::ValueMismatch);
        }
        if !self
            .operators
            .iter()
            .any(|key| update.verify(key, INTENT_SECRET_UPDATE).is_ok())
        {
            return Err(SecretError::Signature);
        }
        // Only a correctly signed update uses up its nonce.
        let nonce: [u8; 32] = hex::decode(&data.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SecretError::Nonce)?;
        {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            let at = nonces
                .iter()
                .position(|(n, issued)| *n == nonce && issued.elapsed() < NONCE_TTL)
                .ok_or(SecretError::Nonce)?;
            nonces.remove(at);
        }
        let mut values = self.values.write().unwrap_or_else(|p| p.into_inner());
        let mut next = SecretValues::clone(&values);
        next.insert(data.name.clone(), value);
        // The replaced map is zeroed once the last run holding it is done.
        *values = Arc::new(next);
        Ok(data.name.clone())
    }
}
