//! Latency and throughput of a local dev-mode server, end to end over HTTP.
//!
//! ```text
//! make bench            # = cargo run --release --example bench -- 200 8
//! ```
//!
//! Arguments: number of `/process_data` requests (default 200) and how many
//! run at once (default: the number of CPUs). Prints percentiles for
//! `/get_attestation` and `/process_data` (nodejs-task). Timings live here,
//! never in pass/fail tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(cpus);

    let mut config = ServerConfig::dev();
    config.runner.tasks_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    config.runner.max_queue = total;
    let state = Arc::new(AppState::new(config)?);
    let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse()?)).await?;
    let Listen::Tcp(addr) = bound.local_addr()? else {
        anyhow::bail!("bound to TCP, got another address")
    };
    tokio::spawn(bound.serve(state, std::future::pending()));
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let mut attest = Vec::new();
    for i in 0..50u32 {
        let start = Instant::now();
        let resp = http
            .get(format!("{base}/get_attestation?nonce={i:08x}"))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == 200,
            "attestation failed: {}",
            resp.status()
        );
        resp.bytes().await?;
        attest.push(start.elapsed());
    }
    report("GET /get_attestation (sequential)", &mut attest, None);

    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..total {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let http = http.clone();
        let url = format!("{base}/process_data");
        runs.spawn(async move {
            let start = Instant::now();
            let resp = http
                .post(url)
                .json(&serde_json::json!({"payload": {"args": ["1", "2", "3"]}}))
                .send()
                .await?;
            let status = resp.status();
            resp.bytes().await?;
            drop(permit);
            anyhow::ensure!(status == 200, "process_data failed: {status}");
            Ok::<_, anyhow::Error>(start.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(done) = runs.join_next().await {
        latencies.push(done??);
    }
    let wall = started.elapsed();
    report(
        &format!("POST /process_data nodejs-task ({parallel} at once)"),
        &mut latencies,
        Some(wall),
    );
    Ok(())
}

fn report(what: &str, samples: &mut [Duration], wall: Option<Duration>) {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
    };
    print!(
        "{what}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    match wall {
        Some(w) => println!(
            " throughput={:.1}/s",
            samples.len() as f64 / w.as_secs_f64()
        ),
        None => println!(),
    }
}
