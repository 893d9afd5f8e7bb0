//! Root mode: every task is staged and digested once, at start, into one
//! root-owned snapshot that every box shows read-only at the work directory.
//!
//! As root the tasks tree must be root's alone (checked at start), and in the
//! enclave it is part of the measured image: it cannot change while the
//! runner lives. Copying and hashing it per request would protect nothing,
//! so a run only picks its task's entry in the snapshot, and a warm box
//! (built before the request says which task it runs) can run any of them.
//! The snapshot holds the tasks the runner lists (each directory directly
//! under the tasks root that holds a `package.json`); what a task directory
//! holds that is wrong (too large, a special file, a bad `main`) is found
//! here, once, and reported on every run of that task.
//!
//! Layout, under the work directory (named after the first slot uid, so a
//! crashed predecessor's snapshot falls to the start-up sweep):
//!
//! ```text
//! <work dir>/<uid>-snapshot/
//!   preload.cjs        the runner's preload (blocking stdio)
//!   pool.cjs           the warm pool's bootstrap
//!   task/<name>/…      each task, staged as the cold path stages it
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::declaration::TaskDeclaration;
use crate::digest::{self, TreeLimits};
use crate::{cleanup, request, task, ConfigError, TaskError};

/// A task as the snapshot holds it.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The digest of the staged copy (what every run of it runs).
    pub digest: String,
    /// The entry file relative to the task's directory, or why it has none.
    pub entry: Result<PathBuf, Refused>,
    /// What its `package.json` declares (nothing when it has no entry: it
    /// never runs).
    pub declaration: TaskDeclaration,
}

/// Why a task in the snapshot cannot run; turned into the error a per-run
/// staging would have returned.
#[derive(Debug, Clone)]
pub(crate) enum Refused {
    PackageJsonMissing,
    Invalid(String),
    Internal(String),
}

impl Refused {
    fn from_error(e: TaskError) -> Self {
        match e {
            TaskError::PackageJsonMissing => Self::PackageJsonMissing,
            TaskError::InvalidTask(m) => Self::Invalid(m),
            TaskError::Internal(m) => Self::Internal(m),
            other => Self::Internal(other.to_string()),
        }
    }

    pub fn to_error(&self) -> TaskError {
        match self {
            Self::PackageJsonMissing => TaskError::PackageJsonMissing,
            Self::Invalid(m) => TaskError::InvalidTask(m.clone()),
            Self::Internal(m) => TaskError::Internal(m.clone()),
        }
    }
}

/// The staged tasks; removed with the runner.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Bound read-only over the work directory in every box.
    pub dir: PathBuf,
    tasks: BTreeMap<String, Result<Staged, Refused>>,
}

impl Snapshot {
    /// Stages every task directly under `root` (canonical, root-owned) into
    /// the new directory `dir`, with `files` (name, content) beside them.
    /// Blocking.
    pub fn build(
        root: &Path,
        dir: PathBuf,
        limits: TreeLimits,
        files: &[(&str, &str)],
    ) -> Result<Self, ConfigError> {
        let io =
            |what: String| move |e: std::io::Error| ConfigError::Invalid(format!("{what}: {e}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("creating the task snapshot {}", dir.display())))?;
        let mut snapshot = Snapshot {
            dir,
            tasks: BTreeMap::new(),
        };
        for (name, content) in files {
            let path = snapshot.dir.join(name);
            std::fs::write(&path, content)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(io(format!("writing {}", path.display())))?;
        }
        let tasks_dir = snapshot.dir.join(crate::ns::CODE_DIR);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&tasks_dir)
            .map_err(io(format!("creating {}", tasks_dir.display())))?;
        let entries = std::fs::read_dir(root).map_err(io(format!("listing {}", root.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| request::normalize_task_path(n).is_ok_and(|p| p == *n))
            .collect();
        names.sort();
        for name in names {
            // Only directories holding a package.json are tasks (as listed).
            let Ok(found) = task::resolve(root, &name) else {
                continue;
            };
            let staged = stage_one(root, &found.dir, &tasks_dir.join(&name), limits);
            snapshot.tasks.insert(name, staged);
        }
        // The task uids reach the tasks through this directory (0755), which
        // only the box shows them.
        std::fs::set_permissions(&snapshot.dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("opening {}", snapshot.dir.display())))?;
        Ok(snapshot)
    }

    /// The staged task named `task_path` (normalized), if the snapshot has it.
    pub fn get(&self, task_path: &str) -> Option<&Result<Staged, Refused>> {
        self.tasks.get(task_path)
    }

    /// Every staged task and its digest (or why it could not be staged).
    pub fn tasks(&self) -> impl Iterator<Item = (&String, &Result<Staged, Refused>)> {
        self.tasks.iter()
    }
}

fn stage_one(root: &Path, src: &Path, dst: &Path, limits: TreeLimits) -> Result<Staged, Refused> {
    if let Some(owner) = limits.dir_owner {
        // The walk checks the task's own tree; this, the way there from the root.
        for dir in src.ancestors().filter(|d| d.starts_with(root)) {
            digest::check_trusted(dir, owner).map_err(|e| Refused::from_error(e.into()))?;
        }
    }
    task::stage(src, dst, limits).map_err(|e| Refused::from_error(e.into()))?;
    let digest = digest::digest_tree(dst, limits).map_err(|e| Refused::from_error(e.into()))?;
    let entry = task::entry_point(dst).map_err(Refused::from_error);
    // A malformed declaration refuses the task outright (and a server with
    // it refuses to start): running it without what it declared would fail
    // later, less clearly.
    let declaration = match entry {
        Ok(_) => TaskDeclaration::read(dst).map_err(Refused::from_error)?,
        Err(_) => TaskDeclaration::default(),
    };
    Ok(Staged {
        digest,
        entry,
        declaration,
    })
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = cleanup::remove_tree(&self.dir) {
            tracing::error!(path = %self.dir.display(), error = %e, "could not remove the task snapshot");
        }
    }
}
