//! Load shedding. In its own test binary so that its check for leftover
//! `node` processes cannot see the tasks of unrelated tests.

mod support;

use std::time::Duration;

use result_signing::{decode_public_key, SignedResponse, TaskResult, INTENT_TASK_RESULT};
use serde_json::json;
use support::{children_but_warm, config, eventually, TestServer};

/// 400 requests at once against 2 slots and a queue of 4: every request gets
/// an answer (a signed result or a 503), and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_with_503_and_leaves_nothing_running() {
    let mut c = config();
    c.runner.max_concurrent = 2;
    c.runner.max_queue = 4;
    // All 400 come from one address; what is tested is the server's own
    // limit (503), not a client's share (429, availability.rs).
    c.http.per_client.connections = 1024;
    c.http.per_client.requests = 1024;
    c.http.per_client.queued_tasks = 1024;
    let s = TestServer::start(c).await;
    let key = decode_public_key(s.state.public_key()).expect("P-256 key");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..400 {
        let http = http.clone();
        let url = s.url("/process_data");
        requests.spawn(async move {
            let body = json!({"payload": {"task_path": "sleep", "args": ["200"], "nonce": format!("{i:04x}")}});
            let resp = http.post(url).json(&body).send().await.expect("answered");
            let status = resp.status().as_u16();
            let retry = resp.headers().contains_key("retry-after");
            let text = resp.text().await.expect("body");
            (i, status, retry, text)
        });
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(joined) = requests.join_next().await {
        let (i, status, retry, text) = joined.expect("request task");
        match status {
            200 => {
                let signed: SignedResponse<TaskResult> =
                    serde_json::from_str(&text).expect("signed");
                signed.verify(&key, INTENT_TASK_RESULT).expect("verifies");
                let nonce = format!("{i:04x}");
                assert_eq!(signed.response.data.nonce.as_deref(), Some(nonce.as_str()));
                assert_eq!(signed.response.data.status, "success");
                ok += 1;
            }
            503 => {
                assert!(retry, "503 without Retry-After");
                assert!(text.contains("\"error\""), "{text}");
                shed += 1;
            }
            other => panic!("request {i}: unexpected status {other}: {text}"),
        }
    }
    assert_eq!(ok + shed, 400);
    assert!(
        ok >= 6,
        "at least the slots and the queue were served, got {ok}"
    );
    assert!(shed > 0, "a queue of 4 cannot absorb 400 requests");

    // A finished run holds its slot until the slot's warm box is back.
    let idle = || {
        let stats = s.state.runner().stats();
        (stats.running, stats.queued) == (0, 0)
    };
    assert!(
        eventually(Duration::from_secs(10), idle).await.is_some(),
        "{:?}",
        s.state.runner().stats()
    );
    assert_eq!(
        children_but_warm(&s),
        Vec::<String>::new(),
        "no task process outlives its request"
    );

    let metrics = s.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains(&format!("nautilus_tasks_shed_total {shed}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("nautilus_http_requests_total{endpoint=\"/process_data\",status=\"503\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nautilus_task_duration_seconds_count"),
        "{metrics}"
    );
    s.shutdown().await;
}
