//! `nautilus-server`: flags → [`ServerConfig`], then serve until SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use clap::Parser;
use nautilus_server::config::{
    AttestationLimits, AttestationMode, ClientShares, HttpLimits, ServerConfig,
};
use nautilus_server::egress::EgressRoute;
use nautilus_server::log_flood::{self, FloodFilter};
use nautilus_server::state::AppState;
use nautilus_server::transport::{Bound, Listen};
use task_runner::{EgressLimits, RunnerConfig};
use tokio::sync::watch;

/// Every heap block is zeroed when freed, so operator secrets leave no copy
/// behind in buffers this code does not own: the TLS and HTTP layers'
/// (rustls, hyper), serde's, std's `Command`'s. The store and the run's
/// environment zero their own copies too (`zeroize`), for library users
/// without this allocator. Reallocation moves and zeroes the old block.
/// Tested by `tests/secret_memory.rs`; what it cannot reach is in
/// docs/trust-model.md ("Operator secrets").
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

#[derive(Debug, Parser)]
#[command(version, about = "Attested Node.js task server for AWS Nitro Enclaves")]
struct Args {
    /// `tcp://HOST:PORT` or `vsock://PORT` [default: vsock://3000 with
    /// `--attestation nsm` (an enclave has no network but vsock),
    /// tcp://127.0.0.1:3000 with `--attestation dev`]
    #[arg(long, env = "NAUTILUS_LISTEN")]
    listen: Option<Listen>,
    /// Directory whose subdirectories are the tasks.
    #[arg(long, env = "NAUTILUS_TASKS_DIR", default_value = ".")]
    tasks_dir: PathBuf,
    /// `nsm` inside an enclave; `dev` for a local server with a throwaway CA.
    #[arg(long, env = "NAUTILUS_ATTESTATION", default_value_t = AttestationMode::Nsm)]
    attestation: AttestationMode,
    /// In dev mode, write the dev root CA certificate (PEM) here for clients
    /// [default: not written]
    #[arg(long, env = "NAUTILUS_DEV_ROOT_OUT")]
    dev_root_out: Option<PathBuf>,
    /// Node.js binary [default: `node` on PATH]
    #[arg(long, env = "NAUTILUS_NODE")]
    node: Option<PathBuf>,
    /// Tasks running at once [default: the number of CPUs]
    #[arg(long, env = "NAUTILUS_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Tasks waiting for a slot before new ones are refused with 503.
    #[arg(long, env = "NAUTILUS_MAX_QUEUE", default_value_t = RunnerConfig::default().max_queue)]
    max_queue: usize,
    /// Largest `timeout_secs` a request may ask for (a request without one
    /// gets 30 s, or this if lower).
    #[arg(long, env = "NAUTILUS_MAX_TIMEOUT_SECS", default_value_t = RunnerConfig::default().max_timeout_secs)]
    max_timeout_secs: u64,
    /// Bytes kept of each of stdout and stderr.
    #[arg(long, env = "NAUTILUS_MAX_OUTPUT_BYTES", default_value_t = RunnerConfig::default().max_output_bytes)]
    max_output_bytes: usize,
    /// Memory a task may use (bytes).
    #[arg(long, env = "NAUTILUS_MEMORY_LIMIT_BYTES", default_value_t = RunnerConfig::default().memory_limit_bytes)]
    memory_limit_bytes: u64,
    /// Slots that keep a warm box: `node` started before a request arrives,
    /// waiting for its one task (root mode); 0 turns the pool off
    /// [default: every slot]
    #[arg(long, env = "NAUTILUS_WARM_POOL")]
    warm_pool: Option<usize>,
    /// Largest request body (bytes); larger ones get 413.
    #[arg(long, env = "NAUTILUS_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Request-body bytes all requests together may hold; past it: 503.
    #[arg(long, env = "NAUTILUS_MAX_BUFFERED_BODY_BYTES", default_value_t = HttpLimits::default().max_buffered_body_bytes)]
    max_buffered_body_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, env = "NAUTILUS_MAX_CONNECTIONS", default_value_t = HttpLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a connection may go without a request in progress (from accept
    /// or its last response until the next request's headers are complete).
    #[arg(long, env = "NAUTILUS_IDLE_TIMEOUT_SECS", default_value_t = HttpLimits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Seconds a request body may take in total; later: 408.
    #[arg(long, env = "NAUTILUS_BODY_TIMEOUT_SECS", default_value_t = HttpLimits::default().body_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
    /// Seconds a write to a client that reads nothing may stall before the
    /// connection is closed.
    #[arg(long, env = "NAUTILUS_WRITE_TIMEOUT_SECS", default_value_t = HttpLimits::default().write_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    write_timeout_secs: u64,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, env = "NAUTILUS_HTTP2_MAX_STREAMS", default_value_t = HttpLimits::default().http2_max_streams, value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_streams: u32,
    /// Seconds of HTTP/2 silence before a ping, and for its answer.
    #[arg(long, env = "NAUTILUS_HTTP2_KEEPALIVE_SECS", default_value_t = HttpLimits::default().http2_keepalive.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    http2_keepalive_secs: u64,
    /// Expect a PROXY protocol v2 header (from `nautilus-proxy
    /// --proxy-protocol true`) first on every connection and take the
    /// client's address from it [default: true with `--attestation nsm`,
    /// where every connection comes from the parent's proxy; false with
    /// `dev`]. Never turn it on where clients reach the server directly:
    /// they could claim any address.
    #[arg(long, env = "NAUTILUS_PROXY_PROTOCOL", action = clap::ArgAction::Set)]
    proxy_protocol: Option<bool>,
    /// Connections one client address may have open; more are closed.
    #[arg(long, env = "NAUTILUS_MAX_CONNECTIONS_PER_CLIENT", default_value_t = ClientShares::default().connections, value_parser = positive)]
    max_connections_per_client: usize,
    /// Requests one client address may have in flight; more get 429.
    #[arg(long, env = "NAUTILUS_MAX_REQUESTS_PER_CLIENT", default_value_t = ClientShares::default().requests, value_parser = positive)]
    max_requests_per_client: usize,
    /// Tasks one client address may have waiting for a turn; more get 429.
    #[arg(long, env = "NAUTILUS_MAX_QUEUED_TASKS_PER_CLIENT", default_value_t = ClientShares::default().queued_tasks, value_parser = positive)]
    max_queued_tasks_per_client: usize,
    /// After 2 s, a request body must arrive at this many bytes a second on
    /// average; slower: 408.
    #[arg(long, env = "NAUTILUS_MIN_BODY_BYTES_PER_SEC", default_value_t = HttpLimits::default().min_body_bytes_per_sec, value_parser = clap::value_parser!(u64).range(1..))]
    min_body_bytes_per_sec: u64,
    /// Browser origins allowed by CORS, comma-separated [default: none]
    #[arg(long, env = "NAUTILUS_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<HeaderValue>,
    /// Where each run's code is staged: an exec-capable file system, as root
    /// not inside /tmp or another directory others can write (default: as
    /// root /var/lib/nautilus-task-runner, else the temp directory).
    #[arg(long, env = "NAUTILUS_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Names of server environment variables tasks may see, comma-separated
    /// [default: none]
    #[arg(long, env = "NAUTILUS_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// Seconds an attestation call may take before its request gets 503 with
    /// `Retry-After` (the NSM driver itself would wait 120 s).
    #[arg(long, env = "NAUTILUS_ATTESTATION_DEADLINE_SECS", default_value_t = 10)]
    attestation_deadline_secs: u64,
    /// NSM calls a second, all clients together (a burst of twice as many);
    /// past it `/get_attestation` gets 503 with `Retry-After`.
    #[arg(long, env = "NAUTILUS_ATTESTATIONS_PER_SEC", default_value_t = AttestationLimits::default().per_sec, value_parser = clap::value_parser!(u32).range(1..))]
    attestations_per_sec: u32,
    /// NSM calls a second of one client address (a burst of twice as many);
    /// past it `/get_attestation` gets 429 with `Retry-After`.
    #[arg(long, env = "NAUTILUS_ATTESTATIONS_PER_CLIENT_PER_SEC", default_value_t = AttestationLimits::default().per_client_per_sec, value_parser = clap::value_parser!(u32).range(1..))]
    attestations_per_client_per_sec: u32,
    /// Seconds one document without a nonce is shared by every request
    /// without a nonce (0: each gets its own, within the rates above).
    #[arg(long, env = "NAUTILUS_ATTESTATION_SHARED_SECS", default_value_t = AttestationLimits::default().shared_for.as_secs())]
    attestation_shared_secs: u64,
    /// On SIGTERM, seconds running tasks get before they are stopped.
    #[arg(long, env = "NAUTILUS_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Terminate TLS here, with a key made at start and pinned through the
    /// attested manifest (`tls_spki_sha256`), so the parent instance relays
    /// only ciphertext [default: on with `--attestation nsm`, off with `dev`].
    #[arg(long, env = "NAUTILUS_TLS", value_enum)]
    tls: Option<OnOff>,
    /// Public key (hex SEC1 P-256, from `nautilus-client secrets keygen`) of
    /// an operator who may set secrets; repeatable. Pin it in the image
    /// (run.sh), so it is measured and listed in the attested manifest
    /// [default: none].
    #[arg(long = "operator-key", env = "NAUTILUS_OPERATOR_KEYS", value_delimiter = ',', value_parser = parse_operator_key)]
    operator_keys: Vec<result_signing::VerifyingKey>,
    /// Log as JSON lines instead of text (the variable takes 1/0, true/false,
    /// yes/no, on/off).
    #[arg(long, env = "NAUTILUS_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
    /// Where tasks' declared egress goes: `direct`, or an HTTP CONNECT
    /// proxy `tcp://HOST:PORT` | `vsock://CID:PORT` (`nautilus-proxy
    /// --egress-listen`) [default: vsock://3:3128 (the parent) with
    /// `--attestation nsm`, direct with `--attestation dev`]
    #[arg(long, env = "NAUTILUS_EGRESS_VIA")]
    egress_via: Option<EgressRoute>,
    /// Egress connections a task may have open at once.
    #[arg(long, env = "NAUTILUS_EGRESS_MAX_CONNECTIONS", default_value_t = EgressLimits::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    egress_max_connections: usize,
    /// Bytes a task may send over all its egress connections.
    #[arg(long, env = "NAUTILUS_EGRESS_MAX_BYTES_OUT", default_value_t = EgressLimits::default().max_bytes_out,
          value_parser = clap::value_parser!(u64).range(1..))]
    egress_max_bytes_out: u64,
    /// Bytes a task may receive over all its egress connections.
    #[arg(long, env = "NAUTILUS_EGRESS_MAX_BYTES_IN", default_value_t = EgressLimits::default().max_bytes_in,
          value_parser = clap::value_parser!(u64).range(1..))]
    egress_max_bytes_in: u64,
    /// Seconds to open an egress connection.
    #[arg(long, env = "NAUTILUS_EGRESS_CONNECT_TIMEOUT_SECS", default_value_t = EgressLimits::default().connect_timeout_secs,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    egress_connect_timeout_secs: u64,
    /// For tests only (refused with `--attestation nsm`, shown in /manifest):
    /// a PEM file of CA certificates tasks trust besides Node's own store
    /// [default: none].
    #[arg(long, env = "NAUTILUS_EGRESS_TEST_CA")]
    egress_test_ca: Option<PathBuf>,
}

