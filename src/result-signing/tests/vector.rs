//! The signed-bytes layout is a contract with other implementations: these
//! tests pin it to every stored vector in `tests/vectors/` (the JS verifier's
//! tests read the same files) and to an independent hand encoding.

use std::path::Path;

use result_signing::{
    decode_public_key, encode_public_key, CompactSignedResponse, CompactTaskResult, Error,
    IntentMessage, SignedResponse, SignedTaskResult, SigningKey, TaskResult, INTENT_TASK_RESULT,
    INTENT_TASK_RESULT_COMPACT,
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

/// The fields before the texts, shared by both forms: `intent` through `signal`.
fn hand_encode_head<T>(m: &IntentMessage<T>, d: &TaskResult) -> Vec<u8> {
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
    out
}

/// The fields after the texts, shared by both forms: fields appended to
/// `TaskResult` are appended here.
fn hand_encode_tail(d: &TaskResult) -> Vec<u8> {
    let mut out = vec![d.stdout_truncated as u8, d.stderr_truncated as u8];
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

/// Writes BCS by hand from the table in the crate docs, without serde or the
/// bcs crate, so a change in either cannot silently move the layout.
fn hand_encode(m: &IntentMessage<TaskResult>) -> Vec<u8> {
    let d = &m.data;
    let mut out = hand_encode_head(m, d);
    string(&mut out, &d.stdout);
    string(&mut out, &d.stderr);
    out.extend(hand_encode_tail(d));
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

/// A pinned compact-form vector: the compact message of the full vector with
/// the same file name, its BCS bytes and signature, and the texts beside it.
#[derive(Deserialize, serde::Serialize)]
struct CompactVector {
    comment: String,
    secret_key: String,
    public_key: String,
    message: IntentMessage<CompactTaskResult>,
    stdout: String,
    stderr: String,
    bcs: String,
    signature: String,
}

fn compact_vector_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/compact")
        .join(name)
}

/// The compact vector of a full one, computed by this crate.
fn compact_of(v: &Vector) -> CompactVector {
    let signed = CompactSignedResponse::sign(v.message.clone(), &key(v)).expect("signs");
    CompactVector {
        comment: "The compact form (intent 1) of the full vector of the same name; bcs and signature are pinned.".into(),
        secret_key: v.secret_key.clone(),
        public_key: v.public_key.clone(),
        bcs: hex::encode(signed.response.signing_bytes().expect("encodes")),
        message: signed.response,
        stdout: signed.stdout,
        stderr: signed.stderr,
        signature: signed.signature,
    }
}

/// Writes `tests/vectors/compact/` from the full vectors; run once by hand
/// (`cargo test -p result-signing --test vector -- --ignored`) when a vector is added.
#[test]
#[ignore = "writes the pinned compact vectors"]
fn write_compact_vectors() {
    for (name, v) in vectors() {
        let json = serde_json::to_string_pretty(&compact_of(&v)).expect("json");
        std::fs::write(compact_vector_path(&name), json + "\n").expect("written");
    }
}

/// Hand encoding of the compact message: the full layout with each text
/// replaced by a 64-digit hex string and a u64 length. `full` is the whole
/// result the compact one was made from.
fn hand_encode_compact(m: &IntentMessage<CompactTaskResult>, full: &TaskResult) -> Vec<u8> {
    let d = &m.data;
    let mut out = hand_encode_head(m, full);
    for (digest, len) in [
        (&d.stdout_sha256, d.stdout_len),
        (&d.stderr_sha256, d.stderr_len),
    ] {
        assert_eq!(digest.len(), 64);
        out.push(64);
        out.extend_from_slice(digest.as_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend(hand_encode_tail(full));
    out
}

#[test]
fn compact_vectors_are_the_compact_form_of_the_full_ones() {
    for (name, v) in vectors() {
        let path = compact_vector_path(&name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (every full vector has a compact one)",
                path.display()
            )
        });
        let pinned: CompactVector =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("compact/{name}: {e}"));
        let computed = compact_of(&v);
        assert_eq!(pinned.message, computed.message, "compact/{name}: message");
        assert_eq!(pinned.message.intent, INTENT_TASK_RESULT_COMPACT);
        assert_eq!(pinned.bcs, computed.bcs, "compact/{name}: bcs");
        assert_eq!(
            pinned.signature, computed.signature,
            "compact/{name}: signature"
        );
        assert_eq!(
            (&pinned.stdout, &pinned.stderr),
            (&v.message.data.stdout, &v.message.data.stderr)
        );
        assert_eq!(
            hex::encode(hand_encode_compact(&pinned.message, &v.message.data)),
            pinned.bcs,
            "compact/{name}: hand encoding"
        );
        let signed = CompactSignedResponse {
            response: pinned.message.clone(),
            signature: pinned.signature.clone(),
            stdout: pinned.stdout.clone(),
            stderr: pinned.stderr.clone(),
        };
        let pk = decode_public_key(&hex::decode(&v.public_key).expect("hex")).expect("point");
        let full = signed
            .verify(&pk)
            .unwrap_or_else(|e| panic!("compact/{name}: {e}"));
        assert_eq!(
            full.data, v.message.data,
            "compact/{name}: the whole result comes back"
        );
        assert!(
            pinned.bcs.len() / 2 < 1024,
            "compact/{name}: {} bytes",
            pinned.bcs.len() / 2
        );
    }
}

#[test]
fn compact_form_refuses_other_texts_other_intents_and_changed_fields() {
    for (name, v) in vectors() {
        let k = key(&v);
        let pk = *k.verifying_key();
        let signed = CompactSignedResponse::sign(v.message.clone(), &k).expect("signs");
        signed.verify(&pk).unwrap_or_else(|e| panic!("{name}: {e}"));

        let mut t = signed.clone();
        t.stdout.push('!');
        assert!(
            matches!(
                t.verify(&pk),
                Err(Error::OutputMismatch { stream: "stdout" })
            ),
            "{name}: stdout"
        );
        let mut t = signed.clone();
        t.stderr.push('!');
        assert!(
            matches!(
                t.verify(&pk),
                Err(Error::OutputMismatch { stream: "stderr" })
            ),
            "{name}: stderr"
        );
        // The same texts with the signed digest edited to match: the signature fails.
        let mut t = signed.clone();
        t.stdout.push('!');
        t.response.data = TaskResult {
            stdout: t.stdout.clone(),
            ..v.message.data.clone()
        }
        .compact();
        assert!(
            matches!(t.verify(&pk), Err(Error::BadSignature)),
            "{name}: re-digested"
        );
        let mut t = signed.clone();
        t.response.data.execution_time_ms += 1;
        assert!(
            matches!(t.verify(&pk), Err(Error::BadSignature)),
            "{name}: execution_time_ms"
        );

        // A full-form signature is not a compact one, nor the reverse.
        let full = v.message.clone().sign(&k).expect("signs");
        let mut t = signed.clone();
        t.signature = full.signature.clone();
        assert!(
            matches!(t.verify(&pk), Err(Error::BadSignature)),
            "{name}: full signature"
        );
        let mut t = signed.clone();
        t.response.intent = INTENT_TASK_RESULT;
        assert!(
            matches!(t.verify(&pk), Err(Error::WrongIntent { .. })),
            "{name}: intent 0"
        );
        let as_full = SignedResponse {
            response: v.message.clone(),
            signature: signed.signature.clone(),
        };
        assert!(
            as_full.verify(&pk, INTENT_TASK_RESULT).is_err(),
            "{name}: compact signature as full"
        );

        // Both forms go through one JSON type, told apart by their fields.
        for form in [
            SignedTaskResult::Full(full.clone()),
            SignedTaskResult::Compact(signed.clone()),
        ] {
            let json = serde_json::to_string(&form).expect("json");
            assert_eq!(
                serde_json::from_str::<SignedTaskResult>(&json).expect("parses"),
                form
            );
        }
    }
}
