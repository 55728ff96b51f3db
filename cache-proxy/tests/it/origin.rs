//! A small real origin that behaves like a feed server (DESIGN.md section 4):
//! a head with short freshness and a long poll, sealed archive pages, 404s with
//! `max-age=1`, endpoints behind Authorization, per-path request counters, an
//! `append` hook, and stop / restart on the same port. Besides: items that
//! commands change (`/items/{id}`), responses that must not be shared
//! (`/kinds/{kind}`), an echo of the request target (`/echo/...`), a resource
//! whose failures the test controls (`/flaky`), one that fails once
//! (`/recovering/{id}`) and one that trickles a large body (`/trickle/{n}`).
//!
//! It is deliberately vulnerable to cache poisoning: it reflects Host and the
//! forwarding headers into its documents, the way a careless server builds
//! absolute links. The gateway in front must keep that from reaching others.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How the origin answers.
#[derive(Debug, Clone)]
pub(crate) struct OriginConfig {
    /// Cache-Control of the head.
    pub(crate) head_cache_control: &'static str,
    /// Events per sealed page.
    pub(crate) page_size: u64,
    /// Events in the log at start.
    pub(crate) initial_events: u64,
    /// Bytes of filler in every archive page body.
    pub(crate) page_bytes: usize,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            head_cache_control: "max-age=1, stale-while-revalidate=5, stale-if-error=86400",
            page_size: 10,
            initial_events: 25,
            page_bytes: 2_000,
        }
    }
}

/// Requests one path received, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    /// 200 responses with a body.
    pub(crate) full: u64,
    pub(crate) not_modified: u64,
}

struct OriginState {
    config: OriginConfig,
    last: watch::Sender<u64>,
    counts: Mutex<HashMap<String, Counts>>,
    /// Long polls currently parked.
    waiting: AtomicU64,
    /// Cache-Control of the head from now on (starts as the configured one).
    head_cache_control: Mutex<&'static str>,
    /// Version of each item, bumped by commands.
    items: Mutex<HashMap<String, u64>>,
    /// How `/flaky` answers.
    flaky: Mutex<Flaky>,
    /// Requests `/recovering/{id}` has seen, by id.
    recovering: Mutex<HashMap<String, u64>>,
}

/// How `/flaky` answers: `Cache-Control: max-age=1, stale-while-revalidate=2,
/// stale-if-error=60`, ETag `"flaky-{version}"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flaky {
    Healthy,
    /// Like `Healthy`, but with `max-age=60`: a version stored now stays fresh
    /// for the rest of a test.
    Steady,
    /// 500 with `Cache-Control: no-store`.
    Failing,
    /// Answers after 10 s.
    Slow,
}

type Running = (oneshot::Sender<()>, JoinHandle<()>);

pub(crate) struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    running: Mutex<Option<Running>>,
}

