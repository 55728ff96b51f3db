//! The feed's HTTP resources: an axum `Router` any service mounts.
//!
//! | resource | URL |
//! | --- | --- |
//! | head | `/feed` |
//! | sealed page | `/feed/archive/{from}-{to}` |
//! | event | `/feed/events/{position}` |
//! | stream head | `/streams/{stream}` |
//! | sealed stream page | `/streams/{stream}/archive/{from}-{to}` (by stream version) |
//!
//! Every URL also answers with a `.atom` suffix (the format chosen without
//! negotiation). Caching follows DESIGN.md section 4: sealed pages and events are
//! immutable for a year with strong ETags derived from their bytes (so the same page
//! has the same ETag after a restart and on every replica); the head's ETag is derived
//! from the last position without rendering anything, so a conditional poll costs one
//! indexed read. Each content-coding has its own ETag (RFC 9110 8.8.3.3), which is
//! why compression happens here rather than in a generic middleware. Rendered and
//! compressed immutable documents are kept in a memory cache bounded in bytes.
//!
//! Absolute links come from the configured base URL, never from the request's Host or
//! X-Forwarded-* headers, so a cache in front can never store a poisoned page.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::atom::{self, FeedMeta, Links};
use crate::event::{Event, Position, StreamId};
use crate::negotiate::{self, Coding, Format};
use crate::page::{Doc, PageLayout, PageRange, parse_position};
use crate::store::{EventLog, StoreError};

/// `Cache-Control` of sealed pages and events: they never change.
pub const IMMUTABLE: &str = "max-age=31536000, immutable";
/// `Cache-Control` of the head. Never `no-cache` / `max-age=0`: a cache must be able
/// to serve one fresh copy to many pollers and coalesce their misses.
pub const HEAD_CACHE: &str = "max-age=1, stale-while-revalidate=5, stale-if-error=86400";
/// `Cache-Control` of errors about documents that may exist soon.
pub const NOT_FOUND_CACHE: &str = "max-age=1";
const VARY: &str = "Accept, Accept-Encoding";
const VARY_HEAD: &str = "Accept, Accept-Encoding, Prefer";
/// Bumped whenever the Atom writer's output changes, so position-derived ETags change
/// with it.
const RENDER_VERSION: u32 = 1;

/// How a feed server is set up.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The public base URL of the service, e.g. `http://127.0.0.1:8080/sales`. All
    /// links are built from it.
    pub base_url: String,
    /// The publishing service's name (title and `atom:author`).
    pub name: String,
    /// Entries per sealed page; None keeps the log's stored size (or the default).
    pub page_size: Option<u64>,
    /// Bytes of rendered documents kept in memory.
    pub cache_bytes: u64,
}

