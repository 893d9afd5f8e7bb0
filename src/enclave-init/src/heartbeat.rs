//! The Nitro boot heartbeat: the parent's `nitro-cli run-enclave` waits for
//! the enclave to connect to vsock CID 3 (the parent) port 9000, send one
//! byte `0xB7` and read the same byte back; without it the CLI reports the
//! enclave as failed to boot.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// The parent instance's vsock CID, as seen from an enclave.
pub const PARENT_CID: u32 = 3;
/// The port `nitro-cli` listens on for the heartbeat.
pub const PORT: u32 = 9000;
/// The byte sent and expected back.
pub const BYTE: u8 = 0xB7;
/// Bound on the connect and on each read and write.
pub const TIMEOUT_SECS: u64 = 5;

/// Why the heartbeat failed.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("connecting failed: {0}")]
    Connect(io::Error),
    #[error("sending the heartbeat byte failed: {0}")]
    Send(io::Error),
    #[error("the parent closed the connection without answering")]
    Closed,
    #[error("reading the answer failed: {0}")]
    Receive(io::Error),
    #[error("the parent answered {0:#04x}, expected {BYTE:#04x}")]
    WrongAnswer(u8),
}

/// Sends the heartbeat over an established connection and checks the echo.
pub fn exchange<S: Read + Write>(mut stream: S) -> Result<(), HeartbeatError> {
    stream.write_all(&[BYTE]).map_err(HeartbeatError::Send)?;
    stream.flush().map_err(HeartbeatError::Send)?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer) {
        Ok(0) => Err(HeartbeatError::Closed),
        Ok(_) if answer[0] == BYTE => Ok(()),
        Ok(_) => Err(HeartbeatError::WrongAnswer(answer[0])),
        Err(e) => Err(HeartbeatError::Receive(e)),
    }
}

/// Connects to `cid:port` over vsock (bounded by `timeout`) and runs [`exchange`].
pub fn send_vsock(cid: u32, port: u32, timeout: Duration) -> Result<(), HeartbeatError> {
    let stream = connect_vsock(cid, port, timeout).map_err(HeartbeatError::Connect)?;
    exchange(stream)
}

/// A blocking vsock stream with connect, read and write timeouts. Plain libc:
/// the `vsock` crate offers no connect timeout, and a missing parent must not
/// hang the boot.
fn connect_vsock(cid: u32, port: u32, timeout: Duration) -> io::Result<File> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        // Clamped to a day: fits time_t on every libc (musl's may be 32-bit).
        tv_sec: timeout.as_secs().min(86_400) as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    use std::os::fd::AsRawFd;
    // Linux's SO_VM_SOCKETS_CONNECT_TIMEOUT (old timeval layout, same as the
    // new one on x86_64), then the usual receive and send timeouts.
    const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
    for (level, name) in [
        (libc::AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT),
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    ] {
        // SAFETY: tv is a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // read(2)/write(2) on the socket is all the exchange needs.
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    /// A parent stand-in: reads one byte and answers with `reply` (or hangs up).
    fn parent(
        mut peer: impl Read + Write + Send + 'static,
        reply: Option<u8>,
    ) -> std::thread::JoinHandle<u8> {
        std::thread::spawn(move || {
            let mut got = [0u8; 1];
            peer.read_exact(&mut got).unwrap();
            if let Some(reply) = reply {
                peer.write_all(&[reply]).unwrap();
            }
            got[0]
        })
    }

    #[test]
    fn an_echoing_parent_acknowledges_the_heartbeat() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let parent = parent(theirs, Some(BYTE));
        exchange(&ours).unwrap();
        assert_eq!(parent.join().unwrap(), 0xB7);
    }

    #[test]
    fn the_heartbeat_works_over_tcp_too() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let parent = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut got = [0u8; 1];
            peer.read_exact(&mut got).unwrap();
            peer.write_all(&got).unwrap();
            got[0]
        });
        exchange(TcpStream::connect(addr).unwrap()).unwrap();
        assert_eq!(parent.join().unwrap(), BYTE);
    }

    #[test]
    fn a_wrong_answer_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let parent = parent(theirs, Some(0x00));
        let err = exchange(&ours).unwrap_err();
        assert!(matches!(err, HeartbeatError::WrongAnswer(0)), "{err}");
        parent.join().unwrap();
    }

    #[test]
    fn a_parent_that_hangs_up_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let parent = parent(theirs, None);
        let err = exchange(&ours).unwrap_err();
        assert_eq!(parent.join().unwrap(), BYTE);
        assert!(
            matches!(err, HeartbeatError::Closed | HeartbeatError::Send(_)),
            "{err}"
        );
    }

    #[test]
    fn a_silent_parent_times_out_instead_of_hanging_the_boot() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let err = exchange(&ours).unwrap_err();
        assert!(matches!(err, HeartbeatError::Receive(_)), "{err}");
    }
}