impl Origin {
    pub(crate) async fn start(config: OriginConfig) -> Origin {
        let (last, _) = watch::channel(config.initial_events);
        let state = Arc::new(OriginState {
            last,
            head_cache_control: Mutex::new(config.head_cache_control),
            counts: Mutex::default(),
            waiting: AtomicU64::new(0),
            items: Mutex::default(),
            flaky: Mutex::new(Flaky::Healthy),
            recovering: Mutex::default(),
            config,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let origin = Origin {
            addr,
            state,
            running: Mutex::new(None),
        };
        origin.run(listener);
        origin
    }

    fn run(&self, listener: TcpListener) {
        let app = router(self.state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .expect("origin serves");
        });
        *self.running.lock().expect("lock") = Some((tx, task));
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends `n` events and wakes long polls.
    pub(crate) fn append(&self, n: u64) -> u64 {
        self.state.last.send_modify(|last| *last += n);
        *self.state.last.borrow()
    }

    pub(crate) fn last_position(&self) -> u64 {
        *self.state.last.borrow()
    }

    /// Long polls parked at the origin right now.
    pub(crate) fn waiting(&self) -> u64 {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// Changes the head's Cache-Control for the answers that follow, so a test
    /// can make a refreshed copy stay fresh however slow the machine is.
    pub(crate) fn set_head_cache_control(&self, cc: &'static str) {
        *self.state.head_cache_control.lock().expect("lock") = cc;
    }

    pub(crate) fn set_flaky(&self, mode: Flaky) {
        *self.state.flaky.lock().expect("lock") = mode;
    }

    pub(crate) fn counts(&self, path: &str) -> Counts {
        self.state
            .counts
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    /// Stops listening and closes every connection.
    pub(crate) async fn stop(&self) {
        let running = self.running.lock().expect("lock").take();
        if let Some((tx, task)) = running {
            let _ = tx.send(());
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("origin stops within 10 s")
                .expect("origin task");
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn restart(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind origin port");
        self.run(listener);
    }
}

fn router(state: Arc<OriginState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CACHE_CONTROL, "no-store")], "origin index") }),
        )
        .route("/feed", get(head))
        .route("/feed/archive/{range}", get(archive))
        .route("/account", get(account))
        .route("/shared", get(shared))
        .route("/shared-reflect", get(shared_reflect))
        .route("/orders", any(orders))
        .route(
            "/healthz",
            get(|| async { ([(header::CACHE_CONTROL, "no-store")], "ok") }),
        )
        .route("/items/{id}", any(item))
        .route("/items/{id}/touch", any(touch_item))
        .route("/kinds/{kind}", get(kind))
        .route("/echo", get(echo))
        .route("/echo/{*rest}", get(echo))
        .route("/flaky", get(flaky))
        .route("/recovering/{id}", get(recovering))
        .route("/trickle/{n}", get(trickle))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                ([(header::CACHE_CONTROL, "max-age=60")], "finally")
            }),
        )
        .fallback(not_found)
        .with_state(state)
}

impl OriginState {
    fn count(&self, path: &str, f: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts.lock().expect("lock");
        f(counts.entry(path.to_owned()).or_default());
    }

