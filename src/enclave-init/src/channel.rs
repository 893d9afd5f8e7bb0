//! The status and log channel: what the init, `run.sh` and the server print
//! goes into one bounded in-memory log, served on vsock port [`PORT`] to
//! whoever connects (only the parent can reach an enclave's vsock). A reader
//! gets the backlog, then every new line as it comes, until it disconnects.
//! `nautilus-proxy logs` (or `make logs`) reads it on the parent.
//!
//! Status lines start with [`STATUS_PREFIX`] (`nautilus-status: `): the init
//! and `run.sh` print them at each change (starting, failed and why, stopped),
//! so a server that cannot start is visible from the parent without debug
//! mode. The serial console, which nobody can read outside debug mode and
//! which costs about 2.5 ms a line on an emulated 16550, gets a copy only in
//! a QEMU test VM or a debug-mode enclave ([`LogBook::set_console`]).
//!
//! Limits: the log keeps the last [`CAPACITY`] bytes (a reader that falls
//! behind is told how much it missed); at most [`MAX_READERS`] readers at once,
//! a new one evicting the oldest (so the parent always gets in).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The enclave's vsock port for the channel.
pub const PORT: u32 = 3001;
/// Bytes of log kept for readers that connect later.
pub const CAPACITY: usize = 256 * 1024;
/// Longest line kept (longer ones are cut, and say so).
pub const MAX_LINE: usize = 4096;
/// Readers served at once.
pub const MAX_READERS: usize = 4;
/// The prefix of status lines.
pub const STATUS_PREFIX: &str = "nautilus-status: ";

/// How often an idle reader checks whether it was evicted.
const IDLE_CHECK: Duration = Duration::from_millis(500);

struct Inner {
    bytes: VecDeque<u8>,
    /// Bytes ever appended: positions are counted from the start of the boot.
    total: u64,
    console: bool,
}

/// The bounded log every reader follows.
pub struct LogBook {
    inner: Mutex<Inner>,
    grew: Condvar,
}

impl Default for LogBook {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                bytes: VecDeque::with_capacity(CAPACITY),
                total: 0,
                console: true,
            }),
            grew: Condvar::new(),
        }
    }
}

impl LogBook {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A reader thread that panicked holding the lock leaves valid bytes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether lines are copied to the serial console (stderr of PID 1).
    pub fn set_console(&self, on: bool) {
        self.lock().console = on;
    }

    /// Appends one line (a newline is added; a longer line than
    /// [`MAX_LINE`] is cut) and wakes the readers.
    pub fn line(&self, line: &str) {
        let mut text = line.trim_end_matches(['\n', '\r']);
        let cut = text.len() > MAX_LINE;
        if cut {
            let mut end = MAX_LINE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text = &text[..end];
        }
        let mut inner = self.lock();
        if inner.console {
            eprintln!("{text}{}", if cut { " [cut]" } else { "" });
        }
        let mut bytes = text.as_bytes().to_vec();
        if cut {
            bytes.extend_from_slice(b" [cut]");
        }
        bytes.push(b'\n');
        inner.total += bytes.len() as u64;
        inner.bytes.extend(bytes);
        let over = inner.bytes.len().saturating_sub(CAPACITY);
        inner.bytes.drain(..over);
        drop(inner);
        self.grew.notify_all();
    }

    /// A status line: [`STATUS_PREFIX`] then `status`.
    pub fn status(&self, status: impl std::fmt::Display) {
        self.line(&format!("{STATUS_PREFIX}{status}"));
    }

    /// Writes the backlog, then each new line, to `out` until writing fails
    /// or `evicted` is set.
    pub fn follow<W: Write>(&self, mut out: W, evicted: &AtomicBool) -> io::Result<()> {
        let mut cursor = 0u64;
        loop {
            let chunk = {
                let mut inner = self.lock();
                while cursor == inner.total {
                    if evicted.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    inner = self
                        .grew
                        .wait_timeout(inner, IDLE_CHECK)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let oldest = inner.total - inner.bytes.len() as u64;
                let mut chunk = Vec::new();
                if cursor < oldest {
                    chunk.extend_from_slice(
                        format!("[... {} bytes of log dropped]\n", oldest - cursor).as_bytes(),
                    );
                    cursor = oldest;
                }
                // Bounded by CAPACITY: the deque never holds more.
                let skip = usize::try_from(cursor - oldest).unwrap_or(usize::MAX);
                chunk.extend(inner.bytes.iter().skip(skip));
                cursor = inner.total;
                chunk
            };
            out.write_all(&chunk)?;
            out.flush()?;
        }
    }
}

/// A reader's connection, as far as the channel needs it.
pub trait Reader: Write + Send + 'static {
    /// Ends the connection at once (eviction).
    fn close(&self);
}

