use std::sync::Arc;
use std::time::Duration;

use feed::db::Database;
use feed::event::Event;
use feed::store::EventLog;
use feed::subscriber::{Handler, Mirror, Progress, SubscribeError, Subscriber, SubscriberConfig};
use futures::future::BoxFuture;
use sqlx::AnyConnection;

use crate::helpers::{TestFeed, append_n, sqlite_log, sqlite_url};

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
    let pages = pages
        .into_iter()
        .map(|(p, body)| (p, body, String::new()))
        .collect();
    let (base, _asked, handle) = linked_feed(pages).await;
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

async fn replica_on(url: &str) -> Database {
    let db = Database::connect(url).await.expect("db");
    db.migrate(&feed::db::FEED_MIGRATIONS)
        .await
        .expect("migrate");
    sqlx::query("CREATE TABLE IF NOT EXISTS replica (position BIGINT PRIMARY KEY, id TEXT NOT NULL, data TEXT NOT NULL, applied BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .expect("table");
    db
}

async fn stored_checkpoint(db: &Database, name: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT position FROM feed_checkpoints WHERE subscription = $1")
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .expect("checkpoint")
        .unwrap_or(0)
}

/// Two instances of one subscription (two replicas of a service, or two replays
/// into one log) follow a 2,000-event feed into one database at the same time.
async fn two_instances_of_one_subscription_apply_each_event_once(db: Database) {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 2000, 500).await;
    let feed = TestFeed::start(log.clone(), 50).await;
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let sub = Subscriber::new(fast("twins", feed.url("/feed")), db.clone(), Replica);
            tokio::spawn(sub.run(std::future::pending()))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stored_checkpoint(&db, "twins").await < 2000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the twins did not catch up: checkpoint {}",
            stored_checkpoint(&db, "twins").await
        );
        for t in &tasks {
            assert!(!t.is_finished(), "an instance stopped");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let got = rows(&db).await;
    assert_eq!(got.len(), 2000);
    let twice: Vec<_> = got.iter().filter(|r| r.3 != 1).map(|r| r.0).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_instances_of_one_subscription_apply_every_event_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    two_instances_of_one_subscription_apply_each_event_once(replica_db(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_of_one_subscription_apply_every_event_exactly_once() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    two_instances_of_one_subscription_apply_each_event_once(
        replica_on(&pg.database("twins")).await,
    )
    .await;
}

/// A producer of hand-made documents that the test can change while it runs.
async fn mutable_feed(
    pages: Vec<(&'static str, String)>,
) -> (
    String,
    Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let docs = Arc::new(std::sync::Mutex::new(
        pages
            .into_iter()
            .map(|(p, body)| (p.to_owned(), body.replace("BASE", &base)))
            .collect::<std::collections::HashMap<_, _>>(),
    ));
    let served = docs.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let docs = served.clone();
        async move {
            match docs.lock().expect("lock").get(uri.path()) {
                Some(body) => (axum::http::StatusCode::OK, body.clone()),
                None => (axum::http::StatusCode::NOT_FOUND, String::new()),
            }
        }
    });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, docs, handle)
}

