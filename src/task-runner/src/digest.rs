//! The task digest: a SHA-256 over a task directory's tree, reproducible anywhere.
//!
//! # Algorithm (version 1)
//!
//! 1. Walk the task directory without following symlinks. Every directory,
//!    regular file and symlink below it is an *entry*; its *path* is the
//!    `/`-separated path relative to the task directory, as raw bytes (the task
//!    directory itself is not an entry). Any other file type is an error.
//!    One path is left out: `node_modules/.package-lock.json`, npm's own
//!    bookkeeping, which every `npm ci` rewrites, whose bytes vary between
//!    npm versions, which Node.js never reads and which the image build
//!    removes; so a task installed locally and the same task in the image have
//!    one digest. It is not staged either: the digest describes all a task can
//!    read.
//! 2. Sort the entries by path, bytewise.
//! 3. Feed SHA-256 the ASCII bytes `nautilus-task-digest-v1\n`, then for each entry:
//!    - one tag byte: `d` (directory), `f` (regular file) or `l` (symlink);
//!    - the path length as a big-endian `u64`, then the path bytes;
//!    - the content length as a big-endian `u64`, then the content: nothing
//!      for a directory, the file's bytes, or the symlink's target as stored.
//! 4. The digest is the lowercase hex of the hash.
//!
//! Permissions, owners and timestamps are not part of it: the same files give
//! the same digest on any machine. Symlinks are covered by their target text,
//! not by what they point at.
//!
//! `tests/digest.rs` recomputes it independently, byte by byte, from this
//! description.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Domain separator at the start of every digest input.
const DOMAIN: &[u8] = b"nautilus-task-digest-v1\n";
/// The one path of a task tree that is neither digested nor staged (see the
/// module docs).
pub const EXCLUDED_PATH: &str = "node_modules/.package-lock.json";
/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 64;

/// Caps on a tree walk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeLimits {
    pub max_entries: usize,
    pub max_bytes: u64,
    /// When set, every directory walked must be owned by this uid and not
    /// writable by group or others, so nobody else can swap entries (say, a
    /// directory for a symlink) while the tree is read.
    pub dir_owner: Option<u32>,
}

/// Why a task tree cannot be digested or staged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("task directory has more than {0} entries")]
    TooManyEntries(usize),
    #[error("task directory holds more than {0} bytes")]
    TooLarge(u64),
    #[error("task directory nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0:?} is neither a regular file, a directory nor a symlink")]
    SpecialFile(PathBuf),
    #[error("{0:?} changed while it was being read")]
    Changed(PathBuf),
    #[error("{0:?} must be owned by uid {1} and writable by nobody else")]
    Untrusted(PathBuf, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of a walked tree.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `/`-separated path relative to the root.
    pub rel: PathBuf,
    pub kind: Kind,
    /// File size as seen by the walk.
    pub len: u64,
}

/// Lists `root`'s tree in digest order, enforcing `limits`.
pub(crate) fn walk(root: &Path, limits: TreeLimits) -> Result<Vec<Entry>, TreeError> {
    let mut entries = Vec::new();
    let mut total = 0u64;
    walk_dir(root, Path::new(""), 0, limits, &mut entries, &mut total)?;
    entries.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    Ok(entries)
}

