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
//! separate process in dev mode on loopback, once per `--runs` (default 2):
//! 1. the baseline: `node index.js` of each task at each concurrency, with
//!    its CPU per run (this process's children's `getrusage`, from
//!    `/proc/self/stat`);
//! 2. `POST /process_data` latency (p50/p90/p99), throughput and CPU per
//!    task at each concurrency (`--concurrency`, default 1,2,8) for a
//!    trivial task and a CPU-bound one (about 50 ms of work here), cold
//!    (`--warm-pool 0`) and with the warm pool, and one "paced" client
//!    sending a trivial task every 250 ms (the latency of one request when
//!    a warm box had time to start). CPU per task is the server's reaped
//!    children's (each box's PID 1 reaps everything in its box, so this is
//!    all of the box) and the server's own, between two moments when the
//!    pool is full (then as many boxes lived as tasks ran), and, as a
//!    cross-check, the slot cgroups' CPU counters;
//! 3. the server's RSS idle and under load, and per idle warm box its RSS
//!    and its slot cgroup's memory use;
//! 4. the cost per call of signing a result, of `GET /get_attestation`, and of
//!    a client's full verification of a document and a result.
//!
//! It prints the issue 26 targets as ratios to the bare baseline, with the
//! load average before and after, then a Markdown report of the first run
//! and the spread of the targets over all runs, and writes every run's
//! figures as JSON (`--json`).
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