#[tokio::test]
async fn a_sealed_page_that_changed_stops_the_subscriber_with_its_checkpoint_untouched() {
    let page = doc("/feed/archive/1-3", None, Some("/feed"), true, &[1, 2, 3]);
    let (base, docs, _server) = mutable_feed(vec![
        ("/feed/archive/1-3", page.clone()),
        (
            "/feed",
            doc("/feed", Some("/feed/archive/1-3"), None, false, &[]),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    assert_eq!(sub.checkpoint().await.expect("checkpoint"), 3);
    // The producer rewrites history: the sealed page now says something else.
    let rewritten = page
        .replace("{\"n\":2}", "{\"n\":-2}")
        .replace("BASE", &base);
    docs.lock()
        .expect("lock")
        .insert("/feed/archive/1-3".into(), rewritten);
    let mut restarted =
        Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    let err = restarted.poll_once().await.expect_err("changed page");
    assert!(matches!(err, SubscribeError::PageChanged { .. }), "{err}");
    assert!(err.is_fatal());
    assert_eq!(stored_checkpoint(&db, "replica").await, 3);
    let data: Vec<String> = rows(&db).await.into_iter().map(|r| r.2).collect();
    assert_eq!(data, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
}

#[tokio::test]
async fn a_stale_head_behind_the_checkpoint_is_nothing_new_and_the_subscriber_goes_on() {
    let (base, docs, _server) = mutable_feed(vec![
        (
            "/feed/archive/1-3",
            doc("/feed/archive/1-3", None, Some("/feed"), true, &[1, 2, 3]),
        ),
        (
            "/feed",
            doc("/feed", Some("/feed/archive/1-3"), None, false, &[]),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    // A cache serves an old copy of the head, from when the log ended at 2.
    let stale = doc("/feed", None, None, false, &[1, 2])
        .replace("</title>", "</title><ev:headPosition>2</ev:headPosition>")
        .replace("BASE", &base);
    docs.lock().expect("lock").insert("/feed".into(), stale);
    let mut restarted =
        Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    assert!(matches!(
        restarted
            .poll_once()
            .await
            .expect("a stale head is no error"),
        Progress::CaughtUp { position: 3, .. }
    ));
    assert_eq!(stored_checkpoint(&db, "replica").await, 3);
    // The fresh head comes back with a new event: it is applied once.
    let fresh = doc("/feed", Some("/feed/archive/1-3"), None, false, &[4])
        .replace("</title>", "</title><ev:headPosition>4</ev:headPosition>")
        .replace("BASE", &base);
    docs.lock().expect("lock").insert("/feed".into(), fresh);
    let mut steps = 0;
    while restarted.checkpoint().await.expect("checkpoint") < 4 {
        restarted.poll_once().await.expect("step");
        steps += 1;
        assert!(steps < 5, "the fresh head was not applied");
    }
    assert_eq!(rows(&db).await.len(), 4);
}

/// How a test changes the history behind a feed whose chain is recorded.
#[derive(Clone, Copy)]
enum Rewrite {
    /// The bytes kept of sealed page 1-100, which the origin serves.
    StoredPage,
    /// An event of page 1-100 in a log whose chain was recorded before the bytes of
    /// its pages were kept, so the origin renders the page from its events again.
    EventOfAPageWithoutBytes,
}

async fn a_rewritten_history_breaks_the_hash_chain_and_stops_the_subscriber(how: Rewrite) {
    let src_dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&src_dir, "src.db");
    let log = EventLog::connect(&url).await.expect("log");
    append_n(&log, 250, 250).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let feed = TestFeed::start_on(log.clone(), 100, listener).await;
    // Serving the pages records their digests.
    let c = crate::helpers::client();
    for page in ["/feed/archive/1-100", "/feed/archive/101-200", "/feed"] {
        assert_eq!(
            crate::helpers::get(&c, &feed.url(page), &[]).await.status(),
            200
        );
    }
    feed.stop().await;
    let db = log.database();
    match how {
        Rewrite::StoredPage => {
            crate::helpers::rewrite_stored_page(db, 1, "\"n\":49,", "\"n\":-1,").await;
        }
        Rewrite::EventOfAPageWithoutBytes => {
            for q in [
                "UPDATE feed_page_digests SET atom_zstd = NULL",
                "UPDATE feed_events SET data = '{\"n\":-1}' WHERE position = 50",
            ] {
                sqlx::query(q).execute(db.pool()).await.expect("tamper");
            }
        }
    }
    drop(log);
    // A fresh process (no pages in memory) at the same address serves the rewritten
    // page.
    let log = EventLog::connect(&url).await.expect("log");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let feed = TestFeed::start_on(log, 100, listener).await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let sub = Subscriber::new(fast("replica", feed.url("/feed")), db.clone(), Replica);
    let err = tokio::time::timeout(Duration::from_secs(30), sub.run(std::future::pending()))
        .await
        .expect("a broken chain is fatal, not retried")
        .expect_err("broken chain");
    assert!(matches!(err, SubscribeError::ChainBroken { .. }), "{err}");
    assert!(err.to_string().contains("/feed/archive/1-100"), "{err}");
    // Page 101-200, whose link into the chain is broken, was not applied.
    assert_eq!(stored_checkpoint(&db, "replica").await, 100);
    assert_eq!(rows(&db).await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_sealed_page_breaks_the_hash_chain_and_stops_the_subscriber() {
    a_rewritten_history_breaks_the_hash_chain_and_stops_the_subscriber(Rewrite::StoredPage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_event_of_a_page_kept_without_bytes_breaks_the_hash_chain() {
    a_rewritten_history_breaks_the_hash_chain_and_stops_the_subscriber(
        Rewrite::EventOfAPageWithoutBytes,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_subscriber_long_polls_the_head_with_its_etag() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 30, 30).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = feed::FeedConfig::new(&base, "test");
    config.page_size = Some(10);
    let server = feed::FeedServer::new(log.clone(), config)
        .await
        .expect("server");
    type Seen = Arc<std::sync::Mutex<Vec<(String, String, String, u16)>>>;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = server.router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let record = record.clone();
            async move {
                let (path, inm, prefer) = {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    (req.uri().path().to_owned(), h("if-none-match"), h("prefer"))
                };
                let res = next.run(req).await;
                record
                    .lock()
                    .expect("lock")
                    .push((path, inm, prefer, res.status().as_u16()));
                res
            }
        },
    ));
    let _server = tokio::spawn(feed::server::serve(listener, app, std::future::pending()));
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("replica", format!("{base}/feed")), db, Replica);
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    let head_etag = crate::helpers::header(
        &crate::helpers::get(
            &crate::helpers::client(),
            &format!("{base}/feed"),
            // What the subscriber's client accepts.
            &[("accept-encoding", "gzip, zstd")],
        )
        .await,
        "etag",
    );
    seen.lock().expect("lock").clear();
    // Caught up: the next step holds a long poll and is answered 304 after it.
    let started = std::time::Instant::now();
    assert_eq!(
        sub.poll_once().await.expect("poll"),
        Progress::CaughtUp {
            position: 30,
            waited: true
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, "/feed");
        assert_eq!(seen[0].1, head_etag, "If-None-Match is the head's ETag");
        assert_eq!(seen[0].2, "wait=1");
        assert_eq!(seen[0].3, 304);
    }
    // An append during the next long poll answers it with the new event.
    let poll = tokio::spawn(async move { (sub.poll_once().await, sub) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    append_n(&log, 1, 1).await;
    let (step, _sub) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(
        step.expect("step"),
        Progress::Applied {
            events: 1,
            position: 31
        }
    );
}

#[tokio::test]
async fn events_of_types_the_handler_does_not_know_are_skipped_and_the_checkpoint_moves_on() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    let types = [
        "OrderAccepted",
        "OrderShipped",
        "PriceChanged",
        "CouponIssued",
    ];
    let mut tx = log.begin().await.expect("begin");
    let events: Vec<_> = (0..12u64)
        .map(|i| {
            feed::NewEvent::new(
                feed::StreamId::parse(format!("order-{i}")).expect("stream"),
                feed::EventType::parse(types[i as usize % 4]).expect("type"),
                serde_json::json!({ "n": i, "added_later": true }),
            )
        })
        .collect();
    log.append(&mut tx, feed::Expected::Any, &events)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let feed = TestFeed::start(log, 5).await;
    /// Knows two of the four types, and only the field `n` of them.
    struct Known;
    impl Handler for Known {
        fn handle<'a>(
            &'a self,
            tx: &'a mut AnyConnection,
            e: &'a Event,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                if !matches!(e.event_type.as_str(), "OrderAccepted" | "PriceChanged") {
                    return Ok(());
                }
                Replica.handle(tx, e).await
            })
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("known", feed.url("/feed")), db.clone(), Known);
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    assert_eq!(sub.checkpoint().await.expect("checkpoint"), 12);
    let positions: Vec<i64> = rows(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(positions, [1, 3, 5, 7, 9, 11]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_document_is_refused_while_it_downloads() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    // A chunked body without a length that never ends: 1 MiB chunks, forever.
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let chunks = futures::stream::repeat_with(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024 * 1024]))
            });
            axum::body::Body::from_stream(chunks)
        }
    });
    let _server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().expect("tmp");
    let mut sub = Subscriber::new(
        fast("replica", format!("{base}/feed")),
        replica_db(&dir).await,
        Replica,
    );
    let err = tokio::time::timeout(Duration::from_secs(60), sub.poll_once())
        .await
        .expect("refused, not read forever")
        .expect_err("too large");
    assert!(matches!(err, SubscribeError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
    let mib = sent.load(std::sync::atomic::Ordering::Relaxed);
    let limit_mib = (feed::atom::MAX_DOCUMENT_BYTES / (1024 * 1024)) as u64;
    assert!(
        mib <= limit_mib + 16,
        "{mib} MiB were produced before the refusal"
    );
}

/// A subscriber that is caught up when the producer seals its page follows the
/// `next-archive` link to the new head, finds nothing new there yet, and must go
/// straight back to the long poll: a pause of `poll_interval` (an hour here) at each
/// page boundary would hold every event appended meanwhile back by that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sealed_while_caught_up_does_not_make_the_subscriber_pause() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    let feed = TestFeed::start(log.clone(), 5).await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut config = fast("replica", feed.url("/feed"));
    config.long_poll = Duration::from_secs(30);
    config.poll_interval = Duration::from_secs(3600);
    let sub = Subscriber::new(config, db.clone(), Replica);
    let status = sub.status();
    let task = tokio::spawn(sub.run(std::future::pending()));
    // Three page boundaries, each event appended once the one before arrived.
    for n in 1..=16u64 {
        append_n(&log, 1, 1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while status.checkpoint() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {n} did not arrive: the subscriber is pausing at {}",
                status.checkpoint()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    task.abort();
    assert_eq!(rows(&db).await.len(), 16);
}

/// Serves `pages` with the given `Link` header each (none where it is empty),
/// recording every path asked for.
async fn linked_feed(
    pages: Vec<(&'static str, String, String)>,
) -> (
    String,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let pages = Arc::new(
        pages
            .into_iter()
            .map(|(p, body, link)| {
                (
                    p.to_owned(),
                    body.replace("BASE", &base),
                    link.replace("BASE", &base),
                )
            })
            .collect::<Vec<_>>(),
    );
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (pages, log) = (pages.clone(), log.clone());
        async move {
            log.lock().expect("lock").push(uri.path().to_owned());
            match pages.iter().find(|(p, _, _)| p == uri.path()) {
                Some((_, body, link)) => {
                    let mut r = axum::response::Response::builder();
                    if !link.is_empty() {
                        r = r.header("link", link.as_str());
                    }
                    r.body(axum::body::Body::from(body.clone()))
                        .expect("response")
                }
                None => axum::response::Response::builder()
                    .status(404)
                    .body(axum::body::Body::empty())
                    .expect("response"),
            }
        }
    });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, asked, handle)
}

