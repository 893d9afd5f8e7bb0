//! One cgroup per slot: memory (as the kernel counts it: anonymous, shared,
//! tmpfs and page cache), swap off, process count, and an equal CPU weight
//! per slot below the runner's own.
//!
//! [`Cgroups::new`] finds, per controller, the hierarchy that carries it
//! (cgroup v2 where its controllers can be enabled below the runner, v1
//! otherwise) and the runner's own cgroup there (`/proc/self/cgroup`), then
//! creates `<own>/nautilus-<tag>/slot-<i>`: always nested under the runner's
//! own cgroup, never beside it. A v2 hierarchy without any of the controllers
//! is still used for membership (`cgroup.procs` lists a slot's processes
//! under the kernel's count, not the runner's).
//!
//! A task's box is in its slot from its first instruction, with no window
//! where it runs outside, and everything it starts stays inside:
//! - v2: the box is cloned straight into the slot ([`Join::fork`], `clone3`
//!   with `CLONE_INTO_CGROUP`, Linux 5.7+);
//! - v1: the cloned child writes `0` to the slot's `tasks` files, opened
//!   beforehand ([`Join::enter`]).
//!
//! Neither takes the kernel's global `cgroup_threadgroup_rwsem` for writing,
//! which a move through `cgroup.procs` does: that waits for an RCU grace
//! period (5–15 ms measured here, stalling every fork on the host meanwhile)
//! unless cgroup2 is mounted with `favordynmods`. The `tasks` file moves one
//! thread, which is the whole process in a freshly cloned child. Where
//! `clone3` cannot place the box (an older kernel), the child writes the v2
//! `cgroup.procs` instead and pays that wait.
//!
//! On an OOM kill, cgroup v2 kills the whole slot (`memory.oom.group`); on v1
//! the runner is told through an eventfd ([`Slot::oom_event`]) and kills it.
//! Either way [`Slot::oom_kills`] counts it, so the result can say why.
//!
//! Every feature is probed on its own ([`Feature`]): each slot's files are
//! written one by one, without creating them, and what the kernel lacks is
//! left out and named, never the controller with it. AWS's Nitro kernel
//! (4.14) has no `memory.oom.group`: memory, pids and CPU limits stay in
//! force, and [`CgroupSummary::features`] says the OOM kill is per process.
//!
//! Written by hand, not with `cgroups-rs`: the join must happen in the
//! pre-exec child with one async-signal-safe `write` per hierarchy, and the
//! nesting under the runner's own cgroup per v1 controller is the point;
//! the few files written here are simpler to audit than that crate's model.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long emptying a slot may take before the runner reports it.
const EMPTY_DEADLINE: Duration = Duration::from_secs(5);

/// Relative CPU weight (cgroup v2 scale, default 100) of all slots together:
/// half the runner's own, so the server keeps answering under load.
const TASKS_CPU_WEIGHT: u64 = 50;
/// Each slot's weight among the slots: all equal.
const SLOT_CPU_WEIGHT: u64 = 100;

