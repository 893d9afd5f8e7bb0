//! At most N tasks at once, at most M waiting; each running task owns a slot
//! number (which picks its uid when the runner is root).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::TaskError;

pub(crate) struct Limiter {
    permits: Arc<Semaphore>,
    /// Free slots, the longest free first: a slot's warm box has then had
    /// the most time to start.
    free_slots: Mutex<VecDeque<usize>>,
    waiting: AtomicUsize,
    max_queue: usize,
    /// Number of slots in use, observable so shutdown can wait for zero.
    running: tokio::sync::watch::Sender<usize>,
}

/// A held slot; released on drop.
pub(crate) struct Slot {
    index: usize,
    limiter: Arc<Limiter>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Return the slot number before the permit (dropped after this body), so
        // whoever gets the permit next finds a free slot.
        lock(&self.limiter.free_slots).push_back(self.index);
        self.limiter.running.send_modify(|n| *n -= 1);
    }
}

/// Decrements the waiting count however the wait ends (including cancellation).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data (a free list) stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Limiter {
    pub fn new(max_concurrent: usize, max_queue: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            free_slots: Mutex::new((0..max_concurrent).collect()),
            waiting: AtomicUsize::new(0),
            max_queue,
            running: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Takes a slot, waiting in the bounded queue if none is free.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, TaskError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(TaskError::ShuttingDown),
            Err(TryAcquireError::NoPermits) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(TaskError::Busy);
                }
                let _waiting = Waiting(&self.waiting);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| TaskError::ShuttingDown)?
            }
        };
        let index = lock(&self.free_slots).pop_front().ok_or_else(|| {
            TaskError::Internal("limiter has a permit but no free slot".to_owned())
        })?;
        self.running.send_modify(|n| *n += 1);
        Ok(Slot {
            index,
            limiter: self.clone(),
            _permit: permit,
        })
    }

    /// Takes a free slot without waiting or queueing, if there is one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let index = lock(&self.free_slots).pop_front()?;
        self.running.send_modify(|n| *n += 1);
        Some(Slot {
            index,
            limiter: self.clone(),
            _permit: permit,
        })
    }

    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Refuses new and waiting acquisitions; held slots stay valid.
    pub fn close(&self) {
        self.permits.close();
    }

    pub fn watch_running(&self) -> tokio::sync::watch::Receiver<usize> {
        self.running.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot free longest is handed out first (its warm box has had the
    /// most time to start), not the one just released.
    #[tokio::test]
    async fn the_slot_free_longest_comes_first() {
        let limiter = Limiter::new(3, 0);
        let a = limiter.acquire().await.unwrap();
        let b = limiter.acquire().await.unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        drop(b);
        drop(a);
        let slots: Vec<Slot> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
        let order: Vec<usize> = slots.iter().map(Slot::index).collect();
        assert_eq!(order, [2, 1, 0]);
    }

    #[tokio::test]
    async fn past_the_queue_is_busy_and_closed_is_shutting_down() {
        let limiter = Limiter::new(1, 1);
        let held = limiter.acquire().await.unwrap();
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.map(|s| s.index()) })
        };
        while limiter.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(limiter.acquire().await, Err(TaskError::Busy)));
        assert_eq!(limiter.running(), 1);
        limiter.close();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(TaskError::ShuttingDown)
        ));
        assert!(matches!(
            limiter.acquire().await,
            Err(TaskError::ShuttingDown)
        ));
        drop(held);
        assert_eq!((limiter.running(), limiter.queued()), (0, 0));
    }
}