/// Replays the feed at `base` into a fresh replica with `poll_once` until it is
/// caught up at `head`; returns the replica's rows.
async fn replay_to(base: &str, head: u64) -> Vec<(i64, String, String, i64)> {
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let mut sub = Subscriber::new(fast("replica", format!("{base}/feed")), db.clone(), Replica);
    for _ in 0..50 {
        if let Progress::CaughtUp { position, .. } = sub.poll_once().await.expect("poll")
            && position == head
        {
            return rows(&db).await;
        }
    }
    panic!("the replica did not catch up at {head}");
}

/// Three sealed pages and a head; each sealed page's `Link` header is `links(page)`.
fn three_pages_and_a_head(links: impl Fn(&str) -> String) -> Vec<(&'static str, String, String)> {
    let pages = [
        ("/feed/archive/1-3", None, "/feed/archive/4-6", [1, 2, 3]),
        (
            "/feed/archive/4-6",
            Some("/feed/archive/1-3"),
            "/feed/archive/7-9",
            [4, 5, 6],
        ),
        (
            "/feed/archive/7-9",
            Some("/feed/archive/4-6"),
            "/feed",
            [7, 8, 9],
        ),
    ];
    let mut out: Vec<_> = pages
        .iter()
        .map(|(this, prev, next, positions)| {
            (
                *this,
                doc(this, *prev, Some(next), true, positions),
                links(this),
            )
        })
        .collect();
    out.push((
        "/feed",
        doc("/feed", Some("/feed/archive/7-9"), None, false, &[10]),
        String::new(),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_sealed_pages_ahead_by_their_link_headers_and_asks_for_each_once() {
    let next = |page: &str| match page {
        "/feed/archive/1-3" => "<BASE/feed/archive/4-6>; rel=\"next-archive\"".to_owned(),
        "/feed/archive/4-6" => "<BASE/feed/archive/1-3>; rel=\"prev-archive\", \
                                <BASE/feed/archive/7-9>; rel=\"next next-archive\""
            .to_owned(),
        _ => "<BASE/feed>; rel=next-archive".to_owned(),
    };
    let (base, asked, _server) = linked_feed(three_pages_and_a_head(next)).await;
    let applied = replay_to(&base, 10).await;
    assert_eq!(
        applied.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>(),
        (1..=10).map(|p| (p, 1)).collect::<Vec<_>>()
    );
    let asked = asked.lock().expect("lock").clone();
    for page in [
        "/feed/archive/1-3",
        "/feed/archive/4-6",
        "/feed/archive/7-9",
    ] {
        assert_eq!(
            asked.iter().filter(|p| *p == page).count(),
            1,
            "{page} asked for once: {asked:?}"
        );
    }
}

/// The `Link` header is only a hint: pages read ahead at its addresses are used only
/// where the documents lead, so a producer whose headers point elsewhere still gets
/// every event applied once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_headers_that_point_elsewhere_do_not_change_what_a_replay_applies() {
    let wrong = |page: &str| match page {
        "/feed/archive/1-3" => "<BASE/feed/archive/7-9>; rel=\"next-archive\"".to_owned(),
        "/feed/archive/4-6" => "<BASE/feed/archive/1-3>; rel=\"next-archive\"".to_owned(),
        _ => "<BASE/nowhere>; rel=\"next-archive\"".to_owned(),
    };
    let (base, asked, _server) = linked_feed(three_pages_and_a_head(wrong)).await;
    let applied = replay_to(&base, 10).await;
    assert_eq!(
        applied.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>(),
        (1..=10).map(|p| (p, 1)).collect::<Vec<_>>()
    );
    assert!(
        asked
            .lock()
            .expect("lock")
            .iter()
            .any(|p| p == "/feed/archive/7-9"),
        "the hints were followed"
    );
}

/// A head holding `entries` (Atom `<entry>` elements), at `/feed`, the only document.
fn head_of(entries: &[String]) -> String {
    doc("/feed", None, None, false, &[])
        .replace("BASE/feed/archive/1-3", "BASE/feed")
        .replace("</feed>", &format!("{}</feed>", entries.concat()))
}

/// An entry with the given `content` and `ev:metadata` element text (XML, as served).
fn entry_with(position: u64, content: &str, metadata: &str) -> String {
    format!(
        "<entry><id>urn:uuid:{}</id><title>Thing</title><updated>2026-01-01T00:00:00Z</updated>\
         <ev:position>{position}</ev:position><ev:stream>s</ev:stream><ev:streamVersion>{position}</ev:streamVersion>\
         <ev:metadata>{metadata}</ev:metadata><content type=\"text\">{content}</content></entry>",
        uuid::Uuid::from_u128(position as u128)
    )
}

/// Mirrors the feed at `url` into a fresh log in `dir` until it holds `head` events.
async fn mirror_of(url: String, dir: &tempfile::TempDir, name: &str, head: u64) -> EventLog {
    let log = EventLog::connect(&sqlite_url(dir, name))
        .await
        .expect("mirror log");
    let mut sub = Subscriber::new(
        fast("mirror", url),
        log.database().clone(),
        Mirror(log.clone()),
    );
    while log.head().await.expect("head") < head {
        sub.poll_once().await.expect("poll");
    }
    log
}

#[tokio::test]
async fn a_mirror_stores_the_json_text_the_feed_carried_exactly() {
    // JSON as another producer might write it: spaces, a number serde_json would
    // write as 1.5, a key twice, escapes, text around the value, a carriage return.
    let (base, _server) = static_feed(vec![(
        "/feed",
        head_of(&[
            entry_with(2, "{\"a\":&#13;[1e2, -0.0]}", "{}"),
            entry_with(
                1,
                " { \"n\" : 1.50, \"n\": 2, \"s\":\"caf\\u00e9 &amp; &lt;b&gt;\" } ",
                "\n{\"k\":[1,  2]}\t",
            ),
        ]),
    )])
    .await;
    let expected = [
        (
            "{ \"n\" : 1.50, \"n\": 2, \"s\":\"caf\\u00e9 & <b>\" }",
            "{\"k\":[1,  2]}",
        ),
        ("{\"a\":\r[1e2, -0.0]}", "{}"),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    let first = mirror_of(format!("{base}/feed"), &dir, "first.db", 2).await;
    let texts = |events: Vec<feed::RawEvent>| {
        events
            .iter()
            .map(|e| (e.data.get().to_owned(), e.metadata.get().to_owned()))
            .collect::<Vec<_>>()
    };
    let stored = texts(first.read_range_raw(1, 2).await.expect("raw"));
    assert_eq!(
        stored,
        expected.map(|(d, m)| (d.to_owned(), m.to_owned())).to_vec(),
        "the mirror stores the text it was served, not a re-encoding of it"
    );
    // Decoded, the text means what it said (the later of two equal keys wins).
    let decoded = first.read_range(1, 2).await.expect("decoded");
    assert_eq!(decoded[0].data["n"], 2);
    assert_eq!(decoded[0].data["s"], "café & <b>");
    assert_eq!(decoded[1].data["a"][0], 100.0);

    // The mirror serves that text, and a mirror of the mirror stores it unchanged:
    // the carriage return survives the XML in between.
    let served = TestFeed::start(first, 100).await;
    let second = mirror_of(served.url("/feed"), &dir, "second.db", 2).await;
    assert_eq!(
        texts(second.read_range_raw(1, 2).await.expect("raw")),
        stored
    );
}

#[tokio::test]
async fn a_mirror_refuses_a_page_whose_entry_is_not_json_and_stores_nothing_of_it() {
    let (base, _server) = static_feed(vec![(
        "/feed",
        head_of(&[
            entry_with(2, "{\"n\":2,}", "{}"),
            entry_with(1, "{\"n\":1}", "{}"),
        ]),
    )])
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "mirror.db"))
        .await
        .expect("log");
    let mut sub = Subscriber::new(
        fast("mirror", format!("{base}/feed")),
        log.database().clone(),
        Mirror(log.clone()),
    );
    let err = sub.poll_once().await.expect_err("not JSON");
    assert!(err.is_fatal());
    assert!(
        matches!(&err, SubscribeError::Malformed { reason, .. } if reason.contains("position 2: content is not JSON")),
        "{err}"
    );
    assert_eq!(log.head().await.expect("head"), 0);
}

#[tokio::test]
async fn a_handler_that_takes_raw_json_but_keeps_the_default_gets_the_events_decoded() {
    let src_dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&src_dir, "src.db"))
        .await
        .expect("log");
    append_n(&log, 3, 3).await;
    let feed = TestFeed::start(log.clone(), 100).await;
    /// Says it takes raw JSON, and only implements `handle`.
    struct Default(std::sync::Mutex<Vec<Event>>);
    impl Handler for Default {
        fn handle<'a>(
            &'a self,
            _tx: &'a mut AnyConnection,
            e: &'a Event,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            self.0.lock().expect("lock").push(e.clone());
            Box::pin(async { Ok(()) })
        }
        fn takes_raw(&self) -> bool {
            true
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = replica_db(&dir).await;
    let handler = Default(std::sync::Mutex::new(Vec::new()));
    let mut sub = Subscriber::new(fast("default", feed.url("/feed")), db, handler);
    sub.poll_once().await.expect("step");
    let seen = sub.handler().0.lock().expect("lock").clone();
    assert_eq!(seen, log.read_range(1, 3).await.expect("events"));
}

