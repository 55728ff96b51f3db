//! `feedctl verify`: walks a whole feed and checks what subscribers rely on, and,
//! with `--against`, that a database holds exactly the same log.
//!
//! The walk starts at the head's `first` link and follows `next-archive` to the head.
//! Every document must name the right `self`, `current`, `first` and `prev-archive`;
//! positions must run 1, 2, 3, ... without a gap; a sealed page must answer 304 to
//! its ETag and download to the same bytes twice; each document's
//! `ev:prevArchiveDigest` must be the SHA-256 of the page before it as downloaded
//! (the hash chain); and the walk must reach the positions the head announced when
//! the walk began. Appends during the walk are normal: the walk simply ends later.
//!
//! A problem is reported with the first position it affects; the last line names the
//! first position where the history diverges. A chain link names a whole page (its
//! first position), since the digest covers the page; `--against` compares event by
//! event and names the exact position.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use feed::atom::{self, ParsedFeed};
use feed::event::Event;
use feed::store::EventLog;
use sha2::{Digest, Sha256};

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The feed's head URL.
    feed_url: String,
    /// Also prove that this database (a replica made by `feedctl replay`, or any
    /// feed log) holds the same events: positions, ids, streams, types, times, data
    /// and metadata.
    #[arg(long, value_name = "DATABASE_URL")]
    against: Option<String>,
}

struct Page {
    /// Where the request ended up: the page after the newest sealed page redirects to
    /// the head.
    url: String,
    doc: ParsedFeed,
    body: bytes::Bytes,
    etag: Option<String>,
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Page> {
    let resp = client
        .get(url)
        .header("accept", atom::FEED_MEDIA_TYPE)
        .send()
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    let status = resp.status();
    let final_url = resp.url().to_string();
    if !status.is_success() {
        anyhow::bail!("{url} answered HTTP {status}");
    }
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if resp
        .content_length()
        .is_some_and(|n| n > atom::MAX_DOCUMENT_BYTES as u64)
    {
        anyhow::bail!("{url} is larger than {} bytes", atom::MAX_DOCUMENT_BYTES);
    }
    let mut resp = resp;
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("cannot read {url}"))?
    {
        if body.len() + chunk.len() > atom::MAX_DOCUMENT_BYTES {
            anyhow::bail!("{url} is larger than {} bytes", atom::MAX_DOCUMENT_BYTES);
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let text = std::str::from_utf8(&body).with_context(|| format!("{url} is not UTF-8"))?;
    let doc = atom::parse_feed(text).with_context(|| url.to_owned())?;
    Ok(Page {
        url: final_url,
        doc,
        body,
        etag,
    })
}

fn digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How precisely a problem locates the divergence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    /// At this very position.
    Exact(u64),
    /// Somewhere in the page that starts at this position (a hash chain link).
    Page(u64),
    Nowhere,
}

/// What the walk found wrong, each with where it diverges.
#[derive(Default)]
struct Problems(Vec<(Where, String)>);

impl Problems {
    fn at(&mut self, position: u64, text: String) {
        self.0.push((Where::Exact(position), text));
    }
    fn in_page(&mut self, from: u64, text: String) {
        self.0.push((Where::Page(from), text));
    }
    fn other(&mut self, text: String) {
        self.0.push((Where::Nowhere, text));
    }
    /// The first position known to diverge; failing that, the first page.
    fn summary(&self) -> String {
        let exact = self.0.iter().filter_map(|(w, _)| match w {
            Where::Exact(p) => Some(*p),
            _ => None,
        });
        let page = self.0.iter().filter_map(|(w, _)| match w {
            Where::Page(p) => Some(*p),
            _ => None,
        });
        match (exact.min(), page.min()) {
            (Some(p), Some(page)) if page < p => format!(
                "; history diverges at position {p} (and in the page starting at position {page})"
            ),
            (Some(p), _) => format!("; history diverges at position {p}"),
            (None, Some(page)) => {
                format!("; history diverges in the page starting at position {page}")
            }
            (None, None) => String::new(),
        }
    }
}

/// The events of a database, read a page at a time, to compare with the feed's.
struct Replica {
    log: EventLog,
    buffered: std::collections::VecDeque<Event>,
    next: u64,
    head: u64,
}

impl Replica {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let is_url = url.contains("://") || url.starts_with("sqlite:");
        if !is_url && !Path::new(url).exists() {
            anyhow::bail!("no database at {url}");
        }
        let log = EventLog::connect(url)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        let head = log.head().await?;
        Ok(Self {
            log,
            buffered: Default::default(),
            next: 1,
            head,
        })
    }

