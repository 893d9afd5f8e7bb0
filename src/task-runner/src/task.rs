//! Finding a task under the tasks root and staging a private copy of it for one run.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::{self, Kind, TreeError, TreeLimits};
use crate::TaskError;

/// A task directory that exists under the tasks root.
#[derive(Debug)]
pub(crate) struct ResolvedTask {
    /// Normalized relative path, as reported in results.
    pub task_path: String,
    /// Real (symlink-free) location of the directory.
    pub dir: PathBuf,
}

/// Locates `task_path` (already normalized) under `root` (already canonical),
/// refusing anything whose real location is outside `root`.
pub(crate) fn resolve(root: &Path, task_path: &str) -> Result<ResolvedTask, TaskError> {
    let dir = match fs::canonicalize(root.join(task_path)) {
        Ok(dir) => dir,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Err(TaskError::TaskDirMissing(task_path.to_owned()));
        }
        Err(e) => return Err(TaskError::internal("resolving the task directory", e)),
    };
    if !dir.starts_with(root) || dir == root {
        return Err(TaskError::InvalidRequest(format!(
            "task_path {task_path:?} resolves outside the tasks directory"
        )));
    }
    if !dir.is_dir() {
        return Err(TaskError::TaskDirMissing(task_path.to_owned()));
    }
    if !dir.join("package.json").is_file() {
        return Err(TaskError::PackageJsonMissing);
    }
    Ok(ResolvedTask {
        task_path: task_path.to_owned(),
        dir,
    })
}

impl From<TreeError> for TaskError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Io(e) => TaskError::internal("reading the task directory", e),
            other => TaskError::InvalidTask(other.to_string()),
        }
    }
}

/// Permission bits a staged entry keeps of its source's: read and execute as
/// they were, never write for group or others, never set-id or sticky.
const STAGED_MODE_MASK: u32 = 0o755;

/// Copies the tree at `src` into the new directory `dst`, symlinks reproduced
/// as they are. Each file and directory keeps its source's permission bits
/// masked with 0755: staging never widens them. A file only its owner may
/// read (0600, root's) stays unreadable to the task; it is still staged and
/// covered by the digest.
pub(crate) fn stage(src: &Path, dst: &Path, limits: TreeLimits) -> Result<(), TreeError> {
    use std::os::unix::fs::MetadataExt;
    let entries = digest::walk(src, limits)?;
    fs::DirBuilder::new().mode(0o755).create(dst)?;
    let mut budget = limits.max_bytes;
    // Walk order is sorted by path, so a directory always precedes its children.
    for entry in entries {
        let from = src.join(&entry.rel);
        let to = dst.join(&entry.rel);
        match entry.kind {
            Kind::Dir => {
                let mode = fs::symlink_metadata(&from)?.mode() & STAGED_MODE_MASK;
                fs::DirBuilder::new().mode(0o700).create(&to)?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
            }
            Kind::Symlink => std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?,
            Kind::File => {
                let mut input = digest::open_regular(&from, &entry.rel)?;
                let mode = input.metadata()?.mode() & STAGED_MODE_MASK;
                let mut output = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)?;
                // Bound the copy by what is left of the budget, in case the file grew.
                let copied = io::copy(&mut io::Read::take(&mut input, budget + 1), &mut output)?;
                if copied > budget {
                    return Err(TreeError::TooLarge(limits.max_bytes));
                }
                budget -= copied;
                output.set_permissions(fs::Permissions::from_mode(mode))?;
            }
        }
    }
    // Creation modes are filtered by the umask; the task uid needs these exact ones.
    let mode = fs::symlink_metadata(src)?.mode() & STAGED_MODE_MASK;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[derive(Deserialize)]
struct PackageJson {
    main: Option<String>,
}

/// Largest `package.json` read.
const MAX_PACKAGE_JSON_BYTES: u64 = 1024 * 1024;

/// The bytes of the staged `package.json` (a regular file of at most
/// [`MAX_PACKAGE_JSON_BYTES`]).
pub(crate) fn read_package_json(staged: &Path) -> Result<Vec<u8>, TaskError> {
    let invalid = |msg: String| TaskError::InvalidTask(msg);
    let package = staged.join("package.json");
    let meta = fs::symlink_metadata(&package).map_err(|_| TaskError::PackageJsonMissing)?;
    if !meta.is_file() {
        return Err(invalid("package.json is not a regular file".to_owned()));
    }
    if meta.len() > MAX_PACKAGE_JSON_BYTES {
        return Err(invalid(format!(
            "package.json is larger than {MAX_PACKAGE_JSON_BYTES} bytes"
        )));
    }
    fs::read(&package).map_err(|e| TaskError::internal("reading package.json", e))
}

/// Reads `main` from the staged `package.json` and checks it names a regular file
/// inside the staged directory. Returns the entry's path relative to `staged`.
pub(crate) fn entry_point(staged: &Path) -> Result<PathBuf, TaskError> {
    let invalid = |msg: String| TaskError::InvalidTask(msg);
    let text = read_package_json(staged)?;
    let parsed: PackageJson = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("package.json is not valid: {e}")))?;
    let main = parsed.main.unwrap_or_else(|| "index.js".to_owned());
    let main_path = Path::new(&main);
    let plain = main_path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if main.is_empty() || !plain {
        return Err(invalid(format!(
            "package.json main {main:?} must be a relative path inside the task"
        )));
    }
    let entry = staged.join(main_path);
    let real = fs::canonicalize(&entry).map_err(|_| {
        invalid(format!(
            "entry file {main:?} named by package.json does not exist"
        ))
    })?;
    let staged_real = fs::canonicalize(staged)
        .map_err(|e| TaskError::internal("resolving the run directory", e))?;
    match real.strip_prefix(&staged_real) {
        Ok(rel) if real.is_file() => Ok(rel.to_owned()),
        _ => Err(invalid(format!(
            "entry file {main:?} is not a regular file inside the task"
        ))),
    }
}
