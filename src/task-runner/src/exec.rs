//! Starting a sandboxed `node` process and supervising one task in it.
//!
//! [`spawn`] creates the boxed process; [`supervise`] feeds it stdin, drains its
//! output, enforces the timeout and empties the box. They are separate so a warm
//! pool can spawn ahead of time and hand over a task later.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::sandbox::{BoxKind, Identity, Policy};
use crate::TaskError;

/// How long output may keep arriving after the box was emptied. Only a process
/// that escaped the kill (possible only without a slot uid) can hold a pipe open.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// How long the main process may take to die once SIGKILLed.
const REAP_DEADLINE: Duration = Duration::from_secs(5);
/// Read size for the output pipes.
const CHUNK: usize = 64 * 1024;

/// Everything needed to start `node` for one task.
pub(crate) struct SpawnSpec {
    pub node: PathBuf,
    /// Node options before the entry file.
    pub node_args: Vec<OsString>,
    pub entry: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment.
    pub env: Vec<(OsString, OsString)>,
    pub identity: Option<Identity>,
    /// Task id, also found in the environment as `NAUTILUS_TASK_ID`.
    pub task_id: String,
    /// Whether stdin is a pipe (`true`) or `/dev/null`.
    pub piped_stdin: bool,
    /// The slot's cgroups, joined before `exec`.
    pub cgroup: crate::cgroup::Join,
}

/// A running, boxed `node` process.
pub(crate) struct Boxed {
    child: Child,
    kind: BoxKind,
    started: Instant,
}

pub(crate) fn spawn(spec: SpawnSpec, policy: &Policy) -> Result<Boxed, TaskError> {
    let mut cmd = Command::new(&spec.node);
    cmd.args(&spec.node_args)
        .arg(&spec.entry)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env)
        .stdin(if spec.piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    policy.install(&mut cmd, spec.identity, spec.cgroup);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| TaskError::internal("starting node", e))?;
    let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    if let (None, Some(pid)) = (spec.identity, pid) {
        if let Err(e) = crate::sandbox::prefer_for_oom_kill_pid(pid) {
            tracing::debug!(error = %e, "could not raise the task's OOM score");
        }
    }
    let kind = match (spec.identity, pid) {
        (Some(id), _) => BoxKind::Uid(id),
        (None, Some(pgid)) => BoxKind::Marker {
            pgid,
            marker: format!("NAUTILUS_TASK_ID={}", spec.task_id).into_bytes(),
        },
        (None, None) => {
            return Err(TaskError::Internal(
                "node exited before it could be tracked".to_owned(),
            ))
        }
    };
    Ok(Boxed {
        child,
        kind,
        started,
    })
}

/// Bytes read from one stream, up to a cap.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    /// The bytes as text of at most `cap` bytes, and whether anything was
    /// left out. Invalid UTF-8 becomes U+FFFD, as `String::from_utf8_lossy`
    /// does, but a replacement costs three bytes of the cap, and a character
    /// the cap cut in two is dropped rather than replaced: the text then
    /// stays within `cap` and `truncated` is set.
    pub fn into_text(self, cap: usize) -> (String, bool) {
        let mut text = String::with_capacity(self.bytes.len().min(cap));
        let mut truncated = self.truncated;
        let mut chunks = self.bytes.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            let valid = chunk.valid();
            let fits = char_floor(valid, cap - text.len());
            text.push_str(&valid[..fits]);
            if fits < valid.len() {
                truncated = true;
                break;
            }
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // A valid but incomplete sequence at the very end (`error_len` None).
            let unfinished = chunks.peek().is_none()
                && std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if unfinished && self.truncated {
                break;
            }
            if text.len() + char::REPLACEMENT_CHARACTER.len_utf8() > cap {
                truncated = true;
                break;
            }
            text.push(char::REPLACEMENT_CHARACTER);
        }
        (text, truncated)
    }
}

