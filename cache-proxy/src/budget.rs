//! The bytes of response bodies buffered outside the cache at one time.
//!
//! A cache fill, a coalesced long poll or an upstream error response is
//! buffered whole before it is stored or shared, and until then it is not part
//! of the cache's weighted size. Without a bound, many concurrent distinct
//! misses of large pages would each hold up to `--max-object-size`. Every
//! buffered chunk therefore takes its size from this budget first; when the
//! budget is spent the response is streamed to its client instead (and not
//! stored), so memory in flight never exceeds `--max-in-flight`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    total: u64,
    /// The most bytes ever held at once, for `/metrics` and tests.
    peak: AtomicU64,
}

/// Bytes held from the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub(crate) fn new(total: u64) -> Budget {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        Budget {
            permits: Arc::new(Semaphore::new(
                usize::try_from(total).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            total,
            peak: AtomicU64::new(0),
        }
    }

    /// Nothing held yet.
    pub(crate) fn empty() -> Held {
        Held { permit: None }
    }

    /// Adds `bytes` to `held` if the budget has them.
    pub(crate) fn grow(&self, held: &mut Held, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        let Ok(more) = Arc::clone(&self.permits).try_acquire_many_owned(n) else {
            return false;
        };
        match &mut held.permit {
            Some(permit) => permit.merge(more),
            None => held.permit = Some(more),
        }
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        true
    }

    /// Bytes held right now.
    pub(crate) fn in_use(&self) -> u64 {
        self.total
            .saturating_sub(self.permits.available_permits() as u64)
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_dropped_and_never_beyond_the_total() {
        let budget = Budget::new(100);
        let mut a = Budget::empty();
        assert!(budget.grow(&mut a, 60));
        let mut b = Budget::empty();
        assert!(!budget.grow(&mut b, 50), "60 + 50 > 100");
        assert!(budget.grow(&mut b, 40));
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        assert!(budget.grow(&mut b, 60));
        assert_eq!(budget.peak(), 100);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }
}
