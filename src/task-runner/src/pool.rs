//! The warm pool (root mode): per slot, a box whose `node` is already
//! started and waits for its task.
//!
//! A warm box is built exactly as a cold one (the slot's uid, cgroups,
//! namespaces, rlimits, seccomp filter, environment with its own task id),
//! but `node` starts the bootstrap `pool.cjs`, which blocks reading a
//! control pipe. A run hands it the task (working directory, entry, args)
//! and it runs that one task as `node <entry> <args…>` would, then exits
//! like any task; the box ends with it. Each process still runs exactly one
//! task. What a task can observe differently: the process started earlier
//! (Node's clocks count from hand-over, but the kernel's start time and
//! libuv's timer base do not: docs/isolation.md), the bottom frame of its
//! top-level stack is Node's tick queue instead of Node's main-module
//! runner, and an error thrown through a clock the bootstrap rebased (a
//! `performance.mark` with a bad name) has a bootstrap frame.
//!
//! Only the slot's own run ever takes or refills its warm box, while holding
//! the slot, so a warm box never shares its slot's cgroup with a running
//! task. A box found dead, stopped or gone quiet before use is discarded and
//! the run starts cold.

use std::sync::Mutex;

use crate::exec::Boxed;

/// The bootstrap `node` runs in a warm box.
pub(crate) const BOOTSTRAP: &str = include_str!("pool.cjs");
/// Its name in the snapshot.
pub(crate) const BOOTSTRAP_FILE: &str = "pool.cjs";

/// A box waiting for its task.
pub(crate) struct Warm {
    pub boxed: Boxed,
    /// The task id in the box's environment: the result's `task_id`.
    pub task_id: String,
}

/// One place per slot; slots at or above `size` stay cold.
pub(crate) struct Pool {
    boxes: Mutex<Vec<Option<Warm>>>,
    size: usize,
}

impl Pool {
    pub fn new(slots: usize, size: usize) -> Self {
        Self {
            boxes: Mutex::new((0..slots).map(|_| None).collect()),
            size: size.min(slots),
        }
    }

    /// How many slots keep a warm box.
    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Warm>>> {
        // A slot's entry is replaced whole; a panicking holder leaves it consistent.
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot's warm box, if it has one.
    pub fn take(&self, slot: usize) -> Option<Warm> {
        self.lock().get_mut(slot)?.take()
    }

    /// Parks a warm box for `slot`; one already there is dropped (killed).
    pub fn put(&self, slot: usize, warm: Warm) {
        let old = self
            .lock()
            .get_mut(slot)
            .and_then(|place| place.replace(warm));
        drop(old);
    }

    /// Whether `slot` has a warm box.
    pub fn has(&self, slot: usize) -> bool {
        self.lock().get(slot).is_some_and(Option::is_some)
    }

    /// Warm boxes parked now.
    pub fn ready(&self) -> usize {
        self.lock().iter().filter(|w| w.is_some()).count()
    }

    /// The first process (the reaper) of each parked box.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .filter_map(|w| w.as_ref()?.boxed.pid())
            .collect()
    }

    /// Kills every parked box and waits until it is gone (blocking: the
    /// slot cgroups can be removed next).
    pub fn clear(&self) {
        let all: Vec<Warm> = self.lock().iter_mut().filter_map(Option::take).collect();
        for mut warm in all {
            warm.boxed.kill_and_reap();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.clear();
    }
}
