use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use tokio::task::JoinHandle;

/// A feed server on a port-0 listener, stopped when dropped.
pub(crate) struct TestFeed {
    pub(crate) base: String,
    server: CancelOnDrop,
}

impl TestFeed {
    pub(crate) async fn start(log: EventLog, page_size: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(log, page_size, listener).await
    }

    pub(crate) async fn start_on(
        log: EventLog,
        page_size: u64,
        listener: tokio::net::TcpListener,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let mut config = FeedConfig::new(&base, "test");
        config.page_size = Some(page_size);
        let server = FeedServer::new(log, config).await.expect("feed server");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle: JoinHandle<()> = tokio::spawn(async move {
            let _ = feed::server::serve(listener, server.router(), async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            base,
            server: CancelOnDrop(Some(tx), handle),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server and waits until the port is closed.
    pub(crate) async fn stop(mut self) {
        self.server.stop().await;
    }
}

struct CancelOnDrop(Option<tokio::sync::oneshot::Sender<()>>, JoinHandle<()>);

impl CancelOnDrop {
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
        self.1.abort();
        let _ = (&mut self.1).await;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
        self.1.abort();
    }
}

pub(crate) fn sqlite_url(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// A fresh SQLite log in `file` of a directory of its own.
pub(crate) async fn sqlite_log(file: &str) -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, file))
        .await
        .expect("log");
    (dir, log)
}

pub(crate) fn event(stream: &str, n: u64) -> NewEvent {
    event_with(stream, serde_json::json!({ "n": n, "text": "<&\"'>" }))
}

/// A `Something.Happened` event on `stream` with `data`.
pub(crate) fn event_with(stream: &str, data: serde_json::Value) -> NewEvent {
    NewEvent::new(
        StreamId::parse(stream).expect("stream"),
        EventType::parse("Something.Happened").expect("type"),
        data,
    )
}

/// Appends `n` events, `per_tx` per transaction, to streams s-0 .. s-9.
pub(crate) async fn append_n(log: &EventLog, n: u64, per_tx: u64) {
    let mut i = 0;
    while i < n {
        let mut tx = log.begin().await.expect("begin");
        let batch: Vec<NewEvent> = (i..(i + per_tx).min(n))
            .map(|k| event(&format!("s-{}", k % 10), k))
            .collect();
        log.append(&mut tx, Expected::Any, &batch)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        i += per_tx;
    }
}

pub(crate) fn client() -> reqwest::Client {
    feed::install_crypto();
    reqwest::Client::builder()
        .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
        .no_gzip()
        .no_zstd()
        .build()
        .expect("client")
}

pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = client.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

pub(crate) fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// Rewrites the bytes the hash chain keeps of the sealed page starting at `from`
/// (every base URL's): `find` in its Atom becomes `replace`. This is what a rewritten
/// history looks like to a subscriber, since an origin serves sealed pages from
/// these bytes.
pub(crate) async fn rewrite_stored_page(
    db: &feed::db::Database,
    from: u64,
    find: &str,
    replace: &str,
) {
    let stored: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT base_url, atom_zstd FROM feed_page_digests \
         WHERE from_position = $1 AND atom_zstd IS NOT NULL",
    )
    .bind(from as i64)
    .fetch_all(db.pool())
    .await
    .expect("stored pages");
    assert!(!stored.is_empty(), "no bytes kept of page {from}");
    for (base, z) in stored {
        let atom =
            String::from_utf8(zstd::stream::decode_all(&z[..]).expect("zstd")).expect("utf-8");
        assert!(atom.contains(find), "{find} is not in page {from}");
        let z = zstd::bulk::compress(atom.replacen(find, replace, 1).as_bytes(), 3).expect("zstd");
        sqlx::query(
            "UPDATE feed_page_digests SET atom_zstd = $1 WHERE base_url = $2 AND from_position = $3",
        )
        .bind(z)
        .bind(base)
        .bind(from as i64)
        .execute(db.pool())
        .await
        .expect("rewrite");
    }
}
