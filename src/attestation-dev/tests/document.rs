//! Dev documents are real AWS-format attestation documents: decoded here with minicbor and
//! checked with x509-cert and p384 directly, independently of the crate's own encoder.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use attestation_dev::{
    AttestError, AttestationRequest, Attester, DevAttester, Mode, NsmAttester, MAX_FIELD_BYTES,
};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use x509_cert::der::oid::db::rfc5912::{ECDSA_WITH_SHA_384, ID_CE_BASIC_CONSTRAINTS};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

const PUBLIC_KEY: &[u8] = &[0x02; 33];
const USER_DATA: &[u8] = &[0xab; 32];
const NONCE: &[u8] = b"client nonce 0123";

/// The payload keys, in the order the NSM writes them.
const PAYLOAD_KEYS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

/// A decoded COSE_Sign1 attestation document.
#[derive(Clone)]
struct Document {
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    module_id: String,
    timestamp: u64,
    pcrs: Vec<(u32, Vec<u8>)>,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    public_key: Vec<u8>,
    user_data: Vec<u8>,
    nonce: Option<Vec<u8>>,
}

/// Decodes a document, asserting the exact CBOR layout: definite lengths, byte strings where
/// AWS has byte strings, keys in AWS's order, nothing trailing.
fn decode(document: &[u8]) -> Document {
    let mut d = Decoder::new(document);
    assert_eq!(d.datatype().unwrap(), Type::Array, "untagged COSE_Sign1");
    assert_eq!(d.array().unwrap(), Some(4));
    let protected = d.bytes().unwrap().to_vec();
    assert_eq!(d.map().unwrap(), Some(0), "empty unprotected header");
    let payload = d.bytes().unwrap().to_vec();
    let signature = d.bytes().unwrap().to_vec();
    assert_eq!(d.position(), document.len(), "nothing after the COSE_Sign1");

    let mut h = Decoder::new(&protected);
    assert_eq!(h.map().unwrap(), Some(1));
    assert_eq!((h.i64().unwrap(), h.i64().unwrap()), (1, -35), "alg: ES384");
    assert_eq!(h.position(), protected.len());

    let mut p = Decoder::new(&payload);
    assert_eq!(p.map().unwrap(), Some(PAYLOAD_KEYS.len() as u64));
    let key = |p: &mut Decoder<'_>, expected: &str| assert_eq!(p.str().unwrap(), expected);
    key(&mut p, PAYLOAD_KEYS[0]);
    let module_id = p.str().unwrap().to_owned();
    key(&mut p, PAYLOAD_KEYS[1]);
    assert_eq!(p.str().unwrap(), "SHA384");
    key(&mut p, PAYLOAD_KEYS[2]);
    let timestamp = p.u64().unwrap();
    key(&mut p, PAYLOAD_KEYS[3]);
    let pcr_count = p.map().unwrap().unwrap();
    let pcrs = (0..pcr_count)
        .map(|_| (p.u32().unwrap(), p.bytes().unwrap().to_vec()))
        .collect();
    key(&mut p, PAYLOAD_KEYS[4]);
    let certificate = p.bytes().unwrap().to_vec();
    key(&mut p, PAYLOAD_KEYS[5]);
    let bundle_len = p.array().unwrap().unwrap();
    let cabundle = (0..bundle_len)
        .map(|_| p.bytes().unwrap().to_vec())
        .collect();
    key(&mut p, PAYLOAD_KEYS[6]);
    let public_key = p.bytes().unwrap().to_vec();
    key(&mut p, PAYLOAD_KEYS[7]);
    let user_data = p.bytes().unwrap().to_vec();
    key(&mut p, PAYLOAD_KEYS[8]);
    let nonce = if p.datatype().unwrap() == Type::Null {
        p.null().unwrap();
        None
    } else {
        Some(p.bytes().unwrap().to_vec())
    };
    assert_eq!(p.position(), payload.len(), "nothing after the payload map");

    Document {
        protected,
        payload,
        signature,
        module_id,
        timestamp,
        pcrs,
        certificate,
        cabundle,
        public_key,
        user_data,
        nonce,
    }
}

