//! A replaced operator secret leaves no copy in the server's memory.
//!
//! The real `nautilus-server` binary (TLS on, one pinned operator key) gets
//! a secret over TLS, a task that declares it runs with it, the operator
//! replaces it, and the client closes its connections. Then this test reads
//! every writable mapping of the server (`/proc/<pid>/maps`, `/proc/<pid>/mem`)
//! and looks for the old value: the request body, the parsed value, the
//! store, the environment handed to the task's box, and whatever the TLS and
//! HTTP layers buffered must all be wiped by then. The new value must still
//! be found (the store holds it): the scan sees what is there.

use std::io::{Read, Seek, SeekFrom};
use std::process::Stdio;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use result_signing::{IntentMessage, SecretUpdate, SigningKey, INTENT_SECRET_UPDATE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod support;
use support::binary::{server, spawn_announced, Running};

const NAME: &str = "MEMORY_TEST_KEY";

/// Starts the binary; returns it with its https base URL (from its banner).
fn start(operator: &SigningKey) -> (Running, String) {
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/secret-tasks");
    let key = hex::encode(result_signing::encode_public_key(operator.verifying_key()));
    let mut command = server();
    command
        .args(["--attestation", "dev", "--tls", "on"])
        .args(["--listen", "tcp://127.0.0.1:0", "--tasks-dir", tasks])
        .args(["--operator-key", &key])
        .stdin(Stdio::null());
    spawn_announced(command, Duration::from_secs(60))
}

fn random_value() -> String {
    let mut bytes = [0u8; 48];
    OsRng.fill_bytes(&mut bytes);
    format!("memtest-{}", hex::encode(bytes))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Sets the secret over TLS (the pin is the clients' concern, tested
/// elsewhere; here any certificate is accepted), then runs the declaring
/// task and checks it saw this value.
async fn put_and_use(http: &reqwest::Client, base: &str, key: &SigningKey, value: &str) {
    let nonce: Value = http
        .get(format!("{base}/secrets/nonce"))
        .send()
        .await
        .expect("nonce")
        .json()
        .await
        .expect("nonce json");
    let update = IntentMessage::new(
        INTENT_SECRET_UPDATE,
        0,
        SecretUpdate {
            name: NAME.into(),
            value_sha256: sha256_hex(value),
            nonce: nonce["nonce"].as_str().expect("nonce").into(),
        },
    )
    .sign(key)
    .expect("sign");
    let put = http
        .post(format!("{base}/secrets"))
        .json(&json!({ "update": update, "value": value }))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200, "{:?}", put.text().await);
    let run: Value = http
        .post(format!("{base}/process_data"))
        .json(&json!({ "payload": { "task_path": "secret-user" } }))
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("run json");
    let stdout = run["response"]["data"]["stdout"]
        .as_str()
        .unwrap_or_default();
    assert!(
        stdout.contains(&sha256_hex(value)),
        "the task did not see the value: {run}"
    );
}

/// Where a needle was found: the mapping's line in `/proc/<pid>/maps` and
/// up to 64 bytes before it (which tell whose buffer it is).
struct Found {
    needle: usize,
    mapping: String,
    before: String,
}

/// Every occurrence of each needle in the writable mappings of `pid`.
fn scan(pid: u32, needles: &[&[u8]]) -> std::io::Result<Vec<Found>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    let mut found = Vec::new();
    let mut read_any = false;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Only writable memory can hold a copy made at run time.
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut region = vec![0u8; (end - start) as usize];
        mem.seek(SeekFrom::Start(start))?;
        match mem.read_exact(&mut region) {
            Ok(()) => read_any = true,
            // A mapping that went away meanwhile, or cannot be read ([vvar]).
            Err(_) => continue,
        }
        for (needle, finder) in finders.iter().enumerate() {
            for at in finder.find_iter(&region) {
                found.push(Found {
                    needle,
                    mapping: line.to_owned(),
                    before: region[at.saturating_sub(64)..at].escape_ascii().to_string(),
                });
            }
        }
    }
    if !read_any {
        return Err(std::io::Error::other("no writable mapping could be read"));
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_secret_leaves_no_copy_in_the_servers_memory() {
    let operator = SigningKey::random(&mut OsRng);
    let (server, base) = start(&operator);
    let pid = server.0.id();
    if let Err(e) = scan(pid, &[]) {
        skip_report::skipped(
            "a_replaced_secret_leaves_no_copy_in_the_servers_memory",
            &format!("cannot read the server's memory here ({e}): run as root"),
        );
        return;
    }
    let (old, new) = (random_value(), random_value());
    {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        put_and_use(&http, &base, &operator, &old).await;
        put_and_use(&http, &base, &operator, &new).await;
        // Dropping the client closes its connections.
    }
    // The server drops a connection once it sees the close.
    let mut found = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        found = scan(pid, &[old.as_bytes(), new.as_bytes()]).expect("scan");
        if !found.iter().any(|f| f.needle == 0) {
            break;
        }
    }
    assert!(
        found.iter().any(|f| f.needle == 1),
        "the scan did not find the current value, which the store holds: the scan is broken"
    );
    let copies: Vec<String> = found
        .iter()
        .filter(|f| f.needle == 0)
        .map(|f| format!("  in {}\n    after: {}", f.mapping, f.before))
        .collect();
    assert!(
        copies.is_empty(),
        "{} copies of the replaced secret remain in the server's writable memory:\n{}",
        copies.len(),
        copies.join("\n")
    );
}
