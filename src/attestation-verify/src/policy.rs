//! What a verified document must additionally satisfy: freshness, PCRs, nonce, debug.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::document::Payload;
use crate::error::{ConfigError, Error};

/// Default [`Policy::max_age`]: a document is fetched and checked in one go, so
/// anything older than this was not produced for this request.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Default [`Policy::max_future_skew`]: tolerated clock difference between the
/// verifier and the Nitro hypervisor for documents that appear to come from the future.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);

/// The instant at which certificates and document age are judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckTime {
    /// The system clock when [`verify`](crate::AttestationDocument::verify) runs.
    #[default]
    Now,
    /// A fixed time, in milliseconds since the UNIX epoch.
    UnixMillis(u64),
    /// The document's own `timestamp`: "was this valid when it was made?".
    /// Useful for archived documents, whose ~3-hour leaf certificates have expired.
    DocumentTimestamp,
}

/// Verification policy. [`Policy::default`] is strict: checked now, at most
/// [`DEFAULT_MAX_AGE`] old, no debug-mode documents; PCRs and nonce are only
/// compared when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    check_time: CheckTime,
    max_age: Option<Duration>,
    max_future_skew: Duration,
    expected_pcrs: ExpectedPcrs,
    expected_nonce: Option<Vec<u8>>,
    allow_debug: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            check_time: CheckTime::Now,
            max_age: Some(DEFAULT_MAX_AGE),
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            expected_pcrs: ExpectedPcrs::default(),
            expected_nonce: None,
            allow_debug: false,
        }
    }
}

impl Policy {
    /// Same as [`Policy::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// When certificates and the document's age are judged.
    pub fn check_time(mut self, check_time: CheckTime) -> Self {
        self.check_time = check_time;
        self
    }

    /// Largest accepted `check time - timestamp`; `None` disables the age check.
    pub fn max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// How far in the future (relative to the check time) a timestamp may be.
    pub fn max_future_skew(mut self, skew: Duration) -> Self {
        self.max_future_skew = skew;
        self
    }

    /// PCRs that must be present with exactly these values.
    pub fn expected_pcrs(mut self, pcrs: ExpectedPcrs) -> Self {
        self.expected_pcrs = pcrs;
        self
    }

    /// The nonce the document must carry (the one sent with the request).
    pub fn expected_nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.expected_nonce = Some(nonce.into());
        self
    }

    /// Accept debug-mode documents (PCR0, PCR1 and PCR2 all zero). Debug enclaves
    /// can be inspected by their host, so their attestation proves little.
    pub fn allow_debug(mut self, allow: bool) -> Self {
        self.allow_debug = allow;
        self
    }

    pub(crate) fn resolve_check_time(&self, timestamp_ms: u64) -> Result<u64, Error> {
        match self.check_time {
            CheckTime::Now => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| Error::ClockBeforeEpoch)?;
                Ok(u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
            }
            CheckTime::UnixMillis(ms) => Ok(ms),
            CheckTime::DocumentTimestamp => Ok(timestamp_ms),
        }
    }

    /// Checks everything except the signatures, which the caller has already verified.
    pub(crate) fn check(&self, doc: &Payload, at_ms: u64, debug: bool) -> Result<(), Error> {
        let timestamp_ms = doc.timestamp_ms;
        let max_skew_ms = millis(self.max_future_skew);
        if timestamp_ms > at_ms.saturating_add(max_skew_ms) {
            return Err(Error::DocumentFromFuture {
                timestamp_ms,
                at_ms,
                max_skew_ms,
            });
        }
        if let Some(max_age) = self.max_age {
            let age_ms = at_ms.saturating_sub(timestamp_ms);
            let max_age_ms = millis(max_age);
            if age_ms > max_age_ms {
                return Err(Error::DocumentTooOld {
                    timestamp_ms,
                    at_ms,
                    age_ms,
                    max_age_ms,
                });
            }
        }
        if debug && !self.allow_debug {
            return Err(Error::DebugMode);
        }
        for (&index, expected) in &self.expected_pcrs.0 {
            let got = doc.pcrs.get(&index).ok_or(Error::PcrMissing { index })?;
            if got != expected {
                return Err(Error::PcrMismatch {
                    index,
                    expected: hex::encode(expected),
                    got: hex::encode(got),
                });
            }
        }
        if let Some(expected) = &self.expected_nonce {
            if doc.nonce.as_ref() != Some(expected) {
                return Err(Error::NonceMismatch {
                    expected: hex::encode(expected),
                    got: doc.nonce.as_ref().map(hex::encode),
                });
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A set of PCR values a document must contain (any subset of PCR0–PCR31).
/// Read one from a build's PCR file with [`ExpectedPcrs::from_pcr_file`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedPcrs(BTreeMap<u8, Vec<u8>>);

impl ExpectedPcrs {
    /// An empty set: no PCR is checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires PCR`index` to equal `value` (32, 48 or 64 bytes); replaces an earlier value.
    pub fn insert(&mut self, index: u8, value: impl Into<Vec<u8>>) -> Result<(), ConfigError> {
        let value = value.into();
        if index >= 32 {
            return Err(ConfigError::PcrIndexOutOfRange(index.into()));
        }
        if !matches!(value.len(), 32 | 48 | 64) {
            return Err(ConfigError::PcrLength {
                index,
                len: value.len(),
            });
        }
        self.0.insert(index, value);
        Ok(())
    }

    /// Builder form of [`ExpectedPcrs::insert`].
    pub fn with(mut self, index: u8, value: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        self.insert(index, value)?;
        Ok(self)
    }

    /// The expected values, by PCR index.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.0.iter().map(|(&i, v)| (i, v.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}
