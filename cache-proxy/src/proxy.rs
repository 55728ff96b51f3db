//! The request path: routing, the cache decisions, and forwarding upstream.
//!
//! Ways through:
//! - **pass**: methods other than GET/HEAD go upstream with the client's fields
//!   (minus hop-by-hop and forwarding fields) and stream back; a successful
//!   unsafe one invalidates what is stored for its target (`invalidate`).
//! - **credentials**: a GET/HEAD with Authorization or Cookie never reads the
//!   cache. An unconditional GET is forwarded like a cache fill (the keyed fields
//!   plus the credentials, nothing else), so its response can be stored when RFC
//!   9111 section 3.5 allows without any unkeyed field having shaped it.
//! - **fill**: a miss, a stale entry and a stale-while-revalidate refresh start
//!   one upstream exchange per key (`flight`), which sends only the keyed fields
//!   (and our own If-None-Match) and stores the result. Every request for the key
//!   waits for that exchange: a request with a stale copy that stale-if-error
//!   allows waits at most `--stale-timeout` and then serves the copy, while the
//!   exchange carries on and stores what it gets.
//! - **long poll** (`poll`): concurrent long polls for one key, If-None-Match
//!   and wait share one upstream long poll.

mod invalidate;
mod poll;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use moka::future::Cache;
use url::Url;

use crate::budget::{Budget, Held};
use crate::cache_control::CacheControl;
use crate::config::{Config, Route};
use crate::entry::{Entry, EntryExpiry, strip_hop_by_hop};
use crate::error::ProxyError;
use crate::flight::{Flights, Ticket, WaitError};
use crate::key::{CacheKey, Coding, Format};
use crate::metrics::Metrics;
use crate::rules::{self, AgeInputs, NoStoreReason, RequestFacts, Reuse};
use crate::status::{CacheStatus, Detail, Fwd};
use crate::target;

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

/// Paths the gateway answers itself, ahead of every route.
pub(crate) const RESERVED_PATHS: [&str; 2] = ["/metrics", "/healthz"];

/// How much longer than an exchange's own upstream timeout a waiter waits for
/// its outcome (the exchange ends by its timeout; this only covers scheduling).
const FLIGHT_SLACK: Duration = Duration::from_secs(1);

/// Failure to build a [`Proxy`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `--route` was given.
    #[error("at least one route is needed")]
    NoRoutes,
    /// Two routes share a prefix.
    #[error("the route prefix {0:?} is given twice")]
    DuplicateRoute(String),
    /// A route prefix is a path the gateway answers itself.
    #[error("the route prefix {0:?} is reserved for the gateway itself (/metrics, /healthz)")]
    ReservedPrefix(String),
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
    /// Fills and revalidations in flight, one per key.
    fills: Arc<Flights<CacheKey, Filled>>,
    /// Upstream long polls in flight.
    polls: Arc<Flights<poll::PollKey, poll::Polled>>,
    /// Bytes buffered outside the cache.
    budget: Budget,
    /// When each recently invalidated target (route, path and query) was
    /// invalidated, so a fill that was under way then does not store the old
    /// representation afterwards.
    invalidated: Mutex<HashMap<(Arc<str>, String), Instant>>,
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
    _held: Held,
}

#[derive(Debug, Clone)]
enum FetchError {
    /// No usable response (connect error, timeout, broken body).
    Failed(ProxyError),
    /// The upstream answered 500, 502, 503 or 504.
    Status(Arc<ErrorResponse>),
}

impl FetchError {
    fn as_proxy_error(&self) -> ProxyError {
        match self {
            FetchError::Failed(e) => e.clone(),
            FetchError::Status(r) => ProxyError::Upstream(format!("status {}", r.status)),
        }
    }
}

enum Fetched {
    Store(Entry, Held),
    NotModified(HeaderMap, AgeInputs),
    Pass(Passed, NoStoreReason),
}

/// A body read from upstream.
enum Buffered {
    /// Whole, its bytes held from the in-flight budget.
    Whole(Bytes, Held),
    /// Too large for the object limit or the budget: streamed (what was read
    /// first), not stored.
    Streamed(Body, NoStoreReason),
}