    fn counts(&self, path: &str) -> Counts {
        self.counts
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fmt {
    Atom,
    Html,
}

fn negotiate(headers: &HeaderMap) -> (Fmt, bool) {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fmt = if accept.contains("text/html") && !accept.contains("application/atom+xml") {
        Fmt::Html
    } else {
        Fmt::Atom
    };
    let ae = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (
        fmt,
        ae.split(',')
            .any(|c| c.split(';').next().is_some_and(|c| c.trim() == "gzip")),
    )
}

/// What a careless server would put in its absolute links.
fn reflected(headers: &HeaderMap) -> String {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    format!(
        "base=http://{}/ host={} proto={} forwarded={} x-host={} original-url={} unkeyed={} agent={} prefer={}",
        headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        get("host"),
        get("x-forwarded-proto"),
        get("forwarded"),
        get("x-host"),
        get("x-original-url"),
        get("x-evil"),
        get("user-agent"),
        get("prefer"),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| {
            inm.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        })
}

fn document(
    status: StatusCode,
    fmt: Fmt,
    gzipped: bool,
    etag: &str,
    cache_control: &str,
    vary: &'static str,
    body: String,
) -> Response {
    let content_type = match fmt {
        Fmt::Atom => "application/atom+xml",
        Fmt::Html => "text/html; charset=utf-8",
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("etag"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(cache_control).expect("cc"),
    );
    headers.insert(header::VARY, HeaderValue::from_static(vary));
    let body = if gzipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        gzip(body.as_bytes())
    } else {
        body.into_bytes()
    };
    (status, headers, body).into_response()
}

fn not_modified(etag: &str, cache_control: &str, vary: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("etag"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(cache_control).expect("cc"),
    );
    headers.insert(header::VARY, HeaderValue::from_static(vary));
    (StatusCode::NOT_MODIFIED, headers).into_response()
}

fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    let prefer = headers.get("prefer")?.to_str().ok()?;
    prefer
        .split(',')
        .find_map(|p| p.trim().strip_prefix("wait=")?.parse().ok())
}

async fn head(State(state): State<Arc<OriginState>>, headers: HeaderMap) -> Response {
    const VARY: &str = "Accept, Accept-Encoding, Prefer";
    let (fmt, gzipped) = negotiate(&headers);
    let coding = if gzipped { "gzip" } else { "identity" };
    let fmt_name = if fmt == Fmt::Html { "html" } else { "atom" };
    let cc = *state.head_cache_control.lock().expect("lock");
    let etag_of = |last: u64| format!("\"h-{last}-{fmt_name}-{coding}\"");
    let mut last = *state.last.borrow();
    let mut applied = None;
    if etag_matches(&headers, &etag_of(last)) {
        if let Some(wait) = prefer_wait(&headers) {
            let wait = wait.min(30);
            applied = Some(wait);
            let mut rx = state.last.subscribe();
            state.waiting.fetch_add(1, Ordering::SeqCst);
            let changed =
                tokio::time::timeout(Duration::from_secs(wait), rx.wait_for(|l| *l != last)).await;
            state.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Ok(Ok(now)) = changed {
                last = *now;
            }
        }
        if etag_matches(&headers, &etag_of(last)) {
            state.count("/feed", |c| {
                c.requests += 1;
                c.not_modified += 1;
            });
            let mut response = not_modified(&etag_of(last), cc, VARY);
            if let Some(wait) = applied {
                response.headers_mut().insert(
                    "preference-applied",
                    HeaderValue::from_str(&format!("wait={wait}")).expect("ascii"),
                );
            }
            return response;
        }
    }
    state.count("/feed", |c| {
        c.requests += 1;
        c.full += 1;
    });
    let body = match fmt {
        Fmt::Atom => format!(
            "<feed><head/><last>{last}</last><!-- {} --></feed>",
            reflected(&headers)
        ),
        Fmt::Html => format!(
            "<html><body><h1>head</h1><p>last {last}</p><!-- {} --></body></html>",
            reflected(&headers)
        ),
    };
    let mut response = document(StatusCode::OK, fmt, gzipped, &etag_of(last), cc, VARY, body);
    if let Some(wait) = applied {
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_str(&format!("wait={wait}")).expect("ascii"),
        );
    }
    response
}

async fn archive(
    State(state): State<Arc<OriginState>>,
    Path(range): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/feed/archive/{range}");
    let size = state.config.page_size;
    let last = *state.last.borrow();
    let sealed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(from, to)| {
            *from >= 1 && to + 1 == from + size && *to <= last && (from - 1) % size == 0
        });
    let Some((from, to)) = sealed else {
        state.count(&path, |c| c.requests += 1);
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "max-age=1")],
            "no such sealed page",
        )
            .into_response();
    };
    const VARY: &str = "Accept, Accept-Encoding";
    const CC: &str = "max-age=31536000, immutable";
    let (fmt, gzipped) = negotiate(&headers);
    let coding = if gzipped { "gzip" } else { "identity" };
    let fmt_name = if fmt == Fmt::Html { "html" } else { "atom" };
    let etag = format!("\"p-{from}-{to}-{fmt_name}-{coding}\"");
    if etag_matches(&headers, &etag) {
        state.count(&path, |c| {
            c.requests += 1;
            c.not_modified += 1;
        });
        return not_modified(&etag, CC, VARY);
    }
    state.count(&path, |c| {
        c.requests += 1;
        c.full += 1;
    });
    let filler: String = format!("{from}-{to} ")
        .repeat(state.config.page_bytes / (format!("{from}-{to} ").len()) + 1);
    let filler = &filler[..state.config.page_bytes];
    let body = match fmt {
        Fmt::Atom => format!(
            "<feed><archive from=\"{from}\" to=\"{to}\"/><!-- {} --><x>{filler}</x></feed>",
            reflected(&headers)
        ),
        Fmt::Html => format!(
            "<html><body><h1>page {from}-{to}</h1><!-- {} --><p>{filler}</p></body></html>",
            reflected(&headers)
        ),
    };
    document(StatusCode::OK, fmt, gzipped, &etag, CC, VARY, body)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ").map(str::to_owned)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "who are you?",
    )
        .into_response()
}