/// A source log of `n` events served at page size 100, and a fresh log to mirror it
/// into (in the directory returned, with the source's).
async fn mirror_setup(n: u64) -> (EventLog, TestFeed, [tempfile::TempDir; 2], EventLog) {
    let (src_dir, source) = sqlite_log("src.db").await;
    append_n(&source, n, 50).await;
    let (feed, dir, mirror) = feed_and_mirror(&source).await;
    (source, feed, [dir, src_dir], mirror)
}

/// A feed of `source` in pages of 100, and an empty SQLite log to mirror it into.
async fn feed_and_mirror(source: &EventLog) -> (TestFeed, tempfile::TempDir, EventLog) {
    let feed = TestFeed::start(source.clone(), 100).await;
    let (dir, mirror) = sqlite_log("mirror.db").await;
    (feed, dir, mirror)
}

/// A subscription named `mirror` that mirrors `feed` into `mirror`.
fn mirror_subscriber(feed: &TestFeed, mirror: &EventLog) -> Subscriber<Mirror> {
    Subscriber::new(
        fast("mirror", feed.url("/feed")),
        mirror.database().clone(),
        Mirror(mirror.clone()),
    )
}

/// Steps `sub` until the log it mirrors into holds `head` events.
async fn mirror_until(sub: &mut Subscriber<Mirror>, head: u64) {
    while sub.handler().0.head().await.expect("head") < head {
        sub.poll_once().await.expect("poll");
    }
}