impl FeedConfig {
    /// A config with the defaults for everything but the base URL and name.
    pub fn new(base_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            name: name.into(),
            page_size: None,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The state behind the feed routes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FeedServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: EventLog,
    base: String,
    name: String,
    feed_id: String,
    layout: PageLayout,
    stream_layout: PageLayout,
    /// Highest head position seen: anything at or below it exists for sure, so
    /// requests for immutable documents there need no head lookup.
    known_head: AtomicU64,
    base_tag: String,
    docs: moka::future::Cache<DocKey, Rendered>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DocKey {
    Page(PageRange, Coding),
    Event(Position, Coding),
    StreamPage(StreamId, PageRange, Coding),
}

#[derive(Debug, Clone)]
struct Rendered {
    body: Bytes,
    etag: Arc<str>,
}

impl FeedServer {
    /// Sets up the server for `log`, recording the page size in the log.
    pub async fn new(log: EventLog, config: FeedConfig) -> Result<Self, StoreError> {
        let layout = log.page_layout(config.page_size).await?;
        let stream_layout = PageLayout::uniform(layout.segments()[0].size);
        let base = config.base_url.trim_end_matches('/').to_owned();
        let digest = Sha256::digest(base.as_bytes());
        let base_tag = hex(&digest[..4]);
        let docs = moka::future::Cache::builder()
            .weigher(|_k: &DocKey, v: &Rendered| {
                u32::try_from(v.body.len() + 64).unwrap_or(u32::MAX)
            })
            .max_capacity(config.cache_bytes)
            .build();
        Ok(Self {
            inner: Arc::new(Inner {
                known_head: AtomicU64::new(0),
                feed_id: format!("{base}/feed"),
                log,
                base,
                name: config.name,
                layout,
                stream_layout,
                base_tag,
                docs,
            }),
        })
    }

    /// The log behind the feed.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// The page layout in force.
    pub fn layout(&self) -> &PageLayout {
        &self.inner.layout
    }

    /// The public base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The feed routes, ready to be merged into a service's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/feed", get(head))
            .route("/feed.atom", get(head_atom))
            .route("/feed/archive/{range}", get(archive))
            .route("/feed/events/{position}", get(event))
            .route("/streams/{stream}", get(stream_head))
            .route("/streams/{stream}/archive/{range}", get(stream_archive))
            .with_state(self.clone())
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        let head = self.inner.log.head().await?;
        self.inner.known_head.fetch_max(head, Ordering::Relaxed);
        Ok(head)
    }

    /// The head position, from memory when `at_least` is known to exist.
    async fn head_at_least(&self, at_least: Position) -> Result<Position, StoreError> {
        let known = self.inner.known_head.load(Ordering::Relaxed);
        if known >= at_least {
            Ok(known)
        } else {
            self.head_position().await
        }
    }

    fn url(&self, doc: Doc) -> String {
        match doc {
            Doc::Head => format!("{}/feed", self.inner.base),
            Doc::Page(r) => format!("{}/feed/archive/{r}", self.inner.base),
        }
    }

    fn stream_url(&self, stream: &StreamId, doc: Doc) -> String {
        match doc {
            Doc::Head => format!("{}/streams/{stream}", self.inner.base),
            Doc::Page(r) => format!("{}/streams/{stream}/archive/{r}", self.inner.base),
        }
    }

    fn links(&self, nav: &crate::page::Navigation, url: impl Fn(Doc) -> String) -> Links {
        Links {
            this: Some(url(nav.this)),
            current: Some(url(Doc::Head)),
            first: Some(url(nav.first)),
            prev_archive: nav.prev.map(|r| url(Doc::Page(r))),
            next_archive: nav.next.map(&url),
            related: None,
            up: None,
        }
    }

    async fn updated_before(&self, position: Position) -> Result<DateTime<Utc>, StoreError> {
        if position == 0 {
            return Ok(DateTime::<Utc>::UNIX_EPOCH);
        }
        Ok(self
            .inner
            .log
            .read_event(position)
            .await?
            .map_or(DateTime::<Utc>::UNIX_EPOCH, |e| e.occurred_at))
    }

    fn doc_url(&self, which: Which<'_>, doc: Doc) -> String {
        match which {
            Which::Log => self.url(doc),
            Which::Stream(stream) => self.stream_url(stream, doc),
        }
    }

    /// Renders the feed document `nav.this` of the log or of a stream.
    fn render_page(
        &self,
        which: Which<'_>,
        nav: &crate::page::Navigation,
        entries: &[Event],
        head: Option<Position>,
        empty_updated: DateTime<Utc>,
    ) -> String {
        let links = self.links(nav, |d| self.doc_url(which, d));
        let (mut title, id) = match which {
            Which::Log => (
                format!("{} events", self.inner.name),
                self.inner.feed_id.clone(),
            ),
            Which::Stream(stream) => (
                format!("{} stream {stream}", self.inner.name),
                self.stream_url(stream, Doc::Head),
            ),
        };
        let archive = matches!(nav.this, Doc::Page(_));
        if let Doc::Page(range) = nav.this {
            title = format!("{title} {range}");
        }
        atom::render_feed(
            &FeedMeta {
                id: &id,
                title: &title,
                author: &self.inner.name,
                base_url: &self.inner.base,
                links: &links,
                archive,
                head_position: head,
                empty_updated,
            },
            entries,
        )
    }
}

/// Which feed of the service a document belongs to.
#[derive(Debug, Clone, Copy)]
enum Which<'a> {
    /// The whole log.
    Log,
    /// One stream.
    Stream(&'a StreamId),
}

/// A request's representation choices.
struct Want {
    format: Format,
    explicit: bool,
    coding: Coding,
}

fn want(headers: &HeaderMap, suffix: Option<Format>) -> Want {
    let coding = negotiate::negotiate_coding(header_str(headers, header::ACCEPT_ENCODING));
    match suffix {
        Some(format) => Want {
            format,
            explicit: true,
            coding,
        },
        None => Want {
            format: negotiate::negotiate_format(header_str(headers, header::ACCEPT)),
            explicit: false,
            coding,
        },
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Splits a `.atom` / `.html` suffix off a path segment.
fn split_suffix(s: &str) -> (&str, Option<Format>) {
    if let Some(rest) = s.strip_suffix(".atom") {
        (rest, Some(Format::Atom))
    } else if let Some(rest) = s.strip_suffix(".html") {
        (rest, Some(Format::Html))
    } else {
        (s, None)
    }
}

/// Errors of the feed routes, as problem+json.
#[derive(Debug)]
enum FeedError {
    /// 404, cacheable for one second: the document may exist soon.
    NotFound(String),
    /// 406: a format this server does not render.
    NotAcceptable,
    /// 503: the database is unavailable.
    Unavailable(Arc<StoreError>),
}

impl From<StoreError> for FeedError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(Arc::new(e))
    }
}

impl IntoResponse for FeedError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(detail) => problem(StatusCode::NOT_FOUND, &detail, NOT_FOUND_CACHE),
            Self::NotAcceptable => problem(
                StatusCode::NOT_ACCEPTABLE,
                "this resource is available as application/atom+xml",
                NOT_FOUND_CACHE,
            ),
            Self::Unavailable(e) => {
                tracing::error!(error = %e, "feed request failed");
                let mut r = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event log is unavailable; retry shortly",
                    "no-store",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}

/// An RFC 9457 problem response.
pub fn problem(status: StatusCode, detail: &str, cache_control: &'static str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn not_found(what: impl Into<String>) -> FeedError {
    FeedError::NotFound(what.into())
}

async fn head(State(s): State<FeedServer>, headers: HeaderMap) -> Result<Response, FeedError> {
    serve_head(s, headers, None).await
}

async fn head_atom(State(s): State<FeedServer>, headers: HeaderMap) -> Result<Response, FeedError> {
    serve_head(s, headers, Some(Format::Atom)).await
}

async fn serve_head(
    s: FeedServer,
    headers: HeaderMap,
    suffix: Option<Format>,
) -> Result<Response, FeedError> {
    let w = want(&headers, suffix);
    if w.format == Format::Html && w.explicit {
        return Err(FeedError::NotAcceptable);
    }
    let inm = header_str(&headers, header::IF_NONE_MATCH).map(str::to_owned);
    let wait = negotiate::prefer_wait(
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    // Subscribe before reading the head, so an append in between is not missed.
    let rx = wait.map(|_| s.inner.log.watch());
    let mut head = s.head_position().await?;
    let mut etag = head_etag(&s, head, w.coding);
    let mut applied = None;
    if let (Some(inm), Some(wait)) = (&inm, wait)
        && negotiate::if_none_match(inm, &etag)
    {
        applied = Some(wait);
        drop(rx);
        head = s.inner.log.wait_for_append(head, wait).await?;
        s.inner.known_head.fetch_max(head, Ordering::Relaxed);
        etag = head_etag(&s, head, w.coding);
    }
    let location = format!("{}/feed{}", s.inner.base, Format::Atom.suffix());
    let mut common = vec![
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HEAD_CACHE.to_owned()),
        (header::VARY, VARY_HEAD.to_owned()),
        (header::CONTENT_LOCATION, location),
    ];
    if let Some(wait) = applied {
        common.push((
            header::HeaderName::from_static("preference-applied"),
            format!("wait={}", wait.as_secs()),
        ));
    }
    if let Some(inm) = &inm
        && negotiate::if_none_match(inm, &etag)
    {
        return Ok(not_modified(common));
    }
    let start = s.inner.layout.head_start(head);
    let entries = s.inner.log.read_range(start, head).await?;
    let empty_updated = if entries.is_empty() {
        s.updated_before(start - 1).await?
    } else {
        DateTime::<Utc>::UNIX_EPOCH
    };
    let nav = s.inner.layout.head_navigation(head);
    let xml = s.render_page(Which::Log, &nav, &entries, Some(head), empty_updated);
    let links = s.links(&nav, |d| s.url(d)).to_header();
    let body = encode(xml.into_bytes(), w.coding).await;
    Ok(document(
        body,
        w.coding,
        common,
        Some(links),
        atom::FEED_MEDIA_TYPE,
    ))
}

fn head_etag(s: &FeedServer, head: Position, coding: Coding) -> String {
    let start = s.inner.layout.head_start(head);
    format!(
        "\"h{head}-{start}.{}.v{RENDER_VERSION}.{}\"",
        s.inner.base_tag,
        coding.etag_tag()
    )
}

async fn archive(
    State(s): State<FeedServer>,
    Path(range): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (range_str, suffix) = split_suffix(&range);
    let w = want(&headers, suffix);
    if w.format == Format::Html && w.explicit {
        return Err(FeedError::NotAcceptable);
    }
    let range: PageRange = range_str
        .parse()
        .map_err(|e: crate::page::RangeError| not_found(e.to_string()))?;
    let head = s.head_at_least(range.to).await?;
    if s.inner.layout.is_filling_page(range, head) {
        return Ok(to_head(&s.url(Doc::Head)));
    }
    if !s.inner.layout.is_sealed_page(range, head) {
        return Err(not_found(format!(
            "{range} is not a sealed page of this feed"
        )));
    }
    let key = DocKey::Page(range, w.coding);
    let s2 = s.clone();
    let rendered = s
        .inner
        .docs
        .try_get_with(key, async move {
            let entries = s2.inner.log.read_range(range.from, range.to).await?;
            let nav = s2.inner.layout.page_navigation(range);
            let xml = s2.render_page(
                Which::Log,
                &nav,
                &entries,
                None,
                DateTime::<Utc>::UNIX_EPOCH,
            );
            Ok::<_, StoreError>(finish(xml, w.coding).await)
        })
        .await
        .map_err(FeedError::Unavailable)?;
    let nav = s.inner.layout.page_navigation(range);
    let links = s.links(&nav, |d| s.url(d)).to_header();
    let location = format!(
        "{}/feed/archive/{range}{}",
        s.inner.base,
        Format::Atom.suffix()
    );
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        location,
        Some(links),
        atom::FEED_MEDIA_TYPE,
    ))
}

