//! Test helpers: a real upstream producer (event log + feed server on a port-0
//! socket), the service under test on its own socket and data folder, and readers for
//! feeds and JSON resources.

use std::future::Future;
use std::time::Duration;

use feed::event::{Event, EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long anything in these tests may take to show up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Logs to stderr when `TEST_LOG` is set.
pub(crate) fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        kit::init_tracing();
    }
}

/// A stand-in for an upstream service: its own SQLite event log, published over HTTP
/// by the real feed server, with small pages so subscribers walk archives too.
pub(crate) struct Producer {
    pub(crate) log: EventLog,
    pub(crate) base: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Producer {
    pub(crate) async fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::connect(&dir.path().join(format!("{name}.db")).display().to_string())
            .await
            .expect("open the producer's log");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let mut config = FeedConfig::new(&base, name);
        config.page_size = Some(5);
        let server = FeedServer::new(log.clone(), config)
            .await
            .expect("feed server");
        let stop = CancellationToken::new();
        tokio::spawn(feed::server::serve(
            listener,
            server.router(),
            stop.clone().cancelled_owned(),
        ));
        Self {
            log,
            base,
            stop,
            _dir: dir,
        }
    }

    /// The head URL a subscriber follows.
    pub(crate) fn feed_url(&self) -> String {
        format!("{}/feed", self.base)
    }

    /// Appends one event (a fresh id) and returns its id.
    pub(crate) async fn append(&self, stream: &str, event_type: &str, data: Value) -> Uuid {
        let event = NewEvent::new(
            StreamId::parse(stream).expect("stream"),
            EventType::parse(event_type).expect("type"),
            data,
        );
        let id = event.id;
        let mut tx = self.log.begin().await.expect("begin");
        self.log
            .append(&mut tx, Expected::Any, &[event])
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        id
    }

    pub(crate) async fn head(&self) -> u64 {
        self.log.head().await.expect("head")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A service under test running in this process on a real socket.
pub(crate) struct Running {
    pub(crate) base: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `run` on a fresh port-0 listener.
    pub(crate) async fn start<C, F>(
        config: C,
        run: impl FnOnce(C, tokio::net::TcpListener, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::on(listener, config, run)
    }

    /// Starts `run` on `listener`.
    pub(crate) fn on<C, F>(
        listener: tokio::net::TcpListener,
        config: C,
        run: impl FnOnce(C, tokio::net::TcpListener, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(config, listener, stop.clone()));
        Self { base, stop, task }
    }

    /// Stops the service and waits until it has shut down; panics if it failed.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the service stops in time")
            .expect("the service task does not panic")
            .expect("the service stops without error");
    }

    pub(crate) fn feed_url(&self) -> String {
        format!("{}/feed", self.base)
    }

    /// GET `path`: the status and the JSON body (Null when not JSON).
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    }

    /// Waits until every subscription has applied everything up to the heads given,
    /// as the service's index shows it.
    pub(crate) async fn wait_caught_up(&self, heads: &[(&str, u64)]) {
        eventually(&format!("caught up with {heads:?}"), || async {
            let (_, index) = self.get("/").await;
            heads.iter().all(|(name, head)| {
                index["follows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| f["subscription"] == *name && f["checkpoint"].as_u64() >= Some(*head))
            })
        })
        .await;
    }
}

pub(crate) fn client() -> reqwest::Client {
    feed::subscriber::http_client()
}

/// Polls `check` until it holds; panics naming `what` after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the feed at `url`, oldest first, read as any subscriber reads it:
/// from the head's `first` link along `next-archive` to the head.
pub(crate) async fn feed_events(url: &str) -> Vec<Event> {
    async fn get(url: &str) -> feed::atom::ParsedFeed {
        let text = client()
            .get(url)
            .header(reqwest::header::ACCEPT, feed::atom::FEED_MEDIA_TYPE)
            .send()
            .await
            .expect("GET feed")
            .error_for_status()
            .expect("feed status")
            .text()
            .await
            .expect("feed body");
        feed::atom::parse_feed(&text).expect("a valid feed")
    }
    let head = get(url).await;
    let mut page = match head.links.first.clone() {
        Some(first) if Some(&first) != head.links.this.as_ref() => get(&first).await,
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
        page = get(&next).await;
    }
}

/// The events of `event_type` in `events`.
pub(crate) fn of_type<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .collect()
}
