//! Silent sockets against the connection cap. In its own test binary: its
//! 2000-odd descriptors would make other tests' task starts fail.

mod support;

use std::time::{Duration, Instant};

use support::{config, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Raises this process's descriptor limit to its hard limit; false when
/// that is still below `needed`.
fn enough_descriptors(needed: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_max >= needed
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// 1100 sockets that send nothing or only the HTTP/2 preface, more than the
/// connection cap: a new client still gets its answer, at once (the longest
/// idle makes room) or once the idle deadline (1 s here) has closed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_out_new_clients() {
    if !enough_descriptors(4000) {
        eprintln!("SKIPPED silent_connections_do_not_lock_out_new_clients: needs 4000 file descriptors (ulimit -Hn)");
        return;
    }
    let mut c = config();
    c.http.idle_timeout = Duration::from_secs(1);
    // 1100 sockets from one address: what is tested is the idle deadline,
    // not the per-client connection share (availability.rs).
    c.http.per_client.connections = 4096;
    let s = TestServer::start(c).await;
    let mut silent = Vec::new();
    for i in 0..1100 {
        let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
        if i % 2 == 1 {
            stream.write_all(H2_PREFACE).await.expect("preface");
        }
        silent.push(stream);
    }
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(30), s.get("/health_check")).await;
    let waited = start.elapsed();
    assert!(
        answer.is_ok_and(|r| r.status() == 200),
        "no answer within 30 s while 1100 silent sockets are held"
    );
    // The 1 s deadline, plus the backlog's late arrivals, plus a loaded machine.
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    eprintln!("a new client waited {waited:?} behind 1100 silent sockets");
    // Closed at the idle deadline, or earlier to make room at the cap for
    // the sockets past it (the longest idle goes first).
    let mut closed = 0.0;
    for _ in 0..300 {
        closed = s
            .metric("nautilus_connections_closed_total{reason=\"idle\"}")
            .await
            + s.metric("nautilus_connections_closed_total{reason=\"evicted\"}")
                .await;
        if closed >= 1100.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed >= 1100.0, "only {closed} silent connections closed");
    drop(silent);
    s.shutdown().await;
}