/// The hierarchies one task joins at most: a v2 one and three v1 controllers.
const MAX_HIERARCHIES: usize = 4;

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in `libc` for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`),
/// declared here: `libc` has it for a few targets only.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup feature the runner uses, probed on its own in every slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feature {
    /// The memory limit: v2 `memory.max`, v1 `memory.limit_in_bytes`.
    MemoryMax,
    /// Swap off: v2 `memory.swap.max`, v1 `memory.memsw.limit_in_bytes`.
    SwapMax,
    /// An OOM kill ends the whole slot: v2 `memory.oom.group` (Linux 4.19+);
    /// v1: the runner kills the slot on the kernel's OOM notification.
    OomGroup,
    /// The process count limit: `pids.max`.
    PidsMax,
    /// An equal CPU share per slot: v2 `cpu.weight`, v1 `cpu.shares`.
    CpuWeight,
    /// A box is cloned straight into its v2 slot (`CLONE_INTO_CGROUP`, 5.7+).
    CloneInto,
}

impl Feature {
    const ALL: [Feature; 6] = [
        Feature::MemoryMax,
        Feature::SwapMax,
        Feature::OomGroup,
        Feature::PidsMax,
        Feature::CpuWeight,
        Feature::CloneInto,
    ];

    fn name(self) -> &'static str {
        match self {
            Feature::MemoryMax => "memory.max",
            Feature::SwapMax => "memory.swap.max",
            Feature::OomGroup => "memory.oom.group",
            Feature::PidsMax => "pids.max",
            Feature::CpuWeight => "cpu.weight",
            Feature::CloneInto => "clone-into-cgroup",
        }
    }

    /// The controller a feature belongs to; `None` for the v2 mechanisms.
    fn controller(self) -> Option<Controller> {
        match self {
            Feature::MemoryMax | Feature::SwapMax | Feature::OomGroup => Some(Controller::Memory),
            Feature::PidsMax => Some(Controller::Pids),
            Feature::CpuWeight => Some(Controller::Cpu),
            Feature::CloneInto => None,
        }
    }
}

/// What probing a feature in a slot found; each carries how, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    InForce(String),
    Missing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    feature: Feature,
    state: State,
}

impl Probe {
    fn in_force(feature: Feature, how: impl Into<String>) -> Self {
        Probe {
            feature,
            state: State::InForce(how.into()),
        }
    }

    fn missing(feature: Feature, why: impl Into<String>) -> Self {
        Probe {
            feature,
            state: State::Missing(why.into()),
        }
    }

    fn is_in_force(&self) -> bool {
        matches!(self.state, State::InForce(_))
    }

    fn public(&self) -> CgroupFeature {
        let (available, in_force, detail) = match &self.state {
            State::InForce(d) => (true, true, d),
            State::Missing(d) => (false, false, d),
        };
        CgroupFeature {
            name: self.feature.name().to_owned(),
            available,
            in_force,
            detail: detail.clone(),
        }
    }
}

/// Whether two slots' probes found the same features in the same states
/// (details may name different slots' errors).
fn same_features(a: &[Probe], b: &[Probe]) -> bool {
    let states = |p: &[Probe]| -> Vec<(Feature, std::mem::Discriminant<State>)> {
        p.iter()
            .map(|p| (p.feature, std::mem::discriminant(&p.state)))
            .collect()
    };
    states(a) == states(b)
}

/// Whether `probes` (one slot's) put `feature` in force.
fn in_force(probes: &[Probe], feature: Feature) -> bool {
    probes
        .iter()
        .any(|p| p.feature == feature && p.is_in_force())
}

/// The cgroup limits in force for every slot, as `/manifest` and
/// `/health_check` list them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupSummary {
    /// `"v2"`, `"v1"`, `"v1+v2"` (controllers on both), or `"none"`: only
    /// the rlimits apply.
    pub version: String,
    /// Controllers in force per slot, of `memory`, `pids`, `cpu`.
    pub controllers: Vec<String>,
    /// A slot's memory limit, counting anonymous and shared memory, tmpfs and
    /// page cache; reaching it kills the task (OOM inside its cgroup).
    pub memory_max_bytes: Option<u64>,
    /// A slot's swap limit: 0, swap off (`None` when the kernel does not
    /// account swap; then `swappiness` 0 on v1).
    pub swap_max_bytes: Option<u64>,
    /// A slot's limit on processes and threads.
    pub pids_max: Option<u64>,
    /// Each slot's CPU weight among the slots (all equal; v2 scale, v1
    /// `cpu.shares` = weight × 1024 / 100).
    pub slot_cpu_weight: Option<u64>,
    /// The CPU weight of all slots together against the runner's own 100.
    pub tasks_cpu_weight: Option<u64>,
    /// Every feature the runner uses, probed one by one: in force, present
    /// but not used, or missing (and what stands in for it).
    pub features: Vec<CgroupFeature>,
    /// Names of the features this kernel or setup lacks (from `features`).
    pub missing: Vec<String>,
    /// What is missing and why, if anything is.
    pub note: Option<String>,
}

/// One probed cgroup feature, as `/manifest` and `/health_check` list it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupFeature {
    /// The cgroup v2 name: `memory.max`, `memory.swap.max`,
    /// `memory.oom.group`, `pids.max`, `cpu.weight`, `clone-into-cgroup`.
    pub name: String,
    /// The kernel has it (or its v1 equivalent) and it could be set.
    pub available: bool,
    /// It applies to every slot.
    pub in_force: bool,
    /// The file or mechanism that provides it here (v1 names differ), or why
    /// it is missing or unused and what stands in for it.
    pub detail: String,
}

impl CgroupSummary {
    fn none(note: String) -> Self {
        let why = if note.is_empty() { "no cgroups" } else { &note };
        CgroupSummary {
            features: Feature::ALL
                .map(|f| Probe::missing(f, why).public())
                .to_vec(),
            missing: Feature::ALL.iter().map(|f| f.name().to_owned()).collect(),
            version: "none".into(),
            controllers: Vec::new(),
            memory_max_bytes: None,
            swap_max_bytes: None,
            pids_max: None,
            slot_cpu_weight: None,
            tasks_cpu_weight: None,
            note: Some(note),
        }
    }
}

/// What every slot gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// One mounted hierarchy for some controllers and a directory in it: the
/// runner's own cgroup when found ([`discover`]), its group
/// `<own>/nautilus-<tag>` once created ([`Hierarchy::create_group`]).
#[derive(Debug)]
struct Hierarchy {
    version: Version,
    /// Controllers managed here; empty for a v2 hierarchy used for membership only.
    controllers: Vec<Controller>,
    dir: PathBuf,
}

/// The slot cgroups of one runner; removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroups {
    hierarchies: Vec<Hierarchy>,
    slots: Vec<Slot>,
    summary: CgroupSummary,
}

/// One slot's cgroups, one per hierarchy.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    dirs: Vec<(PathBuf, Version)>,
    /// What the child writes to join, open for writing: v1 `tasks` files,
    /// and the v2 `cgroup.procs` unless the box is cloned into v2 (`into`).
    procs: Vec<OwnedFd>,
    /// The v2 slot directory, when the box is cloned straight into it.
    into: Option<OwnedFd>,
    /// `memory.events` (v2) or `memory.oom_control` (v1): holds `oom_kill N`.
    oom_counter: Option<PathBuf>,
    /// v1: an eventfd the kernel signals on OOM in this slot.
    oom_event: Option<OwnedFd>,
    /// The memory controller's slot directory.
    memory: Option<(PathBuf, Version)>,
    /// `pids.events`: holds `max N`, the forks the limit refused.
    pids_events: Option<PathBuf>,
}

/// A slot's peak memory, measured from when [`Slot::peak_from_now`] reset it.
#[derive(Debug)]
pub(crate) struct Peak(fs::File);

impl Peak {
    /// Bytes, read from the descriptor that reset it (v2 keeps the peak per
    /// descriptor).
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 32];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }
}

/// How a new child gets into its slot: the v2 directory it is cloned into
/// and the descriptors it writes; `Copy` and allocation-free, for the
/// pre-exec child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Join {
    into: Option<RawFd>,
    fds: [RawFd; MAX_HIERARCHIES],
    len: usize,
}

impl Join {
    /// Joins nothing.
    pub const NONE: Join = Join {
        into: None,
        fds: [-1; MAX_HIERARCHIES],
        len: 0,
    };

    /// A fork-like clone (no new stack, `SIGCHLD` at exit) with the
    /// namespace `flags`, straight into the slot's v2 cgroup when there is
    /// one to clone into; returns as `clone(2)` does (0 in the child, its pid
    /// in the parent, -1 with `errno` set). The child must still [`enter`].
    ///
    /// # Safety
    /// As `fork` in a multi-threaded process: the child may make only
    /// async-signal-safe calls until it execs or exits. The descriptors must
    /// be open.
    ///
    /// [`enter`]: Join::enter
    pub unsafe fn fork(&self, flags: libc::c_int) -> libc::c_long {
        match self.into {
            Some(dir) => {
                let args = CloneArgs {
                    flags: flags as u64 | CLONE_INTO_CGROUP,
                    exit_signal: libc::SIGCHLD as u64,
                    cgroup: dir as u64,
                    ..CloneArgs::default()
                };
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            }
            None => libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            ),
        }
    }

    /// Whether a child cloned this way with `flags` starts (and exits 0):
    /// tried with a child that exits at once.
    pub fn try_clone(&self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: the child only exits.
        let pid = unsafe { self.fork(flags) };
        if pid == 0 {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        match libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            true => Ok(()),
            false => Err(io::Error::other(format!(
                "the child ended with {status:#x}"
            ))),
        }
    }

    /// Moves the calling process into the slot's cgroups.
    ///
    /// # Safety
    /// Async-signal-safe (raw `write`s); the descriptors must still be open,
    /// which the runner guarantees while the slot is held. The caller must
    /// be single-threaded (a freshly forked or cloned child): on v1 only the
    /// calling thread moves.
    pub unsafe fn enter(&self) -> io::Result<()> {
        for &fd in &self.fds[..self.len] {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Cgroups {
    /// No cgroups: only the rlimits apply, for the reason given.
    pub fn none(reason: &str) -> Self {
        Cgroups {
            hierarchies: Vec::new(),
            slots: Vec::new(),
            summary: CgroupSummary::none(reason.to_owned()),
        }
    }

    /// Creates `slots` slot cgroups in group `nautilus-<tag>` under the
    /// runner's own cgroup of each hierarchy. `tag` (the first slot uid) must
    /// be unique among live runners: a group of that name is a dead
    /// predecessor's and is emptied and replaced. So is any other
    /// `nautilus-<n>` for which `stale(n)` returns a guard (no live runner
    /// holds `n`; none can take it while the guard lives): a server killed
    /// with SIGKILL cannot remove its own. Never fails: what cannot be set up
    /// is left out and named in the summary's `note`.
    pub fn new(
        tag: u32,
        slots: usize,
        limits: Limits,
        stale: &dyn Fn(u32) -> Option<fs::File>,
    ) -> Self {
        let (mut found, mut notes) = match discover() {
            Ok(found) => found,
            Err(e) => return Cgroups::none(&format!("cgroups: {e}")),
        };
        let name = format!("nautilus-{tag}");
        for h in &found {
            sweep(&h.dir, tag, stale);
        }
        let mut hierarchies = Vec::new();
        for h in found.drain(..) {
            match h.create_group(&name) {
                Ok(h) => hierarchies.push(h),
                Err(e) => notes.push(e),
            }
        }
        let mut made = Vec::new();
        // Slot 0's probes decide what is in force; every other slot must
        // come out the same (one kernel: it does).
        let mut probes: Vec<Probe> = Vec::new();
        for index in 0..slots {
            match Slot::create(&hierarchies, index, limits) {
                Ok((slot, found)) if index == 0 => {
                    probes = found;
                    made.push(slot);
                }
                Ok((slot, found)) if same_features(&found, &probes) => made.push(slot),
                Ok((slot, found)) => {
                    notes.push(format!(
                        "slot {index}: its cgroup features differ from slot 0's ({found:?})"
                    ));
                    made.push(slot);
                    break;
                }
                Err(e) => {
                    notes.push(format!("slot {index}: {e}"));
                    break;
                }
            }
        }
        let mut cgroups = Cgroups {
            hierarchies,
            slots: made,
            summary: CgroupSummary::none(String::new()),
        };
        if cgroups.slots.len() < slots || notes.iter().any(|n| n.starts_with("slot ")) {
            // All or nothing: slots with different limits would be unfair and confusing.
            cgroups.remove();
            cgroups.hierarchies.clear();
            cgroups.slots.clear();
            probes.clear();
        }
        cgroups.summary = summarize(&cgroups.hierarchies, &probes, limits, notes);
        cgroups
    }

    pub fn summary(&self) -> &CgroupSummary {
        &self.summary
    }

    /// Slot `index`'s cgroups, if there are any.
    pub fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)
    }

    /// Empties and removes every slot and group this runner made.
    fn remove(&self) {
        for slot in &self.slots {
            if let Err(e) = slot.empty() {
                tracing::error!(error = %e, "slot cgroup could not be emptied");
            }
            for (dir, _) in &slot.dirs {
                remove_dir(dir);
            }
        }
        for h in &self.hierarchies {
            remove_dir(&h.dir);
        }
    }
}

/// The summary of what `probes` (slot 0's, in `hierarchies`) put in force;
/// features no hierarchy carries are named missing, with `notes`.
fn summarize(
    hierarchies: &[Hierarchy],
    probes: &[Probe],
    limits: Limits,
    mut notes: Vec<String>,
) -> CgroupSummary {
    let on = |f| in_force(probes, f);
    let mut versions = Vec::new();
    let mut controllers = Vec::new();
    for c in Controller::ALL {
        let limited = Feature::ALL
            .iter()
            .any(|&f| f.controller() == Some(c) && on(f));
        let carrier = hierarchies.iter().find(|h| h.controllers.contains(&c));
        match (limited, carrier) {
            (true, Some(h)) => {
                controllers.push(c.name().to_owned());
                if !versions.contains(&h.version) {
                    versions.push(h.version);
                }
            }
            _ => notes.push(format!("no usable {} controller", c.name())),
        }
    }
    let version = match versions[..] {
        [] => "none",
        [Version::V1] => "v1",
        [Version::V2] => "v2",
        _ => "v1+v2",
    };
    let features = Feature::ALL.map(|f| {
        let probe = probes.iter().find(|p| p.feature == f).cloned();
        probe.unwrap_or_else(|| {
            Probe::missing(
                f,
                match f.controller() {
                    Some(c) => format!("no usable {} controller", c.name()),
                    None => "no cgroup v2 hierarchy: the child joins its v1 slots \
                             through their `tasks` files before it execs"
                        .to_owned(),
                },
            )
        })
    });
    CgroupSummary {
        version: version.into(),
        controllers,
        memory_max_bytes: on(Feature::MemoryMax).then_some(limits.memory_bytes),
        swap_max_bytes: on(Feature::SwapMax).then_some(0),
        pids_max: on(Feature::PidsMax).then_some(limits.pids),
        slot_cpu_weight: on(Feature::CpuWeight).then_some(SLOT_CPU_WEIGHT),
        tasks_cpu_weight: on(Feature::CpuWeight).then_some(TASKS_CPU_WEIGHT),
        missing: features
            .iter()
            .filter(|p| matches!(p.state, State::Missing(_)))
            .map(|p| p.feature.name().to_owned())
            .collect(),
        features: features.iter().map(Probe::public).collect(),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove a cgroup");
        }
    }
}

impl Slot {
    /// Creates slot `index` in every hierarchy and applies what the kernel
    /// has; returns it with what was probed. Fails only when a directory or
    /// its membership file cannot be made (then nothing of it is left).
    fn create(
        hierarchies: &[Hierarchy],
        index: usize,
        limits: Limits,
    ) -> Result<(Slot, Vec<Probe>), String> {
        let mut slot = Slot::default();
        let mut probes = Vec::new();
        let made = (|| {
            for h in hierarchies {
                let dir = h.dir.join(format!("slot-{index}"));
                fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                slot.dirs.push((dir.clone(), h.version));
                let applied = apply(&dir, h.version, &h.controllers, limits);
                if in_force(&applied.probes, Feature::PidsMax) {
                    slot.pids_events = Some(dir.join("pids.events"));
                }
                if in_force(&applied.probes, Feature::MemoryMax) {
                    slot.memory = Some((dir.clone(), h.version));
                    slot.oom_counter = Some(dir.join(match h.version {
                        Version::V2 => "memory.events",
                        Version::V1 => "memory.oom_control",
                    }));
                }
                slot.oom_event = slot.oom_event.take().or(applied.oom_event);
                probes.extend(applied.probes);
                if h.version == Version::V2 {
                    let into =
                        fs::File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let join = Join {
                        into: Some(into.as_raw_fd()),
                        ..Join::NONE
                    };
                    match join.try_clone(0) {
                        Ok(()) => {
                            probes.push(Probe::in_force(
                                Feature::CloneInto,
                                "clone3 CLONE_INTO_CGROUP: a box starts in its v2 slot",
                            ));
                            slot.into = Some(into.into());
                            continue;
                        }
                        Err(e) => probes.push(Probe::missing(
                            Feature::CloneInto,
                            format!(
                                "clone3: {e} (Linux 5.7+): a box joins its v2 slot through \
                                 cgroup.procs before it execs, waiting for an RCU grace \
                                 period unless cgroup2 is mounted with favordynmods"
                            ),
                        )),
                    }
                }
                let procs = dir.join(match h.version {
                    Version::V2 => "cgroup.procs",
                    Version::V1 => "tasks",
                });
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| format!("{}: {e}", procs.display()))?;
                slot.procs.push(file.into());
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok((slot, probes)),
            Err(e) => {
                for (dir, _) in &slot.dirs {
                    remove_dir(dir);
                }
                Err(e)
            }
        }
    }

    /// What a forked child writes to join this slot.
    pub fn join(&self) -> Join {
        let mut join = Join::NONE;
        join.into = self.into.as_ref().map(|fd| fd.as_raw_fd());
        for (i, fd) in self.procs.iter().take(MAX_HIERARCHIES).enumerate() {
            join.fds[i] = fd.as_raw_fd();
            join.len = i + 1;
        }
        join
    }

    /// OOM kills in this slot so far (`None` without a memory controller).
    pub fn oom_kills(&self) -> Option<u64> {
        counter(self.oom_counter.as_ref()?, "oom_kill ")
    }

    /// Forks the slot's `pids.max` refused so far (`None` without a pids
    /// controller).
    pub fn pids_refused(&self) -> Option<u64> {
        counter(self.pids_events.as_ref()?, "max ")
    }

    /// Starts measuring the slot's peak memory: v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak` (reset per descriptor since Linux 6.12; `None`
    /// before, where it would hold every earlier run's peak too).
    pub fn peak_from_now(&self) -> Option<Peak> {
        use std::io::Write;
        let (dir, version) = self.memory.as_ref()?;
        let (file, reset) = match version {
            Version::V1 => ("memory.max_usage_in_bytes", "0"),
            Version::V2 => ("memory.peak", "reset"),
        };
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(file))
            .ok()?;
        f.write_all(reset.as_bytes()).ok()?;
        Some(Peak(f))
    }

    /// v1 only: a fresh descriptor of the slot's OOM eventfd, drained of
    /// earlier runs' events; readable once an OOM happens in the slot. (On v2
    /// the kernel kills the whole slot itself.)
    pub fn oom_event(&self) -> Option<OwnedFd> {
        let fd = self.oom_event.as_ref()?;
        let mut count = 0u64;
        // SAFETY: a nonblocking read of 8 bytes into a u64 from our eventfd.
        while unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) } == 8 {}
        fd.try_clone().ok()
    }

    /// Kills whatever is in the slot and waits until it is empty. Blocking.
    /// Listing is enough, no `cgroup.kill` (which Linux 6.18 also turns on
    /// every box later cloned into the slot): a box is a PID namespace that
    /// dies with its PID 1, so this only waits for the kernel to finish.
    pub fn empty(&self) -> io::Result<()> {
        let deadline = Instant::now() + EMPTY_DEADLINE;
        for (dir, _) in &self.dirs {
            loop {
                let pids = members(dir)?;
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2). A listed pid is in the slot unless it
                    // died since the read; the slot's processes are the
                    // runner's (subreaper) children, unreaped until the
                    // runner waits, so the pid cannot have been reused.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} still has processes", dir.display()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }
}

/// The number after `key` in the flat-keyed cgroup file `file`.
fn counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// Live processes in cgroup `dir` (zombies have left it).
fn members(dir: &Path) -> io::Result<Vec<libc::pid_t>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// What [`apply`] set in one slot directory.
struct Applied {
    probes: Vec<Probe>,
    /// v1: the OOM notification registered for the slot.
    oom_event: Option<OwnedFd>,
}

/// Applies `limits` for `controllers` to slot directory `dir`, one feature
/// at a time: a feature the kernel lacks is reported and the rest stay. Only
/// a failed main limit (memory, pids or CPU) takes that controller's other
/// features with it.
fn apply(dir: &Path, version: Version, controllers: &[Controller], limits: Limits) -> Applied {
    let mut probes = Vec::new();
    let mut oom_event = None;
    // Details name the file, not the slot's path: they are the same for
    // every slot and go into the attested manifest.
    let set = |feature: Feature, file: &str, value: &str| match write_in(dir, file, value) {
        Ok(()) => Probe::in_force(feature, format!("{file} = {value}")),
        Err(e) => Probe::missing(feature, e),
    };
    for &c in controllers {
        match c {
            Controller::Memory => {
                let file = match version {
                    Version::V2 => "memory.max",
                    Version::V1 => "memory.limit_in_bytes",
                };
                let mut max = set(Feature::MemoryMax, file, &limits.memory_bytes.to_string());
                // v1 charges socket buffers only once a TCP limit is set (v2
                // always counts them in memory.current).
                let tcp = "memory.kmem.tcp.limit_in_bytes";
                if let (Version::V1, State::InForce(how)) = (version, &mut max.state) {
                    if dir.join(tcp).exists() {
                        match write_in(dir, tcp, &limits.memory_bytes.to_string()) {
                            Ok(()) => how.push_str(&format!(", {tcp} = {}", limits.memory_bytes)),
                            Err(e) => how.push_str(&format!("; socket buffers not counted: {e}")),
                        }
                    }
                }
                let limited = max.is_in_force();
                probes.push(max);
                if !limited {
                    for f in [Feature::SwapMax, Feature::OomGroup] {
                        probes.push(Probe::missing(f, "no memory limit could be set"));
                    }
                    continue;
                }
                match version {
                    Version::V2 => {
                        probes.push(set(Feature::SwapMax, "memory.swap.max", "0"));
                        let mut group = set(Feature::OomGroup, "memory.oom.group", "1");
                        if let State::Missing(why) = &group.state {
                            group.state = State::Missing(format!(
                                "{why} (Linux 4.19+): an OOM kill ends the process the kernel \
                                 picks, not the whole slot; when that is the task's main \
                                 process the box's PID 1 ends the rest, and the result still \
                                 reports the OOM kill"
                            ));
                        }
                        probes.push(group);
                    }
                    Version::V1 => {
                        // The memory+swap limit may not be below the memory limit: set after it.
                        let mut swap = set(
                            Feature::SwapMax,
                            "memory.memsw.limit_in_bytes",
                            &limits.memory_bytes.to_string(),
                        );
                        if let State::Missing(why) = &swap.state {
                            let stand_in = match write_in(dir, "memory.swappiness", "0") {
                                Ok(()) => "memory.swappiness = 0 instead".to_owned(),
                                Err(e) => format!("and {e}"),
                            };
                            swap.state = State::Missing(format!(
                                "{why} (swap is not accounted: boot with swapaccount=1); {stand_in}"
                            ));
                        }
                        probes.push(swap);
                        probes.push(match oom_eventfd(dir) {
                            Ok(fd) => {
                                oom_event = Some(fd);
                                Probe::in_force(
                                    Feature::OomGroup,
                                    "v1: the runner kills the whole slot on the kernel's OOM \
                                     notification (cgroup.event_control on memory.oom_control)",
                                )
                            }
                            Err(e) => Probe::missing(
                                Feature::OomGroup,
                                format!(
                                    "v1 OOM notification: {e}: an OOM kill ends the process \
                                     the kernel picks, not the whole slot"
                                ),
                            ),
                        });
                    }
                }
            }
            Controller::Pids => {
                probes.push(set(Feature::PidsMax, "pids.max", &limits.pids.to_string()))
            }
            Controller::Cpu => {
                let (file, value) = cpu_weight(version, SLOT_CPU_WEIGHT);
                probes.push(set(Feature::CpuWeight, file, &value))
            }
        }
    }
    Applied { probes, oom_event }
}

/// Writes `value` to the existing `file` in `dir`: never creates it, so a
/// file the kernel does not provide is an error here as in cgroupfs. The
/// error names only the file.
fn write_in(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join(file))
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("writing {value} to {file}: {e}"))
}

