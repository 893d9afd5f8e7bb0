//! Everything a request handler needs, built once at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use attestation_dev::{AttestError, AttestationRequest, Attester, DevAttester, NsmAttester};
use result_signing::{encode_public_key, IntentMessage, SignedResponse, SigningKey};
use task_runner::{Runner, RunnerConfig};

pub use crate::config::{AttestationMode, ServerConfig, DEFAULT_ATTESTATION_DEADLINE};
use crate::error::EnclaveError;
use crate::manifest::{Access, Limits, Manifest};
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use crate::tls::{TlsError, TlsIdentity};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--attestation nsm` without a usable `/dev/nsm`.
    #[error("{0}; outside an enclave, start the server with `--attestation dev`")]
    NsmUnavailable(AttestError),
    /// `/dev/nsm` is open to other users and could not be made root-only.
    #[error("{0}")]
    NsmExposed(AttestError),
    /// The dev CA could not be generated.
    #[error("could not create the dev attestation CA: {0}")]
    DevAttester(AttestError),
    /// The runner configuration is unusable.
    #[error("invalid task runner configuration: {0}")]
    Runner(task_runner::ConfigError),
    /// The tasks directory could not be listed.
    #[error("could not list the tasks for the manifest: {0}")]
    Tasks(task_runner::TaskError),
    /// `--egress-test-ca` with real attestation.
    #[error("--egress-test-ca is for tests: a server with --attestation nsm refuses it (tasks would trust a CA nobody audits)")]
    TestCaInNsm,
    /// The TLS key or certificate could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The manifest could not be serialized.
    #[error("could not serialize the manifest: {0}")]
    Manifest(serde_json::Error),
}

/// Shared, immutable-after-start server state. The signing key lives only
/// here, in memory; it is never logged (it has no `Debug` that shows it) and
/// never leaves the process.
pub struct AppState {
    signing_key: SigningKey,
    public_key: Vec<u8>,
    attester: Arc<dyn Attester>,
    dev_root_pem: Option<String>,
    tls: Option<TlsIdentity>,
    secrets: SecretStore,
    pub(crate) runner: Runner,
    manifest: Manifest,
    /// Tasks found at start but not served, with why (their `node_modules`
    /// does not match their lockfile).
    refused_tasks: BTreeMap<String, task_runner::DependencyError>,
    pub(crate) metrics: Metrics,
    pub(crate) config: ServerConfig,
    /// Bounds attestation calls in flight: each holds a blocking thread.
    pub(crate) attestations: Arc<tokio::sync::Semaphore>,
    /// The latest clock skew measured, see [`AppState::clock_skew`].
    clock_skew: std::sync::Mutex<Option<ClockSkew>>,
    /// Request-body bytes buffered by all requests together.
    pub(crate) body_budget: crate::budget::BodyBudget,
    /// What each client holds: connections and requests in flight.
    pub(crate) clients: Arc<crate::clients::Clients>,
    /// Turns to run a task, round robin between clients.
    pub(crate) turns: Arc<crate::clients::FairQueue>,
}

/// This server's clock minus the `timestamp` of a fresh attestation
/// document. An NSM document's timestamp is the Nitro hypervisor's clock;
/// results are signed with the enclave's, which can drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockSkew {
    /// Server clock minus document timestamp, in ms (positive: the server is ahead).
    pub skew_ms: i64,
    /// When it was measured, by the server's clock (ms since the UNIX epoch).
    pub measured_at_ms: u64,
}

/// A skew beyond this is logged as a warning: clients allow a result's
/// timestamp to be 60 s off.
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(5);

/// Attestation calls served at once; more wait (briefly) for a turn.
pub(crate) const MAX_CONCURRENT_ATTESTATIONS: usize = 8;

/// How long an attestation request waits for a turn before a 503.
const ATTESTATION_WAIT: Duration = Duration::from_secs(5);

/// A test CA makes every task trust certificates nobody audits: only with
/// dev attestation.
fn check_test_ca(config: &ServerConfig) -> Result<(), StartupError> {
    if config.attestation == AttestationMode::Nsm && config.runner.egress_test_ca.is_some() {
        return Err(StartupError::TestCaInNsm);
    }
    Ok(())
}

impl AppState {
    /// Opens the attester, generates the key, builds the runner and freezes
    /// the manifest.
    pub fn new(config: ServerConfig) -> Result<Self, StartupError> {
        // Before the NSM is opened: the refusal is about the flags.
        check_test_ca(&config)?;
        let (attester, dev_root_pem): (Arc<dyn Attester>, _) = match config.attestation {
            AttestationMode::Nsm => (Arc::new(open_nsm()?), None),
            AttestationMode::Dev => {
                let dev = DevAttester::generate().map_err(StartupError::DevAttester)?;
                let pem = dev.root_pem();
                (Arc::new(dev), Some(pem))
            }
        };
        Self::build(config, attester, dev_root_pem)
    }

    /// Like [`AppState::new`], with documents from `attester` (whose
    /// [`Attester::mode`] must be `config.attestation`): for stand-ins in
    /// tests, e.g. one that hangs like a stalled NSM.
    pub fn with_attester(
        config: ServerConfig,
        attester: Arc<dyn Attester>,
    ) -> Result<Self, StartupError> {
        Self::build(config, attester, None)
    }

    fn build(
        config: ServerConfig,
        attester: Arc<dyn Attester>,
        dev_root_pem: Option<String>,
    ) -> Result<Self, StartupError> {
        debug_assert_eq!(attester.mode(), config.attestation);

        let signing_key = SigningKey::random(&mut rand_core::OsRng);
        let public_key = encode_public_key(signing_key.verifying_key());

        check_test_ca(&config)?;
        let tls = config.tls.then(TlsIdentity::generate).transpose()?;
        let runner = Runner::new(RunnerConfig {
            egress_connect: Some(config.egress_route.connector()),
            ..config.runner.clone()
        })
        .map_err(StartupError::Runner)?;
        let tasks = runner.list_tasks().map_err(StartupError::Tasks)?;
        let (tasks, refused_tasks) = check_dependencies(&config.runner.tasks_dir, tasks);
        let declared = tasks
            .iter()
            .flat_map(|t| t.secrets.iter().cloned())
            .collect();
        let secrets = SecretStore::new(config.operator_keys.clone(), declared);
        let manifest = Manifest::new(
            config.attestation,
            runner.node_version().map(str::to_owned),
            Limits::from_config(&config),
            runner.isolation(),
            runner.cgroups(),
            Access {
                tls_spki_sha256: tls.as_ref().map(TlsIdentity::spki_sha256),
                operator_keys: &config.operator_keys,
                egress: &crate::manifest::Egress {
                    route: config.egress_route.clone(),
                    limits: config.runner.egress,
                    test_ca_sha256: runner.egress_test_ca_sha256().map(str::to_owned),
                },
            },
            tasks,
        )
        .map_err(StartupError::Manifest)?;

        let body_budget = crate::budget::BodyBudget::new(config.http.max_buffered_body_bytes);
        Ok(Self {
            signing_key,
            public_key,
            attester,
            dev_root_pem,
            tls,
            secrets,
            runner,
            manifest,
            refused_tasks,
            metrics: Metrics::default(),
            attestations: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_ATTESTATIONS)),
            clock_skew: std::sync::Mutex::new(None),
            body_budget,
            clients: crate::clients::Clients::new(config.http.per_client),
            turns: crate::clients::FairQueue::new(
                config.runner.max_concurrent,
                config.runner.max_queue,
                config.http.per_client.queued_tasks,
            ),
            config,
        })
    }

    /// Tasks waiting for their turn (before the runner's own queue).
    pub fn tasks_waiting(&self) -> usize {
        self.turns.queued()
    }

    /// Tasks whose request went away while they waited for their turn.
    pub fn tasks_abandoned_waiting(&self) -> u64 {
        self.turns.abandoned()
    }

    /// A fresh attestation document for `nonce`, binding the server's key
    /// and the manifest hash. Waits briefly for a turn (at most
    /// [`MAX_CONCURRENT_ATTESTATIONS`] calls at once), gives the call
    /// [`ServerConfig::attestation_deadline`], and measures the clock skew
    /// against the new document.
    pub async fn attest(self: &Arc<Self>, nonce: Option<Vec<u8>>) -> Result<Vec<u8>, EnclaveError> {
        // A burst of callers queues here for a short while, not on the
        // blocking thread pool without bound.
        let permit = tokio::time::timeout(
            ATTESTATION_WAIT,
            Arc::clone(&self.attestations).acquire_owned(),
        )
        .await
        .map_err(|_| EnclaveError::AttestationBusy)?
        .map_err(|_| EnclaveError::AttestationBusy)?;
        let state = Arc::clone(self);
        // The NSM call is a blocking ioctl; keep it off the async workers.
        // A call past its deadline keeps its thread and its permit until the
        // driver gives up: the permits bound how many can be stuck.
        let call = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            state.attester.attest(AttestationRequest {
                public_key: state.public_key(),
                user_data: state.manifest().sha256(),
                nonce: nonce.as_deref(),
            })
        });
        let deadline = self.config.attestation_deadline;
        let document = match tokio::time::timeout(deadline, call).await {
            Err(_) => {
                self.metrics.attestation_timeouts.inc();
                tracing::warn!(
                    deadline_secs = deadline.as_secs_f64(),
                    "attestation call exceeded its deadline; answered 503"
                );
                return Err(EnclaveError::AttestationTimeout(deadline));
            }
            Ok(joined) => joined
                .map_err(|e| EnclaveError::Internal(format!("attestation worker failed: {e}")))??,
        };
        self.metrics.attestation();
        self.record_clock_skew(&document);
        Ok(document)
    }

    fn record_clock_skew(&self, document: &[u8]) {
        let now = now_ms();
        let Ok(timestamp) = attestation_dev::document_timestamp_ms(document) else {
            tracing::warn!("could not read the timestamp of a fresh attestation document");
            return;
        };
        let skew_ms = i64::try_from(i128::from(now) - i128::from(timestamp)).unwrap_or(i64::MAX);
        if skew_ms.unsigned_abs() > CLOCK_SKEW_WARN.as_millis() as u64 {
            tracing::warn!(
                skew_ms,
                "the server's clock differs from the attestation document's (the hypervisor's) by more than {} s; signed results carry the server's clock",
                CLOCK_SKEW_WARN.as_secs()
            );
        }
        self.metrics.clock_skew.set(skew_ms as f64 / 1000.0);
        let measured = ClockSkew {
            skew_ms,
            measured_at_ms: now,
        };
        *self
            .clock_skew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(measured);
    }

    /// The latest measured clock skew; `None` before the first document.
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        *self
            .clock_skew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs a message with the attested key. The key itself never leaves
    /// this struct.
    pub fn sign<T: serde::Serialize>(
        &self,
        message: IntentMessage<T>,
    ) -> Result<SignedResponse<T>, result_signing::Error> {
        message.sign(&self.signing_key)
    }

    /// Signs the compact form of a task result with the attested key.
    pub fn sign_compact(
        &self,
        message: IntentMessage<result_signing::TaskResult>,
    ) -> Result<result_signing::CompactSignedResponse, result_signing::Error> {
        result_signing::CompactSignedResponse::sign(message, &self.signing_key)
    }

    /// The attested public key: 33-byte compressed SEC1.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// How this server attests.
    pub fn attestation_mode(&self) -> AttestationMode {
        self.config.attestation
    }

    /// PEM of the dev root CA, in dev mode only.
    pub fn dev_root_pem(&self) -> Option<&str> {
        self.dev_root_pem.as_deref()
    }

    /// The TLS identity, when the server terminates TLS.
    pub fn tls(&self) -> Option<&TlsIdentity> {
        self.tls.as_ref()
    }

    /// The operator secrets.
    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// The frozen manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Why `task_path`, which is not in the manifest, is not served, as the
    /// error its request gets: refused at start (with the fix), added to the
    /// tasks directory after start (restart to serve it), or not a task.
    /// Telling the first two apart from the third shows whether
    /// `<tasks dir>/<task_path>/package.json` exists; in an enclave the
    /// tasks directory is part of the image and every task in it is in the
    /// manifest, so that tells nothing new.
    pub async fn why_not_served(&self, task_path: String) -> EnclaveError {
        if let Some(why) = self.refused_tasks.get(&task_path) {
            return EnclaveError::TaskRefused {
                task: task_path,
                why: why.clone(),
            };
        }
        // Only where the runner looks for tasks: directly under the tasks
        // directory (a package nested in a task's node_modules is not one).
        if task_path.contains('/') {
            return EnclaveError::NotInManifest(task_path);
        }
        let package = self
            .config
            .runner
            .tasks_dir
            .join(&task_path)
            .join("package.json");
        match tokio::fs::metadata(&package).await {
            Ok(meta) if meta.is_file() => EnclaveError::AddedAfterStart(task_path),
            _ => EnclaveError::NotInManifest(task_path),
        }
    }

    /// The tasks found at start but not served, with why.
    pub fn refused_tasks(&self) -> &BTreeMap<String, task_runner::DependencyError> {
        &self.refused_tasks
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

/// Splits `tasks` into those whose installed dependencies match their
/// lockfile and those refused, logging each refusal with its fix: a task
/// served without its `npm ci` would fail on every call with `Cannot find
/// module`, signed.
fn check_dependencies(
    tasks_dir: &std::path::Path,
    tasks: Vec<task_runner::TaskInfo>,
) -> (
    Vec<task_runner::TaskInfo>,
    BTreeMap<String, task_runner::DependencyError>,
) {
    let mut refused = BTreeMap::new();
    let served = tasks
        .into_iter()
        .filter(
            |task| match task_runner::check_dependencies(&tasks_dir.join(&task.task_path)) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(
                        task = %task.task_path,
                        "not serving this task: {}",
                        crate::error::refusal_text(&task.task_path, &why)
                    );
                    refused.insert(task.task_path.clone(), why);
                    false
                }
            },
        )
        .collect();
    (served, refused)
}

/// Opens the NSM, making `/dev/nsm` root-only first if the driver left it
/// open to everyone (it does: mode 0666).
fn open_nsm() -> Result<NsmAttester, StartupError> {
    let (nsm, restricted) = NsmAttester::open().map_err(|e| match e {
        AttestError::NsmExposed { .. } => StartupError::NsmExposed(e),
        e => StartupError::NsmUnavailable(e),
    })?;
    if let Some(before) = restricted {
        tracing::info!(
            "made /dev/nsm root-only (owner 0:0, mode 600; it was {}:{}, mode {:o}) so that tasks cannot use the NSM",
            before.uid,
            before.gid,
            before.mode
        );
    }
    Ok(nsm)
}

/// Milliseconds since the UNIX epoch by this server's clock.
pub(crate) fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; 0 is then honest enough.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