async fn event(
    State(s): State<FeedServer>,
    Path(pos): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (pos_str, suffix) = split_suffix(&pos);
    let w = want(&headers, suffix);
    if w.format == Format::Html && w.explicit {
        return Err(FeedError::NotAcceptable);
    }
    let position = parse_position(pos_str)
        .filter(|p| *p > 0)
        .ok_or_else(|| not_found(format!("{pos_str:?} is not a position")))?;
    let head = s.head_at_least(position).await?;
    if position > head {
        return Err(not_found(format!("no event at position {position} yet")));
    }
    let s2 = s.clone();
    let rendered = s
        .inner
        .docs
        .try_get_with(DocKey::Event(position, w.coding), async move {
            let event = s2
                .inner
                .log
                .read_event(position)
                .await?
                .ok_or(StoreError::Corrupt {
                    position: position as i64,
                    reason: "missing below the head".into(),
                })?;
            let page = s2.inner.layout.page_of(position);
            let links = Links {
                this: Some(format!("{}/feed/events/{position}", s2.inner.base)),
                current: Some(s2.url(Doc::Head)),
                related: Some(s2.stream_url(&event.stream, Doc::Head)),
                up: Some(if page.to <= head {
                    s2.url(Doc::Page(page))
                } else {
                    s2.url(Doc::Head)
                }),
                ..Links::default()
            };
            let xml = atom::render_entry(&event, &s2.inner.name, &s2.inner.base, &links);
            Ok::<_, StoreError>(finish(xml, w.coding).await)
        })
        .await
        .map_err(FeedError::Unavailable)?;
    let location = format!(
        "{}/feed/events/{position}{}",
        s.inner.base,
        Format::Atom.suffix()
    );
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        location,
        None,
        "application/atom+xml;type=entry",
    ))
}

