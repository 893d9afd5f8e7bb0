//! Caller-supplied configuration: PCR files and alternative roots.

mod common;

use attestation_verify::{ConfigError, ExpectedPcrs, PcrFileFormat, TrustedRoot};

fn read(text: &str) -> Result<(ExpectedPcrs, PcrFileFormat), ConfigError> {
    ExpectedPcrs::from_pcr_file(text.as_bytes())
}

fn indices(pcrs: &ExpectedPcrs) -> Vec<u8> {
    pcrs.iter()
        .map(|(i, v)| {
            assert_eq!(v.len(), 48);
            i
        })
        .collect()
}

/// Asserts a refusal whose message gives `reason` and the accepted formats.
fn assert_refused(text: &str, reason: &str) {
    let shown: String = text.chars().take(120).collect();
    match read(text) {
        Err(e @ ConfigError::PcrFile(_)) => {
            let msg = e.to_string();
            assert!(msg.contains(reason), "{shown:?}: {msg}");
            for hint in [
                "nitro-cli describe-eif --eif-path",
                "eif_build",
                "<hex> PCRn",
            ] {
                assert!(msg.contains(hint), "{shown:?}: {msg} lacks {hint:?}");
            }
        }
        other => panic!("{shown:?}: {other:?}"),
    }
}

#[test]
fn the_three_accepted_formats_are_read_and_named() {
    let a = "ab".repeat(48);
    let b = "CD".repeat(48);
    // `nitro-cli describe-eif` of a signed image: PCR8, and members beside Measurements.
    let describe = format!(
        r#"{{
  "EifVersion": 4,
  "Measurements": {{
    "HashAlgorithm": "Sha384 {{ ... }}",
    "PCR0": "{a}",
    "PCR1": "{a}",
    "PCR2": "{b}",
    "PCR8": "{b}"
  }},
  "IsSigned": true,
  "CheckCRC": true,
  "ImageName": "nautilus"
}}
"#
    );
    let (pcrs, format) = read(&describe).unwrap();
    assert_eq!(format, PcrFileFormat::NitroCliJson);
    assert_eq!(indices(&pcrs), [0, 1, 2, 8]);
    assert_eq!(pcrs.iter().nth(2).unwrap().1, [0xcd; 48]);

    let flat = format!(r#"  {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{a}"}}"#);
    let (pcrs, format) = read(&flat).unwrap();
    assert_eq!(format, PcrFileFormat::MeasurementsJson);
    assert_eq!(indices(&pcrs), [0]);

    // Exactly what eif_build writes (no final newline), and the same with CRLF,
    // a final newline, blank lines and tabs.
    let eif_build = format!("{a} PCR0\n{a} PCR1\n{b} PCR2");
    let (pcrs, format) = read(&eif_build).unwrap();
    assert_eq!(format, PcrFileFormat::EifBuildText);
    assert_eq!(indices(&pcrs), [0, 1, 2]);
    let edited = format!("\r\n{b}\tPCR8\r\n\n  {a}  PCR3 \r\n");
    let (pcrs, format) = read(&edited).unwrap();
    assert_eq!(format, PcrFileFormat::EifBuildText);
    assert_eq!(indices(&pcrs), [3, 8]);
    for format in [
        PcrFileFormat::NitroCliJson,
        PcrFileFormat::MeasurementsJson,
        PcrFileFormat::EifBuildText,
    ] {
        assert!(!format.to_string().is_empty());
    }
}