fn parse_operator_key(hex_key: &str) -> Result<result_signing::VerifyingKey, String> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|bytes| result_signing::decode_public_key(&bytes))
        .ok_or_else(|| format!("{hex_key:?} is not a hex SEC1 P-256 public key"))
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl Args {
    /// `--tls`, else what fits the attestation mode.
    fn tls(&self) -> bool {
        match self.tls {
            Some(mode) => mode == OnOff::On,
            None => self.attestation == AttestationMode::Nsm,
        }
    }

    /// Where to listen: `--listen`, else what fits the attestation mode.
    fn listen(&self) -> Listen {
        self.listen.unwrap_or(match self.attestation {
            AttestationMode::Nsm => Listen::Vsock {
                port: DEFAULT_VSOCK_PORT,
            },
            AttestationMode::Dev => Listen::Tcp(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_TCP_PORT,
            ))),
        })
    }

    fn server_config(&self) -> ServerConfig {
        let d = RunnerConfig::default();
        let max_timeout_secs = self.max_timeout_secs;
        ServerConfig {
            attestation: self.attestation,
            runner: RunnerConfig {
                tasks_dir: self.tasks_dir.clone(),
                node: self.node.clone(),
                max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent),
                max_queue: self.max_queue,
                max_timeout_secs,
                // A lowered maximum lowers the default with it.
                default_timeout_secs: d.default_timeout_secs.min(max_timeout_secs),
                max_output_bytes: self.max_output_bytes,
                memory_limit_bytes: self.memory_limit_bytes,
                pass_env: self.pass_env.clone(),
                work_dir: self.work_dir.clone(),
                warm_pool: self.warm_pool,
                egress: EgressLimits {
                    max_connections: self.egress_max_connections,
                    max_bytes_out: self.egress_max_bytes_out,
                    max_bytes_in: self.egress_max_bytes_in,
                    connect_timeout_secs: self.egress_connect_timeout_secs,
                },
                egress_test_ca: self.egress_test_ca.clone(),
                ..d
            },
            egress_route: self.egress_via.clone().unwrap_or(match self.attestation {
                AttestationMode::Nsm => EgressRoute::parent(),
                AttestationMode::Dev => EgressRoute::Direct,
            }),
            max_body_bytes: self.max_body_bytes,
            cors_origins: self.cors_origins.clone(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            attestation_deadline: Duration::from_secs(self.attestation_deadline_secs.max(1)),
            attestation_limits: AttestationLimits::new(
                self.attestations_per_sec,
                self.attestations_per_client_per_sec,
                Duration::from_secs(self.attestation_shared_secs),
            ),
            http: HttpLimits {
                max_connections: self.max_connections,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                body_timeout: Duration::from_secs(self.body_timeout_secs),
                write_timeout: Duration::from_secs(self.write_timeout_secs),
                max_buffered_body_bytes: self.max_buffered_body_bytes,
                http2_max_streams: self.http2_max_streams,
                http2_keepalive: Duration::from_secs(self.http2_keepalive_secs),
                proxy_protocol: self
                    .proxy_protocol
                    .unwrap_or(self.attestation == AttestationMode::Nsm),
                per_client: ClientShares {
                    connections: self.max_connections_per_client,
                    requests: self.max_requests_per_client,
                    queued_tasks: self.max_queued_tasks_per_client,
                },
                min_body_bytes_per_sec: self.min_body_bytes_per_sec,
            },
            tls: self.tls(),
            operator_keys: self.operator_keys.clone(),
        }
    }
}

