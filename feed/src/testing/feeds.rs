//! Waiting for things to happen, and reading a whole feed as a subscriber does.

use std::future::Future;
use std::time::Duration;

use crate::atom::{FEED_MEDIA_TYPE, ParsedFeed, parse_feed};
use crate::event::Event;

/// How long anything in a test may take to show up before [`eventually`] gives up.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What a probe of [`eventually`] answers: `true` or `Some(value)` when the wait is
/// over.
pub trait Ready {
    /// What the wait gives back once it is over.
    type Value;
    /// `Some` once the wait is over.
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Runs `probe` every 50 ms until it answers `true` or `Some`, and returns what it
/// gave; panics naming `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut probe: F) -> <Fut::Output as Ready>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Ready,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await.ready() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the feed whose head is at `url`, oldest first, read as a
/// subscriber reads it: from the head's `first` link along `next-archive` to the
/// head. Panics, naming the document, on an HTTP error or a document that is not a
/// valid feed.
pub async fn feed_events(client: &reqwest::Client, url: &str) -> Vec<Event> {
    let head = feed_document(client, url).await;
    let mut page = match head.links.first.clone() {
        Some(first) if Some(&first) != head.links.this.as_ref() => {
            feed_document(client, &first).await
        }
        _ => head,
    };
    let mut events = Vec::new();
    loop {
        events.append(&mut page.entries);
        if !page.archive {
            return events;
        }
        let next = page
            .links
            .next_archive
            .clone()
            .expect("a sealed page links the next one");
        page = feed_document(client, &next).await;
    }
}

/// The feed document at `url`, parsed.
pub async fn feed_document(client: &reqwest::Client, url: &str) -> ParsedFeed {
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, FEED_MEDIA_TYPE)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    assert!(status.is_success(), "GET {url}: {status}");
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    parse_feed(&text).unwrap_or_else(|e| panic!("{url} is not a valid feed: {e}"))
}

/// The events of `event_type` in `events`.
pub fn of_type<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .collect()
}
