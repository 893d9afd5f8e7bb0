//! `GET /metrics` as Prometheus scrapes it: OpenMetrics text 1.0.0, which a
//! stock scrape config asks for first and parses strictly.

mod support;

use support::{config, TestServer};

/// The `Accept` header of a stock Prometheus 2.x scrape.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test]
async fn a_prometheus_scrape_gets_strictly_valid_openmetrics() {
    let s = TestServer::start(config()).await;
    // Something in every family worth seeing: a request, a task, a document.
    assert_eq!(s.get("/get_attestation").await.status(), 200);
    assert_eq!(
        s.process(serde_json::json!({"task_path": "echo"}))
            .await
            .status(),
        200
    );

    let resp = s
        .http
        .get(s.url("/metrics"))
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let body = resp.text().await.expect("utf-8 body");
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&with_samples_only(&body))
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"));
    for family in [
        "nautilus_http_requests",
        "nautilus_tasks",
        "nautilus_task_duration_seconds",
        "nautilus_tasks_running",
        "nautilus_tasks_queued",
        "nautilus_tasks_shed",
        "nautilus_attestation_timeouts",
        "nautilus_clock_skew_seconds",
        "nautilus_attestations",
    ] {
        assert!(
            parsed.families.contains_key(family),
            "no {family} in:\n{body}"
        );
    }
    s.shutdown().await;
}

/// The exposition without the families that have no sample yet (e.g. no
/// accept error so far). OpenMetrics allows such families ("A MetricFamily
/// MAY have zero Metrics") and Prometheus reads them, but this parser takes
/// the next family's samples for theirs. Checks that what is dropped is only
/// descriptors.
fn with_samples_only(body: &str) -> String {
    let mut kept = String::new();
    let mut family = String::new();
    let flush = |family: &mut String, kept: &mut String| {
        if family.starts_with("# EOF") || family.lines().any(|l| !l.starts_with('#')) {
            kept.push_str(family);
        } else {
            assert!(
                family.lines().all(|l| l.starts_with("# HELP ")
                    || l.starts_with("# TYPE ")
                    || l.starts_with("# UNIT ")),
                "{family}"
            );
        }
        family.clear();
    };
    for line in body.lines() {
        if line.starts_with("# HELP ") || line == "# EOF" {
            flush(&mut family, &mut kept);
        }
        family.push_str(line);
        family.push('\n');
    }
    flush(&mut family, &mut kept);
    kept
}