async fn stream_head(
    State(s): State<FeedServer>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (name, suffix) = split_suffix(&stream);
    let w = want(&headers, suffix);
    if w.format == Format::Html && w.explicit {
        return Err(FeedError::NotAcceptable);
    }
    let stream = StreamId::parse(name).map_err(|e| not_found(e.to_string()))?;
    let version = s.inner.log.stream_version(&stream).await?;
    if version == 0 {
        return Err(not_found(format!("no stream {stream}")));
    }
    let layout = &s.inner.stream_layout;
    let etag = format!(
        "\"s{version}.{}.{}.v{RENDER_VERSION}.{}\"",
        stream,
        s.inner.base_tag,
        w.coding.etag_tag()
    );
    let location = format!("{}/streams/{stream}{}", s.inner.base, Format::Atom.suffix());
    let common = vec![
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HEAD_CACHE.to_owned()),
        (header::VARY, VARY.to_owned()),
        (header::CONTENT_LOCATION, location),
    ];
    if let Some(inm) = header_str(&headers, header::IF_NONE_MATCH)
        && negotiate::if_none_match(inm, &etag)
    {
        return Ok(not_modified(common));
    }
    let start = layout.head_start(version);
    let entries = s.inner.log.read_stream(&stream, start, version).await?;
    let nav = layout.head_navigation(version);
    let xml = s.render_page(
        Which::Stream(&stream),
        &nav,
        &entries,
        None,
        DateTime::<Utc>::UNIX_EPOCH,
    );
    let links = s.links(&nav, |d| s.stream_url(&stream, d)).to_header();
    let body = encode(xml.into_bytes(), w.coding).await;
    Ok(document(
        body,
        w.coding,
        common,
        Some(links),
        atom::FEED_MEDIA_TYPE,
    ))
}

