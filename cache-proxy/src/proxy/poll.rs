//! Long polls (DESIGN.md section 4, "Live tail"): a subscriber that has caught
//! up asks the head with `If-None-Match` and `Prefer: wait=N`, and the origin
//! holds the request until the next append or the timeout.
//!
//! Every concurrent long poll for the same key (route, path, format, coding),
//! the same If-None-Match and the same wait shares one upstream long poll: its
//! 200 (buffered once, within the in-flight budget) answers all of them and is
//! stored as the fresh head when it may be stored, its 304 answers all of them,
//! and a request that arrives while it is held joins it instead of starting
//! another. A long poll whose If-None-Match does not match the fresh head stored
//! here is answered with that head at once, as the origin would answer it. The
//! wait forwarded is capped at `--max-long-poll`, which the proxy's own timeout
//! covers, so an idle poll ends as the origin's 304, not as a 504.
//!
//! Long polls with credentials are not shared: they are forwarded on their own,
//! with the same cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use url::Url;

use super::{
    Buffered, FLIGHT_SLACK, Proxy, cache_status_name, canonical, pass_headers, store_verdict,
    wait_error,
};
use crate::budget::Held;
use crate::cache_control::CacheControl;
use crate::entry::{Entry, strip_hop_by_hop};
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::rules::{self, AgeInputs, NoStoreReason, RequestFacts, Reuse};
use crate::status::{CacheStatus, Detail, Fwd};

/// What makes two long polls the same upstream long poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PollKey {
    key: CacheKey,
    if_none_match: HeaderValue,
    wait: u64,
}

/// The outcome of one upstream long poll.
#[derive(Debug, Clone)]
pub(super) enum Polled {
    Answer(Arc<PollAnswer>),
    /// The answer was too large to buffer (object limit or in-flight budget):
    /// every waiter asks on its own.
    Unbuffered(NoStoreReason),
    Failed(ProxyError),
}

#[derive(Debug)]
pub(super) struct PollAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: bool,
    _held: Held,
}

/// `Prefer: wait=N`, the only preference a shared long poll forwards.
fn prefer_wait_value(wait: u64) -> HeaderValue {
    HeaderValue::try_from(format!("wait={wait}")).expect("ASCII letters and digits")
}

impl Proxy {
    /// A long poll without credentials: joins or starts the shared one.
    pub(super) async fn long_poll(
        &self,
        parts: &Parts,
        url: Url,
        key: CacheKey,
        if_none_match: HeaderValue,
        wait: u64,
        request: &CacheControl,
    ) -> Result<Response, ProxyError> {
        let cfg = &self.inner.config;
        // A client whose copy is not the fresh head stored here gets that head at
        // once, as a hit: the origin too would answer at once, having news for it.
        // Otherwise every client that comes back just after the head moved again
        // starts an upstream long poll of its own that returns at once.
        let now = SystemTime::now();
        if let Some(entry) = self.inner.cache.get(&key).await
            && entry.status == StatusCode::OK
            && !rules::if_none_match_matches(&if_none_match, entry.etag())
            && rules::reuse_for_request(&entry.freshness, entry.age(now), request) == Reuse::Fresh
        {
            return Ok(self.fresh_hit(&entry, parts, now, Some(Detail::LongPoll)));
        }
        let poll_key = PollKey {
            key: key.clone(),
            if_none_match: if_none_match.clone(),
            wait,
        };
        let exchange = {
            let this = self.clone();
            let (key, url, inm) = (key.clone(), url.clone(), if_none_match.clone());
            move || this.poll_upstream(key, url, inm, wait)
        };
        let ticket = self
            .inner
            .polls
            .join_or_start(poll_key, || false, exchange)
            .ok_or_else(|| ProxyError::Internal("a long poll was skipped".to_owned()))?;
        let started = ticket.started;
        let limit = Duration::from_secs(wait) + cfg.long_poll_grace + FLIGHT_SLACK;
        match ticket.wait(limit).await {
            Ok(Polled::Answer(answer)) => {
                if !started {
                    self.inner.metrics.coalesced.inc();
                }
                let status = CacheStatus::exchange(
                    Fwd::Request,
                    answer.status.as_u16(),
                    started,
                    answer.stored,
                )
                .detail(Detail::LongPoll);
                Ok(poll_response(&answer, parts, status))
            }
            Ok(Polled::Unbuffered(reason)) => {
                let mut headers = canonical(HeaderMap::new(), &key);
                headers.insert(header::IF_NONE_MATCH, if_none_match);
                headers.insert(HeaderName::from_static("prefer"), prefer_wait_value(wait));
                let status = CacheStatus::fwd(Fwd::Request).detail(Detail::NotStored(reason));
                let timeout = Duration::from_secs(wait) + cfg.long_poll_grace;
                self.pass(&parts.method, url, headers, Body::empty(), timeout, status)
                    .await
            }
            Ok(Polled::Failed(err)) => Err(err),
            Err(err) => Err(wait_error(err, limit)),
        }
    }