/// COSE's Sig_structure for a COSE_Sign1, encoded independently of the crate under test.
fn to_be_signed(doc: &Document) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.array(4)
        .unwrap()
        .str("Signature1")
        .unwrap()
        .bytes(&doc.protected)
        .unwrap()
        .bytes(&[])
        .unwrap()
        .bytes(&doc.payload)
        .unwrap();
    e.into_writer()
}

fn public_key_of(cert: &Certificate) -> VerifyingKey {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).unwrap()
}

/// Asserts that `issuer` issued and ECDSA-P384-SHA384-signed `cert`.
fn assert_signed_by(cert: &Certificate, issuer: &Certificate) {
    assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
    assert_eq!(cert.signature_algorithm.oid, ECDSA_WITH_SHA_384);
    let signature = Signature::from_der(cert.signature.raw_bytes()).unwrap();
    let tbs = cert.tbs_certificate.to_der().unwrap();
    public_key_of(issuer)
        .verify(&tbs, &signature)
        .unwrap_or_else(|e| {
            panic!(
                "{} not signed by its issuer: {e}",
                cert.tbs_certificate.subject
            )
        });
}

fn is_ca(cert: &Certificate) -> bool {
    let extensions = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let basic = extensions
        .iter()
        .find(|ext| ext.extn_id == ID_CE_BASIC_CONSTRAINTS)
        .map(|ext| BasicConstraints::from_der(ext.extn_value.as_bytes()).unwrap());
    basic.is_some_and(|b| b.ca)
}

fn unix_millis_now() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(now.as_millis()).unwrap()
}

fn attest(attester: &dyn Attester, nonce: Option<&[u8]>) -> Vec<u8> {
    attester
        .attest(AttestationRequest {
            public_key: PUBLIC_KEY,
            user_data: USER_DATA,
            nonce,
        })
        .unwrap()
}

#[test]
fn dev_document_has_the_aws_layout() {
    let attester = DevAttester::generate().unwrap();
    assert_eq!(attester.mode(), Mode::Dev);
    let before = unix_millis_now();
    let doc = decode(&attest(&attester, Some(NONCE)));
    let after = unix_millis_now();

    assert_eq!(doc.protected, [0xa1, 0x01, 0x38, 0x22], "{{1: -35}}");
    assert_eq!(doc.signature.len(), 96, "r || s, 48 bytes each");
    assert!(doc.module_id.starts_with("dev-"), "{}", doc.module_id);
    assert!((before..=after).contains(&doc.timestamp));
    let zero_pcrs: Vec<(u32, Vec<u8>)> = (0..16).map(|i| (i, vec![0; 48])).collect();
    assert_eq!(doc.pcrs, zero_pcrs);
    assert_eq!(doc.cabundle.len(), 2, "root, intermediate");
    assert_eq!(doc.cabundle[0], attester.root_der(), "root first");
    let root_from_pem = Certificate::from_pem(attester.root_pem().as_bytes()).unwrap();
    assert_eq!(
        doc.cabundle[0],
        root_from_pem.to_der().unwrap(),
        "root first"
    );
    assert_eq!(doc.public_key, PUBLIC_KEY);
    assert_eq!(doc.user_data, USER_DATA);
    assert_eq!(doc.nonce.as_deref(), Some(NONCE));
}

#[test]
fn absent_nonce_is_cbor_null_and_empty_nonce_is_empty_bytes() {
    let attester = DevAttester::generate().unwrap();
    assert_eq!(decode(&attest(&attester, None)).nonce, None);
    assert_eq!(decode(&attest(&attester, Some(&[]))).nonce, Some(vec![]));
}

#[test]
fn signature_verifies_with_the_leaf_and_the_chain_with_the_root() {
    let attester = DevAttester::generate().unwrap();
    let doc = decode(&attest(&attester, Some(NONCE)));

    let leaf = Certificate::from_der(&doc.certificate).unwrap();
    let root = Certificate::from_der(&doc.cabundle[0]).unwrap();
    let intermediate = Certificate::from_der(&doc.cabundle[1]).unwrap();

    let signature = Signature::from_slice(&doc.signature).unwrap();
    let leaf_key = public_key_of(&leaf);
    leaf_key.verify(&to_be_signed(&doc), &signature).unwrap();

    let mut tampered = doc.clone();
    tampered.payload[10] ^= 1;
    assert!(
        leaf_key
            .verify(&to_be_signed(&tampered), &signature)
            .is_err(),
        "a changed payload must not verify"
    );

    assert_signed_by(&root, &root);
    assert_signed_by(&intermediate, &root);
    assert_signed_by(&leaf, &intermediate);
    assert!(is_ca(&root) && is_ca(&intermediate));
    assert!(!is_ca(&leaf));

    let validity = &leaf.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    let signed_at = UNIX_EPOCH + std::time::Duration::from_millis(doc.timestamp);
    assert!(not_before <= signed_at && signed_at < not_after);
    assert_eq!(
        not_after.duration_since(not_before).unwrap().as_secs(),
        3 * 60 * 60
    );
}

