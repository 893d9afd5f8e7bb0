//! Tampered, mis-chained, stale and mismatched documents are rejected with the
//! precise reason. Mutations are built by re-encoding real documents, so each one
//! gets past parsing and fails exactly at the check it targets.

mod common;

use attestation_verify::{
    AttestationDocument, CertPosition, CheckTime, Error, ExpectedPcrs, Policy, TrustedRoot,
    VerifiedDocument,
};
use common::{
    encode_bytes, encode_pcr_map, encode_protected, encode_text, with_fields, Cose, Fields, BASE,
    OTHER,
};
use der::Decode;
use minicbor::Decoder;

const HOUR_MS: u64 = 60 * 60 * 1000;

fn root() -> TrustedRoot {
    TrustedRoot::aws_nitro().unwrap()
}

fn at(check_time: CheckTime) -> Policy {
    Policy::default().check_time(check_time)
}

fn verify_with(bytes: &[u8], policy: &Policy) -> Result<VerifiedDocument, Error> {
    attestation_verify::verify(bytes, &root(), policy)
}

/// Verifies at the document's own timestamp (the only time real documents are valid).
fn verify_at_doc_time(bytes: &[u8]) -> Result<VerifiedDocument, Error> {
    verify_with(bytes, &at(CheckTime::DocumentTimestamp))
}

/// Asserts the mutated document still parses and then fails with `expected`.
fn assert_rejected(bytes: &[u8], expected: Error) {
    AttestationDocument::from_bytes(bytes).expect("mutation keeps the document parseable");
    assert_eq!(verify_at_doc_time(bytes).unwrap_err(), expected);
}

/// Flips one bit inside the certificate's serial number: the TBS stays well-formed
/// DER, so only the signature over it can notice.
fn flip_serial_bit(cert_der: &[u8]) -> Vec<u8> {
    let cert = x509_cert::Certificate::from_der(cert_der).unwrap();
    let serial = cert.tbs_certificate.serial_number.as_bytes();
    let pos = cert_der
        .windows(serial.len())
        .position(|w| w == serial)
        .expect("serial bytes appear in the DER")
        + serial.len()
        - 1;
    let mut out = cert_der.to_vec();
    out[pos] ^= 0x01;
    x509_cert::Certificate::from_der(&out).expect("still a well-formed certificate");
    out
}

fn pcr_map(raw: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut d = Decoder::new(raw);
    let n = d.map().unwrap().unwrap();
    (0..n)
        .map(|_| (d.u64().unwrap(), d.bytes().unwrap().to_vec()))
        .collect()
}

fn base() -> Vec<u8> {
    common::document(BASE)
}

#[test]
fn reencoded_base_document_still_verifies() {
    // Guards every test below: the re-encoder itself does not break signatures.
    let rebuilt = with_fields(&base(), |_| {});
    assert_eq!(rebuilt, base());
    verify_at_doc_time(&rebuilt).unwrap();
}

#[test]
fn flipped_pcr_bit_fails_the_cose_signature() {
    let doc = with_fields(&base(), |f| {
        let mut pcrs = pcr_map(f.get("pcrs"));
        pcrs[3].1[0] ^= 0x80;
        f.set("pcrs", encode_pcr_map(&pcrs));
    });
    assert_rejected(&doc, Error::CoseSignature);
}

#[test]
fn flipped_signature_bit_fails_the_cose_signature() {
    for byte in [0, 47, 48, 95] {
        let mut cose = Cose::decode(&base());
        cose.signature[byte] ^= 0x01;
        assert_rejected(&cose.encode(), Error::CoseSignature);
    }
}

#[test]
fn flipped_bit_in_leaf_certificate_fails_its_signature() {
    let doc = with_fields(&base(), |f| {
        let leaf = flip_serial_bit(&f.certificate());
        f.set_bytes("certificate", &leaf);
    });
    assert_rejected(
        &doc,
        Error::CertificateSignature {
            cert: CertPosition::Leaf,
        },
    );
    // And a flip in the certificate's own signature value (its last byte).
    let doc = with_fields(&base(), |f| {
        let mut leaf = f.certificate();
        *leaf.last_mut().unwrap() ^= 0x01;
        f.set_bytes("certificate", &leaf);
    });
    assert_rejected(
        &doc,
        Error::CertificateSignature {
            cert: CertPosition::Leaf,
        },
    );
}

