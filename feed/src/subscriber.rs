//! Following another service's feed: checkpoints, bootstrap, resume, backoff.
//!
//! A [`Subscriber`] hands the events of one feed, in position order, to a
//! [`Handler`] that runs inside a transaction of the subscriber's own database; the
//! checkpoint (the last position applied) is saved in the same transaction, one per
//! page. A crash therefore neither loses nor repeats an effect: delivery is at least
//! once, the effect exactly once.
//!
//! Navigation uses only the links the producer publishes: with no checkpoint it
//! starts at the head's `first` link; otherwise at the page the checkpoint was saved
//! on, then `next-archive` until the head. At the head it polls conditionally, with a
//! long poll (`Prefer: wait`) once caught up, and backs off with jitter while the
//! producer is unreachable. A gap in positions, a malformed document, a sealed page
//! whose bytes changed, a broken hash chain (a page whose `ev:prevArchiveDigest` is
//! not the digest of the page before it, as this subscriber downloaded it) stop the
//! subscription with an error and the checkpoint as it was: those mean the producer
//! broke its promise, and retrying would not help. A head behind the checkpoint is
//! not such a case: HTTP caches may serve a stale head for seconds
//! (`stale-while-revalidate`) or a day (`stale-if-error`), so it counts as nothing
//! new, and the next conditional long poll reaches the producer. A producer that
//! really lost events is found by the hash chain once it grows again, and by
//! `feedctl verify`.
//!
//! Several instances of one subscription may run at once (replicas of a service on
//! one PostgreSQL database, or two `feedctl replay` into one log). The checkpoint
//! update is therefore a compare-and-set on the position this instance read, and it
//! is the first statement of the handler's transaction: the instance that loses waits
//! for the winner's commit, finds the position moved, rolls back without running its
//! handler, and continues from the checkpoint the winner saved. After any failure,
//! including a commit whose outcome is unknown, the checkpoint is read again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::atom::{self, ParsedFeed};
use crate::db::{Backend, Database};
use crate::direct::{CHECKPOINT_CAS_SQL, CHECKPOINT_INSERT_SQL, DirectWriter, Outcome, PageWrite};
use crate::event::{Event, Position, RawEvent};

/// What a subscriber does with events. Implementations skip event types they do not
/// know (contracts evolve forward-compatibly) and must only touch the database through
/// `tx`, so their effects commit together with the checkpoint.
pub trait Handler: Send + Sync {
    /// Applies one event.
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Applies a page's worth of events, in order. Override to batch.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [Event],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            for e in events {
                self.handle(tx, e).await?;
            }
            Ok(())
        })
    }

    /// Whether this handler takes its events with their JSON as the text the feed
    /// carried ([`handle_raw_batch`](Self::handle_raw_batch)) instead of decoded. A
    /// mirror that stores the events as they come says yes: the subscriber then checks
    /// that the text is JSON but builds no `serde_json::Value`.
    fn takes_raw(&self) -> bool {
        false
    }

    /// The log this handler's whole effect is [`import`](crate::EventLog::import)ing
    /// the events into, if that is all it does (a [`Mirror`]). When that log is the
    /// subscriber's own SQLite file, the subscriber writes each page and its
    /// checkpoint on a SQLite connection of its own thread instead of calling
    /// [`handle_raw_batch`](Self::handle_raw_batch), which is the same transaction in
    /// one hand-over between threads instead of four (`BENCHMARKS.md`, P1).
    fn imports_into(&self) -> Option<&crate::EventLog> {
        None
    }

    /// Applies a page's worth of events with their JSON as text, in order; called
    /// instead of [`handle_batch`](Self::handle_batch) when
    /// [`takes_raw`](Self::takes_raw) says so. The default decodes them and calls
    /// `handle_batch`.
    fn handle_raw_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [RawEvent],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let events = events
                .iter()
                .map(RawEvent::decode)
                .collect::<Result<Vec<_>, _>>()?;
            self.handle_batch(tx, &events).await
        })
    }
}

/// A handler that copies a feed into an [`EventLog`](crate::EventLog) with the
/// events' positions, ids and stream versions, and their JSON exactly as the feed
/// carried it: a replica of the producer's log (`feedctl replay`).
#[derive(Debug, Clone)]
pub struct Mirror(pub crate::EventLog);

impl Handler for Mirror {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        e: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        self.handle_batch(tx, std::slice::from_ref(e))
    }

    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [Event],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.0.import(tx, events).await?) })
    }

    fn takes_raw(&self) -> bool {
        true
    }

    fn imports_into(&self) -> Option<&crate::EventLog> {
        Some(&self.0)
    }

    fn handle_raw_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [RawEvent],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.0.import(tx, events).await?) })
    }
}

/// Whether pages go to a [`DirectWriter`]: not decided until the first page.
#[derive(Debug)]
enum Direct {
    Untried,
    On(DirectWriter),
    Off,
}

/// The events of a document, as the handler takes them.
enum Batch {
    Decoded(Vec<Event>),
    Raw(Vec<RawEvent>),
}

