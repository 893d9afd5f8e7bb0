//! The server's metrics and their OpenMetrics text 1.0.0 encoding
//! (`application/openmetrics-text`), which Prometheus (2.5 and later) asks
//! for first and scrapes as it is. `GET /metrics` is in [`crate::common`].
//!
//! Endpoint labels come from the matched route, never the raw path, so a
//! scanner probing random URLs cannot grow the label set without bound.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use task_runner::{ErrorKind, RunnerStats, TaskError, TaskResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// A task's label: its path, one of the manifest's (a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressBytesLabels {
    task: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    kind: &'static str,
}

/// The server's Prometheus registry and the metrics in it.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tasks: Family<OutcomeLabels, Counter>,
    task_duration: Histogram,
    running: Gauge,
    queued: Gauge,
    shed: Counter,
    pub(crate) attestation_timeouts: Counter,
    pub(crate) clock_skew: Gauge<f64, std::sync::atomic::AtomicU64>,
    attestations: Counter,
    accept_errors: Family<TransportLabels, Counter>,
    connections_open: Gauge,
    connections_closed: Family<ReasonLabels, Counter>,
    body_bytes_buffered: Gauge,
    body_budget_exhausted: Counter,
    abandoned: Family<StageLabels, Counter>,
    cleanup_failures: Counter,
    warm_ready: Gauge,
    task_starts: Family<StartLabels, Counter>,
    warm_discarded: Counter,
    egress_connections: Family<TaskLabels, Counter>,
    egress_bytes: Family<EgressBytesLabels, Counter>,
    egress_refused: Family<ReasonLabels, Counter>,
    /// Serializes scrapes while they copy the runner's totals into counters.
    scrape: std::sync::Mutex<()>,
}

/// One open connection in the `connections_open` gauge.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nautilus");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let tasks = Family::<OutcomeLabels, Counter>::default();
        registry.register("tasks", "Tasks by outcome", tasks.clone());
        // 10 ms .. ~164 s: covers a trivial task up to the longest timeout.
        let task_duration = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "task_duration_seconds",
            "Wall-clock time of tasks that ran",
            task_duration.clone(),
        );
        let running = Gauge::default();
        registry.register("tasks_running", "Tasks running now", running.clone());
        let queued = Gauge::default();
        registry.register("tasks_queued", "Tasks waiting for a slot", queued.clone());
        let shed = Counter::default();
        registry.register(
            "tasks_shed",
            "Tasks refused because the queue was full",
            shed.clone(),
        );
        let attestation_timeouts = Counter::default();
        registry.register(
            "attestation_timeouts",
            "Attestation calls that exceeded their deadline (answered 503)",
            attestation_timeouts.clone(),
        );
        let clock_skew = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "clock_skew_seconds",
            "Server clock minus the timestamp of the latest fresh attestation document",
            clock_skew.clone(),
        );
        let attestations = Counter::default();
        registry.register(
            "attestations",
            "Attestation documents produced",
            attestations.clone(),
        );
        let accept_errors = Family::<TransportLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts by transport (e.g. out of file descriptors)",
            accept_errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections being served",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server closed: idle (no request within the idle timeout), \
             write_timeout (the client read nothing), close_timeout (still busy after being asked to close), \
             tls_handshake (the TLS handshake failed)",
            connections_closed.clone(),
        );
        let body_bytes_buffered = Gauge::default();
        registry.register(
            "body_bytes_buffered",
            "Request-body bytes held by requests in progress",
            body_bytes_buffered.clone(),
        );
        let body_budget_exhausted = Counter::default();
        registry.register(
            "body_budget_exhausted",
            "Requests refused with 503 because the request-body budget was used up",
            body_budget_exhausted.clone(),
        );
        let abandoned = Family::<StageLabels, Counter>::default();
        registry.register(
            "tasks_abandoned",
            "Runs stopped because their request went away (connection closed, stream reset), \
             by stage: queued (never ran) or running (killed)",
            abandoned.clone(),
        );
        let cleanup_failures = Counter::default();
        registry.register(
            "task_cleanup_failures",
            "Run directories or leftovers of earlier runs the task runner could not remove (each logged)",
            cleanup_failures.clone(),
        );
        let warm_ready = Gauge::default();
        registry.register(
            "warm_boxes_ready",
            "Warm boxes (node started in a slot's box) waiting for a task",
            warm_ready.clone(),
        );
        let task_starts = Family::<StartLabels, Counter>::default();
        registry.register(
            "task_starts",
            "Runs by how node started: warm (handed to a warm box) or cold (started for the run)",
            task_starts.clone(),
        );
        let warm_discarded = Counter::default();
        registry.register(
            "warm_boxes_discarded",
            "Warm boxes found dead or stopped before use (the run then started cold)",
            warm_discarded.clone(),
        );
        let egress_connections = Family::<TaskLabels, Counter>::default();
        registry.register(
            "egress_connections",
            "Egress connections tasks made to declared destinations, by task",
            egress_connections.clone(),
        );
        let egress_bytes = Family::<EgressBytesLabels, Counter>::default();
        registry.register(
            "egress_bytes",
            "Egress bytes by task and direction (out: sent by the task)",
            egress_bytes.clone(),
        );
        let egress_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "egress_refused",
            "Egress connections refused or cut by the runner, by reason (connections: too many open; bytes: a byte cap; connect: the connection out failed)",
            egress_refused.clone(),
        );
        Self {
            registry,
            warm_ready,
            task_starts,
            warm_discarded,
            attestation_timeouts,
            clock_skew,
            requests,
            tasks,
            task_duration,
            running,
            queued,
            shed,
            attestations,
            accept_errors,
            connections_open,
            connections_closed,
            body_bytes_buffered,
            body_budget_exhausted,
            abandoned,
            cleanup_failures,
            egress_connections,
            egress_bytes,
            egress_refused,
            scrape: std::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Counts a task refused because every place in the queue was taken.
    pub fn task_shed(&self) {
        self.shed.inc();
        self.tasks
            .get_or_create(&OutcomeLabels { outcome: "shed" })
            .inc();
    }

    /// Counts a task outcome and, when it ran, its duration.
    pub fn record_task(&self, outcome: &Result<TaskResult, TaskError>) {
        match outcome {
            Ok(r) => self.record_egress(r),
            Err(TaskError::Timeout { partial, .. }) => self.record_egress(partial),
            Err(_) => {}
        }
        let label = match outcome {
            Ok(r) => {
                self.task_duration
                    .observe(r.execution_time_ms as f64 / 1000.0);
                if r.status == "success" {
                    "success"
                } else {
                    "failed"
                }
            }
            Err(e) => match e.kind() {
                ErrorKind::Timeout => "timeout",
                ErrorKind::Busy => {
                    self.shed.inc();
                    "shed"
                }
                ErrorKind::InvalidRequest | ErrorKind::NotFound => "rejected",
                ErrorKind::NodeMissing | ErrorKind::ShuttingDown | ErrorKind::SecretMissing => {
                    "unavailable"
                }
                ErrorKind::InvalidTask | ErrorKind::Internal => "error",
            },
        };
        self.tasks
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
    }
}

