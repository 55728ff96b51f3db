//! Cache outcomes and the `Cache-Status` response header (RFC 9211).

use http::HeaderValue;

use crate::rules::NoStoreReason;

/// The cache's name in `Cache-Status` (RFC 9211 section 2: an identifier).
pub(crate) const CACHE_NAME: &str = "cache-proxy";

/// RFC 9211 section 2.2: why the request went forward to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// The cache was configured not to handle this request (credentials, long poll).
    Bypass,
    /// The method is not cacheable.
    Method,
    /// No stored response matched the key.
    UriMiss,
    /// A stored response was stale and had to be validated.
    Stale,
    /// A stored response could be used, but the request's semantics (request
    /// `Cache-Control`, a long poll) asked the upstream.
    Request,
}

impl Fwd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

/// Extra detail (RFC 9211 section 2.8) for the cases the parameters cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Served stale while a background revalidation runs (RFC 5861 section 3).
    StaleWhileRevalidate,
    /// Served stale because the upstream failed (RFC 5861 section 4).
    StaleIfError,
    /// A long poll (`Prefer: wait`), never stored.
    LongPoll,
    /// The request carried Authorization or Cookie.
    Credentials,
    /// The response was not stored, for this reason.
    NotStored(NoStoreReason),
}

impl Detail {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Detail::StaleWhileRevalidate => "stale-while-revalidate",
            Detail::StaleIfError => "stale-if-error",
            Detail::LongPoll => "long-poll",
            Detail::Credentials => "credentials",
            Detail::NotStored(reason) => reason.as_str(),
        }
    }
}

/// One `Cache-Status` list member. It is appended after the members the
/// upstream sent (RFC 9211 section 2: the list runs from the origin's side to
/// the client's).
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheStatus {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) stored: bool,
    /// RFC 9211 section 2.5: the request waited for another request's upstream
    /// exchange and was answered by it.
    pub(crate) collapsed: bool,
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<Detail>,
}

impl CacheStatus {
    pub(crate) fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    pub(crate) fn fwd(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    /// The member for a request that took part in an upstream exchange: the one
    /// that started it stored the result (if it was stored), the others were
    /// collapsed into it.
    pub(crate) fn exchange(fwd: Fwd, fwd_status: u16, started: bool, stored: bool) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            fwd_status: Some(fwd_status),
            stored: stored && started,
            collapsed: !started,
            ..Default::default()
        }
    }

    pub(crate) fn detail(mut self, detail: Detail) -> Self {
        self.detail = Some(detail);
        self
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut s = String::from(CACHE_NAME);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            s.push_str(&format!("; fwd-status={status}"));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            s.push_str(&format!("; ttl={ttl}"));
        }
        if let Some(detail) = self.detail {
            s.push_str("; detail=");
            s.push_str(detail.as_str());
        }
        HeaderValue::from_str(&s).expect("Cache-Status is built from ASCII tokens and digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_is_an_rfc_9211_list_member() {
        assert_eq!(
            CacheStatus::hit(3).header_value(),
            "cache-proxy; hit; ttl=3"
        );
        let miss = CacheStatus {
            fwd_status: Some(200),
            stored: true,
            ..CacheStatus::fwd(Fwd::UriMiss)
        };
        assert_eq!(
            miss.header_value(),
            "cache-proxy; fwd=uri-miss; fwd-status=200; stored"
        );
        let stale = CacheStatus::fwd(Fwd::Stale).detail(Detail::StaleIfError);
        assert_eq!(
            stale.header_value(),
            "cache-proxy; fwd=stale; detail=stale-if-error"
        );
        let bypass =
            CacheStatus::fwd(Fwd::Bypass).detail(Detail::NotStored(NoStoreReason::Private));
        assert_eq!(
            bypass.header_value(),
            "cache-proxy; fwd=bypass; detail=private"
        );
        assert_eq!(
            CacheStatus::exchange(Fwd::UriMiss, 200, false, true).header_value(),
            "cache-proxy; fwd=uri-miss; fwd-status=200; collapsed"
        );
        assert_eq!(
            CacheStatus::exchange(Fwd::Stale, 304, true, true).header_value(),
            "cache-proxy; fwd=stale; fwd-status=304; stored"
        );
    }
}
