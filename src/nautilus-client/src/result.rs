//! Checks of a signed task result that need no network.

use std::time::Duration;

use result_signing::{
    IntentMessage, SignedResponse, SignedTaskResult, TaskResult, VerifyingKey, INTENT_TASK_RESULT,
};
use sha2::{Digest, Sha256};

/// How far the server's clock may be from ours.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What the caller asked for; the signed data must echo each of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected<'a> {
    /// Task directory asked for; compared after [`normalize_task_path`].
    pub task_path: &'a str,
    /// Arguments sent.
    pub args: &'a [String],
    /// Stdin sent, if any; the result must carry its SHA-256.
    pub stdin: Option<&'a [u8]>,
    /// Hex nonce sent with the request.
    pub nonce: &'a str,
    /// The task's digest as announced in the attested manifest, if known.
    pub task_digest: Option<&'a str>,
    /// The destinations (`host:port`) the attested manifest lists for the
    /// task, if known: every signed `egress` entry must be one of them.
    pub egress: Option<&'a [String]>,
    /// The signed timestamp must fall in `[not_before_ms - skew, not_after_ms + skew]`.
    pub not_before_ms: u64,
    /// End of the request window, ms since the UNIX epoch (see `not_before_ms`).
    pub not_after_ms: u64,
    /// How far the enclave's clock may be from ours, and from the
    /// attestation document's.
    pub clock_skew: Duration,
    /// Where the attestation document verified in this session puts the
    /// signing time, `[from_ms, to_ms]` by the document's clock (the Nitro
    /// hypervisor's, for a real NSM): its `timestamp` plus the time that
    /// passed on our monotonic clock. Independent of our own wall clock.
    pub attested_window_ms: Option<(u64, u64)>,
}

/// Why a signed result is not an answer to the request it claims to answer.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The signature, its encoding or its intent is wrong: the result was
    /// not signed by the attested key, or was changed after signing.
    #[error("result signature is invalid")]
    Signature(#[from] result_signing::Error),
    /// Signed data does not echo the request (a replayed or redirected
    /// answer, or one for other code than the manifest announced).
    #[error("signed {field} is {got:?}, but {expected:?} was asked for")]
    Mismatch {
        /// The signed field that differs, e.g. `"nonce"`.
        field: &'static str,
        /// What the request implies.
        expected: String,
        /// What was signed.
        got: String,
    },
    /// The signed timestamp is outside the time the request was in flight,
    /// widened by the allowed clock skew.
    #[error(
        "signed timestamp {timestamp_ms} ms is outside the request window {from_ms}..={to_ms} ms"
    )]
    Stale {
        /// The signed timestamp.
        timestamp_ms: u64,
        /// Earliest acceptable.
        from_ms: u64,
        /// Latest acceptable.
        to_ms: u64,
    },
    /// The signed timestamp disagrees with the attestation document of the
    /// same session by more than the allowed skew: the enclave's clock,
    /// which signs results, is off from the hypervisor's.
    #[error(
        "signed timestamp {timestamp_ms} ms is outside {from_ms}..={to_ms} ms, where the attestation document's timestamp puts it: the enclave's clock is off"
    )]
    SkewedFromAttestation {
        /// The signed timestamp.
        timestamp_ms: u64,
        /// Earliest acceptable.
        from_ms: u64,
        /// Latest acceptable.
        to_ms: u64,
    },
    /// The signed status is unknown or contradicts the signed exit code
    /// (`"success"` exactly when the exit code is 0, otherwise `"failed"`).
    #[error("signed status {status:?} contradicts exit code {exit_code:?}")]
    Inconsistent {
        /// The signed status.
        status: String,
        /// The signed exit code (`None` if the task was killed by a signal).
        exit_code: Option<i32>,
    },
}

