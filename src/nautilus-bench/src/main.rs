//! `nautilus-bench` (`make bench`): the server end to end against bare Node.js,
//! measured side by side in one run.
//!
//! This machine is shared and noisy, so absolute times alone mean little: every
//! server figure is printed as a ratio to the bare `node index.js` spawn of the
//! same task measured in the same run, with the clean environment the runner
//! gives tasks (`env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp`; an
//! ordinary shell's environment can add tens of milliseconds to every Node
//! start, e.g. `NODE_EXTRA_CA_CERTS`).
//!
//! What it runs, against the release `nautilus-server` binary started as a
//! separate process in dev mode on loopback:
//! 1. the baseline: `node index.js` of each task, sequential and 2 at a time;
//! 2. `POST /process_data` latency (p50/p90/p99) and throughput at each
//!    concurrency (`--concurrency`, default 1,2,8,32) for a trivial task and a
//!    CPU-bound one (about 50 ms of work here), for each server configuration
//!    (with and without the warm pool when the server has `--warm-pool`), and
//!    one "paced" client sending a trivial task every 250 ms (the latency of
//!    one request when a warm box had time to start);
//! 3. the server's RSS idle and under load, its child processes separately;
//! 4. the cost per call of signing a result, of `GET /get_attestation`, and of
//!    a client's full verification of a document and a result.
//!
//! It prints a Markdown report and writes the same figures as JSON (`--json`).
//! Timings live here, never in pass/fail tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use attestation_verify::{AttestationDocument, Policy, TrustedRoot};
use clap::Parser;
use nautilus_client::result::{verify_result, Expected, DEFAULT_CLOCK_SKEW};
use result_signing::{IntentMessage, SignedResponse, SigningKey, TaskResult, INTENT_TASK_RESULT};
use serde_json::{json, Value};

/// The environment the runner gives tasks, for the baseline.
const TASK_PATH_ENV: &str = "/usr/local/bin:/usr/bin:/bin";

const TRIVIAL_JS: &str = "console.log('ok');\n";
/// About 50 ms of single-core work on a 2-core cloud VM.
const CPU_JS: &str =
    "let x = 0;\nfor (let i = 0; i < 4000000; i++) x = (x * 31 + i) % 1000003;\nconsole.log(x);\n";

#[derive(Debug, Parser)]
#[command(about = "Benchmark the server against bare Node.js spawns, side by side")]
struct Args {
    /// The server binary to measure (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/nautilus-server")]
    server: PathBuf,
    /// Node.js binary; default: `node` on PATH.
    #[arg(long)]
    node: Option<PathBuf>,
    /// Requests per measured point (at least 4 per concurrent client are sent).
    #[arg(long, default_value_t = 60)]
    requests: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,8,32")]
    concurrency: Vec<usize>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "out/bench.json")]
    json: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.server.is_file(),
        "{} not found: build it first with `cargo build --release --bin nautilus-server` (or run `make bench`)",
        args.server.display()
    );
    ensure!(
        args.requests > 0 && !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--requests and every --concurrency must be at least 1"
    );
    let node = match &args.node {
        Some(n) => n.clone(),
        None => which("node").context("node not found on PATH; pass --node")?,
    };
    let tasks = Tasks::create()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = Report::default();
    eprintln!(
        "nautilus-bench: {cpus} CPUs, {} requests per point; this takes a few minutes",
        args.requests
    );

    // 1. The baseline.
    let n = args.requests.max(20);
    for task in TASKS {
        let dir = tasks.dir(task);
        let seq = bare_spawns(&node, &dir, n, 1)?;
        let par = bare_spawns(&node, &dir, n, 2)?;
        report.baseline(task, seq, par);
    }

    // 2.–4. Each server configuration.
    let pool = server_has_flag(&args.server, "--warm-pool")?;
    let configs: Vec<(&str, Vec<String>)> = if pool {
        vec![
            ("cold", vec!["--warm-pool".into(), "0".into()]),
            ("pool", vec![]),
        ]
    } else {
        vec![("cold", vec![])]
    };
    for (mode, extra) in &configs {
        let server = Server::start(&args.server, &node, &tasks.root, extra)?;
        let http = reqwest::Client::new();
        // Node's own caches and the server's first connections.
        for task in TASKS {
            load(&http, &server, task, 2, 4, Duration::ZERO).await?;
        }
        let idle_rss = rss_kib(server.pid()).unwrap_or(0);
        let idle_children = children_rss_kib(server.pid());
        report.rss_idle(mode, idle_rss, idle_children);
        for task in TASKS {
            for &c in &args.concurrency {
                eprintln!("  {mode}: {task} at concurrency {c}");
                let total = args.requests.max(4 * c);
                let sampler = RssSampler::start(server.pid());
                let point = load(&http, &server, task, c, total, Duration::ZERO).await?;
                let (peak, peak_children) = sampler.stop();
                report.point(mode, task, c, point, peak, peak_children);
            }
        }
        // One client that leaves the server time between requests, as most
        // do: what a single request costs when a warm box is ready.
        eprintln!("  {mode}: trivial, one request every {PACED:?}");
        let sampler = RssSampler::start(server.pid());
        let point = load(&http, &server, "trivial", 1, 20, PACED).await?;
        let (peak, peak_children) = sampler.stop();
        let paced = format!("{mode}, paced");
        report.point(&paced, "trivial", 1, point, peak, peak_children);
        if *mode == "cold" {
            report.costs(per_call_costs(&http, &server).await?);
        }
        server.stop()?;
    }

    print!("{}", report.markdown(cpus));
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report.json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