impl Batch {
    fn of(events: Vec<Event<EntryJson>>, raw: bool) -> Result<Self, serde_json::Error> {
        let events = events.into_iter();
        Ok(if raw {
            Self::Raw(
                events
                    .map(|e| e.try_map_json(|_, j| j.into_raw()))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            Self::Decoded(
                events
                    .map(|e| e.try_map_json(|_, j| j.into_decoded()))
                    .collect::<Result<_, _>>()?,
            )
        })
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        match self {
            Self::Decoded(e) => e.len(),
            Self::Raw(e) => e.len(),
        }
    }
}

/// An entry's JSON as the subscriber read it: decoded, or as text for a handler that
/// [takes it raw](Handler::takes_raw).
#[derive(Debug, Clone)]
enum EntryJson {
    Decoded(serde_json::Value),
    Raw(Box<RawValue>),
}

impl EntryJson {
    /// How a document's entries are read for a handler that takes them raw or not.
    fn reader(raw: bool) -> atom::JsonFrom<Self> {
        if raw {
            |text| atom::kept_as_text(text).map(Self::Raw)
        } else {
            |text| serde_json::from_str(&text).map(Self::Decoded)
        }
    }

    fn into_raw(self) -> Result<Box<RawValue>, serde_json::Error> {
        match self {
            Self::Decoded(v) => serde_json::value::to_raw_value(&v),
            Self::Raw(r) => Ok(r),
        }
    }

    fn into_decoded(self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::Decoded(v) => Ok(v),
            Self::Raw(r) => serde_json::from_str(r.get()),
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The feed skipped a position (fatal).
    #[error("gap in feed {url}: expected position {expected}, found {found}")]
    Gap {
        /// The page.
        url: String,
        /// The next position the subscriber needs.
        expected: Position,
        /// What the page had instead.
        found: Position,
    },
    /// A document could not be read or its links are inconsistent (fatal).
    #[error("malformed feed document {url}: {reason}")]
    Malformed {
        /// The document.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A sealed page's bytes changed since it was last seen (fatal).
    #[error("sealed page {url} changed: history was rewritten")]
    PageChanged {
        /// The page.
        url: String,
    },
    /// A document's `ev:prevArchiveDigest` is not the digest of the page it names as
    /// `prev-archive` (fatal): the history before it was rewritten.
    #[error(
        "hash chain broken at {url}: it records {recorded} for {prev}, which was downloaded as {actual}"
    )]
    ChainBroken {
        /// The document carrying the digest.
        url: String,
        /// Its `prev-archive` page.
        prev: String,
        /// The digest the document records.
        recorded: String,
        /// The digest of the page as downloaded.
        actual: String,
    },
    /// The producer answered with an error status (retried).
    #[error("{url} answered HTTP {status}")]
    Http {
        /// The document.
        url: String,
        /// The status.
        status: u16,
    },
    /// The producer could not be reached (retried).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The document.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The handler failed; its transaction was rolled back (retried).
    #[error("handler failed at position {position}: {source:#}")]
    Handler {
        /// The first position of the batch.
        position: Position,
        /// The handler's error.
        source: anyhow::Error,
    },
    /// The subscriber's database failed (retried).
    #[error("subscriber database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl SubscribeError {
    /// Whether retrying cannot help: the feed itself is wrong.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Gap { .. }
                | Self::Malformed { .. }
                | Self::PageChanged { .. }
                | Self::ChainBroken { .. }
        )
    }
}

/// What one step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Events were applied up to `position`.
    Applied {
        /// How many.
        events: usize,
        /// The new checkpoint.
        position: Position,
    },
    /// Nothing new at the head. `waited` is false when the producer answered at once
    /// instead of holding a long poll, so the caller should pause before asking again.
    CaughtUp {
        /// The checkpoint.
        position: Position,
        /// Whether the producer honoured the long poll.
        waited: bool,
    },
}

/// Settings of a subscription.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The checkpoint's key in the subscriber's database.
    pub name: String,
    /// The feed's head URL, e.g. `http://127.0.0.1:8080/sales/feed`.
    pub feed_url: String,
    /// How long a long poll may be held (the producer caps it at 30 s); zero
    /// polls plainly, every `poll_interval`.
    pub long_poll: Duration,
    /// Pause between polls when the producer does not hold long polls.
    pub poll_interval: Duration,
    /// First and largest pause after a failure.
    pub backoff: (Duration, Duration),
}

