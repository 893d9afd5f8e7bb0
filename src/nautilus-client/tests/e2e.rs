//! End to end: the `nautilus-client` binary against a real dev-mode server,
//! directly and through a relay that tampers with the traffic.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use nautilus_client::{Client, ClientError, Policy, TaskSpec, TrustedRoot};
use nautilus_server::router::router;
use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use serde_json::Value;

struct Server {
    base: String,
    root_pem: tempfile::NamedTempFile,
    state: Arc<AppState>,
}

async fn start_server() -> Server {
    let mut config = ServerConfig::dev();
    config.runner.tasks_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state = Arc::new(AppState::new(config).expect("server state"));
    let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let Listen::Tcp(addr) = bound.local_addr().expect("addr") else {
        unreachable!("tcp")
    };
    tokio::spawn(bound.serve(router(Arc::clone(&state)), std::future::pending()));
    let root_pem = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(root_pem.path(), state.dev_root_pem().expect("dev root")).expect("write pem");
    Server {
        base: format!("http://{addr}"),
        root_pem,
        state,
    }
}

/// How the relay corrupts traffic between client and server.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    Stdout,
    Signature,
    Attestation,
    DropNonce,
}

async fn start_relay(upstream: String, tamper: Tamper) -> String {
    let http = reqwest::Client::new();
    let relay = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let http = http.clone();
            let upstream = upstream.clone();
            async move {
                let path = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_owned();
                let mut body = body.to_vec();
                if matches!(tamper, Tamper::DropNonce) && path == "/process_data" {
                    let mut v: Value = serde_json::from_slice(&body).expect("request json");
                    v["payload"]
                        .as_object_mut()
                        .expect("payload")
                        .remove("nonce");
                    body = serde_json::to_vec(&v).expect("json");
                }
                let mut req = http.request(method, format!("{upstream}{path}")).body(body);
                if let Some(ct) = headers.get("content-type") {
                    req = req.header("content-type", ct);
                }
                let resp = req.send().await.expect("upstream answered");
                let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
                let mut bytes = resp.bytes().await.expect("upstream body").to_vec();
                let json = || serde_json::from_slice::<Value>(&bytes).expect("json");
                match (tamper, path.split('?').next().unwrap_or_default()) {
                    (Tamper::Stdout, "/process_data") => {
                        let mut v = json();
                        v["response"]["data"]["stdout"] = Value::from("✅ Result: 42\n");
                        bytes = serde_json::to_vec(&v).expect("json");
                    }
                    (Tamper::Signature, "/process_data") => {
                        let mut v = json();
                        let sig = v["signature"].as_str().expect("sig").to_owned();
                        let flipped = if sig.starts_with('0') { "1" } else { "0" };
                        v["signature"] = Value::from(format!("{flipped}{}", &sig[1..]));
                        bytes = serde_json::to_vec(&v).expect("json");
                    }
                    (Tamper::Attestation, "/get_attestation") => {
                        let mut v = json();
                        let mut doc =
                            hex::decode(v["attestation"].as_str().expect("doc")).expect("hex");
                        // Inside the payload, well past the headers.
                        let i = doc.len() / 2;
                        doc[i] ^= 0x01;
                        v["attestation"] = Value::from(hex::encode(doc));
                        bytes = serde_json::to_vec(&v).expect("json");
                    }
                    _ => {}
                }
                (status, [("content-type", "application/json")], bytes).into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, relay).await });
    format!("http://{addr}")
}

async fn cli(args: Vec<String>) -> Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("client finished in time")
    .expect("client ran")
}