impl Reader for std::os::unix::net::UnixStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Reader for vsock::VsockStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// Serves `book` to every connection `accept` yields, one thread each, at
/// most [`MAX_READERS`] at once (a new reader evicts the oldest). Returns
/// when `accept` ends.
pub fn serve<R, C>(book: Arc<LogBook>, accept: impl Iterator<Item = io::Result<R>>, clone: C)
where
    R: Reader,
    C: Fn(&R) -> io::Result<R>,
{
    let mut readers: VecDeque<(R, Arc<AtomicBool>)> = VecDeque::new();
    for conn in accept {
        let Ok(conn) = conn else { continue };
        readers.retain(|(_, gone)| !gone.load(Ordering::Relaxed));
        if readers.len() >= MAX_READERS {
            if let Some((oldest, flag)) = readers.pop_front() {
                flag.store(true, Ordering::Relaxed);
                oldest.close();
            }
        }
        let Ok(handle) = clone(&conn) else { continue };
        let flag = Arc::new(AtomicBool::new(false));
        readers.push_back((handle, Arc::clone(&flag)));
        let book = Arc::clone(&book);
        std::thread::spawn(move || {
            let _ = book.follow(conn, &flag);
            flag.store(true, Ordering::Relaxed);
        });
    }
}

/// [`serve`] on vsock port [`PORT`] (any CID), on a thread of its own.
pub fn serve_vsock(book: Arc<LogBook>) -> io::Result<()> {
    let listener = vsock::VsockListener::bind(&vsock::VsockAddr::new(vsock::VMADDR_CID_ANY, PORT))?;
    std::thread::spawn(move || serve(book, listener.incoming(), vsock::VsockStream::try_clone));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn reader_of(path: &std::path::Path) -> BufReader<UnixStream> {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(s)
    }

    fn next_line(r: &mut BufReader<UnixStream>) -> String {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn a_reader_gets_the_backlog_then_new_lines_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let book = Arc::new(LogBook::default());
        book.set_console(false);
        book.status("starting nautilus-server");
        book.line("before anyone listened");
        let served = Arc::clone(&book);
        std::thread::spawn(move || serve(served, listener.incoming(), UnixStream::try_clone));

        let mut r = reader_of(&path);
        assert_eq!(
            next_line(&mut r),
            "nautilus-status: starting nautilus-server\n"
        );
        assert_eq!(next_line(&mut r), "before anyone listened\n");
        book.line("after");
        assert_eq!(next_line(&mut r), "after\n");
    }

    #[test]
    fn the_log_is_bounded_and_a_late_reader_is_told_what_it_missed() {
        let book = LogBook::default();
        book.set_console(false);
        let long = "x".repeat(MAX_LINE * 2);
        book.line(&long);
        let line = "y".repeat(1023);
        for _ in 0..(CAPACITY / 1024 + 10) {
            book.line(&line);
        }
        let evicted = AtomicBool::new(true);
        let mut out = Vec::new();
        book.follow(&mut out, &evicted).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("[... "), "{}", &text[..40]);
        assert!(!text.contains('x'), "the oldest line is gone");
        // The backlog, after the notice, is at most CAPACITY bytes.
        let backlog = text.split_once('\n').unwrap().1;
        assert!(backlog.len() <= CAPACITY);
        assert!(backlog.ends_with(&format!("{line}\n")));

        let book = LogBook::default();
        book.set_console(false);
        book.line(&long);
        let mut out = Vec::new();
        book.follow(&mut out, &evicted).unwrap();
        assert_eq!(out.len(), MAX_LINE + " [cut]\n".len());
    }

    #[test]
    fn a_new_reader_beyond_the_limit_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let book = Arc::new(LogBook::default());
        book.set_console(false);
        book.line("hello");
        let served = Arc::clone(&book);
        std::thread::spawn(move || serve(served, listener.incoming(), UnixStream::try_clone));
        let mut readers: Vec<_> = (0..MAX_READERS).map(|_| reader_of(&path)).collect();
        for r in &mut readers {
            assert_eq!(next_line(r), "hello\n");
        }
        let mut newest = reader_of(&path);
        assert_eq!(next_line(&mut newest), "hello\n");
        // The oldest was shut down: end of stream.
        assert_eq!(next_line(&mut readers[0]), "");
        book.line("still here");
        assert_eq!(next_line(&mut readers[1]), "still here\n");
        assert_eq!(next_line(&mut newest), "still here\n");
    }
}