const TASKS: [&str; 2] = ["trivial", "cpu"];
/// The pause of the paced client.
const PACED: Duration = Duration::from_millis(250);

/// A throwaway tasks directory with the two benchmark tasks.
struct Tasks {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

impl Tasks {
    fn create() -> anyhow::Result<Self> {
        // tempfile makes it 0700 and ours: as root, the runner requires a
        // tasks tree that nobody else can write.
        let temp = tempfile::Builder::new()
            .prefix("nautilus-bench-")
            .tempdir()?;
        let root = temp.path().to_owned();
        for (name, code) in [("trivial", TRIVIAL_JS), ("cpu", CPU_JS)] {
            let dir = root.join(name);
            std::fs::create_dir(&dir)?;
            std::fs::write(
                dir.join("package.json"),
                format!("{{\"name\": \"{name}\", \"main\": \"index.js\"}}\n"),
            )?;
            std::fs::write(dir.join("index.js"), code)?;
        }
        Ok(Self { _temp: temp, root })
    }

    fn dir(&self, task: &str) -> PathBuf {
        self.root.join(task)
    }
}

/// Latencies of one measured point and the wall time it took.
struct Point {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Point {
    fn pct_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
    }

    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// `n` bare spawns of `node index.js` in `dir`, `parallel` at a time.
fn bare_spawns(node: &Path, dir: &Path, n: usize, parallel: usize) -> anyhow::Result<Point> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let latencies = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<Duration>> {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let start = Instant::now();
                        let status = Command::new(node)
                            .arg("index.js")
                            .current_dir(dir)
                            .env_clear()
                            .env("PATH", TASK_PATH_ENV)
                            .env("HOME", "/tmp")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()?;
                        ensure!(status.success(), "bare node failed: {status}");
                        mine.push(start.elapsed());
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            match w.join() {
                Ok(r) => all.extend(r?),
                Err(_) => bail!("a baseline worker panicked"),
            }
        }
        Ok(all)
    })?;
    Ok(Point {
        latencies,
        wall: started.elapsed(),
    })
}

/// A release server in dev mode on a loopback port, as its own process.
struct Server {
    child: Child,
    base: String,
    root_pem: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &Path, node: &Path, tasks: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let root = dir.path().join("root.pem");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(bin)
            .args(["--attestation", "dev", "--listen"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--tasks-dir")
            .arg(tasks)
            .arg("--node")
            .arg(node)
            .arg("--dev-root-out")
            .arg(&root)
            .args(["--max-queue", "256"])
            // The per-call cost asks for 50 documents in a row from one
            // address; the server's NSM rates (issue 24) would answer 429.
            .args(["--attestations-per-sec", "100000"])
            .args(["--attestations-per-client-per-sec", "100000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            root_pem: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(pem) = std::fs::read_to_string(&root) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    server.root_pem = pem;
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(server._dir.path().join("server.log"))?;
                bail!("the server exited ({status}) before serving:\n{log}");
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a graceful stop that also ends any pool), then wait.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        ensure!(status.success(), "could not signal the server");
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `total` requests for `task`, `concurrency` in flight at once, each client
/// pausing `pause` between its requests.
async fn load(
    http: &reqwest::Client,
    server: &Server,
    task: &str,
    concurrency: usize,
    total: usize,
    pause: Duration,
) -> anyhow::Result<Point> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/process_data", server.base);
    let body = json!({"payload": {"task_path": task}});
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, body, next) = (http.clone(), url.clone(), body.clone(), next.clone());
        workers.spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let start = Instant::now();
                let resp = http.post(&url).json(&body).send().await?;
                let status = resp.status();
                let text = resp.text().await?;
                ensure!(status == 200, "process_data answered {status}: {text}");
                mine.push(start.elapsed());
                tokio::time::sleep(pause).await;
            }
            Ok::<_, anyhow::Error>(mine)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    Ok(Point {
        latencies,
        wall: started.elapsed(),
    })
}

/// Samples the server's RSS (and its children's) until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    peak_children: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let peak_children = Arc::new(AtomicU64::new(0));
        let (s, p, pc) = (stop.clone(), peak.clone(), peak_children.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                pc.fetch_max(children_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Self {
            stop,
            peak,
            peak_children,
            thread,
        }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.peak.load(Ordering::Relaxed),
            self.peak_children.load(Ordering::Relaxed),
        )
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Total RSS of every descendant of `pid` (task and pool processes).
fn children_rss_kib(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut parent_of = Vec::new();
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid));
        }
    }
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    family[1..].iter().filter_map(|&p| rss_kib(p)).sum()
}