/// A share of 0 would refuse everything.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

/// The port of the default listen address in either mode.
const DEFAULT_VSOCK_PORT: u32 = 3000;
const DEFAULT_TCP_PORT: u16 = 3000;

/// After the grace period, how long stopped tasks and open connections get
/// before the process exits anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The exit status of a server that refused to start (`EX_CONFIG`): bad
/// arguments, tasks, or an address it cannot listen on. `run.sh` does not
/// restart a server that exits with it (the same image would fail the same
/// way) and says so on the enclave's status channel.
const EXIT_REFUSED_TO_START: u8 = 78;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_REFUSED_TO_START)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Flushes what is queued when main returns.
    let (writer, _flush) = log_writer();
    let dropped = writer.error_counter();
    let flood = FloodFilter::default();
    init_logging(args.log_json, writer, flood.clone());
    std::thread::Builder::new()
        .name("log-report".into())
        .spawn(move || report_log_losses(&flood, &dropped))
        .ok();
    let ready = std::sync::atomic::AtomicBool::new(false);
    // One line that says what to do: `{:#}` joins the causes, and no
    // backtrace (the release binary's symbols are stripped anyway).
    match serve(args, &ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if !ready.load(std::sync::atomic::Ordering::SeqCst) => {
            tracing::error!("refusing to start: {err:#}");
            ExitCode::from(EXIT_REFUSED_TO_START)
        }
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(args: Args, ready: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    // Before the key exists: no core dumps, no ptrace or /proc/<pid>/mem
    // access by other processes, tasks included.
    nautilus_server::state::harden_process().context("could not mark the process non-dumpable")?;
    // Before anything slow: a SIGTERM during start-up is a normal stop too.
    let mut signals = Signals::install()?;

    let config = args.server_config();
    let descriptors = nautilus_server::state::raise_descriptor_limit();
    // Every task gets RLIMIT_NOFILE max_open_files; under a lower hard limit
    // setting it fails in every task (a misleading "dropping privileges"
    // error per run). Said once, here.
    if let Ok(limit) = descriptors {
        let per_task = config.runner.max_open_files;
        anyhow::ensure!(
            limit >= per_task,
            "the hard descriptor limit is {limit}, below the {per_task} open files every task gets: \
             raise it to at least {per_task} (ulimit -Hn, systemd LimitNOFILE=, docker run --ulimit nofile=)"
        );
    }
    match descriptors {
        // Each connection is a descriptor; tasks, logs and the listener need some too.
        Ok(limit) if limit < config.http.max_connections as u64 + 64 => tracing::warn!(
            limit,
            max_connections = config.http.max_connections,
            "the descriptor limit is below --max-connections: accepts will fail (and be counted) before the cap is reached"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the descriptor limit"),
    }
    let grace = config.shutdown_grace;
    let state = Arc::new(AppState::new(config)?);

    let listen = args.listen();
    let bound = Bound::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another program (another nautilus-server?) holds it: stop that one, or pick \
             another address with --listen (NAUTILUS_LISTEN; `make run LISTEN=tcp://127.0.0.1:3001`)"
        } else {
            ""
        };
        anyhow::anyhow!("could not listen on {listen}: {e}{hint}")
    })?;
    // Only once the address is ours: a second server that fails to bind must
    // not replace the root of the one already serving.
    if let Some(path) = &args.dev_root_out {
        let pem = state
            .dev_root_pem()
            .context("--dev-root-out only makes sense with --attestation dev")?;
        write_file(path, pem)
            .with_context(|| format!("writing the dev root to {}", path.display()))?;
    }

    let local = bound.local_addr()?;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    announce(&state, &local, args.dev_root_out.as_deref());
    // On this thread, which lives as long as the server: the boxes die with it.
    state.runner().start_warm_pool();
    tokio::spawn(first_attestation(Arc::clone(&state)));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stopping = async move {
        // An error means the sender is gone: stop too.
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let serve = tokio::spawn(bound.serve(Arc::clone(&state), stopping));

    signals.next().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, finishing running tasks"
    );
    let _ = stop_tx.send(true);
    // Tasks still running after the grace period are stopped; their requests
    // then complete and the connections drain.
    let drain = async {
        state.runner().shutdown(grace).await;
        let _ = serve.await;
    };
    tokio::select! {
        () = drain => tracing::info!("stopped"),
        () = signals.next() => tracing::warn!("second signal: exiting without waiting"),
        () = tokio::time::sleep(grace + DRAIN_DEADLINE) => {
            tracing::warn!("tasks or connections still open {DRAIN_DEADLINE:?} after the grace period; exiting")
        }
    }
    Ok(())
}

