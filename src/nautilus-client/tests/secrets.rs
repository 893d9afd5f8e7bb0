//! Operator secrets end to end, against a real dev-mode server with TLS on
//! and one pinned operator key: the operator's update reaches the task that
//! declares the secret and no other; updates signed by another key, replayed,
//! or sent in plain HTTP are refused; and the value appears in no log line,
//! metric, result or error (everything the server logs is captured here).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nautilus_client::{Client, ClientError, Policy, SigningKey, TaskSpec, TrustedRoot};
use nautilus_server::state::{AppState, ServerConfig};
use nautilus_server::transport::{Bound, Listen};
use result_signing::{IntentMessage, SecretUpdate, INTENT_SECRET_UPDATE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NAME: &str = "DEMO_API_KEY";

/// Every line the server logs, at every level, from every crate.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Server {
    base: String,
    root: TrustedRoot,
}

async fn start(tls: bool, operator: &SigningKey) -> Server {
    captured_logs();
    let mut config = ServerConfig::dev();
    config.runner.tasks_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/secret-tasks");
    config.tls = tls;
    config.operator_keys = vec![*operator.verifying_key()];
    let state = Arc::new(AppState::new(config).expect("server state"));
    let bound = Bound::bind(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let Listen::Tcp(addr) = bound.local_addr().expect("addr") else {
        unreachable!("tcp")
    };
    let root =
        TrustedRoot::from_pem_or_der(state.dev_root_pem().expect("dev").as_bytes()).expect("root");
    tokio::spawn(bound.serve(state, std::future::pending()));
    let scheme = if tls { "https" } else { "http" };
    Server {
        base: format!("{scheme}://{addr}"),
        root,
    }
}

fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A raw HTTP client, for requests the library would never send.
fn raw() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn signed_put(key: &SigningKey, nonce: &str, name: &str, value: &str) -> Value {
    let update = IntentMessage::new(
        INTENT_SECRET_UPDATE,
        0,
        SecretUpdate {
            name: name.into(),
            value_sha256: sha256_hex(value),
            nonce: nonce.into(),
        },
    )
    .sign(key)
    .expect("sign");
    json!({ "update": update, "value": value })
}

async fn fresh_nonce(s: &Server) -> String {
    let v: Value = raw()
        .get(format!("{}/secrets/nonce", s.base))
        .send()
        .await
        .expect("nonce")
        .json()
        .await
        .expect("json");
    v["nonce"].as_str().expect("nonce").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_secret_reaches_the_declaring_task_only_and_is_never_shown() {
    let operator = key();
    let s = start(true, &operator).await;
    let value = format!(
        "s3cr3t-{}",
        hex::encode(rand_core::RngCore::next_u64(&mut rand_core::OsRng).to_be_bytes())
    );

    let client = Client::connect(&s.base, s.root.clone(), Policy::default().allow_debug(true))
        .await
        .expect("attested");
    let manifest: Value = serde_json::from_slice(client.manifest().raw()).expect("manifest");
    assert_eq!(
        manifest["operator_keys"],
        json!([hex::encode(result_signing::encode_public_key(
            operator.verifying_key()
        ))])
    );
    let user = manifest["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_path"] == "secret-user")
        .expect("secret-user listed");
    assert_eq!(user["secrets"], json!([NAME]));

    let health = || {
        let url = format!("{}/health_check", s.base);
        async move {
            let resp = raw().get(url).send().await.expect("health");
            resp.text().await.expect("text")
        }
    };
    let h = health().await;
    let hv: Value = serde_json::from_str(&h).expect("health json");
    assert_eq!(hv["secrets"], json!({ "set": [], "missing": [NAME] }));

    // Unset: the declaring task fails before it runs, naming the secret.
    let err = client
        .run_task(&TaskSpec::new("secret-user"))
        .await
        .expect_err("secret not set");
    match &err {
        ClientError::Status {
            status, message, ..
        } => {
            assert_eq!(*status, 503);
            assert!(message.contains("needs the operator secret"), "{message}");
            assert!(message.contains(NAME), "{message}");
            assert!(message.contains("not set"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Another key is refused by the client before anything is sent.
    let err = client
        .put_secret(&key(), NAME, &value)
        .await
        .expect_err("not an operator");
    assert!(matches!(err, ClientError::NotAnOperator { .. }), "{err:?}");
    // The pinned key sets it.
    client
        .put_secret(&operator, NAME, &value)
        .await
        .expect("operator sets the secret");
    let h2 = health().await;
    let hv: Value = serde_json::from_str(&h2).expect("health json");
    assert_eq!(hv["secrets"], json!({ "set": [NAME], "missing": [] }));

    // The declaring task gets it; meanwhile a task that does not declare it
    // looks in its environment and every /proc/*/environ it can read.
    let long_spec = TaskSpec::new("secret-user").args(["3000"]);
    let long_user = client.run_task(&long_spec);
    let snoop = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        client.run_task(&TaskSpec::new("secret-snoop")).await
    };
    let (used, snooped) = tokio::join!(long_user, snoop);
    let used = used.expect("declaring task ran");
    assert!(
        used.data().stdout.contains(&sha256_hex(&value)),
        "the declaring task did not get the value: {}",
        used.data().stdout
    );
    let snooped = snooped.expect("snoop ran");
    let found: Value = serde_json::from_str(snooped.data().stdout.trim()).expect("snoop json");
    assert!(
        !found["hashes"]
            .as_array()
            .expect("hashes")
            .contains(&json!(sha256_hex(&value))),
        "a task that does not declare the secret found it ({} /proc environs readable)",
        found["readable"]
    );

    // Nothing shown anywhere: results, health, manifest, metrics, errors, logs.
    let mut shown = vec![
        serde_json::to_string(used.signed()).expect("json"),
        serde_json::to_string(snooped.signed()).expect("json"),
        h,
        h2,
        err.to_string(),
    ];
    for path in ["/metrics", "/manifest", "/health_check"] {
        shown.push(
            raw()
                .get(format!("{}{path}", s.base))
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("text"),
        );
    }
    // A refused update answers with an error that does not echo the value.
    let nonce = fresh_nonce(&s).await;
    let resp = raw()
        .post(format!("{}/secrets", s.base))
        .json(&json!({ "update": "not an update", "value": value }))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    shown.push(resp.text().await.expect("text"));
    let mut wrong = signed_put(&operator, &nonce, NAME, &value);
    wrong["value"] = json!(format!("{value}-changed"));
    let resp = raw()
        .post(format!("{}/secrets", s.base))
        .json(&wrong)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    shown.push(resp.text().await.expect("text"));
    let logs = String::from_utf8_lossy(&captured_logs().lock().expect("logs")).into_owned();
    assert!(
        logs.contains("operator secret set"),
        "the logs were captured"
    );
    shown.push(logs);
    for text in &shown {
        assert!(!text.contains(&value), "the value was shown: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_keys_replays_undeclared_names_and_plain_http_are_refused() {
    let operator = key();
    let s = start(true, &operator).await;
    let post = |body: Value| {
        let url = format!("{}/secrets", s.base);
        async move {
            let resp = raw().post(url).json(&body).send().await.expect("post");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("text"))
        }
    };

    // Signed by a key the image does not pin.
    let nonce = fresh_nonce(&s).await;
    let (status, text) = post(signed_put(&key(), &nonce, NAME, "v")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not signed by an operator key"), "{text}");

    // The pinned key, once; the same update again is a replay.
    let nonce = fresh_nonce(&s).await;
    let update = signed_put(&operator, &nonce, NAME, "v1");
    let (status, text) = post(update.clone()).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(update).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("nonce is unknown, used or expired"), "{text}");
    // A nonce the server never handed out.
    let (status, text) = post(signed_put(&operator, &"00".repeat(32), NAME, "v2")).await;
    assert_eq!(status, 403, "{text}");

    // A name no task declares.
    let nonce = fresh_nonce(&s).await;
    let (status, text) = post(signed_put(&operator, &nonce, "OTHER_KEY", "v")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no task in the manifest declares"), "{text}");

    // The same server without TLS: refused before anything is read.
    let plain = start(false, &operator).await;
    let resp = raw()
        .get(format!("{}/secrets/nonce", plain.base))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 403);
    let resp = raw()
        .post(format!("{}/secrets", plain.base))
        .json(&signed_put(&operator, &"00".repeat(32), NAME, "v"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.expect("text").contains("plain HTTP"));
    // And the client does not try.
    let client = Client::connect(
        &plain.base,
        plain.root.clone(),
        Policy::default().allow_debug(true),
    )
    .await
    .expect("dev over http");
    let err = client
        .put_secret(&operator, NAME, "v")
        .await
        .expect_err("plain http");
    assert!(matches!(err, ClientError::SecretsNeedTls), "{err:?}");
}
