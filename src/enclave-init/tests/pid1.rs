//! PID 1 duties that change process-wide state, in a single-threaded test
//! binary (`harness = false`): reaping orphans as a child subreaper, and the
//! mount table in a private mount namespace.

use std::fs;
use std::path::Path;
use std::process::Command;

use enclave_init::{mounts, reaper};

fn main() {
    reaping_collects_orphans_that_would_otherwise_stay_zombies();
    the_mount_table_mounts_in_a_private_namespace();
    println!("pid1 tests: ok");
}

/// Zombie children of this process (state `Z`, parent = us).
fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            zombies.push(entry.file_name().to_string_lossy().parse().unwrap());
        }
    }
    zombies
}

/// The script leaves two orphans (its grandchildren) that die while it still runs.
fn orphan_maker() -> Command {
    let mut command = Command::new("/bin/sh");
    command.args(["-c", "(sleep 0.2 &); (sleep 0.2 &); sleep 1; exit 7"]);
    command
}

fn reaping_collects_orphans_that_would_otherwise_stay_zombies() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );

    // Without reaping (waiting for the command only), the orphans stay zombies.
    let status = orphan_maker().status().unwrap();
    assert_eq!(status.code(), Some(7));
    let zombies = zombie_children();
    assert_eq!(
        zombies.len(),
        2,
        "expected the two orphans as zombies: {zombies:?}"
    );
    assert_eq!(reaper::reap_exited(), 2);
    assert!(zombie_children().is_empty());

    // supervise() reaps them as they die and returns the command's own status.
    let outcome = reaper::supervise(&mut orphan_maker()).unwrap();
    assert_eq!(outcome.status.code(), Some(7));
    assert_eq!(outcome.orphans_reaped, 2);
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    println!("reaping: ok");
}

fn the_mount_table_mounts_in_a_private_namespace() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED the_mount_table_mounts_in_a_private_namespace: needs root");
        return;
    }
    let dev_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    // SAFETY: unshare and mount with valid arguments; this process is single-threaded.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let rc = libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(
            rc,
            0,
            "making / private: {}",
            std::io::Error::last_os_error()
        );
    }
    let root = tempfile::tempdir().unwrap();
    let results = mounts::mount_all(root.path(), mounts::TABLE);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for (mount, outcome) in &results {
        assert!(outcome.is_ok(), "{mount:?}: {outcome:?}");
        let target = root.path().join(mount.target.trim_start_matches('/'));
        let line = mount_line(&info, &target)
            .unwrap_or_else(|| panic!("{} is not a mount point", target.display()));
        assert!(line.contains(&format!(" - {} ", mount.fstype)), "{line}");
        assert!(line.contains("nosuid"), "{line}");
        if mount.flags & libc::MS_NOEXEC != 0 {
            assert!(line.contains("noexec"), "{line}");
        }
    }
    let shm = fs::metadata(root.path().join("dev/shm")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&shm.permissions()) & 0o7777,
        0o1777
    );
    // Nothing leaked into the namespace we came from: its mount table is
    // read through PID 1's view.
    let host = fs::read_to_string("/proc/1/mountinfo").unwrap_or_default();
    assert!(!host.contains(&*root.path().to_string_lossy()));
    assert!(dev_before.lines().count() <= info.lines().count());
    for (mount, _) in results.iter().rev() {
        let target = root.path().join(mount.target.trim_start_matches('/'));
        let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2 on a valid path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    println!("mount table: ok");
}

/// The mountinfo line whose mount point is exactly `target`.
fn mount_line<'a>(info: &'a str, target: &Path) -> Option<&'a str> {
    let target = target.to_string_lossy();
    info.lines()
        .rev()
        .find(|line| line.split(' ').nth(4) == Some(&*target))
}