impl SubscriberConfig {
    /// Defaults: 20 s long polls, 1 s polling, backoff from 100 ms to 30 s.
    pub fn new(name: impl Into<String>, feed_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            feed_url: feed_url.into(),
            long_poll: Duration::from_secs(20),
            poll_interval: Duration::from_secs(1),
            backoff: (Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

/// Live numbers of a subscription, for an index page or metrics.
#[derive(Debug, Default)]
pub struct Status {
    checkpoint: AtomicU64,
    head: AtomicU64,
    requests: AtomicU64,
    direct_pages: AtomicU64,
    caught_up: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Status {
    /// The last position applied.
    pub fn checkpoint(&self) -> Position {
        self.checkpoint.load(Ordering::Relaxed)
    }
    /// The producer's head as last seen.
    pub fn head(&self) -> Position {
        self.head.load(Ordering::Relaxed)
    }
    /// How far behind the subscriber is.
    pub fn lag(&self) -> u64 {
        self.head().saturating_sub(self.checkpoint())
    }
    /// Whether the last step found nothing new at the producer's head.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }
    /// HTTP requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Pages written on the subscription's own SQLite connection (see
    /// [`Handler::imports_into`]).
    pub fn direct_pages(&self) -> u64 {
        self.direct_pages.load(Ordering::Relaxed)
    }
    /// The last error, if the last step failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = e;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Checkpoint {
    position: Position,
    page_url: Option<String>,
    page_digest: Option<String>,
    /// Whether the row exists (the compare-and-set then updates it, else inserts it).
    stored: bool,
}

/// Where the next step goes.
#[derive(Debug, Clone)]
enum Cursor {
    /// Find the page from the checkpoint.
    Locate,
    /// A page to read next (from a `next-archive` link).
    Page(String),
    /// Caught up: poll the head conditionally.
    Head { url: String, etag: Option<String> },
}

struct Fetched {
    url: String,
    doc: ParsedFeed<EntryJson>,
    digest: String,
    etag: Option<String>,
}

enum Answer {
    Doc(Box<Fetched>),
    NotModified { waited: bool },
}

/// A response as it came off the wire, before it is read as a feed document.
enum Raw {
    NotModified {
        waited: bool,
    },
    Body {
        etag: Option<String>,
        body: bytes::Bytes,
    },
}

/// A response read as a feed document: its digest and the parsed feed. This is
/// the CPU-bound half of a fetch.
enum Got {
    NotModified {
        waited: bool,
    },
    Doc {
        etag: Option<String>,
        digest: String,
        doc: Box<ParsedFeed<EntryJson>>,
    },
}

/// Sealed pages requested ahead along their `next-archive` links, so the producer
/// (or the cache) sends page N+1 and N+2 and this process parses them while page N is
/// written. A background task walks the archive: it requests a page, starts parsing
/// it on a blocking thread, and requests the page after it at once, taking that
/// page's address from the response's `Link` header. That address is only a hint:
/// the subscriber uses a page read ahead only when its address is the one the
/// documents it applied lead to. The task stops at a document with no next archive
/// (the head), on an error (passed on with that page), or when dropped (the
/// subscriber stopped, failed, or went elsewhere).
struct ReadAhead {
    pages:
        tokio::sync::mpsc::Receiver<(String, tokio::task::JoinHandle<Result<Got, SubscribeError>>)>,
    _walker: tokio_util::task::AbortOnDropHandle<()>,
}

/// Pages parsed or being parsed ahead of the one applied, besides the one requested.
const READ_AHEAD: usize = 2;

/// The most sealed pages one step writes through the writer thread
/// ([`Subscriber::write_directly`]): a replay reports its progress, and `run` sees a
/// shutdown, at least every this many pages.
const RUN_PAGES: usize = 16;

impl ReadAhead {
    /// `raw`: see [`Handler::takes_raw`].
    fn start(client: reqwest::Client, first: String, status: Arc<Status>, raw: bool) -> Self {
        let (tx, pages) = tokio::sync::mpsc::channel(READ_AHEAD);
        let walker = tokio::spawn(async move {
            let mut url = Some(first);
            while let Some(this) = url.take() {
                let permit = match tx.reserve().await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                status.requests.fetch_add(1, Ordering::Relaxed);
                let parse = match raw_get(client.clone(), this.clone(), None, None).await {
                    Ok((body, next)) => {
                        url = next;
                        let at = this.clone();
                        // Parsed on a blocking thread: it overlaps with the write of
                        // the current page even on a single-threaded runtime.
                        tokio::task::spawn_blocking(move || read_doc(&at, body, 0, raw))
                    }
                    Err(e) => tokio::spawn(async move { Err(e) }),
                };
                permit.send((this, parse));
            }
        });
        Self {
            pages,
            _walker: tokio_util::task::AbortOnDropHandle::new(walker),
        }
    }

    /// The next page read ahead, if it is `url`.
    async fn take(&mut self, url: &str) -> Option<Result<Got, SubscribeError>> {
        let (at, parse) = self.pages.recv().await?;
        if at != url {
            return None;
        }
        match parse.await {
            Ok(got) => Some(got),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }
}

/// Follows one feed into a handler. See the module docs.
pub struct Subscriber<H> {
    config: SubscriberConfig,
    db: Database,
    handler: H,
    client: reqwest::Client,
    cursor: Cursor,
    checkpoint: Option<Checkpoint>,
    /// Digests of sealed pages seen in this run, to notice rewritten history.
    seen: HashMap<String, String>,
    status: Arc<Status>,
    /// The last step found nothing new on a document it reached by a link (not by
    /// a conditional request of the head): the head's ETag is known now, so the
    /// next step is the long poll, at once.
    poll_at_once: bool,
    read_ahead: Option<ReadAhead>,
    /// A document read at the end of a run of direct writes, for the next step.
    stash: Option<Fetched>,
    direct: Direct,
}

impl<H> std::fmt::Debug for Subscriber<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("config", &self.config)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// The HTTP client subscribers use: rustls (ring), gzip and zstd (feed servers pick
/// zstd, cheaper to compress and to decompress), bounded connect time.
pub fn http_client() -> reqwest::Client {
    crate::install_crypto();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // Feed servers close idle connections after their header read timeout.
        .pool_idle_timeout(crate::server::ServeLimits::default().idle_client_timeout())
        .user_agent(concat!("feed-subscriber/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with these static settings always builds")
}

impl<H: Handler> Subscriber<H> {
    /// A subscriber writing to `db` (which must have the feed migrations applied,
    /// e.g. through [`crate::EventLog::open`] or [`Database::migrate`]).
    pub fn new(config: SubscriberConfig, db: Database, handler: H) -> Self {
        Self {
            config,
            db,
            handler,
            client: http_client(),
            cursor: Cursor::Locate,
            checkpoint: None,
            seen: HashMap::new(),
            poll_at_once: false,
            read_ahead: None,
            stash: None,
            direct: Direct::Untried,
            status: Arc::new(Status::default()),
        }
    }

    /// Uses `client` instead of a fresh one.
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// The live numbers, shareable with an index page.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The last position applied (read from the database on first use).
    pub async fn checkpoint(&mut self) -> Result<Position, SubscribeError> {
        Ok(self.load_checkpoint().await?.position)
    }

    async fn load_checkpoint(&mut self) -> Result<Checkpoint, SubscribeError> {
        if let Some(c) = &self.checkpoint {
            return Ok(c.clone());
        }
        let row: Option<(i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT position, page_url, page_digest FROM feed_checkpoints WHERE subscription = $1",
        )
        .bind(&self.config.name)
        .fetch_optional(self.db.pool())
        .await?;
        let c = row.map_or(
            Checkpoint {
                position: 0,
                page_url: None,
                page_digest: None,
                stored: false,
            },
            |(p, page_url, page_digest)| Checkpoint {
                position: p as Position,
                page_url,
                page_digest,
                stored: true,
            },
        );
        self.status.checkpoint.store(c.position, Ordering::Relaxed);
        self.checkpoint = Some(c.clone());
        Ok(c)
    }

    /// Runs until `shutdown` resolves or a fatal error. Transient failures are logged
    /// and retried with jittered exponential backoff.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SubscribeError> {
        tokio::pin!(shutdown);
        let (min, max) = self.config.backoff;
        let mut delay = min;
        loop {
            let step = tokio::select! {
                () = &mut shutdown => return Ok(()),
                step = self.poll_once() => step,
            };
            let pause = match step {
                // Progress, or a long poll the producer held: it is healthy.
                Ok(Progress::Applied { .. }) | Ok(Progress::CaughtUp { waited: true, .. }) => {
                    delay = min;
                    None
                }
                // An answer that proves nothing about the producer (a cache may serve
                // a stale head while the origin is down), so the backoff is kept.
                // A link led to the head with nothing new (e.g. the next page of a
                // page just sealed): long-poll now, without resetting the backoff.
                // Otherwise the producer answered at once: wait the interval.
                Ok(Progress::CaughtUp { waited: false, .. }) => {
                    (!std::mem::take(&mut self.poll_at_once)).then_some(self.config.poll_interval)
                }
                Err(e) if e.is_fatal() => {
                    tracing::error!(subscription = %self.config.name, error = %e, "subscription stopped");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(subscription = %self.config.name, error = %e, retry_in = ?delay, "feed step failed");
                    // Full jitter: anywhere in [delay/2, delay], so many subscribers
                    // that failed together do not come back together.
                    let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                    delay = (delay * 2).min(max);
                    Some(jittered)
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// One step: reads one document and applies what is new on it. A mirror written
    /// through its own connection (see [`Handler::imports_into`]) also writes the
    /// sealed pages after it that are already on their way, up to 16 pages, each in
    /// its own transaction; [`Progress::Applied`] counts them all.
    pub async fn poll_once(&mut self) -> Result<Progress, SubscribeError> {
        let result = self.step().await;
        self.status.caught_up.store(
            matches!(result, Ok(Progress::CaughtUp { .. })),
            Ordering::Relaxed,
        );
        match &result {
            Ok(_) => self.status.set_error(None),
            Err(e) => {
                self.status.set_error(Some(e.to_string()));
                // After any failure, read the checkpoint again (a commit may have
                // failed after it took effect, or another instance moved it) and find
                // the way from it.
                self.cursor = Cursor::Locate;
                self.checkpoint = None;
                self.read_ahead = None;
                self.stash = None;
            }
        }
        result
    }

    async fn step(&mut self) -> Result<Progress, SubscribeError> {
        self.poll_at_once = false;
        let conditional = matches!(&self.cursor, Cursor::Head { etag: Some(_), .. });
        let cp = self.load_checkpoint().await?;
        let mut fetched = match self.cursor.clone() {
            Cursor::Head { url, etag } => {
                // A zero long poll means plain polling: no `Prefer: wait` at all.
                let wait = etag
                    .is_some()
                    .then_some(self.config.long_poll)
                    .filter(|w| !w.is_zero());
                match self.fetch(&url, etag.as_deref(), wait, cp.position).await? {
                    Answer::NotModified { waited } => {
                        return Ok(Progress::CaughtUp {
                            position: cp.position,
                            waited,
                        });
                    }
                    Answer::Doc(f) => *f,
                }
            }
            Cursor::Page(url) => self.fetch_doc(&url).await?,
            Cursor::Locate => self.locate(&cp).await?,
        };
        // Skip sealed pages that hold nothing new (bounded: each hop moves forward).
        loop {
            let next = cp.position + 1;
            let newest = fetched.doc.entries.last().map_or(0, |e| e.position);
            if fetched.doc.archive && newest < next {
                let url = self.next_archive(&fetched)?;
                fetched = self.fetch_doc(&url).await?;
                continue;
            }
            // An empty head starts after the producer's last position.
            let oldest = fetched.doc.entries.first().map_or_else(
                || fetched.doc.head_position.map_or(next, |h| h + 1),
                |e| e.position,
            );
            if !fetched.doc.archive && oldest > next {
                // The page holding `next` was sealed since we last looked.
                fetched = self.walk_back(fetched, next).await?;
                continue;
            }
            break;
        }
        let applied = self.apply(cp, fetched).await;
        if let Ok(Progress::CaughtUp { waited: false, .. }) = applied {
            self.poll_at_once = !conditional;
        }
        applied
    }

    async fn locate(&mut self, cp: &Checkpoint) -> Result<Fetched, SubscribeError> {
        // A page saved under another origin (the producer or gateway moved) is not
        // trusted: the way is found again from the configured head.
        let saved = cp
            .page_url
            .as_ref()
            .filter(|u| origin(u) == origin(&self.config.feed_url));
        if let Some(url) = saved {
            let f = self.fetch_doc(url).await?;
            if f.doc.archive
                && let Some(d) = &cp.page_digest
                && *d != f.digest
            {
                return Err(SubscribeError::PageChanged { url: f.url });
            }
            return Ok(f);
        }
        let head = self.fetch_doc(&self.config.feed_url.clone()).await?;
        if cp.position == 0 {
            match head.doc.links.first.clone() {
                Some(first) if Some(&first) != head.doc.links.this.as_ref() => {
                    self.fetch_doc(&first).await
                }
                _ => Ok(head),
            }
        } else {
            Ok(head)
        }
    }

    async fn walk_back(
        &mut self,
        mut f: Fetched,
        next: Position,
    ) -> Result<Fetched, SubscribeError> {
        loop {
            let Some(prev) = f.doc.links.prev_archive.clone() else {
                let found = f.doc.entries.first().map_or(0, |e| e.position);
                return Err(SubscribeError::Gap {
                    url: f.url,
                    expected: next,
                    found,
                });
            };
            f = self.fetch_doc(&prev).await?;
            if f.doc.entries.first().is_some_and(|e| e.position <= next) || f.doc.entries.is_empty()
            {
                return Ok(f);
            }
        }
    }

    fn next_archive(&self, f: &Fetched) -> Result<String, SubscribeError> {
        f.doc
            .links
            .next_archive
            .clone()
            .ok_or_else(|| SubscribeError::Malformed {
                url: f.url.clone(),
                reason: "sealed page without a next-archive link".into(),
            })
    }

    async fn apply(&mut self, cp: Checkpoint, mut f: Fetched) -> Result<Progress, SubscribeError> {
        if let Some(head) = f.doc.head_position {
            if head < cp.position {
                tracing::debug!(subscription = %self.config.name, head, checkpoint = cp.position, "the head is behind the checkpoint: a stale cached copy");
            }
            self.status.head.fetch_max(head, Ordering::Relaxed);
        }
        let (events, last, next_cursor) = self.new_events(cp.position, &mut f)?;
        if events.is_empty() {
            // A document with nothing new was not a long poll held by the producer.
            self.cursor = next_cursor;
            return Ok(Progress::CaughtUp {
                position: cp.position,
                waited: false,
            });
        }
        if let Cursor::Page(next) = &next_cursor
            && self.read_ahead.is_none()
        {
            self.read_ahead = Some(ReadAhead::start(
                self.client.clone(),
                next.clone(),
                self.status.clone(),
                self.handler.takes_raw(),
            ));
        }
        let mut page_url = f.doc.links.this.clone().unwrap_or_else(|| f.url.clone());
        let mut page_digest = f.doc.archive.then(|| f.digest.clone());
        let mut now = atom::format_time(&chrono::Utc::now());
        let (events, next_cursor) = match events {
            Batch::Raw(raw) => {
                let page = PageWrite {
                    subscription: self.config.name.clone(),
                    stored: cp.stored,
                    from: cp.position,
                    last,
                    page_url,
                    page_digest,
                    updated_at: now,
                    events: raw,
                };
                match self.write_directly(page, next_cursor).await? {
                    Ok(progress) => return Ok(progress),
                    Err((page, next_cursor)) => {
                        page_url = page.page_url;
                        page_digest = page.page_digest;
                        now = page.updated_at;
                        (Batch::Raw(page.events), next_cursor)
                    }
                }
            }
            events => (events, next_cursor),
        };
        let mut tx = self.db.begin().await?;
        // The compare-and-set comes first, so a competing instance of this
        // subscription waits on the checkpoint row here rather than after running its
        // handler (see the module doc).
        let moved = if cp.stored {
            sqlx::query(CHECKPOINT_CAS_SQL)
                .bind(&self.config.name)
                .bind(last as i64)
                .bind(&page_url)
                .bind(page_digest.as_deref())
                .bind(&now)
                .bind(cp.position as i64)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query(CHECKPOINT_INSERT_SQL)
                .bind(&self.config.name)
                .bind(last as i64)
                .bind(&page_url)
                .bind(page_digest.as_deref())
                .bind(&now)
                .execute(&mut *tx)
                .await?
        }
        .rows_affected();
        if moved != 1 {
            tx.rollback().await?;
            self.checkpoint = None;
            self.cursor = Cursor::Locate;
            let now_at = self.load_checkpoint().await?.position;
            tracing::debug!(subscription = %self.config.name, checkpoint = now_at, "another instance applied these events first");
            return Ok(Progress::Applied {
                events: 0,
                position: now_at,
            });
        }
        match &events {
            Batch::Decoded(events) => self.handler.handle_batch(&mut tx, events).await,
            Batch::Raw(events) => self.handler.handle_raw_batch(&mut tx, events).await,
        }
        .map_err(|source| SubscribeError::Handler {
            position: cp.position + 1,
            source,
        })?;
        tx.commit().await?;
        Ok(self.applied(last, page_url, page_digest, next_cursor, events.len()))
    }

    /// The events of `f` after position `applied`, checked to follow it with no gap;
    /// the last of them (`applied` if none); and where the step after this document
    /// goes.
    fn new_events(
        &self,
        applied: Position,
        f: &mut Fetched,
    ) -> Result<(Batch, Position, Cursor), SubscribeError> {
        let mut events = std::mem::take(&mut f.doc.entries);
        events.retain(|e| e.position > applied);
        let mut expected = applied + 1;
        for e in &events {
            if e.position != expected {
                return Err(SubscribeError::Gap {
                    url: f.url.clone(),
                    expected,
                    found: e.position,
                });
            }
            expected += 1;
        }
        let events =
            Batch::of(events, self.handler.takes_raw()).map_err(|e| SubscribeError::Malformed {
                url: f.url.clone(),
                reason: e.to_string(),
            })?;
        let next_cursor = if f.doc.archive {
            Cursor::Page(self.next_archive(f)?)
        } else {
            Cursor::Head {
                url: f.doc.links.this.clone().unwrap_or_else(|| f.url.clone()),
                etag: f.etag.clone(),
            }
        };
        Ok((events, expected - 1, next_cursor))
    }

    /// After a page's commit: the checkpoint, the status and the way on.
    fn applied(
        &mut self,
        last: Position,
        page_url: String,
        page_digest: Option<String>,
        next_cursor: Cursor,
        events: usize,
    ) -> Progress {
        self.checkpoint = Some(Checkpoint {
            position: last,
            page_url: Some(page_url),
            page_digest,
            stored: true,
        });
        self.status.checkpoint.store(last, Ordering::Relaxed);
        self.status.head.fetch_max(last, Ordering::Relaxed);
        self.cursor = next_cursor;
        Progress::Applied {
            events,
            position: last,
        }
    }

    /// After the writer thread committed `page`: as [`Self::applied`].
    fn written_directly(&mut self, page: PageWrite, next_cursor: Cursor) {
        self.status.direct_pages.fetch_add(1, Ordering::Relaxed);
        let events = page.events.len();
        self.applied(
            page.last,
            page.page_url,
            page.page_digest,
            next_cursor,
            events,
        );
    }

    /// Writes `page` on the subscription's own SQLite connection if the handler
    /// allows it (see [`Handler::imports_into`]), and after it the sealed pages that
    /// follow it as they arrive from the read-ahead, up to [`RUN_PAGES`] pages in all.
    /// The writer thread has the next page queued while it writes one, so it does not
    /// wait for this task between pages; each page is still its own transaction with
    /// its checkpoint. `Ok(Err(..))` hands `page` back, with `next_cursor`, for the
    /// general path: nothing was written.
    async fn write_directly(
        &mut self,
        page: PageWrite,
        next_cursor: Cursor,
    ) -> Result<Result<Progress, (PageWrite, Cursor)>, SubscribeError> {
        if matches!(self.direct, Direct::Untried) {
            let same_file = self.handler.imports_into().is_some_and(|log| {
                self.db.backend() == Backend::Sqlite && log.database().url() == self.db.url()
            });
            self.direct = match same_file.then(|| DirectWriter::for_url(self.db.url())) {
                Some(Some(writer)) => Direct::On(writer),
                _ => Direct::Off,
            };
        }
        let Direct::On(writer) = &self.direct else {
            return Ok(Err((page, next_cursor)));
        };
        let writer = writer.clone();
        // The last page queued and where the step after it goes.
        let mut tail = (page.last, next_cursor.clone());
        let mut queued = VecDeque::from([(page.from + 1, writer.submit(page), next_cursor)]);
        let mut pages = 1;
        let (mut events, mut position) = (0, 0);
        // The first page the writer declined, unless a later one was written.
        let mut declined = None;
        loop {
            if declined.is_none()
                && queued.len() < 2
                && pages < RUN_PAGES
                && let Some((page, cursor)) = self.next_in_run(tail.0, &tail.1).await
            {
                tail = (page.last, cursor.clone());
                queued.push_back((page.from + 1, writer.submit(page), cursor));
                pages += 1;
                continue;
            }
            let Some((first, pending, cursor)) = queued.pop_front() else {
                break;
            };
            match pending.outcome().await {
                Outcome::Written(page) => {
                    // A page after a declined one can only have been written if
                    // another instance wrote the declined one: its checkpoint stands.
                    declined = None;
                    events += page.events.len();
                    position = page.last;
                    self.written_directly(page, cursor);
                }
                Outcome::NotWritten(page, why) => {
                    tracing::debug!(subscription = %self.config.name, position = first, why, "page left to the general path");
                    if declined.is_none() {
                        declined = Some((page, cursor));
                    }
                }
                Outcome::Lost(why) => {
                    self.direct = Direct::Off;
                    return Err(SubscribeError::Handler {
                        position: first,
                        source: anyhow::anyhow!(why),
                    });
                }
            }
        }
        Ok(match declined {
            Some(first) if events == 0 => Err(first),
            _ => Ok(Progress::Applied { events, position }),
        })
    }

    /// The sealed page after position `applied`, if the read-ahead has it (or it is
    /// on its way) and it continues right after `applied`, as a write for the
    /// writer thread, with where the step after it goes. A document that does not
    /// continue the run (the head, say) is kept for the next step; an error is left
    /// for the next step to meet again and report.
    async fn next_in_run(
        &mut self,
        applied: Position,
        cursor: &Cursor,
    ) -> Option<(PageWrite, Cursor)> {
        let Cursor::Page(url) = cursor else {
            return None;
        };
        self.read_ahead.as_ref()?;
        let mut f = self.fetch_doc(url).await.ok()?;
        if !f.doc.archive || f.doc.entries.first().map(|e| e.position) != Some(applied + 1) {
            self.stash = Some(f);
            return None;
        }
        let (Batch::Raw(events), last, next) = self.new_events(applied, &mut f).ok()? else {
            return None;
        };
        let page = PageWrite {
            subscription: self.config.name.clone(),
            stored: true,
            from: applied,
            last,
            page_url: f.doc.links.this.take().unwrap_or(f.url),
            page_digest: Some(f.digest),
            updated_at: atom::format_time(&chrono::Utc::now()),
            events,
        };
        Some((page, next))
    }

    async fn fetch_doc(&mut self, url: &str) -> Result<Fetched, SubscribeError> {
        if let Some(f) = self.stash.take()
            && f.url == url
        {
            return Ok(f);
        }
        match self.fetch(url, None, None, 0).await? {
            Answer::Doc(f) => Ok(*f),
            Answer::NotModified { .. } => Err(SubscribeError::Malformed {
                url: url.to_owned(),
                reason: "304 to an unconditional request".into(),
            }),
        }
    }

    async fn fetch(
        &mut self,
        url: &str,
        etag: Option<&str>,
        wait: Option<Duration>,
        applied: Position,
    ) -> Result<Answer, SubscribeError> {
        // The next page, if it was read ahead; anything else the reader holds is
        // dropped with it, and a page whose parse did not finish is requested again.
        let ahead = match self.read_ahead.as_mut() {
            Some(r) if etag.is_none() && wait.is_none() => r.take(url).await,
            _ => None,
        };
        if ahead.is_none() {
            self.read_ahead = None;
        }
        let got = match ahead {
            Some(got) => got?,
            None => {
                self.status.requests.fetch_add(1, Ordering::Relaxed);
                let (raw, _) = raw_get(
                    self.client.clone(),
                    url.to_owned(),
                    etag.map(str::to_owned),
                    wait,
                )
                .await?;
                read_doc(url, raw, applied, self.handler.takes_raw())?
            }
        };
        let (etag, digest, doc) = match got {
            Got::NotModified { waited } => return Ok(Answer::NotModified { waited }),
            Got::Doc { etag, digest, doc } => (etag, digest, *doc),
        };
        if let Some(head) = doc.head_position {
            self.status.head.fetch_max(head, Ordering::Relaxed);
        }
        self.check_chain(url, &doc)?;
        if doc.archive {
            match self.seen.get(url) {
                Some(d) if *d != digest => {
                    return Err(SubscribeError::PageChanged {
                        url: url.to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    if self.seen.len() > 10_000 {
                        self.seen.clear();
                    }
                    self.seen.insert(url.to_owned(), digest.clone());
                }
            }
        }
        Ok(Answer::Doc(Box::new(Fetched {
            url: url.to_owned(),
            doc,
            digest,
            etag,
        })))
    }
}

impl<H> Subscriber<H> {
    /// Checks `doc`'s link into the hash chain against the digest of its
    /// `prev-archive` page as this subscriber downloaded it, where that is known.
    fn check_chain(&self, url: &str, doc: &ParsedFeed<EntryJson>) -> Result<(), SubscribeError> {
        let (Some(prev), Some(recorded)) = (&doc.links.prev_archive, &doc.prev_archive_digest)
        else {
            return Ok(());
        };
        let from_checkpoint = self.checkpoint.as_ref().and_then(|c| {
            (c.page_url.as_ref() == Some(prev))
                .then(|| c.page_digest.clone())
                .flatten()
        });
        let Some(actual) = self.seen.get(prev).cloned().or(from_checkpoint) else {
            return Ok(());
        };
        if *recorded != actual {
            return Err(SubscribeError::ChainBroken {
                url: url.to_owned(),
                prev: prev.clone(),
                recorded: recorded.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// Reads a response as a feed document (see [`Got`]), leaving out the entries up to
/// `applied` (see [`atom::parse_feed_after`]), with the entries' JSON as text if
/// `raw_json` (see [`Handler::takes_raw`]).
fn read_doc(url: &str, raw: Raw, applied: Position, raw_json: bool) -> Result<Got, SubscribeError> {
    let (etag, body) = match raw {
        Raw::NotModified { waited } => return Ok(Got::NotModified { waited }),
        Raw::Body { etag, body } => (etag, body),
    };
    let digest = hex(&Sha256::digest(&body));
    let text = std::str::from_utf8(&body).map_err(|e| SubscribeError::Malformed {
        url: url.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let doc = atom::parse_feed_with(text, applied, EntryJson::reader(raw_json)).map_err(|e| {
        SubscribeError::Malformed {
            url: url.to_owned(),
            reason: e.0,
        }
    })?;
    Ok(Got::Doc {
        etag,
        digest,
        doc: Box::new(doc),
    })
}

/// One GET of a feed document, up to its body.
async fn raw_get(
    client: reqwest::Client,
    url: String,
    etag: Option<String>,
    wait: Option<Duration>,
) -> Result<(Raw, Option<String>), SubscribeError> {
    let mut req = client
        .get(&url)
        .header(reqwest::header::ACCEPT, atom::FEED_MEDIA_TYPE)
        .timeout(wait.unwrap_or_default() + Duration::from_secs(30));
    if let Some(etag) = &etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    if let Some(wait) = wait {
        req = req.header("prefer", format!("wait={}", wait.as_secs()));
    }
    let resp = req
        .send()
        .await
        .map_err(|source| SubscribeError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        let waited = resp.headers().contains_key("preference-applied");
        return Ok((Raw::NotModified { waited }, None));
    }
    if !status.is_success() {
        return Err(SubscribeError::Http {
            url,
            status: status.as_u16(),
        });
    }
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let next = resp
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(next_archive_in);
    let body = read_limited(resp, &url).await?;
    Ok((Raw::Body { etag, body }, next))
}

/// The `next-archive` target in an RFC 8288 `Link` header value, if it names one
/// (read loosely: it is a hint, checked against the document later).
fn next_archive_in(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("rel="))
            .any(|rel| {
                rel.trim_matches('"')
                    .split_whitespace()
                    .any(|r| r == "next-archive")
            })
            .then(|| target.to_owned())
    })
}

/// Reads a response body, refusing it as soon as it grows past
/// [`atom::MAX_DOCUMENT_BYTES`] (so a hostile producer cannot exhaust memory).
async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
) -> Result<bytes::Bytes, SubscribeError> {
    let too_large = || SubscribeError::Malformed {
        url: url.to_owned(),
        reason: format!("document larger than {} bytes", atom::MAX_DOCUMENT_BYTES),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > atom::MAX_DOCUMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| SubscribeError::Unreachable {
            url: url.to_owned(),
            source,
        })?
    {
        if body.len() + chunk.len() > atom::MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Forgets a subscription's checkpoint (for a rebuild: drop the replica's tables in
/// the same transaction, then replay from position 1).
pub async fn reset_checkpoint(tx: &mut AnyConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM feed_checkpoints WHERE subscription = $1")
        .bind(name)
        .execute(tx)
        .await?;
    Ok(())
}

/// `scheme://host:port` of a URL (the text before the path).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
