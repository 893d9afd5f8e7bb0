//! The egress mode over real loopback sockets: only allowlisted `CONNECT`
//! targets are connected to; everything else gets 403 and no connection.

use std::time::Duration;

use nautilus_proxy::egress::{serve_egress, EgressConfig, EgressListen, EgressListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server that counts its connections.
async fn echo() -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = tx.send(());
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (port, rx)
}

async fn proxy(allow: &[String]) -> u16 {
    let listener = EgressListener::bind("tcp://127.0.0.1:0".parse::<EgressListen>().unwrap())
        .await
        .unwrap();
    let EgressListen::Tcp(addr) = listener.local().unwrap() else {
        unreachable!()
    };
    let config = EgressConfig {
        allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        max_connections: 8,
        head_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
    };
    tokio::spawn(serve_egress(listener, config));
    addr.port()
}

/// Sends `CONNECT target`; returns the status line and the open stream.
async fn connect(proxy: u16, target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    (text.lines().next().unwrap_or_default().to_owned(), s)
}

#[tokio::test]
async fn only_allowlisted_destinations_are_connected() {
    let (port, mut connections) = echo().await;
    let proxy = proxy(&[format!("allowed.nautilus.test:{port}=127.0.0.1")]).await;

    let (status, mut s) = connect(proxy, &format!("ALLOWED.nautilus.test:{port}")).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    assert!(connections.try_recv().is_ok());

    for refused in [
        format!("other.nautilus.test:{port}"),
        format!("allowed.nautilus.test:{}", port.wrapping_add(1)),
        format!("127.0.0.1:{port}"),
    ] {
        let (status, mut s) = connect(proxy, &refused).await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{refused}");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the refusal");
    }
    // Not a CONNECT at all: closed without an answer.
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // None of the refused requests reached the destination.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(connections.try_recv().is_err());
}

#[path = "../../task-runner/tests/common/https.rs"]
mod https;
mod support;

use https::{HttpsServer, TEST_HOST};
use nautilus_client::{Client, Policy, TaskSpec};
use nautilus_server::egress::EgressRoute;
use support::{DevServer, Proxy};

const FETCH_JS: &str = r#"'use strict';
const url = process.argv[2];
fetch(url).then((r) => r.json()).then(
  (j) => console.log(`ok ${j.hello}`),
  (e) => console.log(`error ${(e.cause && e.cause.code) || e.message}`),
);
"#;

fn task(root: &std::path::Path, name: &str, dest: &str) {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        format!(r#"{{"main":"index.js","nautilus":{{"egress":["{dest}"]}}}}"#),
    )
    .unwrap();
    std::fs::write(dir.join("index.js"), FETCH_JS).unwrap();
}

/// The whole way out, with real parts: a task's `fetch` over TLS from its
/// box, the server's relay, `nautilus-proxy`'s egress mode (CONNECT, its
/// own allowlist) and a real HTTPS server with a test CA; the client then
/// verifies the signed result, its `egress` list against the manifest's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_fetches_through_the_proxy_and_the_client_verifies_its_egress() {
    // SAFETY: geteuid cannot fail.
    if unsafe { nix::libc::geteuid() } != 0 {
        skip_report::skipped(
            "a_task_fetches_through_the_proxy_and_the_client_verifies_its_egress",
            "needs root (the task's box)",
        );
        return;
    }
    let server = HttpsServer::start();
    let port = server.port;
    let tasks = tempfile::tempdir().unwrap();
    task(tasks.path(), "fetch", &format!("{TEST_HOST}:{port}"));
    // Declared by the task (so the server asks), but not on the proxy's list.
    task(
        tasks.path(),
        "sneaky",
        &format!("other.nautilus.test:{port}"),
    );
    let proxy = Proxy::start(&[
        "--upstream",
        "tcp://127.0.0.1:9",
        "--egress-listen",
        "tcp://127.0.0.1:0",
        "--egress-allow",
        &format!("{TEST_HOST}:{port}=127.0.0.1"),
    ])
    .await;
    let ready = proxy.wait_for_line(|l| l.contains("egress ready")).await;
    let egress: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen=tcp://"))
        .expect("egress listen address")
        .parse()
        .unwrap();

    let ca = server.ca_into(tasks.path());
    let dev = DevServer::start_with(|config| {
        config.runner.tasks_dir = tasks.path().to_owned();
        config.runner.egress_test_ca = Some(ca);
        config.runner.max_concurrent = 2;
        config.egress_route = EgressRoute::Tcp {
            host: "127.0.0.1".into(),
            port: egress.port(),
        };
    })
    .await;
    let url = format!("http://{}", dev.addr);
    let client = Client::connect(&url, dev.root(), Policy::default().allow_debug(true))
        .await
        .expect("attested");

    let manifest: serde_json::Value = serde_json::from_slice(client.manifest().raw()).unwrap();
    assert_eq!(
        manifest["egress"]["route"],
        format!("tcp://127.0.0.1:{}", egress.port())
    );
    assert!(
        manifest["egress"]["test_ca_sha256"].is_string(),
        "{manifest}"
    );
    assert_eq!(manifest["egress"]["max_connections"], 8);

    let url = format!("https://{TEST_HOST}:{port}/data");
    let result = client
        .run_task(&TaskSpec::new("fetch").args([url.as_str()]))
        .await
        .expect("verified");
    let d = result.data();
    assert_eq!(d.stdout.trim(), "ok egress", "{d:?}");
    assert_eq!(d.egress.len(), 1, "{d:?}");
    assert_eq!(
        (d.egress[0].host.as_str(), d.egress[0].port),
        (TEST_HOST, port)
    );
    assert!(d.egress[0].bytes_in > 0 && d.egress[0].bytes_out > 0);

    let url = format!("https://other.nautilus.test:{port}/data");
    let result = client
        .run_task(&TaskSpec::new("sneaky").args([url.as_str()]))
        .await
        .expect("verified");
    let d = result.data();
    assert!(d.stdout.starts_with("error "), "{d:?}");
    assert!(d.egress.is_empty(), "{d:?}");
    proxy
        .wait_for_line(|l| {
            l.contains("other.nautilus.test") && l.contains("not on the egress allowlist")
        })
        .await;
    assert_eq!(dev.state.runner().stats().egress_connect_failed, 1);
}
