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
