//! Median latency of a trivial task (`nodejs-task`, one at a time), from
//! `Runner::run` to its result, with the cgroups in force that it prints.
//! Not part of the tests.
//!
//! ```text
//! cargo run --release -p task-runner --example latency -- 100
//! NAUTILUS_WARM_POOL=0 cargo run --release -p task-runner --example latency -- 100
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use task_runner::{Runner, RunnerConfig, TaskRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(100), |n| n.parse())?;
    let runner = Runner::new(RunnerConfig {
        // The example task lives at the repository root.
        tasks_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
        max_concurrent: 1,
        // NAUTILUS_WARM_POOL=0 measures cold starts (as the server reads it).
        warm_pool: std::env::var("NAUTILUS_WARM_POOL")
            .ok()
            .map(|v| v.parse())
            .transpose()?,
        ..RunnerConfig::default()
    })?;
    println!("cgroups: {}", serde_json::to_string(runner.cgroups())?);
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let result = runner.run(TaskRequest::default()).await?;
        took.push(started.elapsed());
        if result.status != "success" {
            return Err(format!("task failed: {result:?}").into());
        }
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{} runs: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms",
        took.len(),
        at(0.5),
        at(0.9),
        at(0.0)
    );
    Ok(())
}
