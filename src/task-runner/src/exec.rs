//! Starting a sandboxed `node` process and supervising one task in it.
//!
//! [`spawn`] creates the boxed process (as root in a box of namespaces, see
//! [`crate::ns`]; otherwise as a plain child); [`supervise`] feeds it stdin,
//! drains its output, enforces the timeout and empties the box.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::ns::{self, BoxPlan, NsChild, Report};
use crate::sandbox::{Identity, Marker, Policy};
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
    /// The complete environment (declared secrets included), wiped when
    /// the spec is dropped.
    pub env: Env,
    /// Task id, also found in the environment as `NAUTILUS_TASK_ID`.
    pub task_id: String,
    /// A warm box: `node` waits for its task on a control pipe at this
    /// descriptor number (root mode only).
    pub control: Option<libc::c_int>,
    /// As root: the slot identity to box (in the plan's root).
    pub boxed: Option<Identity>,
    /// The slot's cgroups, joined by the box before anything else.
    pub cgroup: crate::cgroup::Join,
    /// As root: the slot's hosts file, the box's `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// As root: the network namespace holding the task's egress listeners,
    /// which the box joins (closed once the box has started).
    pub netns: Option<std::os::fd::OwnedFd>,
}

/// A task's environment. Operator secrets are among its values, so every
/// value is zeroed when it is dropped, not just freed.
#[derive(Default)]
pub(crate) struct Env(pub Vec<(OsString, OsString)>);

impl std::ops::Deref for Env {
    type Target = [(OsString, OsString)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStringExt;
        use zeroize::Zeroize;
        for (_, value) in &mut self.0 {
            std::mem::take(value).into_vec().zeroize();
        }
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

enum Kind {
    /// Root: a box of namespaces; its end is the end of everything in it.
    Ns(NsChild),
    /// Unprivileged: a plain child, and the marks that find what it started.
    Plain { child: Child, marker: Marker },
}

/// A running, boxed `node` process.
pub(crate) struct Boxed {
    kind: Kind,
    stdin: Option<Writer>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    /// A warm box's control pipe, until the task is handed over.
    control: Option<tokio::net::unix::pipe::Sender>,
    /// When the task started (for a warm box: when it was handed over).
    started: Instant,
}

pub(crate) fn spawn(
    spec: SpawnSpec,
    policy: &Policy,
    plan: Option<&BoxPlan>,
) -> Result<Boxed, TaskError> {
    let started = Instant::now();
    if let (Some(identity), Some(plan)) = (spec.boxed, plan) {
        let mut args = spec.node_args.clone();
        args.push(spec.entry.clone().into());
        args.extend(spec.args.iter().map(OsString::from));
        let ns_spec = ns::Spec {
            node: &spec.node,
            args,
            env: &spec.env,
            identity,
            cwd: &spec.cwd,
            control: spec.control,
            cgroup: spec.cgroup,
            hosts: spec.hosts.as_deref(),
            netns: spec.netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
        };
        let (child, stdio) = ns::spawn(plan, policy, &ns_spec)
            .map_err(|e| TaskError::internal("starting node", e))?;
        return Ok(Boxed {
            kind: Kind::Ns(child),
            stdin: Some(Box::new(stdio.stdin)),
            stdout: Some(Box::new(stdio.stdout)),
            stderr: Some(Box::new(stdio.stderr)),
            control: stdio.control,
            started,
        });
    }
    if spec.control.is_some() {
        return Err(TaskError::Internal("a warm box needs root mode".to_owned()));
    }
    let mut cmd = Command::new(&spec.node);
    cmd.args(&spec.node_args)
        .arg(&spec.entry)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        // std's Command keeps its own copies, which this crate cannot wipe
        // (the server's zeroing allocator does when they are freed).
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    policy.install(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| TaskError::internal("starting node", e))?;
    let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return Err(TaskError::Internal(
            "node exited before it could be tracked".to_owned(),
        ));
    };
    if let Err(e) = crate::sandbox::prefer_for_oom_kill_pid(pid) {
        tracing::debug!(error = %e, "could not raise the task's OOM score");
    }
    Ok(Boxed {
        stdin: child.stdin.take().map(|s| Box::new(s) as Writer),
        stdout: child.stdout.take().map(|s| Box::new(s) as Reader),
        stderr: child.stderr.take().map(|s| Box::new(s) as Reader),
        kind: Kind::Plain {
            child,
            marker: Marker {
                pgid: pid,
                marker: format!("NAUTILUS_TASK_ID={}", spec.task_id).into_bytes(),
            },
        },
        control: None,
        started,
    })
}

/// A status as if killed by `SIGKILL`.
fn killed() -> ExitStatus {
    ExitStatus::from_raw(libc::SIGKILL)
}

impl Boxed {
    /// Whether the box is still waiting for its task: its reaper has not
    /// reported or gone, and neither it nor `node` is stopped or dead.
    pub fn is_ready(&self) -> bool {
        match &self.kind {
            Kind::Ns(child) => self.control.is_some() && child.is_waiting(),
            Kind::Plain { .. } => false,
        }
    }

