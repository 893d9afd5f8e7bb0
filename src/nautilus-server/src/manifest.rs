//! `GET /manifest`: what this server is and what it will run.
//!
//! The attestation document's `user_data` is the SHA-256 of these exact
//! bytes, so the manifest is serialized once at start and served verbatim
//! for the life of the process: a client that hashes what it downloaded gets
//! the value the enclave attested.

use serde::Serialize;
use sha2::{Digest, Sha256};
use task_runner::{CgroupSummary, Isolation, TaskInfo};

use crate::config::{AttestationMode, ServerConfig};

/// The limits a client can plan around, as configured.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Tasks running at once.
    pub max_concurrent: usize,
    /// Tasks waiting for a slot before new ones get 503.
    pub max_queue: usize,
    /// Timeout when a request names none.
    pub default_timeout_secs: u64,
    /// Largest `timeout_secs` accepted.
    pub max_timeout_secs: u64,
    /// Bytes kept of each of stdout and stderr.
    pub max_output_bytes: usize,
    /// Memory a task may use.
    pub memory_limit_bytes: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Limits {
    /// The limits in effect for `config`.
    pub fn from_config(config: &ServerConfig) -> Self {
        let r = &config.runner;
        Self {
            max_concurrent: r.max_concurrent,
            max_queue: r.max_queue,
            default_timeout_secs: r.default_timeout_secs,
            max_timeout_secs: r.max_timeout_secs,
            max_output_bytes: r.max_output_bytes,
            memory_limit_bytes: r.memory_limit_bytes,
            max_body_bytes: config.max_body_bytes,
        }
    }
}

/// How tasks that declare egress reach it (each task's own list is in
/// `tasks[].egress`).
#[derive(Debug, Clone, Serialize)]
pub struct Egress {
    /// `direct`, or the `CONNECT` proxy connections go through
    /// (`vsock://3:3128`: the parent).
    pub route: crate::egress::EgressRoute,
    /// Per-run caps.
    #[serde(flatten)]
    pub limits: task_runner::EgressLimits,
    /// Hex SHA-256 of the test CA tasks trust besides Node's own store
    /// (`--egress-test-ca`, dev attestation only); `null` without.
    pub test_ca_sha256: Option<String>,
}

#[derive(Serialize)]
struct ManifestBody<'a> {
    server_version: &'a str,
    attestation: &'a str,
    node_version: Option<&'a str>,
    limits: &'a Limits,
    isolation: &'a Isolation,
    /// Per-task cgroup limits in force (memory, pids, CPU weight).
    cgroups: &'a CgroupSummary,
    egress: &'a Egress,
    /// Hex SHA-256 of the TLS certificate's SubjectPublicKeyInfo; `null`
    /// when the server does not terminate TLS. Clients pin it.
    tls_spki_sha256: Option<String>,
    /// Hex compressed SEC1 P-256 keys of the operators who may set secrets.
    operator_keys: Vec<String>,
    tasks: &'a [TaskInfo],
}

/// Who can reach what: the TLS key clients pin, the operators who may set
/// secrets, and how tasks reach the destinations they declare.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// SHA-256 of the TLS certificate's SPKI; `None` without TLS.
    pub tls_spki_sha256: Option<&'a [u8; 32]>,
    /// The operators' public keys.
    pub operator_keys: &'a [result_signing::VerifyingKey],
    /// The egress route and caps.
    pub egress: &'a Egress,
}

/// The frozen manifest: its bytes and their SHA-256.
#[derive(Debug, Clone)]
pub struct Manifest {
    bytes: axum::body::Bytes,
    sha256: [u8; 32],
    tasks: Vec<TaskInfo>,
}

impl Manifest {
    /// Serializes the manifest once; the bytes never change afterwards.
    pub fn new(
        mode: AttestationMode,
        node_version: Option<String>,
        limits: Limits,
        isolation: &Isolation,
        cgroups: &CgroupSummary,
        access: Access<'_>,
        tasks: Vec<TaskInfo>,
    ) -> Result<Self, serde_json::Error> {
        let bytes = serde_json::to_vec(&ManifestBody {
            server_version: crate::SERVER_VERSION,
            attestation: mode.as_str(),
            node_version: node_version.as_deref(),
            limits: &limits,
            isolation,
            cgroups,
            egress: access.egress,
            tls_spki_sha256: access.tls_spki_sha256.map(hex::encode),
            operator_keys: access
                .operator_keys
                .iter()
                .map(|k| hex::encode(result_signing::encode_public_key(k)))
                .collect(),
            tasks: &tasks,
        })?;
        let sha256 = Sha256::digest(&bytes).into();
        Ok(Self {
            bytes: bytes.into(),
            sha256,
            tasks,
        })
    }

    /// The exact bytes `GET /manifest` serves.
    pub fn bytes(&self) -> &axum::body::Bytes {
        &self.bytes
    }

    /// What the attestation document carries as `user_data`.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The listed tasks' paths, sorted.
    pub fn task_paths(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|t| t.task_path.as_str())
    }

    /// Number of listed tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The listed task with this normalized path. Only listed tasks run: the
    /// attestation covers the manifest, so a result for anything else would
    /// be signed but unattested.
    pub fn task(&self, task_path: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|t| t.task_path == task_path)
    }
}