async fn stream_archive(
    State(s): State<FeedServer>,
    Path((stream, range)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (range_str, suffix) = split_suffix(&range);
    let w = want(&headers, suffix);
    if w.format == Format::Html && w.explicit {
        return Err(FeedError::NotAcceptable);
    }
    let stream = StreamId::parse(stream).map_err(|e| not_found(e.to_string()))?;
    let range: PageRange = range_str
        .parse()
        .map_err(|e: crate::page::RangeError| not_found(e.to_string()))?;
    let version = s.inner.log.stream_version(&stream).await?;
    let layout = s.inner.stream_layout.clone();
    if layout.is_filling_page(range, version) {
        return Ok(to_head(&s.stream_url(&stream, Doc::Head)));
    }
    if !layout.is_sealed_page(range, version) {
        return Err(not_found(format!(
            "{range} is not a sealed page of stream {stream}"
        )));
    }
    let s2 = s.clone();
    let st = stream.clone();
    let rendered = s
        .inner
        .docs
        .try_get_with(
            DocKey::StreamPage(stream.clone(), range, w.coding),
            async move {
                let entries = s2.inner.log.read_stream(&st, range.from, range.to).await?;
                let nav = layout.page_navigation(range);
                let xml = s2.render_page(
                    Which::Stream(&st),
                    &nav,
                    &entries,
                    None,
                    DateTime::<Utc>::UNIX_EPOCH,
                );
                Ok::<_, StoreError>(finish(xml, w.coding).await)
            },
        )
        .await
        .map_err(FeedError::Unavailable)?;
    let nav = s.inner.stream_layout.page_navigation(range);
    let links = s.links(&nav, |d| s.stream_url(&stream, d)).to_header();
    let location = format!(
        "{}/streams/{stream}/archive/{range}{}",
        s.inner.base,
        Format::Atom.suffix()
    );
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        location,
        Some(links),
        atom::FEED_MEDIA_TYPE,
    ))
}

