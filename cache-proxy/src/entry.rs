//! A stored response and the moka policy (weigher, per-entry expiry) around it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};

use crate::cache_control::CacheControl;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::rules::{self, AgeInputs, Freshness, Reuse};

/// After an upstream failure, stale entries are served without asking the
/// upstream again for this long, so an outage does not cost every request a
/// connect attempt or a timeout.
const FAILURE_MEMO: Duration = Duration::from_secs(1);

/// A complete response held in the cache.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    /// End-to-end header fields as received (minus Age and hop-by-hop fields).
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) freshness: Freshness,
    /// RFC 9111 section 4.2.3 corrected_initial_age.
    pub(crate) initial_age: Duration,
    pub(crate) response_time: SystemTime,
    /// How long moka keeps the entry from insertion.
    pub(crate) retention: Duration,
    /// Set once a background revalidation has been started for this entry, so
    /// stale-while-revalidate refreshes it once, not once per request.
    refresh_started: AtomicBool,
    /// The last upstream failure while revalidating this entry.
    last_failure: Mutex<Option<(SystemTime, ProxyError)>>,
}

impl Entry {
    pub(crate) fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        ages: &AgeInputs,
        keep: Duration,
    ) -> Entry {
        headers.remove(header::AGE);
        let cc = CacheControl::from_values(headers.get_all(header::CACHE_CONTROL));
        let freshness = rules::freshness(&cc, &headers);
        let initial_age = rules::corrected_initial_age(ages);
        let retention = rules::retention(
            &freshness,
            initial_age,
            headers.contains_key(header::ETAG),
            keep,
        );
        Entry {
            status,
            headers,
            body,
            freshness,
            initial_age,
            response_time: ages.response_time,
            retention,
            refresh_started: AtomicBool::new(false),
            last_failure: Mutex::new(None),
        }
    }

    /// RFC 9111 section 4.3.4: a 304 updates the stored header fields (except
    /// the ones describing the content) and restarts the freshness clock; the
    /// stored content is kept.
    pub(crate) fn freshened(
        &self,
        not_modified: &HeaderMap,
        ages: &AgeInputs,
        keep: Duration,
    ) -> Entry {
        let mut headers = self.headers.clone();
        let content_fields: [HeaderName; 3] = [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::CONTENT_TYPE,
        ];
        for name in not_modified.keys() {
            if content_fields.contains(name) || is_hop_by_hop(name) {
                continue;
            }
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Entry::new(self.status, headers, self.body.clone(), ages, keep)
    }

    pub(crate) fn etag(&self) -> Option<&http::HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        rules::current_age(self.initial_age, self.response_time, now)
    }

    pub(crate) fn reuse(&self, now: SystemTime) -> Reuse {
        rules::reuse(&self.freshness, self.age(now))
    }

    pub(crate) fn stale_if_error_allows(&self, now: SystemTime) -> bool {
        rules::stale_if_error_allows(&self.freshness, self.age(now))
    }

    /// True exactly once per entry.
    pub(crate) fn start_refresh(&self) -> bool {
        !self.refresh_started.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn record_failure(&self, now: SystemTime, err: ProxyError) {
        if let Ok(mut slot) = self.last_failure.lock() {
            *slot = Some((now, err));
        }
    }

    /// The failure recorded less than [`FAILURE_MEMO`] ago, if any.
    pub(crate) fn recent_failure(&self, now: SystemTime) -> Option<ProxyError> {
        let slot = self.last_failure.lock().ok()?;
        let (at, err) = slot.as_ref()?;
        let elapsed = now.duration_since(*at).unwrap_or(Duration::ZERO);
        (elapsed < FAILURE_MEMO).then(|| err.clone())
    }

    /// Bytes this entry costs, for the moka weigher.
    pub(crate) fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        let total = self.body.len() + headers + key.weight() + std::mem::size_of::<Self>();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// RFC 9110 section 7.6.1: fields that describe one connection and are never
/// forwarded or stored.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop fields, including those named by `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// moka expiry: each entry lives for its own retention (RFC 9111 freshness plus
/// the stale windows), starting when it is inserted or replaced.
#[derive(Debug)]
pub(crate) struct EntryExpiry;

impl moka::Expiry<CacheKey, std::sync::Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &std::sync::Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.retention)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &std::sync::Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.retention)
    }
}