/// The largest char boundary of `s` at or below `at` (`str::floor_char_boundary`
/// is newer than the crate's minimum Rust).
fn char_floor(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// How a supervised run ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub status: ExitStatus,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
    pub ending: Ending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited,
    TimedOut,
    /// Stopped for shutdown.
    Cancelled,
    /// Stopped because the caller dropped the run.
    Abandoned,
    /// Memory ran out in the task's cgroup: the whole box was killed at once.
    OutOfMemory,
}

/// Resolves (with an error) once the caller has dropped its end: the run
/// was abandoned. Never resolves otherwise.
pub(crate) type Abandoned = tokio::sync::oneshot::Receiver<std::convert::Infallible>;

/// Limits of one supervision.
pub(crate) struct Watch {
    pub timeout: Duration,
    pub grace: Duration,
    pub max_output: usize,
    /// Flips to `true` when the runner shuts down and this run must stop.
    pub cancel: watch::Receiver<bool>,
    /// Resolves when the caller is gone; the task is then killed at once.
    pub abandoned: Abandoned,
    /// Readable once memory runs out in the task's cgroup (v1; v2 kills the
    /// whole cgroup itself).
    pub oom: Option<std::os::fd::OwnedFd>,
}

/// Runs the task to its end: writes `stdin`, drains output, enforces the timeout
/// (SIGTERM to the group, `grace`, then SIGKILL to the whole box), then kills
/// whatever is left in the box and reaps the main process.
pub(crate) async fn supervise(
    mut boxed: Boxed,
    stdin: Option<Vec<u8>>,
    mut w: Watch,
) -> Result<Outcome, TaskError> {
    let writer = match (boxed.child.stdin.take(), stdin) {
        (Some(mut pipe), Some(bytes)) => Some(tokio::spawn(async move {
            // A task may exit without reading; the broken pipe is not an error.
            let _ = pipe.write_all(&bytes).await;
        })),
        _ => None,
    };
    let (stop, stopped) = watch::channel(false);
    let out = capture(boxed.child.stdout.take(), w.max_output, stopped.clone());
    let err = capture(boxed.child.stderr.take(), w.max_output, stopped);

    let deadline = tokio::time::Instant::from_std(boxed.started) + w.timeout;
    let mut ending = Ending::Exited;
    let mut status = tokio::select! {
        status = boxed.child.wait() => Some(status),
        _ = tokio::time::sleep_until(deadline) => { ending = Ending::TimedOut; None }
        _ = w.cancel.wait_for(|c| *c) => { ending = Ending::Cancelled; None }
        _ = &mut w.abandoned => { ending = Ending::Abandoned; None }
        _ = readable(w.oom.take()) => { ending = Ending::OutOfMemory; None }
    };
    // Nobody waits for an abandoned task's result: no grace.
    let grace = if ending == Ending::Abandoned {
        Duration::ZERO
    } else {
        w.grace
    };
    if status.is_none() && ending != Ending::OutOfMemory {
        if let Some(pid) = boxed.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) on the task's own process group (its pid, as session leader).
            unsafe { libc::kill(-pid, libc::SIGTERM) };
        }
        status = tokio::time::timeout(grace, boxed.child.wait()).await.ok();
    }
    // Timed from spawn to the main process's end, not including the clean-up.
    let mut elapsed = boxed.started.elapsed();
    let kind = boxed.kind.clone();
    let main = boxed.child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    let killed = tokio::task::spawn_blocking(move || kind.kill_all(main)).await;
    let status = match status {
        Some(status) => status,
        None => {
            // The box kill normally reached the main process already; should it
            // have failed, kill it directly (it is our unreaped child, so its pid
            // cannot have been reused) and wait a bounded time.
            let _ = boxed.child.start_kill();
            let status = tokio::time::timeout(REAP_DEADLINE, boxed.child.wait())
                .await
                .map_err(|_| {
                    TaskError::Internal(format!(
                        "node did not end within {REAP_DEADLINE:?} of SIGKILL"
                    ))
                })?;
            elapsed = boxed.started.elapsed();
            status
        }
    }
    .map_err(|e| TaskError::internal("waiting for node", e))?;
    if let Some(writer) = writer {
        writer.abort();
    }
    match killed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "task processes survived the kill"),
        Err(e) => tracing::error!(error = %e, "box kill panicked"),
    }

    // Everything that could write is dead (or, without a slot uid, may have
    // escaped): give the pipes a bounded time to report end-of-file.
    let drained = async { (out.await.unwrap_or_default(), err.await.unwrap_or_default()) };
    tokio::pin!(drained);
    let (stdout, stderr) = tokio::select! {
        both = &mut drained => both,
        _ = tokio::time::sleep(DRAIN_DEADLINE) => {
            tracing::warn!("task output pipes still open after the box was emptied; cutting them off");
            let _ = stop.send(true);
            drained.await
        }
    };
    Ok(Outcome {
        status,
        stdout,
        stderr,
        elapsed,
        ending,
    })
}

