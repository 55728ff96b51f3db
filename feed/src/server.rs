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
//! Caching follows DESIGN.md section 4: sealed pages are immutable for a
//! year with strong ETags derived from their bytes (so the same page
//! has the same ETag after a restart and on every replica); the head's ETag is derived
//! from the last position without rendering anything, so a conditional poll costs one
//! indexed read. Each content-coding has its own ETag (RFC 9110 8.8.3.3), which is
//! why compression happens here rather than in a generic middleware. Rendered and
//! compressed immutable documents are kept in a memory cache bounded in bytes.
//! A request for a sealed Atom page also renders the next sealed page into it, in
//! the same coding and in the background: a client reading one archive page is
//! most likely walking the archive, and finds the next one ready.
//!
//! An event document links `up` to the document holding the event, and that changes
//! once: from the head to the sealed page when the page fills. So only an event whose
//! page is sealed is served immutable (and kept in the memory cache), with its
//! archive page as `up`; until then it is served like the head (`max-age=1`,
//! revalidated, rendered on every request) with `up` naming the head. What is marked
//! immutable therefore never changes, on any replica, before or after a restart.
//!
//! # The hash chain
//!
//! Every sealed page and the head carry `ev:prevArchiveDigest`: the SHA-256 (hex) of
//! the identity-coded Atom bytes of the page their `prev-archive` link names. The
//! first page has no predecessor and no such element. Digests are recorded in
//! `feed_page_digests`, in position order, the first time a page is rendered after
//! it is sealed, so serving page N reads one stored digest instead of re-rendering
//! the pages before it. That first rendering usually happens for the head, which
//! names the newest sealed page with its digest.
//!
//! The chain also keeps each page's bytes, as the zstd body served to zstd clients
//! (the coding subscribers ask for), and the page is kept in the memory cache too. A
//! sealed page is rendered from its events once: every later request, after a
//! restart and after an upgrade that writes Atom differently, is served from those
//! bytes (recoded for clients that do not take zstd), so a page never changes and
//! its digest always holds. A client walking the archive in zstd gets the kept bytes
//! of the pages ahead of it read 16 at a time into memory, so a new process serving
//! a replay queries its database once every 16 pages. A page recorded before its
//! bytes were kept (a log from an older version) is rendered from its events again,
//! and kept if it still matches its digest; if it does not (the log was edited under
//! the feed) that is logged as an error, and subscribers and `feedctl verify` see the
//! broken link. An event rewritten in the database under a page that is kept does
//! not change the page; `feedctl verify FEED --against DATABASE` shows where the
//! database departs from the history it published.
//!
//! # Hostile clients
//!
//! The routes accept GET and HEAD only (405 otherwise), refuse request bodies over
//! [`MAX_REQUEST_BODY`] (413) and header sections over [`MAX_HEADER_BYTES`] (431), and
//! hold at most [`FeedConfig::max_long_polls_per_client`] long polls per client
//! address at once (429 with `Retry-After` beyond that); every refusal is
//! problem+json. [`serve`] adds a header read timeout against slow clients. Database
//! failures become a generic 503 (500 for unreadable rows), logged once here, so no
//! SQL, file path or driver message reaches a client.
//!
//! HTML differs where DESIGN.md's caching table says so: weak ETags that carry the
//! template version ([`crate::html::version_tag`]), so a new template is picked up
//! without a purge, and [`HTML_CACHE`] instead of a year for sealed pages and events
//! (the HTML of an event links its successor once there is one). The head and stream
//! heads keep [`HEAD_CACHE`] in both formats.
//!
//! Absolute links come from the configured base URL, never from the request's Host or
//! X-Forwarded-* headers, so a cache in front can never store a poisoned page.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
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
use crate::event::{Event, Json, Position, RawEvent, StreamId};
use crate::html;
use crate::negotiate::{self, Coding, Format};
use crate::page::{Doc, PageLayout, PageRange, parse_position};
use crate::store::{EventLog, RecordedPage, StoreError};