/// The file and value of CPU weight `weight` (v2 scale) in a `version` cgroup.
fn cpu_weight(version: Version, weight: u64) -> (&'static str, String) {
    match version {
        Version::V2 => ("cpu.weight", weight.to_string()),
        Version::V1 => ("cpu.shares", (weight * 1024 / 100).to_string()),
    }
}

/// Registers an eventfd for OOM notifications of v1 memory cgroup `dir`.
fn oom_eventfd(dir: &Path) -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) returns a new descriptor or -1.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let event = unsafe { OwnedFd::from_raw_fd(raw) };
    let control = fs::File::open(dir.join("memory.oom_control"))?;
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", event.as_raw_fd(), control.as_raw_fd()),
    )?;
    Ok(event)
}

impl Hierarchy {
    /// Enables the controllers below the runner's own cgroup (v2), replaces
    /// a stale group of this name, creates the group and sets its CPU weight.
    fn create_group(mut self, name: &str) -> Result<Hierarchy, String> {
        if self.version == Version::V2 {
            let mut enabled = Vec::new();
            let mut refused = Vec::new();
            for c in self.controllers {
                match enable(&self.dir, c) {
                    Ok(()) => enabled.push(c),
                    Err(e) => refused.push(format!("{} ({e})", c.name())),
                }
            }
            self.controllers = enabled;
            if !refused.is_empty() {
                // EBUSY: a non-root cgroup with processes in it cannot hand
                // controllers to children (cgroup v2's no-internal-process rule).
                tracing::warn!(
                    cgroup = %self.dir.display(),
                    "cgroup v2: could not enable {} below the runner's cgroup; \
                     run the server in the root cgroup or in one delegated to it and otherwise empty",
                    refused.join(", ")
                );
            }
        }
        let group = self.dir.join(name);
        if group.exists() {
            remove_stale(&group).map_err(|e| format!("stale {}: {e}", group.display()))?;
        }
        fs::create_dir(&group).map_err(|e| format!("{}: {e}", group.display()))?;
        // One controller that cannot be set up here is left out alone.
        let version = self.version;
        self.controllers.retain(|&c| {
            let set = || -> Result<(), String> {
                if version == Version::V2 {
                    enable(&group, c).map_err(|e| {
                        format!("enabling {} in {}: {e}", c.name(), group.display())
                    })?;
                }
                if c != Controller::Cpu {
                    return Ok(());
                }
                let (file, value) = cpu_weight(version, TASKS_CPU_WEIGHT);
                write_in(&group, file, &value)
            };
            match set() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cgroups: {} left out", c.name());
                    false
                }
            }
        });
        self.dir = group;
        Ok(self)
    }
}

