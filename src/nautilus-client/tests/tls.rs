//! `https://` end to end: the client pins the TLS key the enclave attested
//! (the manifest's `tls_spki_sha256`), against a real dev-mode server with
//! `--tls on`, directly, through a relay that forwards bytes untouched
//! (what `nautilus-proxy` is), and through a relay that terminates TLS with
//! its own certificate (what a malicious parent instance would run).

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use attestation_dev::{AttestError, AttestationRequest, Attester, DevAttester, Mode};
use nautilus_client::{Client, ClientError, ConnectOptions, Policy, TaskSpec, TrustedRoot};
use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use tls_test_support::{byte_relay, terminating_relay};

struct Server {
    addr: std::net::SocketAddr,
    root_pem: tempfile::NamedTempFile,
    state: Arc<AppState>,
}

async fn serve(state: AppState, root_pem: String) -> Server {
    let state = Arc::new(state);
    let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let Listen::Tcp(addr) = bound.local_addr().expect("addr") else {
        unreachable!("tcp")
    };
    tokio::spawn(bound.serve(Arc::clone(&state), std::future::pending()));
    let root = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(root.path(), root_pem).expect("write pem");
    Server {
        addr,
        root_pem: root,
        state,
    }
}

fn config(tls: bool) -> ServerConfig {
    let mut config = ServerConfig::dev();
    config.runner.tasks_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    config.tls = tls;
    config
}

async fn start_server(tls: bool) -> Server {
    let state = AppState::new(config(tls)).expect("server state");
    let pem = state.dev_root_pem().expect("dev root").to_owned();
    serve(state, pem).await
}

/// Dev documents from a server that calls itself `nsm`: the client's
/// plain-HTTP rule keys on the attested manifest's mode.
struct NsmLookalike(DevAttester);

impl Attester for NsmLookalike {
    fn mode(&self) -> Mode {
        Mode::Nsm
    }
    fn attest(&self, req: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError> {
        self.0.attest(req)
    }
}

async fn start_nsm_lookalike(tls: bool) -> Server {
    let dev = DevAttester::generate().expect("dev CA");
    let pem = dev.root_pem();
    let mut config = config(tls);
    config.attestation = Mode::Nsm;
    let state = AppState::with_attester(config, Arc::new(NsmLookalike(dev))).expect("state");
    serve(state, pem).await
}

impl Server {
    fn root(&self) -> TrustedRoot {
        TrustedRoot::from_pem_or_der(&std::fs::read(self.root_pem.path()).expect("pem"))
            .expect("root")
    }
    fn spki(&self) -> String {
        hex::encode(self.state.tls().expect("tls on").spki_sha256())
    }
}

fn policy() -> Policy {
    Policy::default().allow_debug(true)
}

async fn cli(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("client finished in time")
    .expect("client ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_runs_over_https_directly_and_through_a_byte_relay() {
    let s = start_server(true).await;
    let (relay, _) = byte_relay(s.addr).await;
    for addr in [s.addr, relay] {
        let client = Client::connect(&format!("https://{addr}"), s.root(), policy())
            .await
            .expect("attested over https");
        assert_eq!(client.manifest().tls_spki_sha256(), Some(s.spki().as_str()));
        let result = client
            .run_task(&TaskSpec::new("nodejs-task").args(["1", "2"]))
            .await
            .expect("verified result");
        assert_eq!(result.data().status, "success");
    }

    // The CLI too.
    let url = format!("https://{relay}");
    let root = s.root_pem.path().display().to_string();
    let out = cli(&[
        "run",
        "--url",
        &url,
        "--root",
        &root,
        "--allow-debug",
        "--",
        "1",
        "2",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_terminates_tls_is_refused_with_both_keys_named() {
    let s = start_server(true).await;
    let (relay, relay_spki) = terminating_relay(s.addr).await;
    let err = Client::connect(&format!("https://{relay}"), s.root(), policy())
        .await
        .expect_err("a TLS-terminating relay must be refused");
    match &err {
        ClientError::TlsKeyMismatch {
            attested,
            presented,
        } => {
            assert_eq!(attested, &s.spki());
            assert_eq!(presented, &relay_spki);
        }
        other => panic!("wrong error: {other:?}"),
    }

    let url = format!("https://{relay}");
    let root = s.root_pem.path().display().to_string();
    let out = cli(&[
        "run",
        "--url",
        &url,
        "--root",
        &root,
        "--allow-debug",
        "--",
        "1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS key mismatch"), "{stderr}");
    assert!(
        stderr.contains(&relay_spki) && stderr.contains(&s.spki()),
        "{stderr}"
    );
}

#[tokio::test]
async fn https_to_a_server_without_tls_and_http_to_an_enclave_are_refused() {
    // A server with TLS off pins no key: https cannot be tied to it (and it
    // does not speak TLS).
    let plain = start_server(false).await;
    let err = Client::connect(&format!("https://{}", plain.addr), plain.root(), policy())
        .await
        .expect_err("no TLS");
    assert!(matches!(err, ClientError::Http { .. }), "{err:?}");
    // Plain http to a dev server keeps working.
    Client::connect(&format!("http://{}", plain.addr), plain.root(), policy())
        .await
        .expect("dev over http");

    // An nsm server over plain http: refused unless asked for.
    let nsm = start_nsm_lookalike(false).await;
    let url = format!("http://{}", nsm.addr);
    let err = Client::connect(&url, nsm.root(), policy())
        .await
        .expect_err("plain http to nsm");
    assert!(matches!(err, ClientError::InsecureHttp), "{err:?}");
    assert!(err.to_string().contains("--insecure-http"), "{err}");
    let options = ConnectOptions {
        insecure_http: true,
    };
    let client = Client::connect_with(&url, nsm.root(), policy(), options)
        .await
        .expect("allowed when asked");
    assert_eq!(client.manifest().attestation_mode(), "nsm");

    let root = nsm.root_pem.path().display().to_string();
    let out = cli(&["attest", "--url", &url, "--root", &root, "--allow-debug"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-http"));
    let out = cli(&[
        "attest",
        "--url",
        &url,
        "--root",
        &root,
        "--allow-debug",
        "--insecure-http",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same nsm server with TLS: https works without the flag.
    let nsm_tls = start_nsm_lookalike(true).await;
    Client::connect(
        &format!("https://{}", nsm_tls.addr),
        nsm_tls.root(),
        policy(),
    )
    .await
    .expect("nsm over attested TLS");
}
