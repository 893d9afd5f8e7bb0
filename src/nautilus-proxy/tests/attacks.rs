//! Availability attacks on the proxy (issue 24), each with a legitimate
//! client beside the attacker that must keep above 90 % success. The proxy
//! is scaled down (16 slots, short deadlines) so each attack takes seconds;
//! the new limits are set through their environment variables, which an
//! older proxy ignores, so each test also shows the attack working there.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::legit::{self, connect_from, LEGIT};
use support::{DevServer, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A proxy with 16 slots in front of `server`, these new limits set
/// through the environment.
async fn small_proxy(server: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> Proxy {
    let upstream = format!("tcp://{server}");
    let mut all = vec!["--upstream", upstream.as_str(), "--max-connections", "16"];
    all.extend_from_slice(args);
    Proxy::start_with_env(&all, env).await
}

/// Issue item 1: each attacker sends one byte per period on a connection it
/// never closes and whose EOF it ignores (a byte every six minutes kept the
/// 360 s idle timer alive). The server closes every such connection after
/// its idle deadline; the proxy must then close the client side too instead
/// of holding the slot. Sixteen attackers from sixteen addresses (so no
/// per-source share helps), staggered over the period, against 16 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_per_period_cannot_hold_a_slot_the_server_has_closed() {
    let server = DevServer::start_with(|c| c.http.idle_timeout = Duration::from_millis(300)).await;
    let proxy = small_proxy(
        server.addr,
        &[("NAUTILUS_PROXY_UPSTREAM_EOF_LINGER_SECS", "1")],
        &["--idle-timeout-secs", "60"],
    )
    .await;
    let period = Duration::from_secs(3);
    let mut attackers = JoinSet::new();
    for i in 0..16u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1));
        let start = period * u32::from(i) / 16;
        attackers.spawn(byte_per_period(from, proxy.addr, start, period, 5));
    }
    let tally = legit::run(proxy.addr, 80, Duration::from_millis(100)).await;
    attackers.abort_all();
    tally.assert_kept_up("a byte per period, server closed");
    proxy
        .wait_for_line(|l| l.contains("end=closed: upstream finished, client still open"))
        .await;
}

