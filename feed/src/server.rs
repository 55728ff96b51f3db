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
//! Every URL also answers with a `.atom` or `.html` suffix (the format chosen without
//! negotiation); without one, `Accept` decides (a browser gets HTML, everyone else,
//! `*/*` and a missing header included, Atom) and `Content-Location` names the
//! variant served. The HTML comes from [`crate::html`]; its embedded stylesheet and
//! script are served under `/feed/_assets/`, and a 404 asked for as HTML becomes a
//! page with a way back.
//!
//! Caching follows DESIGN.md section 4: sealed pages and events are immutable for a
//! year with strong ETags derived from their bytes (so the same page
//! has the same ETag after a restart and on every replica); the head's ETag is derived
//! from the last position without rendering anything, so a conditional poll costs one
//! indexed read. Each content-coding has its own ETag (RFC 9110 8.8.3.3), which is
//! why compression happens here rather than in a generic middleware. Rendered and
//! compressed immutable documents are kept in a memory cache bounded in bytes.
//!
//! HTML differs where DESIGN.md's caching table says so: weak ETags that carry the
//! template version ([`crate::html::version_tag`]), so a new template is picked up
//! without a purge, and [`HTML_CACHE`] instead of a year for sealed pages and events
//! (the HTML of an event links its successor once there is one). The head and stream
//! heads keep [`HEAD_CACHE`] in both formats.
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
use crate::html;
use crate::negotiate::{self, Coding, Format};
use crate::page::{Doc, PageLayout, PageRange, parse_position};
use crate::store::{EventLog, StoreError};

/// `Cache-Control` of sealed pages and events: they never change.
pub const IMMUTABLE: &str = "max-age=31536000, immutable";
/// `Cache-Control` of the head. Never `no-cache` / `max-age=0`: a cache must be able
/// to serve one fresh copy to many pollers and coalesce their misses.
pub const HEAD_CACHE: &str = "max-age=1, stale-while-revalidate=5, stale-if-error=86400";
/// `Cache-Control` of the HTML of sealed pages and events: templates change, the
/// documents do not, so a short freshness with a long revalidation window.
pub const HTML_CACHE: &str = "max-age=300, stale-while-revalidate=86400";
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
    /// The landing page the HTML pages link back to in their breadcrumb (e.g. the
    /// gateway's `http://127.0.0.1:8080/`), configured like `base_url`.
    pub home_url: Option<String>,
}