/// Per-call costs, each the median of many calls.
struct Costs {
    sign_us: f64,
    attestation_ms: f64,
    verify_doc_us: f64,
    verify_result_us: f64,
}

async fn per_call_costs(http: &reqwest::Client, server: &Server) -> anyhow::Result<Costs> {
    // GET /get_attestation over HTTP, dev mode.
    let mut attest = Vec::new();
    let mut doc = Vec::new();
    let nonce = [7u8; 32];
    for _ in 0..50 {
        let start = Instant::now();
        let resp: Value = http
            .get(format!(
                "{}/get_attestation?nonce={}",
                server.base,
                hex::encode(nonce)
            ))
            .send()
            .await?
            .json()
            .await?;
        attest.push(start.elapsed());
        let hex_doc = resp["attestation"]
            .as_str()
            .context("no attestation in the answer")?;
        doc = hex::decode(hex_doc)?;
    }

    // One real signed result to verify.
    let result_nonce = "00112233445566778899aabbccddeeff";
    let not_before_ms = now_ms();
    let signed: SignedResponse<TaskResult> = http
        .post(format!("{}/process_data", server.base))
        .json(&json!({"payload": {"task_path": "trivial", "nonce": result_nonce}}))
        .send()
        .await?
        .json()
        .await?;
    let not_after_ms = now_ms();

    let root = TrustedRoot::from_pem(&server.root_pem)?;
    let policy = Policy::default()
        .allow_debug(true)
        .expected_nonce(nonce.to_vec());
    let verified = AttestationDocument::from_bytes(&doc)?.verify(&root, &policy)?;
    let pk = verified
        .public_key()
        .context("document without public key")?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(pk)?;
    let expected = Expected {
        task_path: "trivial",
        args: &[],
        stdin: None,
        nonce: result_nonce,
        task_digest: None,
        not_before_ms,
        not_after_ms,
        clock_skew: DEFAULT_CLOCK_SKEW,
        attested_window_ms: None,
    };

    let verify_doc = median_of(200, || {
        AttestationDocument::from_bytes(&doc)?.verify(&root, &policy)?;
        Ok(())
    })?;
    let verify_result = median_of(200, || {
        verify_result(&signed, &key, &expected)?;
        Ok(())
    })?;
    let signing_key = SigningKey::random(&mut rand_core::OsRng);
    let data = signed.response.data.clone();
    let sign = median_of(200, || {
        IntentMessage::new(INTENT_TASK_RESULT, now_ms(), data.clone()).sign(&signing_key)?;
        Ok(())
    })?;
    let attestation = Point {
        latencies: attest,
        wall: Duration::from_secs(1),
    };
    Ok(Costs {
        sign_us: sign.as_secs_f64() * 1e6,
        attestation_ms: attestation.pct_ms(0.5),
        verify_doc_us: verify_doc.as_secs_f64() * 1e6,
        verify_result_us: verify_result.as_secs_f64() * 1e6,
    })
}