/// Resolves once `fd` is readable; never without one.
async fn readable(fd: Option<std::os::fd::OwnedFd>) {
    // SAFETY: an OwnedFd is open until dropped, and the AsyncFd owns it.
    let fd = fd.and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok());
    match fd {
        // An error must not pass for an OOM kill.
        Some(fd) if fd.readable().await.is_ok() => {}
        _ => std::future::pending().await,
    }
}

/// Starts a reader that keeps draining `pipe` (so the writer never blocks) and
/// keeps at most `cap` bytes. It ends at end-of-file or when `stop` turns true.
fn capture<R>(
    pipe: Option<R>,
    cap: usize,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Captured>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut captured = Captured::default();
        let Some(mut pipe) = pipe else {
            return captured;
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                biased;
                r = pipe.read(&mut buf) => match r { Ok(n) if n > 0 => n, _ => break },
                _ = stop.wait_for(|s| *s) => break,
            };
            let room = cap - captured.bytes.len();
            if n > room {
                captured.truncated = true;
            }
            captured.bytes.extend_from_slice(&buf[..n.min(room)]);
        }
        captured
    })
}

/// The signal name for `status`, e.g. `"SIGKILL"`.
pub(crate) fn signal_name(status: &ExitStatus) -> Option<String> {
    let sig = status.signal()?;
    Some(match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("SIG{sig}"),
    })
}

#[cfg(test)]
mod tests {
    use super::Captured;

    fn text(bytes: &[u8], truncated: bool, cap: usize) -> (String, bool) {
        let captured = Captured {
            bytes: bytes.to_vec(),
            truncated,
        };
        captured.into_text(cap)
    }

    #[test]
    fn text_within_the_cap_decodes_like_from_utf8_lossy() {
        for bytes in [
            &b"plain"[..],
            b"a\xff\xfeb",
            "h\u{e9}\u{20ac}".as_bytes(),
            b"end\xe2\x82",
        ] {
            let lossy = String::from_utf8_lossy(bytes).into_owned();
            assert_eq!(text(bytes, false, 64), (lossy, false), "{bytes:?}");
        }
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        // Two 3-byte and two 4-byte characters, cut by the reader's cap one
        // byte short of the end. A U+FFFD would still fit in the second case.
        for c in ['\u{20ac}', '\u{1f680}'] {
            let whole = String::from_iter([c, c]);
            let cap = whole.len() - 1;
            let bytes = &whole.as_bytes()[..cap];
            assert_eq!(text(bytes, true, cap), (c.to_string(), true), "{c}");
        }
    }

    #[test]
    fn replacements_count_against_the_cap() {
        let (out, truncated) = text(&[0xff; 10], false, 10);
        assert_eq!(out, "\u{fffd}".repeat(3));
        assert!(truncated);
        let (out, truncated) = text("ab\u{e9}".as_bytes(), false, 3);
        assert_eq!((out.as_str(), truncated), ("ab", true));
    }
}
