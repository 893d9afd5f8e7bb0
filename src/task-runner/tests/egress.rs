//! Egress: what a task declares under `"nautilus"` in its `package.json`.

mod common;

use std::path::Path;

use common::*;
use task_runner::Runner;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn task(root: &Path, name: &str, package: &str) {
    write(&root.join(name), "package.json", package);
    write(&root.join(name), "index.js", "console.log('hi')\n");
}

#[test]
fn the_declared_egress_is_listed_with_each_task() {
    let tasks = tempfile::tempdir().unwrap();
    task(
        tasks.path(),
        "fetcher",
        r#"{"main":"index.js","nautilus":{"egress":["API.example.org","example.org:8443"]}}"#,
    );
    task(tasks.path(), "offline", r#"{"main":"index.js"}"#);
    let runner = Runner::new(config_in(tasks.path())).unwrap();
    let listed = runner.list_tasks().unwrap();
    let egress: Vec<(String, String)> = listed
        .iter()
        .map(|t| {
            (
                t.task_path.clone(),
                serde_json::to_string(&t.egress).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        egress,
        [
            (
                "fetcher".to_owned(),
                r#"["api.example.org:443","example.org:8443"]"#.to_owned()
            ),
            ("offline".to_owned(), "[]".to_owned()),
        ]
    );
}

#[test]
fn a_malformed_declaration_refuses_the_listing_with_what_to_fix() {
    for (package, needle) in [
        (
            r#"{"nautilus":{"egress":["1.2.3.4"]}}"#,
            "entry \"1.2.3.4\": IP literals are not allowed",
        ),
        (
            r#"{"nautilus":{"egress":["*.example.org"]}}"#,
            "wildcards are not allowed",
        ),
        (
            r#"{"nautilus":{"egres":["example.org"]}}"#,
            "unknown field `egres`",
        ),
    ] {
        let tasks = tempfile::tempdir().unwrap();
        task(tasks.path(), "bad", package);
        let runner = Runner::new(config_in(tasks.path())).unwrap();
        let err = runner.list_tasks().unwrap_err();
        assert_eq!(err.kind(), task_runner::ErrorKind::InvalidTask, "{err}");
        assert!(err.to_string().contains(needle), "{package}: {err}");
    }
}

/// Connects every declared destination to the test server's port on
/// loopback (the name is the test's; the sockets and the TLS are real).
#[derive(Debug)]
struct ToLoopback(u16);

impl task_runner::EgressConnect for ToLoopback {
    fn connect<'a>(&'a self, _dest: &'a task_runner::EgressHost) -> task_runner::ConnectFuture<'a> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.0)).await?;
            Ok(Box::new(stream) as Box<dyn task_runner::EgressStream>)
        })
    }
}

/// What the probe task does with its arguments `<mode> <port> [extra]`,
/// printing `ok …` or `error <code>`.
const PROBE_JS: &str = r#"'use strict';
const https = require('node:https');
const tls = require('node:tls');
const net = require('node:net');
const [mode, port, extra] = process.argv.slice(2);
const host = 'egress.nautilus.test';
const code = (e) => (e && e.cause && e.cause.code) || (e && e.code) || String(e);
const get = (url) => new Promise((ok, no) => {
  https.get(url, (res) => { let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => ok(b)); res.on('error', no); }).on('error', no);
});
const modes = {
  async all() {
    const url = `https://${host}:${port}/data`;
    const viaFetch = await (await fetch(url)).json();
    const viaGet = JSON.parse(await get(url));
    return JSON.stringify({ fetch: viaFetch, get: viaGet });
  },
  async fetch() { const r = await fetch(extra, { signal: AbortSignal.timeout(10000) }); return String(r.status); },
  async dns() {
    const r = new (require('node:dns').promises.Resolver)({ timeout: 3000, tries: 1 });
    r.setServers([extra]);
    return (await r.resolve4('registry.npmjs.org')).join(',');
  },
  async connect() {
    return new Promise((ok, no) => {
      const s = net.connect(Number(port), extra, () => { s.destroy(); ok('connected'); });
      s.on('error', no);
      s.setTimeout(10000, () => { s.destroy(); no(new Error('timeout')); });
    });
  },
  async many() {
    const n = Number(extra);
    const opened = [];
    const results = await Promise.all(Array.from({ length: n }, () => new Promise((ok) => {
      const s = tls.connect({ host, port: Number(port), servername: host }, () => { opened.push(s); ok('up'); });
      s.on('error', () => ok('down'));
      s.on('close', () => ok('down'));
    })));
    opened.forEach((s) => s.destroy());
    return `up=${results.filter((r) => r === 'up').length} down=${results.filter((r) => r === 'down').length}`;
  },
  async post() {
    const r = await fetch(`https://${host}:${port}/post`, { method: 'POST', body: Buffer.alloc(Number(extra), 'y') });
    return (await r.json()).received;
  },
  async big() { return (await get(`https://${host}:${port}/big`)).length; },
  async hold() { await new Promise((r) => setTimeout(r, Number(extra))); return 'held'; },
};
modes[mode]().then((o) => console.log(`ok ${o}`), (e) => console.log(`error ${code(e)}`));
"#;

