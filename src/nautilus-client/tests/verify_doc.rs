//! `nautilus-client verify-doc` on real Nitro documents.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation-verify/tests/data")
        .join(name)
}

fn verify_doc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
        .arg("verify-doc")
        .args(args)
        .output()
        .expect("client ran")
}

fn assert_succeeded(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const NONDEBUG: &str = "anchorage_turnkey_prod_2025-05-05.cbor";
const DEBUG: &str = "sui_2024-11-14_debug.cbor";

fn expected(name: &str) -> Value {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(data("expected.json")).expect("expected.json"),
    )
    .expect("json");
    all[name].clone()
}

#[test]
fn verifies_a_real_document_at_its_own_time_and_prints_its_fields() {
    let path = data(NONDEBUG);
    let out = verify_doc(&[path.to_str().expect("utf8"), "--at-doc-time"]);
    assert_succeeded(&out);
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let e = expected(NONDEBUG);
    assert_eq!(v["module_id"], e["module_id"]);
    assert_eq!(v["timestamp_ms"], e["timestamp_ms"]);
    // expected.json lists PCR0, 1, 2 and 8; the output has all of them.
    for (index, value) in e["pcrs"].as_object().expect("pcrs") {
        assert_eq!(&v["pcrs"][index], value, "PCR{index}");
    }
    assert_eq!(v["digest"], "SHA384");
    assert_eq!(v["debug"], false);
    for key in ["public_key", "user_data", "nonce"] {
        assert_eq!(v[key], e[key], "{key}");
    }

    // Hex input is the same document.
    let hex_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        hex_file.path(),
        hex::encode(std::fs::read(&path).expect("read")),
    )
    .expect("write");
    let out = verify_doc(&[
        hex_file.path().to_str().expect("utf8"),
        "--hex",
        "--at-doc-time",
    ]);
    assert_succeeded(&out);
}

