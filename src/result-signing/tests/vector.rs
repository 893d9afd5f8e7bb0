//! The signed-bytes layout is a contract with other implementations: these
//! tests pin it to a stored vector and to an independent hand encoding.

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

fn vector() -> Vector {
    serde_json::from_str(include_str!("vectors/task_result_v1.json")).expect("vector parses")
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
    out
}

#[test]
fn bcs_bytes_match_the_stored_vector_and_the_hand_encoding() {
    let v = vector();
    let bytes = v.message.signing_bytes().expect("encodes");
    assert_eq!(hex::encode(&bytes), v.bcs);
    assert_eq!(hand_encode(&v.message), bytes);
}

#[test]
fn signature_is_deterministic_and_matches_the_vector() {
    let v = vector();
    let k = key(&v);
    assert_eq!(
        hex::encode(encode_public_key(k.verifying_key())),
        v.public_key
    );
    let signed = v.message.clone().sign(&k).expect("signs");
    assert_eq!(signed.signature, v.signature);
    let pk = decode_public_key(&hex::decode(&v.public_key).expect("hex")).expect("point");
    signed.verify(&pk, INTENT_TASK_RESULT).expect("verifies");
}

#[test]
fn any_change_to_the_signed_data_breaks_the_signature() {
    let v = vector();
    let k = key(&v);
    let signed = v.message.clone().sign(&k).expect("signs");
    let pk = *k.verifying_key();

    let mutations: Vec<fn(&mut IntentMessage<TaskResult>)> = vec![
        |m| m.timestamp_ms += 1,
        |m| m.data.stdout.push('!'),
        |m| m.data.stderr.push('!'),
        |m| m.data.args.push("3".into()),
        |m| m.data.nonce = None,
        |m| m.data.exit_code = Some(1),
        |m| m.data.stdout_truncated = true,
        |m| m.data.task_digest = "0".repeat(64),
        |m| m.data.execution_time_ms += 1,
    ];
    for (i, mutate) in mutations.into_iter().enumerate() {
        let mut tampered = signed.clone();
        mutate(&mut tampered.response);
        assert!(
            matches!(
                tampered.verify(&pk, INTENT_TASK_RESULT),
                Err(Error::BadSignature)
            ),
            "mutation {i} was not detected"
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

#[test]
fn high_s_and_malformed_signatures_are_rejected() {
    let v = vector();
    let k = key(&v);
    let signed: SignedResponse<TaskResult> = v.message.clone().sign(&k).expect("signs");
    let sig = signed.parsed_signature().expect("low-S");
    // (r, n - s) is the same signature mathematically; only low-S is accepted.
    let (r, s) = sig.split_scalars();
    let high = result_signing::Signature::from_scalars(r, -*s).expect("valid scalars");
    let mut malleated = signed.clone();
    malleated.signature = hex::encode(high.to_bytes());
    assert!(matches!(
        malleated.verify(k.verifying_key(), INTENT_TASK_RESULT),
        Err(Error::HighS)
    ));

    for bad in [
        "",
        "zz",
        &signed.signature[..126],
        &format!("{}00", signed.signature),
    ] {
        let mut m = signed.clone();
        m.signature = bad.to_string();
        assert!(
            matches!(
                m.verify(k.verifying_key(), INTENT_TASK_RESULT),
                Err(Error::MalformedSignature)
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn json_round_trip_keeps_nulls_and_rejects_unknown_fields() {
    let v = vector();
    let k = key(&v);
    let signed = v.message.clone().sign(&k).expect("signs");
    let json = serde_json::to_value(&signed).expect("json");
    assert!(json["response"]["data"]["stdin_sha256"].is_null());
    assert!(json["response"]["data"]["signal"].is_null());
    let back: SignedResponse<TaskResult> = serde_json::from_value(json.clone()).expect("parses");
    assert_eq!(back, signed);

    let mut extra = json;
    extra["response"]["data"]["injected"] = serde_json::json!("x");
    assert!(serde_json::from_value::<SignedResponse<TaskResult>>(extra).is_err());
}