    async fn event(&mut self, position: u64) -> anyhow::Result<Option<Event>> {
        if position != self.next {
            self.buffered.clear();
            self.next = position;
        }
        if self.buffered.is_empty() {
            let batch = self.log.read_range(position, position + 499).await?;
            self.buffered.extend(batch);
        }
        self.next += 1;
        match self.buffered.front() {
            Some(e) if e.position == position => Ok(self.buffered.pop_front()),
            _ => {
                self.buffered.clear();
                Ok(None)
            }
        }
    }
}

/// Which field of an event differs, if any.
fn difference(feed: &Event, replica: &Event) -> Option<&'static str> {
    if feed.id != replica.id {
        Some("id")
    } else if feed.stream != replica.stream {
        Some("stream")
    } else if feed.stream_version != replica.stream_version {
        Some("stream version")
    } else if feed.event_type != replica.event_type {
        Some("type")
    } else if feed.occurred_at != replica.occurred_at {
        Some("occurred_at")
    } else if feed.data != replica.data {
        Some("data")
    } else if feed.metadata != replica.metadata {
        Some("metadata")
    } else {
        None
    }
}

pub(crate) async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = feed::subscriber::http_client();
    let mut replica = match &a.against {
        Some(url) => Some(Replica::open(url).await?),
        None => None,
    };
    let head = get(&client, &a.feed_url).await?;
    let mut problems = Problems::default();
    let current = head
        .doc
        .links
        .current
        .clone()
        .unwrap_or_else(|| a.feed_url.clone());
    let first_url = head
        .doc
        .links
        .first
        .clone()
        .unwrap_or_else(|| current.clone());

    let mut expected = 1u64;
    let mut pages = 0usize;
    // The previous sealed page: its URL, its first position and its digest.
    let mut prev: Option<(String, u64, String)> = None;
    let mut url = first_url.clone();
    let mut last_doc_head = None;
    let mut rereads = 0;
    loop {
        let page = match get(&client, &url).await {
            Ok(p) => p,
            Err(e) => {
                problems.at(
                    expected,
                    format!(
                        "cannot read the document after position {}: {e:#}",
                        expected - 1
                    ),
                );
                break;
            }
        };
        // The page being filled redirects to the head. If it was sealed between the
        // redirect and the head's answer, the head has moved past it: read it again.
        if page.url != url
            && !page.doc.archive
            && page.doc.links.prev_archive.as_deref() == Some(url.as_str())
            && rereads < 5
        {
            rereads += 1;
            continue;
        }
        rereads = 0;
        let requested = std::mem::replace(&mut url, page.url.clone());
        pages += 1;
        let d = &page.doc;
        let first_here = d.entries.first().map_or(expected, |e| e.position);
        if d.links.this.as_deref() != Some(url.as_str()) {
            problems.at(
                first_here,
                format!("{url}: self link is {:?}", d.links.this),
            );
        }
        if d.links.current.as_deref() != Some(current.as_str()) {
            problems.at(
                first_here,
                format!(
                    "{url}: current link is {:?}, expected {current}",
                    d.links.current
                ),
            );
        }
        if d.links.first.as_deref() != Some(first_url.as_str()) {
            problems.at(
                first_here,
                format!(
                    "{url}: first link is {:?}, expected {first_url}",
                    d.links.first
                ),
            );
        }
        let prev_url = prev.as_ref().map(|p| p.0.clone());
        if d.links.prev_archive != prev_url {
            problems.at(
                first_here,
                format!(
                    "{url}: prev-archive is {:?}, expected {prev_url:?}",
                    d.links.prev_archive
                ),
            );
        }
        if let Some((prev_url, prev_from, prev_digest)) = &prev {
            match &d.prev_archive_digest {
                None => problems.in_page(
                    *prev_from,
                    format!("{url}: no ev:prevArchiveDigest for {prev_url}"),
                ),
                Some(recorded) if recorded != prev_digest => problems.in_page(
                    *prev_from,
                    format!(
                        "{prev_url} was rewritten: {url} records digest {recorded}, the page downloads as {prev_digest}"
                    ),
                ),
                Some(_) => {}
            }
        }
        for e in &d.entries {
            if e.position != expected {
                problems.at(
                    expected.min(e.position),
                    format!("{url}: expected position {expected}, found {}", e.position),
                );
                expected = e.position;
            }
            expected += 1;
            if let Some(r) = replica.as_mut() {
                match r.event(e.position).await? {
                    None => problems.at(
                        e.position,
                        format!("the replica has no event at position {}", e.position),
                    ),
                    Some(mine) => {
                        if let Some(field) = difference(e, &mine) {
                            problems.at(
                                e.position,
                                format!("the replica differs at position {} ({field})", e.position),
                            );
                        }
                    }
                }
            }
        }
        if !d.archive {
            if url != current {
                problems.at(
                    first_here,
                    format!("{url}: not sealed, but not the head {current} either"),
                );
            }
            last_doc_head = d.head_position;
            break;
        }
        // A sealed page must not change: a conditional request gets 304 and a second
        // download is byte-identical.
        if let Some(etag) = &page.etag {
            let r = client
                .get(&url)
                .header("accept", atom::FEED_MEDIA_TYPE)
                .header("if-none-match", etag)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::NOT_MODIFIED {
                problems.at(
                    first_here,
                    format!(
                        "{url}: sealed page answered {} to If-None-Match {etag}",
                        r.status()
                    ),
                );
            }
        } else {
            problems.at(first_here, format!("{url}: sealed page without an ETag"));
        }
        match get(&client, &url).await {
            Ok(again) if again.body != page.body => problems.at(
                first_here,
                format!("{url}: sealed page changed between two downloads"),
            ),
            Ok(_) => {}
            Err(e) => problems.at(first_here, format!("{url}: second download failed: {e:#}")),
        }
        let Some(next) = d.links.next_archive.clone() else {
            problems.at(expected, format!("{url}: sealed page without next-archive"));
            break;
        };
        prev = Some((requested, first_here, digest(&page.body)));
        url = next;
        if pages > 10_000_000 {
            problems.other("more than ten million pages: giving up".into());
            break;
        }
    }
    let last = expected - 1;
    // The walk began after the head was read, so it must reach at least what the head
    // announced then (and what the last document announced); more is normal on a
    // live feed.
    let announced = head.doc.head_position.max(last_doc_head).unwrap_or(0);
    if last < announced {
        problems.at(
            last + 1,
            format!("the head announces position {announced}, but the walk ended at {last}"),
        );
    }
    if let Some(r) = &replica
        && r.head > last
    {
        problems.at(
            last + 1,
            format!(
                "the replica has events up to position {}, the feed only up to {last}",
                r.head
            ),
        );
    }
    if problems.0.is_empty() {
        let against = a
            .against
            .as_deref()
            .map(|db| format!(", {db} holds the same events"))
            .unwrap_or_default();
        println!(
            "ok: {pages} documents, positions 1..={last} contiguous, links consistent, sealed pages stable, hash chain intact{against}"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (_, p) in &problems.0 {
        eprintln!("feedctl: problem: {p}");
    }
    let at = problems.summary();
    eprintln!(
        "feedctl: error: {} problem(s) in {}{at}",
        problems.0.len(),
        a.feed_url
    );
    Ok(ExitCode::FAILURE)
}