#[test]
fn failures_exit_1_with_one_line_of_reason() {
    let nondebug = data(NONDEBUG);
    let debug = data(DEBUG);
    let pcrs = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        pcrs.path(),
        format!(r#"{{"Measurements": {{"PCR0": "{}"}}}}"#, "11".repeat(48)),
    )
    .expect("write");

    for (args, reason) in [
        (vec![nondebug.to_str().expect("utf8")], "not valid at"),
        (
            vec![debug.to_str().expect("utf8"), "--at-doc-time"],
            "debug-mode",
        ),
        (
            vec![
                nondebug.to_str().expect("utf8"),
                "--at-doc-time",
                "--pcrs",
                pcrs.path().to_str().expect("utf8"),
            ],
            "PCR0 mismatch",
        ),
        (
            vec![
                nondebug.to_str().expect("utf8"),
                "--at-doc-time",
                "--nonce",
                "abcd",
            ],
            "nonce mismatch",
        ),
        (vec!["/nonexistent/doc.cbor"], "cannot open"),
    ] {
        let out = verify_doc(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // One line of reason, after the note saying how `--pcrs` was read.
        let lines: Vec<_> = err.trim().lines().collect();
        let reasons: Vec<_> = lines
            .iter()
            .filter(|l| !l.starts_with("note: --pcrs"))
            .collect();
        assert_eq!(reasons.len(), 1, "{err}");
        assert_eq!(
            lines.len() - reasons.len(),
            usize::from(args.contains(&"--pcrs")),
            "{err}"
        );
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }

    let out = verify_doc(&[
        debug.to_str().expect("utf8"),
        "--at-doc-time",
        "--allow-debug",
    ]);
    assert_succeeded(&out);
}

#[test]
fn argument_errors_are_one_line_with_the_documented_exit_codes() {
    for (args, code) in [
        (vec!["verify-doc"], 1),
        (vec!["verify-doc", "x.cbor", "--bogus"], 1),
        (vec!["attest"], 1),
        (vec!["run", "--url"], 2),
        (
            vec!["run", "--url", "http://127.0.0.1:1", "--timeout", "soon"],
            2,
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
            .args(&args)
            .output()
            .expect("client ran");
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(out.stdout.is_empty());
    }
    let help = Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
        .arg("--help")
        .output()
        .expect("client ran");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("verify-doc"));
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    use std::process::Stdio;
    let path = data(NONDEBUG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
        .args(["verify-doc", path.to_str().expect("utf8"), "--at-doc-time"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client ran");
    // Close the read end before the client writes its answer.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("client finished");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// The PCR files a build produces, for a real document's PCRs: nitro-cli's JSON
/// (as `describe-eif` prints it, nested, and the bare measurements object) and
/// eif_build's text lines. `wrong` names a PCR to alter.
fn pcr_files(name: &str, wrong: Option<&str>) -> Vec<(&'static str, String)> {
    let e = expected(name);
    let pcr = |i: &str| {
        let value = e["pcrs"][i].as_str().expect("hex").to_owned();
        if wrong == Some(i) {
            // Flip the last hex digit.
            let (head, last) = value.split_at(value.len() - 1);
            format!("{head}{}", if last == "0" { "1" } else { "0" })
        } else {
            value
        }
    };
    let measurements = format!(
        r#"{{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{}", "PCR1": "{}", "PCR2": "{}", "PCR8": "{}"}}"#,
        pcr("0"),
        pcr("1"),
        pcr("2"),
        pcr("8")
    );
    vec![
        (
            "nitro-cli JSON",
            format!(
                "{{\n  \"EifVersion\": 4,\n  \"Measurements\": {measurements},\n  \"IsSigned\": false\n}}\n"
            ),
        ),
        ("measurements JSON", measurements),
        (
            "eif_build text",
            format!("{} PCR0\n{} PCR1\n{} PCR2", pcr("0"), pcr("1"), pcr("2")),
        ),
    ]
}

#[test]
fn pcr_files_in_each_accepted_format_verify_and_a_wrong_pcr_is_refused() {
    for doc in [NONDEBUG, "signal_svr2_2023-05-24.cbor"] {
        let path = data(doc);
        let path = path.to_str().expect("utf8");
        for wrong in [None, Some("0"), Some("2")] {
            for (format, content) in pcr_files(doc, wrong) {
                let file = tempfile::NamedTempFile::new().expect("tmp");
                std::fs::write(file.path(), &content).expect("write");
                let pcrs = file.path().to_str().expect("utf8");
                let out = verify_doc(&[path, "--at-doc-time", "--pcrs", pcrs]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.starts_with(&format!("note: --pcrs {pcrs} read as {format}")),
                    "{doc} {format}: {err}"
                );
                match wrong {
                    None => {
                        assert_succeeded(&out);
                        assert!(err.contains("expecting PCR0, PCR1, PCR2"), "{err}");
                    }
                    Some(i) => {
                        assert_eq!(out.status.code(), Some(1), "{doc} {format}: {err}");
                        assert!(err.contains(&format!("error: PCR{i} mismatch")), "{err}");
                        assert!(out.stdout.is_empty());
                    }
                }
            }
        }
    }
}

#[test]
fn other_pcr_files_are_refused_saying_what_is_accepted() {
    let path = data(NONDEBUG);
    let (_, json) = pcr_files(NONDEBUG, None).swap_remove(0);
    // A `nitro-cli build-enclave ... 2>&1` capture: status lines before the JSON.
    let capture =
        format!("Start building the Enclave Image...\nEnclave Image successfully created.\n{json}");
    for content in [capture, "PCR0=00\n".to_owned()] {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(file.path(), &content).expect("write");
        let out = verify_doc(&[
            path.to_str().expect("utf8"),
            "--at-doc-time",
            "--pcrs",
            file.path().to_str().expect("utf8"),
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for said in [
            "line 1 is not `<hex> PCRn`",
            "nitro-cli describe-eif --eif-path",
            "eif_build",
        ] {
            assert!(err.contains(said), "{err} lacks {said:?}");
        }
    }
}

/// What `/get_attestation` answers is hex inside JSON: given as it is, or its
/// hex without `--hex`, the refusal says what the file holds and which flag
/// reads it.
#[test]
fn hex_or_json_without_the_hex_flag_is_named() {
    let hex = hex::encode(std::fs::read(data(NONDEBUG)).expect("read"));
    let hex_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(hex_file.path(), format!("{hex}\n")).expect("write");
    let out = verify_doc(&[hex_file.path().to_str().expect("utf8"), "--at-doc-time"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds hex text") && err.contains("--hex"),
        "{err}"
    );

    let json_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(json_file.path(), format!(r#"{{"attestation": "{hex}"}}"#)).expect("write");
    let out = verify_doc(&[json_file.path().to_str().expect("utf8"), "--at-doc-time"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds JSON") && err.contains("`attestation` field") && err.contains("--hex"),
        "{err}"
    );
}

/// With no arguments the client prints its usage (not its about text as an
/// error) and fails.
#[test]
fn no_arguments_print_the_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_nautilus-client"))
        .output()
        .expect("client ran");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Usage: nautilus-client") && err.contains("verify-doc") && err.contains("run"),
        "{err}"
    );
    assert!(!err.contains("error:"), "{err}");
}