    /// The box's first process (its reaper, as root).
    pub fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Ns(child) => u32::try_from(child.pid()).ok(),
            Kind::Plain { child, .. } => child.id(),
        }
    }

    /// Kills a root-mode box and waits until all of it is reaped (blocking).
    pub fn kill_and_reap(&mut self) {
        if let Kind::Ns(child) = &mut self.kind {
            child.kill_and_reap();
        }
    }

    /// Hands a warm box its task: writes `message` to the control pipe and
    /// closes it. The task's time starts now.
    pub async fn hand_over(&mut self, message: &[u8]) -> Result<(), TaskError> {
        let mut control = self
            .control
            .take()
            .ok_or_else(|| TaskError::Internal("the box is not warm".to_owned()))?;
        control
            .write_all(message)
            .await
            .map_err(|e| TaskError::internal("handing the task to the warm box", e))?;
        drop(control);
        self.started = Instant::now();
        Ok(())
    }

    /// Waits for the main process to end. Cancel-safe. `Err` when the box
    /// could not be built or node not started.
    async fn wait(&mut self) -> Result<ExitStatus, TaskError> {
        match &mut self.kind {
            Kind::Ns(child) => match child.report().await {
                Report::Exited(status) => Ok(status),
                Report::Failed(why) => Err(TaskError::Internal(format!("starting node: {why}"))),
                // Killed from outside (the OOM killer, say) before it could report.
                Report::Gone => Ok(killed()),
            },
            Kind::Plain { child, .. } => child
                .wait()
                .await
                .map_err(|e| TaskError::internal("waiting for node", e)),
        }
    }

    /// SIGTERM to the task's process group, from outside it.
    fn terminate(&self) {
        match &self.kind {
            Kind::Ns(child) => child.terminate(),
            Kind::Plain { marker, .. } => {
                // SAFETY: kill(2) on the task's own process group (its pid, as session leader).
                unsafe { libc::kill(-marker.pgid, libc::SIGTERM) };
            }
        }
    }

    /// Kills everything in the box and reaps it. Returns the main process's
    /// status (`known`, or as the box reports it) and, as root, the CPU time
    /// of every process of the box (the reaper reaps them all, the kernel
    /// the rest when it ends).
    async fn empty(
        &mut self,
        known: Option<ExitStatus>,
    ) -> Result<(ExitStatus, Option<Duration>), TaskError> {
        match &mut self.kind {
            Kind::Ns(child) => {
                let pid = child.pid();
                // Blocking: waits for the kernel to kill and reap the namespace.
                let reaped = tokio::task::spawn_blocking(move || {
                    // SAFETY: kill and wait4 on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    loop {
                        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
                        let rc = unsafe {
                            libc::wait4(pid, std::ptr::null_mut(), libc::__WALL, &mut usage)
                        };
                        if rc == pid {
                            let time = |t: libc::timeval| {
                                Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
                            };
                            return Ok(time(usage.ru_utime) + time(usage.ru_stime));
                        }
                        let err = std::io::Error::last_os_error();
                        if err.raw_os_error() != Some(libc::EINTR) {
                            return Err(err);
                        }
                    }
                });
                let cpu = match tokio::time::timeout(REAP_DEADLINE, reaped).await {
                    Ok(Ok(Ok(cpu))) => {
                        child.mark_reaped();
                        cpu
                    }
                    Ok(Ok(Err(e))) => return Err(TaskError::internal("reaping the box", e)),
                    Ok(Err(e)) => return Err(TaskError::internal("reaping the box", e)),
                    Err(_) => {
                        return Err(TaskError::Internal(format!(
                            "the box did not end within {REAP_DEADLINE:?} of SIGKILL"
                        )))
                    }
                };
                // The reaper may have reported during the grace period's last moments.
                let status = match known {
                    Some(status) => status,
                    None => match child.report().await {
                        Report::Exited(status) => status,
                        _ => killed(),
                    },
                };
                Ok((status, Some(cpu)))
            }
            Kind::Plain { child, marker } => {
                let marker = marker.clone();
                match tokio::task::spawn_blocking(move || marker.kill_all()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "task processes survived the kill"),
                    Err(e) => tracing::error!(error = %e, "box kill panicked"),
                }
                if let Some(status) = known {
                    return Ok((status, None));
                }
                // The group kill normally reached the main process already; should
                // it have failed, kill it directly (it is our unreaped child, so its
                // pid cannot have been reused) and wait a bounded time.
                let _ = child.start_kill();
                tokio::time::timeout(REAP_DEADLINE, child.wait())
                    .await
                    .map_err(|_| {
                        TaskError::Internal(format!(
                            "node did not end within {REAP_DEADLINE:?} of SIGKILL"
                        ))
                    })?
                    .map_err(|e| TaskError::internal("waiting for node", e))
                    .map(|status| (status, None))
            }
        }
    }
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
    /// CPU time of every process of the box (root mode).
    pub cpu: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited,
    TimedOut,
    /// The runner shuts down.
    Cancelled,
    /// Nobody waits for the result any more: stopped at once, no grace.
    Abandoned,
    /// Memory ran out in the task's cgroup: the whole box was killed at once.
    OutOfMemory,
}