#[test]
fn dev_chain_cannot_be_mistaken_for_aws() {
    let attester = DevAttester::generate().unwrap();
    let doc = decode(&attest(&attester, None));
    let chain = [&doc.cabundle[0], &doc.cabundle[1], &doc.certificate];
    for der in chain {
        assert!(
            !der.windows(18).any(|w| w == b"aws.nitro-enclaves"),
            "a dev certificate mentions aws.nitro-enclaves"
        );
        let cert = Certificate::from_der(der).unwrap();
        let subject = cert.tbs_certificate.subject.to_string();
        assert!(subject.contains("NOT AWS"), "{subject}");
        assert!(subject.contains("dev"), "{subject}");
    }
    let other = DevAttester::generate().unwrap();
    assert_ne!(
        other.root_der(),
        attester.root_der(),
        "a fresh root per attester"
    );
}

#[test]
fn largest_fields_round_trip() {
    let attester = DevAttester::generate().unwrap();
    let max = [0x5a; MAX_FIELD_BYTES];
    let document = attester
        .attest(AttestationRequest {
            public_key: &max,
            user_data: &max,
            nonce: Some(&max),
        })
        .unwrap();
    let doc = decode(&document);
    assert_eq!(
        (doc.public_key, doc.user_data),
        (max.to_vec(), max.to_vec())
    );
    assert_eq!(doc.nonce, Some(max.to_vec()));
}