mod threads;

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
/// Bumped whenever the bytes of a head change for the same position: the Atom
/// writer's output, or a content coding's level or library (3: heads gzipped at the
/// fastest level, on zlib-rs), so position-derived strong ETags change with them.
const RENDER_VERSION: u32 = 3;
/// The largest request body the feed routes accept (they are GET-only: a body is
/// never read, and a large one is refused with 413 before anything else).
pub const MAX_REQUEST_BODY: u64 = 4 * 1024;
/// The largest header section (request line plus headers) the feed routes accept
/// (431 beyond). Browsers and feed readers send well under 8 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Long polls one client address may hold at once unless configured otherwise.
pub const DEFAULT_LONG_POLLS_PER_CLIENT: usize = 8;

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
    /// Long polls one client address may hold at once (429 beyond; 0: no limit).
    /// Behind a gateway every subscriber has the gateway's address: raise it there.
    pub max_long_polls_per_client: usize,
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
            max_long_polls_per_client: DEFAULT_LONG_POLLS_PER_CLIENT,
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
    /// Highest head position seen: anything at or below it exists for sure, so
    /// requests for immutable documents there need no head lookup.
    known_head: AtomicU64,
    base_tag: String,
    docs: moka::future::Cache<DocKey, Rendered>,
    home: Option<String>,
    /// One task at a time extends the hash chain.
    chain: tokio::sync::Mutex<()>,
    /// Set when the server shuts down: held long polls are answered at once.
    closing: tokio::sync::watch::Sender<bool>,
    /// Long polls being held, per client address.
    long_polls: std::sync::Mutex<HashMap<IpAddr, usize>>,
    max_long_polls_per_client: usize,
    /// Sealed pages of the log rendered into `docs`: see [`FeedServer::pages_rendered`].
    pages_rendered: AtomicU64,
    /// See [`FeedServer::pages_kept_ahead`].
    pages_kept_ahead: AtomicU64,
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
    /// The `Link` header, where it is not known without rendering.
    link: Option<Arc<str>>,
}

