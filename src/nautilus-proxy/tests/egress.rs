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
