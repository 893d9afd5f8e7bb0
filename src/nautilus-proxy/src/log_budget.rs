//! Per-connection log lines under a budget: a flood of connections (refused,
//! silent, reset) must not become a flood of log lines (it was 10.7 MB in
//! 30 s). Past the budget, lines are counted by kind and summed up in one
//! line per second.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use std::time::Instant;

/// Seconds of lines the budget holds for a burst.
const BURST_SECS: u32 = 5;

/// A token bucket of log lines plus what it turned away.
#[derive(Debug)]
pub struct LogBudget {
    per_sec: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    suppressed: BTreeMap<&'static str, u64>,
}

impl LogBudget {
    /// `per_sec` lines a second on average, five seconds' worth in a burst.
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            state: Mutex::new(State {
                tokens: f64::from(per_sec.saturating_mul(BURST_SECS)),
                refilled: Instant::now(),
                suppressed: BTreeMap::new(),
            }),
        }
    }

    /// True when a line of this `kind` may be written; otherwise it is
    /// counted for the next [`LogBudget::take_suppressed`].
    pub fn allow(&self, kind: &'static str) -> bool {
        self.allow_at(kind, Instant::now())
    }

    /// [`LogBudget::allow`] at time `now`.
    pub fn allow_at(&self, kind: &'static str, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let burst = f64::from(self.per_sec.saturating_mul(BURST_SECS));
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * f64::from(self.per_sec)).min(burst);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return true;
        }
        *s.suppressed.entry(kind).or_insert(0) += 1;
        false
    }

    /// The lines turned away since the last call, by kind, as
    /// `kind=count, …` (None when there were none).
    pub fn take_suppressed(&self) -> Option<(u64, String)> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.suppressed.is_empty() {
            return None;
        }
        let taken = std::mem::take(&mut s.suppressed);
        let total = taken.values().sum();
        let by_kind = taken
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(", ");
        Some((total, by_kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn past_the_burst_lines_are_counted_by_kind_and_the_budget_refills() {
        let b = LogBudget::new(2);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(b.allow_at("closed", t0));
        }
        assert!(!b.allow_at("closed", t0));
        assert!(!b.allow_at("refused", t0));
        assert!(!b.allow_at("refused", t0));
        assert_eq!(
            b.take_suppressed(),
            Some((3, "closed=1, refused=2".to_owned()))
        );
        assert_eq!(b.take_suppressed(), None);
        let t1 = t0 + Duration::from_millis(600);
        assert!(b.allow_at("closed", t1));
        assert!(!b.allow_at("closed", t1));
    }
}
