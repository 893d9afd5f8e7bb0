//! `--ab`: two server binaries, interleaved, on the points the targets are
//! about. On a shared machine only an interleaved comparison means anything:
//! each pair runs A then B (B then A every other pair), and every run
//! measures its own bare baseline just before, so each ratio compares
//! figures taken seconds apart.

use std::path::Path;
use std::time::Duration;

use super::{bare_spawns, load, loadavg, Args, Server, Tasks, PACED};

/// What one run of one binary measured.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    bare_p50: f64,
    bare_cpu: f64,
    cold_p50: f64,
    cold_box_cpu: f64,
    cold_server_cpu: f64,
    warm_p50: f64,
    warm_box_cpu: f64,
    warm_server_cpu: f64,
    /// The box's CPU from the slot cgroups (nanosecond counters; the
    /// reaped children's are in clock ticks).
    cold_cgroup_cpu: f64,
    warm_cgroup_cpu: f64,
    paced_p50: f64,
}

/// The rows printed: name, and how to get it from a run's figures.
type Row = (&'static str, fn(&Figures) -> f64);
const ROWS: [Row; 14] = [
    ("bare p50 ms", |f| f.bare_p50),
    ("cold p50 / bare", |f| f.cold_p50 / f.bare_p50),
    ("warm p50, back to back / bare", |f| f.warm_p50 / f.bare_p50),
    ("warm p50, paced / bare", |f| f.paced_p50 / f.bare_p50),
    ("warm p50, paced ms", |f| f.paced_p50),
    ("bare CPU ms", |f| f.bare_cpu),
    ("cold CPU box ms", |f| f.cold_box_cpu),
    ("cold CPU box ms (slot cgroups)", |f| f.cold_cgroup_cpu),
    ("cold CPU server ms", |f| f.cold_server_cpu),
    ("cold CPU box + server / bare", |f| {
        (f.cold_box_cpu + f.cold_server_cpu) / f.bare_cpu
    }),
    ("warm CPU box ms", |f| f.warm_box_cpu),
    ("warm CPU box ms (slot cgroups)", |f| f.warm_cgroup_cpu),
    ("warm CPU server ms", |f| f.warm_server_cpu),
    ("warm CPU box + server / bare", |f| {
        (f.warm_box_cpu + f.warm_server_cpu) / f.bare_cpu
    }),
];

pub(crate) async fn compare(
    args: &Args,
    b: &Path,
    node: &Path,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let bins = [args.server.as_path(), b];
    let mut figures: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    let load_before = loadavg();
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            eprintln!("pair {} of {}: {}", pair + 1, args.pairs, ["A", "B"][i]);
            figures[i].push(one(bins[i], node, tasks, args.requests).await?);
        }
    }
    println!(
        "\n### A/B, {} interleaved pairs, {} requests per point (load average {} before, {} after)\n\n\
         A = `{}`, B = `{}`. A and B: the median over the pairs; B / A: the median of \
         the pairs' ratios; then each pair's A / B.\n\n\
         | figure | A | B | B / A | each pair (A / B) |\n|---|---|---|---|---|",
        args.pairs,
        args.requests,
        load_before,
        loadavg(),
        args.server.display(),
        b.display()
    );
    for (name, get) in ROWS {
        let a: Vec<f64> = figures[0].iter().map(get).collect();
        let bv: Vec<f64> = figures[1].iter().map(get).collect();
        let (ma, mb) = (median(&a), median(&bv));
        let ratios: Vec<f64> = a.iter().zip(&bv).map(|(x, y)| y / x).collect();
        let each: Vec<String> = a
            .iter()
            .zip(&bv)
            .map(|(x, y)| format!("{x:.2} / {y:.2}"))
            .collect();
        println!(
            "| {name} | {ma:.2} | {mb:.2} | {:.3} | {} |",
            median(&ratios),
            each.join(", ")
        );
    }
    Ok(())
}

/// One binary: its bare baseline, then cold, then the pool.
async fn one(bin: &Path, node: &Path, tasks: &Tasks, n: usize) -> anyhow::Result<Figures> {
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bare = bare_spawns(node, &tasks.dir("trivial"), n, 1)?;
    let mut f = Figures {
        bare_p50: bare.pct_ms(0.5),
        bare_cpu: bare.cpu.map_or(f64::NAN, |c| c.task_ms),
        ..Figures::default()
    };
    for pool in [false, true] {
        let server = Server::start(bin, node, &tasks.root, slots, pool)?;
        let http = reqwest::Client::new();
        server
            .learning_group(load(&http, &server, "trivial", 1, 4, Duration::ZERO))
            .await?;
        server.settle(&http).await;
        let before = server.cpu();
        let point = load(&http, &server, "trivial", 1, n, Duration::ZERO).await?;
        server.settle(&http).await;
        let cpu = before.zip(server.cpu()).map(|(b, a)| a.since(&b, n));
        let (box_cpu, server_cpu) = cpu.map_or((f64::NAN, f64::NAN), |c| (c.task_ms, c.server_ms));
        let cgroup_cpu = cpu.and_then(|c| c.cgroup_ms).unwrap_or(f64::NAN);
        if pool {
            (f.warm_p50, f.warm_box_cpu, f.warm_server_cpu) =
                (point.pct_ms(0.5), box_cpu, server_cpu);
            f.warm_cgroup_cpu = cgroup_cpu;
            let paced = load(&http, &server, "trivial", 1, n.min(20), PACED).await?;
            f.paced_p50 = paced.pct_ms(0.5);
        } else {
            (f.cold_p50, f.cold_box_cpu, f.cold_server_cpu) =
                (point.pct_ms(0.5), box_cpu, server_cpu);
            f.cold_cgroup_cpu = cgroup_cpu;
        }
        server.stop()?;
    }
    Ok(f)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}
