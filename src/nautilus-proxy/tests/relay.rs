//! The proxy binary relaying real traffic: HTTP to a dev-mode server over
//! TCP and over a hybrid-vsock stand-in, raw streams for half-close, and
//! every limit (cap, first-byte, idle, write deadlines, drain).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nautilus_client::{Client, Policy, TaskSpec};
use support::{field, http_get, DevServer, HybridVsock, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous: only proves "does not hang".
const NO_HANG: Duration = Duration::from_secs(20);

async fn verified_run(url: &str, server: &DevServer) {
    let client = Client::connect(url, server.root(), Policy::default().allow_debug(true))
        .await
        .expect("attested through the proxy");
    let result = client
        .run_task(&TaskSpec::new("nodejs-task").args(["2", "3"]))
        .await
        .expect("verified result through the proxy");
    assert_eq!(result.data().exit_code, Some(0), "{:?}", result.data());
}

#[tokio::test]
async fn relays_verified_http_to_a_tcp_upstream() {
    let server = DevServer::start().await;
    let proxy = Proxy::start(&["--upstream", &format!("tcp://{}", server.addr)]).await;
    let answer = http_get(proxy.addr, "/health_check").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    verified_run(&proxy.url(), &server).await;

    // The health check's own line: bytes both ways, a normal end.
    let line = proxy
        .wait_for_line(|l| l.contains(" connection ") && l.contains("end=closed"))
        .await;
    assert!(
        field(&line, "to_upstream").parse::<u64>().expect("n") > 0,
        "{line}"
    );
    assert!(
        field(&line, "to_client").parse::<u64>().expect("n") > 0,
        "{line}"
    );
}

#[tokio::test]
async fn relays_verified_http_over_hybrid_vsock() {
    let server = DevServer::start().await;
    let vsock = HybridVsock::start(3000, server.addr).await;
    // The env variable works like the flag.
    let proxy =
        Proxy::start_with_env(&[], &[("NAUTILUS_PROXY_UPSTREAM", &vsock.upstream(3000))]).await;
    let answer = http_get(proxy.addr, "/health_check").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    verified_run(&proxy.url(), &server).await;
    assert!(vsock.handshakes.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_guest_port_nobody_listens_on_closes_the_client_and_says_why() {
    let server = DevServer::start().await;
    let vsock = HybridVsock::start(3000, server.addr).await;
    let proxy = Proxy::start(&["--upstream", &vsock.upstream(3001)]).await;
    let answer = timeout(NO_HANG, http_get(proxy.addr, "/health_check"))
        .await
        .expect("closed, not hung");
    assert_eq!(answer, "");
    proxy
        .wait_for_line(|l| {
            l.contains(
                "end=upstream unreachable: hybrid vsock closed the connection after CONNECT 3001",
            )
        })
        .await;
    assert_eq!(vsock.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn two_hundred_concurrent_connections_all_answered() {
    // Without a PROXY header every relayed connection is the proxy's own
    // address to the server: its share must cover them too.
    let server = DevServer::start_with(|c| c.http.per_client.connections = 256).await;
    let vsock = HybridVsock::start(3000, server.addr).await;
    // All from one loopback address: its share must cover them.
    let proxy = Proxy::start(&[
        "--upstream",
        &vsock.upstream(3000),
        "--max-connections-per-source",
        "256",
        "--accept-burst-per-source",
        "256",
    ])
    .await;
    // All 200 open at once before any request is sent.
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    let mut tasks = Vec::new();
    for mut c in conns {
        tasks.push(tokio::spawn(async move {
            c.write_all(b"GET /health_check HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
                .await
                .expect("request");
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.expect("response");
            answer
        }));
    }
    for t in tasks {
        let answer = timeout(NO_HANG, t).await.expect("no hang").expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(vsock.handshakes.load(Ordering::SeqCst), 200);
    let closed = || {
        proxy
            .connection_lines()
            .iter()
            .filter(|l| l.contains("end=closed"))
            .count()
    };
    for _ in 0..100 {
        if closed() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(closed(), 200, "one line per connection");
}

/// A raw upstream; `serve` handles each accepted connection.
async fn raw_upstream<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (format!("tcp://{addr}"), accepted)
}

#[tokio::test]
async fn client_half_close_reaches_the_upstream_which_still_answers() {
    // The upstream answers only after it has seen the client's EOF.
    let (upstream, _) = raw_upstream(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read to EOF");
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .expect("answer");
    })
    .await;
    let proxy = Proxy::start(&["--upstream", &upstream]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"hello").await.expect("write");
    c.shutdown().await.expect("half-close");
    let mut answer = String::new();
    timeout(NO_HANG, c.read_to_string(&mut answer))
        .await
        .expect("no hang")
        .expect("read");
    assert_eq!(answer, "got 5 bytes");
    let line = proxy.wait_for_line(|l| l.contains("end=closed")).await;
    assert_eq!(field(&line, "to_upstream"), "5");
    assert_eq!(field(&line, "to_client"), "11");
}

#[tokio::test]
async fn upstream_half_close_reaches_the_client_which_still_sends() {
    // The upstream says its piece and closes its sending half at once, then
    // keeps reading what the client sends afterwards.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (upstream, _) = raw_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut first = [0u8; 4];
            s.read_exact(&mut first).await.expect("first bytes");
            s.write_all(b"early").await.expect("write");
            s.shutdown().await.expect("half-close");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .await
                .expect("read after half-close");
            let _ = tx.send(rest);
        }
    })
    .await;
    let mut rx = rx;
    let proxy = Proxy::start(&["--upstream", &upstream]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"ping").await.expect("write");
    let mut early = Vec::new();
    timeout(NO_HANG, c.read_to_end(&mut early))
        .await
        .expect("EOF reached the client")
        .expect("read");
    assert_eq!(early, b"early");
    // Our sending half is still open through the proxy.
    c.write_all(b"late data")
        .await
        .expect("write after upstream EOF");
    c.shutdown().await.expect("half-close");
    let rest = timeout(NO_HANG, rx.recv())
        .await
        .expect("no hang")
        .expect("rest");
    assert_eq!(rest, b"late data");
    let line = proxy.wait_for_line(|l| l.contains("end=closed")).await;
    assert_eq!(field(&line, "to_upstream"), "13");
    assert_eq!(field(&line, "to_client"), "5");
}

/// An upstream that reads and never answers.
async fn silent_upstream() -> (String, Arc<AtomicUsize>) {
    raw_upstream(|mut s| async move {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    })
    .await
}

/// True when the peer closed (EOF or reset) within the no-hang bound.
async fn closed_by_peer(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(timeout(NO_HANG, c.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_at_once_and_slots_come_back() {
    let (upstream, accepted) = silent_upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--max-connections", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        c.write_all(b"x").await.expect("write");
        held.push(c);
    }
    for _ in 0..200 {
        if accepted.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    let mut third = TcpStream::connect(proxy.addr)
        .await
        .expect("kernel accepts");
    assert!(
        closed_by_peer(&mut third).await,
        "third connection not refused"
    );
    proxy
        .wait_for_line(|l| l.contains("end=refused: 2 connections open"))
        .await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "refused one reached upstream"
    );

    // A closed connection frees its slot.
    drop(held.pop());
    let mut relayed = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        if c.write_all(b"y").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if accepted.load(Ordering::SeqCst) == 3 {
                relayed = true;
                break;
            }
        }
    }
    assert!(relayed, "freed slot never reused");
}

#[tokio::test]
async fn idle_connections_time_out() {
    let (upstream, _) = silent_upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--idle-timeout-secs", "1"]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"anyone?").await.expect("write");
    assert!(closed_by_peer(&mut c).await, "idle connection kept open");
    let line = proxy
        .wait_for_line(|l| l.contains("end=idle timeout"))
        .await;
    assert_eq!(field(&line, "to_upstream"), "7");
}

#[tokio::test]
async fn silent_clients_hit_the_first_byte_deadline_and_never_reach_upstream() {
    let (upstream, accepted) = silent_upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--first-byte-timeout-secs", "1"]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    assert!(closed_by_peer(&mut c).await, "silent connection kept open");
    proxy
        .wait_for_line(|l| l.contains("end=first-byte timeout"))
        .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_does_not_read_hits_the_write_deadline() {
    // The upstream floods until the proxy closes on it.
    let (upstream, _) = raw_upstream(|mut s| async move {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..16_384 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--write-timeout-secs", "1"]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"go").await.expect("write");
    let line = proxy
        .wait_for_line(|l| l.contains("end=write timeout: client did not read"))
        .await;
    // Bounded: what the proxy held is what the kernel buffers took, far
    // from the gigabyte the upstream tried to send.
    let relayed: u64 = field(&line, "to_client").parse().expect("n");
    assert!(relayed < 256 * 1024 * 1024, "{line}");
    drop(c);
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let (upstream, _) = raw_upstream(|mut s| async move {
        let mut req = [0u8; 2];
        s.read_exact(&mut req).await.expect("request");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"done").await.expect("answer");
    })
    .await;
    let mut proxy = Proxy::start(&["--upstream", &upstream]).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"go").await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.sigterm();
    proxy.wait_for_line(|l| l.contains("draining")).await;
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "new connection accepted while draining"
    );
    let mut answer = String::new();
    timeout(NO_HANG, c.read_to_string(&mut answer))
        .await
        .expect("no hang")
        .expect("read");
    assert_eq!(answer, "done");
    drop(c);
    assert!(proxy.wait_exit().await.success());
    proxy
        .wait_for_line(|l| l.contains("stopped") && l.contains("cut=0"))
        .await;
    proxy.wait_for_line(|l| l.contains("end=closed")).await;
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    for (args, want) in [
        (
            &["--upstream", "vsock://2:3000"][..],
            "enclaves have CID 3 or more",
        ),
        (
            &["--upstream", "vsock://1:3000"],
            "enclaves have CID 3 or more",
        ),
        (&["--upstream", "http://x:1"], "must be vsock://CID:PORT"),
        (
            &["--upstream", "tcp://127.0.0.1:1", "--max-connections", "0"],
            "max-connections",
        ),
        (
            &[
                "--upstream",
                "tcp://127.0.0.1:1",
                "--idle-timeout-secs",
                "0",
            ],
            "from 1 to 86400",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nautilus-proxy"))
            .args(["--listen", "tcp://127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