fn walk_dir(
    root: &Path,
    rel: &Path,
    depth: usize,
    limits: TreeLimits,
    out: &mut Vec<Entry>,
    total: &mut u64,
) -> Result<(), TreeError> {
    if depth > MAX_DEPTH {
        return Err(TreeError::TooDeep);
    }
    let dir = root.join(rel);
    if let Some(owner) = limits.dir_owner {
        check_trusted(&dir, owner)?;
    }
    for dirent in fs::read_dir(&dir)? {
        let dirent = dirent?;
        let child = rel.join(dirent.file_name());
        if child.as_os_str().as_bytes() == EXCLUDED_PATH.as_bytes() {
            continue;
        }
        let file_type = dirent.file_type()?;
        let (kind, len) = if file_type.is_dir() {
            (Kind::Dir, 0)
        } else if file_type.is_file() {
            (Kind::File, dirent.metadata()?.len())
        } else if file_type.is_symlink() {
            (Kind::Symlink, 0)
        } else {
            return Err(TreeError::SpecialFile(child));
        };
        *total = total.saturating_add(len);
        if *total > limits.max_bytes {
            return Err(TreeError::TooLarge(limits.max_bytes));
        }
        if out.len() >= limits.max_entries {
            return Err(TreeError::TooManyEntries(limits.max_entries));
        }
        out.push(Entry {
            rel: child.clone(),
            kind,
            len,
        });
        if kind == Kind::Dir {
            walk_dir(root, &child, depth + 1, limits, out, total)?;
        }
    }
    Ok(())
}

/// Checks that the directory `dir` (not followed if a symlink) is owned by
/// `owner` and writable by nobody else.
pub(crate) fn check_trusted(dir: &Path, owner: u32) -> Result<(), TreeError> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != owner || meta.mode() & 0o022 != 0 {
        return Err(TreeError::Untrusted(dir.to_owned(), owner));
    }
    Ok(())
}

/// Opens the regular file at `path` (`rel` names it in errors). Neither a
/// symlink nor a FIFO planted in its place since the walk is followed or
/// waited on: `O_NOFOLLOW`, `O_NONBLOCK`, then a type check on the open file.
pub(crate) fn open_regular(path: &Path, rel: &Path) -> Result<File, TreeError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(TreeError::SpecialFile(rel.to_owned()));
    }
    Ok(file)
}

/// Computes the version-1 digest of the tree at `root` (see the module docs).
pub(crate) fn digest_tree(root: &Path, limits: TreeLimits) -> Result<String, TreeError> {
    let entries = walk(root, limits)?;
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    let mut buf = vec![0u8; 64 * 1024];
    for entry in &entries {
        let path = entry.rel.as_os_str().as_bytes();
        let full = root.join(&entry.rel);
        match entry.kind {
            Kind::Dir => frame(&mut hasher, b'd', path, &[]),
            Kind::Symlink => frame(
                &mut hasher,
                b'l',
                path,
                fs::read_link(&full)?.as_os_str().as_bytes(),
            ),
            Kind::File => {
                hasher.update([b'f']);
                hasher.update((path.len() as u64).to_be_bytes());
                hasher.update(path);
                hasher.update(entry.len.to_be_bytes());
                // Stream the content: the framing needs the length first, which the
                // walk recorded; a file that no longer has that length is an error.
                let mut file = open_regular(&full, &entry.rel)?.take(entry.len + 1);
                let mut seen = 0u64;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    seen += n as u64;
                    hasher.update(&buf[..n]);
                }
                if seen != entry.len {
                    return Err(TreeError::Changed(entry.rel.clone()));
                }
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn frame(hasher: &mut Sha256, tag: u8, path: &[u8], content: &[u8]) {
    hasher.update([tag]);
    hasher.update((path.len() as u64).to_be_bytes());
    hasher.update(path);
    hasher.update((content.len() as u64).to_be_bytes());
    hasher.update(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO swapped in for a file would block a plain `open` until someone
    /// writes to it; the open must fail at once instead.
    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("index.js");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let (done, result) = std::sync::mpsc::channel();
        let opener = std::thread::spawn(move || {
            let _ = done.send(open_regular(&fifo, Path::new("index.js")).err());
        });
        let outcome = result.recv_timeout(std::time::Duration::from_secs(5));
        if outcome.is_err() {
            // Unblock the opener so the test ends.
            let _ = fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("index.js"));
        }
        opener.join().unwrap();
        let err = outcome.expect("opening a FIFO blocked");
        assert!(matches!(err, Some(TreeError::SpecialFile(_))), "{err:?}");
    }
}