impl Metrics {
    /// Counts what a run's egress carried.
    fn record_egress(&self, r: &TaskResult) {
        for e in &r.egress {
            self.egress_connections
                .get_or_create(&TaskLabels {
                    task: r.task_path.clone(),
                })
                .inc_by(e.connections);
            for (direction, bytes) in [("out", e.bytes_out), ("in", e.bytes_in)] {
                self.egress_bytes
                    .get_or_create(&EgressBytesLabels {
                        task: r.task_path.clone(),
                        direction,
                    })
                    .inc_by(bytes);
            }
        }
    }

    /// Counts an attestation document handed out.
    pub fn attestation(&self) {
        self.attestations.inc();
    }

    /// Counts a failed accept on `transport`.
    pub fn accept_error(&self, transport: &'static str) {
        self.accept_errors
            .get_or_create(&TransportLabels { transport })
            .inc();
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// Counts a connection the server closed, and why.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a request refused because the body budget was used up.
    pub fn body_budget_exhausted(&self) {
        self.body_budget_exhausted.inc();
    }
}

/// Brings `counter` up to `total`, a count the runner keeps (it never
/// goes down, so neither does the counter).
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

impl Metrics {
    /// Counts a request by its matched route (`unmatched` for none) and final status.
    pub fn request(&self, endpoint: String, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Brings the gauges and counters the runner keeps up to `stats`, with
    /// `body_bytes_buffered` request-body bytes held, and encodes them all.
    pub fn scrape(
        &self,
        stats: &RunnerStats,
        body_bytes_buffered: usize,
    ) -> Result<String, std::fmt::Error> {
        let m = self;
        m.running
            .set(i64::try_from(stats.running).unwrap_or(i64::MAX));
        m.queued
            .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        m.warm_ready
            .set(i64::try_from(stats.warm_ready).unwrap_or(i64::MAX));
        m.body_bytes_buffered
            .set(i64::try_from(body_bytes_buffered).unwrap_or(i64::MAX));
        {
            // The runner keeps the totals; bring the counters up to them.
            let _one_at_a_time = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
            for (stage, total) in [
                ("queued", stats.abandoned_queued),
                ("running", stats.abandoned_running),
            ] {
                catch_up(&m.abandoned.get_or_create(&StageLabels { stage }), total);
            }
            catch_up(&m.cleanup_failures, stats.cleanup_failures);
            for (kind, total) in [("warm", stats.warm_runs), ("cold", stats.cold_runs)] {
                catch_up(&m.task_starts.get_or_create(&StartLabels { kind }), total);
            }
            catch_up(&m.warm_discarded, stats.warm_discarded);
            for (reason, total) in [
                ("connections", stats.egress_refused_connections),
                ("bytes", stats.egress_refused_bytes),
                ("connect", stats.egress_connect_failed),
            ] {
                catch_up(
                    &m.egress_refused.get_or_create(&ReasonLabels { reason }),
                    total,
                );
            }
        }
        let mut body = String::new();
        encode(&mut body, &m.registry)?;
        Ok(body)
    }
}
