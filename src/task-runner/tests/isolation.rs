//! What a task can and cannot reach. The root-only checks skip (with a message)
//! when the tests do not run as root.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use task_runner::{Runner, RunnerConfig, TaskError, TaskRequest};

#[tokio::test]
async fn environment_is_built_from_nothing() {
    // A descriptor the runner opened without O_CLOEXEC must not reach the task.
    let leaky = tempfile::NamedTempFile::new().unwrap();
    let leaky_path = std::ffi::CString::new(leaky.path().to_str().unwrap()).unwrap();
    // SAFETY: open(2) on a valid C string; the descriptor is closed below.
    let fd = unsafe { libc::open(leaky_path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    let runner = runner();
    let result = run_ok(&runner, "introspect", &["a b", "--flag", "ünï"]).await;
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    let seen = json(&result.stdout);
    assert_eq!(seen["argv"], serde_json::json!(["a b", "--flag", "ünï"]));
    let env = seen["env"].as_object().unwrap();
    let names: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["HOME", "NAUTILUS_TASK_ID", "NODE_ENV", "PATH", "TMPDIR"])
    );
    assert_eq!(env["NAUTILUS_TASK_ID"], result.task_id.as_str());
    assert_eq!(env["NODE_ENV"], "production");
    assert_eq!(env["HOME"], env["TMPDIR"]);
    let home = env["HOME"].as_str().unwrap();
    if runner.is_privileged() {
        // A private tmpfs that ends with the box.
        assert_eq!(home, "/tmp");
    } else {
        assert!(
            !std::path::Path::new(home).exists(),
            "per-run home {home} was not removed"
        );
    }
    let fds = seen["fds"].as_array().unwrap();
    assert!(
        !fds.iter().any(|t| t.as_str() == leaky.path().to_str()),
        "leaked descriptor: {fds:?}"
    );
    let cwd = seen["cwd"].as_str().unwrap();
    assert!(
        !cwd.starts_with(fixtures().to_str().unwrap()),
        "task ran from the source tree: {cwd}"
    );
    // Real, effective, saved and filesystem ids are all the task's own.
    let uid = seen["uid"].as_u64().unwrap();
    let gid = seen["gid"].as_u64().unwrap();
    assert_eq!(seen["uids"], serde_json::json!(vec![uid; 4]), "{seen}");
    assert_eq!(seen["gids"], serde_json::json!(vec![gid; 4]), "{seen}");
    if let Some(slots) = runner.sandbox_uids() {
        assert!(slots.contains(&(uid as u32)), "{seen}");
        assert_eq!(uid, gid);
    }
    // The OOM killer picks the task before the runner; written with
    // CAP_SYS_RESOURCE, the value is also a floor the task cannot lower.
    assert_eq!(seen["oom_score_adj"], "1000", "{seen}");
    if has_cap_sys_resource() {
        assert_eq!(seen["oom_lower"], "EACCES", "{seen}");
    } else {
        skip_report::skipped(
            "the task cannot lower its OOM score",
            "needs CAP_SYS_RESOURCE",
        );
    }
    // No stdin in the request: an empty pipe (the same with or without a warm box).
    let stdin = &seen["stdin"];
    assert!(
        stdin["path"].as_str().unwrap().starts_with("pipe:"),
        "{stdin}"
    );
    assert_eq!(
        (&stdin["fifo"], &stdin["tty"], &stdin["chardev"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(false)
        ),
        "{stdin}"
    );
}

#[tokio::test]
async fn resource_limits_and_no_new_privs_apply_to_the_task() {
    const MIB: u64 = 1 << 20;
    // Values unlike both the defaults and any host's, so only the runner can have set them.
    let config = RunnerConfig {
        memory_limit_bytes: 384 * MIB,
        max_file_bytes: 24 * MIB,
        max_open_files: 333,
        max_processes: 77,
        ..config()
    };
    let runner = Runner::new(config.clone()).unwrap();
    let seen = json(&run_ok(&runner, "introspect", &[]).await.stdout);
    let limits = &seen["limits"];
    let both = |value: u64| serde_json::json!([value.to_string(), value.to_string()]);
    assert_eq!(limits["Max core file size"], both(0), "{limits}");
    assert_eq!(
        limits["Max data size"],
        both(config.memory_limit_bytes),
        "{limits}"
    );
    assert_eq!(
        limits["Max file size"],
        both(config.max_file_bytes),
        "{limits}"
    );
    assert_eq!(
        limits["Max open files"],
        both(config.max_open_files),
        "{limits}"
    );
    if runner.is_privileged() {
        // Where the slot's pids cgroup holds the limit, RLIMIT_NPROC is only
        // its backstop, at twice it (the cgroup must refuse first, to count).
        let nproc = match runner.cgroups().pids_max {
            Some(pids) => 2 * pids,
            None => config.max_processes,
        };
        assert_eq!(limits["Max processes"], both(nproc), "{limits}");
    } else {
        skip_report::skipped("RLIMIT_NPROC of slot uids", "needs root");
    }
    assert_eq!(seen["no_new_privs"], "1", "{seen}");
    let heap_flags: Vec<&str> = seen["exec_argv"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--max-old-space-size="))
        .collect();
    let heap = seen["heap_size_limit"].as_u64().unwrap();
    if runner.cgroups().memory_max_bytes.is_some() {
        // The slot's cgroup is the wall, and node sees it: V8 sizes its heap
        // from the 384 MiB (about half of it) without any flag, where this
        // host's memory would give it gigabytes.
        assert_eq!(runner.isolation().heap_limit, "cgroup");
        assert!(heap_flags.is_empty(), "{seen}");
        assert!(
            heap > 96 * MIB && heap < config.memory_limit_bytes,
            "V8 heap limit {} MiB under a 384 MiB slot: {seen}",
            heap / MIB
        );
    } else {
        // No cgroup: the V8 heap cap is 3/4 of the memory limit, in MiB: 384 MiB -> 288.
        assert_eq!(heap_flags, ["288"], "{seen}");
        assert_eq!(runner.isolation().heap_limit, "--max-old-space-size=288");
        assert!(heap >= 288 * MIB, "{seen}");
    }
}

#[tokio::test]
async fn files_left_in_shared_scratch_directories_are_removed() {
    if skip_unless_root("only a slot uid tells a task's files from anyone else's") {
        return;
    }
    let runner = runner();
    let name = format!("nautilus-litter-{}", uuid::Uuid::new_v4());
    let seen = json(&run_ok(&runner, "litter", &[&name]).await.stdout);
    let mut left = Vec::new();
    for dir in ["/tmp", "/dev/shm"] {
        assert_eq!(seen[dir], "ok", "the task could not write {dir}: {seen}");
        for suffix in ["", "-dir", "-link"] {
            let path = std::path::Path::new(dir).join(format!("{name}{suffix}"));
            if path.symlink_metadata().is_ok() {
                left.push(path);
            }
        }
    }
    for path in &left {
        let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        std::path::Path::new("/etc/passwd").exists(),
        "a symlink was followed"
    );
}

#[tokio::test]
async fn task_cannot_reach_the_runner_or_task_directories() {
    if skip_unless_root(
        "task cannot read the runner's environ/mem, signal it, or write task directories",
    ) {
        return;
    }
    // Like the server: the process holding the signing key is not dumpable.
    // SAFETY: prctl on the calling process.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
    let runner = runner();
    let pid = std::process::id().to_string();
    let fixtures_dir = fixtures().canonicalize().unwrap();
    let task_dirs = [
        fixtures_dir.join("probe-runner"),
        fixtures_dir.clone(),
        repo_root().join("nodejs-task"),
    ];
    let mut args = vec![pid.as_str()];
    let dirs: Vec<String> = task_dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    args.extend(dirs.iter().map(String::as_str));
    let result = run_ok(&runner, "probe-runner", &args).await;
    for dir in &task_dirs {
        let planted = dir.join("pwned");
        let existed = planted.exists();
        let _ = std::fs::remove_file(&planted);
        assert!(!existed, "task wrote {}", planted.display());
    }
    let seen = json(&result.stdout);
    // Its private /proc does not even list the runner.
    assert_eq!(seen["environ"], "ENOENT", "{seen}");
    assert_eq!(seen["mem"], "ENOENT", "{seen}");
    // Not even in the box's PID namespace.
    assert_eq!(seen["signal"], "ESRCH", "{seen}");
    for (dir, outcome) in seen["writes"].as_object().unwrap() {
        assert_ne!(outcome, "ok", "task could write into {dir}");
    }
    assert_eq!(seen["home"], "ok", "the task's own home must be writable");
    let slots = runner
        .sandbox_uids()
        .expect("root runs tasks under slot uids");
    let uid = seen["uid"].as_u64().unwrap();
    assert!(
        (u64::from(slots.start)..u64::from(slots.end)).contains(&uid),
        "{seen}"
    );
    assert_eq!(seen["gid"].as_u64(), Some(uid));
    let groups = seen["groups"].as_array().unwrap();
    assert!(
        groups.iter().all(|g| g.as_u64() == Some(uid)),
        "supplementary groups kept: {seen}"
    );
}

/// Runs inside the sandbox (see `af_vsock_is_denied`), never on its own.
#[test]
#[ignore = "helper executed inside the sandbox by af_vsock_is_denied"]
fn vsock_probe() {
    println!("vsock={}", try_socket(libc::AF_VSOCK));
    println!("unix={}", try_socket(libc::AF_UNIX));
    let mut pair = [0; 2];
    // SAFETY: socketpair(2) into a two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    println!("vsock_pair={}", outcome(rc as i64));
    // io_uring can open sockets without socket(2). Its parameter block is 120 bytes.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup with a zeroed parameter block; a ring fd, if any, leaks
    // into a process that exits at once.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    println!("io_uring={}", outcome(rc));
}

fn try_socket(family: libc::c_int) -> String {
    // SAFETY: socket(2), and close(2) on the descriptor it returned.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let result = outcome(fd.into());
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
    result
}

#[tokio::test]
async fn af_vsock_is_denied() {
    // Control: outside the sandbox vsock sockets can be created, so a refusal
    // inside can only come from the filter. A kernel without vsock cannot
    // tell; the check inside stays strict either way (the filter answers EPERM
    // before the kernel could say EAFNOSUPPORT).
    match try_socket(libc::AF_VSOCK).as_str() {
        "ok" => {}
        "EAFNOSUPPORT" => skip_report::skipped(
            "control that vsock works outside the sandbox",
            "needs vsock on the host",
        ),
        other => panic!("control: creating a vsock socket outside the sandbox: {other}"),
    }
    let (_tasks, config) = probe_tasks();
    let runner = Runner::new(config).unwrap();
    let seen = run_probe(&runner, "vsock_probe", &[]).await;
    assert_eq!(seen["vsock"], "EPERM", "{seen:?}");
    assert_eq!(seen["vsock_pair"], "EPERM", "{seen:?}");
    assert_eq!(seen["io_uring"], "EPERM", "{seen:?}");
    assert_eq!(seen["unix"], "ok", "other families stay usable: {seen:?}");
}

#[tokio::test]
async fn process_limit_holds_and_every_process_is_killed() {
    if skip_unless_root("RLIMIT_NPROC applies per slot uid") {
        return;
    }
    // One slot: the second run gets the uid the first one filled up.
    let runner = Runner::new(task_runner::RunnerConfig {
        max_concurrent: 1,
        // The task's `sleep`.
        box_paths: host_usr(),
        ..config()
    })
    .unwrap();
    let limit = runner.config().max_processes;
    let pids_cgroup = runner.cgroups().pids_max.is_some();
    for _ in 0..2 {
        let result = run_ok(&runner, "fork-many", &[]).await;
        // Where the slot has a pids cgroup it is the wall, and the signed
        // result says so (RLIMIT_NPROC, checked first by the kernel, used to
        // refuse the fork before the cgroup could count it: `limit` null).
        if pids_cgroup {
            assert_eq!(result.limit.as_deref(), Some("pids"), "{result:?}");
        }
        let seen = json(&result.stdout);
        assert_eq!(seen["error"], "EAGAIN", "{seen}");
        // Node's own threads count too; the rest of the limit is the task's.
        let spawned = seen["spawned"].as_u64().unwrap();
        assert!(spawned > limit / 2 && spawned < limit, "{seen}");
    }
    let slot_uids = runner.sandbox_uids().expect("root");
    settled(&runner).await;
    let survivors = not_warm(&runner, processes_of(&slot_uids));
    assert!(
        survivors.is_empty(),
        "processes of the slot uids survived: {survivors:?}"
    );
}

/// A task that stops everything it may signal, in a tight loop, from a
/// double-forked process cannot freeze the kill: the run still ends within
/// timeout + grace + a little, the slot serves the next run, and nothing of
/// the slot uid is left.
#[tokio::test]
async fn task_stopping_everything_it_can_signal_is_still_killed() {
    if skip_unless_root("kill(-1, SIGSTOP) would hit the runner itself without a slot uid") {
        return;
    }
    // A short grace: the task ignores SIGTERM anyway (it is stopped).
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 1,
        kill_grace: Duration::from_secs(1),
        ..config()
    })
    .unwrap();
    let grace = runner.config().kill_grace;
    let timeout = Duration::from_secs(2);
    // The race the spinner tries to win is short: several rounds make it likely
    // that the old helper credentials would be caught (they froze about one run
    // in three); `sandbox`'s unit tests check the credentials deterministically.
    for _ in 0..3 {
        let started = Instant::now();
        let err = run(
            &runner,
            TaskRequest {
                timeout_secs: Some(timeout.as_secs()),
                ..request("stop-killer", &[])
            },
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        let TaskError::Timeout { partial, .. } = err else {
            panic!("{err:?}")
        };
        assert!(partial.stderr.contains("spinning\n"), "{partial:?}");
        assert!(
            took <= timeout + grace + Duration::from_secs(3),
            "took {took:?}"
        );
        let slot_uids = runner.sandbox_uids().expect("root");
        settled(&runner).await;
        let survivors = not_warm(&runner, processes_of(&slot_uids));
        assert!(
            survivors.is_empty(),
            "processes of the slot uids survived: {survivors:?}"
        );
        // The one slot is free again.
        assert_eq!(run_ok(&runner, "exit-with", &["0"]).await.status, "success");
    }
}

/// The box mounts its own `/tmp` (and `/dev`, `/etc`, `/proc`): a work
/// directory there would be hidden, so it is refused. Anywhere else the
/// way to it no longer matters: inside the box it lies on the box's own root.
#[tokio::test]
async fn work_dir_where_the_box_mounts_its_own_is_refused_elsewhere_any_works() {
    if skip_unless_root("only root builds a box") {
        return;
    }
    let private = tempfile::tempdir_in("/var/lib").unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let runner = Runner::new(task_runner::RunnerConfig {
        work_dir: Some(private.path().join("work")),
        max_concurrent: 1,
        ..config()
    })
    .unwrap();
    assert_eq!(run_ok(&runner, "exit-with", &["0"]).await.status, "success");

    let shared = tempfile::tempdir_in("/tmp").unwrap();
    let err = Runner::new(task_runner::RunnerConfig {
        work_dir: Some(shared.path().to_owned()),
        ..config()
    })
    .err()
    .expect("a work directory in /tmp must be refused");
    assert!(err.to_string().contains("must not be inside /tmp"), "{err}");
}

/// Runners on one host (here, one process) never share slot uids: each takes
/// the first free range at or above the configured base, and frees it when
/// dropped.
#[test]
fn runners_take_disjoint_slot_uid_ranges() {
    if !is_root() {
        skip_report::skipped(
            "runners_take_disjoint_slot_uid_ranges",
            "needs root (slot uids)",
        );
        return;
    }
    let cfg = RunnerConfig {
        sandbox_uid_base: 63_000,
        max_concurrent: 3,
        ..config()
    };
    let a = Runner::new(cfg.clone()).expect("first runner");
    let b = Runner::new(cfg.clone()).expect("second runner");
    let (ra, rb) = (
        a.sandbox_uids().expect("root"),
        b.sandbox_uids().expect("root"),
    );
    assert_eq!(ra.len(), 3);
    assert!(
        ra.end <= rb.start || rb.end <= ra.start,
        "{ra:?} overlaps {rb:?}"
    );
    assert!(ra.start >= 63_000 && rb.start >= 63_000);
    drop(a);
    let c = Runner::new(cfg).expect("third runner");
    assert_eq!(
        c.sandbox_uids(),
        Some(ra),
        "a dropped runner's range is free again"
    );
}

/// Mount points of this process, to show a task's mounts stay in its namespace.
fn mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').skip(4).take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn tasks_cannot_see_each_other_or_the_runner_in_proc() {
    if skip_unless_root("a private /proc needs a mount and PID namespace") {
        return;
    }
    // The box's /proc belongs to its own PID namespace: no kernel version caveat.
    let mounts_before = mounts();
    let runner = Runner::new(RunnerConfig {
        max_concurrent: 2,
        ..config()
    })
    .unwrap();
    let secret = format!("secret-{}", uuid::Uuid::new_v4());
    let holder = tokio::spawn({
        let runner = runner.clone();
        let secret = secret.clone();
        async move { run(&runner, request("sleep", &["20000", &secret])).await }
    });
    // Control: from outside the box the secret is plain to see.
    let visible = tokio::task::spawn_blocking({
        let secret = secret.clone();
        move || {
            eventually(Duration::from_secs(10), || {
                !node_processes_with_arg(&secret).is_empty()
            })
        }
    });
    assert!(
        visible.await.unwrap(),
        "the secret-holding task never started"
    );

    let pid = std::process::id().to_string();
    let (head, tail) = secret.split_at(10);
    let seen = json(
        &run_ok(&runner, "proc-scan", &[&pid, head, tail])
            .await
            .stdout,
    );
    runner.shutdown(Duration::ZERO).await;
    assert!(holder.await.unwrap().is_err(), "the holder was cut short");

    assert_eq!(
        seen["found"], false,
        "another task's argv was readable: {seen}"
    );
    assert_eq!(seen["runner_visible"], false, "{seen}");
    let slots = runner.sandbox_uids().expect("root");
    let uids = seen["uids"].as_array().unwrap();
    assert!(
        uids.iter()
            .all(|u| u.as_u64().is_some_and(|u| slots.contains(&(u as u32)))),
        "foreign processes visible: {seen}"
    );
    assert_eq!(mounts(), mounts_before, "a task's mounts reached the host");
}

