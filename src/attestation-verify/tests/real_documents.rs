//! The 19 real Nitro documents verify at their own timestamps with the embedded
//! root and report exactly what `expected.json` says.

mod common;

use attestation_verify::{
    AttestationDocument, AttestationSummary, CheckTime, Error, ExpectedPcrs, Policy, TrustedRoot,
    AWS_NITRO_ROOT_G1_SHA256,
};
use sha2::{Digest, Sha256};

fn at_doc_time() -> Policy {
    Policy::default().check_time(CheckTime::DocumentTimestamp)
}

#[test]
fn embedded_root_is_the_pinned_aws_root() {
    let root = TrustedRoot::aws_nitro().unwrap();
    assert_eq!(root.sha256_hex(), AWS_NITRO_ROOT_G1_SHA256);
    let pem = std::fs::read_to_string(common::data_dir().join("aws_nitro_root_g1.pem")).unwrap();
    assert_eq!(TrustedRoot::from_pem(&pem).unwrap(), root);
    assert_eq!(TrustedRoot::from_pem_or_der(pem.as_bytes()).unwrap(), root);
    assert_eq!(TrustedRoot::from_pem_or_der(root.der()).unwrap(), root);
}

#[test]
fn every_real_document_verifies_and_reports_expected_fields() {
    let expected = common::expected_json();
    let root = TrustedRoot::aws_nitro().unwrap();
    for (name, bytes) in common::documents() {
        let exp = &expected[&name];
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            exp["sha256"].as_str().unwrap(),
            "{name}: test file differs from the one expected.json describes"
        );
        let debug = exp["debug"].as_bool().unwrap();
        let doc = AttestationDocument::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let verified = doc
            .verify(&root, &at_doc_time().allow_debug(true))
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        let summary = verified.summary();
        assert_eq!(
            summary.module_id,
            exp["module_id"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            summary.timestamp_ms,
            exp["timestamp_ms"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(summary.digest, exp["digest"].as_str().unwrap(), "{name}");
        assert_eq!(summary.debug, debug, "{name}");
        assert_eq!(verified.is_debug(), debug, "{name}");
        for field in ["public_key", "user_data", "nonce"] {
            let got = match field {
                "public_key" => &summary.public_key,
                "user_data" => &summary.user_data,
                _ => &summary.nonce,
            };
            assert_eq!(got.as_deref(), exp[field].as_str(), "{name}: {field}");
        }
        let exp_pcrs = exp["pcrs"].as_object().unwrap();
        assert!(!exp_pcrs.is_empty());
        for (index, value) in exp_pcrs {
            let index: u8 = index.parse().unwrap();
            assert_eq!(
                summary.pcrs.get(&index).map(String::as_str),
                value.as_str(),
                "{name}: PCR{index}"
            );
            assert_eq!(
                verified.pcr(index).map(hex::encode).as_deref(),
                value.as_str(),
                "{name}: PCR{index}"
            );
        }
        // The typed accessors agree with the summary.
        assert_eq!(verified.module_id(), summary.module_id);
        assert_eq!(verified.nonce().map(hex::encode), summary.nonce);
        assert_eq!(verified.pcrs().len(), summary.pcrs.len());

        // Debug-mode documents are refused unless explicitly allowed.
        let strict = doc.verify(&root, &at_doc_time());
        if debug {
            assert_eq!(strict.unwrap_err(), Error::DebugMode, "{name}");
        } else {
            strict.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn summary_serializes_to_the_cli_json_shape() {
    let root = TrustedRoot::aws_nitro().unwrap();
    let bytes = common::document("blocky_2024-05-07.cbor");
    let verified = attestation_verify::verify(&bytes, &root, &at_doc_time()).unwrap();
    let json = serde_json::to_value(verified.summary()).unwrap();
    let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    let mut expected_keys = vec![
        "module_id",
        "timestamp_ms",
        "digest",
        "pcrs",
        "public_key",
        "user_data",
        "nonce",
        "debug",
    ];
    expected_keys.sort();
    assert_eq!(keys, expected_keys);
    assert_eq!(json["timestamp_ms"], 1715103786613u64);
    assert_eq!(json["pcrs"]["0"].as_str().unwrap().len(), 96);
    // Empty byte strings are "" (not null); absent or null fields are null.
    assert_eq!(json["user_data"], "");
    assert_eq!(json["nonce"], "");
    let round_trip: AttestationSummary = serde_json::from_value(json).unwrap();
    assert_eq!(round_trip, verified.summary());

    let bytes = common::document("evervault_beta_nondebug_2022-10-13.cbor");
    let verified = attestation_verify::verify(&bytes, &root, &at_doc_time()).unwrap();
    let json = serde_json::to_value(verified.summary()).unwrap();
    assert!(json["public_key"].is_null());
    assert!(json["user_data"].is_null());
}

#[test]
fn pcr_files_in_each_format_accept_a_matching_document() {
    let root = TrustedRoot::aws_nitro().unwrap();
    let bytes = common::document(common::BASE);
    let exp = &common::expected_json()[common::BASE]["pcrs"];
    let pcr = |i: &str| exp[i].as_str().unwrap();
    let flat = format!(
        r#"{{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{}", "PCR1": "{}", "PCR2": "{}"}}"#,
        pcr("0"),
        pcr("1"),
        pcr("2")
    );
    let nested = format!(r#"{{"Measurements": {flat}}}"#);
    let text = format!("{} PCR0\n{} PCR1\n{} PCR2", pcr("0"), pcr("1"), pcr("2"));
    for file in [flat, nested, text] {
        let (pcrs, _) = ExpectedPcrs::from_pcr_file(file.as_bytes()).unwrap();
        assert_eq!(pcrs.len(), 3);
        let policy = at_doc_time().expected_pcrs(pcrs);
        attestation_verify::verify(&bytes, &root, &policy).unwrap();
    }
}

#[test]
fn expected_nonce_accepts_the_matching_nonce() {
    let root = TrustedRoot::aws_nitro().unwrap();
    let name = "anchorage_veracruz_2022-11-09_eu-west-1.cbor";
    let nonce = hex::decode(common::expected_json()[name]["nonce"].as_str().unwrap()).unwrap();
    let policy = at_doc_time().expected_nonce(nonce);
    attestation_verify::verify(&common::document(name), &root, &policy).unwrap();
}

#[test]
fn tagged_and_untagged_documents_are_equivalent() {
    let root = TrustedRoot::aws_nitro().unwrap();
    let bytes = common::document(common::BASE);
    let mut cose = common::Cose::decode(&bytes);
    assert!(!cose.tagged);
    assert_eq!(cose.encode(), bytes, "re-encoder is faithful");
    cose.tagged = true;
    let tagged = cose.encode();
    assert_eq!(tagged[0], 0xd2);
    attestation_verify::verify(&tagged, &root, &at_doc_time()).unwrap();
}
