//! The signed-bytes layout is a contract with other implementations: these
//! tests pin it to every stored vector in `tests/vectors/` (the JS verifier's
//! tests read the same files) and to an independent hand encoding.

use std::path::Path;

use result_signing::{
    decode_public_key, encode_public_key, Error, IntentMessage, SignedResponse, SigningKey,
    TaskResult, INTENT_TASK_RESULT,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    secret_key: String,
    public_key: String,
    message: IntentMessage<TaskResult>,
    bcs: String,
    signature: String,
}

/// Every `*.json` in `tests/vectors/`, by file name, in name order.
fn vectors() -> Vec<(String, Vector)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/vectors is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vectors in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("vector is readable");
            let vector = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, vector)
        })
        .collect()
}

fn key(v: &Vector) -> SigningKey {
    let secret = hex::decode(&v.secret_key).expect("hex key");
    SigningKey::from_slice(&secret).expect("valid scalar")
}

/// Writes BCS by hand from the table in the crate docs, without serde or the
/// bcs crate, so a change in either cannot silently move the layout.
fn hand_encode(m: &IntentMessage<TaskResult>) -> Vec<u8> {
    fn uleb(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        uleb(out, s.len());
        out.extend_from_slice(s.as_bytes());
    }
    fn opt_string(out: &mut Vec<u8>, s: &Option<String>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                string(out, s);
            }
        }
    }
    let d = &m.data;
    let mut out = vec![m.intent];
    out.extend_from_slice(&m.timestamp_ms.to_le_bytes());
    string(&mut out, &d.task_id);
    string(&mut out, &d.task_path);
    string(&mut out, &d.task_digest);
    uleb(&mut out, d.args.len());
    for a in &d.args {
        string(&mut out, a);
    }
    opt_string(&mut out, &d.stdin_sha256);
    opt_string(&mut out, &d.nonce);
    string(&mut out, &d.status);
    match d.exit_code {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    opt_string(&mut out, &d.signal);
    string(&mut out, &d.stdout);
    string(&mut out, &d.stderr);
    out.push(d.stdout_truncated as u8);
    out.push(d.stderr_truncated as u8);
    out.extend_from_slice(&d.execution_time_ms.to_le_bytes());
    opt_string(&mut out, &d.limit);
    match d.resources {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            out.extend_from_slice(&r.cpu_time_ms.to_le_bytes());
            out.extend_from_slice(&r.peak_memory_bytes.to_le_bytes());
        }
    }
    uleb(&mut out, d.egress.len());
    for e in &d.egress {
        string(&mut out, &e.host);
        out.extend_from_slice(&e.port.to_le_bytes());
        out.extend_from_slice(&e.connections.to_le_bytes());
        out.extend_from_slice(&e.bytes_out.to_le_bytes());
        out.extend_from_slice(&e.bytes_in.to_le_bytes());
    }
    out
}

#[test]
fn bcs_bytes_match_the_stored_vectors_and_the_hand_encoding() {
    for (name, v) in vectors() {
        let bytes = v.message.signing_bytes().expect("encodes");
        assert_eq!(hex::encode(&bytes), v.bcs, "{name}: bcs");
        assert_eq!(hand_encode(&v.message), bytes, "{name}: hand encoding");
    }
}

/// A vector set trimmed down to the easy cases would still pass the other
/// tests; this keeps every encoding branch pinned by some stored vector.
#[test]
fn the_vectors_cover_every_encoding_branch() {
    let all = vectors();
    let has = |what: &str, pred: &dyn Fn(&TaskResult) -> bool| {
        assert!(
            all.iter().any(|(_, v)| pred(&v.message.data)),
            "no vector has {what}"
        );
    };
    has(
        "a 2-byte ULEB128 length (non-ASCII stdout >= 128 bytes)",
        &|d| d.stdout.len() >= 1 << 7 && !d.stdout.is_ascii(),
    );
    has("a 3-byte ULEB128 length (stderr >= 16384 bytes)", &|d| {
        d.stderr.len() >= 1 << 14
    });
    has("an empty arg", &|d| d.args.iter().any(String::is_empty));
    has("a non-ASCII arg", &|d| d.args.iter().any(|a| !a.is_ascii()));
    has("no args", &|d| d.args.is_empty());
    has("stdin_sha256 = Some", &|d| d.stdin_sha256.is_some());
    has("stdin_sha256 = None", &|d| d.stdin_sha256.is_none());
    has("nonce = Some", &|d| d.nonce.is_some());
    has("nonce = None", &|d| d.nonce.is_none());
    has("exit_code = None", &|d| d.exit_code.is_none());
    has("exit_code = Some(0)", &|d| d.exit_code == Some(0));
    has("exit_code = Some(non-zero)", &|d| {
        d.exit_code.is_some_and(|c| c != 0)
    });
    has("signal = Some", &|d| d.signal.is_some());
    has("signal = None", &|d| d.signal.is_none());
    has("stdout_truncated = true", &|d| d.stdout_truncated);
    has("stdout_truncated differing from stderr_truncated", &|d| {
        d.stdout_truncated != d.stderr_truncated
    });
    has("limit = Some", &|d| d.limit.is_some());
    has("limit = None", &|d| d.limit.is_none());
    has("resources = Some", &|d| d.resources.is_some());
    has("resources = None", &|d| d.resources.is_none());
    has("no egress", &|d| d.egress.is_empty());
    has(
        "two egress entries, one with a 2-byte port and counts past 2^32",
        &|d| {
            d.egress.len() == 2
                && d.egress.iter().any(|e| e.port > 255)
                && d.egress.iter().any(|e| e.bytes_in > u64::from(u32::MAX))
        },
    );
}