/// Limits of one supervision.
pub(crate) struct Watch {
    pub timeout: Duration,
    pub grace: Duration,
    pub max_output: usize,
    /// Flips to `true` when the runner shuts down and this run must stop.
    pub cancel: watch::Receiver<bool>,
    /// Resolves when the caller dropped the run's future.
    pub abandoned: tokio::sync::oneshot::Receiver<()>,
    /// Readable once memory runs out in the task's cgroup (v1; v2 kills the
    /// whole cgroup itself).
    pub oom: Option<std::os::fd::OwnedFd>,
}

/// Runs the task to its end: writes `stdin`, drains output, enforces the timeout
/// (SIGTERM to the group, `grace`, then SIGKILL to the whole box), then kills
/// whatever is left in the box and reaps it.
pub(crate) async fn supervise(
    mut boxed: Boxed,
    stdin: Option<Vec<u8>>,
    mut w: Watch,
) -> Result<Outcome, TaskError> {
    let writer = match (boxed.stdin.take(), stdin) {
        (Some(mut pipe), Some(bytes)) => Some(tokio::spawn(async move {
            // A task may exit without reading; the broken pipe is not an error.
            let _ = pipe.write_all(&bytes).await;
        })),
        _ => None,
    };
    let (stop, stopped) = watch::channel(false);
    let out = capture(boxed.stdout.take(), w.max_output, stopped.clone());
    let err = capture(boxed.stderr.take(), w.max_output, stopped);

    let deadline = tokio::time::Instant::from_std(boxed.started) + w.timeout;
    let mut ending = Ending::Exited;
    let mut failed = None;
    let mut status = tokio::select! {
        status = boxed.wait() => match status {
            Ok(status) => Some(status),
            Err(e) => { failed = Some(e); None }
        },
        _ = tokio::time::sleep_until(deadline) => { ending = Ending::TimedOut; None }
        _ = w.cancel.wait_for(|c| *c) => { ending = Ending::Cancelled; None }
        _ = &mut w.abandoned => { ending = Ending::Abandoned; None }
        _ = readable(w.oom.take()) => { ending = Ending::OutOfMemory; None }
    };
    let at_once = matches!(ending, Ending::Abandoned | Ending::OutOfMemory);
    if status.is_none() && failed.is_none() && !at_once {
        boxed.terminate();
        status = match tokio::time::timeout(w.grace, boxed.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                failed = Some(e);
                None
            }
            Err(_) => None,
        };
    }
    // Timed from spawn to the main process's end, not including the clean-up.
    let mut elapsed = boxed.started.elapsed();
    let known = status.is_some();
    let status = boxed.empty(status).await;
    if !known {
        elapsed = boxed.started.elapsed();
    }
    if let Some(writer) = writer {
        writer.abort();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let (status, cpu) = status?;

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
        cpu,
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