    /// A long poll with credentials: forwarded on its own, never stored, with
    /// the forwarded wait capped.
    pub(super) async fn pass_long_poll(
        &self,
        parts: &Parts,
        url: Url,
        key: &CacheKey,
        wait: u64,
        peer: Option<SocketAddr>,
    ) -> Result<Response, ProxyError> {
        let mut headers = canonical(pass_headers(&parts.headers, peer), key);
        headers.remove("prefer");
        if let Some(prefer) = rules::cap_prefer_wait(&parts.headers, wait) {
            headers.insert(HeaderName::from_static("prefer"), prefer);
        }
        let timeout = Duration::from_secs(wait) + self.inner.config.long_poll_grace;
        let status = CacheStatus::fwd(Fwd::Bypass).detail(Detail::Credentials);
        self.pass(&parts.method, url, headers, Body::empty(), timeout, status)
            .await
    }

    /// The shared upstream long poll.
    async fn poll_upstream(
        self,
        key: CacheKey,
        url: Url,
        if_none_match: HeaderValue,
        wait: u64,
    ) -> Polled {
        let cfg = &self.inner.config;
        let m = &self.inner.metrics;
        m.long_polls.inc();
        m.upstream_requests.inc();
        let mut headers = canonical(HeaderMap::new(), &key);
        headers.insert(header::IF_NONE_MATCH, if_none_match);
        headers.insert(HeaderName::from_static("prefer"), prefer_wait_value(wait));
        let timeout = Duration::from_secs(wait) + cfg.long_poll_grace;
        let started = Instant::now();
        let response = match self
            .inner
            .client
            .get(url)
            .headers(headers)
            .timeout(timeout)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return Polled::Failed(ProxyError::from_reqwest(&err, timeout)),
        };
        let response_time = SystemTime::now();
        let status = response.status();
        let mut headers = response.headers().clone();
        strip_hop_by_hop(&mut headers);
        let (body, held) = match self.buffer(response, cfg.max_object_size.0).await {
            Ok(Buffered::Whole(body, held)) => (body, held),
            Ok(Buffered::Streamed(_, reason)) => return Polled::Unbuffered(reason),
            Err(err) => return Polled::Failed(ProxyError::from_reqwest(&err, timeout)),
        };
        let mut stored = false;
        if status == StatusCode::OK {
            let mut fields = headers.clone();
            // Describes this exchange, not the stored head.
            fields.remove("preference-applied");
            let verdict = store_verdict(
                RequestFacts::default(),
                status,
                &fields,
                &key,
                cfg.max_object_size.0,
                false,
            );
            if verdict.is_ok() {
                // The origin held the request on purpose until it had news; that
                // wait is not time in transit, which is what RFC 9111 section
                // 4.2.3 adds to the age as response_delay.
                let ages = AgeInputs::from_headers(&fields, response_time, response_time);
                let entry = Arc::new(Entry::new(status, fields, body.clone(), &ages, cfg.keep));
                stored = self.store(key, &entry, started).await.is_none();
            }
        }
        Polled::Answer(Arc::new(PollAnswer {
            status,
            headers,
            body,
            stored,
            _held: held,
        }))
    }
}

fn poll_response(answer: &PollAnswer, parts: &Parts, status: CacheStatus) -> Response {
    let body = if parts.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(answer.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    response
        .headers_mut()
        .append(cache_status_name(), status.header_value());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_preference_is_exactly_the_capped_wait() {
        assert_eq!(prefer_wait_value(30), "wait=30");
        assert_eq!(prefer_wait_value(0), "wait=0");
    }
}
