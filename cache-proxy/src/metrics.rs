//! Counters exported at `/metrics` in the Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The gateway's counters; cheap to update from any task.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) stale: Counter,
    pub(crate) revalidations: Counter,
    pub(crate) upstream_requests: Counter,
    pub(crate) passes: Counter,
    pub(crate) long_polls: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) bytes_cached: Gauge<u64, AtomicU64>,
    pub(crate) entries: Gauge<u64, AtomicU64>,
    pub(crate) long_polls_waiting: Gauge<u64, AtomicU64>,
    pub(crate) in_flight_bytes: Gauge<u64, AtomicU64>,
    pub(crate) in_flight_bytes_peak: Gauge<u64, AtomicU64>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("cache_proxy");
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let hits = counter(
            &mut registry,
            "hits",
            "Requests answered from a fresh stored response",
        );
        let misses = counter(
            &mut registry,
            "misses",
            "Upstream fetches for keys with no stored response",
        );
        let coalesced = counter(
            &mut registry,
            "coalesced_waits",
            "Requests answered by another request's upstream exchange (fill, revalidation, long poll) instead of making their own",
        );
        let stale = counter(
            &mut registry,
            "stale_served",
            "Stale responses served (stale-while-revalidate or stale-if-error)",
        );
        let revalidations = counter(
            &mut registry,
            "revalidations",
            "Conditional requests sent upstream to validate a stale entry",
        );
        let upstream_requests = counter(
            &mut registry,
            "upstream_requests",
            "Requests sent to upstreams",
        );
        let passes = counter(
            &mut registry,
            "passes",
            "Requests passed through without the cache (methods, credentials)",
        );
        let long_polls = counter(
            &mut registry,
            "long_polls_forwarded",
            "Long polls sent upstream (each answers every request that joined it)",
        );
        let invalidations = counter(
            &mut registry,
            "invalidations",
            "Request targets invalidated by a successful unsafe request (RFC 9111 4.4)",
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::<u64, AtomicU64>::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let long_polls_waiting = gauge(
            &mut registry,
            "long_polls_waiting",
            "Requests waiting for a coalesced long poll",
        );
        let in_flight_bytes = gauge(
            &mut registry,
            "in_flight_bytes",
            "Response bytes buffered outside the cache (fills, long polls, errors)",
        );
        let in_flight_bytes_peak = gauge(
            &mut registry,
            "in_flight_bytes_peak",
            "The most response bytes ever buffered outside the cache at once",
        );
        let bytes_cached = Gauge::default();
        registry.register(
            "bytes_cached",
            "Weighted size of the stored responses in bytes",
            bytes_cached.clone(),
        );
        let entries = Gauge::default();
        registry.register("entries", "Number of stored responses", entries.clone());
        Metrics {
            registry,
            hits,
            misses,
            coalesced,
            stale,
            revalidations,
            upstream_requests,
            passes,
            long_polls,
            invalidations,
            bytes_cached,
            entries,
            long_polls_waiting,
            in_flight_bytes,
            in_flight_bytes_peak,
        }
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