fn texts(events: &[feed::RawEvent]) -> Vec<(u64, String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.position,
                e.id.to_string(),
                e.data.get().to_owned(),
                e.metadata.get().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_sqlite_mirror_writes_each_page_with_its_checkpoint_on_a_connection_of_its_own() {
    let (source, feed, _dir, mirror) = mirror_setup(1050).await;
    let mut sub = mirror_subscriber(&feed, &mirror);
    mirror_until(&mut sub, 1050).await;
    // Ten sealed pages and the head, each one transaction on the direct connection.
    assert_eq!(sub.status().direct_pages(), 11);
    assert_eq!(stored_checkpoint(mirror.database(), "mirror").await, 1050);
    assert_eq!(
        texts(&mirror.read_range_raw(1, 1050).await.expect("mirror")),
        texts(&source.read_range_raw(1, 1050).await.expect("source"))
    );
    // New events at the head go the same way.
    append_n(&source, 30, 30).await;
    mirror_until(&mut sub, 1080).await;
    assert_eq!(sub.status().direct_pages(), 12);
    assert_eq!(stored_checkpoint(mirror.database(), "mirror").await, 1080);
}

/// A mirror's step writes, after the page it read, the sealed pages the read-ahead
/// brings, each in its own transaction with its checkpoint, so the writer thread has
/// the next page queued while it commits one. A step writes at most 16 pages, and the
/// document that ends a run (here the head) is kept for the next step, not asked for
/// again.
#[tokio::test]
async fn a_mirror_step_writes_the_sealed_pages_read_ahead_and_asks_for_each_document_once() {
    let (source, feed, _dir, mirror) = mirror_setup(1750).await;
    let mut sub = mirror_subscriber(&feed, &mirror);
    let steps = [
        (1600, 1600), // pages 1-16
        (100, 1700),  // page 17, then the head arrives and ends the run
        (50, 1750),   // the head, from the step before
    ];
    for (events, position) in steps {
        assert_eq!(
            sub.poll_once().await.expect("step"),
            Progress::Applied { events, position }
        );
        assert_eq!(
            stored_checkpoint(mirror.database(), "mirror").await,
            position as i64
        );
    }
    assert_eq!(sub.status().direct_pages(), 18);
    // The head twice (to find the first page, then as the read-ahead's last), and
    // each of the 17 sealed pages once.
    assert_eq!(sub.status().requests(), 19);
    assert_eq!(
        texts(&mirror.read_range_raw(1, 1750).await.expect("mirror")),
        texts(&source.read_range_raw(1, 1750).await.expect("source"))
    );
}

/// A mirror's WAL is checkpointed as it fills, also while the direct writer commits
/// page after page: mirroring 12 MB of events leaves a WAL of a few MB, not one as
/// large as what was written (SQLite reuses the WAL file from its start once it is
/// checkpointed, so its size is the most it ever held). Checkpoints moved off the
/// writer's connection, to spare it their syncs, broke this: a passive checkpoint
/// never catches up with a writer that does not pause (BENCHMARKS.md, P1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_mirror_keeps_the_wal_checkpointed() {
    let (_src_dir, source) = sqlite_log("src.db").await;
    let filler = "x".repeat(4000);
    for batch in 0..30u64 {
        let mut tx = source.begin().await.expect("begin");
        let events: Vec<feed::NewEvent> = (0..100)
            .map(|k| {
                let data = serde_json::json!({ "n": batch * 100 + k, "filler": filler });
                crate::helpers::event_with(&format!("s-{k}"), data)
            })
            .collect();
        source
            .append(&mut tx, feed::Expected::Any, &events)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
    let (feed, dir, mirror) = feed_and_mirror(&source).await;
    let mut sub = mirror_subscriber(&feed, &mirror);
    mirror_until(&mut sub, 3000).await;
    assert_eq!(sub.status().direct_pages(), 30);
    let wal = std::fs::metadata(dir.path().join("mirror.db-wal"))
        .expect("the mirror's WAL")
        .len();
    assert!(
        wal < 9 << 20,
        "the WAL grew to {wal} bytes for 12 MB of events: it is not checkpointed"
    );
    assert_eq!(
        texts(&mirror.read_range_raw(2990, 3000).await.expect("mirror")),
        texts(&source.read_range_raw(2990, 3000).await.expect("source"))
    );
}

#[tokio::test]
async fn a_mirror_into_a_log_ahead_of_its_checkpoint_keeps_what_it_holds_and_goes_on() {
    let (source, feed, _dir, mirror) = mirror_setup(500).await;
    // The log already holds 1..=130 (an earlier mirror whose checkpoint was reset).
    let held = source.read_range_raw(1, 130).await.expect("held");
    let mut tx = mirror.begin().await.expect("begin");
    mirror.import(&mut tx, &held).await.expect("import");
    tx.commit().await.expect("commit");
    let mut sub = mirror_subscriber(&feed, &mirror);
    mirror_until(&mut sub, 500).await;
    // Pages 1-100 and 101-200 overlap the log's head: the direct writer leaves them
    // to the general import, which skips what is held. The other three are direct.
    assert_eq!(sub.status().direct_pages(), 3);
    assert_eq!(
        texts(&mirror.read_range_raw(1, 500).await.expect("mirror")),
        texts(&source.read_range_raw(1, 500).await.expect("source"))
    );
    assert_eq!(stored_checkpoint(mirror.database(), "mirror").await, 500);
}

#[tokio::test]
async fn a_mirror_into_a_log_holding_other_events_stops_and_writes_nothing() {
    let (_source, feed, _dir, mirror) = mirror_setup(300).await;
    append_n(&mirror, 5, 5).await; // its own events at positions 1..=5
    let mut sub = mirror_subscriber(&feed, &mirror);
    let err = sub.poll_once().await.expect_err("diverged");
    assert!(
        err.to_string()
            .contains("position 1 already holds a different event"),
        "{err}"
    );
    assert_eq!(mirror.head().await.expect("head"), 5);
    assert_eq!(stored_checkpoint(mirror.database(), "mirror").await, 0);
    assert_eq!(sub.status().direct_pages(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_into_one_sqlite_log_store_each_event_once() {
    let (source, feed, [dir, _src], first) = mirror_setup(2000).await;
    // The second as another process would open it: its own pool on the same file.
    let second = EventLog::connect(&sqlite_url(&dir, "mirror.db"))
        .await
        .expect("second");
    let subs: Vec<_> = [first.clone(), second]
        .into_iter()
        .map(|log| {
            Subscriber::new(
                fast("replay", feed.url("/feed")),
                log.database().clone(),
                Mirror(log),
            )
        })
        .collect();
    let statuses: Vec<_> = subs.iter().map(|s| s.status()).collect();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(s.run(std::future::pending())))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stored_checkpoint(first.database(), "replay").await < 2000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirrors did not catch up"
        );
        for t in &tasks {
            assert!(!t.is_finished(), "a mirror stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    assert_eq!(first.head().await.expect("head"), 2000);
    assert_eq!(
        texts(&first.read_range_raw(1, 2000).await.expect("mirror")),
        texts(&source.read_range_raw(1, 2000).await.expect("source"))
    );
    let direct: u64 = statuses.iter().map(|s| s.direct_pages()).sum();
    assert!(direct > 0, "no page went the direct way");
}