fn run_args(url: &str, root: Option<&std::path::Path>, allow_debug: bool) -> Vec<String> {
    let mut a = vec!["run".into(), "--url".into(), url.into()];
    if let Some(root) = root {
        a.extend(["--root".into(), root.display().to_string()]);
    }
    if allow_debug {
        a.push("--allow-debug".into());
    }
    a.extend(["--".into(), "1".into(), "2".into(), "3".into()]);
    a
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_a_verified_task_only_with_the_dev_root_and_debug_consent() {
    let s = start_server().await;
    let root = s.root_pem.path();

    let ok = cli(run_args(&s.base, Some(root), true)).await;
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", stderr(&ok));
    let v: Value = serde_json::from_slice(&ok.stdout).expect("one JSON object");
    let data = &v["response"]["data"];
    assert_eq!(data["task_path"], "nodejs-task");
    assert_eq!(data["args"], serde_json::json!(["1", "2", "3"]));
    assert!(
        data["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains(r#""sum":6"#),
        "{data}"
    );
    assert_eq!(
        data["nonce"].as_str().map(str::len),
        Some(64),
        "fresh 32-byte nonce"
    );

    let no_root = cli(run_args(&s.base, None, true)).await;
    assert_eq!(no_root.status.code(), Some(2));
    assert!(
        stderr(&no_root).contains("not the trusted root"),
        "{}",
        stderr(&no_root)
    );

    let no_debug = cli(run_args(&s.base, Some(root), false)).await;
    assert_eq!(no_debug.status.code(), Some(2));
    assert!(
        stderr(&no_debug).contains("debug-mode"),
        "{}",
        stderr(&no_debug)
    );

    // A task that ran and failed is still a verified answer: exit 1.
    let mut failing = run_args(&s.base, Some(root), true);
    failing.push("not-a-number".into());
    let failed = cli(failing).await;
    assert_eq!(failed.status.code(), Some(1), "stderr: {}", stderr(&failed));
    let v: Value = serde_json::from_slice(&failed.stdout).expect("json");
    assert_eq!(v["response"]["data"]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_every_tampering_relay() {
    let s = start_server().await;
    let root = s.root_pem.path();
    for (tamper, reason) in [
        (Tamper::Stdout, "signature does not verify"),
        (Tamper::Signature, "signature"),
        (Tamper::Attestation, "attestation document rejected"),
        (Tamper::DropNonce, "nonce"),
    ] {
        let relay = start_relay(s.base.clone(), tamper).await;
        let out = cli(run_args(&relay, Some(root), true)).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{tamper:?} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = stderr(&out);
        assert!(err.contains(reason), "{tamper:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line of reason: {err}");
        assert!(
            out.stdout.is_empty(),
            "nothing printed as verified for {tamper:?}"
        );
    }
}

#[tokio::test]
async fn library_client_checks_the_manifest_and_unknown_tasks() {
    let s = start_server().await;
    let root = TrustedRoot::from_pem(s.state.dev_root_pem().expect("pem")).expect("root");
    let client = Client::connect(&s.base, root, Policy::default().allow_debug(true))
        .await
        .expect("attests");
    assert_eq!(client.manifest().attestation_mode(), "dev");
    assert!(client.manifest().task("./nodejs-task").is_some());
    assert_eq!(
        nautilus_client::result::normalize_task_path("./nodejs-task"),
        "nodejs-task"
    );

    let r = client
        .run_task(&TaskSpec::new("./nodejs-task").args(["5"]).stdin("ignored"))
        .await
        .expect("verified result");
    assert_eq!(r.data().status, "success");
    assert_eq!(
        Some(r.data().task_digest.as_str()),
        client
            .manifest()
            .task("nodejs-task")
            .map(|t| t.task_digest.as_str())
    );

    let err = client
        .run_task(&TaskSpec::new("missing"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, ClientError::UnknownTask(_)), "{err}");

    // The attest subcommand prints the verified document and the manifest.
    let out = cli(vec![
        "attest".into(),
        "--url".into(),
        s.base.clone(),
        "--root".into(),
        s.root_pem.path().display().to_string(),
        "--allow-debug".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["attestation"]["module_id"]
        .as_str()
        .unwrap_or_default()
        .starts_with("dev-"));
    assert_eq!(v["attestation"]["debug"], true);
    assert_eq!(v["manifest"]["attestation"], "dev");
}
