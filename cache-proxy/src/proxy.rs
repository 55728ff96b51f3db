//! The request path: routing, the cache decisions, and forwarding upstream.
//!
//! Three ways through:
//! - **pass**: methods other than GET/HEAD, requests with credentials, long polls
//!   and other preferences go upstream with the client's fields (minus hop-by-hop
//!   and forwarding fields) and stream back; they never read the cache.
//! - **miss**: `moka::future::Cache::try_get_with` runs one upstream fetch per key
//!   however many requests wait for it; a response that must not be stored is
//!   handed to the request that fetched it and the waiters forward on their own.
//! - **stale**: `entry().and_try_compute_with` serialises the revalidations of a
//!   key; the first sends If-None-Match and stores the result (a 304 refreshes the
//!   stored headers and keeps the body), the waiters find the new entry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use url::Url;

use crate::cache_control::CacheControl;
use crate::config::{Config, Route};
use crate::entry::{Entry, EntryExpiry, strip_hop_by_hop};
use crate::error::ProxyError;
use crate::key::{CacheKey, Coding, Format};
use crate::metrics::Metrics;
use crate::rules::{self, AgeInputs, NoStoreReason, RequestFacts, Reuse};
use crate::status::{CacheStatus, Detail, Fwd};

/// Request fields a client may send that describe the path to the server; they
/// are never forwarded (the upstream builds links from its configured base URL,
/// and a cache in front must not let one client's value reach others).
const FORWARDING_FIELDS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
    "x-host",
];

/// Failure to build a [`Proxy`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `--route` was given.
    #[error("at least one route is needed")]
    NoRoutes,
    /// Two routes share a prefix.
    #[error("the route prefix {0:?} is given twice")]
    DuplicateRoute(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The gateway: routes, HTTP client, cache and counters. Cheap to clone; use it
/// as axum state through [`crate::router`].
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<(Arc<str>, Route)>,
    client: reqwest::Client,
    cache: Cache<CacheKey, Arc<Entry>>,
    /// Bytes stored since the last eviction pass we ran (see [`Proxy::settle`]).
    unsettled: AtomicU64,
    metrics: Metrics,
}

/// A response taken from upstream but not stored.
#[derive(Debug)]
struct Passed {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

/// An upstream error response (RFC 5861 section 4 "error"), kept whole so it can
/// be shown to every waiting request when nothing stale is usable.
#[derive(Debug)]
struct ErrorResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug, Clone)]
enum FetchError {
    /// No usable response (connect error, timeout, broken body).
    Failed(ProxyError),
    /// The upstream answered 500, 502, 503 or 504.
    Status(Arc<ErrorResponse>),
    /// The response must not be stored (only seen by waiters of a miss).
    NotStored(NoStoreReason),
}

impl FetchError {
    fn as_proxy_error(&self) -> ProxyError {
        match self {
            FetchError::Failed(e) => e.clone(),
            FetchError::Status(r) => ProxyError::Upstream(format!("status {}", r.status)),
            FetchError::NotStored(reason) => {
                ProxyError::Internal(format!("not stored ({}) escaped", reason.as_str()))
            }
        }
    }
}

enum Fetched {
    Store(Entry),
    NotModified(HeaderMap, AgeInputs),
    Pass(Passed, NoStoreReason),
}

enum Revalidated {
    Entry(Arc<Entry>, CacheStatus),
    Passed(Passed, CacheStatus),
    Vanished,
}

