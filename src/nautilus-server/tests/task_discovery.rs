//! What a newcomer writing a task meets: a task added after start is named
//! as such (restart to serve it), and a task whose `node_modules` does not
//! match its lockfile is refused at start with the command that fixes it,
//! instead of failing on every call with `Cannot find module`.

mod support;

use std::path::Path;

use serde_json::json;
use support::{config, expect_error, TestServer};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn task(root: &Path, name: &str, body: &str) {
    write(
        root,
        &format!("{name}/package.json"),
        &format!(r#"{{"name": "{name}", "version": "1.0.0", "main": "index.js"}}"#),
    );
    write(root, &format!("{name}/index.js"), body);
}

fn serving(tasks: &Path) -> nautilus_server::state::ServerConfig {
    let mut c = config();
    c.runner.tasks_dir = tasks.to_owned();
    c
}

#[tokio::test]
async fn a_task_added_after_start_says_restart() {
    let tasks = tempfile::tempdir().unwrap();
    task(tasks.path(), "first", "console.log('first')\n");
    let s = TestServer::start(serving(tasks.path())).await;

    task(tasks.path(), "hello-task", "console.log('hello')\n");
    let e = expect_error(s.process(json!({"task_path": "hello-task"})).await, 404).await;
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("hello-task was added after the server started")
            && msg.contains("restart it to serve hello-task"),
        "{msg}"
    );

    // A name that is not a task at all still gets the plain answer.
    std::fs::create_dir(tasks.path().join("not-a-task")).unwrap();
    for name in ["nope", "not-a-task"] {
        let e = expect_error(s.process(json!({"task_path": name})).await, 404).await;
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!("Task directory does not exist: {name}"))
                && !msg.contains("restart"),
            "{msg}"
        );
    }
    // The task that was there at start runs.
    let ok = s.process(json!({"task_path": "first"})).await;
    assert_eq!(ok.status(), 200);
    s.shutdown().await;
}

const LOCK: &str = r#"{"name": "dep-task", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "dep-task", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}},
    "node_modules/ms": {"version": "2.1.3", "resolved": "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz",
      "integrity": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="}
  }}"#;

#[tokio::test]
async fn a_task_without_its_dependencies_is_refused_with_the_fix() {
    let tasks = tempfile::tempdir().unwrap();
    task(
        tasks.path(),
        "dep-task",
        "console.log(require('ms')(60000))\n",
    );
    write(tasks.path(), "dep-task/package-lock.json", LOCK);
    task(tasks.path(), "plain", "console.log('plain')\n");
    let s = TestServer::start(serving(tasks.path())).await;

    // Not in the attested manifest: it is not served.
    let manifest = s.get_json("/manifest").await;
    let names: Vec<&str> = manifest["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain"], "{manifest}");

    let e = expect_error(s.process(json!({"task_path": "dep-task"})).await, 500).await;
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("task dep-task is not served")
            && msg.contains("ms is not installed")
            && msg.contains("npm ci --omit=dev --ignore-scripts --prefix dep-task")
            && msg.contains("restart the server"),
        "{msg}"
    );
    s.shutdown().await;

    // Another version installed is refused too, naming both.
    write(
        tasks.path(),
        "dep-task/node_modules/ms/package.json",
        r#"{"name": "ms", "version": "2.1.2"}"#,
    );
    write(
        tasks.path(),
        "dep-task/node_modules/ms/index.js",
        "module.exports = (n) => n + 'ms';\n",
    );
    let s = TestServer::start(serving(tasks.path())).await;
    let e = expect_error(s.process(json!({"task_path": "dep-task"})).await, 500).await;
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("ms 2.1.2 is installed but package-lock.json pins 2.1.3"),
        "{msg}"
    );
    s.shutdown().await;

    // With what the lockfile pins installed, it is served and runs.
    write(
        tasks.path(),
        "dep-task/node_modules/ms/package.json",
        r#"{"name": "ms", "version": "2.1.3"}"#,
    );
    let s = TestServer::start(serving(tasks.path())).await;
    let ok = s.process(json!({"task_path": "dep-task"})).await;
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["response"]["data"]["stdout"], "60000ms\n", "{body}");
    s.shutdown().await;
}