/// Lets the children of v2 cgroup `dir` use controller `c`.
fn enable(dir: &Path, c: Controller) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let on = fs::read_to_string(&control)?;
    if on.split_whitespace().any(|n| n == c.name()) {
        return Ok(());
    }
    fs::write(&control, format!("+{}", c.name()))
}

/// Removes the groups under `own` that dead runners left (see [`Cgroups::new`]).
fn sweep(own: &Path, tag: u32, stale: &dyn Fn(u32) -> Option<fs::File>) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(other) = name
            .to_str()
            .and_then(|n| n.strip_prefix("nautilus-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if other == tag {
            continue;
        }
        if let Some(_guard) = stale(other) {
            match remove_stale(&entry.path()) {
                Ok(()) => {
                    tracing::info!(group = %entry.path().display(), "removed a dead runner's cgroup")
                }
                Err(e) => {
                    tracing::warn!(group = %entry.path().display(), error = %e, "could not remove a dead runner's cgroup")
                }
            }
        }
    }
}

/// Empties and removes a group left by a dead runner.
fn remove_stale(group: &Path) -> io::Result<()> {
    for entry in fs::read_dir(group)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let slot = Slot {
                dirs: vec![(entry.path(), version_of(group))],
                ..Slot::default()
            };
            slot.empty()?;
            fs::remove_dir(entry.path())?;
        }
    }
    fs::remove_dir(group)
}