/// Compresses a rendered immutable document and derives its ETag from the bytes.
async fn finish(xml: String, coding: Coding) -> Rendered {
    let digest = Sha256::digest(xml.as_bytes());
    let etag: Arc<str> = format!("\"{}.{}\"", hex(&digest[..12]), coding.etag_tag()).into();
    let body = encode(xml.into_bytes(), coding).await;
    Rendered { body, etag }
}

fn immutable(
    headers: &HeaderMap,
    r: Rendered,
    coding: Coding,
    location: String,
    links: Option<String>,
    media_type: &'static str,
) -> Response {
    let common = vec![
        (header::ETAG, r.etag.to_string()),
        (header::CACHE_CONTROL, IMMUTABLE.to_owned()),
        (header::VARY, VARY.to_owned()),
        (header::CONTENT_LOCATION, location),
    ];
    if let Some(inm) = header_str(headers, header::IF_NONE_MATCH)
        && negotiate::if_none_match(inm, &r.etag)
    {
        return not_modified(common);
    }
    document(r.body, coding, common, links, media_type)
}

/// The page after the newest sealed page is named by that page's `next-archive`
/// before it is sealed; until then its URL leads to the head, briefly cacheable.
fn to_head(head_url: &str) -> Response {
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(head_url) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(NOT_FOUND_CACHE),
    );
    r
}

fn not_modified(common: Vec<(header::HeaderName, String)>) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    for (k, v) in common {
        if let Ok(v) = HeaderValue::try_from(v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn document(
    body: Bytes,
    coding: Coding,
    common: Vec<(header::HeaderName, String)>,
    links: Option<String>,
    media_type: &'static str,
) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{media_type}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("application/atom+xml")),
    );
    if let Some(enc) = coding.header() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    for (k, v) in common {
        if let Ok(v) = HeaderValue::try_from(v) {
            h.insert(k, v);
        }
    }
    if let Some(links) = links
        && let Ok(v) = HeaderValue::try_from(links)
    {
        h.insert(header::LINK, v);
    }
    r
}

/// Compresses `raw` for `coding`, off the async threads when it is big.
async fn encode(raw: Vec<u8>, coding: Coding) -> Bytes {
    if coding == Coding::Identity {
        return Bytes::from(raw);
    }
    if raw.len() < 64 * 1024 {
        return Bytes::from(compress(&raw, coding));
    }
    match tokio::task::spawn_blocking(move || compress(&raw, coding)).await {
        Ok(b) => Bytes::from(b),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn compress(raw: &[u8], coding: Coding) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 4 + 64);
    match coding {
        Coding::Identity => out.extend_from_slice(raw),
        Coding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
            enc.write_all(raw).expect("writing to a Vec cannot fail");
            out = enc.finish().expect("writing to a Vec cannot fail");
        }
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: 5,
                lgwin: 22,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &raw[..], &mut out, &params)
                .expect("writing to a Vec cannot fail");
        }
        Coding::Zstd => {
            out = zstd::bulk::compress(raw, 3).expect("zstd compression of a buffer cannot fail");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// How long a long poll waits at most.
pub fn max_wait() -> Duration {
    negotiate::MAX_WAIT
}
