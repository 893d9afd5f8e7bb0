//! A hostile client against a real server over loopback: every connection
//! state has a deadline, every byte the server holds for a client is
//! bounded, and a client that goes away takes its task with it. In its own
//! test binary: its checks for leftover `node` processes and its thousand
//! sockets must not meet other tests.

mod support;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Request};
use serde_json::json;
use support::{children_but_warm, config, eventually, expect_error, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one HTTP/1.1 response: status, head, and a body of `Content-Length`
/// bytes (or whatever arrives before the connection ends).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!(
                "connection ended before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

fn error_sentence(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    v["error"].as_str().expect("an error sentence").to_owned()
}

/// A body trickled one byte every 4 s never trips an idle timer; the total
/// deadline (6 s here) answers 408 JSON long before the 14 bytes are in.
#[tokio::test]
async fn a_trickled_body_gets_408_from_the_total_deadline() {
    let mut c = config();
    c.http.body_timeout = Duration::from_secs(6);
    // Two bytes a second keeps above this minimum rate: only the total
    // deadline stops the body (the rate rule has its own test).
    c.http.min_body_bytes_per_sec = 1;
    let s = TestServer::start(c).await;
    let body = br#"{"payload":{}}"#;
    let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
    let head = format!(
        "POST /process_data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut rd, mut wr) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let start = Instant::now();
    let mut buf = Vec::new();
    let status_line = tokio::time::timeout(Duration::from_secs(40), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(status_line.is_ok(), "no answer within 40 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    assert!(error_sentence(body).contains("6 s"), "{body}");
    // The whole body would take 7 s.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    trickle.abort();
    s.shutdown().await;
}

/// A client that pipelines requests and never reads the answers loses its
/// connection once a write has been stuck for the write timeout (2 s here).
#[tokio::test]
async fn a_reader_that_never_reads_loses_its_connection() {
    let mut c = config();
    c.http.write_timeout = Duration::from_secs(2);
    let s = TestServer::start(c).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let stream = socket.connect(s.addr()).await.expect("connect");
    let (_rd, mut wr) = stream.into_split();
    // ~26 MB of answers, far more than the socket buffers hold.
    let pipelined = tokio::spawn(async move {
        let request = b"GET /manifest HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..20_000 {
            if wr.write_all(request).await.is_err() {
                return;
            }
        }
    });
    let closed = async {
        loop {
            if s.metric("nautilus_connections_closed_total{reason=\"write_timeout\"}")
                .await
                >= 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .is_ok(),
        "the connection was still open 30 s after its writes stalled"
    );
    pipelined.abort();
    s.shutdown().await;
}

/// A `Content-Length` over the limit is refused from the head alone.
#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let mut c = config();
    c.max_body_bytes = 64 * 1024;
    let s = TestServer::start(c).await;
    let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
    stream
        .write_all(b"POST /process_data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .expect("head");
    // Nothing of the body is sent: the answer cannot depend on it.
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
            .await
            .expect("answered without the body");
    assert_eq!(status, 413, "{body}");
    assert!(error_sentence(&body).contains("65536-byte limit"), "{body}");
    s.shutdown().await;
}

/// 2.6 MB sent chunked (no length to refuse up front) gets 413 JSON.
#[tokio::test]
async fn an_oversized_chunked_body_gets_413_json() {
    let s = TestServer::start(config()).await;
    let stream = TcpStream::connect(s.addr()).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let sender = tokio::spawn(async move {
        wr.write_all(b"POST /process_data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .expect("head");
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..40 {
            // The server may stop reading once it has answered.
            if wr
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut stream_rd = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => stream_rd.extend_from_slice(&chunk[..n]),
            }
            if stream_rd.windows(4).any(|w| w == b"\r\n\r\n") && stream_rd.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer within 30 s");
    let text = String::from_utf8_lossy(&stream_rd).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    assert!(
        error_sentence(body).contains("2097152-byte limit"),
        "{body}"
    );
    sender.abort();
    s.shutdown().await;
}

/// An HTTP/2 client to the server, its connection driven in the background.
async fn h2_client(s: &TestServer) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(s.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_post(s: &TestServer, path: &str) -> Request<()> {
    Request::builder()
        .method(Method::POST)
        .uri(s.url(path))
        .header("content-type", "application/json")
        .body(())
        .expect("request")
}

async fn h2_read(response: h2::client::ResponseFuture) -> (u16, String) {
    let response = response.await.expect("response head");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Over HTTP/2 a body has no `Content-Length` to check up front either.
#[tokio::test]
async fn an_oversized_h2_body_gets_413_json() {
    let s = TestServer::start(config()).await;
    let client = h2_client(&s).await;
    let mut client = client.ready().await.expect("ready");
    let (response, mut send) = client
        .send_request(h2_post(&s, "/process_data"), false)
        .expect("stream");
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    for _ in 0..40 {
        if send.send_data(chunk.clone(), false).is_err() {
            break;
        }
    }
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), h2_read(response))
        .await
        .expect("answered within 30 s");
    assert_eq!(status, 413, "{body}");
    assert!(
        error_sentence(&body).contains("2097152-byte limit"),
        "{body}"
    );
    s.shutdown().await;
}

/// Two requests holding most of the body budget: a third is refused at once
/// with 503 and `Retry-After`; once they are gone the budget is back.
#[tokio::test]
async fn the_body_budget_refuses_with_503_before_reading() {
    let mut c = config();
    c.max_body_bytes = 256 * 1024;
    c.http.max_buffered_body_bytes = 512 * 1024;
    let s = TestServer::start(c).await;
    let head = "POST /process_data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n{";
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        holders.push(stream);
    }
    // Both holders' reservations are in before the third arrives.
    let mut reserved = false;
    for _ in 0..200 {
        if s.metric("nautilus_body_bytes_buffered").await >= 400_000.0 {
            reserved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reserved, "the two bodies hold their declared length");
    let mut third = TcpStream::connect(s.addr()).await.expect("connect");
    third.write_all(head.as_bytes()).await.expect("head");
    let (status, head_text, body) =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut third))
            .await
            .expect("refused at once");
    assert_eq!(status, 503, "{body}");
    assert!(head_text.contains("retry-after: 1"), "{head_text}");
    assert!(error_sentence(&body).contains("retry"), "{body}");
    assert_eq!(s.metric("nautilus_body_budget_exhausted_total").await, 1.0);

    drop(holders);
    let mut freed = false;
    for _ in 0..200 {
        if s.metric("nautilus_body_bytes_buffered").await == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "closed connections give their budget back");
    let resp = s.process(json!({"task_path": "echo"})).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    s.shutdown().await;
}

/// A run request that goes away (socket reset, stream reset) while running
/// or queued: the running task is killed and its slot freed; the queued one
/// leaves the queue and never runs. Both are counted.
static ABANDON_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn abandon(s: &TestServer, mut drop_running: impl FnMut(), mut drop_queued: impl FnMut()) {
    let stats = || s.state.runner().stats();
    // A queued run waits for its turn before the runner's own queue.
    let queued = || stats().queued + s.state.tasks_waiting();
    assert!(
        eventually(Duration::from_secs(30), || stats().running == 1
            && queued() == 1)
        .await
        .is_some(),
        "one task running, one queued: {:?}",
        stats()
    );
    drop_queued();
    assert!(
        eventually(Duration::from_secs(5), || queued() == 0)
            .await
            .is_some(),
        "the queued run left the queue: {:?}",
        stats()
    );
    // Counted once the run has gone: wait for the count, not a margin.
    let abandoned_queued = || stats().abandoned_queued + s.state.tasks_abandoned_waiting();
    assert!(
        eventually(Duration::from_secs(10), || abandoned_queued() >= 1)
            .await
            .is_some(),
        "the queued run was not counted as abandoned: {:?}",
        stats()
    );
    assert_eq!(abandoned_queued(), 1);
    drop_running();
    let took = eventually(Duration::from_secs(10), || {
        stats().running == 0 && children_but_warm(s).is_empty()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "task still running: {:?} {:?}",
            stats(),
            children_but_warm(s)
        )
    });
    eprintln!("abandoned task stopped and its slot freed after {took:?}");
    // The runner counts the abandoned run after its slot is free: wait for
    // the count (under load it can come later than the slot).
    assert!(
        eventually(Duration::from_secs(10), || stats().abandoned_running >= 1)
            .await
            .is_some(),
        "the running run was not counted as abandoned: {:?}",
        stats()
    );
    // The queued run must not take the freed slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((stats().running, stats().queued), (0, 0));
    assert_eq!(stats().abandoned_running, 1);
    assert_eq!(
        s.metric("nautilus_tasks_abandoned_total{stage=\"queued\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("nautilus_tasks_abandoned_total{stage=\"running\"}")
            .await,
        1.0
    );
    // The slot is usable again.
    let resp = s.process(json!({"task_path": "echo"})).await;
    assert_eq!(resp.status(), 200);
}

fn one_slot() -> nautilus_server::state::ServerConfig {
    let mut c = config();
    c.runner.max_concurrent = 1;
    c.runner.max_queue = 4;
    c
}

/// `spin` ignores SIGTERM and never ends: only a kill stops it.
const SPIN: &str = r#"{"payload":{"task_path":"spin","timeout_secs":20}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_the_socket_abandons_the_run_over_http1() {
    // One abandon test at a time: each counts every child of this process
    // but its own server's warm boxes.
    let _alone = ABANDON_TESTS.lock().await;
    let s = TestServer::start(one_slot()).await;
    let request = format!(
        "POST /process_data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SPIN}",
        SPIN.len()
    );
    let mut running = Some(TcpStream::connect(s.addr()).await.expect("connect"));
    if let Some(r) = running.as_mut() {
        r.write_all(request.as_bytes()).await.expect("request");
    }
    assert!(
        eventually(Duration::from_secs(30), || s.state.runner().stats().running
            == 1)
        .await
        .is_some()
    );
    let mut queued = Some(TcpStream::connect(s.addr()).await.expect("connect"));
    if let Some(q) = queued.as_mut() {
        q.write_all(request.as_bytes()).await.expect("request");
    }
    // Reset, not closed: over HTTP/1 a plain close is a FIN, the same as a
    // half-close, whose request is answered (availability.rs).
    let reset = |c: Option<TcpStream>| {
        if let Some(c) = c {
            let _ = c.set_zero_linger();
        }
    };
    abandon(&s, || reset(running.take()), || reset(queued.take())).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_the_stream_abandons_the_run_over_http2() {
    // One abandon test at a time: each counts every child of this process
    // but its own server's warm boxes.
    let _alone = ABANDON_TESTS.lock().await;
    let s = TestServer::start(one_slot()).await;
    // Both on one connection: the reset must free the run, not the socket.
    let client = h2_client(&s).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, mut send) = ready
            .send_request(h2_post(&s, "/process_data"), false)
            .expect("stream");
        send.send_data(Bytes::from_static(SPIN.as_bytes()), true)
            .expect("body");
        streams.push(Some((response, send)));
        if streams.len() == 1 {
            assert!(
                eventually(Duration::from_secs(30), || s.state.runner().stats().running
                    == 1)
                .await
                .is_some()
            );
        }
    }
    let mut second = streams.pop().flatten();
    let mut first = streams.pop().flatten();
    let reset = |stream: &mut Option<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>| {
        if let Some((_, mut send)) = stream.take() {
            send.send_reset(h2::Reason::CANCEL);
        }
    };
    abandon(&s, || reset(&mut first), || reset(&mut second)).await;
    // The connection itself is still good.
    let mut ready = client.ready().await.expect("connection still usable");
    let (response, mut send) = ready
        .send_request(h2_post(&s, "/process_data"), false)
        .expect("stream");
    send.send_data(
        Bytes::from_static(br#"{"payload":{"task_path":"echo"}}"#),
        true,
    )
    .expect("body");
    let (status, body) = h2_read(response).await;
    assert_eq!(status, 200, "{body}");
    s.shutdown().await;
}

/// HEAD must not cost an attestation; CORS answers only on real routes.
#[tokio::test]
async fn head_does_not_attest_and_cors_answers_only_real_routes() {
    let mut c = config();
    c.cors_origins = vec!["https://app.example".parse().expect("origin")];
    let s = TestServer::start(c).await;
    let head = s
        .http
        .head(s.url("/get_attestation"))
        .send()
        .await
        .expect("answered");
    assert_eq!(head.status(), 200);
    assert_eq!(s.metric("nautilus_attestations_total").await, 0.0);
    assert_eq!(s.get("/get_attestation").await.status(), 200);
    assert_eq!(s.metric("nautilus_attestations_total").await, 1.0);

    let preflight = |path: &str| {
        s.http
            .request(Method::OPTIONS, s.url(path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
    };
    let real = preflight("/process_data").await.expect("answered");
    assert!(real.status().is_success(), "{}", real.status());
    assert_eq!(
        real.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let unknown = preflight("/no/such/route").await.expect("answered");
    assert!(!unknown
        .headers()
        .contains_key("access-control-allow-origin"));
    expect_error(unknown, 404).await;
    s.shutdown().await;
}

/// An HTTP/2 client that stops answering pings while its task runs: the
/// keep-alive (1 s here) closes the connection and the task goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_peer_that_stops_answering_pings_loses_its_connection_and_task() {
    let mut c = one_slot();
    c.http.http2_keepalive = Duration::from_secs(1);
    let s = TestServer::start(c).await;
    let tcp = TcpStream::connect(s.addr()).await.expect("connect");
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = Freezable {
        io: tcp,
        frozen: std::sync::Arc::clone(&frozen),
    };
    let (client, connection) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut ready = client.ready().await.expect("ready");
    let (_response, mut send) = ready
        .send_request(h2_post(&s, "/process_data"), false)
        .expect("stream");
    send.send_data(Bytes::from_static(SPIN.as_bytes()), true)
        .expect("body");
    let stats = || s.state.runner().stats();
    assert!(eventually(Duration::from_secs(30), || stats().running == 1)
        .await
        .is_some());
    // From now on the client reads nothing, so it never answers a ping.
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let took = eventually(Duration::from_secs(20), || stats().running == 0)
        .await
        .unwrap_or_else(|| panic!("task still running: {:?}", stats()));
    eprintln!("unanswered pings ended the connection and its task after {took:?}");
    assert_eq!(stats().abandoned_running, 1);
    s.shutdown().await;
}

/// A socket whose reads stop (stay pending) once `frozen` is set.
struct Freezable {
    io: TcpStream,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Freezable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Freezable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The errors hyper answers before the application sees a request stay
/// bodiless (documented in docs/api.md): here a request head over 64 KiB.
#[tokio::test]
async fn an_oversized_request_head_gets_a_bodiless_431() {
    let s = TestServer::start(config()).await;
    let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
    let head = format!(
        "GET /health_check HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
            .await
            .expect("answered");
    assert_eq!((status, body.as_str()), (431, ""));
    s.shutdown().await;
}
