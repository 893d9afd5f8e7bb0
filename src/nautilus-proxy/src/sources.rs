//! Per-source shares of the proxy's slots: connections open at once and
//! connections accepted per second, keyed on the client's address (an IPv6
//! client on its /64, which one host usually owns whole).
//!
//! Hand-written rather than `governor`'s keyed limiter: the open-connection
//! count and the accept bucket live in one map under one lock, entries are
//! dropped as soon as they hold nothing, and the whole is a few dozen lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What one source may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceLimits {
    /// Connections one source may have open at once.
    pub max_connections: u32,
    /// Connections one source may open per second, on average.
    pub accepts_per_sec: u32,
    /// Connections one source may open in a burst above that rate.
    pub accept_burst: u32,
}

/// Why a connection was refused before it was relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Every slot of the proxy is taken.
    Full,
    /// This source already holds its share of slots.
    SourceCap,
    /// This source opens connections faster than its accept rate.
    SourceRate,
}

/// A source's identity: the IP, IPv6 cut to its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                SourceKey(IpAddr::V6(bits.into()))
            }
            v4 => SourceKey(v4),
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// The shares of every source currently holding anything.
#[derive(Debug)]
pub struct Sources {
    limits: SourceLimits,
    map: Mutex<HashMap<SourceKey, Entry>>,
}

/// One admitted connection's hold on its source's share; released on drop.
#[derive(Debug)]
pub struct Admitted {
    sources: Arc<Sources>,
    key: SourceKey,
}

impl Sources {
    /// Empty shares under these limits.
    pub fn new(limits: SourceLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one connection from `ip`, or says why not. A refused attempt
    /// still spends a token: reconnecting faster only refuses longer.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    /// [`Sources::admit`] at time `now`.
    pub fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let key = SourceKey::from(ip);
        let burst = f64::from(self.limits.accept_burst.max(1));
        let rate = f64::from(self.limits.accepts_per_sec);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED {
            Self::forget_settled(&mut map, now, rate, burst);
        }
        let entry = map.entry(key).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * rate).min(burst);
        entry.refilled = now;
        if entry.tokens < 1.0 {
            return Err(Refusal::SourceRate);
        }
        entry.tokens -= 1.0;
        if entry.open >= self.limits.max_connections {
            return Err(Refusal::SourceCap);
        }
        entry.open += 1;
        Ok(Admitted {
            sources: Arc::clone(self),
            key,
        })
    }

    /// Drops entries that hold no connection and whose bucket is full again:
    /// they carry no state a new entry would not have.
    fn forget_settled(map: &mut HashMap<SourceKey, Entry>, now: Instant, rate: f64, burst: f64) {
        map.retain(|_, e| {
            let refill = now.saturating_duration_since(e.refilled).as_secs_f64() * rate;
            e.open > 0 || e.tokens + refill < burst
        });
        // Still too many (a flood from very many sources): forget the rate
        // history of idle ones rather than grow without bound.
        if map.len() >= MAX_TRACKED {
            map.retain(|_, e| e.open > 0);
        }
    }

    /// Sources currently tracked (for tests and the log).
    pub fn tracked(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Entries kept before settled ones are swept; each is a few dozen bytes.
const MAX_TRACKED: usize = 65_536;

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .sources
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: u32, rate: u32, burst: u32) -> SourceLimits {
        SourceLimits {
            max_connections: max,
            accepts_per_sec: rate,
            accept_burst: burst,
        }
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(SourceKey::from(a), SourceKey::from(b));
        assert_ne!(SourceKey::from(a), SourceKey::from(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            SourceKey::from(mapped),
            SourceKey::from("10.0.0.1".parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn a_source_gets_its_share_and_no_more_and_others_are_untouched() {
        let s = Sources::new(limits(2, 1000, 1000));
        let one: IpAddr = "10.0.0.1".parse().expect("ip");
        let two: IpAddr = "10.0.0.2".parse().expect("ip");
        let a = s.admit(one).expect("first");
        let _b = s.admit(one).expect("second");
        assert_eq!(s.admit(one).unwrap_err(), Refusal::SourceCap);
        let _c = s.admit(two).expect("another source");
        drop(a);
        let _d = s.admit(one).expect("a freed share is reusable");
    }

    #[test]
    fn accepts_past_the_rate_are_refused_until_the_bucket_refills() {
        let s = Sources::new(limits(100, 10, 5));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..5 {
            drop(s.admit_at(ip, t0).expect("within the burst"));
        }
        assert_eq!(s.admit_at(ip, t0).unwrap_err(), Refusal::SourceRate);
        let t1 = t0 + Duration::from_millis(150);
        drop(s.admit_at(ip, t1).expect("one token back after 100 ms"));
        assert_eq!(s.admit_at(ip, t1).unwrap_err(), Refusal::SourceRate);
    }

    #[test]
    fn settled_sources_are_forgotten_when_the_map_is_full() {
        let s = Sources::new(limits(4, 1000, 1));
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::V4((0x0b00_0000 + i).into());
        let held = s
            .admit_at("10.0.0.1".parse().expect("ip"), t0)
            .expect("held");
        for i in 0..MAX_TRACKED as u32 - 1 {
            let _ = s.admit_at(ip(i), t0);
        }
        assert_eq!(s.tracked(), MAX_TRACKED);
        // A second later every bucket is full again: all but the held
        // source's entry carry nothing.
        let _ = s.admit_at(ip(u32::MAX >> 8), t0 + Duration::from_secs(1));
        assert_eq!(s.tracked(), 2);

        // A flood from new sources within the same instant: the rate history
        // of idle sources is dropped rather than the map growing.
        for i in 0..2 * MAX_TRACKED as u32 {
            let _ = s.admit_at(ip(i), t0 + Duration::from_secs(1));
        }
        assert!(s.tracked() <= MAX_TRACKED, "{}", s.tracked());
        drop(held);
    }
}