fn version_of(dir: &Path) -> Version {
    if dir.join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Finds, per controller, the hierarchy and the runner's own cgroup in it.
/// Returns the hierarchies to use and notes on what is missing.
fn discover() -> io::Result<(Vec<Hierarchy>, Vec<String>)> {
    let cgroup = fs::read_to_string("/proc/self/cgroup")?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(plan(&cgroup, &mountinfo, Path::new("/")))
}

/// [`discover`] on given `/proc/self/cgroup` and `/proc/self/mountinfo`
/// texts, with mount points taken relative to `root` (for tests).
fn plan(cgroup: &str, mountinfo: &str, root: &Path) -> (Vec<Hierarchy>, Vec<String>) {
    let mounts = parse_mounts(mountinfo);
    let mut notes = Vec::new();
    let mut found: Vec<Hierarchy> = Vec::new();
    let mut wanted: Vec<Controller> = Controller::ALL.to_vec();

    // cgroup v2 first: the "0::<path>" line.
    let v2_own = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    let v2_mount = mounts.iter().find(|m| m.fstype == "cgroup2");
    if let (Some(own), Some(mount)) = (v2_own, v2_mount) {
        if let Some(dir) = mount.dir_of(own, root) {
            let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<Controller> = Controller::ALL
                .into_iter()
                .filter(|c| available.split_whitespace().any(|n| n == c.name()))
                .collect();
            wanted.retain(|c| !controllers.contains(c));
            found.push(Hierarchy {
                version: Version::V2,
                controllers,
                dir,
            });
        }
    }
    // Then cgroup v1 for what v2 does not carry: "<id>:<controllers>:<path>".
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(names), Some(own)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let names: Vec<&str> = names.split(',').collect();
        let controllers: Vec<Controller> = wanted
            .iter()
            .copied()
            .filter(|c| names.contains(&c.name()))
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let mount = mounts.iter().find(|m| {
            m.fstype == "cgroup"
                && controllers
                    .iter()
                    .all(|c| m.options.split(',').any(|o| o == c.name()))
        });
        let Some(dir) = mount.and_then(|m| m.dir_of(own, root)) else {
            notes.push(format!(
                "cgroup v1 {} is not mounted where the runner can reach its own cgroup",
                names.join(",")
            ));
            continue;
        };
        wanted.retain(|c| !controllers.contains(c));
        found.push(Hierarchy {
            version: Version::V1,
            controllers,
            dir,
        });
    }
    (found, notes)
}

