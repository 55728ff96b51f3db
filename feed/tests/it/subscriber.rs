use std::sync::Arc;
use std::time::Duration;

use feed::db::Database;
use feed::event::Event;
use feed::store::EventLog;
use feed::subscriber::{Handler, Progress, SubscribeError, Subscriber, SubscriberConfig};
use futures::future::BoxFuture;
use sqlx::AnyConnection;

use crate::helpers::{TestFeed, append_n, sqlite_url};

/// A replica: one row per event, and a count of how often each was applied (a
/// duplicate application would make a count 2).
struct Replica;

impl Handler for Replica {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        e: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO replica (position, id, data, applied) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (position) DO UPDATE SET applied = replica.applied + 1",
            )
            .bind(e.position as i64)
            .bind(e.id.to_string())
            .bind(e.data.to_string())
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}

async fn replica_db(dir: &tempfile::TempDir) -> Database {
    let db = Database::connect(&sqlite_url(dir, "replica.db"))
        .await
        .expect("db");
    db.migrate(&feed::db::FEED_MIGRATIONS)
        .await
        .expect("migrate");
    sqlx::query("CREATE TABLE IF NOT EXISTS replica (position BIGINT PRIMARY KEY, id TEXT NOT NULL, data TEXT NOT NULL, applied BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .expect("table");
    db
}

async fn rows(db: &Database) -> Vec<(i64, String, String, i64)> {
    sqlx::query_as("SELECT position, id, data, applied FROM replica ORDER BY position")
        .fetch_all(db.pool())
        .await
        .expect("rows")
}

fn fast(name: &str, url: String) -> SubscriberConfig {
    let mut c = SubscriberConfig::new(name, url);
    c.long_poll = Duration::from_secs(1);
    c.backoff = (Duration::from_millis(20), Duration::from_millis(400));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_aborted_mid_page_and_restarted_applies_every_event_exactly_once() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 3000, 500).await;
    let feed = TestFeed::start(log.clone(), 100).await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..15 {
        let sub = Subscriber::new(fast("replica", feed.url("/feed")), db.clone(), Replica);
        let task = tokio::spawn(sub.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(rng.u64(1..40))).await;
        task.abort();
        let _ = task.await;
    }
    let mut sub = Subscriber::new(fast("replica", feed.url("/feed")), db.clone(), Replica);
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    let got = rows(&db).await;
    assert_eq!(got.len(), 3000);
    let source = log.read_range(1, 3000).await.expect("source");
    for (row, e) in got.iter().zip(&source) {
        assert_eq!(row.0 as u64, e.position);
        assert_eq!(row.1, e.id.to_string());
        assert_eq!(row.2, e.data.to_string());
        assert_eq!(row.3, 1, "position {} applied {} times", row.0, row.3);
    }
    assert_eq!(sub.checkpoint().await.expect("checkpoint"), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_backs_off_while_the_producer_is_down_and_then_catches_up() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 250, 250).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let url = format!("http://{addr}/feed");
    drop(listener);
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let sub = Subscriber::new(fast("replica", url), db.clone(), Replica);
    let status = sub.status();
    let task = tokio::spawn(sub.run(std::future::pending()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_down = status.requests();
    // Backoff 20 ms doubling to 400 ms: a handful of attempts in 2 s, not a hot loop.
    assert!(
        (2..=15).contains(&while_down),
        "{while_down} requests while the producer was down"
    );
    assert!(status.last_error().is_some());
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let _feed = TestFeed::start_on(log.clone(), 100, listener).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status.checkpoint() < 250 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not catch up: {}",
            status.checkpoint()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(rows(&db).await.len(), 250);
    assert!(status.last_error().is_none());
}

/// A producer that serves hand-made documents.
async fn static_feed(pages: Vec<(&'static str, String)>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let pages = Arc::new(
        pages
            .into_iter()
            .map(|(p, body)| (p.to_owned(), body.replace("BASE", &base)))
            .collect::<Vec<_>>(),
    );
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let pages = pages.clone();
        async move {
            match pages.iter().find(|(p, _)| p == uri.path()) {
                Some((_, body)) => (axum::http::StatusCode::OK, body.clone()),
                None => (axum::http::StatusCode::NOT_FOUND, String::new()),
            }
        }
    });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, handle)
}

