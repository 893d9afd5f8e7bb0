//! `/process_data` over a real socket: signed results, nonces, load shedding,
//! and the task's isolation from the server.

mod support;

use std::time::Duration;

use result_signing::{
    decode_public_key, CompactSignedResponse, SignedResponse, TaskResult, INTENT_TASK_RESULT,
    INTENT_TASK_RESULT_COMPACT,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{config, expect_error, repo_root, TestServer};

async fn server_key(s: &TestServer) -> result_signing::VerifyingKey {
    let health: serde_json::Value = s.get_json("/health_check").await;
    let pk = hex::decode(health["pk"].as_str().expect("pk")).expect("hex");
    assert_eq!(pk.len(), 33, "compressed SEC1");
    decode_public_key(&pk).expect("P-256 point")
}

#[tokio::test]
async fn the_seed_example_runs_nodejs_task_and_is_signed() {
    let mut c = config();
    c.runner.tasks_dir = repo_root();
    let s = TestServer::start(c).await;
    let key = server_key(&s).await;

    // Verbatim: curl -X POST .../process_data -H "Content-Type: application/json" -d '{"payload": {}}'
    let resp = s
        .http
        .post(s.url("/process_data"))
        .header("Content-Type", "application/json")
        .body(r#"{"payload": {}}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let signed: SignedResponse<TaskResult> = resp.json().await.expect("signed response");
    signed
        .verify(&key, INTENT_TASK_RESULT)
        .expect("signature verifies");
    let d = &signed.response.data;
    assert_eq!(d.task_path, "nodejs-task");
    assert_eq!(d.status, "success");
    assert_eq!(d.exit_code, Some(0));
    assert!(d.stdout.contains("🚀 Task starting..."), "{}", d.stdout);
    assert!(d.stdout.contains("✅ Result:"), "{}", d.stdout);
    assert_eq!(d.nonce, None);
    assert_eq!(d.stdin_sha256, None);

    // The signed digest is the one the attested manifest announces.
    let manifest: serde_json::Value = s.get_json("/manifest").await;
    let listed = manifest["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_path"] == "nodejs-task")
        .expect("nodejs-task in manifest");
    assert_eq!(listed["task_digest"], d.task_digest.as_str());
    s.shutdown().await;
}

#[tokio::test]
async fn args_stdin_and_nonce_are_signed_and_echoed() {
    let s = TestServer::start(config()).await;
    let key = server_key(&s).await;
    let resp = s
        .process(
            json!({"task_path": "echo", "args": ["a b", "c"], "stdin": "hello", "nonce": "00FFaa"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let signed: SignedResponse<TaskResult> = resp.json().await.expect("signed");
    signed.verify(&key, INTENT_TASK_RESULT).expect("verifies");
    let d = &signed.response.data;
    assert_eq!(
        d.nonce.as_deref(),
        Some("00ffaa"),
        "nonce echoed lower-case"
    );
    assert_eq!(d.args, ["a b", "c"]);
    assert_eq!(
        d.stdin_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(b"hello")).as_str())
    );
    let echoed: serde_json::Value = serde_json::from_str(d.stdout.trim()).expect("echo output");
    assert_eq!(echoed, json!({"args": ["a b", "c"], "stdin": "hello"}));
    assert_eq!(d.stderr, "echo done\n");

    // The longest task nonce, 64 bytes, is accepted and echoed.
    let long = "ab".repeat(64);
    let resp = s.process(json!({"task_path": "echo", "nonce": long})).await;
    assert_eq!(resp.status(), 200);
    let echoed: SignedResponse<TaskResult> = resp.json().await.expect("signed");
    assert_eq!(echoed.response.data.nonce.as_deref(), Some(long.as_str()));

    // A relay that drops or changes the nonce breaks the signature.
    let mut tampered = signed.clone();
    tampered.response.data.nonce = None;
    assert!(tampered.verify(&key, INTENT_TASK_RESULT).is_err());
    s.shutdown().await;
}

#[tokio::test]
async fn compact_signing_signs_the_digests_and_returns_the_texts() {
    let mut c = config();
    c.runner.tasks_dir = repo_root();
    let s = TestServer::start(c).await;
    let key = server_key(&s).await;

    let resp = s
        .process(json!({"args": ["7"], "nonce": "0a0b", "signing": "compact"}))
        .await;
    assert_eq!(resp.status(), 200);
    let signed: CompactSignedResponse = resp.json().await.expect("compact response");
    assert_eq!(signed.response.intent, INTENT_TASK_RESULT_COMPACT);
    let full = signed.verify(&key).expect("signature and texts verify");
    let d = &signed.response.data;
    assert!(signed.stdout.contains("✅ Result:"), "{}", signed.stdout);
    assert_eq!(
        d.stdout_sha256,
        hex::encode(Sha256::digest(signed.stdout.as_bytes()))
    );
    assert_eq!(d.stdout_len, signed.stdout.len() as u64);
    assert_eq!(d.stderr_len, signed.stderr.len() as u64);
    assert_eq!(d.nonce.as_deref(), Some("0a0b"));
    assert_eq!(full.data.compact(), *d);
    // A typical result's signed message is far below one Sui argument (16 KiB).
    let bytes = signed.response.signing_bytes().expect("bcs");
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    assert_eq!(bytes[0], 1, "intent byte");

    // The default and "full" are the whole result, as before.
    for payload in [json!({}), json!({"signing": "full"})] {
        let resp = s.process(payload).await;
        assert_eq!(resp.status(), 200);
        let full: SignedResponse<TaskResult> = resp.json().await.expect("full response");
        full.verify(&key, INTENT_TASK_RESULT).expect("verifies");
    }
    // Anything else is refused before a task runs, saying what is accepted.
    let e = expect_error(s.process(json!({"signing": "tiny"})).await, 400).await;
    let e = e["error"].as_str().unwrap_or_default().to_owned();
    assert!(e.contains("full") && e.contains("compact"), "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn failing_task_is_a_signed_failure_not_an_http_error() {
    let mut c = config();
    c.runner.tasks_dir = repo_root();
    let s = TestServer::start(c).await;
    let resp = s.process(json!({"args": ["not-a-number"]})).await;
    assert_eq!(resp.status(), 200);
    let signed: SignedResponse<TaskResult> = resp.json().await.expect("signed");
    signed
        .verify(&server_key(&s).await, INTENT_TASK_RESULT)
        .expect("verifies");
    assert_eq!(signed.response.data.status, "failed");
    assert_eq!(signed.response.data.exit_code, Some(1));
    assert!(signed.response.data.stderr.contains("❌ Error:"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_task_cannot_reach_into_the_server_process() {
    if !nix_is_root() {
        skip_report::skipped(
            "a_task_cannot_reach_into_the_server_process",
            "needs root (tasks then run under another uid)",
        );
        return;
    }
    nautilus_server::state::harden_process().expect("non-dumpable, like the binary");
    let s = TestServer::start(config()).await;
    let pid = std::process::id().to_string();
    let resp = s
        .process(json!({"task_path": "probe", "args": [pid]}))
        .await;
    assert_eq!(resp.status(), 200);
    let signed: SignedResponse<TaskResult> = resp.json().await.expect("signed");
    let seen: serde_json::Value =
        serde_json::from_str(signed.response.data.stdout.trim()).expect("probe output");
    for what in ["environ", "mem", "signal"] {
        assert_ne!(
            seen[what], "allowed",
            "task could access the server's {what}: {seen}"
        );
    }
    // The task's /proc belongs to its own PID namespace: the server is not
    // even there, and no pid outside the box can be signalled.
    for what in ["environ", "mem"] {
        assert_eq!(seen[what], "ENOENT", "{what}: {seen}");
    }
    assert_eq!(seen["signal"], "ESRCH", "{seen}");
    s.shutdown().await;
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn health_manifest_and_ping() {
    let s = TestServer::start(config()).await;
    let pong = s.get("/").await.text().await.expect("text");
    assert_eq!(pong, "Pong!");

    let h: serde_json::Value = s.get_json("/health_check").await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["attestation"], "dev");
    assert_eq!(h["tasks"], 4);
    assert!(
        h["node_version"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "{h}"
    );
    assert_eq!(h["running"], 0);
    assert_eq!(h["queued"], 0);

    let a = s.get_bytes("/manifest").await;
    let b = s.get_bytes("/manifest").await;
    assert_eq!(a, b, "manifest is byte-stable");
    assert_eq!(Sha256::digest(&a)[..], s.state.manifest().sha256()[..]);
    let m: serde_json::Value = serde_json::from_slice(&a).expect("json");
    assert_eq!(m["attestation"], "dev");
    let paths: Vec<_> = m["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_path"].clone())
        .collect();
    assert_eq!(
        paths,
        [json!("echo"), json!("probe"), json!("sleep"), json!("spin")]
    );
    assert_eq!(m["limits"]["max_body_bytes"], 2 * 1024 * 1024);
    // The isolation in force is attested (manifest) and reported (health).
    assert_eq!(m["isolation"], h["isolation"]);
    let expected_mode = if nix_is_root() {
        "root"
    } else {
        "unprivileged"
    };
    assert_eq!(m["isolation"]["mode"], expected_mode, "{m}");
    if nix_is_root() {
        assert_eq!(
            m["isolation"]["namespaces"],
            json!(["mount", "ipc", "net", "uts", "pid", "cgroup"])
        );
        assert_eq!(m["isolation"]["network"], "loopback-only");
        // Whether a task can lower its OOM score is said (issue 23, finding 8).
        assert_eq!(
            m["isolation"]["oom_score_floor"].as_bool(),
            Some(m["isolation"]["missing"] == json!([])),
            "{m}"
        );
    }
    let metrics = s.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("\nnautilus_task_cleanup_failures_total 0\n"),
        "{metrics}"
    );
    // The per-task cgroup limits in force are attested and reported alike.
    let cgroups = serde_json::to_value(s.state.runner().cgroups()).expect("json");
    assert_eq!(m["cgroups"], cgroups);
    assert_eq!(h["cgroups"], cgroups);
    // Every feature the runner uses is listed, probed one by one, and those
    // the kernel lacks are named in `missing`.
    let features = m["cgroups"]["features"].as_array().expect("features");
    let names: Vec<&str> = features.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "memory.max",
            "memory.swap.max",
            "memory.oom.group",
            "pids.max",
            "cpu.weight",
            "clone-into-cgroup"
        ],
        "{cgroups}"
    );
    let missing: Vec<&serde_json::Value> = features
        .iter()
        .filter(|f| f["available"] == false)
        .map(|f| &f["name"])
        .collect();
    assert_eq!(m["cgroups"]["missing"], json!(missing), "{cgroups}");
    assert!(
        features
            .iter()
            .all(|f| f["detail"].as_str().is_some_and(|d| !d.is_empty())),
        "{cgroups}"
    );
    // What the limits say and what the features say agree.
    let in_force = |n: &str| {
        features
            .iter()
            .any(|f| f["name"] == n && f["in_force"] == true)
    };
    assert_eq!(
        in_force("memory.max"),
        !cgroups["memory_max_bytes"].is_null()
    );
    assert_eq!(in_force("pids.max"), !cgroups["pids_max"].is_null());
    assert_eq!(
        in_force("cpu.weight"),
        !cgroups["slot_cpu_weight"].is_null()
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // This host and the enclave both have the three controllers.
        assert_eq!(
            cgroups["controllers"],
            json!(["memory", "pids", "cpu"]),
            "{cgroups}"
        );
    } else {
        eprintln!("SKIPPED (needs root): cgroup controllers in force");
        assert_eq!(cgroups["version"], "none");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_query_parameters_are_rejected() {
    let s = TestServer::start(config()).await;
    let resp = s.get("/get_attestation?public_key=00").await;
    expect_error(resp, 400).await;
    let resp = s.get("/get_attestation?user_data=00").await;
    expect_error(resp, 400).await;
    s.shutdown().await;
}

#[tokio::test]
async fn responses_carry_a_request_id_and_cors_is_opt_in() {
    let mut c = config();
    c.cors_origins = vec![axum::http::HeaderValue::from_static("https://app.example")];
    let s = TestServer::start(c).await;
    let resp = s.get("/health_check").await;
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "request id {id:?}");

    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/process_data"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("answered");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let other = preflight("https://evil.example").await.expect("answered");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    s.shutdown().await;

    // Without configured origins there are no CORS headers at all.
    let s = TestServer::start(config()).await;
    let resp = s
        .http
        .get(s.url("/health_check"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("answered");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    s.shutdown().await;
}

/// The JavaScript verifier (the `clients/js` package) rebuilds the same bytes
/// as the server for a live answer with non-ASCII output, stdin and a nonce,
/// in both signed forms, and refuses an altered text in either.
#[tokio::test]
async fn the_js_verifier_accepts_live_responses() {
    let s = TestServer::start(config()).await;
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/lib/node.js");
    for signing in ["full", "compact"] {
        let resp = s
            .process(json!({"task_path": "echo", "args": ["ünïcødé 🚀", ""], "stdin": "x\ny", "nonce": "0a0b", "signing": signing}))
            .await;
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.expect("body");
        // The stdout to alter: beside the message in the compact form, inside it otherwise.
        let script = format!(
            "const v = await import({verifier:?}); let s = ''; process.stdin.on('data', c => s += c); \
             process.stdin.on('end', async () => {{ await v.verifySignedResponse(JSON.parse(s), process.argv[1]); \
             const t = JSON.parse(s); if ('stdout' in t) t.stdout += '!'; else t.response.data.stdout += '!'; \
             try {{ await v.verifySignedResponse(t, process.argv[1]); process.exit(3); }} catch (e) {{ console.log('ok'); }} }});"
        );
        let mut child = tokio::process::Command::new("node")
            .args([
                "--input-type=module",
                "-e",
                &script,
                &hex::encode(s.state.public_key()),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).await.expect("write");
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("node finished")
            .expect("node output");
        assert!(
            out.status.success(),
            "{signing}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{signing}"
        );
    }
    s.shutdown().await;
}
