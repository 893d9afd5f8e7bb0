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

#[tokio::test]
async fn unknown_task_is_404_with_the_contract_sentences() {
    let s = TestServer::start(config()).await;
    let e = expect_error(s.process(json!({"task_path": "nope"})).await, 404).await;
    assert_eq!(
        e["error"],
        "Failed to execute Node.js task: Task directory does not exist: nope"
    );

    // A directory without package.json is not a task.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let mut c = config();
    c.runner.tasks_dir = dir.path().to_path_buf();
    let s2 = TestServer::start(c).await;
    let e = expect_error(s2.process(json!({"task_path": "empty"})).await, 404).await;
    assert_eq!(
        e["error"],
        "Failed to execute Node.js task: package.json not found in task directory"
    );
    s.shutdown().await;
    s2.shutdown().await;
}

/// Only tasks in the attested manifest run: a nested directory with its own
/// package.json (a dependency under node_modules, say) is refused, because a
/// signed result for it would be covered by no attestation.
#[tokio::test]
async fn tasks_outside_the_manifest_are_refused() {
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
    let mut c = config();
    c.runner.tasks_dir = dir.path().to_path_buf();
    let s = TestServer::start(c).await;
    let ok = s.process(json!({"task_path": "good"})).await;
    assert_eq!(ok.status(), 200);
    let e = expect_error(
        s.process(json!({"task_path": "good/node_modules/dep"}))
            .await,
        404,
    )
    .await;
    assert_eq!(
        e["error"],
        "Failed to execute Node.js task: good/node_modules/dep is not a task of this server (see /manifest)"
    );
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