impl Proxy {
    /// Builds the gateway from its configuration.
    pub fn new(config: Config) -> Result<Proxy, BuildError> {
        if config.routes.is_empty() {
            return Err(BuildError::NoRoutes);
        }
        let mut routes: Vec<(Arc<str>, Route)> = config
            .routes
            .iter()
            .map(|r| (Arc::from(r.prefix.as_str()), r.clone()))
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        if let Some(w) = routes.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicateRoute(w[0].0.to_string()));
        }
        // reqwest is built without a default rustls provider; installing fails
        // harmlessly when the embedding program already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_gzip()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        let cache = Cache::builder()
            .max_capacity(config.capacity.0)
            .weigher(|key: &CacheKey, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(EntryExpiry)
            .build();
        Ok(Proxy {
            inner: Arc::new(Inner {
                config,
                routes,
                client,
                cache,
                unsettled: AtomicU64::new(0),
                metrics: Metrics::new(),
            }),
        })
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Bytes held by the cache (moka's weighted size, after pending evictions).
    pub async fn cached_bytes(&self) -> u64 {
        self.inner.cache.run_pending_tasks().await;
        self.inner.cache.weighted_size()
    }

    /// The counters in the Prometheus text format.
    pub async fn metrics_text(&self) -> String {
        let bytes = self.cached_bytes().await;
        let m = &self.inner.metrics;
        m.bytes_cached.set(bytes);
        m.entries.set(self.inner.cache.entry_count());
        m.encode()
    }

    /// moka applies evictions in batches (every 64 writes or 300 ms), so a burst
    /// of large inserts could overshoot the capacity; once the bytes stored since
    /// the last pass could, run the pass now.
    async fn settle(&self, stored: u64) {
        let inner = &self.inner;
        let unsettled = inner.unsettled.fetch_add(stored, Ordering::AcqRel) + stored;
        if inner.cache.weighted_size() + unsettled > inner.config.capacity.0 {
            inner.unsettled.store(0, Ordering::Release);
            inner.cache.run_pending_tasks().await;
        }
    }

    fn route<'p>(&self, path: &'p str) -> Option<(&Arc<str>, &Route, &'p str)> {
        self.inner
            .routes
            .iter()
            .find_map(|(name, route)| route.strip(path).map(|rest| (name, route, rest)))
    }

    async fn handle(&self, req: Request) -> Result<Response, ProxyError> {
        let cfg = &self.inner.config;
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if target.len() as u64 > cfg.max_uri_bytes.0 {
            return Err(ProxyError::UriTooLong(cfg.max_uri_bytes.0));
        }
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes as u64 > cfg.max_header_bytes.0 {
            return Err(ProxyError::HeadersTooLarge(cfg.max_header_bytes.0));
        }
        let path = parts.uri.path();
        if has_dot_segment(path) {
            return Err(ProxyError::BadRequest(
                "the path contains a dot segment (. or ..)",
            ));
        }
        let Some((route_name, route, rest)) = self.route(path) else {
            return Err(ProxyError::NoRoute(path.to_owned()));
        };
        let url = upstream_url(&route.upstream, rest, parts.uri.query())?;
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);

        if parts.method != Method::GET && parts.method != Method::HEAD {
            let headers = pass_headers(&parts.headers, peer);
            let status = CacheStatus::fwd(Fwd::Method);
            return self
                .pass(
                    &parts.method,
                    url,
                    headers,
                    body,
                    cfg.upstream_timeout,
                    status,
                )
                .await;
        }
        let key = CacheKey {
            route: route_name.clone(),
            path_and_query,
            format: Format::negotiate(&parts.headers),
            coding: Coding::negotiate(&parts.headers),
        };
        if let Some(wait) = rules::prefer_wait(&parts.headers) {
            // Forwarded with a timeout that fits the wait, never stored, and
            // outside the cache's per-key locks, so it blocks nobody.
            let wait = Duration::from_secs(wait).min(cfg.max_long_poll);
            let headers = canonical(pass_headers(&parts.headers, peer), &key);
            let status = CacheStatus::fwd(Fwd::Bypass).detail(Detail::LongPoll);
            let timeout = wait + cfg.long_poll_grace;
            return self
                .pass(&parts.method, url, headers, Body::empty(), timeout, status)
                .await;
        }
        if parts.headers.contains_key("prefer") {
            let headers = canonical(pass_headers(&parts.headers, peer), &key);
            let status = CacheStatus::fwd(Fwd::Bypass).detail(Detail::Preference);
            return self
                .pass(
                    &parts.method,
                    url,
                    headers,
                    Body::empty(),
                    cfg.upstream_timeout,
                    status,
                )
                .await;
        }
        let facts = RequestFacts {
            authorization: parts.headers.contains_key(header::AUTHORIZATION),
            cookie: parts.headers.contains_key(header::COOKIE),
        };
        if facts.authorization || facts.cookie {
            return self.credentialed(&parts, peer, url, key, facts).await;
        }
        self.cached(&parts, url, key).await
    }

    /// GET/HEAD without credentials: answered from the cache when possible.
    async fn cached(&self, parts: &Parts, url: Url, key: CacheKey) -> Result<Response, ProxyError> {
        let now = SystemTime::now();
        let Some(entry) = self.inner.cache.get(&key).await else {
            return self.miss(parts, url, key).await;
        };
        let m = &self.inner.metrics;
        let ttl = rules::ttl_seconds(&entry.freshness, entry.age(now));
        match entry.reuse(now) {
            Reuse::Fresh => {
                m.hits.inc();
                Ok(answer(&entry, parts, CacheStatus::hit(ttl), now))
            }
            Reuse::StaleWhileRevalidate => {
                m.stale.inc();
                if entry.start_refresh() {
                    let this = self.clone();
                    let seen = entry.clone();
                    tokio::spawn(async move {
                        if let Err(err) = this.revalidate(key, url, seen).await {
                            let err = err.as_proxy_error();
                            tracing::debug!(fault = err.fault().as_str(), %err, "background revalidation failed");
                        }
                    });
                }
                let status = CacheStatus::hit(ttl).detail(Detail::StaleWhileRevalidate);
                Ok(answer(&entry, parts, status, now))
            }
            Reuse::Revalidate => match self
                .revalidate(key.clone(), url.clone(), entry.clone())
                .await
            {
                Ok(Revalidated::Entry(fresh, status)) => {
                    Ok(answer(&fresh, parts, status, SystemTime::now()))
                }
                Ok(Revalidated::Passed(passed, status)) => Ok(respond(passed, status, parts)),
                Ok(Revalidated::Vanished) => self.miss(parts, url, key).await,
                Err(err) => {
                    let now = SystemTime::now();
                    if entry.stale_if_error_allows(now) {
                        m.stale.inc();
                        let ttl = rules::ttl_seconds(&entry.freshness, entry.age(now));
                        let status = CacheStatus {
                            ttl: Some(ttl),
                            ..CacheStatus::fwd(Fwd::Stale)
                        }
                        .detail(Detail::StaleIfError);
                        Ok(answer(&entry, parts, status, now))
                    } else {
                        error_answer(err, Fwd::Stale, parts)
                    }
                }
            },
        }
    }

    /// No stored response: one upstream fetch per key, shared by all waiters.
    async fn miss(&self, parts: &Parts, url: Url, key: CacheKey) -> Result<Response, ProxyError> {
        let slot: Arc<Mutex<Option<(Passed, u16)>>> = Arc::default();
        let fetched_here: Arc<Mutex<bool>> = Arc::default();
        let init = {
            let (this, key, url) = (self.clone(), key.clone(), url.clone());
            let (slot, fetched_here) = (slot.clone(), fetched_here.clone());
            async move {
                set(&fetched_here, true);
                this.inner.metrics.misses.inc();
                match this.fetch(&key, &url, None).await? {
                    Fetched::Store(entry) => Ok(Arc::new(entry)),
                    Fetched::Pass(passed, reason) => {
                        let status = passed.status.as_u16();
                        set(&slot, Some((passed, status)));
                        Err(FetchError::NotStored(reason))
                    }
                    Fetched::NotModified(..) => Err(FetchError::Failed(ProxyError::Upstream(
                        "304 Not Modified to an unconditional request".to_owned(),
                    ))),
                }
            }
        };
        let result = self.inner.cache.try_get_with(key.clone(), init).await;
        let ours = take(&fetched_here);
        match result {
            Ok(entry) => {
                let now = SystemTime::now();
                let status = if ours {
                    self.settle(entry.weight(&key).into()).await;
                    CacheStatus {
                        fwd_status: Some(entry.status.as_u16()),
                        stored: true,
                        ..CacheStatus::fwd(Fwd::UriMiss)
                    }
                } else {
                    self.inner.metrics.coalesced.inc();
                    let ttl = rules::ttl_seconds(&entry.freshness, entry.age(now));
                    CacheStatus::hit(ttl).detail(Detail::Coalesced)
                };
                Ok(answer(&entry, parts, status, now))
            }
            Err(err) => match &*err {
                FetchError::NotStored(reason) => {
                    let status = CacheStatus::fwd(Fwd::UriMiss).detail(Detail::NotStored(*reason));
                    if let Some((passed, fwd_status)) = take(&slot) {
                        return Ok(respond(
                            passed,
                            CacheStatus {
                                fwd_status: Some(fwd_status),
                                ..status
                            },
                            parts,
                        ));
                    }
                    // A waiter: the response was for one request only; fetch our own.
                    let headers = canonical(HeaderMap::new(), &key);
                    let timeout = self.inner.config.upstream_timeout;
                    self.pass(&parts.method, url, headers, Body::empty(), timeout, status)
                        .await
                }
                other => error_answer(other.clone(), Fwd::UriMiss, parts),
            },
        }
    }

    /// Validates a stale entry with the upstream. Concurrent calls for one key
    /// run one after another (moka's per-key compute lock); all but the first
    /// find a newer entry and use it.
    async fn revalidate(
        &self,
        key: CacheKey,
        url: Url,
        seen: Arc<Entry>,
    ) -> Result<Revalidated, FetchError> {
        let slot: Arc<Mutex<Option<(Passed, CacheStatus)>>> = Arc::default();
        let outcome: Arc<Mutex<Option<CacheStatus>>> = Arc::default();
        let compute = {
            let (this, key, url, seen) = (self.clone(), key.clone(), url.clone(), seen.clone());
            let (slot, outcome) = (slot.clone(), outcome.clone());
            move |current: Option<moka::Entry<CacheKey, Arc<Entry>>>| async move {
                if let Some(current) = &current
                    && !Arc::ptr_eq(current.value(), &seen)
                {
                    return Ok(Op::Nop);
                }
                let now = SystemTime::now();
                if let Some(err) = seen.recent_failure(now) {
                    return Err(FetchError::Failed(err));
                }
                let keep = this.inner.config.keep;
                this.inner.metrics.revalidations.inc();
                let fetched = match this.fetch(&key, &url, seen.etag().cloned()).await {
                    Ok(fetched) => fetched,
                    Err(err) => {
                        seen.record_failure(now, err.as_proxy_error());
                        return Err(err);
                    }
                };
                let status = CacheStatus {
                    stored: true,
                    ..CacheStatus::fwd(Fwd::Stale)
                };
                match fetched {
                    Fetched::NotModified(headers, ages) => {
                        set(
                            &outcome,
                            Some(CacheStatus {
                                fwd_status: Some(304),
                                ..status
                            }),
                        );
                        Ok(Op::Put(Arc::new(seen.freshened(&headers, &ages, keep))))
                    }
                    Fetched::Store(entry) => {
                        set(
                            &outcome,
                            Some(CacheStatus {
                                fwd_status: Some(entry.status.as_u16()),
                                ..status
                            }),
                        );
                        Ok(Op::Put(Arc::new(entry)))
                    }
                    Fetched::Pass(passed, reason) => {
                        let status = CacheStatus {
                            fwd_status: Some(passed.status.as_u16()),
                            ..CacheStatus::fwd(Fwd::Stale).detail(Detail::NotStored(reason))
                        };
                        set(&slot, Some((passed, status)));
                        Ok(Op::Remove)
                    }
                }
            }
        };
        let result = self
            .inner
            .cache
            .entry(key)
            .and_try_compute_with(compute)
            .await?;
        Ok(match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => {
                let status = take(&outcome).unwrap_or_else(|| CacheStatus::fwd(Fwd::Stale));
                let weight = e.value().weight(e.key());
                self.settle(weight.into()).await;
                Revalidated::Entry(e.into_value(), status)
            }
            CompResult::Unchanged(e) => {
                self.inner.metrics.coalesced.inc();
                let entry = e.into_value();
                let ttl = rules::ttl_seconds(&entry.freshness, entry.age(SystemTime::now()));
                Revalidated::Entry(entry, CacheStatus::hit(ttl).detail(Detail::Coalesced))
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => match take(&slot) {
                Some((passed, status)) => Revalidated::Passed(passed, status),
                None => Revalidated::Vanished,
            },
        })
    }

    /// A cache fill (or revalidation) request: only the keyed fields go upstream.
    async fn fetch(
        &self,
        key: &CacheKey,
        url: &Url,
        validator: Option<HeaderValue>,
    ) -> Result<Fetched, FetchError> {
        let cfg = &self.inner.config;
        let mut headers = canonical(HeaderMap::new(), key);
        let conditional = validator.is_some();
        if let Some(etag) = validator {
            headers.insert(header::IF_NONE_MATCH, etag);
        }
        self.inner.metrics.upstream_requests.inc();
        let request_time = SystemTime::now();
        let failed = |e: reqwest::Error| {
            FetchError::Failed(ProxyError::from_reqwest(&e, cfg.upstream_timeout))
        };
        let response = self
            .inner
            .client
            .get(url.clone())
            .headers(headers)
            .timeout(cfg.upstream_timeout)
            .send()
            .await
            .map_err(failed)?;
        let response_time = SystemTime::now();
        let status = response.status();
        let mut headers = response.headers().clone();
        strip_hop_by_hop(&mut headers);
        let ages = AgeInputs::from_headers(&headers, request_time, response_time);
        if status == StatusCode::NOT_MODIFIED && conditional {
            return Ok(Fetched::NotModified(headers, ages));
        }
        let mut stream = response.bytes_stream();
        if rules::is_error_status(status) {
            let mut body = BytesMut::new();
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.map_err(failed)?);
                if body.len() as u64 > cfg.max_object_size.0 {
                    return Err(FetchError::Failed(ProxyError::Upstream(format!(
                        "oversized {status} response"
                    ))));
                }
            }
            return Err(FetchError::Status(Arc::new(ErrorResponse {
                status,
                headers,
                body: body.freeze(),
            })));
        }
        let verdict = store_verdict(
            RequestFacts::default(),
            status,
            &headers,
            key,
            cfg.max_object_size.0,
            false,
        );
        if let Err(reason) = verdict {
            let body = Body::from_stream(stream);
            return Ok(Fetched::Pass(
                Passed {
                    status,
                    headers,
                    body,
                },
                reason,
            ));
        }
        let expected = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = BytesMut::with_capacity(expected);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(failed)?;
            if (body.len() + chunk.len()) as u64 > cfg.max_object_size.0 {
                // Too large after all (no or a wrong Content-Length): stream it.
                let prefix =
                    futures::stream::iter([Ok::<_, reqwest::Error>(body.freeze()), Ok(chunk)]);
                let body = Body::from_stream(prefix.chain(stream));
                return Ok(Fetched::Pass(
                    Passed {
                        status,
                        headers,
                        body,
                    },
                    NoStoreReason::TooLarge,
                ));
            }
            body.extend_from_slice(&chunk);
        }
        // The weigher counts the length; do not keep a larger buffer behind it.
        let body = if body.capacity() > body.len() + body.len() / 8 {
            Bytes::copy_from_slice(&body)
        } else {
            body.freeze()
        };
        Ok(Fetched::Store(Entry::new(
            status, headers, body, &ages, cfg.keep,
        )))
    }

    /// A GET/HEAD with Authorization or Cookie: never answered from the cache;
    /// the response is stored only if RFC 9111 section 3.5 allows it.
    async fn credentialed(
        &self,
        parts: &Parts,
        peer: Option<SocketAddr>,
        url: Url,
        key: CacheKey,
        facts: RequestFacts,
    ) -> Result<Response, ProxyError> {
        let cfg = &self.inner.config;
        let headers = canonical(pass_headers(&parts.headers, peer), &key);
        let conditional = headers.contains_key(header::IF_NONE_MATCH)
            || headers.contains_key(header::IF_MODIFIED_SINCE);
        let status = CacheStatus::fwd(Fwd::Bypass).detail(Detail::Credentials);
        if parts.method == Method::HEAD || conditional {
            return self
                .pass(
                    &parts.method,
                    url,
                    headers,
                    Body::empty(),
                    cfg.upstream_timeout,
                    status,
                )
                .await;
        }
        self.inner.metrics.passes.inc();
        self.inner.metrics.upstream_requests.inc();
        let request_time = SystemTime::now();
        let response = self
            .inner
            .client
            .get(url)
            .headers(headers)
            .timeout(cfg.upstream_timeout)
            .send()
            .await
            .map_err(|e| ProxyError::from_reqwest(&e, cfg.upstream_timeout))?;
        let response_time = SystemTime::now();
        let code = response.status();
        let mut upstream_headers = response.headers().clone();
        strip_hop_by_hop(&mut upstream_headers);
        // Only responses of a known, acceptable length are buffered here.
        let verdict = store_verdict(
            facts,
            code,
            &upstream_headers,
            &key,
            cfg.max_object_size.0,
            true,
        );
        let status = CacheStatus {
            fwd_status: Some(code.as_u16()),
            ..status
        };
        match verdict {
            Ok(()) => {
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| ProxyError::from_reqwest(&e, cfg.upstream_timeout))?;
                let ages = AgeInputs::from_headers(&upstream_headers, request_time, response_time);
                let entry = Arc::new(Entry::new(code, upstream_headers, body, &ages, cfg.keep));
                let weight = entry.weight(&key);
                self.inner.cache.insert(key, entry.clone()).await;
                self.settle(weight.into()).await;
                Ok(answer(
                    &entry,
                    parts,
                    CacheStatus {
                        stored: true,
                        ..status
                    },
                    SystemTime::now(),
                ))
            }
            Err(reason) => {
                let body = Body::from_stream(response.bytes_stream());
                let passed = Passed {
                    status: code,
                    headers: upstream_headers,
                    body,
                };
                Ok(respond(
                    passed,
                    status.detail(Detail::NotStored(reason)),
                    parts,
                ))
            }
        }
    }

    /// Forwards a request as is (minus hop-by-hop fields) and streams the answer.
    async fn pass(
        &self,
        method: &Method,
        url: Url,
        headers: HeaderMap,
        body: Body,
        timeout: Duration,
        status: CacheStatus,
    ) -> Result<Response, ProxyError> {
        self.inner.metrics.passes.inc();
        self.inner.metrics.upstream_requests.inc();
        let mut request = self
            .inner
            .client
            .request(method.clone(), url)
            .headers(headers);
        if body.size_hint().exact() != Some(0) {
            request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(timeout.as_millis())),
            Ok(result) => result.map_err(|e| ProxyError::from_reqwest(&e, timeout))?,
        };
        let code = response.status();
        let mut headers = response.headers().clone();
        strip_hop_by_hop(&mut headers);
        let body = if *method == Method::HEAD {
            Body::empty()
        } else {
            Body::from_stream(response.bytes_stream())
        };
        let passed = Passed {
            status: code,
            headers,
            body,
        };
        Ok(into_response(
            passed,
            CacheStatus {
                fwd_status: Some(code.as_u16()),
                ..status
            },
        ))
    }
}

