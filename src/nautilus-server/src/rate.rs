//! How often the NSM may be asked for a document: a token bucket for all
//! clients together and one per client. On a real NSM every call is a
//! hypervisor round trip under the driver's one lock (which its hardware RNG
//! also takes); unbounded, one cheap request loop costs every other client
//! its attestation.
//!
//! Hand-written rather than `governor`'s keyed limiter: the refusal must say
//! when to come back (`Retry-After`), the per-client map must forget clients
//! whose bucket is full again (governor needs a periodic `retain_recent`),
//! and the whole is a few dozen lines.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::clients::ClientKey;
pub use crate::config::AttestationLimits;

/// Clients tracked at once before those whose bucket is full again are
/// forgotten (they carry no state a new entry would not have).
const MAX_TRACKED: usize = 4096;

/// Why an NSM call was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// This client asked faster than its share (429).
    Client(Duration),
    /// All clients together asked faster than the NSM is allowed (503).
    Server(Duration),
}

impl RateRefusal {
    /// As an answer, with the rate that was exceeded.
    pub fn into_error(self, limits: AttestationLimits) -> crate::error::EnclaveError {
        use crate::error::EnclaveError as E;
        match self {
            RateRefusal::Client(wait) => E::AttestationClientRate(limits.per_client_per_sec, wait),
            RateRefusal::Server(wait) => E::AttestationServerRate(limits.per_sec, wait),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
    }

    /// How long until one token is there (zero: now).
    fn wait(&self, rate: f64) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate.max(f64::MIN_POSITIVE))
        }
    }
}

/// The buckets: one for the server, one per client that asked recently.
#[derive(Debug)]
pub struct NsmRate {
    limits: AttestationLimits,
    inner: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    server: Bucket,
    clients: HashMap<ClientKey, Bucket>,
}

impl NsmRate {
    /// Full buckets under `limits`.
    pub fn new(limits: AttestationLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Buckets {
                server: Bucket::full(f64::from(limits.burst), Instant::now()),
                clients: HashMap::new(),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> AttestationLimits {
        self.limits
    }

    /// Takes one NSM call from the server's bucket and, when `client` is
    /// given, from that client's; takes nothing when either is empty.
    pub fn admit(&self, client: Option<ClientKey>) -> Result<(), RateRefusal> {
        self.admit_at(client, Instant::now())
    }

    /// [`NsmRate::admit`] at time `now`.
    pub fn admit_at(&self, client: Option<ClientKey>, now: Instant) -> Result<(), RateRefusal> {
        let l = self.limits;
        let (rate, burst) = (f64::from(l.per_sec), f64::from(l.burst));
        let (c_rate, c_burst) = (
            f64::from(l.per_client_per_sec),
            f64::from(l.per_client_burst),
        );
        let mut b = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if b.clients.len() >= MAX_TRACKED {
            b.clients.retain(|_, c| {
                let mut c = *c;
                c.refill(now, c_rate, c_burst);
                c.tokens < c_burst
            });
        }
        // The client's share first: a client over it must not drain the
        // server's bucket for everyone else.
        if let Some(key) = client {
            let c = b
                .clients
                .entry(key)
                .or_insert_with(|| Bucket::full(c_burst, now));
            c.refill(now, c_rate, c_burst);
            let wait = c.wait(c_rate);
            if !wait.is_zero() {
                return Err(RateRefusal::Client(wait));
            }
        }
        b.server.refill(now, rate, burst);
        let wait = b.server.wait(rate);
        if !wait.is_zero() {
            return Err(RateRefusal::Server(wait));
        }
        b.server.tokens -= 1.0;
        if let Some(c) = client.and_then(|key| b.clients.get_mut(&key)) {
            c.tokens -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(last: u8) -> ClientKey {
        ClientKey::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn limits() -> AttestationLimits {
        AttestationLimits {
            per_sec: 10,
            burst: 4,
            per_client_per_sec: 1,
            per_client_burst: 2,
            shared_for: Duration::ZERO,
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let r = NsmRate::new(limits());
        let t = Instant::now();
        r.admit_at(Some(key(1)), t).expect("1");
        r.admit_at(Some(key(1)), t).expect("2");
        let Err(RateRefusal::Client(wait)) = r.admit_at(Some(key(1)), t) else {
            panic!("a third call in the same instant was admitted")
        };
        assert_eq!(wait, Duration::from_secs(1));
        // Another client is not affected.
        r.admit_at(Some(key(2)), t).expect("another client");
        r.admit_at(Some(key(1)), t + Duration::from_secs(1))
            .expect("a second later");
    }

    #[test]
    fn all_clients_together_get_the_servers_rate() {
        let r = NsmRate::new(limits());
        let t = Instant::now();
        for i in 0..4 {
            r.admit_at(Some(key(i)), t).expect("within the burst");
        }
        assert_eq!(
            r.admit_at(Some(key(9)), t),
            Err(RateRefusal::Server(Duration::from_millis(100)))
        );
        // The refused client spent nothing: it is admitted once the server
        // has a token again.
        r.admit_at(Some(key(9)), t + Duration::from_millis(100))
            .expect("refilled");
    }
}