/// The outcome of a fill, shared by every request that waited for it.
#[derive(Debug, Clone)]
enum Filled {
    /// A response to serve: stored, unless `unstored` says why not.
    Entry {
        entry: Arc<Entry>,
        fwd_status: u16,
        unstored: Option<NoStoreReason>,
    },
    /// A response that must not be stored: the first waiter to take it serves
    /// it, the others ask upstream on their own.
    NotStored {
        passed: Arc<Mutex<Option<Passed>>>,
        fwd_status: u16,
        reason: NoStoreReason,
    },
    Failed(FetchError),
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
        if let Some((prefix, _)) = routes
            .iter()
            .find(|(prefix, _)| RESERVED_PATHS.contains(&&**prefix))
        {
            return Err(BuildError::ReservedPrefix(prefix.to_string()));
        }
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        if let Some(w) = routes.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicateRoute(w[0].0.to_string()));
        }
        // reqwest is built without a default rustls provider; installing fails
        // harmlessly when the embedding program already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_gzip()
            .no_zstd()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            // The services close idle connections after their header read timeout;
            // reusing one as it closes would be a 502 for the client.
            .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
            .tcp_nodelay(true)
            .build()?;
        let cache = Cache::builder()
            .max_capacity(config.capacity.0)
            .weigher(|key: &CacheKey, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(EntryExpiry)
            .build();
        let budget = Budget::new(config.max_in_flight.0);
        Ok(Proxy {
            inner: Arc::new(Inner {
                config,
                routes,
                client,
                cache,
                unsettled: AtomicU64::new(0),
                metrics: Metrics::new(),
                fills: Arc::default(),
                polls: Arc::default(),
                budget,
                invalidated: Mutex::default(),
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
        let inner = &self.inner;
        let m = &inner.metrics;
        m.bytes_cached.set(bytes);
        m.entries.set(inner.cache.entry_count());
        m.long_polls_waiting.set(inner.polls.waiting() as u64);
        m.in_flight_bytes.set(inner.budget.in_use());
        m.in_flight_bytes_peak.set(inner.budget.peak());
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
        let raw_target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if raw_target.len() as u64 > cfg.max_uri_bytes.0 {
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
        let target = target::normalise(parts.uri.path(), parts.uri.query())
            .map_err(|e| ProxyError::BadRequest(e.as_str()))?;
        let Some((route_name, route, rest)) = self.route(&target.path) else {
            return Err(ProxyError::NoRoute(target.path));
        };
        let url = upstream_url(&route.upstream, rest, target.query.as_deref())?;
        let path_and_query = match &target.query {
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
            let response = self
                .pass(
                    &parts.method,
                    url,
                    headers,
                    body,
                    cfg.upstream_timeout,
                    status,
                )
                .await?;
            let code = response.status();
            if !is_safe(&parts.method) && (code.is_success() || code.is_redirection()) {
                self.invalidate_after(
                    &parts,
                    route_name,
                    route,
                    &path_and_query,
                    response.headers(),
                )
                .await;
            }
            return Ok(response);
        }
        let key = CacheKey {
            route: route_name.clone(),
            path_and_query,
            format: Format::negotiate(&parts.headers),
            coding: Coding::negotiate(&parts.headers),
        };
        let facts = RequestFacts {
            authorization: parts.headers.contains_key(header::AUTHORIZATION),
            cookie: parts.headers.contains_key(header::COOKIE),
        };
        let request = CacheControl::from_values(parts.headers.get_all(header::CACHE_CONTROL));
        // A long poll waits only for a client that names what it has; without
        // If-None-Match the origin answers at once, so the cache may too.
        if let Some(wait) = rules::prefer_wait(&parts.headers)
            && let Some(inm) = parts.headers.get(header::IF_NONE_MATCH).cloned()
        {
            let wait = wait.min(cfg.max_long_poll.as_secs());
            if facts.authorization || facts.cookie {
                return self.pass_long_poll(&parts, url, &key, wait, peer).await;
            }
            return self.long_poll(&parts, url, key, inm, wait, &request).await;
        }
        if facts.authorization || facts.cookie {
            return self.credentialed(&parts, peer, url, key, facts).await;
        }
        self.cached(&parts, url, key, &request).await
    }

    /// GET/HEAD without credentials: answered from the cache when possible.
    async fn cached(
        &self,
        parts: &Parts,
        url: Url,
        key: CacheKey,
        request: &CacheControl,
    ) -> Result<Response, ProxyError> {
        let now = SystemTime::now();
        let Some(entry) = self.inner.cache.get(&key).await else {
            if request.only_if_cached {
                return Err(ProxyError::NotCached);
            }
            if request.no_store {
                return self.unstored(parts, url, &key, Fwd::UriMiss).await;
            }
            return self.miss(parts, url, key).await;
        };
        let m = &self.inner.metrics;
        let age = entry.age(now);
        let ttl = rules::ttl_seconds(&entry.freshness, age);
        match rules::reuse_for_request(&entry.freshness, age, request) {
            Reuse::Fresh => Ok(self.fresh_hit(&entry, parts, now, None)),
            Reuse::StaleWhileRevalidate => {
                m.stale.inc();
                // One refresh at a time (the flight), and none for a second
                // after one failed, then it is tried again.
                if entry.recent_failure(now).is_none() {
                    drop(self.fill_ticket(&key, &url, Some(&entry), || false));
                }
                let status = CacheStatus::hit(ttl).detail(Detail::StaleWhileRevalidate);
                Ok(answer(&entry, parts, status, now))
            }
            Reuse::Revalidate => {
                // `request` when the entry was usable but the client asked to
                // validate it, `stale` when it had expired.
                let fwd = if entry.reuse(now) == Reuse::Revalidate {
                    Fwd::Stale
                } else {
                    Fwd::Request
                };
                if request.only_if_cached {
                    return Err(ProxyError::NotCached);
                }
                if request.no_store {
                    return self.unstored(parts, url, &key, fwd).await;
                }
                self.revalidate(parts, url, key, entry, fwd).await
            }
        }
    }

    /// Joins or starts the fill of `key` (a revalidation when `seen` is given).
    fn fill_ticket(
        &self,
        key: &CacheKey,
        url: &Url,
        seen: Option<&Arc<Entry>>,
        skip: impl FnOnce() -> bool,
    ) -> Option<Ticket<Filled>> {
        let exchange = {
            let this = self.clone();
            let (key, url, seen) = (key.clone(), url.clone(), seen.cloned());
            move || this.fill(key, url, seen)
        };
        self.inner.fills.join_or_start(key.clone(), skip, exchange)
    }

    /// No stored response: one fill per key, shared by all waiters.
    async fn miss(&self, parts: &Parts, url: Url, key: CacheKey) -> Result<Response, ProxyError> {
        let cache = &self.inner.cache;
        let ticket = match self.fill_ticket(&key, &url, None, || cache.contains_key(&key)) {
            Some(ticket) => ticket,
            None => {
                // A fill stored the entry between our lookup and now; use it
                // if it may be used as is, otherwise fetch anew.
                if let Ok(hit) = self.stored_since(&key, parts).await {
                    return Ok(hit);
                }
                self.fill_ticket(&key, &url, None, || false)
                    .ok_or_else(|| ProxyError::Internal("a fill was skipped twice".to_owned()))?
            }
        };
        let started = ticket.started;
        let limit = self.inner.config.upstream_timeout + FLIGHT_SLACK;
        match ticket.wait(limit).await {
            Ok(Filled::Entry {
                entry,
                fwd_status,
                unstored,
            }) => {
                let status = self.exchange_status(Fwd::UriMiss, fwd_status, started, unstored);
                Ok(answer(&entry, parts, status, SystemTime::now()))
            }
            Ok(Filled::NotStored {
                passed,
                fwd_status,
                reason,
            }) => {
                self.not_stored(parts, url, &key, &passed, fwd_status, reason, Fwd::UriMiss)
                    .await
            }
            Ok(Filled::Failed(err)) => error_answer(err, Fwd::UriMiss, parts),
            Err(err) => Err(wait_error(err, limit)),
        }
    }

    /// The answer from `entry`, fresh as it is, counted as a hit.
    fn fresh_hit(
        &self,
        entry: &Entry,
        parts: &Parts,
        now: SystemTime,
        detail: Option<Detail>,
    ) -> Response {
        self.inner.metrics.hits.inc();
        let mut status = CacheStatus::hit(rules::ttl_seconds(&entry.freshness, entry.age(now)));
        if let Some(detail) = detail {
            status = status.detail(detail);
        }
        answer(entry, parts, status, now)
    }

    /// What a fill stored for `key` after this request looked: a hit if it may be
    /// used as it is, otherwise the stored entry (if any) to go on with.
    async fn stored_since(
        &self,
        key: &CacheKey,
        parts: &Parts,
    ) -> Result<Response, Option<Arc<Entry>>> {
        let now = SystemTime::now();
        match self.inner.cache.get(key).await {
            Some(entry) if entry.reuse(now) == Reuse::Fresh => {
                Ok(self.fresh_hit(&entry, parts, now, None))
            }
            other => Err(other),
        }
    }

    /// A stale entry (or one the client wants validated): one revalidation per
    /// key; a waiter whose copy stale-if-error covers gives up after
    /// `--stale-timeout` and serves the copy.
    async fn revalidate(
        &self,
        parts: &Parts,
        url: Url,
        key: CacheKey,
        entry: Arc<Entry>,
        fwd: Fwd,
    ) -> Result<Response, ProxyError> {
        let cfg = &self.inner.config;
        let now = SystemTime::now();
        let stale_ok = entry.stale_if_error_allows(now);
        if let Some(err) = entry.recent_failure(now) {
            return if stale_ok {
                Ok(self.stale_if_error(&entry, parts))
            } else {
                Err(err)
            };
        }
        let ticket = match self.fill_ticket(&key, &url, Some(&entry), || entry.superseded()) {
            Some(ticket) => ticket,
            None => {
                // A revalidation of this copy ended between our lookup and now.
                let seen = match self.stored_since(&key, parts).await {
                    Ok(hit) => return Ok(hit),
                    Err(current) => current.unwrap_or_else(|| entry.clone()),
                };
                self.fill_ticket(&key, &url, Some(&seen), || false)
                    .ok_or_else(|| ProxyError::Internal("a revalidation was skipped".to_owned()))?
            }
        };
        let started = ticket.started;
        let limit = if stale_ok {
            cfg.stale_timeout
        } else {
            cfg.upstream_timeout + FLIGHT_SLACK
        };
        match ticket.wait(limit).await {
            Ok(Filled::Entry {
                entry: fresh,
                fwd_status,
                unstored,
            }) => {
                let status = self.exchange_status(fwd, fwd_status, started, unstored);
                Ok(answer(&fresh, parts, status, SystemTime::now()))
            }
            Ok(Filled::NotStored {
                passed,
                fwd_status,
                reason,
            }) => {
                self.not_stored(parts, url, &key, &passed, fwd_status, reason, fwd)
                    .await
            }
            Ok(Filled::Failed(_)) | Err(WaitError::TimedOut) if stale_ok => {
                Ok(self.stale_if_error(&entry, parts))
            }
            Ok(Filled::Failed(err)) => error_answer(err, fwd, parts),
            Err(err) => Err(wait_error(err, limit)),
        }
    }

    /// The Cache-Status of a request that took part in a fill.
    fn exchange_status(
        &self,
        fwd: Fwd,
        fwd_status: u16,
        started: bool,
        unstored: Option<NoStoreReason>,
    ) -> CacheStatus {
        if !started {
            self.inner.metrics.coalesced.inc();
        }
        let status = CacheStatus::exchange(fwd, fwd_status, started, unstored.is_none());
        match unstored {
            Some(reason) => status.detail(Detail::NotStored(reason)),
            None => status,
        }
    }

    /// RFC 5861 section 4: the stale copy, because the upstream failed or is
    /// slower than `--stale-timeout`.
    fn stale_if_error(&self, entry: &Entry, parts: &Parts) -> Response {
        self.inner.metrics.stale.inc();
        let now = SystemTime::now();
        let ttl = rules::ttl_seconds(&entry.freshness, entry.age(now));
        let status = CacheStatus {
            ttl: Some(ttl),
            ..CacheStatus::fwd(Fwd::Stale)
        }
        .detail(Detail::StaleIfError);
        answer(entry, parts, status, now)
    }

    /// A fill's response that may not be stored: served to the first waiter
    /// that takes it; the others ask upstream on their own, like a fill.
    #[allow(clippy::too_many_arguments)]
    async fn not_stored(
        &self,
        parts: &Parts,
        url: Url,
        key: &CacheKey,
        passed: &Mutex<Option<Passed>>,
        fwd_status: u16,
        reason: NoStoreReason,
        fwd: Fwd,
    ) -> Result<Response, ProxyError> {
        let status = CacheStatus::fwd(fwd).detail(Detail::NotStored(reason));
        if let Some(passed) = take(passed) {
            let status = CacheStatus {
                fwd_status: Some(fwd_status),
                ..status
            };
            return Ok(respond(passed, status, parts));
        }
        let headers = canonical(HeaderMap::new(), key);
        let timeout = self.inner.config.upstream_timeout;
        self.pass(&parts.method, url, headers, Body::empty(), timeout, status)
            .await
    }

    /// RFC 9111 section 5.2.1.5: a request that said `no-store` and needs the
    /// upstream is forwarded on its own, like a fill, and nothing is stored.
    async fn unstored(
        &self,
        parts: &Parts,
        url: Url,
        key: &CacheKey,
        fwd: Fwd,
    ) -> Result<Response, ProxyError> {
        let status = CacheStatus::fwd(fwd).detail(Detail::NotStored(NoStoreReason::RequestNoStore));
        let headers = canonical(HeaderMap::new(), key);
        let timeout = self.inner.config.upstream_timeout;
        self.pass(&parts.method, url, headers, Body::empty(), timeout, status)
            .await
    }

    /// The exchange behind a fill: fetch (conditionally when `seen` has an
    /// ETag), store, and say what every waiter should answer.
    async fn fill(self, key: CacheKey, url: Url, seen: Option<Arc<Entry>>) -> Filled {
        let started = Instant::now();
        let m = &self.inner.metrics;
        if seen.is_some() {
            m.revalidations.inc();
        } else {
            m.misses.inc();
        }
        let validator = seen.as_ref().and_then(|e| e.etag().cloned());
        let fetched = match self.fetch(&key, &url, validator).await {
            Ok(fetched) => fetched,
            Err(err) => {
                if let Some(seen) = &seen {
                    seen.record_failure(SystemTime::now(), err.as_proxy_error());
                }
                return Filled::Failed(err);
            }
        };
        // A revalidation that got an answer replaces (or removes) the copy it
        // started from once it has stored its outcome (when this is dropped);
        // requests still holding that copy look in the cache again.
        let _supersede = seen.clone().map(Supersede);
        match fetched {
            Fetched::NotModified(headers, ages) => {
                let Some(seen) = seen else {
                    return Filled::Failed(FetchError::Failed(ProxyError::Upstream(
                        "304 Not Modified to an unconditional request".to_owned(),
                    )));
                };
                let merged = seen.freshened(&headers, &ages, self.inner.config.keep);
                match merged.still_storable(&key) {
                    Ok(()) => {
                        let entry = Arc::new(merged);
                        let unstored = self.store(key, &entry, started).await;
                        Filled::Entry {
                            entry,
                            fwd_status: 304,
                            unstored,
                        }
                    }
                    Err(reason) => {
                        // RFC 9111 section 4.3.4: the stored response is
                        // updated, and as updated it may no longer be kept.
                        self.inner.cache.invalidate(&key).await;
                        let passed = Passed {
                            status: merged.status,
                            headers: merged.headers.clone(),
                            body: Body::from(merged.body.clone()),
                        };
                        Filled::NotStored {
                            passed: Arc::new(Mutex::new(Some(passed))),
                            fwd_status: 304,
                            reason,
                        }
                    }
                }
            }
            Fetched::Store(entry, held) => {
                let fwd_status = entry.status.as_u16();
                let entry = Arc::new(entry);
                let unstored = self.store(key, &entry, started).await;
                drop(held);
                Filled::Entry {
                    entry,
                    fwd_status,
                    unstored,
                }
            }
            Fetched::Pass(passed, reason) => {
                // The upstream's current answer may not be stored: the stale
                // copy must not be used any more either.
                if seen.is_some() {
                    self.inner.cache.invalidate(&key).await;
                }
                Filled::NotStored {
                    fwd_status: passed.status.as_u16(),
                    passed: Arc::new(Mutex::new(Some(passed))),
                    reason,
                }
            }
        }
    }

    /// Stores `entry` unless an unsafe request invalidated its target since the
    /// exchange began; returns why it was not stored.
    async fn store(
        &self,
        key: CacheKey,
        entry: &Arc<Entry>,
        started: Instant,
    ) -> Option<NoStoreReason> {
        if self.invalidated_since(&key, started) {
            return Some(NoStoreReason::Invalidated);
        }
        let weight = entry.weight(&key);
        self.inner.cache.insert(key, Arc::clone(entry)).await;
        self.settle(weight.into()).await;
        None
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
        if rules::is_error_status(status) {
            return match self
                .buffer(response, cfg.max_object_size.0)
                .await
                .map_err(failed)?
            {
                Buffered::Whole(body, held) => Err(FetchError::Status(Arc::new(ErrorResponse {
                    status,
                    headers,
                    body,
                    _held: held,
                }))),
                Buffered::Streamed(_, reason) => Err(FetchError::Failed(ProxyError::Upstream(
                    format!("status {status}, body not kept ({})", reason.as_str()),
                ))),
            };
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
            let body = Body::from_stream(response.bytes_stream());
            return Ok(Fetched::Pass(
                Passed {
                    status,
                    headers,
                    body,
                },
                reason,
            ));
        }
        match self
            .buffer(response, cfg.max_object_size.0)
            .await
            .map_err(failed)?
        {
            Buffered::Whole(body, held) => Ok(Fetched::Store(
                Entry::new(status, headers, body, &ages, cfg.keep),
                held,
            )),
            Buffered::Streamed(body, reason) => Ok(Fetched::Pass(
                Passed {
                    status,
                    headers,
                    body,
                },
                reason,
            )),
        }
    }

    /// Reads a response body whole, taking its bytes from the in-flight budget
    /// as they arrive; a body larger than `max`, or than the budget can hold, is
    /// streamed instead (the bytes read so far first).
    async fn buffer(
        &self,
        mut response: reqwest::Response,
        max: u64,
    ) -> Result<Buffered, reqwest::Error> {
        let budget = &self.inner.budget;
        let mut held = Budget::empty();
        let expected =
            usize::try_from(response.content_length().unwrap_or(0).min(max)).unwrap_or(usize::MAX);
        if !budget.grow(&mut held, expected) {
            let body = Body::from_stream(response.bytes_stream());
            return Ok(Buffered::Streamed(body, NoStoreReason::InFlightLimit));
        }
        let mut reserved = expected;
        let mut body = BytesMut::with_capacity(expected);
        while let Some(chunk) = response.chunk().await? {
            let len = body.len() + chunk.len();
            let reason = if len as u64 > max {
                Some(NoStoreReason::TooLarge)
            } else if len > reserved && !budget.grow(&mut held, len - reserved) {
                Some(NoStoreReason::InFlightLimit)
            } else {
                reserved = reserved.max(len);
                None
            };
            if let Some(reason) = reason {
                let prefix =
                    futures::stream::iter([Ok::<_, reqwest::Error>(body.freeze()), Ok(chunk)]);
                let body = Body::from_stream(prefix.chain(response.bytes_stream()));
                return Ok(Buffered::Streamed(body, reason));
            }
            body.extend_from_slice(&chunk);
        }
        // The weigher counts the length; do not keep a larger buffer behind it.
        let body = if body.capacity() > body.len() + body.len() / 8 {
            Bytes::copy_from_slice(&body)
        } else {
            body.freeze()
        };
        Ok(Buffered::Whole(body, held))
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
        let conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
            || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
        let status = CacheStatus::fwd(Fwd::Bypass).detail(Detail::Credentials);
        if parts.method == Method::HEAD || conditional {
            // Never stored, so the client's own fields may go along.
            let headers = canonical(pass_headers(&parts.headers, peer), &key);
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
        // Possibly stored: the keyed fields and the credentials, nothing else,
        // so no unkeyed field can shape what other clients may get.
        let mut headers = canonical(HeaderMap::new(), &key);
        for name in [header::AUTHORIZATION, header::COOKIE] {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        self.inner.metrics.passes.inc();
        self.inner.metrics.upstream_requests.inc();
        let started = Instant::now();
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
        let status = CacheStatus {
            fwd_status: Some(code.as_u16()),
            ..status
        };
        let verdict = store_verdict(
            facts,
            code,
            &upstream_headers,
            &key,
            cfg.max_object_size.0,
            false,
        );
        if let Err(reason) = verdict {
            let passed = Passed {
                status: code,
                headers: upstream_headers,
                body: Body::from_stream(response.bytes_stream()),
            };
            return Ok(respond(
                passed,
                status.detail(Detail::NotStored(reason)),
                parts,
            ));
        }
        let buffered = self
            .buffer(response, cfg.max_object_size.0)
            .await
            .map_err(|e| ProxyError::from_reqwest(&e, cfg.upstream_timeout))?;
        match buffered {
            Buffered::Whole(body, held) => {
                let ages = AgeInputs::from_headers(&upstream_headers, request_time, response_time);
                let entry = Arc::new(Entry::new(code, upstream_headers, body, &ages, cfg.keep));
                let unstored = self.store(key, &entry, started).await;
                drop(held);
                let status = match unstored {
                    Some(reason) => status.detail(Detail::NotStored(reason)),
                    None => CacheStatus {
                        stored: true,
                        ..status
                    },
                };
                Ok(answer(&entry, parts, status, SystemTime::now()))
            }
            Buffered::Streamed(body, reason) => {
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

/// The axum handler for `/healthz`: the gateway itself is up (a load balancer's
/// or Varnish's probe); it asks no upstream, so it is always cheap.
pub(crate) async fn health() -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        "ok\n",
    )
        .into_response()
}

/// RFC 9110 section 9.2.1.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn wait_error(err: WaitError, limit: Duration) -> ProxyError {
    match err {
        WaitError::TimedOut => ProxyError::UpstreamTimeout(limit.as_millis()),
        WaitError::Lost => {
            ProxyError::Internal("an upstream exchange ended without an outcome".to_owned())
        }
    }
}

fn cache_status_name() -> HeaderName {
    HeaderName::from_static("cache-status")
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
    response
        .headers_mut()
        .append(cache_status_name(), status.header_value());
    response
}

fn into_response(passed: Passed, status: CacheStatus) -> Response {
    let mut response = Response::new(passed.body);
    *response.status_mut() = passed.status;
    *response.headers_mut() = passed.headers;
    response
        .headers_mut()
        .append(cache_status_name(), status.header_value());
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
        FetchError::Failed(err) => Err(err),
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

/// The upstream URL: the route's base URL, the rest of the path, the query. The
/// URL parser must not change the (normalised) path or query, or the request
/// forwarded would not be the one keyed.
fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, ProxyError> {
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut s = base.as_str().trim_end_matches('/').to_owned();
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    let url = Url::parse(&s)
        .map_err(|_| ProxyError::BadRequest("the request target is not a valid URL path"))?;
    let expected_path = format!("{}{rest}", base.path().trim_end_matches('/'));
    if url.path() != expected_path || url.query() != query {
        return Err(ProxyError::BadRequest(
            "the request target cannot be forwarded unchanged",
        ));
    }
    Ok(url)
}

fn take<T: Default>(slot: &Mutex<T>) -> T {
    slot.lock()
        .map(|mut guard| std::mem::take(&mut *guard))
        .unwrap_or_default()
}

/// Marks a revalidated entry as superseded when dropped.
struct Supersede(Arc<Entry>);

impl Drop for Supersede {
    fn drop(&mut self) {
        self.0.supersede();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_url_joins_base_path_rest_and_query() {
        let base = Url::parse("http://127.0.0.1:8081").expect("url");
        let url = |rest, q| upstream_url(&base, rest, q).expect("valid").to_string();
        assert_eq!(url("/feed", None), "http://127.0.0.1:8081/feed");
        assert_eq!(url("", None), "http://127.0.0.1:8081/");
        assert_eq!(url("/feed", Some("a=1")), "http://127.0.0.1:8081/feed?a=1");
        assert_eq!(url("//feed", None), "http://127.0.0.1:8081//feed");
        assert_eq!(url("/a%2Fb", None), "http://127.0.0.1:8081/a%2Fb");
        let nested = Url::parse("http://h/base/").expect("url");
        assert_eq!(
            upstream_url(&nested, "/x", None).expect("valid").as_str(),
            "http://h/base/x"
        );
        // The WHATWG parser would encode `'` in a query: refused, not altered.
        assert!(upstream_url(&base, "/x", Some("a='1'")).is_err());
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
