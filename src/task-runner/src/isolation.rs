//! What isolation is in force, detected once at start, for the attested
//! manifest and the health check.

use serde::{Deserialize, Serialize};

/// The isolation every run of a [`Runner`](crate::Runner) gets, as detected
/// when it started. Serialized into the server's `/manifest` (attested) and
/// `/health_check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// `"root"`: slot uids and a box of namespaces per run (the enclave's
    /// mode); `"unprivileged"`: tasks share the runner's uid (development).
    pub mode: String,
    /// Kernel release the runner started on.
    pub kernel: String,
    /// Namespaces each run gets fresh (`mount`, `ipc`, `net`, `uts`, `pid`,
    /// `cgroup`).
    pub namespaces: Vec<String>,
    /// A PID 1 reaper per run: when it ends, everything the task started ends.
    pub pid1_reaper: bool,
    /// The task's `/proc` shows only its own processes.
    pub private_proc: bool,
    /// The task's `/dev` holds only null, zero, full, random, urandom,
    /// a private shm and the fd links.
    pub private_dev: bool,
    /// `"loopback-only"` (a network namespace of its own) or `"host"`.
    pub network: String,
    /// The task's code is mounted read-only and other runs are invisible.
    pub readonly_code: bool,
    /// The host paths a box shows, read-only (`node`, the libraries its
    /// loader opens, the links on the way, `box_paths`); its root is a
    /// fresh tmpfs that holds nothing else of the host but the task snapshot.
    pub box_root: Vec<String>,
    /// Directories a task can write, each a private tmpfs (empty without root).
    pub scratch_dirs: Vec<String>,
    /// Size of each scratch tmpfs, in bytes (0 without root).
    pub scratch_bytes: u64,
    /// Scratch directories are mounted `noexec`: a task cannot run code it wrote.
    pub scratch_noexec: bool,
    /// How a task is kept from executing a memfd: `"sysctl"`
    /// (`vm.memfd_noexec=2` in its PID namespace), `"seccomp"`
    /// (`memfd_create` denied) or `"none"`.
    pub memfd_noexec: String,
    /// The task cannot lower its `oom_score_adj` below 1000 (the runner has
    /// `CAP_SYS_RESOURCE`).
    pub oom_score_floor: bool,
    /// Version of the seccomp profile every task runs under.
    pub seccomp_profile: String,
    /// Each slot runs under a uid of its own.
    pub slot_uids: bool,
    /// What keeps a task's V8 heap within its memory limit: `"cgroup"`
    /// (the slot's memory cgroup, whose limit the box shows where Node.js
    /// reads it, so V8 sizes its heap from it and needs no flag; going over
    /// is a memory-limit kill), or the `--max-old-space-size=<MiB>` flag
    /// `node` then gets (no slot memory cgroup; the flag costs Node.js its
    /// start-up code cache).
    pub heap_limit: String,
    /// Isolation features that are not in force here, and why.
    pub missing: Vec<String>,
}

/// Kernel release, e.g. `6.1.0-18-amd64`.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether this process has `CAP_SYS_RESOURCE` in its effective set: only
/// then does writing `oom_score_adj` also set the floor a task cannot go
/// below (`oom_score_adj_min`).
pub(crate) fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"));
    caps.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}
