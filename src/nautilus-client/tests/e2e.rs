//! End to end: the `nautilus-client` binary against a real dev-mode server,
//! directly and through a relay that tampers with the traffic.

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use nautilus_client::{
    Client, ClientError, Policy, ResultError, SignedTaskResult, Signing, TaskSpec, TrustedRoot,
};
use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    tokio::spawn(bound.serve(Arc::clone(&state), std::future::pending()));
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
    /// Changes one byte of `/manifest`.
    Manifest,
    /// Answers every `/process_data` after the first with the first answer.
    Replay,
    /// Answers `/process_data` with a 500 whose message holds line breaks,
    /// terminal escape sequences and a thousand more characters.
    HostileError,
    /// Answers `/process_data` with 503 and `Retry-After: 7`.
    Busy,
}

/// Multi-line, colour-changing, screen-clearing: what a hostile server
/// might put in an error message.
const HOSTILE_MESSAGE: &str =
    "boom\nerror: none, result verified \u{1b}[2J\u{1b}[32mOK\u{1b}[0m\r\n";

async fn start_relay(upstream: String, tamper: Tamper) -> String {
    let http = reqwest::Client::new();
    let first_result: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let relay = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let http = http.clone();
            let upstream = upstream.clone();
            let first_result = Arc::clone(&first_result);
            async move {
                let path = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_owned();
                let endpoint = path.split('?').next().unwrap_or_default().to_owned();
                match (tamper, endpoint.as_str()) {
                    (Tamper::HostileError, "/process_data") => {
                        let message = format!("{HOSTILE_MESSAGE}{}", "x".repeat(1000));
                        return (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(serde_json::json!({ "error": message })),
                        )
                            .into_response();
                    }
                    (Tamper::Busy, "/process_data") => {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "7")],
                            axum::Json(serde_json::json!({ "error": "all task slots are busy" })),
                        )
                            .into_response();
                    }
                    _ => {}
                }
                let mut body = body.to_vec();
                if matches!(tamper, Tamper::DropNonce) && endpoint == "/process_data" {
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
                match (tamper, endpoint.as_str()) {
                    (Tamper::Stdout, "/process_data") => {
                        let mut v = json();
                        // The compact form carries the text beside the signed message.
                        if v.get("stdout").is_some() {
                            v["stdout"] = Value::from("✅ Result: 42\n");
                        } else {
                            v["response"]["data"]["stdout"] = Value::from("✅ Result: 42\n");
                        }
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
                    (Tamper::Manifest, "/manifest") => {
                        // Still valid JSON: only the attested hash can tell.
                        let at = bytes
                            .windows(5)
                            .position(|w| w == b"\"dev\"")
                            .expect("dev-mode manifest");
                        bytes[at + 3] = b'w';
                    }
                    (Tamper::Replay, "/process_data") => {
                        let mut first = first_result.lock().expect("lock");
                        match &*first {
                            Some(old) => bytes.clone_from(old),
                            None => *first = Some(bytes.clone()),
                        }
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

/// A raw TCP server for misbehaviour no HTTP framework produces: passes its
/// first connection to `handle`. Gives up after 30 s without a connection,
/// and stops `handle` after 60 s.
async fn start_raw_server<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
        {
            let _ = tokio::time::timeout(Duration::from_secs(60), handle(stream)).await;
        }
    });
    addr
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
    // The rejection names the flag a dev server needs.
    assert!(
        stderr(&no_root).contains("not the trusted root")
            && stderr(&no_root).contains("--root out/dev-root.pem"),
        "{}",
        stderr(&no_root)
    );
    // One line: the reason and the fix.
    assert_eq!(
        stderr(&no_root).trim_end().lines().count(),
        1,
        "{}",
        stderr(&no_root)
    );
    // Another dev server's root (as after a restart of `make run`).
    let other = start_server().await;
    let wrong_root = cli(run_args(&s.base, Some(other.root_pem.path()), true)).await;
    assert_eq!(wrong_root.status.code(), Some(2));
    assert!(
        stderr(&wrong_root).contains("not the trusted root")
            && stderr(&wrong_root).contains("--dev-root-out"),
        "{}",
        stderr(&wrong_root)
    );

    let no_debug = cli(run_args(&s.base, Some(root), false)).await;
    assert_eq!(no_debug.status.code(), Some(2));
    assert!(
        stderr(&no_debug).contains("debug-mode") && stderr(&no_debug).contains("`--allow-debug`"),
        "{}",
        stderr(&no_debug)
    );

    // --compact: the digests are signed, the texts come beside them.
    let mut compact = run_args(&s.base, Some(root), true);
    compact.insert(1, "--compact".into());
    let compact = cli(compact).await;
    assert_eq!(
        compact.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&compact)
    );
    let v: Value = serde_json::from_slice(&compact.stdout).expect("one JSON object");
    assert_eq!(v["response"]["intent"], 1);
    assert!(
        v["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains(r#""sum":6"#),
        "{v}"
    );
    assert_eq!(
        v["response"]["data"]["stdout_sha256"]
            .as_str()
            .map(str::len),
        Some(64)
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
        (Tamper::Manifest, "manifest does not match the attestation"),
        (
            Tamper::HostileError,
            "answered HTTP 500: boom\\nerror: none",
        ),
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
        // Exactly one line, and nothing a terminal would act on (ESC, CR).
        let line = err.strip_suffix('\n').unwrap_or(&err);
        assert!(
            !line.chars().any(char::is_control),
            "{tamper:?}: one printable line of reason: {err:?}"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_a_hostile_error_message_escaped_and_shortened() {
    let s = start_server().await;
    let relay = start_relay(s.base.clone(), Tamper::HostileError).await;
    let out = cli(run_args(&relay, Some(s.root_pem.path()), true)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.contains(&0x1b), "raw ESC reached the terminal");
    let err = stderr(&out);
    assert!(
        err.contains(r"result verified \u{1b}[2J\u{1b}[32mOK\u{1b}[0m\r\nxxx"),
        "{err}"
    );
    // The server sent over 1,000 characters; the message keeps 300.
    let message = err.split("answered HTTP 500: ").nth(1).expect("message");
    assert_eq!(message.trim_end().chars().count(), 301, "{message}");
    assert!(message.trim_end().ends_with('…'), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_a_replayed_result() {
    let s = start_server().await;
    let root = s.root_pem.path();
    let relay = start_relay(s.base.clone(), Tamper::Replay).await;

    let first = cli(run_args(&relay, Some(root), true)).await;
    assert_eq!(first.status.code(), Some(0), "stderr: {}", stderr(&first));

    // Same request, so only the nonce tells the old answer from a new one.
    let replayed = cli(run_args(&relay, Some(root), true)).await;
    assert_eq!(replayed.status.code(), Some(2), "replay accepted");
    assert!(replayed.stdout.is_empty());
    let err = stderr(&replayed);
    let v: Value = serde_json::from_slice(&first.stdout).expect("json");
    let old_nonce = v["response"]["data"]["nonce"].as_str().expect("nonce");
    assert!(
        err.contains("signed nonce is") && err.contains(old_nonce),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_client_names_each_binding_failure() {
    let s = start_server().await;
    let root = || TrustedRoot::from_pem(s.state.dev_root_pem().expect("pem")).expect("root");
    let policy = || Policy::default().allow_debug(true);

    let relay = start_relay(s.base.clone(), Tamper::Manifest).await;
    let err = Client::connect(&relay, root(), policy())
        .await
        .expect_err("altered manifest");
    assert!(
        matches!(&err, ClientError::ManifestMismatch { expected, got } if expected != got),
        "{err}"
    );

    let relay = start_relay(s.base.clone(), Tamper::Busy).await;
    let client = Client::connect(&relay, root(), policy())
        .await
        .expect("attests through a relay that only refuses tasks");
    let err = client
        .run_task(&TaskSpec::new("nodejs-task"))
        .await
        .expect_err("busy");
    assert!(
        matches!(
            &err,
            ClientError::Status { status: 503, retry_after: Some(d), .. } if *d == Duration::from_secs(7)
        ),
        "{err:?}"
    );
    assert!(err.to_string().ends_with("retry after 7 s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_client_verifies_the_compact_form_and_its_texts() {
    let s = start_server().await;
    let root = || TrustedRoot::from_pem(s.state.dev_root_pem().expect("pem")).expect("root");
    let policy = || Policy::default().allow_debug(true);
    let spec = TaskSpec::new("nodejs-task")
        .args(["5"])
        .signing(Signing::Compact);

    let client = Client::connect(&s.base, root(), policy())
        .await
        .expect("attests");
    let r = client
        .run_task(&spec)
        .await
        .expect("verified compact result");
    let SignedTaskResult::Compact(compact) = r.signed() else {
        panic!("asked for the compact form, got {:?}", r.signed());
    };
    assert_eq!(compact.response.intent, 1);
    assert!(
        r.data().stdout.contains("✅ Result:"),
        "{}",
        r.data().stdout
    );
    assert_eq!(compact.stdout, r.data().stdout);
    assert_eq!(
        compact.response.data.stdout_len,
        r.data().stdout.len() as u64
    );
    let signed_len = compact.response.signing_bytes().expect("bcs").len();
    assert!(signed_len < 1024, "compact message is {signed_len} bytes");

    // A relay that changes the returned text: the signed digest no longer matches.
    let relay = start_relay(s.base.clone(), Tamper::Stdout).await;
    let client = Client::connect(&relay, root(), policy())
        .await
        .expect("attests");
    let err = client.run_task(&spec).await.expect_err("altered stdout");
    assert!(
        matches!(
            &err,
            ClientError::Result(ResultError::Signature(
                result_signing::Error::OutputMismatch { stream: "stdout" }
            ))
        ),
        "{err:?}"
    );
    // And a full result where a compact one was asked for is refused.
    let client = Client::connect(&s.base, root(), policy())
        .await
        .expect("attests");
    let full = client
        .run_task(&TaskSpec::new("nodejs-task"))
        .await
        .expect("full form");
    assert!(matches!(full.signed(), SignedTaskResult::Full(_)));
}

/// Reads an HTTP request head (up to 64 KiB), ignoring what it says.
async fn read_request_head(stream: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn an_oversized_attestation_response_is_cut_off_at_the_cap() {
    let (hung_up_tx, hung_up_rx) = tokio::sync::oneshot::channel();
    let addr = start_raw_server(|mut stream| async move {
        read_request_head(&mut stream).await;
        let mut body = br#"{"attestation":""#.to_vec();
        body.resize(300 * 1024, b'a');
        // Chunked, so no Content-Length warns the client, and without the
        // last chunk: the body never ends, so only a client that stops
        // reading at its cap can return TooLarge instead of timing out.
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let chunk = [format!("{:x}\r\n", body.len()).as_bytes(), &body, b"\r\n"].concat();
        // The client may hang up while this is still being written.
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&chunk).await;
        let mut buf = [0u8; 1];
        let hung_up = matches!(stream.read(&mut buf).await, Ok(0) | Err(_));
        let _ = hung_up_tx.send(hung_up);
    })
    .await;

    let err = tokio::time::timeout(
        Duration::from_secs(20),
        Client::connect(
            &format!("http://{addr}"),
            TrustedRoot::aws_nitro().expect("root"),
            Policy::default(),
        ),
    )
    .await
    .expect("the client gave up at its cap instead of waiting for the end")
    .expect_err("oversized");
    assert!(
        matches!(
            err,
            ClientError::TooLarge {
                what: "attestation response",
                limit: 262_144,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(hung_up_rx.await, Ok(true), "client closed the connection");
}

#[tokio::test]
async fn https_urls_speak_tls() {
    let (hello_tx, hello_rx) = tokio::sync::oneshot::channel();
    let addr = start_raw_server(|mut stream| async move {
        // Record header (5 bytes) and the handshake message type.
        let mut head = [0u8; 6];
        let got = stream.read_exact(&mut head).await.ok().map(|_| head);
        let _ = hello_tx.send(got);
    })
    .await;

    let err = Client::connect(
        &format!("https://{addr}"),
        TrustedRoot::aws_nitro().expect("root"),
        Policy::default(),
    )
    .await
    .expect_err("no TLS server answers");
    assert!(matches!(err, ClientError::Http { .. }), "{err:?}");
    let head = hello_rx
        .await
        .expect("server saw a connection")
        .expect("client sent a record");
    assert_eq!(head[0], 0x16, "TLS handshake record: {head:02x?}");
    assert_eq!(head[1], 0x03, "TLS version major: {head:02x?}");
    assert_eq!(head[5], 0x01, "ClientHello: {head:02x?}");
}
