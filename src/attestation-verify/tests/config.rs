//! Caller-supplied configuration: PCR files and alternative roots.

mod common;

use attestation_verify::{ConfigError, ExpectedPcrs, TrustedRoot};

#[test]
fn nitro_pcr_files_are_parsed_and_validated() {
    let pcr = "ab".repeat(48);
    let pcrs = ExpectedPcrs::from_nitro_json(&format!(
        r#"{{"Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{pcr}", "PCR8": "{pcr}"}}}}"#
    ))
    .unwrap();
    let got: Vec<_> = pcrs.iter().map(|(i, v)| (i, v.len())).collect();
    assert_eq!(got, [(0, 48), (8, 48)]);

    let bad = [
        ("[]", "not a JSON object"),
        (r#"{"Measurements": 3}"#, "not an object"),
        (r#"{"HashAlgorithm": "Sha384"}"#, "no PCRn entries"),
        (r#"{"PCRx": "00"}"#, "bad PCR key"),
        (r#"{"PCR0": 7}"#, "not a string"),
        (r#"{"PCR0": "zz"}"#, "not hex"),
        ("{", "EOF"),
    ];
    for (json, reason) in bad {
        match ExpectedPcrs::from_nitro_json(json) {
            Err(ConfigError::PcrFile(msg)) => assert!(msg.contains(reason), "{json}: {msg}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    assert_eq!(
        ExpectedPcrs::from_nitro_json(&format!(r#"{{"PCR32": "{pcr}"}}"#)),
        Err(ConfigError::PcrIndexOutOfRange(32))
    );
    assert_eq!(
        ExpectedPcrs::from_nitro_json(r#"{"PCR3": "0011"}"#),
        Err(ConfigError::PcrLength { index: 3, len: 2 })
    );
    assert!(matches!(
        ExpectedPcrs::from_nitro_json(&" ".repeat(attestation_verify::MAX_PCR_FILE_LEN + 1)),
        Err(ConfigError::PcrFile(_))
    ));
}

#[test]
fn alternative_roots_must_be_certificates() {
    assert!(matches!(
        TrustedRoot::from_der(b"not a certificate"),
        Err(ConfigError::InvalidRoot(_))
    ));
    assert!(matches!(
        TrustedRoot::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(ConfigError::InvalidRoot(_))
    ));
    // A PEM private key (or anything not labelled CERTIFICATE) is refused by label.
    let pem = std::fs::read_to_string(common::data_dir().join("aws_nitro_root_g1.pem")).unwrap();
    let relabelled = pem.replace("CERTIFICATE", "PRIVATE KEY");
    match TrustedRoot::from_pem(&relabelled) {
        Err(ConfigError::InvalidRoot(msg)) => assert!(msg.contains("PRIVATE KEY"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Any certificate can be named as the root explicitly (e.g. a dev CA); only the
    // embedded AWS root is the default.
    let explicit = TrustedRoot::from_pem(&pem).unwrap();
    assert_eq!(
        explicit.sha256_hex(),
        attestation_verify::AWS_NITRO_ROOT_G1_SHA256
    );
}
