//! A stored response and the moka policy (weigher, per-entry expiry) around it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::cache_control::CacheControl;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::rules::{self, AgeInputs, Freshness, Reuse};

/// After an upstream failure, stale entries are served without asking the
/// upstream again for this long, so an outage does not cost every request a
/// connect attempt or a timeout; it is also the back-off before a failed
/// stale-while-revalidate refresh is tried again.
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
    /// The last upstream failure while revalidating this entry.
    last_failure: Mutex<Option<(SystemTime, ProxyError)>>,
    /// A revalidation of this entry has stored its outcome.
    superseded: AtomicBool,
}

impl Entry {
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        ages: &AgeInputs,
        keep: Duration,
    ) -> Entry {
        let mut headers = owned(headers);
        headers.remove(header::AGE);
        let cc = CacheControl::from_values(headers.get_all(header::CACHE_CONTROL));
        let freshness =
            rules::limit_for_status(rules::freshness(&cc, &headers, ages.response_time), status);
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
            last_failure: Mutex::new(None),
            superseded: AtomicBool::new(false),
        }
    }

    /// RFC 9111 section 4.3.4: a 304 updates the stored header fields as section
    /// 3.2 says and restarts the freshness clock; the stored content is kept.
    /// The caller must check that the result is still storable (the 304 may add
    /// Set-Cookie, `private`, `no-store` or a Vary the key cannot honour).
    pub(crate) fn freshened(
        &self,
        not_modified: &HeaderMap,
        ages: &AgeInputs,
        keep: Duration,
    ) -> Entry {
        let mut headers = self.headers.clone();
        for name in not_modified.keys() {
            if !updated_by_304(name) {
                continue;
            }
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Entry::new(self.status, headers, self.body.clone(), ages, keep)
    }

    /// RFC 9111 section 3 applied to the stored fields as they are now (after a
    /// 304 merged new ones in), for the anonymous fill that keeps the entry.
    pub(crate) fn still_storable(&self, key: &CacheKey) -> Result<(), rules::NoStoreReason> {
        let cc = CacheControl::from_values(self.headers.get_all(header::CACHE_CONTROL));
        rules::storable(
            rules::RequestFacts::default(),
            self.status,
            &self.headers,
            &cc,
        )?;
        if key.coding.admits(&self.headers) {
            Ok(())
        } else {
            Err(rules::NoStoreReason::UnexpectedEncoding)
        }
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

    /// Says that a revalidation of this entry has stored its outcome: a request
    /// that looked this entry up before then should look again, not revalidate it
    /// once more.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    pub(crate) fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
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

/// `headers` with every value in an allocation of its own.
///
/// hyper parses a response's field values as slices of the connection's read
/// buffer, which also holds the start of the body. A stored value would keep
/// that whole buffer (up to the body's size) alive for as long as the entry
/// lives: about twice the memory the weigher counts.
fn owned(headers: HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len());
    let mut name = None;
    for (next, value) in headers {
        if next.is_some() {
            name = next;
        }
        let Some(name) = &name else { continue };
        let mut own = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
            .unwrap_or_else(|_| value.clone());
        own.set_sensitive(value.is_sensitive());
        copy.append(name.clone(), own);
    }
    copy
}

/// RFC 9111 section 3.2: every field of a 304 replaces the stored one, except
/// - the fields a cache must not store (3.1): hop-by-hop fields and the proxy's
///   own authentication fields;
/// - Content-Length (3.2);
/// - the fields the stored content depends on (3.2 lets a cache keep those):
///   Content-Encoding (the key names the stored coding), Content-Type and
///   Content-Range, which describe the bytes we hold, not the 304.
fn updated_by_304(name: &HeaderName) -> bool {
    !(is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "content-length"
                | "content-encoding"
                | "content-type"
                | "content-range"
                | "proxy-authentication-info"
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn ages(at: SystemTime) -> AgeInputs {
        AgeInputs {
            request_time: at,
            response_time: at,
            date: Some(at),
            age: None,
        }
    }

    fn stored() -> (Entry, SystemTime) {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let entry = Entry::new(
            StatusCode::OK,
            headers(&[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("content-type", "application/atom+xml"),
                ("content-encoding", "gzip"),
                ("content-length", "5"),
                ("x-note", "old"),
            ]),
            Bytes::from_static(b"hello"),
            &ages(t0),
            Duration::from_secs(600),
        );
        (entry, t0)
    }

    #[test]
    fn a_stored_entry_keeps_no_slice_of_the_buffer_its_fields_were_parsed_from() {
        // As hyper does: the field values are slices of one read buffer that
        // also holds the start of the body.
        let buffer = Bytes::from(vec![b'a'; 256 * 1024]);
        let mut parsed = HeaderMap::new();
        for (name, range) in [("etag", 0..8), ("x-note", 8..16), ("x-note", 16..24)] {
            let value = HeaderValue::from_maybe_shared(buffer.slice(range)).expect("value");
            parsed.append(HeaderName::from_static(name), value);
        }
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(24..32)).expect("value");
        secret.set_sensitive(true);
        parsed.append(header::WWW_AUTHENTICATE, secret);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let entry = Entry::new(
            StatusCode::OK,
            parsed,
            Bytes::new(),
            &ages(t0),
            Duration::from_secs(600),
        );
        let inside = buffer.as_ptr_range();
        assert_eq!(entry.headers.len(), 4);
        assert_eq!(entry.headers.get_all("x-note").iter().count(), 2);
        assert!(entry.headers[header::WWW_AUTHENTICATE].is_sensitive());
        for (name, value) in &entry.headers {
            assert_eq!(value.as_bytes(), b"aaaaaaaa", "{name}");
            assert!(
                !inside.contains(&value.as_bytes().as_ptr()),
                "{name} still points into the parse buffer"
            );
        }
    }

    #[test]
    fn a_304_replaces_stored_fields_but_not_the_ones_describing_the_stored_bytes() {
        let (entry, t0) = stored();
        let later = t0 + Duration::from_secs(30);
        let fresh = entry.freshened(
            &headers(&[
                ("cache-control", "max-age=60"),
                ("x-note", "new"),
                ("x-note", "newer"),
                ("content-length", "0"),
                ("content-encoding", "identity"),
                ("content-type", "text/plain"),
                ("connection", "close"),
                ("keep-alive", "timeout=5"),
                ("age", "3"),
            ]),
            &AgeInputs {
                age: Some(3),
                ..ages(later)
            },
            Duration::from_secs(600),
        );
        let get = |name: &str| -> Vec<&str> {
            fresh
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect()
        };
        assert_eq!(get("cache-control"), ["max-age=60"]);
        assert_eq!(get("x-note"), ["new", "newer"]);
        assert_eq!(get("content-length"), ["5"]);
        assert_eq!(get("content-encoding"), ["gzip"]);
        assert_eq!(get("content-type"), ["application/atom+xml"]);
        assert_eq!(get("etag"), ["\"v1\""]);
        assert!(get("connection").is_empty() && get("keep-alive").is_empty());
        assert!(get("age").is_empty(), "Age is recomputed, never stored");
        assert_eq!(fresh.body, Bytes::from_static(b"hello"));
        assert_eq!(fresh.freshness.lifetime, Duration::from_secs(60));
        assert_eq!(
            fresh.age(later),
            Duration::from_secs(3),
            "the clock restarts"
        );
        assert_eq!(fresh.reuse(later), Reuse::Fresh);
    }

    #[test]
    fn a_304_can_make_the_stored_response_unstorable() {
        let (entry, t0) = stored();
        let key = CacheKey {
            route: std::sync::Arc::from("/svc"),
            path_and_query: "/feed".to_owned(),
            format: crate::key::Format::Atom,
            coding: crate::key::Coding::Gzip,
        };
        for (name, value, reason) in [
            ("set-cookie", "session=1", rules::NoStoreReason::SetCookie),
            (
                "cache-control",
                "private, max-age=60",
                rules::NoStoreReason::Private,
            ),
            ("cache-control", "no-store", rules::NoStoreReason::NoStore),
            ("vary", "Cookie", rules::NoStoreReason::VaryUnkeyed),
            ("vary", "*", rules::NoStoreReason::VaryStar),
        ] {
            let fresh = entry.freshened(&headers(&[(name, value)]), &ages(t0), Duration::ZERO);
            assert_eq!(fresh.still_storable(&key), Err(reason), "{name}: {value}");
        }
        let fine = entry.freshened(
            &headers(&[("cache-control", "max-age=5")]),
            &ages(t0),
            Duration::ZERO,
        );
        assert_eq!(fine.still_storable(&key), Ok(()));
    }
}