#[test]
fn oversized_fields_are_rejected_with_a_clear_error() {
    let attester = DevAttester::generate().unwrap();
    let over = [0; MAX_FIELD_BYTES + 1];
    let requests = [
        (
            "public_key",
            AttestationRequest {
                public_key: &over,
                user_data: &[],
                nonce: None,
            },
        ),
        (
            "user_data",
            AttestationRequest {
                public_key: &[1],
                user_data: &over,
                nonce: None,
            },
        ),
        (
            "nonce",
            AttestationRequest {
                public_key: &[1],
                user_data: &[],
                nonce: Some(&over),
            },
        ),
    ];
    for (field, request) in requests {
        let error = attester.attest(request).unwrap_err();
        assert!(
            matches!(error, AttestError::FieldTooLarge { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("{field} is 1025 bytes; the NSM accepts at most 1024")
        );
    }
    let empty_key = AttestationRequest {
        public_key: &[],
        user_data: &[],
        nonce: None,
    };
    let error = attester.attest(empty_key).unwrap_err();
    assert!(matches!(error, AttestError::EmptyPublicKey), "{error:?}");
}

#[test]
fn concurrent_callers_get_valid_documents() {
    let attester: Arc<dyn Attester> = Arc::new(DevAttester::generate().unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let attester = Arc::clone(&attester);
            std::thread::spawn(move || {
                let nonce = [i; 8];
                let doc = decode(&attest(attester.as_ref(), Some(&nonce)));
                let leaf = Certificate::from_der(&doc.certificate).unwrap();
                let signature = Signature::from_slice(&doc.signature).unwrap();
                public_key_of(&leaf)
                    .verify(&to_be_signed(&doc), &signature)
                    .unwrap();
                assert_eq!(doc.nonce, Some(nonce.to_vec()));
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Real on both sides: here, with no Nitro hardware, opening must fail with the error that
/// names the device; inside an enclave, the real NSM must return a well-formed document.
#[test]
fn nsm_attester_needs_dev_nsm() {
    if !Path::new("/dev/nsm").exists() {
        let error = NsmAttester::open().unwrap_err();
        assert!(
            matches!(&error, AttestError::NsmUnavailable { path, .. } if path == "/dev/nsm"),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("cannot open /dev/nsm"),
            "{error}"
        );
        return;
    }
    let (attester, _) = NsmAttester::open().unwrap();
    assert_eq!(attester.mode(), Mode::Nsm);
    let doc = decode(&attest(&attester, Some(NONCE)));
    assert_eq!(doc.public_key, PUBLIC_KEY);
    assert_eq!(doc.user_data, USER_DATA);
    assert_eq!(doc.nonce.as_deref(), Some(NONCE));
    assert!(!doc.cabundle.is_empty());
}

/// Decodes `der` as `T` and encodes it back: DER has one encoding per value, so a strict
/// codec must give back the very bytes (an explicitly encoded DEFAULT, a long-form length
/// that fits the short form, a non-minimal integer all come back different).
fn assert_reencodes_identically<'a, T: Decode<'a> + Encode>(der: &'a [u8], what: &str) {
    let value = T::from_der(der).unwrap_or_else(|e| panic!("{what} is not DER: {e}"));
    let again = value.to_der().unwrap();
    assert!(
        again == der,
        "{what} is not strict DER: re-encoding {} gives {}",
        hex::encode(der),
        hex::encode(&again)
    );
}

/// Every certificate the dev attester emits (the root PEM the server prints, `cabundle`, the
/// leaf) is strict DER: loaded by x509-cert's strict DER reader, and re-encoded byte for byte
/// by the `der` codec, whole and extension by extension. Real AWS leaves encode
/// basicConstraints `cA = FALSE` as the empty SEQUENCE `30 00`; rcgen 0.13 wrote
/// `30 03 01 01 00`, which Python's `cryptography` refuses to load.
#[test]
fn every_emitted_certificate_is_strict_der() {
    use x509_cert::der::oid::db::rfc5280::{
        ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_KEY_USAGE, ID_CE_SUBJECT_KEY_IDENTIFIER,
    };
    use x509_cert::ext::pkix::{AuthorityKeyIdentifier, KeyUsage, SubjectKeyIdentifier};

    let attester = DevAttester::generate().unwrap();
    let doc = decode(&attest(&attester, Some(NONCE)));
    let root_from_pem = Certificate::from_pem(attester.root_pem())
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(
        root_from_pem, doc.cabundle[0],
        "the printed root is cabundle[0]"
    );

    let mut emitted: Vec<(&str, &[u8])> = vec![("root", &doc.cabundle[0])];
    emitted.push(("intermediate", &doc.cabundle[1]));
    emitted.push(("leaf", &doc.certificate));
    assert_eq!(doc.cabundle.len(), 2);
    for (name, der) in emitted {
        assert_reencodes_identically::<Certificate>(der, name);
        let cert = Certificate::from_der(der).unwrap();
        let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
        assert!(!extensions.is_empty(), "{name} has extensions");
        for ext in &extensions {
            let value = ext.extn_value.as_bytes();
            let what = format!("{name}'s extension {}", ext.extn_id);
            match ext.extn_id {
                ID_CE_BASIC_CONSTRAINTS => {
                    assert!(ext.critical, "{what} is critical, as in AWS's chain");
                    assert_reencodes_identically::<BasicConstraints>(value, &what)
                }
                ID_CE_KEY_USAGE => assert_reencodes_identically::<KeyUsage>(value, &what),
                ID_CE_SUBJECT_KEY_IDENTIFIER => {
                    assert_reencodes_identically::<SubjectKeyIdentifier>(value, &what)
                }
                ID_CE_AUTHORITY_KEY_IDENTIFIER => {
                    assert_reencodes_identically::<AuthorityKeyIdentifier>(value, &what)
                }
                other => panic!("{name} has an extension this test does not know: {other}"),
            }
        }
    }
    // The leaf's basicConstraints is exactly what AWS's leaves carry.
    let leaf = Certificate::from_der(&doc.certificate).unwrap();
    let basic = leaf
        .tbs_certificate
        .extensions
        .unwrap_or_default()
        .into_iter()
        .find(|ext| ext.extn_id == ID_CE_BASIC_CONSTRAINTS)
        .expect("the leaf says it is not a CA, as AWS leaves do");
    assert_eq!(basic.extn_value.as_bytes(), [0x30, 0x00]);
}