mod ab;

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
    /// Concurrency levels, comma-separated (the bare baseline runs as many
    /// spawns at once).
    #[arg(long, value_delimiter = ',', default_value = "1,2,8")]
    concurrency: Vec<usize>,
    /// Complete measurements, one after the other: the first is printed in
    /// full, then the spread of the targets' ratios over all of them.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "out/bench.json")]
    json: PathBuf,
    /// A/B mode: compare `--server` (A) with this second server binary (B),
    /// interleaved (A B, B A, …, `--pairs` pairs), on the few points the
    /// targets are about (trivial task: cold, warm back to back, warm paced;
    /// `--requests` each), each run with its own bare baseline measured just
    /// before it. Prints every pair's figures and B/A of their medians.
    #[arg(long)]
    ab: Option<PathBuf>,
    /// A/B pairs (with `--ab`).
    #[arg(long, default_value_t = 6)]
    pairs: usize,
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
        args.requests > 0
            && args.runs > 0
            && !args.concurrency.is_empty()
            && !args.concurrency.contains(&0),
        "--requests, --runs and every --concurrency must be at least 1"
    );
    let node = match &args.node {
        Some(n) => n.clone(),
        None => which("node").context("node not found on PATH; pass --node")?,
    };
    let tasks = Tasks::create()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "nautilus-bench: {cpus} CPUs, {} requests per point, {} run(s); this takes a few minutes",
        args.requests, args.runs
    );
    if let Some(b) = &args.ab {
        ensure!(b.is_file(), "{} not found", b.display());
        return ab::compare(&args, b, &node, &tasks).await;
    }
    let mut reports = Vec::new();
    for run in 1..=args.runs {
        eprintln!("run {run} of {}", args.runs);
        reports.push(one_run(&args, &node, &tasks).await?);
    }
    print!("{}", reports[0].markdown(cpus));
    if reports.len() > 1 {
        print!("{}", spread(&reports));
    }
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json: Vec<&Value> = reports.iter().map(|r| &r.json).collect();
    std::fs::write(&args.json, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

/// One complete measurement: the baseline, then each server configuration.
async fn one_run(args: &Args, node: &Path, tasks: &Tasks) -> anyhow::Result<Report> {
    let mut report = Report {
        load_before: loadavg(),
        ..Report::default()
    };
    // 1. The baseline, at every concurrency measured for the server.
    let n = args.requests.max(20);
    for task in TASKS {
        let dir = tasks.dir(task);
        for &c in &args.concurrency {
            let point = bare_spawns(node, &dir, n.max(4 * c), c)?;
            report.baseline(task, c, point);
        }
    }

    // 2.–4. Each server configuration.
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (mode, pool) in [("cold", false), ("pool", true)] {
        let server = Server::start(&args.server, node, &tasks.root, slots, pool)?;
        let http = reqwest::Client::new();
        // Node's own caches and the server's first connections.
        server
            .learning_group(async {
                for task in TASKS {
                    load(&http, &server, task, 2, 4, Duration::ZERO).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
            .await?;
        let health: Value = http
            .get(format!("{}/health_check", server.base))
            .send()
            .await?
            .json()
            .await?;
        report.heap_limit = health["isolation"]["heap_limit"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let boxes = server.settle(&http).await;
        let idle_rss = rss_kib(server.pid()).unwrap_or(0);
        let idle_children = children_rss_kib(server.pid());
        let slots_memory = slot_cgroup_files(server.pid(), server.group(), MEMORY_FILES)
            .iter()
            .filter_map(|f| read_number(f))
            .collect::<Vec<_>>();
        report.rss_idle(mode, idle_rss, idle_children, boxes, &slots_memory);
        for task in TASKS {
            for &c in &args.concurrency {
                eprintln!("  {mode}: {task} at concurrency {c}");
                let total = args.requests.max(4 * c);
                let before = server.cpu();
                let sampler = RssSampler::start(server.pid());
                let mut point = load(&http, &server, task, c, total, Duration::ZERO).await?;
                let (peak, peak_children) = sampler.stop();
                server.settle(&http).await;
                point.cpu = before.zip(server.cpu()).map(|(b, a)| a.since(&b, total));
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
        if mode == "cold" {
            report.costs(per_call_costs(&http, &server).await?);
        }
        server.stop()?;
    }
    report.load_after = loadavg();
    report.finish();
    Ok(report)
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
    /// CPU per task, when measured.
    cpu: Option<Cpu>,
}

/// CPU per task, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// The task's own processes: bare `node`, or everything in its box (the
    /// server's reaped children: each box's PID 1 reaps all of the box).
    task_ms: f64,
    /// The server's own work for the task (HTTP, starting and emptying the
    /// box, signing); 0 for bare node.
    server_ms: f64,
    /// The same box CPU from the slot cgroups (`cpuacct.usage` or
    /// `cpu.stat`), a cross-check, when found.
    cgroup_ms: Option<f64>,
}

/// CPU seconds a process has used: its own, and that of the children it
/// waited for (with theirs), from `/proc/<pid>/stat`; and the slot cgroups'.
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    own: f64,
    children: f64,
    cgroups: Option<f64>,
}

impl CpuClock {
    fn read(pid: &str) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<f64> = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        // Fields 14-17 (utime, stime, cutime, cstime), counted from 1; the
        // split starts at field 3.
        let tick = clock_ticks();
        let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) / tick;
        Some(Self {
            own: at(14) + at(15),
            children: at(16) + at(17),
            cgroups: None,
        })
    }

    /// Per task, over `n` tasks since `before`.
    fn since(&self, before: &Self, n: usize) -> Cpu {
        let per = |a: f64, b: f64| (a - b) * 1000.0 / n as f64;
        Cpu {
            task_ms: per(self.children, before.children),
            server_ms: per(self.own, before.own),
            cgroup_ms: self.cgroups.zip(before.cgroups).map(|(a, b)| per(a, b)),
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A slot's memory use, by cgroup version.
const MEMORY_FILES: [&str; 2] = ["memory.current", "memory.usage_in_bytes"];
/// A slot's CPU time: v1 (nanoseconds), v2 (`usage_usec` in `cpu.stat`;
/// v1's `cpu.stat` has no usage and is passed over).
const CPU_FILES: [&str; 2] = ["cpuacct.usage", "cpu.stat"];

/// The first of `names` found in each slot cgroup of the server
/// (`<its cgroup>/nautilus-<uid>/slot-<i>` in every hierarchy; see
/// task-runner's cgroup module), by hierarchy, the first hierarchy that has
/// one. Empty without root or cgroups.
fn slot_cgroup_files(server: u32, group: Option<&str>, names: [&str; 2]) -> Vec<PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{server}/cgroup")).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found = Vec::new();
    for line in mounts.lines() {
        // Mount point is field 5; the file system type follows " - ".
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let point = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, options) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
        // The server's path in this hierarchy.
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match fstype {
                "cgroup2" => id == "0",
                "cgroup" => controllers
                    .split(',')
                    .any(|c| !c.is_empty() && options.split(',').any(|o| o == c)),
                _ => false,
            };
            matches.then(|| path.trim_start_matches('/').to_owned())
        });
        let Some(path) = path else { continue };
        let base = Path::new(point).join(path);
        let Ok(runners) = std::fs::read_dir(&base) else {
            continue;
        };
        for runner in runners.flatten() {
            let name = runner.file_name();
            let name = name.to_string_lossy();
            let ours = group.map_or(name.starts_with("nautilus-"), |g| name == g);
            if !ours {
                continue;
            }
            for slot in std::fs::read_dir(runner.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(file) = names
                    .iter()
                    .map(|n| slot.path().join(n))
                    .find(|f| read_number(f).is_some())
                {
                    found.push(file);
                }
            }
        }
        if !found.is_empty() {
            return found;
        }
    }
    found
}

/// A cgroup file's number in base units: bytes, or CPU seconds
/// (`cpu.stat`'s `usage_usec`, `cpuacct.usage`'s nanoseconds).
fn read_number(file: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(file).ok()?;
    match file.file_name()?.to_str()? {
        "cpu.stat" => text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|us| us / 1e6),
        "cpuacct.usage" => text.trim().parse::<f64>().ok().map(|ns| ns / 1e9),
        _ => text.trim().parse().ok(),
    }
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

/// `n` bare spawns of `node index.js` in `dir`, `parallel` at a time, and
/// their CPU (this process's waited-for children: nothing else of it ends
/// meanwhile).
fn bare_spawns(node: &Path, dir: &Path, n: usize, parallel: usize) -> anyhow::Result<Point> {
    let before = CpuClock::read("self");
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
    let wall = started.elapsed();
    Ok(Point {
        cpu: before
            .zip(CpuClock::read("self"))
            .map(|(b, a)| a.since(&b, n)),
        latencies,
        wall,
    })
}

/// A release server in dev mode on a loopback port, as its own process.
struct Server {
    child: Child,
    base: String,
    root_pem: String,
    /// Warm boxes it keeps when idle.
    pool_size: Option<usize>,
    /// The runner's cgroup group, once seen (see [`runner_group`]).
    group: std::sync::OnceLock<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `slots` tasks at once; a warm box for each when `pool` (root only).
    fn start(
        bin: &Path,
        node: &Path,
        tasks: &Path,
        slots: usize,
        pool: bool,
    ) -> anyhow::Result<Self> {
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
            .arg("--max-concurrent")
            .arg(slots.to_string())
            .args(if pool {
                &[][..]
            } else {
                &["--warm-pool", "0"][..]
            })
            .env_remove("NAUTILUS_WARM_POOL")
            .env_remove("NAUTILUS_MAX_CONCURRENT")
            // The per-call cost asks for 50 documents in a row from one
            // address; the server's NSM rates (issue 24) would answer 429.
            .args(["--attestations-per-sec", "100000"])
            .args(["--attestations-per-client-per-sec", "100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            root_pem: String::new(),
            // SAFETY: geteuid cannot fail. Only root keeps warm boxes.
            pool_size: Some(if pool && unsafe { libc::geteuid() } == 0 {
                slots
            } else {
                0
            }),
            group: std::sync::OnceLock::new(),
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

    /// The runner's cgroup group, if a box of it was seen yet.
    fn group(&self) -> Option<&str> {
        if self.group.get().is_none() {
            if let Some(g) = runner_group(self.pid()) {
                let _ = self.group.set(g);
            }
        }
        self.group.get().map(String::as_str)
    }

    /// Looks for the runner's cgroup group while `work` runs (a cold
    /// server has boxes only then).
    async fn learning_group<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let pid = self.pid();
        let found = Arc::new(std::sync::OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st) = (found.clone(), stop.clone());
        let watch = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) && f.get().is_none() {
                if let Some(g) = runner_group(pid) {
                    let _ = f.set(g);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let out = work.await;
        stop.store(true, Ordering::Relaxed);
        let _ = watch.join();
        if let Some(g) = found.get() {
            let _ = self.group.set(g.clone());
        }
        out
    }

    /// The server's CPU clock, with its slot cgroups'.
    fn cpu(&self) -> Option<CpuClock> {
        let mut clock = CpuClock::read(&self.pid().to_string())?;
        let slots = slot_cgroup_files(self.pid(), self.group(), CPU_FILES);
        if !slots.is_empty() {
            clock.cgroups = slots.iter().map(|f| read_number(f)).sum();
        }
        Some(clock)
    }

    /// Waits (at most 10 s) until the warm pool is full again and returns
    /// how many warm boxes wait: after a point, each run has then had its
    /// box reaped and its slot's next box started, so the CPU between two
    /// settled moments is that of as many box lives as runs.
    async fn settle(&self, http: &reqwest::Client) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            let ready = warm_ready(http, &self.base).await;
            // Twice the same count 200 ms apart, and every slot filled.
            if ready.is_none() || (ready == last && ready >= self.pool_size) {
                return ready.unwrap_or(0);
            }
            if Instant::now() > deadline {
                return ready.unwrap_or(0);
            }
            last = ready;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        cpu: None,
    })
}

/// The server's `nautilus_warm_boxes_ready` gauge.
async fn warm_ready(http: &reqwest::Client, base: &str) -> Option<usize> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("nautilus_warm_boxes_ready "))
        .and_then(|v| v.trim().parse().ok())
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
    descendants(pid).iter().filter_map(|&p| rss_kib(p)).sum()
}

/// The runner's own cgroup group (`nautilus-<tag>`), from the cgroup of any
/// process the server started (a box). Several root servers under one
/// cgroup (tests on a shared machine) each have one: only the server's own
/// slots count.
fn runner_group(server: u32) -> Option<String> {
    descendants(server).iter().find_map(|p| {
        let cgroups = std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?;
        cgroups
            .lines()
            .flat_map(|l| l.split('/'))
            .find(|seg| seg.starts_with("nautilus-"))
            .map(str::to_owned)
    })
}

/// Every descendant of `pid`, not `pid` itself.
fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
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
    family.split_off(1)
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
        egress: None,
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
        cpu: None,
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

/// The figures of one run, as Markdown rows and as JSON, in the order measured.
#[derive(Default)]
struct Report {
    json: Value,
    baseline_rows: Vec<String>,
    server_rows: Vec<String>,
    rss_rows: Vec<String>,
    cost_rows: Vec<String>,
    /// Bare node per (task, concurrency): p50 ms, tasks/s, CPU ms per task.
    bare: Vec<(String, usize, f64, f64, Option<f64>)>,
    /// The ratios the targets are about, by name.
    targets: Vec<(&'static str, f64)>,
    /// Idle: server RSS, and per warm box RSS and cgroup memory (MiB).
    idle_server_mib: f64,
    warm_box_rss_mib: Option<f64>,
    warm_box_cgroup_mib: Option<f64>,
    /// What keeps a task's V8 heap in bounds (`isolation.heap_limit`).
    heap_limit: String,
    load_before: String,
    load_after: String,
}

/// The issue 26 targets: name, goal, whether smaller is better.
const TARGETS: [(&str, f64, bool); 9] = [
    ("cold p50 / bare", 1.10, true),
    ("warm p50, paced / bare", 0.25, true),
    ("warm p50, back to back / bare", 0.25, true),
    ("CPU per task in a box, cold / bare", 1.10, true),
    ("CPU per task in a box, warm / bare", 1.10, true),
    ("CPU per task, box + server, cold / bare", 1.10, true),
    ("CPU per task, box + server, warm / bare", 1.10, true),
    ("tasks/s at 2, cold / bare at 2", 0.90, false),
    ("tasks/s at 2, warm / bare at 2", 0.90, false),
];

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

    fn bare(&self, task: &str, c: usize) -> Option<&(String, usize, f64, f64, Option<f64>)> {
        self.bare.iter().find(|b| b.0 == task && b.1 == c)
    }

    fn baseline(&mut self, task: &str, c: usize, p: Point) {
        let cpu = p.cpu.map(|c| c.task_ms);
        self.baseline_rows.push(format!(
            "| `node index.js` ({task}) | {c} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            p.pct_ms(0.5),
            p.pct_ms(0.9),
            p.pct_ms(0.99),
            p.per_sec(),
            cpu.map_or("–".into(), |c| format!("{c:.1}")),
        ));
        self.push(
            "baseline",
            json!({"task": task, "parallel": c,
                   "p50_ms": p.pct_ms(0.5), "p90_ms": p.pct_ms(0.9), "p99_ms": p.pct_ms(0.99),
                   "per_sec": p.per_sec(), "cpu_ms_per_task": cpu, "n": p.latencies.len()}),
        );
        self.bare
            .push((task.to_owned(), c, p.pct_ms(0.5), p.per_sec(), cpu));
    }

    fn point(&mut self, mode: &str, task: &str, c: usize, p: Point, peak: u64, peak_children: u64) {
        let bare_p50 = self.bare(task, 1).map_or(f64::NAN, |b| b.2);
        // Throughput and CPU against bare spawns as many at once: CPU per
        // run grows with contention, bare or boxed.
        let bare_tput = self.bare(task, c).map_or(f64::NAN, |b| b.3);
        let bare_cpu = self.bare(task, c).and_then(|b| b.4);
        let ratio = p.pct_ms(0.5) / bare_p50;
        let tput_ratio = p.per_sec() / bare_tput;
        let cpu = p.cpu;
        let cpu_cell = cpu.map_or("–".into(), |c| {
            format!(
                "{:.1} + {:.1}{}",
                c.task_ms,
                c.server_ms,
                c.cgroup_ms
                    .map_or(String::new(), |g| format!(" (cgroups {g:.1})"))
            )
        });
        let cpu_ratio = cpu.zip(bare_cpu).map(|(c, b)| c.task_ms / b);
        let total_ratio = cpu
            .zip(bare_cpu)
            .map(|(c, b)| (c.task_ms + c.server_ms) / b);
        self.server_rows.push(format!(
            "| {mode} | {task} | {c} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio:.2}× | {tput_ratio:.2}× | {cpu_cell} | {} | {} / {} |",
            p.pct_ms(0.5),
            p.pct_ms(0.9),
            p.pct_ms(0.99),
            p.per_sec(),
            cpu_ratio.map_or("–".into(), |r| format!("{r:.2}×")),
            mib(peak),
            mib(peak_children),
        ));
        let warm = mode.starts_with("pool");
        if task == "trivial" {
            match (mode, c) {
                ("cold", 1) => self.targets.push(("cold p50 / bare", ratio)),
                ("pool, paced", 1) => self.targets.push(("warm p50, paced / bare", ratio)),
                ("pool", 1) => self.targets.push(("warm p50, back to back / bare", ratio)),
                _ => {}
            }
            if c == 2 && !mode.contains("paced") {
                let which = if warm { "warm" } else { "cold" };
                let name = TARGETS.iter().map(|t| t.0);
                let find = |pat: String| name.clone().find(|n| *n == pat);
                if let Some(n) = find(format!("tasks/s at 2, {which} / bare at 2")) {
                    self.targets.push((n, tput_ratio));
                }
                if let (Some(n), Some(r)) = (
                    find(format!("CPU per task in a box, {which} / bare")),
                    cpu_ratio,
                ) {
                    self.targets.push((n, r));
                }
                if let (Some(n), Some(r)) = (
                    find(format!("CPU per task, box + server, {which} / bare")),
                    total_ratio,
                ) {
                    self.targets.push((n, r));
                }
            }
        }
        self.push(
            "server",
            json!({"mode": mode, "task": task, "concurrency": c, "n": p.latencies.len(),
                   "p50_ms": p.pct_ms(0.5), "p90_ms": p.pct_ms(0.9), "p99_ms": p.pct_ms(0.99),
                   "per_sec": p.per_sec(), "p50_vs_bare_sequential": ratio,
                   "per_sec_vs_bare_same_concurrency": tput_ratio,
                   "cpu_ms_per_task_box": cpu.map(|c| c.task_ms),
                   "cpu_ms_per_task_server": cpu.map(|c| c.server_ms),
                   "cpu_ms_per_task_slot_cgroups": cpu.and_then(|c| c.cgroup_ms),
                   "cpu_box_vs_bare": cpu_ratio,
                   "peak_rss_kib": peak, "peak_children_rss_kib": peak_children}),
        );
    }

    /// Idle, once the pool (if any) is full: `boxes` warm boxes, the slot
    /// cgroups' memory use in bytes.
    fn rss_idle(&mut self, mode: &str, server: u64, children: u64, boxes: usize, slots: &[f64]) {
        let per_box_rss = (boxes > 0).then(|| children as f64 / 1024.0 / boxes as f64);
        let per_box_cgroup = (boxes > 0 && !slots.is_empty())
            .then(|| slots.iter().sum::<f64>() / slots.len() as f64 / 1048576.0);
        if mode == "pool" {
            self.warm_box_rss_mib = per_box_rss;
            self.warm_box_cgroup_mib = per_box_cgroup;
        }
        self.idle_server_mib = self.idle_server_mib.max(server as f64 / 1024.0);
        let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        self.rss_rows.push(format!(
            "| {mode} | {} | {} | {boxes} | {} | {} |",
            mib(server),
            mib(children),
            cell(per_box_rss),
            cell(per_box_cgroup),
        ));
        self.push(
            "rss_idle",
            json!({"mode": mode, "server_kib": server, "children_kib": children,
                   "warm_boxes": boxes, "per_warm_box_rss_mib": per_box_rss,
                   "per_warm_box_cgroup_mib": per_box_cgroup}),
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

    fn target(&self, name: &str) -> Option<f64> {
        self.targets.iter().find(|t| t.0 == name).map(|t| t.1)
    }

    fn markdown(&self, cpus: usize) -> String {
        let mut s = format!(
            "\n### Targets (issue 26), ratios to bare clean-environment `node index.js` in the same run\n\n\
             {cpus} CPUs; load average {} before, {} after; V8 heap bounded by: `{}`.\n\n\
             | target | measured | goal | met |\n|---|---|---|---|\n",
            self.load_before, self.load_after, self.heap_limit
        );
        for (name, goal, smaller) in TARGETS {
            let (value, met) = match self.target(name) {
                Some(v) => (
                    format!("{v:.2}×"),
                    if (v <= goal) == smaller { "yes" } else { "no" },
                ),
                None => ("–".to_owned(), "–"),
            };
            let op = if smaller { "≤" } else { "≥" };
            s += &format!("| {name} | {value} | {op} {goal:.2}× | {met} |\n");
        }
        let idle_met = if self.idle_server_mib < 20.0 {
            "yes"
        } else {
            "no"
        };
        s += &format!(
            "| idle server RSS | {:.1} MiB | < 20 MiB | {idle_met} |\n",
            self.idle_server_mib
        );
        let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1} MiB"));
        s += &format!(
            "| memory per idle warm box: RSS / slot cgroup | {} / {} | (sizing) | |\n",
            cell(self.warm_box_rss_mib),
            cell(self.warm_box_cgroup_mib)
        );
        s += &format!(
            "\n### Baseline: bare Node.js, clean environment ({cpus} CPUs)\n\n\
             CPU is the children's `getrusage` (user + system) per spawn.\n\n\
             | what | at once | p50 ms | p90 ms | p99 ms | runs/s | CPU ms/run |\n|---|---|---|---|---|---|---|\n"
        );
        for r in &self.baseline_rows {
            s += r;
            s += "\n";
        }
        s += "\n### `POST /process_data`, end to end over HTTP\n\n\
              p50 is compared with one sequential bare spawn of the same task; \
              tasks/s with bare spawns as many at once as the clients. CPU per task \
              (ms): the box's (every process in it, reaped by the server) + the \
              server's own (HTTP, box, signing); the slot cgroups' count of the \
              box in brackets; \"CPU / bare\" compares the box's with a bare \
              spawn's, as many at once.\n\n\
              | server | task | clients | p50 ms | p90 ms | p99 ms | tasks/s | p50 / bare | tasks/s / bare | CPU ms box + server | CPU / bare | peak RSS MiB server / children |\n\
              |---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.server_rows {
            s += r;
            s += "\n";
        }
        s += "\n### Idle memory\n\n\
              | server | server RSS MiB | children RSS MiB | warm boxes | RSS MiB per warm box | slot cgroup MiB per warm box |\n\
              |---|---|---|---|---|---|\n";
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

    /// The summary figures into the JSON, once the run is complete.
    fn finish(&mut self) {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|(n, v)| json!({"target": n, "ratio": v}))
            .collect();
        self.json["targets"] = json!(targets);
        self.json["load_average"] = json!({"before": self.load_before, "after": self.load_after});
        self.json["heap_limit"] = json!(self.heap_limit);
        self.json["idle_server_rss_mib"] = json!(self.idle_server_mib);
    }
}

/// The targets' ratios over every run: min–max, each run's value.
fn spread(reports: &[Report]) -> String {
    let mut s = format!(
        "\n### Spread over {} runs (load average before/after each: {})\n\n\
         | target | min–max | each run |\n|---|---|---|\n",
        reports.len(),
        reports
            .iter()
            .map(|r| format!("{} / {}", r.load_before, r.load_after))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for (name, _, _) in TARGETS {
        let values: Vec<f64> = reports.iter().filter_map(|r| r.target(name)).collect();
        if values.is_empty() {
            continue;
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        s += &format!("| {name} | {min:.2}–{max:.2}× | {} |\n", each.join(", "));
    }
    s
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