/// Connects from `from`, sends one byte, and then one byte per `period` on
/// the same connection, never reading, never closing; reconnects only when a
/// write fails. `ticks` periods in all.
async fn byte_per_period(
    from: IpAddr,
    proxy: SocketAddr,
    start: Duration,
    period: Duration,
    ticks: u32,
) {
    sleep(start).await;
    let mut conn = None;
    for _ in 0..ticks {
        let next = Instant::now() + period;
        if conn.is_none() {
            conn = connect_from(from, proxy).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            if c.write_all(b"G").await.is_err() {
                conn = None;
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Issue item 2, silent clients: 32 connections from one address that never
/// send a byte and reconnect as soon as the first-byte deadline closes them.
/// Without a per-source share they hold every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_reconnecting_clients_get_only_their_sources_share() {
    let server = DevServer::start().await;
    let proxy = small_proxy(
        server.addr,
        &[("NAUTILUS_PROXY_MAX_CONNECTIONS_PER_SOURCE", "4")],
        &["--first-byte-timeout-secs", "1"],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = JoinSet::new();
    for _ in 0..32 {
        let stop = Arc::clone(&stop);
        let addr = proxy.addr;
        attackers.spawn(async move {
            // Bounded: at most this many connections per attacker.
            for _ in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(mut c) = connect_from(ATTACKER, addr).await {
                    let mut buf = [0u8; 16];
                    let _ = timeout(Duration::from_secs(5), c.read(&mut buf)).await;
                }
                // Refused at once: a short pause, not a spin on 2 cores.
                sleep(Duration::from_millis(20)).await;
            }
        });
    }
    // Let the attack take hold first.
    sleep(Duration::from_millis(500)).await;
    let tally = legit::run(proxy.addr, 40, Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    attackers.abort_all();
    tally.assert_kept_up("silent reconnecting clients");
    proxy
        .wait_for_line(|l| l.contains("connections open from this source"))
        .await;
}

/// Issue item 2, keep-alive clients: 32 connections from one address each
/// asking `GET /health_check` once a second on one keep-alive connection,
/// as cheap for them as it is legitimate-looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_get_only_their_sources_share() {
    let server = DevServer::start().await;
    let proxy = small_proxy(
        server.addr,
        &[("NAUTILUS_PROXY_MAX_CONNECTIONS_PER_SOURCE", "4")],
        &[],
    )
    .await;
    let mut attackers = JoinSet::new();
    for _ in 0..32 {
        let addr = proxy.addr;
        attackers.spawn(async move {
            let mut conn = None;
            for _ in 0..60 {
                if conn.is_none() {
                    conn = connect_from(ATTACKER, addr).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    let req = b"GET /health_check HTTP/1.1\r\nHost: n\r\n\r\n";
                    let mut buf = [0u8; 4096];
                    let ok = c.write_all(req).await.is_ok()
                        && matches!(
                            timeout(Duration::from_secs(5), c.read(&mut buf)).await,
                            Ok(Ok(n)) if n > 0
                        );
                    if !ok {
                        conn = None;
                    }
                }
                sleep(Duration::from_secs(1)).await;
            }
        });
    }
    sleep(Duration::from_millis(500)).await;
    let tally = legit::run(proxy.addr, 40, Duration::from_millis(100)).await;
    attackers.abort_all();
    tally.assert_kept_up("keep-alive clients");
}

/// A reconnect flood from one address (connect, close, again): the source's
/// accept rate refuses most of it, the legitimate client is unaffected, and
/// the log stays small: lines past the budget are counted, not written (a
/// flood wrote 10.7 MB of log in 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_flood_is_rate_limited_and_its_log_lines_counted() {
    let server = DevServer::start().await;
    let proxy = small_proxy(
        server.addr,
        &[
            ("NAUTILUS_PROXY_MAX_ACCEPTS_PER_SOURCE_PER_SEC", "20"),
            ("NAUTILUS_PROXY_ACCEPT_BURST_PER_SOURCE", "20"),
            ("NAUTILUS_PROXY_LOG_LINES_PER_SEC", "10"),
        ],
        &[],
    )
    .await;
    let connects = Arc::new(AtomicUsize::new(0));
    let mut attackers = JoinSet::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        let connects = Arc::clone(&connects);
        attackers.spawn(async move {
            for _ in 0..500 {
                if let Ok(mut c) = connect_from(ATTACKER, addr).await {
                    connects.fetch_add(1, Ordering::Relaxed);
                    let _ = c.write_all(b"GET / HTTP/1.1\r\n").await;
                }
                sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let tally = legit::run(proxy.addr, 40, Duration::from_millis(100)).await;
    while attackers.join_next().await.is_some() {}
    tally.assert_kept_up("reconnect flood");
    let summary = proxy
        .wait_for_line(|l| l.contains("counted instead") && l.contains("refused: source rate"))
        .await;
    eprintln!("{summary}");
    sleep(Duration::from_millis(1500)).await;
    let lines = proxy.connection_lines().len();
    let flood = connects.load(Ordering::Relaxed);
    assert!(flood >= 1000, "the flood made {flood} connections");
    // 10 lines/s with a 50-line burst over a few seconds, plus the
    // legitimate client's own.
    assert!(
        lines < 200,
        "{lines} connection lines for {flood} connections"
    );
}

/// The upstream gets a PROXY protocol v2 header first, naming the client's
/// own address, and then the client's bytes unchanged.
#[tokio::test]
async fn the_upstream_learns_the_clients_address_from_a_proxy_v2_header() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let proxy = Proxy::start_with_env(
        &["--upstream", &format!("tcp://{upstream}")],
        &[("NAUTILUS_PROXY_PROXY_PROTOCOL", "true")],
    )
    .await;
    let mut client = connect_from(LEGIT, proxy.addr).await.expect("connect");
    let client_addr = client.local_addr().expect("addr");
    client.write_all(b"hello").await.expect("write");
    client.shutdown().await.expect("half-close");
    let (mut up, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("relayed")
        .expect("accept");
    let mut got = Vec::new();
    timeout(Duration::from_secs(10), up.read_to_end(&mut got))
        .await
        .expect("no hang")
        .expect("read");
    let header = ppp::v2::Header::try_from(got.as_slice()).expect("a PROXY v2 header first");
    assert_eq!(header.command, ppp::v2::Command::Proxy);
    let ppp::v2::Addresses::IPv4(a) = header.addresses else {
        panic!("{:?}", header.addresses)
    };
    assert_eq!(
        SocketAddr::from((a.source_address, a.source_port)),
        client_addr
    );
    assert_eq!(
        SocketAddr::from((a.destination_address, a.destination_port)),
        proxy.addr
    );
    assert_eq!(&got[header.len()..], b"hello");
}

/// At start the proxy raises its descriptor limit to the hard limit and
/// says how many connections that holds; when even the hard limit is too
/// low for `--max-connections` it says so.
#[tokio::test]
async fn the_descriptor_limit_is_raised_and_reported() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let proxy =
        support::Proxy::start_with_rlimit(&["--upstream", "tcp://127.0.0.1:9"], (256, hard)).await;
    let ready = proxy
        .wait_for_line(|l| l.contains("nautilus-proxy ready"))
        .await;
    assert_eq!(
        support::field(&ready, "fd_limit"),
        hard.to_string(),
        "{ready}"
    );

    let proxy = support::Proxy::start_with_rlimit(
        &[
            "--upstream",
            "tcp://127.0.0.1:9",
            "--max-connections",
            "1024",
        ],
        (256, 256),
    )
    .await;
    let ready = proxy
        .wait_for_line(|l| l.contains("nautilus-proxy ready"))
        .await;
    assert_eq!(support::field(&ready, "can_hold"), "112", "{ready}");
    proxy
        .wait_for_line(|l| l.contains("more than the descriptor limit"))
        .await;
}

/// A server that expects the PROXY header, behind a proxy that sends it:
/// the composition that runs in production.
async fn server_behind_proxy(
    tweak: impl FnOnce(&mut nautilus_server::config::ServerConfig),
) -> (DevServer, Proxy) {
    let server = DevServer::start_with(|c| {
        c.http.proxy_protocol = true;
        tweak(c);
    })
    .await;
    let proxy = Proxy::start_with_env(
        &["--upstream", &format!("tcp://{}", server.addr)],
        &[("NAUTILUS_PROXY_PROXY_PROTOCOL", "true")],
    )
    .await;
    (server, proxy)
}

/// A task request followed by `shutdown(SHUT_WR)` (`nc -N`) through the
/// proxy gets its answer: the half-close reaches the server, which answers
/// and runs the task to the end.
#[tokio::test]
async fn a_half_closed_request_is_answered_through_the_proxy() {
    let (_server, proxy) = server_behind_proxy(|_| {}).await;
    let body = legit::NODEJS_TASK;
    let mut c = connect_from(LEGIT, proxy.addr).await.expect("connect");
    let req = format!(
        "POST /process_data HTTP/1.1\r\nHost: n\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.expect("request");
    c.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    timeout(Duration::from_secs(30), c.read_to_end(&mut answer))
        .await
        .expect("no hang")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"exit_code\":0"), "{answer}");
}

/// Issue item 5 behind the proxy: there every connection came from the
/// proxy, so the server could not tell one client's flood of tasks from
/// anyone else's. With the PROXY header it can: the flooding address meets
/// its shares (429), the legitimate one gets its turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_flood_through_the_proxy_costs_others_one_turn() {
    let (server, proxy) = server_behind_proxy(|c| {
        c.runner.max_concurrent = 2;
    })
    .await;
    let mut attackers = JoinSet::new();
    for _ in 0..60 {
        let addr = proxy.addr;
        attackers.spawn(async move {
            for _ in 0..200 {
                let ok = match connect_from(ATTACKER, addr).await {
                    Ok(mut s) => {
                        let body = legit::NODEJS_TASK;
                        let req = format!(
                            "POST /process_data HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\
                             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let mut answer = Vec::new();
                        s.write_all(req.as_bytes()).await.is_ok()
                            && timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
                                .await
                                .is_ok()
                            && answer.starts_with(b"HTTP/1.1 200")
                    }
                    Err(_) => false,
                };
                if !ok {
                    sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    sleep(Duration::from_secs(1)).await;
    let tally = legit::run(proxy.addr, 25, Duration::from_millis(100)).await;
    attackers.abort_all();
    tally.assert_kept_up("a task flood through the proxy");
    drop(server);
}