/// Task paths as the server reports them: no `.` components or empty
/// segments. Used only to compare what was asked with what was signed.
pub fn normalize_task_path(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Verifies the signature under `key`, then that the signed data answers
/// exactly the request described by `expected`.
pub fn verify_result(
    signed: &SignedResponse<TaskResult>,
    key: &VerifyingKey,
    expected: &Expected<'_>,
) -> Result<(), ResultError> {
    signed.verify(key, INTENT_TASK_RESULT)?;
    check_expected(&signed.response, expected)
}

/// Verifies a result in either signed form: the full form as
/// [`verify_result`]; the compact form's signature, then that the returned
/// texts have the signed SHA-256 and lengths. Then the same checks against
/// `expected`. Returns the whole result.
pub fn verify_signed(
    signed: &SignedTaskResult,
    key: &VerifyingKey,
    expected: &Expected<'_>,
) -> Result<IntentMessage<TaskResult>, ResultError> {
    let message = match signed {
        SignedTaskResult::Full(full) => {
            full.verify(key, INTENT_TASK_RESULT)?;
            full.response.clone()
        }
        SignedTaskResult::Compact(compact) => compact.verify(key)?,
    };
    check_expected(&message, expected)?;
    Ok(message)
}

/// Checks that a verified message answers the request described by `expected`.
fn check_expected(
    message: &IntentMessage<TaskResult>,
    expected: &Expected<'_>,
) -> Result<(), ResultError> {
    let d = &message.data;

    let mismatch = |field, expected: String, got: String| ResultError::Mismatch {
        field,
        expected,
        got,
    };
    if d.nonce.as_deref() != Some(expected.nonce) {
        return Err(mismatch(
            "nonce",
            expected.nonce.to_owned(),
            d.nonce.clone().unwrap_or_else(|| "none".into()),
        ));
    }
    let want_path = normalize_task_path(expected.task_path);
    if d.task_path != want_path {
        return Err(mismatch("task_path", want_path, d.task_path.clone()));
    }
    if d.args != expected.args {
        return Err(mismatch(
            "args",
            format!("{:?}", expected.args),
            format!("{:?}", d.args),
        ));
    }
    let want_stdin = expected.stdin.map(|s| hex::encode(Sha256::digest(s)));
    if d.stdin_sha256 != want_stdin {
        return Err(mismatch(
            "stdin_sha256",
            want_stdin.unwrap_or_else(|| "none".into()),
            d.stdin_sha256.clone().unwrap_or_else(|| "none".into()),
        ));
    }
    if let Some(digest) = expected.task_digest {
        if d.task_digest != digest {
            return Err(mismatch(
                "task_digest",
                digest.to_owned(),
                d.task_digest.clone(),
            ));
        }
    }
    if let Some(declared) = expected.egress {
        if let Some(e) = d
            .egress
            .iter()
            .find(|e| !declared.contains(&format!("{}:{}", e.host, e.port)))
        {
            return Err(mismatch(
                "egress",
                format!("one of {declared:?}"),
                format!("{}:{}", e.host, e.port),
            ));
        }
    }
    let success = d.status == "success";
    if success != (d.exit_code == Some(0)) || !(success || d.status == "failed") {
        return Err(ResultError::Inconsistent {
            status: d.status.clone(),
            exit_code: d.exit_code,
        });
    }
    let skew = u64::try_from(expected.clock_skew.as_millis()).unwrap_or(u64::MAX);
    let from_ms = expected.not_before_ms.saturating_sub(skew);
    let to_ms = expected.not_after_ms.saturating_add(skew);
    let ts = message.timestamp_ms;
    if !(from_ms..=to_ms).contains(&ts) {
        return Err(ResultError::Stale {
            timestamp_ms: ts,
            from_ms,
            to_ms,
        });
    }
    if let Some((from, to)) = expected.attested_window_ms {
        let (from_ms, to_ms) = (from.saturating_sub(skew), to.saturating_add(skew));
        if !(from_ms..=to_ms).contains(&ts) {
            return Err(ResultError::SkewedFromAttestation {
                timestamp_ms: ts,
                from_ms,
                to_ms,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use result_signing::{IntentMessage, SigningKey};

    fn signed(nonce: Option<&str>) -> (SignedResponse<TaskResult>, SigningKey) {
        signed_with(nonce, |_| {})
    }

    /// A properly signed result, after `edit` changed its data.
    fn signed_with(
        nonce: Option<&str>,
        edit: impl FnOnce(&mut TaskResult),
    ) -> (SignedResponse<TaskResult>, SigningKey) {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let mut data = TaskResult {
            task_id: "id".into(),
            task_path: "nodejs-task".into(),
            task_digest: "ab".repeat(32),
            args: vec!["1".into()],
            stdin_sha256: Some(hex::encode(Sha256::digest(b"in"))),
            nonce: nonce.map(str::to_owned),
            status: "success".into(),
            exit_code: Some(0),
            signal: None,
            stdout: "out".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            execution_time_ms: 5,
            limit: None,
            resources: None,
            egress: Vec::new(),
        };
        edit(&mut data);
        let s = IntentMessage::new(INTENT_TASK_RESULT, 10_000, data)
            .sign(&key)
            .expect("signs");
        (s, key)
    }

    fn expected<'a>(args: &'a [String], digest: &'a str) -> Expected<'a> {
        Expected {
            task_path: "./nodejs-task/",
            args,
            stdin: Some(b"in"),
            nonce: "aa",
            task_digest: Some(digest),
            egress: Some(&[]),
            not_before_ms: 10_000,
            not_after_ms: 10_000,
            clock_skew: Duration::ZERO,
            attested_window_ms: Some((9_000, 11_000)),
        }
    }

    #[test]
    fn a_faithful_answer_passes_and_each_deviation_is_named() {
        let args = vec!["1".to_string()];
        let digest = "ab".repeat(32);
        let (s, key) = signed(Some("aa"));
        verify_result(&s, key.verifying_key(), &expected(&args, &digest)).expect("passes");

        let field_of = |e: Expected<'_>, s: &SignedResponse<TaskResult>| match verify_result(
            s,
            key.verifying_key(),
            &e,
        ) {
            Err(ResultError::Mismatch { field, .. }) => field,
            other => panic!("expected a mismatch, got {other:?}"),
        };
        let other_args = vec!["2".to_string()];
        assert_eq!(field_of(expected(&other_args, &digest), &s), "args");
        assert_eq!(
            field_of(
                Expected {
                    nonce: "bb",
                    ..expected(&args, &digest)
                },
                &s
            ),
            "nonce"
        );
        assert_eq!(
            field_of(
                Expected {
                    stdin: None,
                    ..expected(&args, &digest)
                },
                &s
            ),
            "stdin_sha256"
        );
        assert_eq!(
            field_of(
                Expected {
                    task_path: "other",
                    ..expected(&args, &digest)
                },
                &s
            ),
            "task_path"
        );
        assert_eq!(
            field_of(expected(&args, &"cd".repeat(32)), &s),
            "task_digest"
        );
        // A destination the manifest does not list for the task.
        let (reached, k3) = signed_with(Some("aa"), |d| {
            d.egress.push(result_signing::EgressEntry {
                host: "a.example.org".into(),
                port: 443,
                connections: 1,
                bytes_out: 1,
                bytes_in: 1,
            })
        });
        let mismatch = verify_result(&reached, k3.verifying_key(), &expected(&args, &digest));
        assert!(
            matches!(
                mismatch,
                Err(ResultError::Mismatch {
                    field: "egress",
                    ..
                })
            ),
            "{mismatch:?}"
        );
        let declared = ["a.example.org:443".to_owned()];
        verify_result(
            &reached,
            k3.verifying_key(),
            &Expected {
                egress: Some(&declared),
                ..expected(&args, &digest)
            },
        )
        .expect("a declared destination passes");

        let (no_nonce, k2) = signed(None);
        assert!(matches!(
            verify_result(&no_nonce, k2.verifying_key(), &expected(&args, &digest)),
            Err(ResultError::Mismatch { field: "nonce", .. })
        ));

        let late = Expected {
            not_before_ms: 20_000,
            not_after_ms: 20_000,
            ..expected(&args, &digest)
        };
        assert!(matches!(
            verify_result(&s, key.verifying_key(), &late),
            Err(ResultError::Stale { .. })
        ));

        // Our clock agrees, the attestation document's does not.
        let skewed = Expected {
            attested_window_ms: Some((40_000, 41_000)),
            ..expected(&args, &digest)
        };
        assert!(matches!(
            verify_result(&s, key.verifying_key(), &skewed),
            Err(ResultError::SkewedFromAttestation {
                timestamp_ms: 10_000,
                ..
            })
        ));

        let other = SigningKey::random(&mut rand_core::OsRng);
        assert!(matches!(
            verify_result(&s, other.verifying_key(), &expected(&args, &digest)),
            Err(ResultError::Signature(result_signing::Error::BadSignature))
        ));
    }

    /// The window is `[not_before - skew, not_after + skew]`, inclusive at both
    /// ends; the result is signed at 10 000 ms.
    #[test]
    fn the_freshness_window_is_inclusive_at_both_ends() {
        let args = vec!["1".to_string()];
        let digest = "ab".repeat(32);
        let (s, key) = signed(Some("aa"));
        let window = |not_before_ms, not_after_ms, skew_ms| Expected {
            not_before_ms,
            not_after_ms,
            clock_skew: Duration::from_millis(skew_ms),
            ..expected(&args, &digest)
        };
        let check = |e: Expected<'_>| verify_result(&s, key.verifying_key(), &e);
        for (not_before, not_after, skew) in [
            (10_000, 10_000, 0),
            (11_000, 12_000, 1_000), // ends exactly `skew` after the timestamp
            (7_000, 9_000, 1_000),   // ends exactly `skew` before it
        ] {
            check(window(not_before, not_after, skew))
                .unwrap_or_else(|e| panic!("{not_before}..{not_after} ±{skew}: {e}"));
        }
        for (not_before, not_after, skew, from_ms, to_ms) in [
            // Signed after the window (a clock running ahead, or a replay).
            (7_000, 8_999, 1_000, 6_000, 9_999),
            (0, 9_999, 0, 0, 9_999),
            // Signed before it.
            (11_001, 12_000, 1_000, 10_001, 13_000),
            (10_001, 10_001, 0, 10_001, 10_001),
        ] {
            match check(window(not_before, not_after, skew)) {
                Err(ResultError::Stale {
                    timestamp_ms: 10_000,
                    from_ms: f,
                    to_ms: t,
                }) if (f, t) == (from_ms, to_ms) => {}
                other => panic!("{not_before}..{not_after} ±{skew}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_signed_status_must_agree_with_the_exit_code() {
        let args = vec!["1".to_string()];
        let digest = "ab".repeat(32);
        for (status, exit_code) in [
            ("success", Some(1)),
            ("success", None),
            ("failed", Some(0)),
            ("timeout", Some(0)),
            ("killed", Some(1)),
        ] {
            let (s, key) = signed_with(Some("aa"), |d| {
                d.status = status.into();
                d.exit_code = exit_code;
            });
            let err = verify_result(&s, key.verifying_key(), &expected(&args, &digest));
            assert!(
                matches!(
                    &err,
                    Err(ResultError::Inconsistent { status: st, exit_code: ec })
                        if st == status && *ec == exit_code
                ),
                "{status} with {exit_code:?}: {err:?}"
            );
        }
        let (failed, key) = signed_with(Some("aa"), |d| {
            d.status = "failed".into();
            d.exit_code = Some(1);
        });
        verify_result(&failed, key.verifying_key(), &expected(&args, &digest))
            .expect("a failed run with a non-zero exit is consistent");
    }

    #[test]
    fn task_paths_compare_after_normalization() {
        assert_eq!(normalize_task_path("./a//b/"), "a/b");
        assert_eq!(normalize_task_path("nodejs-task"), "nodejs-task");
    }
}