#[test]
fn flipped_bit_in_intermediate_certificate_fails_its_signature() {
    let n = Fields::decode(&Cose::decode(&base()).payload)
        .cabundle()
        .len();
    assert!(n >= 3, "AWS chains have intermediates");
    for index in 1..n {
        let doc = with_fields(&base(), |f| {
            let mut bundle = f.cabundle();
            bundle[index] = flip_serial_bit(&bundle[index]);
            f.set_cabundle(&bundle);
        });
        assert_rejected(
            &doc,
            Error::CertificateSignature {
                cert: CertPosition::CaBundle(index),
            },
        );
    }
}

#[test]
fn missing_or_wrong_root_is_rejected() {
    let root_sha = root().sha256_hex();
    // cabundle without the root: the first intermediate sits where the root should.
    let doc = with_fields(&base(), |f| {
        let bundle = f.cabundle();
        f.set_cabundle(&bundle[1..]);
    });
    match verify_at_doc_time(&doc).unwrap_err() {
        Error::RootMismatch { expected, got } => {
            assert_eq!(expected, root_sha);
            assert_ne!(got, root_sha);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A bit flipped in the bundled root is no longer the trusted root.
    let doc = with_fields(&base(), |f| {
        let mut bundle = f.cabundle();
        bundle[0] = flip_serial_bit(&bundle[0]);
        f.set_cabundle(&bundle);
    });
    assert!(matches!(
        verify_at_doc_time(&doc),
        Err(Error::RootMismatch { .. })
    ));
    // A genuine document checked against some other trusted root.
    let bundle = Fields::decode(&Cose::decode(&base()).payload).cabundle();
    let other_root = TrustedRoot::from_der(&bundle[1]).unwrap();
    let err = attestation_verify::verify(&base(), &other_root, &at(CheckTime::DocumentTimestamp))
        .unwrap_err();
    assert!(matches!(err, Error::RootMismatch { .. }), "{err:?}");
}

#[test]
fn wrong_algorithm_header_is_rejected() {
    let mut cose = Cose::decode(&base());
    assert_eq!(cose.protected, encode_protected(&[(1, -35)]));
    cose.protected = encode_protected(&[(1, -7)]); // ES256
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::UnsupportedAlgorithm { found: -7 }
    );
    // `{1: "ES384"}`: a text name is refused with a message saying so, not with
    // the decoder's "unexpected type" that reading it as an integer would give.
    cose.protected = [&[0xa1, 0x01, 0x65][..], b"ES384"].concat();
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::MalformedCbor {
            context: "protected header",
            reason: "text algorithm names are not supported".into(),
        }
    );
    cose.protected = encode_protected(&[]);
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::MissingAlgorithm
    );
    cose.protected = Vec::new();
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::Truncated {
            context: "protected header"
        }
    );
    cose.protected = encode_protected(&[(1, -35), (2, 1)]);
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::CriticalHeader
    );
    cose.protected = encode_protected(&[(1, -35)]);
    cose.protected.push(0x00);
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::TrailingBytes {
            context: "protected header",
            count: 1
        }
    );
    // An extra, harmless protected label parses but is covered by the signature.
    cose.protected = encode_protected(&[(1, -35), (4, 7)]);
    assert_rejected(&cose.encode(), Error::CoseSignature);
}