/// One cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug)]
struct Mount {
    /// The cgroup path the mount shows at its mount point.
    root: String,
    point: String,
    fstype: String,
    /// Super options: v1 lists its controllers here.
    options: String,
}

impl Mount {
    /// The directory of cgroup `path` in this mount, if the mount shows it.
    fn dir_of(&self, path: &str, root: &Path) -> Option<PathBuf> {
        let inside = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        let point = root.join(self.point.trim_start_matches('/'));
        let dir = point.join(inside.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <point> <opts> [optional…] - <fstype> <source> <super>"
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: unescape(left.get(3)?),
                point: unescape(left.get(4)?),
                fstype: fstype.to_owned(),
                options: right.get(2).copied().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')))
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's layout: v1 controllers (memory nested by a supervisor),
    /// cgroup v2 mounted beside them without any of the three.
    const HYBRID_CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/sup/job\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
33 25 0:29 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
37 25 0:33 / /sys/fs/cgroup/pids rw,relatime shared:16 - cgroup cgroup rw,pids
39 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:18 - cgroup2 cgroup2 rw
40 25 0:36 / /mnt/with\\040space rw,relatime - ext4 /dev/vda rw
";
    /// The enclave's: cgroup v2 only, the server in the root cgroup.
    const V2_CGROUP: &str = "0::/\n";
    const V2_MOUNTS: &str =
        "25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n";

    fn fake_root(dirs: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for dir in dirs {
            fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        for (file, text) in files {
            fs::write(root.path().join(file), text).unwrap();
        }
        root
    }

    fn summary_of(found: &[Hierarchy]) -> Vec<(Version, Vec<Controller>, PathBuf)> {
        found
            .iter()
            .map(|f| (f.version, f.controllers.clone(), f.dir.clone()))
            .collect()
    }

    #[test]
    fn v1_controllers_nest_under_the_runners_own_cgroup_of_each() {
        let root = fake_root(
            &[
                "sys/fs/cgroup/cpu",
                "sys/fs/cgroup/memory/sup/job",
                "sys/fs/cgroup/pids",
                "sys/fs/cgroup/unified",
            ],
            &[("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")],
        );
        let (found, notes) = plan(HYBRID_CGROUP, HYBRID_MOUNTS, root.path());
        let at = |p: &str| root.path().join(p);
        assert_eq!(
            summary_of(&found),
            vec![
                (Version::V2, vec![], at("sys/fs/cgroup/unified/")),
                (
                    Version::V1,
                    vec![Controller::Pids],
                    at("sys/fs/cgroup/pids/")
                ),
                (
                    Version::V1,
                    vec![Controller::Memory],
                    at("sys/fs/cgroup/memory/sup/job")
                ),
                (Version::V1, vec![Controller::Cpu], at("sys/fs/cgroup/cpu/")),
            ]
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn cgroup_v2_carries_the_controllers_it_has() {
        let root = fake_root(
            &["sys/fs/cgroup"],
            &[(
                "sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            )],
        );
        let (found, notes) = plan(V2_CGROUP, V2_MOUNTS, root.path());
        assert_eq!(
            summary_of(&found),
            vec![(
                Version::V2,
                vec![Controller::Memory, Controller::Pids, Controller::Cpu],
                root.path().join("sys/fs/cgroup/")
            )]
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn an_own_cgroup_outside_the_mount_is_not_used() {
        // A container-style mount showing only /other: the runner's /sup/job is not in it.
        let mounts = "33 25 0:29 /other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let root = fake_root(&["sys/fs/cgroup/memory/sup/job"], &[]);
        let (found, notes) = plan("4:memory:/sup/job\n", mounts, root.path());
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/plain\\x"), "/plain\\x");
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 512 << 20,
        pids: 64,
    };

    /// A plain directory `name` holding `files` as a v2 kernel shows them,
    /// and what [`apply`] made of it.
    fn applied_in(name: &str, files: &[&str]) -> (tempfile::TempDir, PathBuf, Applied) {
        let root = fake_root(&[name], &[]);
        let dir = root.path().join(name);
        for f in files {
            fs::write(dir.join(f), "max\n").unwrap();
        }
        let applied = apply(&dir, Version::V2, &Controller::ALL, LIMITS);
        (root, dir, applied)
    }

    /// The summary of `probes` from one v2 hierarchy with every controller.
    fn summary_v2(probes: &[Probe]) -> CgroupSummary {
        let hierarchies = [Hierarchy {
            version: Version::V2,
            controllers: Controller::ALL.to_vec(),
            dir: PathBuf::new(),
        }];
        summarize(&hierarchies, probes, LIMITS, Vec::new())
    }

    fn names(probes: &[Probe], want: bool) -> Vec<&'static str> {
        probes
            .iter()
            .filter(|p| p.is_in_force() == want)
            .map(|p| p.feature.name())
            .collect()
    }

    /// A supplement only: the v2 controller files cannot be enabled on a host
    /// whose v1 hierarchies hold the controllers, so the writes are checked
    /// against a plain directory holding the files a 6.x kernel shows.
    #[test]
    fn v2_slot_limits_are_written_as_the_kernel_documents_them() {
        // The five limits' files (a feature's name is its v2 file).
        let files = Feature::ALL.map(Feature::name);
        let (_root, dir, applied) = applied_in("slot", &files[..5]);
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "536870912");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.weight"), "100");
        assert!(
            names(&applied.probes, false).is_empty(),
            "{:?}",
            applied.probes
        );
    }

    /// AWS's Nitro kernel (4.14) has cgroup v2 memory and pids but no
    /// `memory.oom.group`: that one feature is reported missing, with what
    /// stands in, and the memory, pids and CPU limits stay in force. The
    /// directory holds the files such a kernel shows; a write never creates
    /// a file, so the missing one fails as in cgroupfs (ENOENT).
    #[test]
    fn a_kernel_without_memory_oom_group_keeps_every_limit() {
        let files = ["memory.max", "memory.swap.max", "pids.max", "cpu.weight"];
        let (_root, dir, applied) = applied_in("slot", &files);
        assert!(
            !dir.join("memory.oom.group").exists(),
            "a probe created a file"
        );
        assert_eq!(names(&applied.probes, false), ["memory.oom.group"]);
        assert_eq!(
            names(&applied.probes, true),
            ["memory.max", "memory.swap.max", "pids.max", "cpu.weight"]
        );
        let summary = summary_v2(&applied.probes);
        assert_eq!(summary.controllers, ["memory", "pids", "cpu"]);
        assert_eq!(summary.memory_max_bytes, Some(512 << 20));
        assert_eq!(summary.swap_max_bytes, Some(0));
        assert_eq!(summary.pids_max, Some(64));
        assert_eq!(summary.slot_cpu_weight, Some(100));
        let names: Vec<&str> = summary.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, Feature::ALL.map(Feature::name));
        // No v2 slot was cloned into here: those two are missing too.
        assert_eq!(summary.missing, ["memory.oom.group", "clone-into-cgroup"]);
        let oom = &summary.features[2];
        assert!(!oom.available && !oom.in_force, "{oom:?}");
        assert!(oom.detail.contains("not the whole slot"), "{oom:?}");
        // Every slot of such a kernel probes alike, and the attested details
        // name files, not one slot's path: the slots are not told apart.
        let (_other, _, second) = applied_in("slot-1", &files);
        assert!(same_features(&applied.probes, &second.probes));
        assert!(
            summary.features.iter().all(|f| !f.detail.contains("/slot")),
            "{:?}",
            summary.features
        );
        // A slot that came out differently is told apart.
        let mut changed = second.probes.clone();
        changed[0].state = State::Missing("gone".into());
        assert!(!same_features(&applied.probes, &changed));
    }

    /// A failed memory limit takes swap and the OOM group with it, and
    /// nothing else: pids and CPU stay.
    #[test]
    fn without_a_memory_limit_pids_and_cpu_stay() {
        let (_root, _, applied) = applied_in("slot", &["pids.max", "cpu.weight"]);
        assert_eq!(
            names(&applied.probes, false),
            ["memory.max", "memory.swap.max", "memory.oom.group"]
        );
        assert_eq!(names(&applied.probes, true), ["pids.max", "cpu.weight"]);
        let summary = summary_v2(&applied.probes);
        assert_eq!(summary.controllers, ["pids", "cpu"]);
        assert_eq!(summary.memory_max_bytes, None);
        assert_eq!(summary.pids_max, Some(64));
        assert!(summary
            .note
            .unwrap()
            .contains("no usable memory controller"));
    }

    /// The real kernel's answer for files a cgroup lacks: this host's v2
    /// hierarchy carries none of the controllers (v1 holds them), so a v2
    /// slot there has no `memory.max`, `memory.oom.group` nor `pids.max`;
    /// the probe names each missing with cgroupfs's own error, and writes
    /// nothing else.
    #[test]
    fn cgroupfs_refuses_what_a_cgroup_lacks_and_the_probe_says_so() {
        let Some((_cgroups, dir)) = real_v2_slot(3_800_000_000) else {
            return;
        };
        if dir.join("memory.max").exists() {
            eprintln!("SKIPPED (this v2 hierarchy has the memory controller)");
            return;
        }
        let applied = apply(
            &dir,
            Version::V2,
            &[Controller::Memory, Controller::Pids],
            LIMITS,
        );
        assert!(
            names(&applied.probes, true).is_empty(),
            "{:?}",
            applied.probes
        );
        assert_eq!(
            names(&applied.probes, false),
            [
                "memory.max",
                "memory.swap.max",
                "memory.oom.group",
                "pids.max"
            ]
        );
        let why = match &applied.probes[0].state {
            State::Missing(why) => why.clone(),
            other => panic!("{other:?}"),
        };
        assert!(why.contains("No such file or directory"), "{why}");
    }

    /// On this host's real cgroups every feature is probed and what the
    /// summary says is in force is what the slot's files hold.
    #[test]
    fn real_slots_report_each_feature_as_the_files_show() {
        let Some(cgroups) = real_cgroups(3_700_000_000) else {
            return;
        };
        let summary = cgroups.summary().clone();
        eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());
        let names: Vec<&str> = summary.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, Feature::ALL.map(Feature::name));
        let slot = cgroups.slot(0).expect("a slot on a host with cgroups");
        let feature = |n: &str| summary.features.iter().find(|f| f.name == n).unwrap();
        for (dir, version) in &slot.dirs {
            let read = |f: &str| fs::read_to_string(dir.join(f)).map(|t| t.trim().to_owned());
            match version {
                Version::V1 => {
                    if let Ok(limit) = read("memory.limit_in_bytes") {
                        assert_eq!(limit, (256u64 << 20).to_string());
                        assert!(feature("memory.max").in_force);
                        // v1 has no memory.oom.group: its stand-in is in force.
                        assert!(!dir.join("memory.oom.group").exists());
                        let oom = feature("memory.oom.group");
                        assert!(oom.in_force && oom.detail.starts_with("v1:"), "{oom:?}");
                        assert!(slot.oom_event.is_some());
                        assert_eq!(
                            feature("memory.swap.max").in_force,
                            read("memory.memsw.limit_in_bytes").ok()
                                == Some((256u64 << 20).to_string())
                        );
                    }
                    if let Ok(pids) = read("pids.max") {
                        assert_eq!(pids, "32");
                        assert!(feature("pids.max").in_force);
                    }
                    if let Ok(shares) = read("cpu.shares") {
                        assert_eq!(shares, "1024");
                        assert!(feature("cpu.weight").in_force);
                    }
                }
                Version::V2 => {
                    let clone = feature("clone-into-cgroup");
                    assert_eq!(clone.in_force, slot.into.is_some(), "{clone:?}");
                    if kernel_at_least(5, 7) {
                        assert!(clone.in_force, "{clone:?}");
                    }
                }
            }
        }
        let missing: Vec<&str> = summary
            .features
            .iter()
            .filter(|f| !f.available)
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(summary.missing, missing);
    }

    #[test]
    fn joining_writes_zero_to_every_procs_descriptor() {
        let root = fake_root(&[], &[("a", ""), ("b", "")]);
        let open = |f: &str| -> OwnedFd {
            fs::OpenOptions::new()
                .write(true)
                .open(root.path().join(f))
                .unwrap()
                .into()
        };
        let slot = Slot {
            procs: vec![open("a"), open("b")],
            ..Slot::default()
        };
        // SAFETY: the descriptors are open (held by `slot`).
        unsafe { slot.join().enter() }.unwrap();
        for f in ["a", "b"] {
            assert_eq!(fs::read_to_string(root.path().join(f)).unwrap(), "0");
        }
    }

    /// Real cgroups: a child cloned and joined as a box is is in every
    /// hierarchy's slot, and is killed when its slot is emptied through each
    /// hierarchy alone; a box cloned into a slot emptied before still lives
    /// (it did not on Linux 6.18 once a slot was emptied through
    /// `cgroup.kill`); everything is removed with the runner's cgroups.
    #[test]
    fn emptying_a_slot_kills_its_processes_in_each_hierarchy() {
        let Some(cgroups) = real_cgroups(4_000_000_000) else {
            return;
        };
        let slot = cgroups.slot(0).expect("a slot on a host with cgroups");
        if slot.dirs.iter().any(|(_, v)| *v == Version::V2) && kernel_at_least(5, 7) {
            assert!(
                slot.into.is_some(),
                "Linux 5.7+ clones a box into its v2 slot"
            );
        }
        let mut groups = Vec::new();
        for (dir, version) in &slot.dirs {
            let pid = box_child(slot);
            let alone = Slot {
                dirs: vec![(dir.clone(), *version)],
                ..Slot::default()
            };
            alone.empty().unwrap();
            assert_eq!(
                reap(pid),
                Some(libc::SIGKILL),
                "{version:?} {}",
                dir.display()
            );
            groups.push(dir.parent().unwrap().to_owned());
        }
        assert!(!groups.is_empty());
        drop(cgroups);
        for group in groups {
            assert!(!group.exists(), "{} outlived its runner", group.display());
        }
    }

    /// Where a box cannot be cloned into its v2 slot (Linux before 5.7), the
    /// child joins by writing the slot's `cgroup.procs`, and emptying the
    /// slot kills it.
    #[test]
    fn without_clone_into_a_child_joins_v2_through_cgroup_procs() {
        let Some((_cgroups, dir)) = real_v2_slot(3_900_000_000) else {
            return;
        };
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .unwrap();
        let slot = Slot {
            dirs: vec![(dir.clone(), Version::V2)],
            procs: vec![procs.into()],
            ..Slot::default()
        };
        let pid = box_child(&slot);
        slot.empty().unwrap();
        assert_eq!(reap(pid), Some(libc::SIGKILL));
    }

    /// One real slot in a group tagged `base - pid` (no runner leases uids
    /// that high), or `None` (reported as skipped) without root.
    fn real_cgroups(base: u32) -> Option<Cgroups> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip_report::skipped("real slot cgroups", "needs root");
            return None;
        }
        let limits = Limits {
            memory_bytes: 256 << 20,
            pids: 32,
        };
        Some(Cgroups::new(base - std::process::id(), 1, limits, &|_| {
            None
        }))
    }

    /// [`real_cgroups`] and its slot's v2 directory, if there is one.
    fn real_v2_slot(base: u32) -> Option<(Cgroups, PathBuf)> {
        let cgroups = real_cgroups(base)?;
        let v2 = cgroups.slot(0).and_then(|s| {
            let (dir, _) = s.dirs.iter().find(|(_, v)| *v == Version::V2)?;
            Some(dir.clone())
        });
        let Some(dir) = v2 else {
            eprintln!("SKIPPED (no cgroup v2 hierarchy here)");
            return None;
        };
        Some((cgroups, dir))
    }

    /// A child cloned and joined into `slot` as a box is, waiting to be
    /// killed, once it is a member of every hierarchy's slot.
    fn box_child(slot: &Slot) -> libc::pid_t {
        let join = slot.join();
        // SAFETY: the child makes only async-signal-safe calls.
        let pid = unsafe { join.fork(0) };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                if let Err(e) = join.enter() {
                    libc::_exit(e.raw_os_error().unwrap_or(255));
                }
                loop {
                    libc::pause();
                }
            }
        }
        assert!(pid > 0, "clone: {}", io::Error::last_os_error());
        let pid = pid as libc::pid_t;
        for (dir, _) in &slot.dirs {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !members(dir).unwrap().contains(&pid) {
                if Instant::now() > deadline {
                    let mut status = 0;
                    // SAFETY: a nonblocking wait for our own child.
                    let ended = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
                    panic!(
                        "{pid} never in {} ({})",
                        dir.display(),
                        if ended {
                            format!("ended: status {status:#x}")
                        } else {
                            "alive".into()
                        }
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        pid
    }

    /// Waits for our child `pid`; the signal that ended it, if one did.
    fn reap(pid: libc::pid_t) -> Option<libc::c_int> {
        let mut status = 0;
        // SAFETY: reaping our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
    }

    /// Whether the running kernel is at least `major.minor`.
    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u32>().ok());
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
    }
}
