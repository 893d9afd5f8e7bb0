//! Every error is JSON `{"error": ...}` with the documented status.

mod support;

use serde_json::json;
use support::{config, expect_error, TestServer};

#[tokio::test]
async fn malformed_requests_are_400_json() {
    let s = TestServer::start(config()).await;
    let post_raw = |body: &'static str| {
        s.http
            .post(s.url("/process_data"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let e = expect_error(post_raw("{not json").await.expect("answered"), 400).await;
    assert!(
        e["error"].as_str().unwrap_or_default().contains("JSON"),
        "{e}"
    );
    // Cut short: says the JSON is incomplete, with no path into it.
    let e = expect_error(
        post_raw(r#"{"payload": {"task_path": "echo""#)
            .await
            .expect("answered"),
        400,
    )
    .await;
    let msg = e["error"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("request body is incomplete JSON: EOF while parsing"),
        "{msg}"
    );
    assert!(!msg.contains('?'), "{msg}");
    // Valid JSON of the wrong shape is also the client's fault: 400, not 422.
    expect_error(
        post_raw(r#"{"payload": {"args": "x"}}"#)
            .await
            .expect("answered"),
        400,
    )
    .await;
    expect_error(
        post_raw(r#"{"payload": {"surprise": 1}}"#)
            .await
            .expect("answered"),
        400,
    )
    .await;
    expect_error(post_raw(r#"{}"#).await.expect("answered"), 400).await;

    for (payload, needle) in [
        (json!({"task_path": "echo", "nonce": "zz"}), "hex"),
        (
            json!({"task_path": "echo", "nonce": "ab".repeat(65)}),
            "too long",
        ),
        (json!({"task_path": "echo", "nonce": ""}), "empty"),
        (json!({"task_path": "../echo"}), ""),
        (json!({"task_path": "/etc"}), ""),
        (json!({"task_path": "echo", "timeout_secs": 0}), ""),
        (json!({"task_path": "echo", "timeout_secs": 100000}), ""),
        (json!({"task_path": "echo", "args": ["a\u{0}b"]}), ""),
    ] {
        let resp = s.process(json!(payload)).await;
        let e = expect_error(resp, 400).await;
        assert!(
            e["error"].as_str().unwrap_or_default().contains(needle),
            "{payload}: {e}"
        );
    }

    let resp = s.get("/get_attestation?nonce=xyz").await;
    expect_error(resp, 400).await;
    let long = "00".repeat(513);
    let resp = s.get(&format!("/get_attestation?nonce={long}")).await;
    let e = expect_error(resp, 400).await;
    assert!(
        e["error"].as_str().unwrap_or_default().contains("too long"),
        "{e}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn transport_level_rejections_are_json_too() {
    let mut c = config();
    c.max_body_bytes = 4096;
    let s = TestServer::start(c).await;

    let resp = s
        .http
        .post(s.url("/process_data"))
        .header("content-type", "text/plain")
        .body(r#"{"payload": {}}"#)
        .send()
        .await
        .expect("answered");
    expect_error(resp, 415).await;

    let big = json!({"payload": {"task_path": "echo", "stdin": "x".repeat(8192)}});
    let e = expect_error(s.post_json("/process_data", &big).await, 413).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("large"),
        "{e}"
    );

    let resp = s.get("/no/such/route").await;
    let e = expect_error(resp, 404).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/route"),
        "{e}"
    );

    let resp = s.get("/process_data").await;
    assert!(
        resp.headers().contains_key("allow"),
        "405 keeps its Allow header"
    );
    expect_error(resp, 405).await;
    let resp = s
        .http
        .delete(s.url("/get_attestation"))
        .send()
        .await
        .expect("answered");
    expect_error(resp, 405).await;
    s.shutdown().await;
}

/// Only tasks in the attested manifest run, and every other name gets one
/// and the same 404, whatever is on disk under it: no hint of the server's
/// files (a directory without package.json, a nested package under
/// node_modules, a plain file), and nothing that suggests something ran.
#[tokio::test]
async fn a_task_not_in_the_manifest_gets_one_answer_whatever_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    for task in ["good", "good/node_modules/dep"] {
        let path = dir.path().join(task);
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(
            path.join("package.json"),
            r#"{"name": "t", "main": "index.js"}"#,
        )
        .expect("write");
        std::fs::write(path.join("index.js"), "console.log('ran');").expect("write");
    }
    std::fs::create_dir(dir.path().join("src")).expect("mkdir");
    std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let mut c = config();
    c.runner.tasks_dir = dir.path().to_path_buf();
    let s = TestServer::start(c).await;
    let ok = s.process(json!({"task_path": "good"})).await;
    assert_eq!(ok.status(), 200);
    for (asked, normalized) in [
        ("nope", "nope"),
        ("src", "src"),
        ("./src/", "src"),
        ("notes.txt", "notes.txt"),
        ("good/node_modules/dep", "good/node_modules/dep"),
        ("good/index.js", "good/index.js"),
    ] {
        let e = expect_error(s.process(json!({"task_path": asked})).await, 404).await;
        assert_eq!(
            e["error"],
            format!(
                "Failed to execute Node.js task: Task directory does not exist: {normalized} \
                 (it is not a task of this server: GET /manifest lists the tasks it runs)"
            ),
            "{asked}"
        );
    }

    // A listed task whose files went missing after start. As root every
    // task was staged once, at start: what the manifest attests still runs.
    // Without root each run stages its own copy: the product's own sentence,
    // from the runner.
    std::fs::remove_dir_all(dir.path().join("good")).expect("rm");
    let resp = s.process(json!({"task_path": "good"})).await;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(resp.status(), 200);
    } else {
        let e = expect_error(resp, 404).await;
        assert_eq!(
            e["error"],
            "Failed to execute Node.js task: Task directory does not exist: good"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn timeout_is_504_with_task_id_and_partial_output() {
    let s = TestServer::start(config()).await;
    let resp = s
        .process(json!({"task_path": "spin", "timeout_secs": 1}))
        .await;
    let e = expect_error(resp, 504).await;
    assert_eq!(
        e["error"],
        "Failed to execute Node.js task: Task execution timed out after 1 seconds"
    );
    assert!(
        uuid::Uuid::parse_str(e["task_id"].as_str().unwrap_or_default()).is_ok(),
        "{e}"
    );
    assert!(
        e["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("spinning"),
        "{e}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn missing_node_is_503_with_retry_after() {
    let mut c = config();
    c.runner.node = Some("/nonexistent/bin/node".into());
    let s = TestServer::start(c).await;
    let health: serde_json::Value = s.get_json("/health_check").await;
    assert_eq!(health["status"], "degraded");
    assert!(health["node_version"].is_null());

    let resp = s.process(json!({"task_path": "echo"})).await;
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let e = expect_error(resp, 503).await;
    assert_eq!(
        e["error"],
        "Failed to execute Node.js task: Failed to check Node.js installation. Is Node.js installed?"
    );
    s.shutdown().await;
}

/// A body of the wrong shape is named at its field path in plain words, not
/// with serde's Rust type names or a line and column.
#[tokio::test]
async fn shape_errors_name_the_field_in_plain_words() {
    let s = TestServer::start(config()).await;
    for (body, want) in [
        (
            r#"{"payload": 5}"#,
            "payload: expected an object, got integer 5",
        ),
        (
            r#"{"payload": {"args": {}}}"#,
            "payload.args: expected an array of at most 64 strings, got an object",
        ),
        (
            r#"{"payload": {"args": "x"}}"#,
            "payload.args: expected an array of at most 64 strings, got string \"x\"",
        ),
        (
            r#"{"payload": {"args": [1]}}"#,
            "payload.args[0]: expected a string, got integer 1",
        ),
        (
            r#"{"payload": {"timeout_secs": -1}}"#,
            "payload.timeout_secs: expected a whole number of at least 0, got integer -1",
        ),
        (r#"{}"#, "missing field payload"),
        (r#"{"payload": {"surprise": 1}}"#, "unknown field surprise"),
    ] {
        let resp = s
            .http
            .post(s.url("/process_data"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let e = expect_error(resp, 400).await;
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: {msg}");
        for rust in [
            "struct",
            "TaskRequest",
            "sequence`",
            "u64",
            "line 1",
            "Failed to deserialize",
        ] {
            assert!(!msg.contains(rust), "{body}: {msg}");
        }
    }
    s.shutdown().await;
}