/// Per-user data: `private`.
async fn account(State(state): State<Arc<OriginState>>, headers: HeaderMap) -> Response {
    state.count("/account", |c| c.requests += 1);
    let Some(token) = bearer(&headers) else {
        return unauthorized();
    };
    state.count("/account", |c| c.full += 1);
    (
        [(header::CACHE_CONTROL, "private, max-age=60")],
        format!("secret account of {token}"),
    )
        .into_response()
}

/// Behind Authorization but the same for everybody: `public` (RFC 9111 3.5).
async fn shared(State(state): State<Arc<OriginState>>, headers: HeaderMap) -> Response {
    state.count("/shared", |c| c.requests += 1);
    if bearer(&headers).is_none() {
        return unauthorized();
    }
    state.count("/shared", |c| c.full += 1);
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        "the shared price list",
    )
        .into_response()
}

/// Like `/shared`, but careless: reflects unkeyed request fields into the body.
async fn shared_reflect(State(state): State<Arc<OriginState>>, headers: HeaderMap) -> Response {
    state.count("/shared-reflect", |c| c.requests += 1);
    if bearer(&headers).is_none() {
        return unauthorized();
    }
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        format!("the shared price list <!-- {} -->", reflected(&headers)),
    )
        .into_response()
}

/// A command endpoint: echoes what it received.
async fn orders(
    State(state): State<Arc<OriginState>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.count("/orders", |c| c.requests += 1);
    let auth = bearer(&headers).unwrap_or_else(|| "-".to_owned());
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        format!("{method} by {auth}: {} bytes", body.len()),
    )
        .into_response()
}

async fn not_found(State(state): State<Arc<OriginState>>, uri: Uri) -> Response {
    state.count(uri.path(), |c| c.requests += 1);
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "max-age=1")],
        "not found",
    )
        .into_response()
}

/// `GET /items/{id}`: `max-age=60`, the body names the version. `PUT` (or any
/// other unsafe method) bumps the version and answers 200 with Content-Location.
async fn item(
    State(state): State<Arc<OriginState>>,
    Path(id): Path<String>,
    method: Method,
) -> Response {
    let path = format!("/items/{id}");
    state.count(&path, |c| c.requests += 1);
    let mut items = state.items.lock().expect("lock");
    let version = items.entry(id.clone()).or_insert(1);
    if method == Method::GET || method == Method::HEAD {
        state.count(&path, |c| c.full += 1);
        return (
            [
                (header::CACHE_CONTROL, "max-age=60".to_owned()),
                (header::ETAG, format!("\"item-{id}-{version}\"")),
            ],
            format!("item {id} version {version}"),
        )
            .into_response();
    }
    *version += 1;
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::CONTENT_LOCATION, path),
        ],
        format!("item {id} is now version {version}"),
    )
        .into_response()
}

/// `POST /items/{id}/touch`: bumps the item's version and answers 204 with an
/// absolute Location built from Host, as a service with a public base URL does.
async fn touch_item(
    State(state): State<Arc<OriginState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.count(&format!("/items/{id}/touch"), |c| c.requests += 1);
    *state
        .items
        .lock()
        .expect("lock")
        .entry(id.clone())
        .or_insert(1) += 1;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    (
        StatusCode::NO_CONTENT,
        [(header::LOCATION, format!("http://{host}/items/{id}"))],
    )
        .into_response()
}