fn median_of(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(samples[n / 2])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn server_has_flag(bin: &Path, flag: &str) -> anyhow::Result<bool> {
    let out = Command::new(bin).arg("--help").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// The figures, as Markdown rows and as JSON, in the order measured.
#[derive(Default)]
struct Report {
    json: Value,
    baseline_rows: Vec<String>,
    server_rows: Vec<String>,
    rss_rows: Vec<String>,
    cost_rows: Vec<String>,
    /// Per task: bare sequential p50 (ms) and bare 2-way throughput.
    bare: Vec<(String, f64, f64)>,
}

impl Report {
    fn push(&mut self, key: &str, value: Value) {
        if !self.json.is_object() {
            self.json = json!({});
        }
        if let Some(list) = self.json[key].as_array_mut() {
            list.push(value);
        } else {
            self.json[key] = json!([value]);
        }
    }

    fn baseline(&mut self, task: &str, seq: Point, par: Point) {
        for (how, p) in [("sequential", &seq), ("2 at a time", &par)] {
            self.baseline_rows.push(format!(
                "| `node index.js` ({task}), {how} | {:.1} | {:.1} | {:.1} | {:.1} |",
                p.pct_ms(0.5),
                p.pct_ms(0.9),
                p.pct_ms(0.99),
                p.per_sec()
            ));
            self.push(
                "baseline",
                json!({"task": task, "parallel": if how == "sequential" {1} else {2},
                       "p50_ms": p.pct_ms(0.5), "p90_ms": p.pct_ms(0.9), "p99_ms": p.pct_ms(0.99),
                       "per_sec": p.per_sec(), "n": p.latencies.len()}),
            );
        }
        self.bare
            .push((task.to_owned(), seq.pct_ms(0.5), par.per_sec()));
    }

    fn point(&mut self, mode: &str, task: &str, c: usize, p: Point, peak: u64, peak_children: u64) {
        let (bare_p50, bare_tput) = self
            .bare
            .iter()
            .find(|(t, _, _)| t == task)
            .map_or((f64::NAN, f64::NAN), |(_, a, b)| (*a, *b));
        let ratio = p.pct_ms(0.5) / bare_p50;
        let tput_ratio = p.per_sec() / bare_tput;
        self.server_rows.push(format!(
            "| {mode} | {task} | {c} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio:.2}× | {tput_ratio:.2}× | {} / {} |",
            p.pct_ms(0.5),
            p.pct_ms(0.9),
            p.pct_ms(0.99),
            p.per_sec(),
            mib(peak),
            mib(peak_children),
        ));
        self.push(
            "server",
            json!({"mode": mode, "task": task, "concurrency": c, "n": p.latencies.len(),
                   "p50_ms": p.pct_ms(0.5), "p90_ms": p.pct_ms(0.9), "p99_ms": p.pct_ms(0.99),
                   "per_sec": p.per_sec(), "p50_vs_bare_sequential": ratio,
                   "per_sec_vs_bare_2_at_a_time": tput_ratio,
                   "peak_rss_kib": peak, "peak_children_rss_kib": peak_children}),
        );
    }

    fn rss_idle(&mut self, mode: &str, server: u64, children: u64) {
        self.rss_rows
            .push(format!("| {mode} | {} | {} |", mib(server), mib(children)));
        self.push(
            "rss_idle",
            json!({"mode": mode, "server_kib": server, "children_kib": children}),
        );
    }

    fn costs(&mut self, c: Costs) {
        self.cost_rows = vec![
            format!("| sign a result (P-256, BCS) | {:.0} µs |", c.sign_us),
            format!(
                "| `GET /get_attestation` over HTTP (dev), p50 | {:.2} ms |",
                c.attestation_ms
            ),
            format!(
                "| verify a document (COSE, chain, policy) | {:.0} µs |",
                c.verify_doc_us
            ),
            format!(
                "| verify a signed result and its bindings | {:.0} µs |",
                c.verify_result_us
            ),
        ];
        self.push(
            "costs",
            json!({"sign_us": c.sign_us, "get_attestation_p50_ms": c.attestation_ms,
                   "verify_document_us": c.verify_doc_us, "verify_result_us": c.verify_result_us}),
        );
    }

    fn markdown(&self, cpus: usize) -> String {
        let mut s = format!(
            "\n### Baseline: bare Node.js, clean environment ({cpus} CPUs)\n\n\
             | what | p50 ms | p90 ms | p99 ms | runs/s |\n|---|---|---|---|---|\n"
        );
        for r in &self.baseline_rows {
            s += r;
            s += "\n";
        }
        s += "\n### `POST /process_data`, end to end over HTTP\n\n\
              p50 is compared with one sequential bare spawn of the same task; \
              throughput with bare spawns 2 at a time.\n\n\
              | server | task | concurrency | p50 ms | p90 ms | p99 ms | tasks/s | p50 / bare | tasks/s / bare | peak RSS MiB server / children |\n\
              |---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.server_rows {
            s += r;
            s += "\n";
        }
        s += "\n### Idle RSS\n\n| server | server MiB | children MiB |\n|---|---|---|\n";
        for r in &self.rss_rows {
            s += r;
            s += "\n";
        }
        s += "\n### Per call\n\n| what | median |\n|---|---|\n";
        for r in &self.cost_rows {
            s += r;
            s += "\n";
        }
        s
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