impl FeedConfig {
    /// A config with the defaults for everything but the base URL and name.
    pub fn new(base_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            name: name.into(),
            page_size: None,
            cache_bytes: 64 * 1024 * 1024,
            home_url: None,
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
    home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DocKey {
    Page(PageRange, Format, Coding),
    Event(Position, Coding),
    StreamPage(StreamId, PageRange, Format, Coding),
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
                home: config.home_url,
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
            .route("/feed.html", get(head_html))
            .route("/feed/_assets/{file}", get(asset))
            .route("/feed/archive/{range}", get(archive))
            .route("/feed/events/{position}", get(event))
            .route("/streams/{stream}", get(stream_head))
            .route("/streams/{stream}/archive/{range}", get(stream_archive))
            .with_state(self.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                html_not_found,
            ))
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

    /// The event at `position`, known to be at or below the head.
    async fn read_event_below_head(&self, position: Position) -> Result<Event, StoreError> {
        self.inner
            .log
            .read_event(position)
            .await?
            .ok_or(StoreError::Corrupt {
                position: position as i64,
                reason: "missing below the head".into(),
            })
    }

    /// The document holding `position`: its sealed page, or the head.
    fn page_url_of(&self, position: Position, head: Position) -> String {
        let page = self.inner.layout.page_of(position);
        if page.to <= head {
            self.url(Doc::Page(page))
        } else {
            self.url(Doc::Head)
        }
    }

    /// Renders the HTML of the document `nav.this` covering `from..=to`;
    /// `live_etag` (the head's) turns on the live mode.
    fn render_html_page(
        &self,
        which: Which<'_>,
        nav: &crate::page::Navigation,
        entries: &[Event],
        from: Position,
        to: Position,
        live_etag: Option<&str>,
    ) -> String {
        let links = self.links(nav, |d| self.doc_url(which, d));
        let (feed, page_size) = match which {
            Which::Log => (html::Feed::Log, self.inner.layout.current_size()),
            Which::Stream(stream) => (
                html::Feed::Stream(stream),
                self.inner.stream_layout.current_size(),
            ),
        };
        html::render_page(&html::PageView {
            service: &self.inner.name,
            base: &self.inner.base,
            home: self.inner.home.as_deref(),
            feed,
            links: &links,
            from,
            to,
            page_size,
            sealed: matches!(nav.this, Doc::Page(_)),
            entries,
            live_etag,
        })
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
#[derive(Debug, Clone, Copy)]
struct Want {
    format: Format,
    coding: Coding,
}

impl Want {
    /// `Content-Type` of a feed document in this format.
    fn feed_media_type(self) -> &'static str {
        match self.format {
            Format::Atom => atom::FEED_MEDIA_TYPE,
            Format::Html => HTML_MEDIA_TYPE,
        }
    }
}

const HTML_MEDIA_TYPE: &str = "text/html";
const ENTRY_MEDIA_TYPE: &str = "application/atom+xml;type=entry";

/// An explicit suffix wins; otherwise `Accept` decides.
fn want(headers: &HeaderMap, suffix: Option<Format>) -> Want {
    Want {
        format: suffix
            .unwrap_or_else(|| negotiate::negotiate_format(header_str(headers, header::ACCEPT))),
        coding: negotiate::negotiate_coding(header_str(headers, header::ACCEPT_ENCODING)),
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

/// Turns a 404's problem+json into an HTML page when the request wanted HTML, so a
/// person who follows a stale link gets a page with a way back.
async fn html_not_found(
    State(s): State<FeedServer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let wants_html = if path.ends_with(".atom") {
        false
    } else {
        path.ends_with(".html")
            || negotiate::negotiate_format(header_str(req.headers(), header::ACCEPT))
                == Format::Html
    };
    let mut res = next.run(req).await;
    if res.status() != StatusCode::NOT_FOUND {
        return res;
    }
    // Either variant of a 404 depends on Accept: say so to caches.
    res.headers_mut()
        .insert(header::VARY, HeaderValue::from_static(VARY));
    if !wants_html {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let problem = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&problem)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let page = html::render_not_found(
        &s.inner.name,
        &s.inner.base,
        s.inner.home.as_deref(),
        &detail,
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Response::from_parts(parts, axum::body::Body::from(page))
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

async fn head_html(State(s): State<FeedServer>, headers: HeaderMap) -> Result<Response, FeedError> {
    serve_head(s, headers, Some(Format::Html)).await
}

/// The embedded stylesheet and script, under content-hashed (so immutable) names.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, FeedError> {
    let a = html::asset(&file).ok_or_else(|| not_found(format!("no asset {file:?}")))?;
    let coding = negotiate::negotiate_coding(header_str(&headers, header::ACCEPT_ENCODING));
    let rendered = Rendered {
        etag: format!("\"{}.{}\"", a.hash, coding.etag_tag()).into(),
        body: encode(a.body.as_bytes().to_vec(), coding).await,
    };
    let mut r = immutable(
        &headers,
        rendered,
        coding,
        IMMUTABLE,
        file,
        None,
        a.media_type,
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Ok(r)
}

async fn serve_head(
    s: FeedServer,
    headers: HeaderMap,
    suffix: Option<Format>,
) -> Result<Response, FeedError> {
    let w = want(&headers, suffix);
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
    let mut etag = head_etag(&s, head, w);
    let mut applied = None;
    if let (Some(inm), Some(wait)) = (&inm, wait)
        && negotiate::if_none_match(inm, &etag)
    {
        applied = Some(wait);
        drop(rx);
        head = s.inner.log.wait_for_append(head, wait).await?;
        s.inner.known_head.fetch_max(head, Ordering::Relaxed);
        etag = head_etag(&s, head, w);
    }
    let location = format!("{}/feed{}", s.inner.base, w.format.suffix());
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
    let doc = match w.format {
        Format::Atom => s.render_page(Which::Log, &nav, &entries, Some(head), empty_updated),
        Format::Html => s.render_html_page(Which::Log, &nav, &entries, start, head, Some(&etag)),
    };
    let links = s.links(&nav, |d| s.url(d)).to_header();
    let body = encode(doc.into_bytes(), w.coding).await;
    Ok(document(
        body,
        w.coding,
        common,
        Some(links),
        w.feed_media_type(),
    ))
}

/// The head's ETag, from its last position without rendering anything.
fn head_etag(s: &FeedServer, head: Position, w: Want) -> String {
    let start = s.inner.layout.head_start(head);
    let tag = format!("h{head}-{start}.{}", s.inner.base_tag);
    variant_etag(&tag, w)
}

/// An ETag for `tag` in the representation `w`: strong and carrying the Atom writer's
/// version for Atom, weak and carrying the template version for HTML.
fn variant_etag(tag: &str, w: Want) -> String {
    match w.format {
        Format::Atom => format!("\"{tag}.v{RENDER_VERSION}.{}\"", w.coding.etag_tag()),
        Format::Html => format!(
            "W/\"{tag}.html.{}.{}\"",
            html::version_tag(),
            w.coding.etag_tag()
        ),
    }
}

async fn archive(
    State(s): State<FeedServer>,
    Path(range): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (range_str, suffix) = split_suffix(&range);
    let w = want(&headers, suffix);
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
    let key = DocKey::Page(range, w.format, w.coding);
    let s2 = s.clone();
    let rendered = s
        .inner
        .docs
        .try_get_with(key, async move {
            let entries = s2.inner.log.read_range(range.from, range.to).await?;
            let nav = s2.inner.layout.page_navigation(range);
            let doc = match w.format {
                Format::Atom => s2.render_page(
                    Which::Log,
                    &nav,
                    &entries,
                    None,
                    DateTime::<Utc>::UNIX_EPOCH,
                ),
                Format::Html => {
                    s2.render_html_page(Which::Log, &nav, &entries, range.from, range.to, None)
                }
            };
            Ok::<_, StoreError>(finish(doc, w).await)
        })
        .await
        .map_err(FeedError::Unavailable)?;
    let nav = s.inner.layout.page_navigation(range);
    let links = s.links(&nav, |d| s.url(d)).to_header();
    let location = format!("{}/feed/archive/{range}{}", s.inner.base, w.format.suffix());
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        immutable_cache(w),
        location,
        Some(links),
        w.feed_media_type(),
    ))
}

async fn event(
    State(s): State<FeedServer>,
    Path(pos): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (pos_str, suffix) = split_suffix(&pos);
    let w = want(&headers, suffix);
    let position = parse_position(pos_str)
        .filter(|p| *p > 0)
        .ok_or_else(|| not_found(format!("{pos_str:?} is not a position")))?;
    let head = s.head_at_least(position).await?;
    if position > head {
        return Err(not_found(format!("no event at position {position} yet")));
    }
    let location = format!(
        "{}/feed/events/{position}{}",
        s.inner.base,
        w.format.suffix()
    );
    if w.format == Format::Html {
        // Not kept in the document cache: its "next event" and "its page" links depend
        // on the head. The head is read from the store, not from memory (which may lag
        // behind another replica's appends), and until the event's page is sealed both
        // links may still change, so the page is then only as cacheable as the head.
        let head = s.head_position().await?;
        let event = s.read_event_below_head(position).await?;
        let page = s.page_url_of(position, head);
        let settled = s.inner.layout.page_of(position).to <= head;
        let doc = html::render_event(&html::EventView {
            service: &s.inner.name,
            base: &s.inner.base,
            home: s.inner.home.as_deref(),
            event: &event,
            page_url: &page,
            has_next: position < head,
        });
        let rendered = finish(doc, w).await;
        return Ok(immutable(
            &headers,
            rendered,
            w.coding,
            if settled { HTML_CACHE } else { HEAD_CACHE },
            location,
            None,
            HTML_MEDIA_TYPE,
        ));
    }
    let s2 = s.clone();
    let rendered = s
        .inner
        .docs
        .try_get_with(DocKey::Event(position, w.coding), async move {
            let event = s2.read_event_below_head(position).await?;
            let links = Links {
                this: Some(format!("{}/feed/events/{position}", s2.inner.base)),
                current: Some(s2.url(Doc::Head)),
                related: Some(s2.stream_url(&event.stream, Doc::Head)),
                up: Some(s2.page_url_of(position, head)),
                ..Links::default()
            };
            let xml = atom::render_entry(&event, &s2.inner.name, &s2.inner.base, &links);
            Ok::<_, StoreError>(finish(xml, w).await)
        })
        .await
        .map_err(FeedError::Unavailable)?;
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        IMMUTABLE,
        location,
        None,
        ENTRY_MEDIA_TYPE,
    ))
}

async fn stream_head(
    State(s): State<FeedServer>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (name, suffix) = split_suffix(&stream);
    let w = want(&headers, suffix);
    let stream = StreamId::parse(name).map_err(|e| not_found(e.to_string()))?;
    let version = s.inner.log.stream_version(&stream).await?;
    if version == 0 {
        return Err(not_found(format!("no stream {stream}")));
    }
    let layout = &s.inner.stream_layout;
    let etag = variant_etag(&format!("s{version}.{stream}.{}", s.inner.base_tag), w);
    let location = format!("{}/streams/{stream}{}", s.inner.base, w.format.suffix());
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
    let doc = match w.format {
        Format::Atom => s.render_page(
            Which::Stream(&stream),
            &nav,
            &entries,
            None,
            DateTime::<Utc>::UNIX_EPOCH,
        ),
        Format::Html => {
            s.render_html_page(Which::Stream(&stream), &nav, &entries, start, version, None)
        }
    };
    let links = s.links(&nav, |d| s.stream_url(&stream, d)).to_header();
    let body = encode(doc.into_bytes(), w.coding).await;
    Ok(document(
        body,
        w.coding,
        common,
        Some(links),
        w.feed_media_type(),
    ))
}

async fn stream_archive(
    State(s): State<FeedServer>,
    Path((stream, range)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    let (range_str, suffix) = split_suffix(&range);
    let w = want(&headers, suffix);
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
            DocKey::StreamPage(stream.clone(), range, w.format, w.coding),
            async move {
                let entries = s2.inner.log.read_stream(&st, range.from, range.to).await?;
                let nav = layout.page_navigation(range);
                let doc = match w.format {
                    Format::Atom => s2.render_page(
                        Which::Stream(&st),
                        &nav,
                        &entries,
                        None,
                        DateTime::<Utc>::UNIX_EPOCH,
                    ),
                    Format::Html => s2.render_html_page(
                        Which::Stream(&st),
                        &nav,
                        &entries,
                        range.from,
                        range.to,
                        None,
                    ),
                };
                Ok::<_, StoreError>(finish(doc, w).await)
            },
        )
        .await
        .map_err(FeedError::Unavailable)?;
    let nav = s.inner.stream_layout.page_navigation(range);
    let links = s.links(&nav, |d| s.stream_url(&stream, d)).to_header();
    let location = format!(
        "{}/streams/{stream}/archive/{range}{}",
        s.inner.base,
        w.format.suffix()
    );
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        immutable_cache(w),
        location,
        Some(links),
        w.feed_media_type(),
    ))
}

/// `Cache-Control` of a sealed document in the requested format.
fn immutable_cache(w: Want) -> &'static str {
    match w.format {
        Format::Atom => IMMUTABLE,
        Format::Html => HTML_CACHE,
    }
}

/// Compresses a rendered immutable document and derives its ETag from the bytes
/// (weak, with the template version, for HTML).
async fn finish(doc: String, w: Want) -> Rendered {
    let digest = Sha256::digest(doc.as_bytes());
    let etag: Arc<str> = match w.format {
        Format::Atom => format!("\"{}.{}\"", hex(&digest[..12]), w.coding.etag_tag()),
        Format::Html => format!(
            "W/\"{}.{}.{}\"",
            hex(&digest[..12]),
            html::version_tag(),
            w.coding.etag_tag()
        ),
    }
    .into();
    let body = encode(doc.into_bytes(), w.coding).await;
    Rendered { body, etag }
}

fn immutable(
    headers: &HeaderMap,
    r: Rendered,
    coding: Coding,
    cache_control: &'static str,
    location: String,
    links: Option<String>,
    media_type: &'static str,
) -> Response {
    let common = vec![
        (header::ETAG, r.etag.to_string()),
        (header::CACHE_CONTROL, cache_control.to_owned()),
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