impl FeedServer {
    /// Sets up the server for `log`. The page layout is recorded in the log (see
    /// [`EventLog::configure_page_size`]): a configured size that differs from the one
    /// in force applies from the next page boundary, on every server of the log.
    pub async fn new(log: EventLog, config: FeedConfig) -> Result<Self, StoreError> {
        log.configure_page_size(config.page_size).await?;
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
                base_tag,
                docs,
                home: config.home_url,
                chain: tokio::sync::Mutex::new(()),
                closing: tokio::sync::watch::Sender::new(false),
                long_polls: std::sync::Mutex::new(HashMap::new()),
                max_long_polls_per_client: config.max_long_polls_per_client,
                pages_rendered: AtomicU64::new(0),
                pages_kept_ahead: AtomicU64::new(0),
            }),
        })
    }

    /// How many times since start a sealed page of the log was rendered (in one
    /// format and coding) because the memory cache did not hold it: asked for, or
    /// read ahead for a client walking the archive.
    pub fn pages_rendered(&self) -> u64 {
        self.inner.pages_rendered.load(Ordering::Relaxed)
    }

    /// How many sealed pages since start were put into the memory cache from the
    /// bytes the hash chain keeps, a batch at a time, ahead of a client walking the
    /// archive (in zstd, the coding kept), without being rendered or asked for.
    pub fn pages_kept_ahead(&self) -> u64 {
        self.inner.pages_kept_ahead.load(Ordering::Relaxed)
    }

    /// How many long polls the server is holding now, over all clients.
    pub fn long_polls_held(&self) -> usize {
        self.inner
            .long_polls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }

    /// The log behind the feed.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// The page layout in force (as of the last head read).
    pub fn layout(&self) -> Arc<PageLayout> {
        self.inner.log.layout()
    }

    /// Streams are paged by stream version with the log's first page size.
    fn stream_layout(&self) -> PageLayout {
        PageLayout::uniform(self.layout().segments()[0].size)
    }

    /// The public base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Answers every held long poll now, and every later one at once: call it when
    /// the server starts shutting down, or a graceful shutdown waits for the longest
    /// long poll (a gateway in front may hold one for every subscriber).
    pub fn release_long_polls(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The graceful-shutdown future for [`serve`]: resolves with `shutdown` after
    /// releasing the long polls.
    pub fn shutdown_on(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let server = self.clone();
        async move {
            shutdown.await;
            server.release_long_polls();
        }
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
            .layer(axum::middleware::from_fn(refuse_hostile))
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

    /// Sealed page `range` in the representation `w`, from the memory cache or put
    /// into it (one load for concurrent requests of the same variant): the Atom from
    /// the bytes the hash chain keeps, recoded if the client does not take zstd, or
    /// rendered from the events where none are kept yet; the HTML rendered.
    async fn sealed_page(&self, range: PageRange, w: Want) -> Result<Rendered, Arc<StoreError>> {
        let s = self.clone();
        let render = async move {
            let nav = s.layout().page_navigation(range);
            let rendered = match w.format {
                Format::Atom => {
                    let (prev, recorded) = s
                        .inner
                        .log
                        .page_digest_pair(&s.inner.base, nav.prev.map(|p| p.from), range.from)
                        .await?;
                    match recorded {
                        Some(RecordedPage {
                            atom_zstd: Some(stored),
                            ..
                        }) => recode_stored(range, stored, w.coding).await?,
                        recorded => {
                            let entries = s.read_sealed(range).await?;
                            let prev = match (nav.prev, prev) {
                                (Some(_), Some(d)) => Some(d),
                                (p, _) => s.prev_digest(p).await?,
                            };
                            let doc = s.render_sealed_page(&nav, &entries, prev.as_deref());
                            let doc = s.check_chain(range, doc, recorded).await?;
                            finish(doc, w).await
                        }
                    }
                }
                Format::Html => {
                    let entries = decoded(&s.read_sealed(range).await?)?;
                    let doc =
                        s.render_html_page(Which::Log, &nav, &entries, range.from, range.to, None);
                    finish(doc, w).await
                }
            };
            s.inner.pages_rendered.fetch_add(1, Ordering::Relaxed);
            Ok::<_, StoreError>(rendered)
        };
        self.inner
            .docs
            .try_get_with(DocKey::Page(range, w.format, w.coding), render)
            .await
    }

    /// Loads sealed page `next` into the memory cache for a client walking the
    /// archive, in `w`. In the coding the hash chain keeps, and if it is not in memory
    /// yet, the kept bytes of up to [`KEPT_AHEAD`] pages from it on come in one query:
    /// a new process serving a replay reads its pages a batch at a time.
    async fn read_ahead(
        &self,
        next: PageRange,
        head: Position,
        w: Want,
    ) -> Result<(), Arc<StoreError>> {
        let key = DocKey::Page(next, w.format, w.coding);
        if w != KEPT || self.inner.docs.contains_key(&key) {
            return self.sealed_page(next, w).await.map(drop);
        }
        let kept = self
            .inner
            .log
            .kept_pages(&self.inner.base, next.from, KEPT_AHEAD)
            .await
            .map_err(Arc::new)?;
        let layout = self.layout();
        for (from, to, bytes) in kept {
            let range = layout.page_of(from);
            if range.to != to || !layout.is_sealed_page(range, head) {
                break;
            }
            if self
                .keep_sealed_page(range, strong(Bytes::from(bytes), KEPT.coding))
                .await
            {
                self.inner.pages_kept_ahead.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sealed_page(next, w).await.map(drop)
    }

    /// The events of sealed page `range`, all of them (a page with a hole would be
    /// sealed with the hole in it forever), with their JSON as the stored text.
    async fn read_sealed(&self, range: PageRange) -> Result<Vec<RawEvent>, StoreError> {
        let entries = self.inner.log.read_range_raw(range.from, range.to).await?;
        check_sealed(range, entries)
    }

    /// The event at `position`, known to be at or below the head, with its JSON as
    /// the stored text.
    async fn read_event_below_head(&self, position: Position) -> Result<RawEvent, StoreError> {
        self.inner
            .log
            .read_range_raw(position, position)
            .await?
            .pop()
            .ok_or(StoreError::Corrupt {
                position: position as i64,
                reason: "missing below the head".into(),
            })
    }

    /// The digest of sealed page `page` in the hash chain, recording the chain up
    /// to it first where it is not recorded yet (in order, one task at a time).
    async fn chain_digest(&self, page: PageRange) -> Result<String, StoreError> {
        let log = &self.inner.log;
        let base = &self.inner.base;
        if let Some((_, d)) = log.page_digest(base, page.from).await? {
            return Ok(d);
        }
        let _one_at_a_time = self.inner.chain.lock().await;
        if let Some((_, d)) = log.page_digest(base, page.from).await? {
            return Ok(d);
        }
        let layout = self.layout();
        let (mut next, mut prev) = match log.last_page_digest(base).await? {
            None => (layout.page_of(1), None),
            Some((_, to, d)) if to < page.from => (layout.page_of(to + 1), Some(d)),
            Some((from, to, _)) => {
                // Recorded since the check above: by `check_chain`, which does not
                // take the lock, or by another process serving the same log.
                if let Some((_, d)) = log.page_digest(base, page.from).await? {
                    return Ok(d);
                }
                return Err(StoreError::Corrupt {
                    position: page.from as i64,
                    reason: format!("page {page} has no digest although page {from}-{to} has one"),
                });
            }
        };
        loop {
            let entries = self.read_sealed(next).await?;
            let nav = layout.page_navigation(next);
            let doc = self.render_sealed_page(&nav, &entries, prev.as_deref());
            let rendered = hex(&Sha256::digest(doc.as_bytes()));
            let kept = finish(doc, KEPT).await;
            let digest = match log
                .record_page_digest(base, (next.from, next.to), &rendered, &kept.body)
                .await?
            {
                // Another process recorded a different rendering: `kept` is not the
                // page the chain holds, so it is not kept.
                Some(recorded) if recorded != rendered => recorded,
                _ => {
                    self.keep_sealed_page(next, kept).await;
                    rendered
                }
            };
            if next.from >= page.from {
                return Ok(digest);
            }
            prev = Some(digest);
            next = layout.page_of(next.to + 1);
        }
    }

    /// Keeps sealed page `range`, just rendered and recorded in the hash chain with
    /// its bytes, in the memory cache as the feed's subscribers ask for it (zstd), so a
    /// replay that follows (a live origin records a page's digest when the head first
    /// names it, right after the page seals) reads it from memory. Other codings and
    /// formats are made when asked. Returns whether it was put there (not found).
    async fn keep_sealed_page(&self, range: PageRange, kept: Rendered) -> bool {
        // Unless a request has loaded it (or is loading it) already.
        self.inner
            .docs
            .entry(DocKey::Page(range, KEPT.format, KEPT.coding))
            .or_insert(kept)
            .await
            .is_fresh()
    }

    /// Sealed page `range`, rendered from its events as `doc` because the hash chain
    /// holds no bytes of it: records its digest and bytes unless a digest was
    /// `recorded` already, stores the bytes if it was and `doc` still matches it (a
    /// page recorded before its bytes were kept), and logs that the log was changed
    /// under the feed if it does not.
    async fn check_chain(
        &self,
        range: PageRange,
        doc: String,
        recorded: Option<RecordedPage>,
    ) -> Result<String, StoreError> {
        let (log, base) = (&self.inner.log, &self.inner.base);
        let digest = hex(&Sha256::digest(doc.as_bytes()));
        let changed = |recorded: &str| {
            tracing::error!(
                page = %range,
                recorded = %recorded,
                now = %digest,
                "a sealed page no longer renders to its recorded digest, and its bytes were not kept: its events were changed in the database"
            );
        };
        if let Some(r) = &recorded
            && r.digest != digest
        {
            changed(&r.digest);
            return Ok(doc);
        }
        let z = encode(doc.clone().into_bytes(), KEPT.coding, Effort::Kept).await;
        // Recorded already (here, or by another process since it was read): the bytes
        // are stored where none are and the digest is this one.
        let before = match recorded {
            Some(r) => Some(r.digest),
            None => {
                log.record_page_digest(base, (range.from, range.to), &digest, &z)
                    .await?
            }
        };
        match before {
            Some(before) if before != digest => changed(&before),
            Some(_) => log.store_page_bytes(base, range.from, &digest, &z).await?,
            None => {}
        }
        Ok(doc)
    }

    /// The digest of the sealed page before `range` (None for the first page).
    async fn prev_digest(&self, range: Option<PageRange>) -> Result<Option<String>, StoreError> {
        match range {
            Some(r) => Ok(Some(self.chain_digest(r).await?)),
            None => Ok(None),
        }
    }

    /// The links of the entry document of `event`: `up` is its sealed page, or the
    /// head while that page is being filled.
    fn event_links<J>(&self, position: Position, event: &Event<J>, head: Position) -> Links {
        Links {
            this: Some(format!("{}/feed/events/{position}", self.inner.base)),
            current: Some(self.url(Doc::Head)),
            related: Some(self.stream_url(&event.stream, Doc::Head)),
            up: Some(self.page_url_of(position, head)),
            ..Links::default()
        }
    }

    /// The document holding `position`: its sealed page, or the head.
    fn page_url_of(&self, position: Position, head: Position) -> String {
        let page = self.layout().page_of(position);
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
            Which::Log => (html::Feed::Log, self.layout().current_size()),
            Which::Stream(stream) => (
                html::Feed::Stream(stream),
                self.stream_layout().current_size(),
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

    /// Sealed page `nav.this` of the log, as Atom, linking the page before it by
    /// `prev_archive_digest`.
    fn render_sealed_page(
        &self,
        nav: &crate::page::Navigation,
        entries: &[Event<impl Json>],
        prev_archive_digest: Option<&str>,
    ) -> String {
        let never = DateTime::<Utc>::UNIX_EPOCH;
        self.render_page(Which::Log, nav, entries, None, never, prev_archive_digest)
    }

    /// Renders the feed document `nav.this` of the log or of a stream.
    fn render_page(
        &self,
        which: Which<'_>,
        nav: &crate::page::Navigation,
        entries: &[Event<impl Json>],
        head: Option<Position>,
        empty_updated: DateTime<Utc>,
        prev_archive_digest: Option<&str>,
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
                prev_archive_digest,
            },
            entries,
        )
    }
}

/// Events read with their JSON as the stored text, decoded (for the HTML views).
fn decoded(entries: &[RawEvent]) -> Result<Vec<Event>, StoreError> {
    entries.iter().map(decoded_one).collect()
}

fn decoded_one(e: &RawEvent) -> Result<Event, StoreError> {
    e.decode().map_err(|err| StoreError::Corrupt {
        position: e.position as i64,
        reason: err.to_string(),
    })
}

/// `entries` if they are all of sealed page `range`: a page with a hole would be
/// sealed with the hole in it forever.
fn check_sealed<T>(range: PageRange, entries: Vec<T>) -> Result<Vec<T>, StoreError> {
    if entries.len() as u64 != range.len() {
        return Err(StoreError::Corrupt {
            position: range.from as i64,
            reason: format!("sealed page {range} holds only {} events", entries.len()),
        });
    }
    Ok(entries)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// 503 when the database fails, 500 when a stored row cannot be read: a generic
    /// body either way, the cause logged here once.
    Unavailable(Arc<StoreError>),
    /// 429: the client holds too many long polls.
    TooManyLongPolls,
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
                if matches!(*e, StoreError::Db(_)) {
                    let mut r = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the event log is unavailable; retry shortly",
                        "no-store",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                } else {
                    problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the event log could not be read; the operator has been told",
                        "no-store",
                    )
                }
            }
            Self::TooManyLongPolls => {
                let mut r = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many long polls from this address at once; retry later",
                    "no-store",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
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

/// Refuses what a feed route never needs before any work is done: methods other
/// than GET and HEAD (405), a request body (413 past [`MAX_REQUEST_BODY`]) and an
/// oversized header section (431 past [`MAX_HEADER_BYTES`]).
async fn refuse_hostile(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("feeds are read-only: {} is not allowed", req.method()),
            "no-store",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let header_bytes = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes > MAX_HEADER_BYTES {
        return problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("the request's headers exceed {MAX_HEADER_BYTES} bytes"),
            "no-store",
        );
    }
    let body_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if body_len.is_some_and(|n| n > MAX_REQUEST_BODY) {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("feed requests carry no body (at most {MAX_REQUEST_BODY} bytes)"),
            "no-store",
        );
    }
    next.run(req).await
}

/// A long poll's place in the per-address count, given back when dropped.
struct LongPollSlot {
    server: FeedServer,
    ip: IpAddr,
}

impl LongPollSlot {
    /// Takes a place for `ip`, or None when it holds the most it may already.
    fn take(server: &FeedServer, ip: IpAddr) -> Option<Self> {
        let limit = server.inner.max_long_polls_per_client;
        let mut polls = server
            .inner
            .long_polls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = polls.entry(ip).or_insert(0);
        if limit > 0 && *held >= limit {
            return None;
        }
        *held += 1;
        Some(Self {
            server: server.clone(),
            ip,
        })
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut polls = self
            .server
            .inner
            .long_polls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = polls.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                polls.remove(&self.ip);
            }
        }
    }
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

