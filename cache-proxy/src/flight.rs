//! Single flight: one upstream exchange per key, however many requests want it.
//!
//! The first request for a key spawns the exchange as its own task, so it runs
//! to the end (and stores its result) even if that client goes away, and holds
//! no lock while it runs; later requests for the same key subscribe to its
//! outcome. Each waiter decides for itself how long it waits (a request with a
//! usable stale copy waits briefly, then serves the copy), which is what a
//! per-key lock around the exchange could not offer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// An exchange in flight: its id (so only it removes its own key) and a handle
/// on its outcome, from which waiters subscribe.
type Running<V> = (u64, watch::Receiver<Option<V>>);

/// Exchanges in flight, by key.
#[derive(Debug)]
pub(crate) struct Flights<K, V> {
    running: Mutex<HashMap<K, Running<V>>>,
    next_id: AtomicU64,
    /// Tickets alive: requests waiting for (or about to read) an outcome.
    waiting: Arc<AtomicUsize>,
}

/// A subscription to one exchange.
#[derive(Debug)]
pub(crate) struct Ticket<V> {
    rx: watch::Receiver<Option<V>>,
    /// True for the request that started the exchange.
    pub(crate) started: bool,
    _waiting: Waiting,
}

#[derive(Debug)]
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Waiting {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a waiter got no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitError {
    /// The waiter's own limit passed first; the exchange goes on.
    TimedOut,
    /// The exchange's task ended without an outcome (it panicked).
    Lost,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Mutex::default(),
            next_id: AtomicU64::new(0),
            waiting: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the exchange for `key`, or starts `exchange` for it. `skip` is
    /// asked under the registry's lock before starting: if it says the work is
    /// no longer needed (another exchange just stored its result), `None` is
    /// returned and the caller looks again. The outcome is published before the
    /// key leaves the registry, so a request either joins the exchange or, if it
    /// comes later, finds what the exchange stored.
    pub(crate) fn join_or_start<F, Fut>(
        self: &Arc<Self>,
        key: K,
        skip: impl FnOnce() -> bool,
        exchange: F,
    ) -> Option<Ticket<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rx)) = running.get(&key) {
            return Some(Ticket {
                rx: rx.clone(),
                started: false,
                _waiting: Waiting::new(&self.waiting),
            });
        }
        if skip() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        running.insert(key.clone(), (id, rx.clone()));
        drop(running);
        let work = exchange();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Removes the key even if `work` panics, so a key is never stuck.
            let _leave = Leave {
                flights: &this,
                key: &key,
                id,
            };
            let outcome = work.await;
            let _ = tx.send(Some(outcome));
        });
        Some(Ticket {
            rx,
            started: true,
            _waiting: Waiting::new(&self.waiting),
        })
    }

    /// Whether an exchange for `key` is running.
    #[cfg(test)]
    pub(crate) fn is_running(&self, key: &K) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Requests holding a ticket right now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

struct Leave<'a, K: Hash + Eq, V> {
    flights: &'a Flights<K, V>,
    key: &'a K,
    id: u64,
}

impl<K: Hash + Eq, V> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut running = self
            .flights
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if running.get(self.key).is_some_and(|(id, _)| *id == self.id) {
            running.remove(self.key);
        }
    }
}

impl<V: Clone> Ticket<V> {
    /// The outcome, waiting at most `limit`.
    pub(crate) async fn wait(mut self, limit: Duration) -> Result<V, WaitError> {
        match tokio::time::timeout(limit, self.rx.wait_for(Option::is_some)).await {
            Err(_) => Err(WaitError::TimedOut),
            Ok(Err(_)) => Err(WaitError::Lost),
            Ok(Ok(outcome)) => outcome.clone().ok_or(WaitError::Lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_one_exchange_and_a_later_one_starts_anew() {
        let flights: Arc<Flights<u8, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let exchange = {
            let runs = runs.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = released.await;
                7
            }
        };
        let first = flights
            .join_or_start(1, || false, exchange)
            .expect("started");
        assert!(first.started);
        let tickets: Vec<_> = (0..10)
            .map(|_| {
                flights
                    .join_or_start(
                        1,
                        || false,
                        || async { unreachable!("joined, not started") },
                    )
                    .expect("joined")
            })
            .collect();
        assert!(tickets.iter().all(|t| !t.started));
        assert_eq!(flights.waiting(), 11);
        let early = flights
            .join_or_start(1, || false, || async { 0 })
            .expect("joined");
        assert_eq!(
            early.wait(Duration::from_millis(10)).await,
            Err(WaitError::TimedOut),
            "a waiter's own limit does not end the exchange"
        );
        release.send(()).expect("exchange waiting");
        for ticket in tickets {
            assert_eq!(ticket.wait(Duration::from_secs(5)).await, Ok(7));
        }
        assert_eq!(first.wait(Duration::from_secs(5)).await, Ok(7));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.waiting(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while flights.is_running(&1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the key is released"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            flights.join_or_start(1, || true, || async { 1 }).is_none(),
            "skipped"
        );
        let again = flights
            .join_or_start(1, || false, || async { 8 })
            .expect("new");
        assert!(again.started);
        assert_eq!(again.wait(Duration::from_secs(5)).await, Ok(8));
    }

    #[tokio::test]
    async fn an_exchange_that_panics_releases_its_key_and_its_waiters() {
        let flights: Arc<Flights<u8, u32>> = Arc::default();
        let ticket = flights
            .join_or_start(1, || false, || async { panic!("boom") })
            .expect("started");
        assert_eq!(
            ticket.wait(Duration::from_secs(5)).await,
            Err(WaitError::Lost)
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while flights.is_running(&1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the key is released"
            );
            tokio::task::yield_now().await;
        }
    }
}
