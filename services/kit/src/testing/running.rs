//! Services on real sockets for the services' integration tests: an upstream
//! producer (an event log published by the real feed server) and a service under test
//! started from its `run` function.

use std::future::Future;

use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use feed::testing::{PATIENCE, eventually};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Logs to stderr when `TEST_LOG` is set.
pub fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        crate::init_tracing();
    }
}

/// The HTTP client a subscriber uses.
pub fn client() -> reqwest::Client {
    feed::subscriber::http_client()
}

/// A stand-in for an upstream service: its own SQLite event log in a temporary folder,
/// published over HTTP by the real feed server with pages of 5 events, so subscribers
/// walk archive pages too. The server stops when this is dropped.
#[derive(Debug)]
pub struct Producer {
    /// The producer's log, to append to and read from directly.
    pub log: EventLog,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Producer {
    /// Starts a producer called `name` (its log's file name and feed title).
    pub async fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::connect(&dir.path().join(format!("{name}.db")).display().to_string())
            .await
            .expect("open the producer's log");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
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
    pub fn feed_url(&self) -> String {
        format!("{}/feed", self.base)
    }

    /// Appends one event with a fresh id to `stream` and returns the id.
    pub async fn append(&self, stream: &str, event_type: &str, data: Value) -> Uuid {
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

    /// The position of the producer's last event.
    pub async fn head(&self) -> u64 {
        self.log.head().await.expect("head")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A service under test running in this process on a real socket, as its binary
/// runs it: `run(config, listener, shutdown)`.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `run` on a fresh port-0 listener.
    pub async fn start<C, F>(
        config: C,
        run: impl FnOnce(C, TcpListener, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, config, run)
    }

    /// Starts `run` on `listener` (bound beforehand, when services must know each
    /// other's addresses before any of them starts).
    pub fn on<C, F>(
        listener: TcpListener,
        config: C,
        run: impl FnOnce(C, TcpListener, CancellationToken) -> F,
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
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the service stops in time")
            .expect("the service task does not panic")
            .expect("the service stops without error");
    }

    /// The service's own feed.
    pub fn feed_url(&self) -> String {
        format!("{}/feed", self.base)
    }

    /// GET `path`: the status and the JSON body (`Null` when not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
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

    /// Waits until every subscription named in `heads` has applied everything up to
    /// its position there, as the service's index shows it.
    pub async fn wait_caught_up(&self, heads: &[(&str, u64)]) {
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