/// The client's address, when the server was started with connection info (as
/// [`serve`] does).
fn client_ip(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn head(
    State(s): State<FeedServer>,
    ext: http::Extensions,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    serve_head(s, client_ip(&ext), headers, None).await
}

async fn head_atom(
    State(s): State<FeedServer>,
    ext: http::Extensions,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    serve_head(s, client_ip(&ext), headers, Some(Format::Atom)).await
}

async fn head_html(
    State(s): State<FeedServer>,
    ext: http::Extensions,
    headers: HeaderMap,
) -> Result<Response, FeedError> {
    serve_head(s, client_ip(&ext), headers, Some(Format::Html)).await
}

/// The embedded stylesheet and script, under content-hashed (so immutable) names.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, FeedError> {
    let a = html::asset(&file).ok_or_else(|| not_found(format!("no asset {file:?}")))?;
    let coding = negotiate::negotiate_coding(header_str(&headers, header::ACCEPT_ENCODING));
    let rendered = Rendered {
        etag: format!("\"{}.{}\"", a.hash, coding.etag_tag()).into(),
        body: encode(a.body.as_bytes().to_vec(), coding, Effort::Kept).await,
        link: None,
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
    client: Option<IpAddr>,
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
        let _slot = match client {
            Some(ip) => Some(LongPollSlot::take(&s, ip).ok_or(FeedError::TooManyLongPolls)?),
            None => None,
        };
        drop(rx);
        let mut closing = s.inner.closing.subscribe();
        tokio::select! {
            appended = s.inner.log.wait_for_append(head, wait) => {
                head = appended?;
                applied = Some(wait);
            }
            // A server going down answers at once, without `Preference-Applied`
            // (the wait was not honoured), so a graceful shutdown is not held up
            // for the length of a long poll.
            _ = closing.wait_for(|c| *c) => {}
        }
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
    let layout = s.layout();
    let start = layout.head_start(head);
    let entries = s.inner.log.read_range_raw(start, head).await?;
    if entries.len() as u64 != (head + 1 - start) {
        return Err(FeedError::Unavailable(Arc::new(StoreError::Corrupt {
            position: start as i64,
            reason: format!(
                "the head holds {} of positions {start}..={head}",
                entries.len()
            ),
        })));
    }
    let empty_updated = if entries.is_empty() {
        s.updated_before(start - 1).await?
    } else {
        DateTime::<Utc>::UNIX_EPOCH
    };
    let nav = layout.head_navigation(head);
    let doc = match w.format {
        Format::Atom => {
            let prev = s.prev_digest(nav.prev).await?;
            s.render_page(
                Which::Log,
                &nav,
                &entries,
                Some(head),
                empty_updated,
                prev.as_deref(),
            )
        }
        Format::Html => s.render_html_page(
            Which::Log,
            &nav,
            &decoded(&entries)?,
            start,
            head,
            Some(&etag),
        ),
    };
    let links = s.links(&nav, |d| s.url(d)).to_header();
    let body = encode(doc.into_bytes(), w.coding, Effort::Brief).await;
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
    let start = s.layout().head_start(head);
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
    let layout = s.layout();
    if layout.is_filling_page(range, head) {
        return Ok(to_head(&s.url(Doc::Head)));
    }
    if !layout.is_sealed_page(range, head) {
        return Err(not_found(format!(
            "{range} is not a sealed page of this feed"
        )));
    }
    // A client that reads this page is most likely walking the archive: the next
    // sealed page is rendered now, alongside this one, so it is ready when asked.
    if w.format == Format::Atom {
        let next = layout.page_of(range.to + 1);
        if layout.is_sealed_page(next, head) {
            let s2 = s.clone();
            tokio::spawn(async move {
                if let Err(e) = s2.read_ahead(next, head, w).await {
                    tracing::debug!(page = %next, error = %e, "reading a sealed page ahead failed");
                }
            });
        }
    }
    let rendered = s
        .sealed_page(range, w)
        .await
        .map_err(FeedError::Unavailable)?;
    let nav = layout.page_navigation(range);
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
    let mut head = s.head_at_least(position).await?;
    if position > head {
        return Err(not_found(format!("no event at position {position} yet")));
    }
    let page = s.layout().page_of(position);
    if page.to > head {
        // The remembered head may be behind: only the database says whether the
        // page is still being filled.
        head = s.head_position().await?;
    }
    let sealed = page.to <= head;
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
        let sealed = page.to <= head;
        let event = s.read_event_below_head(position).await?;
        let link_header = Some(s.event_links(position, &event, head).to_header());
        let page_url = s.page_url_of(position, head);
        let doc = html::render_event(&html::EventView {
            service: &s.inner.name,
            base: &s.inner.base,
            home: s.inner.home.as_deref(),
            event: &decoded_one(&event)?,
            page_url: &page_url,
            has_next: position < head,
        });
        let rendered = finish(doc, w).await;
        let cache = if sealed { HTML_CACHE } else { HEAD_CACHE };
        return Ok(immutable(
            &headers,
            rendered,
            w.coding,
            cache,
            location,
            link_header,
            HTML_MEDIA_TYPE,
        ));
    }
    let render = {
        let s = s.clone();
        async move {
            let event = s.read_event_below_head(position).await?;
            let links = s.event_links(position, &event, head);
            let xml = atom::render_entry(&event, &s.inner.name, &s.inner.base, &links);
            let mut rendered = finish(xml, w).await;
            rendered.link = Some(links.to_header().into());
            Ok::<_, StoreError>(rendered)
        }
    };
    let (rendered, cache) = if sealed {
        let r = s
            .inner
            .docs
            .try_get_with(DocKey::Event(position, w.coding), render)
            .await
            .map_err(FeedError::Unavailable)?;
        (r, IMMUTABLE)
    } else {
        (render.await?, HEAD_CACHE)
    };
    let link_header = rendered.link.as_deref().map(str::to_owned);
    Ok(immutable(
        &headers,
        rendered,
        w.coding,
        cache,
        location,
        link_header,
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
    let layout = &s.stream_layout();
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
    let entries = s.inner.log.read_stream_raw(&stream, start, version).await?;
    let nav = layout.head_navigation(version);
    let doc = match w.format {
        Format::Atom => s.render_page(
            Which::Stream(&stream),
            &nav,
            &entries,
            None,
            DateTime::<Utc>::UNIX_EPOCH,
            None,
        ),
        Format::Html => s.render_html_page(
            Which::Stream(&stream),
            &nav,
            &decoded(&entries)?,
            start,
            version,
            None,
        ),
    };
    let links = s.links(&nav, |d| s.stream_url(&stream, d)).to_header();
    let body = encode(doc.into_bytes(), w.coding, Effort::Brief).await;
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
    let layout = s.stream_layout();
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
                let entries = s2
                    .inner
                    .log
                    .read_stream_raw(&st, range.from, range.to)
                    .await?;
                let nav = layout.page_navigation(range);
                let doc = match w.format {
                    Format::Atom => s2.render_page(
                        Which::Stream(&st),
                        &nav,
                        &entries,
                        None,
                        DateTime::<Utc>::UNIX_EPOCH,
                        None,
                    ),
                    Format::Html => s2.render_html_page(
                        Which::Stream(&st),
                        &nav,
                        &decoded(&entries)?,
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
    let nav = s.stream_layout().page_navigation(range);
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

/// Compresses a rendered immutable document and derives its ETag from the bytes:
/// for Atom, a strong ETag from the bytes as sent in that coding, so a new
/// compressor (another level or library) gives new ETags rather than new bytes
/// under an old strong validator (RFC 9110 section 8.8.1); for HTML, a weak one
/// from the document and the template version.
async fn finish(doc: String, w: Want) -> Rendered {
    let html_digest = (w.format == Format::Html).then(|| Sha256::digest(doc.as_bytes()));
    let body = encode(doc.into_bytes(), w.coding, Effort::Kept).await;
    match html_digest {
        None => strong(body, w.coding),
        Some(digest) => Rendered {
            body,
            etag: format!(
                "W/\"{}.{}.{}\"",
                hex(&digest[..12]),
                html::version_tag(),
                w.coding.etag_tag()
            )
            .into(),
            link: None,
        },
    }
}

/// An immutable Atom document's body in `coding`, with the strong ETag of those bytes.
fn strong(body: Bytes, coding: Coding) -> Rendered {
    Rendered {
        etag: format!(
            "\"{}.{}\"",
            hex(&Sha256::digest(&body)[..12]),
            coding.etag_tag()
        )
        .into(),
        body,
        link: None,
    }
}

/// Most sealed pages a read-ahead loads from the bytes the hash chain keeps at once.
const KEPT_AHEAD: u32 = 16;

/// The representation of a sealed page the hash chain keeps, with its bytes.
const KEPT: Want = Want {
    format: Format::Atom,
    coding: Coding::Zstd,
};

/// Sealed page `range` in `coding`, from the bytes the hash chain keeps of it (zstd):
/// served as they are to zstd clients, decompressed (and compressed again) for others.
async fn recode_stored(
    range: PageRange,
    stored: Vec<u8>,
    coding: Coding,
) -> Result<Rendered, StoreError> {
    if coding == KEPT.coding {
        return Ok(strong(Bytes::from(stored), coding));
    }
    let body = tokio::task::spawn_blocking(move || {
        let raw = zstd::stream::decode_all(&stored[..]).map_err(|e| StoreError::Corrupt {
            position: range.from as i64,
            reason: format!("the stored bytes of sealed page {range} are not zstd: {e}"),
        })?;
        Ok::<_, StoreError>(match coding {
            Coding::Identity => raw,
            _ => compress(&raw, coding, Effort::Kept),
        })
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    Ok(strong(Bytes::from(body), coding))
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

/// How hard [`compress`] works on a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// Sealed pages, single events and assets: compressed once, then served for a
    /// year, so a smaller body is worth the CPU.
    Kept,
    /// Heads (of the log and of streams): a new version for every append, each
    /// compressed while a long-polling subscriber waits for it, and fresh for a
    /// second. The fastest levels take a fraction of the time for a somewhat
    /// larger body (BENCHMARKS.md has the numbers for a full page).
    Brief,
}

/// Compresses `raw` for `coding`, off the async threads when it is big.
async fn encode(raw: Vec<u8>, coding: Coding, effort: Effort) -> Bytes {
    if coding == Coding::Identity {
        return Bytes::from(raw);
    }
    if raw.len() < 64 * 1024 {
        return Bytes::from(compress(&raw, coding, effort));
    }
    match tokio::task::spawn_blocking(move || compress(&raw, coding, effort)).await {
        Ok(b) => Bytes::from(b),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A document's body in `coding`, as the server sends it (gzip 6 / brotli 5 /
/// zstd 3 for what is kept, the fastest levels for heads).
pub fn compress(raw: &[u8], coding: Coding, effort: Effort) -> Vec<u8> {
    let kept = effort == Effort::Kept;
    let mut out = Vec::with_capacity(raw.len() / 4 + 64);
    match coding {
        Coding::Identity => out.extend_from_slice(raw),
        Coding::Gzip => {
            let level = flate2::Compression::new(if kept { 6 } else { 1 });
            let mut enc = flate2::write::GzEncoder::new(out, level);
            enc.write_all(raw).expect("writing to a Vec cannot fail");
            out = enc.finish().expect("writing to a Vec cannot fail");
        }
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: if kept { 5 } else { 1 },
                lgwin: 22,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &raw[..], &mut out, &params)
                .expect("writing to a Vec cannot fail");
        }
        Coding::Zstd => {
            let level = if kept { 3 } else { 1 };
            out =
                zstd::bulk::compress(raw, level).expect("zstd compression of a buffer cannot fail");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connection limits of [`serve_with`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client must send its whole request head within this time, or the
    /// connection is closed (against slowloris clients that trickle bytes to hold
    /// connections open). hyper also applies it to a keep-alive connection waiting
    /// for its next request, so this is the idle time after which the server
    /// closes a connection: see [`ServeLimits::idle_client_timeout`].
    pub header_read_timeout: Duration,
    /// The largest header section the routes behind the server accept: the
    /// server reads up to four times as much before it gives up with hyper's own
    /// bare 431, so the routes can answer everything in between with problem+json.
    pub max_header_bytes: usize,
}

impl ServeLimits {
    /// How long a client should keep an idle connection to a server with these
    /// limits: half the time after which the server closes it. A client that
    /// reuses a connection just as the server closes it gets a reset instead of
    /// an answer (RFC 9112 section 9.3.1), so the subscriber and the cache-proxy
    /// drop idle connections well before that.
    pub fn idle_client_timeout(&self) -> Duration {
        self.header_read_timeout / 2
    }
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, with the default
/// [`ServeLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, ServeLimits::default()).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the
/// requests in flight. Each request carries its client's address as
/// `ConnectInfo<SocketAddr>`. Headers beyond hyper's read buffer (four times
/// [`ServeLimits::max_header_bytes`]) get hyper's own bare 431; the routes answer
/// problem+json for everything smaller.
///
/// Connections are accepted here and served on the process's serving threads, one
/// single-threaded runtime per core (see `server/threads.rs`), each connection on
/// one thread for its whole life.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(4 * limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(4 * limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY the tail of a response can wait for the client's
        // delayed ACK (Nagle), which caps throughput per connection.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(client = %addr, error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let connection = async move |stream: tokio::net::TcpStream| {
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    answer(router.clone(), req)
                });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(client = %addr, error = %e, "connection ended with an error");
            }
        };
        // The connection moves to a serving thread: off this runtime's reactor,
        // onto that thread's.
        match threads::next() {
            Some(thread) => match stream.into_std() {
                Ok(stream) => {
                    thread.spawn(async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => connection(stream).await,
                            Err(e) => {
                                tracing::debug!(client = %addr, error = %e, "cannot serve a connection");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(client = %addr, error = %e, "cannot serve a connection");
                }
            },
            None => {
                tokio::spawn(connection(stream));
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers `req` with `router`. A response given before the request's body was
/// read to its end (a refusal: 401, 413, 415 ...) says `Connection: close` on
/// HTTP/1.1: the server closes the connection after it rather than read the rest,
/// and a client that knows so sends its next request on a new connection instead
/// of one that is closing (RFC 9112 section 9.6).
async fn answer(
    router: Router,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    use tower::ServiceExt as _;

    if hyper::body::Body::is_end_stream(req.body()) {
        return router.oneshot(req).await;
    }
    let http1 = req.version() < http::Version::HTTP_2;
    let unread = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let req = req.map(|body| WatchedBody {
        body,
        unread: unread.clone(),
    });
    let mut response = router.oneshot(req).await?;
    if http1 && unread.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// A request body that records when it has been read to its end.
struct WatchedBody {
    body: hyper::body::Incoming,
    unread: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || this.body.is_end_stream() {
            this.unread.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How long a long poll waits at most.
pub fn max_wait() -> Duration {
    negotiate::MAX_WAIT
}