#[test]
fn anything_else_is_refused_naming_the_accepted_formats() {
    let a = "ab".repeat(48);
    let nested = |inner: &str| format!(r#"{{"Measurements": {inner}}}"#);
    let cases = [
        // Captures: status lines before the JSON (`build-enclave 2>&1`, AWS eif_build's stdout).
        (
            format!(
                "Start building the Enclave Image...\nEnclave Image successfully created.\n{}",
                nested(&format!(r#"{{"PCR0": "{a}"}}"#))
            ),
            "line 1 is not `<hex> PCRn`: \"Start building",
        ),
        (
            format!("Output file: nitro.eif\n{{\"PCR0\": \"{a}\"}}"),
            "line 1 is not",
        ),
        (String::new(), "no PCR0-PCR8 values"),
        ("  \n".into(), "no PCR0-PCR8 values"),
        ("[]".into(), "line 1 is not"),
        ("{".into(), "not valid JSON"),
        (format!(r#"{{"PCR0": "{a}"}} trailing"#), "not valid JSON"),
        (nested("3"), "\"Measurements\" is not an object"),
        (nested("{}"), "no PCR0-PCR8 values"),
        (
            r#"{"HashAlgorithm": "Sha384 { ... }"}"#.into(),
            "no PCR0-PCR8 values",
        ),
        (
            format!(r#"{{"HashAlgorithm": "Sha256", "PCR0": "{a}"}}"#),
            "not Sha384",
        ),
        (
            format!(r#"{{"HashAlgorithm": 384, "PCR0": "{a}"}}"#),
            "not Sha384",
        ),
        // A describe-eif output whose Measurements went missing is not a measurements object.
        (
            format!(r#"{{"EifVersion": 4, "PCR0": "{a}"}}"#),
            "unexpected member \"EifVersion\"",
        ),
        (
            nested(&format!(r#"{{"PCR9": "{a}"}}"#)),
            "unexpected member \"PCR9\"",
        ),
        (
            nested(&format!(r#"{{"PCR00": "{a}"}}"#)),
            "unexpected member \"PCR00\"",
        ),
        (
            nested(&format!(r#"{{"pcr0": "{a}"}}"#)),
            "unexpected member \"pcr0\"",
        ),
        (nested(r#"{"PCR0": 7}"#), "PCR0 is 7, not a hex string"),
        (nested(r#"{"PCR0": "0011"}"#), "PCR0 has 4 characters"),
        (
            nested(&format!(r#"{{"PCR0": "{}"}}"#, "zz".repeat(48))),
            "PCR0 is not hex",
        ),
        (format!("{a} PCR0\n{a} PCR0"), "PCR0 appears twice (line 2)"),
        (format!("{a} PCR0 extra"), "line 1 is not"),
        (format!("{a}PCR0"), "line 1 is not"),
        (format!("PCR0 {a}"), "line 1 is not"),
        (format!("{a} PCR9"), "line 1 is not"),
        (
            format!("{a} PCR0\n{} PCR1", &a[2..]),
            "PCR1 has 94 characters",
        ),
        (format!("{} PCR0", "g".repeat(96)), "PCR0 is not hex"),
        // A byte-order mark is not a hex digit.
        (format!("\u{feff}{a} PCR0"), "PCR0 has 97 characters"),
        (
            format!("{a} PCR0\n# comment"),
            "line 2 is not `<hex> PCRn`: \"# comment\"",
        ),
    ];
    for (text, reason) in cases {
        assert_refused(&text, reason);
    }
    // A long line is quoted up to 60 characters, and marked as cut.
    let long = "é".repeat(60);
    assert_refused(&format!("{long}é\n"), &format!(": \"{long}\"…. Accepted"));
    assert_refused(&format!("{long}\n"), &format!(": \"{long}\". Accepted"));
    match ExpectedPcrs::from_pcr_file(b"\xff\xfe{") {
        Err(e @ ConfigError::PcrFile(_)) => assert!(e.to_string().contains("not UTF-8"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_pcr_file_size_cap_is_inclusive() {
    // The documented cap, written out: a test that read the constant would follow
    // it wherever a change took it.
    let max = 64 * 1024;
    assert_eq!(attestation_verify::MAX_PCR_FILE_LEN, max);
    // Valid files padded with trailing whitespace to exactly the cap: accepted.
    let json = format!(r#"{{"PCR0": "{}"}}"#, "ab".repeat(48));
    let text = format!("{} PCR0", "ab".repeat(48));
    for valid in [json, text] {
        let at_cap = format!("{valid}{}", " ".repeat(max - valid.len()));
        assert_eq!(at_cap.len(), max);
        read(&at_cap).expect("a file of exactly the cap is read");
        let over = format!("{at_cap} ");
        assert_refused(
            &over,
            &format!("{} bytes, more than the {max}-byte limit", max + 1),
        );
    }
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