/// Asks for one document at start: a broken NSM shows in the log at once,
/// not at the first client, and the clock skew is known from the start.
async fn first_attestation(state: Arc<AppState>) {
    match state
        .attestation_for(nautilus_server::clients::ClientKey::UNKNOWN, None)
        .await
    {
        Ok(_) => tracing::info!(
            clock_skew_ms = state.clock_skew().map(|s| s.skew_ms),
            "attestation works"
        ),
        Err(e) => tracing::error!(
            "the first attestation request failed: {e}; /get_attestation will fail the same way"
        ),
    }
}

/// SIGTERM and SIGINT, installed once so none is missed between stages.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Log lines queued for stderr before new ones are dropped and counted.
const LOG_QUEUE_LINES: usize = 4096;

/// stderr behind a bounded queue and a thread of its own: a slow reader (in
/// the enclave the console is a serial port) costs dropped lines, counted,
/// never a blocked worker (it took throughput from 1609 to 57 requests/s).
fn log_writer() -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr())
}

/// Every window (10 s), one line per call site for the events not written
/// meanwhile (past each call site's share), and one for the log lines
/// dropped because stderr was read too slowly.
fn report_log_losses(flood: &FloodFilter, counter: &tracing_appender::non_blocking::ErrorCounter) {
    let mut reported = 0;
    loop {
        std::thread::sleep(log_flood::WINDOW);
        flood.report(log_flood::WINDOW);
        let dropped = counter.dropped_lines();
        if dropped > reported {
            tracing::warn!(
                dropped = dropped - reported,
                "log lines dropped: stderr is read too slowly"
            );
            reported = dropped;
        }
    }
}

