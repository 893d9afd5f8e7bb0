//! The Makefile fails fast with the fix: every target that needs an input
//! it does not have (an image, nitro-cli, a kernel, node, a container engine,
//! an enclave CID, strace) says so in one line naming what to do, before
//! any build starts. `cargo` is replaced by a recorder that fails, so a
//! build that started anyway is seen (and costs nothing).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

mod support;
use support::repo;

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

struct Case {
    target: &'static str,
    vars: Vec<String>,
    /// PATH for the recipes: `None` keeps the test's own.
    path: Option<PathBuf>,
    says: &'static [&'static str],
}

#[test]
fn targets_missing_an_input_say_what_to_do_before_building() {
    let make = which("make").expect("make is installed");
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("cargo-calls");
    let cargo = tmp.path().join("cargo");
    fs::write(
        &cargo,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexit 1\n", calls.display()),
    )
    .unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
    let no_image = tmp.path().join("out");
    fs::create_dir(&no_image).unwrap();
    // A PATH with `id` and nothing else: no node, nitro-cli, strace, npm.
    let bare = tmp.path().join("bin");
    fs::create_dir(&bare).unwrap();
    std::os::unix::fs::symlink(which("id").expect("id"), bare.join("id")).unwrap();
    let is_root = nix_uid_is_root();

    let out_var = format!("OUT={}", no_image.display());
    let mut cases = vec![
        Case {
            target: "describe",
            vars: vec![out_var.clone()],
            path: None,
            says: &["nitro.eif does not exist", "'make image'", "make build-eif"],
        },
        Case {
            target: "eif-crosscheck",
            vars: vec![out_var.clone()],
            path: None,
            says: &["nitro.eif does not exist", "'make image'"],
        },
        Case {
            target: "build-eif",
            vars: vec!["CONTAINER_ENGINE=".into(), out_var.clone()],
            path: None,
            says: &["neither docker nor podman", "'make image'"],
        },
        Case {
            target: "proxy",
            vars: vec!["ENCLAVE_CID=".into()],
            path: None,
            says: &["set ENCLAVE_CID", "nitro-cli describe-enclaves"],
        },
        Case {
            target: "run",
            vars: vec![],
            path: Some(bare.clone()),
            says: &["node is not installed", "Node.js 18"],
        },
        Case {
            target: "profile",
            vars: vec![],
            path: Some(bare.clone()),
            says: if is_root {
                &["strace is not installed", "apt-get install strace"]
            } else {
                &["run it as root"]
            },
        },
    ];
    for target in ["run-enclave", "run-debug", "terminate"] {
        cases.push(Case {
            target,
            vars: vec![out_var.clone()],
            path: Some(bare.clone()),
            says: &["nitro-cli is not installed", "aws-nitro-enclaves-cli"],
        });
    }
    // With nitro-cli present, a missing image is what run-enclave names.
    let fake_nitro = tmp.path().join("nitro-bin");
    fs::create_dir(&fake_nitro).unwrap();
    let nitro = fake_nitro.join("nitro-cli");
    fs::write(
        &nitro,
        format!(
            "#!/bin/sh\necho \"nitro-cli $*\" >> {}\nexit 1\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&nitro, fs::Permissions::from_mode(0o755)).unwrap();
    cases.push(Case {
        target: "run-enclave",
        vars: vec![out_var.clone()],
        path: Some(fake_nitro.clone()),
        says: &["nitro.eif does not exist", "'make image'"],
    });

    for case in cases {
        let _ = fs::remove_file(&calls);
        let mut command = Command::new(&make);
        command
            .current_dir(repo())
            .arg("--no-print-directory")
            .arg(case.target)
            .arg(format!("CARGO={}", cargo.display()))
            .args(&case.vars);
        if let Some(path) = &case.path {
            command.env("PATH", path);
        }
        let out = command.output().expect("make ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!(
            "make {} {:?}\nstdout: {stdout}\nstderr: {stderr}",
            case.target, case.vars
        );
        assert!(!out.status.success(), "{what}");
        // One line of ours; the rest can only be make's own `*** Error` trailer.
        let mut lines = stderr.lines();
        let first = lines.next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("make {}: ", case.target))
                || first.starts_with("make run: ")
                || first.starts_with("make image: "),
            "{what}"
        );
        for needle in case.says {
            assert!(first.contains(needle), "{needle:?} missing; {what}");
        }
        for rest in lines {
            assert!(
                rest.starts_with("make: ***") || rest.starts_with("make[1]: ***"),
                "{what}"
            );
        }
        assert!(
            stdout.trim().is_empty(),
            "nothing else is printed or run: {what}"
        );
        assert!(
            !calls.exists(),
            "a build or nitro-cli ran: {} ({what})",
            fs::read_to_string(&calls).unwrap_or_default()
        );
    }
}

fn nix_uid_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `make new-task NAME=…` makes a task the runner lists and runs as it is,
/// and refuses a bad or taken name in one line.
#[tokio::test]
async fn new_task_makes_a_task_that_runs() {
    let make = which("make").expect("make is installed");
    let tasks = tempfile::tempdir().unwrap();
    let new_task = |name: &str| {
        Command::new(&make)
            .current_dir(repo())
            .args(["--no-print-directory", "new-task"])
            .arg(format!("NAME={name}"))
            .arg(format!("TASKS_DIR={}", tasks.path().display()))
            .output()
            .expect("make ran")
    };
    let out = new_task("hello-task");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Restart 'make run'") && said.contains("enclave/tasks"),
        "{said}"
    );

    let runner = task_runner::Runner::new(task_runner::RunnerConfig {
        tasks_dir: tasks.path().to_owned(),
        max_concurrent: 1,
        warm_pool: Some(0),
        ..Default::default()
    })
    .unwrap();
    let listed: Vec<String> = runner
        .list_tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.task_path)
        .collect();
    assert_eq!(listed, ["hello-task"]);
    let result = runner
        .run(task_runner::TaskRequest {
            task_path: "hello-task".into(),
            args: vec!["a".into(), "b".into()],
            stdin: Some("xyz".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(result.status, "success", "{result:?}");
    let printed: serde_json::Value = serde_json::from_str(result.stdout.trim()).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"task": "hello-task", "args": ["a", "b"], "stdin_bytes": 3})
    );

    for (name, says) in [
        ("hello-task", "already exists"),
        ("Bad Name", "is not a task name"),
        ("", "say which"),
    ] {
        let out = new_task(name);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("make new-task: ") && err.lines().next().unwrap().contains(says),
            "{name:?}: {err}"
        );
    }
}
