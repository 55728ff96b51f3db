//! cache-proxy in front of the real `feed::server` (a SQLite event log), to show
//! that the gateway and the feed's caching headers work together.

use std::time::Duration;

use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use tokio::sync::oneshot;

use crate::harness::{Front, PREFIX, client, spawn_proxy_with, text};
use crate::init_tracing;

struct RealFeed {
    log: EventLog,
    url: String,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl RealFeed {
    async fn start(page_size: u64) -> RealFeed {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.db").display().to_string();
        let log = EventLog::connect(&path).await.expect("open the log");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let mut config = FeedConfig::new("http://gateway.example/svc", "orders");
        config.page_size = Some(page_size);
        let server = FeedServer::new(log.clone(), config)
            .await
            .expect("feed server");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(feed::server::serve(listener, server.router(), async move {
            let _ = stopped.await;
        }));
        RealFeed {
            log,
            url,
            _stop: stop,
            _dir: dir,
        }
    }

    async fn append(&self, n: u64) {
        let mut tx = self.log.begin().await.expect("begin");
        for i in 0..n {
            let event = NewEvent::new(
                StreamId::parse(format!("order-{i}")).expect("stream"),
                EventType::parse("OrderAccepted").expect("type"),
                serde_json::json!({ "order": i }),
            );
            self.log
                .append(&mut tx, Expected::Any, &[event])
                .await
                .expect("append");
        }
        tx.commit().await.expect("commit");
    }

    async fn head(&self) -> u64 {
        self.log.head().await.expect("head")
    }
}

async fn gateway(feed: &RealFeed) -> Front {
    let route = cache_proxy::Route::new(PREFIX, &feed.url).expect("route");
    spawn_proxy_with(cache_proxy::Config::new(vec![route])).await
}

async fn metric(front: &Front, name: &str) -> u64 {
    let text = client()
        .get(format!("http://{}/metrics", front.addr()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_pages_of_the_real_feed_server_are_fetched_once_for_many_clients() {
    init_tracing();
    let feed = RealFeed::start(5).await;
    feed.append(12).await;
    let front = gateway(&feed).await;
    let url = front.url("/feed/archive/1-5");
    let responses = futures::future::join_all(
        (0..100).map(|_| client().get(&url).header(ACCEPT_ENCODING, "gzip").send()),
    )
    .await;
    let mut bodies = Vec::new();
    for response in responses {
        let response = response.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.bytes().await.expect("body"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client gets the same page"
    );
    assert_eq!(
        metric(&front, "cache_proxy_upstream_requests_total").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_real_feed_head_is_served_from_cache_and_answers_conditional_requests() {
    init_tracing();
    let feed = RealFeed::start(5).await;
    feed.append(3).await;
    let front = gateway(&feed).await;
    let first = client()
        .get(front.url("/feed"))
        .send()
        .await
        .expect("answer");
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[ETAG].to_str().expect("ascii").to_owned();
    let second = client()
        .get(front.url("/feed"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("answer");
    assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
    assert!(
        second.headers()["cache-status"]
            .to_str()
            .expect("ascii")
            .contains("hit")
    );
    // Atom and HTML, gzip and identity, each stored and served as its own variant.
    for (accept, html) in [("application/atom+xml", false), ("text/html", true)] {
        for gzip in [true, false] {
            let mut request = client().get(front.url("/feed")).header(ACCEPT, accept);
            if gzip {
                request = request.header(ACCEPT_ENCODING, "gzip");
            }
            let response = request.send().await.expect("answer");
            let content_type = response.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert_eq!(
                content_type.starts_with("text/html"),
                html,
                "{accept} {gzip}: {content_type}"
            );
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.as_bytes().to_vec());
            assert_eq!(
                encoding.as_deref() == Some(b"gzip"),
                gzip,
                "{accept} {gzip}"
            );
            let body = text(response).await;
            assert!(body.contains("OrderAccepted"), "{accept} {gzip}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_on_the_real_feed_head_returns_after_an_append() {
    init_tracing();
    let feed = RealFeed::start(5).await;
    feed.append(2).await;
    let front = gateway(&feed).await;
    let first = client()
        .get(front.url("/feed"))
        .send()
        .await
        .expect("answer");
    let etag = first.headers()[ETAG].to_str().expect("ascii").to_owned();
    let poll = {
        let url = front.url("/feed");
        tokio::spawn(async move {
            let response = client()
                .get(url)
                .header(IF_NONE_MATCH, etag)
                .header("prefer", "wait=20")
                .send()
                .await
                .expect("answer");
            response.status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    feed.append(1).await;
    let status = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll returns after the append")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(feed.head().await, 3);
}