/// A tasks root with `probe` (declaring the test host on `port`) and
/// `offline` (declaring nothing), both running [`PROBE_JS`].
fn probe_root(port: u16) -> tempfile::TempDir {
    let tasks = tempfile::tempdir().unwrap();
    let declared = format!(
        r#"{{"main":"index.js","nautilus":{{"egress":["{}:{port}"]}}}}"#,
        common::https::TEST_HOST
    );
    write(&tasks.path().join("probe"), "package.json", &declared);
    write(&tasks.path().join("probe"), "index.js", PROBE_JS);
    write(&tasks.path().join("offline"), "package.json", "{}");
    write(&tasks.path().join("offline"), "index.js", PROBE_JS);
    tasks
}

fn egress_runner(
    tasks: &Path,
    server: &common::https::HttpsServer,
    limits: task_runner::EgressLimits,
) -> Runner {
    Runner::new(task_runner::RunnerConfig {
        egress: limits,
        egress_connect: Some(std::sync::Arc::new(ToLoopback(server.port))),
        egress_test_ca: Some(server.ca_into(tasks)),
        ..config_in(tasks)
    })
    .unwrap()
}

async fn probe(runner: &Runner, task: &str, args: &[&str]) -> (String, task_runner::TaskResult) {
    let result = run_ok(runner, task, args).await;
    assert_eq!(result.status, "success", "{result:?}");
    (result.stdout.trim().to_owned(), result)
}

#[tokio::test]
async fn a_declared_host_is_reached_over_real_tls_and_accounted() {
    if skip_unless_root("egress through the box's own listeners") {
        return;
    }
    let server = common::https::HttpsServer::start();
    let tasks = probe_root(server.port);
    let runner = egress_runner(tasks.path(), &server, task_runner::EgressLimits::default());
    let port = server.port.to_string();
    let (out, result) = probe(&runner, "probe", &["all", &port]).await;
    let body = out
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{out} {result:?}"));
    let got = json(body);
    assert_eq!(got["fetch"]["hello"], "egress", "{got}");
    assert_eq!(got["get"]["path"], "/data", "{got}");
    assert_eq!(result.egress.len(), 1, "{:?}", result.egress);
    let e = &result.egress[0];
    assert_eq!(
        (e.host.as_str(), e.port),
        (common::https::TEST_HOST, server.port)
    );
    assert!(e.connections >= 1, "{e:?}");
    // Two TLS handshakes and two requests each way, at least.
    assert!(e.bytes_out > 500 && e.bytes_in > 1000, "{e:?}");
    // A task without the field has no network, as before, and an empty list.
    let (out, result) = probe(&runner, "offline", &["all", &port]).await;
    assert!(out.starts_with("error "), "{out}");
    assert!(result.egress.is_empty());
}

#[tokio::test]
async fn everything_not_declared_fails_fast_in_the_box() {
    if skip_unless_root("egress refusals in the box") {
        return;
    }
    let server = common::https::HttpsServer::start();
    let tasks = probe_root(server.port);
    let runner = egress_runner(tasks.path(), &server, task_runner::EgressLimits::default());
    let port = server.port.to_string();
    let other_port = (server.port.wrapping_add(1)).max(1).to_string();
    // A name the host resolves (and reaches) but the task did not declare.
    let (out, _) = probe(
        &runner,
        "probe",
        &["fetch", &port, "https://registry.npmjs.org/"],
    )
    .await;
    assert!(
        out == "error ENOTFOUND" || out == "error EAI_AGAIN",
        "{out}"
    );
    // An IP literal: no route out of the box.
    let (out, _) = probe(&runner, "probe", &["connect", "443", "1.1.1.1"]).await;
    assert_eq!(out, "error ENETUNREACH");
    // The declared host on a port it did not declare.
    let (out, r) = probe(
        &runner,
        "probe",
        &[
            "fetch",
            &port,
            &format!("https://{}:{other_port}/", common::https::TEST_HOST),
        ],
    )
    .await;
    assert_eq!(out, "error ECONNREFUSED", "{r:?}");
    // A DNS server: the host's own, and one on the box's loopback.
    let nameserver = std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("nameserver ").map(|s| s.trim().to_owned()))
        })
        .unwrap_or_else(|| "8.8.8.8".to_owned());
    for server in [nameserver.as_str(), "127.0.0.1"] {
        let (out, _) = probe(&runner, "probe", &["dns", &port, server]).await;
        assert!(out.starts_with("error "), "{server}: {out}");
    }
    assert!(runner.stats().egress_connect_failed == 0);
}

