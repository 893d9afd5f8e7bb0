//! The task digest, recomputed independently from its documented definition.

mod common;

use std::path::Path;

use common::*;
use sha2::{Digest, Sha256};
use task_runner::Runner;

fn entry(input: &mut Vec<u8>, tag: u8, path: &str, content: &[u8]) {
    input.push(tag);
    input.extend_from_slice(&(path.len() as u64).to_be_bytes());
    input.extend_from_slice(path.as_bytes());
    input.extend_from_slice(&(content.len() as u64).to_be_bytes());
    input.extend_from_slice(content);
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn digest_matches_the_documented_algorithm() {
    let tasks = tempfile::tempdir().unwrap();
    let task = tasks.path().join("t");
    write(&task, "package.json", r#"{"main":"lib/main.js"}"#);
    write(&task, "lib/main.js", "console.log(1)\n");
    write(&task, "lib.txt", "");
    std::fs::create_dir(task.join("empty")).unwrap();
    std::os::unix::fs::symlink("lib/main.js", task.join("link")).unwrap();

    // Sorted bytewise by path: "empty" < "lib" < "lib.txt" < "lib/main.js" < "link" < "package.json".
    let mut input = b"nautilus-task-digest-v1\n".to_vec();
    entry(&mut input, b'd', "empty", b"");
    entry(&mut input, b'd', "lib", b"");
    entry(&mut input, b'f', "lib.txt", b"");
    entry(&mut input, b'f', "lib/main.js", b"console.log(1)\n");
    entry(&mut input, b'l', "link", b"lib/main.js");
    entry(
        &mut input,
        b'f',
        "package.json",
        br#"{"main":"lib/main.js"}"#,
    );
    let expected = hex::encode(Sha256::digest(&input));

    let runner = Runner::new(config_in(tasks.path())).unwrap();
    let listed = runner.list_tasks().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task_path, "t");
    assert_eq!(listed[0].task_digest, expected);

    // Content changes change it; permissions do not.
    std::fs::set_permissions(
        task.join("lib.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let digest_now = || {
        Runner::new(config_in(tasks.path()))
            .unwrap()
            .list_tasks()
            .unwrap()[0]
            .task_digest
            .clone()
    };
    assert_eq!(digest_now(), expected);
    write(&task, "lib.txt", "x");
    assert_ne!(digest_now(), expected);
    if is_root() {
        // As root every task is staged once, at start: the runner started
        // before the change still lists (and runs) what it staged.
        assert_eq!(runner.list_tasks().unwrap()[0].task_digest, expected);
    }
}

#[test]
fn list_tasks_finds_task_directories_only() {
    let runner = Runner::new(config()).unwrap();
    let names: Vec<String> = runner
        .list_tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.task_path)
        .collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
    assert!(names.contains(&"introspect".to_owned()));
    assert!(!names.contains(&"no-package".to_owned()), "{names:?}");
}

#[tokio::test]
async fn oversized_tasks_are_refused() {
    let tasks = tempfile::tempdir().unwrap();
    write(&tasks.path().join("big"), "package.json", "{}");
    write(&tasks.path().join("big"), "index.js", &"/".repeat(2048));
    let runner = Runner::new(task_runner::RunnerConfig {
        max_task_bytes: 1024,
        ..config_in(tasks.path())
    })
    .unwrap();
    let err = run(&runner, request("big", &[])).await.unwrap_err();
    assert_eq!(err.kind(), task_runner::ErrorKind::InvalidTask, "{err}");
}

/// npm's bookkeeping file is the one path left out of the digest (and of the
/// staged copy): a task installed with the host's npm and the same task in the
/// image, where the build removes it, have one digest.
#[tokio::test]
async fn npm_bookkeeping_is_neither_digested_nor_staged() {
    let tasks = tempfile::tempdir().unwrap();
    let task = tasks.path().join("t");
    write(&task, "package.json", "{}");
    write(
        &task,
        "index.js",
        "const fs = require('fs');\n\
         const at = (p) => fs.existsSync(require('path').join(__dirname, p));\n\
         console.log(at('node_modules/.package-lock.json'), at('node_modules/dep/index.js'));\n",
    );
    write(&task, "node_modules/dep/index.js", "module.exports = 1;\n");
    let digest = || {
        Runner::new(config_in(tasks.path()))
            .unwrap()
            .list_tasks()
            .unwrap()[0]
            .task_digest
            .clone()
    };
    let without = digest();

    let mut input = b"nautilus-task-digest-v1\n".to_vec();
    let index = std::fs::read(task.join("index.js")).unwrap();
    entry(&mut input, b'f', "index.js", &index);
    entry(&mut input, b'd', "node_modules", b"");
    entry(&mut input, b'd', "node_modules/dep", b"");
    entry(
        &mut input,
        b'f',
        "node_modules/dep/index.js",
        b"module.exports = 1;\n",
    );
    entry(&mut input, b'f', "package.json", b"{}");
    assert_eq!(without, hex::encode(Sha256::digest(&input)));

    write(
        &task,
        task_runner::digest::EXCLUDED_PATH,
        r#"{"name": "t", "lockfileVersion": 3, "packages": {}}"#,
    );
    assert_eq!(digest(), without, "the bookkeeping file changed the digest");
    // Only that path: the same name elsewhere counts.
    write(&task, "node_modules/dep/.package-lock.json", "{}");
    assert_ne!(digest(), without);
    std::fs::remove_file(task.join("node_modules/dep/.package-lock.json")).unwrap();

    // What the task can read is what the digest describes.
    let runner = Runner::new(config_in(tasks.path())).unwrap();
    let result = run(&runner, request("t", &[])).await.unwrap();
    assert_eq!(result.stdout, "false true\n", "{result:?}");
}
