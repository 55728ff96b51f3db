//! A small real origin that behaves like a feed server (DESIGN.md section 4):
//! a head with short freshness and a long poll, sealed archive pages, 404s with
//! `max-age=1`, endpoints behind Authorization, per-path request counters, an
//! `append` hook, and stop / restart on the same port.
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
            config,
            last,
            counts: Mutex::default(),
            waiting: AtomicU64::new(0),
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
        .route("/orders", any(orders))
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
        "base=http://{}/ host={} proto={} forwarded={} x-host={} original-url={} unkeyed={}",
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
    let cc = state.config.head_cache_control;
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