#[test]
fn protected_header_entries_are_capped_at_the_limit() {
    let max = attestation_verify::MAX_UNKNOWN_FIELDS;
    // The algorithm plus harmless labels 3, 4, ... (2 would be `crit`).
    let header = |entries: usize| {
        let mut labels = vec![(1, -35)];
        labels.extend((3..).take(entries - 1).map(|label| (label, 0)));
        encode_protected(&labels)
    };
    let mut cose = Cose::decode(&base());
    cose.protected = header(max);
    // At the limit it parses; only the signature (over the original header) fails.
    assert_rejected(&cose.encode(), Error::CoseSignature);
    cose.protected = header(max + 1);
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::MalformedCbor {
            context: "protected header",
            reason: format!("more than {max} entries"),
        }
    );
}

#[test]
fn the_document_size_limit_is_inclusive() {
    // The documented limit, written out (not read from the constant it tests).
    let max = 64 * 1024;
    assert_eq!(attestation_verify::MAX_DOCUMENT_LEN, max);
    // Pad a real document with an unknown field to exactly `max` bytes. The
    // length heads grow with the padding, so converge rather than compute.
    let padded = |len: usize| {
        let mut pad = len - base().len();
        loop {
            let doc = with_fields(&base(), |f| f.set_bytes("padding", &vec![0; pad]));
            match doc.len().cmp(&len) {
                std::cmp::Ordering::Equal => return doc,
                std::cmp::Ordering::Greater => pad -= doc.len() - len,
                std::cmp::Ordering::Less => pad += len - doc.len(),
            }
        }
    };
    let at_limit = padded(max);
    assert_rejected(&at_limit, Error::CoseSignature);
    let over = padded(max + 1);
    assert_eq!(
        AttestationDocument::from_bytes(&over).unwrap_err(),
        Error::InputTooLarge { len: max + 1, max }
    );
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let doc = base();
    for len in 0..doc.len() {
        match AttestationDocument::from_bytes(&doc[..len]) {
            Err(Error::Truncated { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut doc = base();
    doc.push(0x00);
    assert_eq!(
        AttestationDocument::from_bytes(&doc).unwrap_err(),
        Error::TrailingBytes {
            context: "COSE_Sign1 structure",
            count: 1
        }
    );
    let mut cose = Cose::decode(&base());
    cose.payload.extend_from_slice(&[0xf6, 0xf6]);
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::TrailingBytes {
            context: "payload",
            count: 2
        }
    );
}

#[test]
fn a_cose_array_not_of_four_items_is_refused_saying_what_it_was() {
    let doc = Cose {
        tagged: false,
        ..Cose::decode(&base())
    }
    .encode();
    assert_eq!(doc[0], 0x84, "untagged, a definite array of 4");
    for (head, found) in [
        (0x83, "3 items"),
        (0x85, "5 items"),
        (0x9f, "an indefinite-length array"),
    ] {
        let bytes = [&[head][..], &doc[1..]].concat();
        assert_eq!(
            AttestationDocument::from_bytes(&bytes).unwrap_err(),
            Error::MalformedCbor {
                context: "COSE_Sign1 structure",
                reason: format!("expected an array of 4 items, found {found}"),
            },
            "head {head:#x}"
        );
    }
}

#[test]
fn check_time_three_hours_after_fails_the_leaf_validity() {
    let ts = common::timestamp_of(BASE);
    let at_ms = ts + 3 * HOUR_MS;
    // Age checks off: the expired leaf alone must be the reason.
    let policy = at(CheckTime::UnixMillis(at_ms)).max_age(None);
    match verify_with(&base(), &policy).unwrap_err() {
        Error::CertificateNotValidAt {
            cert: CertPosition::Leaf,
            at_ms: got_at,
            not_after_ms,
            ..
        } => {
            assert_eq!(got_at, at_ms);
            assert!(not_after_ms < at_ms);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The default policy (check now) fails on expiry too; by now the regional
    // intermediates (checked before the leaf) have expired as well.
    assert!(matches!(
        verify_with(&base(), &Policy::default()),
        Err(Error::CertificateNotValidAt { .. })
    ));
}

#[test]
fn check_time_one_day_before_fails_certificate_validity() {
    let at_ms = common::timestamp_of(BASE) - 24 * HOUR_MS;
    match verify_with(&base(), &at(CheckTime::UnixMillis(at_ms))).unwrap_err() {
        Error::CertificateNotValidAt {
            at_ms: got_at,
            not_before_ms,
            ..
        } => {
            assert_eq!(got_at, at_ms);
            assert!(not_before_ms > at_ms);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn stale_and_future_documents_are_rejected_by_age() {
    let ts = common::timestamp_of(BASE);
    // Ten minutes later every certificate is still valid, but the default max age is five.
    let at_ms = ts + 10 * 60 * 1000;
    assert_eq!(
        verify_with(&base(), &at(CheckTime::UnixMillis(at_ms))).unwrap_err(),
        Error::DocumentTooOld {
            timestamp_ms: ts,
            at_ms,
            age_ms: 10 * 60 * 1000,
            max_age_ms: 5 * 60 * 1000,
        }
    );
    // Checked at the leaf's notBefore, the timestamp lies in the future; with no
    // skew allowed that is a rejection.
    let fields = Fields::decode(&Cose::decode(&base()).payload);
    let leaf = x509_cert::Certificate::from_der(&fields.certificate()).unwrap();
    let not_before = leaf.tbs_certificate.validity.not_before.to_unix_duration();
    let at_ms = not_before.as_millis() as u64;
    assert!(at_ms < ts, "leaf issued before the document");
    let policy = at(CheckTime::UnixMillis(at_ms)).max_future_skew(std::time::Duration::ZERO);
    assert_eq!(
        verify_with(&base(), &policy).unwrap_err(),
        Error::DocumentFromFuture {
            timestamp_ms: ts,
            at_ms,
            max_skew_ms: 0
        }
    );
}

/// Both time limits, exactly at and one millisecond past each boundary. A limit
/// made stricter by one (`>` read as `>=`) would refuse everything with a skew
/// or age of zero.
#[test]
fn age_and_future_skew_limits_are_inclusive_to_the_millisecond() {
    let ts = common::timestamp_of(BASE);
    let max_age = attestation_verify::DEFAULT_MAX_AGE.as_millis() as u64;
    let policy_at = |at_ms| at(CheckTime::UnixMillis(at_ms));
    verify_with(&base(), &policy_at(ts + max_age)).expect("exactly max age old");
    assert_eq!(
        verify_with(&base(), &policy_at(ts + max_age + 1)).unwrap_err(),
        Error::DocumentTooOld {
            timestamp_ms: ts,
            at_ms: ts + max_age + 1,
            age_ms: max_age + 1,
            max_age_ms: max_age,
        }
    );
    // A max age of zero accepts a document checked at its own timestamp.
    let zero = policy_at(ts).max_age(Some(std::time::Duration::ZERO));
    verify_with(&base(), &zero).expect("age zero, max age zero");

    let skew = attestation_verify::DEFAULT_MAX_FUTURE_SKEW.as_millis() as u64;
    let fields = Fields::decode(&Cose::decode(&base()).payload);
    let leaf = x509_cert::Certificate::from_der(&fields.certificate()).unwrap();
    let not_before = leaf.tbs_certificate.validity.not_before.to_unix_duration();
    assert!(
        (not_before.as_millis() as u64) < ts - skew - 1,
        "the leaf is valid a skew before the document"
    );
    verify_with(&base(), &policy_at(ts - skew)).expect("exactly the allowed skew ahead");
    assert_eq!(
        verify_with(&base(), &policy_at(ts - skew - 1)).unwrap_err(),
        Error::DocumentFromFuture {
            timestamp_ms: ts,
            at_ms: ts - skew - 1,
            max_skew_ms: skew,
        }
    );
    let no_skew = |at_ms| policy_at(at_ms).max_future_skew(std::time::Duration::ZERO);
    verify_with(&base(), &no_skew(ts)).expect("no skew needed");
    assert!(matches!(
        verify_with(&base(), &no_skew(ts - 1)).unwrap_err(),
        Error::DocumentFromFuture { .. }
    ));
}

#[test]
fn another_documents_leaf_is_rejected() {
    let other = Fields::decode(&Cose::decode(&common::document(OTHER)).payload);
    // Leaf alone swapped: the base chain's last intermediate did not sign it.
    let doc = with_fields(&base(), |f| {
        f.set_bytes("certificate", &other.certificate())
    });
    assert_rejected(
        &doc,
        Error::CertificateSignature {
            cert: CertPosition::Leaf,
        },
    );
    // Leaf and whole chain swapped: a valid chain, but its key did not sign this payload.
    let doc = with_fields(&base(), |f| {
        f.set_bytes("certificate", &other.certificate());
        f.set_cabundle(&other.cabundle());
    });
    let at_other = at(CheckTime::UnixMillis(common::timestamp_of(OTHER))).max_age(None);
    assert_eq!(
        verify_with(&doc, &at_other).unwrap_err(),
        Error::CoseSignature
    );
}

#[test]
fn wrong_expected_pcrs_are_rejected() {
    let expected = common::expected_json();
    let pcr0 = hex::decode(expected[BASE]["pcrs"]["0"].as_str().unwrap()).unwrap();
    let mut wrong = pcr0.clone();
    wrong[47] ^= 0x01;
    let policy = at(CheckTime::DocumentTimestamp).expected_pcrs(
        ExpectedPcrs::new()
            .with(0, pcr0.clone())
            .unwrap()
            .with(1, pcr0)
            .unwrap(),
    );
    // PCR1 happens to equal PCR0 in this image, so this policy passes...
    verify_with(&base(), &policy).unwrap();
    // ...and a one-bit difference in PCR2 does not.
    let policy = at(CheckTime::DocumentTimestamp)
        .expected_pcrs(ExpectedPcrs::new().with(2, wrong.clone()).unwrap());
    match verify_with(&base(), &policy).unwrap_err() {
        Error::PcrMismatch {
            index,
            expected,
            got,
        } => {
            assert_eq!(index, 2);
            assert_eq!(expected, hex::encode(&wrong));
            assert_eq!(got, expected_pcr(BASE, 2));
        }
        other => panic!("unexpected {other:?}"),
    }
    // An index the document does not carry.
    let policy = at(CheckTime::DocumentTimestamp)
        .expected_pcrs(ExpectedPcrs::new().with(20, vec![0; 48]).unwrap());
    assert_eq!(
        verify_with(&base(), &policy).unwrap_err(),
        Error::PcrMissing { index: 20 }
    );
}

fn expected_pcr(name: &str, index: u8) -> String {
    common::expected_json()[name]["pcrs"][index.to_string()]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn wrong_nonce_is_rejected() {
    let name = "anchorage_veracruz_2022-11-09_eu-west-1.cbor";
    let real = common::expected_json()[name]["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let policy = at(CheckTime::DocumentTimestamp).expected_nonce(vec![0xab; 32]);
    assert_eq!(
        verify_with(&common::document(name), &policy).unwrap_err(),
        Error::NonceMismatch {
            expected: "ab".repeat(32),
            got: Some(real),
        }
    );
    // A document without a nonce (CBOR null) cannot satisfy an expected one.
    assert_eq!(
        verify_with(&base(), &policy).unwrap_err(),
        Error::NonceMismatch {
            expected: "ab".repeat(32),
            got: None,
        }
    );
    // Nor can an empty nonce satisfy a non-empty one.
    let policy = at(CheckTime::DocumentTimestamp).expected_nonce(vec![0xab]);
    let err = verify_with(&common::document("blocky_2024-05-07.cbor"), &policy).unwrap_err();
    assert_eq!(
        err,
        Error::NonceMismatch {
            expected: "ab".into(),
            got: Some(String::new()),
        }
    );
}

#[test]
fn malformed_payload_fields_are_rejected_with_the_field_name() {
    let parse = |doc: Vec<u8>| AttestationDocument::from_bytes(&doc).unwrap_err();
    for field in [
        "module_id",
        "digest",
        "timestamp",
        "pcrs",
        "certificate",
        "cabundle",
    ] {
        let err = parse(with_fields(&base(), |f| f.remove(field)));
        let expected_name = field;
        assert_eq!(
            err,
            Error::MissingField {
                field: expected_name
            }
        );
    }
    assert!(matches!(
        parse(with_fields(&base(), |f| f.set("module_id", encode_text("")))),
        Error::InvalidField {
            field: "module_id",
            ..
        }
    ));
    assert!(matches!(
        parse(with_fields(&base(), |f| f.set("digest", encode_text("SHA256")))),
        Error::InvalidField {
            field: "digest",
            ..
        }
    ));
    assert!(matches!(
        parse(with_fields(&base(), |f| f.set("timestamp", encode_text("now")))),
        Error::MalformedCbor {
            context: "timestamp",
            ..
        }
    ));
    assert!(matches!(
        parse(with_fields(&base(), |f| f.set_cabundle(&[]))),
        Error::InvalidField {
            field: "cabundle",
            ..
        }
    ));
    for pcrs in [
        vec![],
        vec![(32, vec![0; 48])],
        vec![(0, vec![0; 20])],
        (0..33).map(|i| (i, vec![0; 48])).collect(),
    ] {
        let err = parse(with_fields(&base(), |f| {
            f.set("pcrs", encode_pcr_map(&pcrs))
        }));
        assert!(matches!(err, Error::InvalidPcr { .. }), "{err:?}");
    }
    let too_long = vec![1; attestation_verify::MAX_OPTIONAL_FIELD_LEN + 1];
    for field in ["public_key", "user_data", "nonce"] {
        assert!(matches!(
            parse(with_fields(&base(), |f| f.set_bytes(field, &too_long))),
            Error::InvalidField { field: f, .. } if f == field
        ));
    }
    // A duplicated key: the raw map is extended with a second `nonce`.
    let doc = with_fields(&base(), |f| {
        f.0.push(("nonce".into(), encode_bytes(&[1, 2, 3])));
    });
    assert_eq!(
        parse(doc),
        Error::DuplicateField {
            field: "nonce".into()
        }
    );
    let mut cose = Cose::decode(&base());
    cose.signature.pop();
    assert_eq!(
        AttestationDocument::from_bytes(&cose.encode()).unwrap_err(),
        Error::SignatureLength { len: 95 }
    );
    let mut doc = base();
    doc.splice(0..0, [0xc1]); // tag 1 (epoch time) instead of 18
    assert_eq!(
        AttestationDocument::from_bytes(&doc).unwrap_err(),
        Error::UnexpectedTag { tag: 1 }
    );
}

#[test]
fn unknown_fields_are_tolerated_up_to_the_limit() {
    let max = attestation_verify::MAX_UNKNOWN_FIELDS;
    // Within the limit: parses, and fails only at the signature (the payload changed).
    let doc = with_fields(&base(), |f| {
        for i in 0..max {
            f.set(&format!("future_field_{i}"), encode_bytes(&[i as u8]));
        }
    });
    assert_rejected(&doc, Error::CoseSignature);
    let doc = with_fields(&base(), |f| {
        for i in 0..=max {
            f.set(&format!("future_field_{i}"), encode_bytes(&[i as u8]));
        }
    });
    assert_eq!(
        AttestationDocument::from_bytes(&doc).unwrap_err(),
        Error::TooManyUnknownFields { max }
    );
}

#[test]
fn indefinite_length_payload_map_parses() {
    // The base payload re-encoded as an indefinite map parses fine; only the
    // signature (over the original bytes) notices the change.
    let mut cose = Cose::decode(&base());
    let definite = cose.payload.clone();
    assert_eq!(definite[0] & 0xe0, 0xa0);
    let mut indefinite = vec![0xbf];
    // Skip the definite map header (one byte for up to 23 entries).
    assert!(definite[0] < 0xb8);
    indefinite.extend_from_slice(&definite[1..]);
    indefinite.push(0xff);
    cose.payload = indefinite;
    assert_rejected(&cose.encode(), Error::CoseSignature);
}
