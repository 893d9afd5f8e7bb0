//! Everything a request handler needs, built once at start.

use std::sync::Arc;
use std::time::Duration;

use attestation_dev::{AttestError, Attester, DevAttester, NsmAttester};
use result_signing::{encode_public_key, IntentMessage, SignedResponse, SigningKey};
use task_runner::{Runner, RunnerConfig};

use crate::manifest::{Limits, Manifest};
use crate::metrics::Metrics;

/// Where attestation documents come from: the NSM (the only mode a verifier
/// trusting the AWS root accepts), or the dev stand-in for local development
/// and tests, whose documents carry zero PCRs, a `dev-` module id and a root
/// nobody else trusts.
pub use attestation_dev::Mode as AttestationMode;

/// Server settings that are not transport: the binary maps flags onto this.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where attestation documents come from.
    pub attestation: AttestationMode,
    /// Everything about running tasks.
    pub runner: RunnerConfig,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a browser; empty = no CORS.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// On shutdown, how long running tasks may take before they are stopped.
    pub shutdown_grace: Duration,
    /// Connection limits and deadlines.
    pub http: crate::transport::HttpLimits,
}

impl ServerConfig {
    /// Dev attestation and the runner's defaults: what tests and examples use.
    pub fn dev() -> Self {
        Self {
            attestation: AttestationMode::Dev,
            ..Self::default()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            attestation: AttestationMode::Nsm,
            runner: RunnerConfig::default(),
            max_body_bytes: 2 * 1024 * 1024,
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            http: crate::transport::HttpLimits::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--attestation nsm` without a usable `/dev/nsm`.
    #[error("{0} (outside an enclave, start the server with `--attestation dev`)")]
    NsmUnavailable(#[source] AttestError),
    /// The dev CA could not be generated.
    #[error("could not create the dev attestation CA: {0}")]
    DevAttester(#[source] AttestError),
    /// The runner configuration is unusable.
    #[error("invalid task runner configuration: {0}")]
    Runner(#[from] task_runner::ConfigError),
    /// The tasks directory could not be listed.
    #[error("could not list the tasks for the manifest: {0}")]
    Tasks(#[source] task_runner::TaskError),
    /// The manifest could not be serialized.
    #[error("could not serialize the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// Shared, immutable-after-start server state. The signing key lives only
/// here, in memory; it is never logged (it has no `Debug` that shows it) and
/// never leaves the process.
pub struct AppState {
    signing_key: SigningKey,
    public_key: Vec<u8>,
    attester: Arc<dyn Attester>,
    dev_root_pem: Option<String>,
    pub(crate) runner: Runner,
    manifest: Manifest,
    pub(crate) metrics: Metrics,
    pub(crate) config: ServerConfig,
    /// Bounds attestation calls in flight: each holds a blocking thread.
    pub(crate) attestations: Arc<tokio::sync::Semaphore>,
    /// Request-body bytes buffered by all requests together.
    pub(crate) body_budget: Arc<tokio::sync::Semaphore>,
}

/// Attestation calls served at once; more wait (briefly) for a turn.
pub(crate) const MAX_CONCURRENT_ATTESTATIONS: usize = 8;

impl AppState {
    /// Opens the attester, generates the key, builds the runner and freezes
    /// the manifest.
    pub fn new(config: ServerConfig) -> Result<Self, StartupError> {
        let (attester, dev_root_pem): (Arc<dyn Attester>, _) = match config.attestation {
            AttestationMode::Nsm => (
                Arc::new(NsmAttester::open().map_err(StartupError::NsmUnavailable)?),
                None,
            ),
            AttestationMode::Dev => {
                let dev = DevAttester::generate().map_err(StartupError::DevAttester)?;
                let pem = dev.root_pem();
                (Arc::new(dev), Some(pem))
            }
        };
        debug_assert_eq!(attester.mode(), config.attestation);

        let signing_key = SigningKey::random(&mut rand_core::OsRng);
        let public_key = encode_public_key(signing_key.verifying_key());

        let runner = Runner::new(config.runner.clone())?;
        let tasks = runner.list_tasks().map_err(StartupError::Tasks)?;
        let manifest = Manifest::new(
            config.attestation,
            runner.node_version().map(str::to_owned),
            Limits::from_config(&config),
            tasks,
        )?;

        let body_budget = Arc::new(tokio::sync::Semaphore::new(
            config
                .http
                .max_buffered_body_bytes
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            signing_key,
            public_key,
            attester,
            dev_root_pem,
            runner,
            manifest,
            metrics: Metrics::default(),
            config,
            attestations: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_ATTESTATIONS)),
            body_budget,
        })
    }

    /// Signs a message with the attested key. The key itself never leaves
    /// this struct.
    pub fn sign<T: serde::Serialize>(
        &self,
        message: IntentMessage<T>,
    ) -> Result<SignedResponse<T>, result_signing::Error> {
        message.sign(&self.signing_key)
    }

    /// The attested public key: 33-byte compressed SEC1.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    pub(crate) fn attester(&self) -> &Arc<dyn Attester> {
        &self.attester
    }

    /// How this server attests.
    pub fn attestation_mode(&self) -> AttestationMode {
        self.config.attestation
    }

    /// PEM of the dev root CA, in dev mode only.
    pub fn dev_root_pem(&self) -> Option<&str> {
        self.dev_root_pem.as_deref()
    }

    /// The frozen manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The task runner.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// The configuration the server started with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}

/// Marks the process non-dumpable: no core dumps, and other uids (the tasks)
/// can neither ptrace it nor open its `/proc/<pid>/mem` or `environ`, where
/// the signing key and the operator's secrets live.
pub fn harden_process() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one, so that the connection
/// cap, not a default soft limit of 1024, is what bounds connections.
/// Returns the limit now in effect.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}