#[tokio::test]
async fn connection_and_byte_caps_hold() {
    if skip_unless_root("egress limits") {
        return;
    }
    let server = common::https::HttpsServer::start();
    let tasks = probe_root(server.port);
    let limits = task_runner::EgressLimits {
        max_connections: 2,
        max_bytes_out: 256 * 1024,
        max_bytes_in: 256 * 1024,
        connect_timeout_secs: 5,
    };
    let runner = egress_runner(tasks.path(), &server, limits);
    let port = server.port.to_string();
    let (out, result) = probe(&runner, "probe", &["many", &port, "4"]).await;
    assert_eq!(out, "ok up=2 down=2", "{result:?}");
    assert_eq!(result.egress[0].connections, 2, "{result:?}");
    assert_eq!(runner.stats().egress_refused_connections, 2);
    // Within the caps, then past them each way.
    let (out, _) = probe(&runner, "probe", &["post", &port, "100000"]).await;
    assert_eq!(out, "ok 100000");
    let (out, result) = probe(&runner, "probe", &["post", &port, "1000000"]).await;
    assert!(out.starts_with("error "), "{out}");
    assert!(result.egress[0].bytes_out <= 256 * 1024, "{result:?}");
    let (out, result) = probe(&runner, "probe", &["big", &port]).await;
    assert!(out.starts_with("error ") || out != "ok 1048576", "{out}");
    assert!(result.egress[0].bytes_in <= 256 * 1024, "{result:?}");
    assert_eq!(runner.stats().egress_refused_bytes, 2);
}

#[tokio::test]
async fn a_boxs_listeners_are_unreachable_from_another_box() {
    if skip_unless_root("egress listeners per box") {
        return;
    }
    let server = common::https::HttpsServer::start();
    let tasks = probe_root(server.port);
    let runner = egress_runner(tasks.path(), &server, task_runner::EgressLimits::default());
    let port = server.port.to_string();
    let holder = runner.clone();
    let held = tokio::spawn(async move { probe(&holder, "probe", &["hold", "0", "4000"]).await });
    // Its listeners are bound before its code starts, within a second of its slot.
    for _ in 0..100 {
        if runner.stats().running == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(runner.stats().running, 1, "the holding task started");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // The holder's listener is on 127.0.0.2 in its own namespace only.
    let (out, _) = probe(&runner, "offline", &["connect", &port, "127.0.0.2"]).await;
    assert_eq!(out, "error ECONNREFUSED");
    assert_eq!(held.await.unwrap().0, "ok held");
}

/// The repository's example, `fetch-task`, as written: its `fetch` of
/// Open-Meteo goes to a stand-in with the same name (test CA).
#[tokio::test]
async fn the_fetch_task_example_prints_the_temperature() {
    if skip_unless_root("egress through the box's own listeners") {
        return;
    }
    let server = common::https::HttpsServer::start_for(&["api.open-meteo.com"]);
    let ca_dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(task_runner::RunnerConfig {
        egress_connect: Some(std::sync::Arc::new(ToLoopback(server.port))),
        egress_test_ca: Some(server.ca_into(ca_dir.path())),
        ..config_in(repo_root())
    })
    .unwrap();
    let result = run_ok(&runner, "fetch-task", &["48.85", "2.35"]).await;
    assert_eq!(result.status, "success", "{result:?}");
    let printed = json(&result.stdout);
    assert_eq!(printed["temperature_2m"], 21.5, "{printed}");
    assert_eq!(printed["latitude"], "48.85");
    let e = &result.egress;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].host.as_str(), e[0].port), ("api.open-meteo.com", 443));
    // A bad argument never reaches the network.
    let result = run_ok(&runner, "fetch-task", &["91", "0"]).await;
    assert_eq!(result.exit_code, Some(2), "{result:?}");
    assert!(result.egress.is_empty());
}

/// axios, installed from npm by its lockfile (`npm ci`, cached under
/// `~/.cache/nautilus/npm-cache`), reaches the declared host unmodified.
#[tokio::test]
async fn axios_from_npm_reaches_the_declared_host() {
    if skip_unless_root("egress through the box's own listeners") {
        return;
    }
    let server = common::https::HttpsServer::start();
    let tasks = tempfile::tempdir().unwrap();
    let task = tasks.path().join("axios-task");
    std::fs::create_dir(&task).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axios-task");
    for f in ["package-lock.json", "index.js"] {
        std::fs::copy(fixture.join(f), task.join(f)).unwrap();
    }
    let mut package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("package.json")).unwrap()).unwrap();
    package["nautilus"] = serde_json::json!({
        "egress": [format!("{}:{}", common::https::TEST_HOST, server.port)]
    });
    std::fs::write(task.join("package.json"), package.to_string()).unwrap();
    let cache = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/root".into())
        .join(".cache/nautilus/npm-cache");
    let installed = std::process::Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
        ])
        .arg("--cache")
        .arg(&cache)
        .current_dir(&task)
        .output();
    match installed {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "npm ci failed (it needs the npm registry the first time): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            skip_report::skipped(
                "axios_from_npm_reaches_the_declared_host",
                &format!("no npm: {e}"),
            );
            return;
        }
    }
    let runner = egress_runner(tasks.path(), &server, task_runner::EgressLimits::default());
    let url = format!("https://{}:{}/axios", common::https::TEST_HOST, server.port);
    let result = run_ok(&runner, "axios-task", &[&url]).await;
    assert_eq!(result.stdout.trim(), "ok egress", "{result:?}");
    assert_eq!(result.egress.len(), 1, "{result:?}");
    assert!(result.egress[0].bytes_in > 0);
}