/// The axum handler for every proxied path.
pub(crate) async fn handle(State(proxy): State<Proxy>, req: Request) -> Response {
    match proxy.handle(req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// Middleware: a request whose Content-Length exceeds `--max-body-size` gets
/// a 413 problem before any of it is read.
pub(crate) async fn declared_body_limit(
    State(proxy): State<Proxy>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = proxy.inner.config.max_body_size.0;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return ProxyError::PayloadTooLarge(limit).into_response();
    }
    next.run(req).await
}

/// The axum handler for `/metrics`.
pub(crate) async fn metrics(State(proxy): State<Proxy>) -> Response {
    let mut response = proxy.metrics_text().await.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// A response built from a stored entry, or a 304 when the client's
/// If-None-Match matches it (RFC 9110 section 13.1.2, RFC 9111 section 4.3.2).
fn answer(entry: &Entry, parts: &Parts, status: CacheStatus, now: SystemTime) -> Response {
    let age = HeaderValue::from(entry.age(now).as_secs());
    let not_modified = entry.status == StatusCode::OK
        && parts
            .headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|inm| rules::if_none_match_matches(inm, entry.etag()));
    let mut response = if not_modified {
        // RFC 9110 section 15.4.5: the fields a 200 would have carried that
        // matter for caches.
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let keep = [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ];
        for name in keep {
            for value in entry.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response
    } else {
        let body = if parts.method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(entry.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
    };
    response.headers_mut().insert(header::AGE, age);
    response.headers_mut().insert(
        HeaderName::from_static("cache-status"),
        status.header_value(),
    );
    response
}

fn into_response(passed: Passed, status: CacheStatus) -> Response {
    let mut response = Response::new(passed.body);
    *response.status_mut() = passed.status;
    *response.headers_mut() = passed.headers;
    response.headers_mut().insert(
        HeaderName::from_static("cache-status"),
        status.header_value(),
    );
    response
}

/// Like [`into_response`], without the body for HEAD (cache fills use GET).
fn respond(mut passed: Passed, status: CacheStatus, parts: &Parts) -> Response {
    if parts.method == Method::HEAD {
        passed.body = Body::empty();
    }
    into_response(passed, status)
}

/// The answer when an upstream failed and nothing stale is usable: its own 5xx
/// response if it sent one, otherwise a 502/504 problem.
fn error_answer(err: FetchError, fwd: Fwd, parts: &Parts) -> Result<Response, ProxyError> {
    match err {
        FetchError::Status(r) => {
            let passed = Passed {
                status: r.status,
                headers: r.headers.clone(),
                body: Body::from(r.body.clone()),
            };
            let status = CacheStatus {
                fwd_status: Some(r.status.as_u16()),
                ..CacheStatus::fwd(fwd)
            };
            Ok(respond(passed, status, parts))
        }
        other => Err(other.as_proxy_error()),
    }
}

/// Whether a response may be stored under `key`: RFC 9111 storability, the
/// content-coding the key asked for, and the object size limit.
fn store_verdict(
    facts: RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    key: &CacheKey,
    max_object_size: u64,
    require_length: bool,
) -> Result<(), NoStoreReason> {
    let cc = CacheControl::from_values(headers.get_all(header::CACHE_CONTROL));
    rules::storable(facts, status, headers, &cc)?;
    if !key.coding.admits(headers) {
        return Err(NoStoreReason::UnexpectedEncoding);
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match length {
        Some(length) if length > max_object_size => Err(NoStoreReason::TooLarge),
        None if require_length => Err(NoStoreReason::TooLarge),
        _ => Ok(()),
    }
}

/// The client's fields minus hop-by-hop and forwarding fields; X-Forwarded-For
/// is set to the peer address we saw, not to anything the client claimed.
fn pass_headers(client: &HeaderMap, peer: Option<SocketAddr>) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for name in FORWARDING_FIELDS {
        headers.remove(name);
    }
    if let Some(peer) = peer
        && let Ok(value) = HeaderValue::from_str(&peer.ip().to_string())
    {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    headers
}

/// Replaces Accept and Accept-Encoding with the key's canonical values.
fn canonical(mut headers: HeaderMap, key: &CacheKey) -> HeaderMap {
    headers.insert(header::ACCEPT, key.format.accept_header());
    headers.insert(header::ACCEPT_ENCODING, key.coding.accept_encoding_header());
    headers
}

/// The upstream URL: the route's base URL, the rest of the path, the query.
fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, ProxyError> {
    let mut s = base.as_str().trim_end_matches('/').to_owned();
    s.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    Url::parse(&s).map_err(|_| ProxyError::BadRequest("the request target is not a valid URL path"))
}

/// `.` or `..` segments, also percent-encoded: the upstream URL parser would
/// resolve them, so the path a client names would not be the path forwarded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    })
}

fn set<T>(slot: &Mutex<T>, value: T) {
    if let Ok(mut guard) = slot.lock() {
        *guard = value;
    }
}

fn take<T: Default>(slot: &Mutex<T>) -> T {
    slot.lock()
        .map(|mut guard| std::mem::take(&mut *guard))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_even_when_percent_encoded() {
        for path in ["/a/../b", "/a/./b", "/a/%2e%2E/b", "/.."] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/a/b", "/a/..b", "/feed/archive/1-100"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn the_upstream_url_joins_base_path_rest_and_query() {
        let base = Url::parse("http://127.0.0.1:8081").expect("url");
        let url = |rest, q| upstream_url(&base, rest, q).expect("valid").to_string();
        assert_eq!(url("/feed", None), "http://127.0.0.1:8081/feed");
        assert_eq!(url("", None), "http://127.0.0.1:8081/");
        assert_eq!(url("/feed", Some("a=1")), "http://127.0.0.1:8081/feed?a=1");
        let nested = Url::parse("http://h/base/").expect("url");
        assert_eq!(
            upstream_url(&nested, "/x", None).expect("valid").as_str(),
            "http://h/base/x"
        );
    }

    #[test]
    fn forwarding_fields_from_the_client_are_replaced() {
        let mut client = HeaderMap::new();
        client.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        client.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        client.insert("host", HeaderValue::from_static("evil.example"));
        client.insert("connection", HeaderValue::from_static("x-secret"));
        client.insert("x-secret", HeaderValue::from_static("1"));
        client.insert("authorization", HeaderValue::from_static("Bearer t"));
        let peer = SocketAddr::from(([10, 0, 0, 1], 5000));
        let out = pass_headers(&client, Some(peer));
        assert_eq!(
            out.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.1"[..])
        );
        for gone in ["x-forwarded-host", "host", "connection", "x-secret"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert!(out.contains_key("authorization"));
    }
}
