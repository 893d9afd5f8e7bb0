//! Median latency of a trivial task (`exit-with 0` from the test fixtures),
//! one run at a time: `cargo run --release -p task-runner --example latency -- [RUNS]`.
//! As root this includes the whole box (namespaces, mounts, reaper).

use std::time::{Duration, Instant};

use task_runner::{Runner, RunnerConfig, TaskRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(50), |n| n.parse())?;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks");
    let runner = Runner::new(RunnerConfig {
        tasks_dir: fixtures.into(),
        max_concurrent: 1,
        ..RunnerConfig::default()
    })?;
    let request = || TaskRequest {
        task_path: "exit-with".into(),
        args: vec!["0".into()],
        ..TaskRequest::default()
    };
    for _ in 0..3 {
        runner.run(request()).await?;
    }
    let mut wall = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let result = runner.run(request()).await?;
        assert_eq!(result.status, "success");
        wall.push(started.elapsed());
    }
    wall.sort();
    let at = |q: f64| wall[((wall.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} runs, privileged={}: median {:.1} ms, p10 {:.1} ms, p90 {:.1} ms",
        runs,
        runner.is_privileged(),
        ms(at(0.5)),
        ms(at(0.1)),
        ms(at(0.9))
    );
    Ok(())
}