/// Root reads the tasks: a tree someone else could change while it is staged
/// (a directory swapped for a symlink, say) is refused.
#[tokio::test]
async fn task_tree_others_could_change_is_refused() {
    if skip_unless_root("only a root runner requires a root-owned tasks tree") {
        return;
    }
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let root = tempfile::tempdir().unwrap();
    let task = root.path().join("t");
    let lib = task.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(task.join("package.json"), "{}").unwrap();
    std::fs::write(task.join("index.js"), "console.log('ran')").unwrap();
    for dir in [&task, &lib] {
        mode(dir, 0o755);
    }
    let runner = Runner::new(config_in(root.path())).unwrap();
    assert_eq!(run_ok(&runner, "t", &[]).await.stdout, "ran\n");

    // The tree is checked as it is staged: when the runner starts.
    let refused = |root: std::path::PathBuf| async move {
        let runner = Runner::new(config_in(root)).unwrap();
        let err = run(&runner, request("t", &[])).await.unwrap_err();
        assert_eq!(err.kind(), task_runner::ErrorKind::InvalidTask, "{err}");
        assert!(err.to_string().contains("writable by nobody else"), "{err}");
    };
    mode(&lib, 0o777);
    refused(root.path().to_owned()).await;
    mode(&lib, 0o755);
    std::os::unix::fs::chown(&lib, Some(65534), None).unwrap();
    refused(root.path().to_owned()).await;
    std::os::unix::fs::chown(&lib, Some(0), None).unwrap();
    mode(&task, 0o775);
    refused(root.path().to_owned()).await;
    mode(&task, 0o755);
    assert_eq!(run_ok(&runner, "t", &[]).await.stdout, "ran\n");

    mode(root.path(), 0o777);
    let err = Runner::new(config_in(root.path()))
        .err()
        .expect("a world-writable tasks directory must be refused");
    assert!(err.to_string().contains("writable by nobody else"), "{err}");
}

/// Slot uids never belong to an account the host knows: a range
/// that would include `nobody` (65534) or 65535 moves past them.
#[test]
fn slot_uids_skip_ids_the_host_uses() {
    if skip_unless_root("slot uids are leased only by a root runner") {
        return;
    }
    // Slots 65532..65535 would include 65534 (nobody).
    let runner = Runner::new(RunnerConfig {
        sandbox_uid_base: 65_532,
        max_concurrent: 3,
        ..config()
    })
    .unwrap();
    let slots = runner.sandbox_uids().expect("root");
    assert!(slots.start >= 65_536, "{slots:?}");
    // The locks live in a directory only root controls.
    let meta = std::fs::symlink_metadata("/run/nautilus-task-runner-uids").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o077 == 0);
}
