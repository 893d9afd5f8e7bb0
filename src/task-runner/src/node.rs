//! Locating the `node` binary once and checking its version.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Oldest supported Node.js major version.
pub const MIN_NODE_MAJOR: u32 = 18;
/// How long `node --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A usable Node.js installation.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub path: PathBuf,
    pub version: String,
}

/// Finds `node` (the explicit path, else the first executable `node` on `path_var`)
/// and checks that it runs and is recent enough. `None` means no usable node.
pub(crate) fn locate(explicit: Option<&Path>, path_var: Option<&OsStr>) -> Option<Node> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::split_paths(path_var?)
            .map(|dir| dir.join("node"))
            .find(|p| is_executable(p))?,
    };
    let path = std::fs::canonicalize(path).ok()?;
    let version = version_of(&path)?;
    let major: u32 = version.strip_prefix('v')?.split('.').next()?.parse().ok()?;
    if major < MIN_NODE_MAJOR {
        tracing::warn!(node = %path.display(), %version, "Node.js is older than v{MIN_NODE_MAJOR}; refusing to use it");
        return None;
    }
    Some(Node { path, version })
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `node --version` with an empty environment and a deadline.
fn version_of(node: &Path) -> Option<String> {
    let mut child = Command::new(node)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    // Polling keeps this synchronous (it runs once, at start-up) without a helper thread.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    let mut out = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(child.stdout.take()?, 256),
        &mut out,
    )
    .ok()?;
    let version = out.trim();
    version.starts_with('v').then(|| version.to_owned())
}