fn entry(position: u64) -> String {
    format!(
        "<entry><id>urn:uuid:{}</id><title>Thing</title><updated>2026-01-01T00:00:00Z</updated>\
         <ev:position>{position}</ev:position><ev:stream>s</ev:stream><ev:streamVersion>{position}</ev:streamVersion>\
         <content type=\"text\">{{\"n\":{position}}}</content></entry>",
        uuid::Uuid::from_u128(position as u128)
    )
}

fn doc(
    this: &str,
    prev: Option<&str>,
    next: Option<&str>,
    archive: bool,
    positions: &[u64],
) -> String {
    let mut s = format!(
        "<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:fh=\"http://purl.org/syndication/history/1.0\" xmlns:ev=\"urn:x-pullfeeds:event\">\
         <id>BASE/feed</id><title>t</title><updated>2026-01-01T00:00:00Z</updated>\
         <link rel=\"self\" href=\"BASE{this}\"/><link rel=\"current\" href=\"BASE/feed\"/><link rel=\"first\" href=\"BASE/feed/archive/1-3\"/>"
    );
    if let Some(p) = prev {
        s.push_str(&format!("<link rel=\"prev-archive\" href=\"BASE{p}\"/>"));
    }
    if let Some(n) = next {
        s.push_str(&format!("<link rel=\"next-archive\" href=\"BASE{n}\"/>"));
    }
    if archive {
        s.push_str("<fh:archive/>");
    }
    for p in positions.iter().rev() {
        s.push_str(&entry(*p));
    }
    s.push_str("</feed>");
    s
}

#[tokio::test]
async fn a_page_that_skips_a_position_stops_the_subscriber_with_the_checkpoint_untouched() {
    let (base, _server) = static_feed(vec![
        (
            "/feed/archive/1-3",
            doc(
                "/feed/archive/1-3",
                None,
                Some("/feed/archive/4-6"),
                true,
                &[1, 2, 3],
            ),
        ),
        // Position 5 is missing.
        (
            "/feed/archive/4-6",
            doc(
                "/feed/archive/4-6",
                Some("/feed/archive/1-3"),
                Some("/feed"),
                true,
                &[4, 6, 7],
            ),
        ),
        (
            "/feed",
            doc("/feed", Some("/feed/archive/4-6"), None, false, &[8]),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let sub = Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    let err = tokio::time::timeout(Duration::from_secs(10), sub.run(std::future::pending()))
        .await
        .expect("a gap is fatal, not retried forever")
        .expect_err("gap");
    assert!(
        matches!(
            err,
            SubscribeError::Gap {
                expected: 5,
                found: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("expected position 5"));
    let mut again = Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    assert_eq!(
        again.checkpoint().await.expect("checkpoint"),
        3,
        "only the complete first page was applied"
    );
    assert_eq!(rows(&db).await.len(), 3);
}

#[tokio::test]
async fn a_malformed_document_stops_the_subscriber() {
    let (base, _server) = static_feed(vec![("/feed", "<feed><oops".to_owned())]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("replica", format!("{base}/feed")), db, Replica);
    let err = sub.poll_once().await.expect_err("malformed");
    assert!(err.is_fatal());
    assert!(matches!(err, SubscribeError::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn unknown_event_types_and_fields_reach_the_handler_to_skip_and_do_not_stop_it() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 5, 5).await;
    let feed = TestFeed::start(log, 100).await;
    struct Picky;
    impl Handler for Picky {
        fn handle<'a>(
            &'a self,
            _tx: &'a mut AnyConnection,
            e: &'a Event,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                #[derive(serde::Deserialize)]
                struct Known {
                    n: u64,
                }
                // Only `n` is known; `text` is an unknown field and is ignored.
                let k: Known = serde_json::from_value(e.data.clone())?;
                anyhow::ensure!(k.n < 5);
                Ok(())
            })
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("picky", feed.url("/feed")), db, Picky);
    assert!(matches!(
        sub.poll_once().await.expect("step"),
        Progress::Applied {
            events: 5,
            position: 5
        }
    ));
}