fn init_logging(
    json: bool,
    writer: tracing_appender::non_blocking::NonBlocking,
    flood: FloodFilter,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // Colours only for a person at a terminal, never into a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    // The level filter for everything; the flood filter only on what is
    // written, per call site.
    let output = if json {
        output.json().with_filter(flood).boxed()
    } else {
        output.with_filter(flood).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
}

fn write_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents)
}

/// The tasks served, by name, for the start-up line (`tasks=nodejs-task,ms-task`).
fn task_names(state: &AppState) -> String {
    let names: Vec<&str> = state.manifest().task_paths().collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

/// How to run the client: the binary built beside this one (`make run` builds
/// both into target/release), else through cargo in the same profile.
fn client_command() -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("nautilus-client")))
        .filter(|client| client.is_file());
    match beside {
        Some(client) => match std::env::current_dir() {
            Ok(cwd) => client
                .strip_prefix(&cwd)
                .unwrap_or(&client)
                .display()
                .to_string(),
            Err(_) => client.display().to_string(),
        },
        None => "cargo run -q --release --bin nautilus-client --".to_owned(),
    }
}

fn announce(state: &AppState, local: &Listen, dev_root: Option<&std::path::Path>) {
    tracing::info!(
        listen = %local,
        attestation = state.attestation_mode().as_str(),
        public_key = %hex::encode(state.public_key()),
        tls_spki_sha256 = state.tls().map(|t| hex::encode(t.spki_sha256())),
        node_version = state.runner().node_version().unwrap_or("NOT FOUND"),
        tasks = %task_names(state),
        "nautilus-server ready"
    );
    if let Listen::Tcp(addr) = local {
        // curl cannot pin the key; -k is honest about that (the client pins).
        let (base, curl) = match state.tls() {
            Some(_) => (format!("https://{addr}"), "curl -k"),
            None => (format!("http://{addr}"), "curl"),
        };
        let mut help = format!(
            "\nnautilus-server is listening on {base}\n  {curl} {base}/health_check\n  \
             {curl} -X POST {base}/process_data -H \"Content-Type: application/json\" -d '{{\"payload\": {{}}}}'\n"
        );
        if let Some(root) = dev_root {
            help.push_str(&format!(
                "  {} run --url {base} --root {} --allow-debug -- 1 2 3\n",
                client_command(),
                root.display()
            ));
        }
        // A daemon whose stderr is closed must still serve.
        let _ = writeln!(std::io::stderr(), "{help}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(args: &[&str]) -> Listen {
        let args = Args::try_parse_from([&["nautilus-server"], args].concat()).expect("parses");
        args.listen()
    }

    #[test]
    fn the_default_listen_address_follows_the_attestation_mode() {
        if std::env::var_os("NAUTILUS_LISTEN").is_some() {
            skip_report::skipped(
                "the_default_listen_address_follows_the_attestation_mode",
                "NAUTILUS_LISTEN is set",
            );
            return;
        }
        assert_eq!(listen(&[]), Listen::Vsock { port: 3000 });
        assert_eq!(
            listen(&["--attestation", "nsm"]),
            Listen::Vsock { port: 3000 }
        );
        assert_eq!(
            listen(&["--attestation", "dev"]),
            "tcp://127.0.0.1:3000".parse().expect("address")
        );
        assert_eq!(
            listen(&["--attestation", "nsm", "--listen", "tcp://127.0.0.1:8080"]),
            "tcp://127.0.0.1:8080".parse().expect("address")
        );
    }

    #[test]
    fn tls_defaults_to_on_in_an_enclave_and_off_in_dev() {
        if std::env::var_os("NAUTILUS_TLS").is_some() {
            skip_report::skipped(
                "tls_defaults_to_on_in_an_enclave_and_off_in_dev",
                "NAUTILUS_TLS is set",
            );
            return;
        }
        let tls = |args: &[&str]| {
            Args::try_parse_from([&["nautilus-server"], args].concat())
                .expect("parses")
                .tls()
        };
        assert!(tls(&["--attestation", "nsm"]));
        assert!(!tls(&["--attestation", "dev"]));
        assert!(tls(&["--attestation", "dev", "--tls", "on"]));
        assert!(!tls(&["--attestation", "nsm", "--tls", "off"]));
        assert!(Args::try_parse_from(["nautilus-server", "--tls", "maybe"]).is_err());
    }
}