/// `GET /kinds/{kind}`: a cacheable-looking response (`max-age=60`) with one
/// feature that forbids sharing it, or a 304 that adds one.
async fn kind(
    State(state): State<Arc<OriginState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/kinds/{kind}");
    state.count(&path, |c| c.requests += 1);
    let body = format!("kind {kind}");
    let mut response = ([(header::CACHE_CONTROL, "max-age=60")], body).into_response();
    let h = response.headers_mut();
    match kind.as_str() {
        "set-cookie" => {
            h.insert(
                header::SET_COOKIE,
                HeaderValue::from_static("session=secret"),
            );
        }
        "no-store" => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, max-age=60"),
            );
        }
        "private" => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=60"),
            );
        }
        "vary-star" => {
            h.insert(header::VARY, HeaderValue::from_static("*"));
        }
        "vary-user-agent" => {
            h.insert(header::VARY, HeaderValue::from_static("User-Agent"));
        }
        "aged" => {
            h.insert(header::AGE, HeaderValue::from_static("30"));
        }
        "missing-for-long" => {
            *response.status_mut() = StatusCode::NOT_FOUND;
            let h = response.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600, stale-if-error=600"),
            );
        }
        "upstream-status" => {
            h.insert("cache-status", HeaderValue::from_static("inner; hit"));
        }
        "cookie-on-304" => {
            const ETAG: &str = "\"cookie-on-304\"";
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
            h.insert(header::ETAG, HeaderValue::from_static(ETAG));
            if etag_matches(&headers, ETAG) {
                state.count(&path, |c| c.not_modified += 1);
                return (
                    StatusCode::NOT_MODIFIED,
                    [
                        (header::ETAG, ETAG),
                        (header::CACHE_CONTROL, "max-age=60"),
                        (header::SET_COOKIE, "session=from-304"),
                    ],
                )
                    .into_response();
            }
        }
        _ => {}
    }
    state.count(&path, |c| c.full += 1);
    response
}

/// `GET /echo/...`: `max-age=60`, the body is the request target the origin got.
async fn echo(State(state): State<Arc<OriginState>>, uri: Uri) -> Response {
    let target = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    state.count("/echo", |c| c.requests += 1);
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        format!("origin saw {target}"),
    )
        .into_response()
}

/// `GET /flaky`: see [`Flaky`].
async fn flaky(State(state): State<Arc<OriginState>>) -> Response {
    let mode = *state.flaky.lock().expect("lock");
    state.count("/flaky", |c| c.requests += 1);
    match mode {
        Flaky::Failing => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CACHE_CONTROL, "no-store")],
                "flaky failed",
            )
                .into_response();
        }
        Flaky::Slow => tokio::time::sleep(Duration::from_secs(10)).await,
        Flaky::Healthy | Flaky::Steady => {}
    }
    state.count("/flaky", |c| c.full += 1);
    let version = state.counts("/flaky").full;
    (
        [
            (
                header::CACHE_CONTROL,
                if mode == Flaky::Steady {
                    "max-age=60"
                } else {
                    "max-age=1, stale-while-revalidate=2, stale-if-error=60"
                }
                .to_owned(),
            ),
            (header::ETAG, format!("\"flaky-{version}\"")),
        ],
        format!("flaky version {version}"),
    )
        .into_response()
}

/// `GET /recovering/{id}`: the first request fails with a 500 that says
/// `no-store` (as a gateway's error does), later ones get `max-age=60` after
/// 200 ms.
async fn recovering(State(state): State<Arc<OriginState>>, Path(id): Path<String>) -> Response {
    let path = format!("/recovering/{id}");
    state.count(&path, |c| c.requests += 1);
    let seen = {
        let mut seen = state.recovering.lock().expect("lock");
        let n = seen.entry(id).or_insert(0);
        *n += 1;
        *n
    };
    if seen == 1 {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CACHE_CONTROL, "no-store")],
            "not yet",
        )
            .into_response();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    state.count(&path, |c| c.full += 1);
    ([(header::CACHE_CONTROL, "max-age=60")], "recovered").into_response()
}

/// `GET /trickle/{n}`: a `max-age=60` body of `n` KiB without Content-Length,
/// sent in 16 KiB chunks 20 ms apart, so many fills are in flight at once.
async fn trickle(State(state): State<Arc<OriginState>>, Path(n): Path<usize>) -> Response {
    state.count("/trickle", |c| c.requests += 1);
    let chunks = n.div_ceil(16);
    let stream = futures::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 16 << 10])),
            i + 1,
        ))
    });
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