#[test]
fn signatures_are_deterministic_and_match_the_vectors() {
    for (name, v) in vectors() {
        let k = key(&v);
        assert_eq!(
            hex::encode(encode_public_key(k.verifying_key())),
            v.public_key,
            "{name}: public key"
        );
        let signed = v.message.clone().sign(&k).expect("signs");
        assert_eq!(signed.signature, v.signature, "{name}: signature");
        let pk = decode_public_key(&hex::decode(&v.public_key).expect("hex")).expect("point");
        signed
            .verify(&pk, INTENT_TASK_RESULT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn any_change_to_the_signed_data_breaks_the_signature() {
    let mutations: Vec<fn(&mut IntentMessage<TaskResult>)> = vec![
        |m| m.timestamp_ms += 1,
        |m| m.data.stdout.push('!'),
        |m| m.data.stderr.push('!'),
        |m| m.data.args.push("3".into()),
        |m| m.data.nonce = m.data.nonce.take().xor(Some("00".into())),
        |m| m.data.exit_code = Some(m.data.exit_code.map_or(0, |c| c.wrapping_add(1))),
        |m| m.data.stdout_truncated = !m.data.stdout_truncated,
        |m| m.data.task_digest = "0".repeat(64),
        |m| m.data.execution_time_ms += 1,
        |m| m.data.limit = m.data.limit.take().xor(Some("memory".into())),
        |m| {
            m.data.resources = match m.data.resources {
                Some(r) => Some(result_signing::Resources {
                    peak_memory_bytes: r.peak_memory_bytes + 1,
                    ..r
                }),
                None => Some(result_signing::Resources {
                    cpu_time_ms: 0,
                    peak_memory_bytes: 0,
                }),
            }
        },
        |m| match m.data.egress.first_mut() {
            Some(e) => e.bytes_in += 1,
            None => m.data.egress.push(result_signing::EgressEntry {
                host: "example.org".into(),
                port: 443,
                connections: 1,
                bytes_out: 0,
                bytes_in: 0,
            }),
        },
    ];
    for (name, v) in vectors() {
        let k = key(&v);
        let signed = v.message.clone().sign(&k).expect("signs");
        let pk = *k.verifying_key();
        for (i, mutate) in mutations.iter().enumerate() {
            let mut tampered = signed.clone();
            mutate(&mut tampered.response);
            assert_ne!(
                tampered.response, signed.response,
                "{name}: mutation {i} is a no-op"
            );
            assert!(
                matches!(
                    tampered.verify(&pk, INTENT_TASK_RESULT),
                    Err(Error::BadSignature)
                ),
                "{name}: mutation {i} was not detected"
            );
        }

        let mut wrong_intent = signed.clone();
        wrong_intent.response.intent = 1;
        assert!(matches!(
            wrong_intent.verify(&pk, INTENT_TASK_RESULT),
            Err(Error::WrongIntent { .. })
        ));

        let other = SigningKey::random(&mut rand_core::OsRng);
        assert!(matches!(
            signed.verify(other.verifying_key(), INTENT_TASK_RESULT),
            Err(Error::BadSignature)
        ));
    }
}

#[test]
fn high_s_and_malformed_signatures_are_rejected() {
    for (name, v) in vectors() {
        let k = key(&v);
        let signed: SignedResponse<TaskResult> = v.message.clone().sign(&k).expect("signs");
        let sig = signed.parsed_signature().expect("low-S");
        // (r, n - s) is the same signature mathematically; only low-S is accepted.
        let (r, s) = sig.split_scalars();
        let high = result_signing::Signature::from_scalars(r, -*s).expect("valid scalars");
        let mut malleated = signed.clone();
        malleated.signature = hex::encode(high.to_bytes());
        assert!(
            matches!(
                malleated.verify(k.verifying_key(), INTENT_TASK_RESULT),
                Err(Error::HighS)
            ),
            "{name}: high-S accepted"
        );

        // Upper case decodes to the same bytes, so it would give one
        // signature two spellings; only lower case is the wire form.
        let upper = signed.signature.to_uppercase();
        assert_ne!(
            upper, signed.signature,
            "{name}: signature has no hex letters"
        );
        let with_sig = |bad: &str| {
            let mut m = signed.clone();
            m.signature = bad.to_string();
            m.verify(k.verifying_key(), INTENT_TASK_RESULT)
        };
        for bad in [
            String::new(),
            "zz".into(),
            upper,
            format!("A{}", &signed.signature[1..]),
            signed.signature[..126].to_string(),
            format!("{}00", signed.signature),
            format!(" {}", &signed.signature[1..]),
            format!("0x{}", &signed.signature[2..]),
        ] {
            assert!(
                matches!(with_sig(&bad), Err(Error::MalformedSignature)),
                "{name}: {bad:?} accepted"
            );
        }
        assert!(with_sig(&signed.signature.clone()).is_ok());
    }
}

#[test]
fn json_round_trip_keeps_nulls_and_rejects_unknown_fields() {
    for (name, v) in vectors() {
        let k = key(&v);
        let signed = v.message.clone().sign(&k).expect("signs");
        let json = serde_json::to_value(&signed).expect("json");
        // `None` is written as an explicit null, never omitted: the JS
        // verifier requires every key to be present.
        for field in ["stdin_sha256", "nonce", "exit_code", "signal"] {
            assert!(
                json["response"]["data"]
                    .as_object()
                    .is_some_and(|d| d.contains_key(field)),
                "{name}: {field} omitted"
            );
        }
        let back: SignedResponse<TaskResult> =
            serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(back, signed, "{name}: round trip");

        let mut extra = json;
        extra["response"]["data"]["injected"] = serde_json::json!("x");
        assert!(serde_json::from_value::<SignedResponse<TaskResult>>(extra).is_err());
    }
}
