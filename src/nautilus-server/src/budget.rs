//! The server-wide budget of buffered request-body bytes, taken as bytes
//! arrive (a declared `Content-Length` costs nothing until the body comes),
//! with a share that only small bodies may use: a flood of large bodies
//! leaves room for ordinary task requests.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A body this small (every ordinary task request) may also use the reserve.
pub const SMALL_BODY: usize = 64 * 1024;

/// The part of the budget kept for small bodies: one eighth.
const SMALL_SHARE_DIVISOR: usize = 8;

/// Bytes all request bodies together may hold.
#[derive(Debug)]
pub struct BodyBudget {
    total: usize,
    any: Arc<Semaphore>,
    small: Arc<Semaphore>,
}

/// Budget held by one body; returned on drop.
#[derive(Debug, Default)]
pub struct Held {
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl BodyBudget {
    /// `total` bytes, an eighth of them kept for small bodies.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        let small = total / SMALL_SHARE_DIVISOR;
        Self {
            total,
            any: Arc::new(Semaphore::new(total - small)),
            small: Arc::new(Semaphore::new(small)),
        }
    }

    /// Bytes held by bodies now.
    pub fn in_use(&self) -> usize {
        self.total - self.any.available_permits() - self.small.available_permits()
    }

    /// Grows `held` to `bytes` in all, for a body that will be at most
    /// `body_max` bytes long; false when the budget cannot cover it.
    pub fn grow(&self, held: &mut Held, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(held.bytes).filter(|m| *m > 0) else {
            return true;
        };
        let Ok(n) = u32::try_from(more) else {
            return false;
        };
        let permit = Arc::clone(&self.any)
            .try_acquire_many_owned(n)
            .or_else(|_| {
                if bytes <= SMALL_BODY {
                    Arc::clone(&self.small).try_acquire_many_owned(n)
                } else {
                    Err(tokio::sync::TryAcquireError::NoPermits)
                }
            });
        match permit {
            Ok(p) => {
                held.permits.push(p);
                held.bytes = bytes;
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_leave_the_small_share_alone() {
        let b = BodyBudget::new(8 * SMALL_BODY);
        let mut large = Held::default();
        assert!(b.grow(&mut large, 7 * SMALL_BODY));
        let mut larger = Held::default();
        assert!(
            !b.grow(&mut larger, 2 * SMALL_BODY),
            "only the small share is left"
        );
        let mut small = Held::default();
        assert!(b.grow(&mut small, 1024));
        assert!(b.grow(&mut small, SMALL_BODY));
        assert_eq!(b.in_use(), 8 * SMALL_BODY);
        drop(large);
        drop(small);
        assert_eq!(b.in_use(), 0);
    }
}
