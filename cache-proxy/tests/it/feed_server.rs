//! Both fronts in front of the real `feed::server` (a SQLite event log), to show
//! that the gateway, the VCL and the feed's caching headers work together, and
//! 10,000 long polls held on the gateway.
//!
//! The feed router is wrapped in a counter of the requests it serves, so
//! "one upstream request" is counted where it matters: at the origin. It also
//! answers `/healthz`, the gateway's health path that the VCL probes (Varnish
//! fronts the gateway in production).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::harness::{Front, PREFIX, client, spawn_proxy_with, spawn_varnish_at, text};

/// Requests the feed server answered, by path, and how many were long polls.
#[derive(Default)]
struct Seen {
    paths: Mutex<HashMap<String, u64>>,
    long_polls: AtomicU64,
}

pub(crate) struct RealFeed {
    log: EventLog,
    addr: std::net::SocketAddr,
    seen: Arc<Seen>,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl RealFeed {
    pub(crate) async fn start(page_size: u64) -> RealFeed {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.db").display().to_string();
        let log = EventLog::connect(&path).await.expect("open the log");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut config = FeedConfig::new("http://gateway.example/svc", "orders");
        config.page_size = Some(page_size);
        let server = FeedServer::new(log.clone(), config)
            .await
            .expect("feed server");
        let seen = Arc::new(Seen::default());
        let counter = {
            let seen = seen.clone();
            move |req: Request, next: Next| {
                let seen = seen.clone();
                async move {
                    if req.headers().contains_key("prefer") {
                        seen.long_polls.fetch_add(1, Ordering::SeqCst);
                    }
                    *seen
                        .paths
                        .lock()
                        .expect("lock")
                        .entry(req.uri().path().to_owned())
                        .or_default() += 1;
                    next.run(req).await
                }
            }
        };
        let router = server
            .router()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(counter));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(feed::server::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        RealFeed {
            log,
            addr,
            seen,
            _stop: stop,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    fn requests(&self, path: &str) -> u64 {
        self.seen
            .paths
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn long_polls(&self) -> u64 {
        self.seen.long_polls.load(Ordering::SeqCst)
    }
}

pub(crate) async fn gateway(feed: &RealFeed) -> Front {
    let route = cache_proxy::Route::new(PREFIX, &feed.url()).expect("route");
    spawn_proxy_with(cache_proxy::Config::new(vec![route])).await
}

pub(crate) async fn varnish(feed: &RealFeed, test: &str) -> Option<Front> {
    spawn_varnish_at(feed.addr, test).await
}

/// One `#[tokio::test]` per front for each scenario on the real feed server.
macro_rules! real_feed_through_both_fronts {
    ($($scenario:ident;)*) => {
        mod through_cache_proxy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    crate::init_tracing();
                    let feed = super::RealFeed::start(5).await;
                    let front = super::gateway(&feed).await;
                    super::$scenario(&feed, &front).await;
                }
            )*
        }
        mod through_varnish {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let feed = super::RealFeed::start(5).await;
                    let Some(front) = super::varnish(&feed, stringify!($scenario)).await else {
                        return;
                    };
                    super::$scenario(&feed, &front).await;
                }
            )*
        }
    };
}

real_feed_through_both_fronts! {
    two_hundred_concurrent_misses_for_a_sealed_page_make_one_request_at_the_feed_server;
    the_head_is_served_from_cache_and_answers_conditional_requests;
    a_long_poll_on_the_head_returns_after_an_append;
    every_accept_header_gets_the_format_the_feed_server_itself_chooses;
}

async fn two_hundred_concurrent_misses_for_a_sealed_page_make_one_request_at_the_feed_server(
    feed: &RealFeed,
    front: &Front,
) {
    feed.append(12).await;
    let page = "/feed/archive/1-5";
    let url = front.url(page);
    let client = client();
    let requests = (0..200).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let response = client
                .get(&url)
                .header(ACCEPT_ENCODING, "gzip")
                .send()
                .await
                .expect("answer");
            (response.status(), response.bytes().await.expect("body"))
        })
    });
    let results = futures::future::join_all(requests).await;
    let first = results[0].as_ref().expect("task").1.clone();
    for result in results {
        let (status, body) = result.expect("task");
        assert_eq!(status, StatusCode::OK, "{}", front.name());
        assert_eq!(
            body,
            first,
            "{}: every client gets the same page",
            front.name()
        );
    }
    assert_eq!(
        feed.requests(page),
        1,
        "{}: 200 concurrent misses, one request at the feed server",
        front.name()
    );
}

async fn the_head_is_served_from_cache_and_answers_conditional_requests(
    feed: &RealFeed,
    front: &Front,
) {
    let name = front.name();
    feed.append(3).await;
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
    assert_eq!(second.status(), StatusCode::NOT_MODIFIED, "{name}");
    assert!(front.was_hit(&second), "{name}");
    // Atom and HTML, gzip and identity, each stored and served as its own variant.
    for round in 0..2 {
        for (accept, html) in [("application/atom+xml", false), ("text/html", true)] {
            for gzip in [true, false] {
                let mut request = client().get(front.url("/feed")).header(ACCEPT, accept);
                if gzip {
                    request = request.header(ACCEPT_ENCODING, "gzip");
                }
                let response = request.send().await.expect("answer");
                let what = format!("{name} round {round}: {accept} gzip={gzip}");
                if round == 1 {
                    assert!(front.was_hit(&response), "{what}");
                }
                let content_type = response.headers()[CONTENT_TYPE]
                    .to_str()
                    .expect("ascii")
                    .to_owned();
                assert_eq!(
                    content_type.starts_with("text/html"),
                    html,
                    "{what}: {content_type}"
                );
                let encoding = response
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.as_bytes().to_vec());
                assert_eq!(encoding.as_deref() == Some(b"gzip"), gzip, "{what}");
                let etag = response.headers()[ETAG].to_str().expect("ascii").to_owned();
                assert!(
                    html || !etag.starts_with("W/"),
                    "{what}: the Atom ETag stays strong: {etag}"
                );
                let body = text(response).await;
                assert!(body.contains("OrderAccepted"), "{what}");
            }
        }
    }
}

async fn a_long_poll_on_the_head_returns_after_an_append(feed: &RealFeed, front: &Front) {
    feed.append(2).await;
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
            (response.status(), text(response).await)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed.long_polls() == 0 {
        assert!(
            Instant::now() < deadline,
            "{}: the long poll arrives",
            front.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    feed.append(1).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll returns after the append")
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{}", front.name());
    assert_eq!(feed.head().await, 3);
    assert!(
        body.contains("/feed/events/3"),
        "{}: {body:.400}",
        front.name()
    );
}

/// Accept headers of real clients and edge cases of RFC 9110 section 12.5.1.
const ACCEPTS: &[&str] = &[
    "",
    "*/*",
    "application/atom+xml",
    "text/html",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "application/atom+xml, text/html;q=0.5",
    "text/html;q=0.5, application/atom+xml",
    "text/html, application/atom+xml",
    "text/html;q=0.5, application/atom+xml;q=0.4",
    "application/atom+xml;q=0.5, text/html",
    "text/html;q=0",
    "text/html;q=bogus",
    "application/json",
    "text/*",
    "text/html;q=0.5, application/xml",
    "application/rss+xml, application/atom+xml;q=0.9, text/xml;q=0.8",
    "TEXT/HTML",
    "text/html; charset=utf-8; q=0.7, application/atom+xml; q=0.6",
];

async fn every_accept_header_gets_the_format_the_feed_server_itself_chooses(
    feed: &RealFeed,
    front: &Front,
) {
    feed.append(7).await;
    let content_type = |r: &reqwest::Response| {
        r.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("media type")
            .to_owned()
    };
    for path in ["/feed", "/feed/archive/1-5"] {
        for accept in ACCEPTS {
            let direct = client()
                .get(format!("{}{path}", feed.url()))
                .header(ACCEPT, *accept)
                .send()
                .await
                .expect("answer");
            let expected = content_type(&direct);
            for _ in 0..2 {
                let through = client()
                    .get(front.url(path))
                    .header(ACCEPT, *accept)
                    .send()
                    .await
                    .expect("answer");
                assert_eq!(through.status(), StatusCode::OK);
                assert_eq!(
                    content_type(&through),
                    expected,
                    "{}: {path} Accept: {accept:?}",
                    front.name()
                );
            }
        }
    }
}

fn rss_kib(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// A subscriber's long poll over a raw connection (cheaper than a client per
/// poll): asks again after a 304, as a subscriber does; returns the first other
/// status line and its body.
async fn raw_long_poll(
    addr: std::net::SocketAddr,
    etag: &str,
) -> std::io::Result<(String, String)> {
    let request = format!(
        "GET {PREFIX}/feed HTTP/1.1\r\nHost: gw\r\nIf-None-Match: {etag}\r\nPrefer: wait=30\r\nConnection: close\r\n\r\n"
    );
    loop {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or("").to_owned();
        if !status.starts_with("HTTP/1.1 304") {
            return Ok((status, body.to_owned()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_long_polls_on_the_gateway_share_a_few_upstream_long_polls() {
    crate::init_tracing();
    const POLLS: usize = 10_000;
    // Each poll holds a socket in this process (the client side) and one in
    // the gateway's; the gateway runs as its own binary, so each side fits in
    // the hard limit (20,000 on the build machine).
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let polls = POLLS.min(usize::try_from(limit).unwrap_or(POLLS).saturating_sub(200));
    if polls < POLLS {
        eprintln!(
            "!!!!! the open file limit is {limit}: {polls} long polls instead of {POLLS} !!!!!"
        );
    }
    let feed = RealFeed::start(100).await;
    feed.append(3).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cache-proxy"))
        .args(["--listen", &addr.to_string()])
        .args(["--route", &format!("{PREFIX}={}", feed.url())])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the cache-proxy binary");
    let binary = crate::proxy::Binary { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    let head = loop {
        if let Ok(response) = client()
            .get(format!("http://{addr}{PREFIX}/feed"))
            .send()
            .await
        {
            break response;
        }
        assert!(Instant::now() < deadline, "the binary starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let etag = head.headers()[ETAG].to_str().expect("ascii").to_owned();
    let started = Instant::now();
    let self_rss_before = rss_kib(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let gateway_rss_before = rss_kib(
        &std::fs::read_to_string(format!("/proc/{}/status", binary.child.id())).expect("status"),
    );

    // Connect in waves, so the listen backlog never overflows.
    let connecting = Arc::new(tokio::sync::Semaphore::new(500));
    let tasks: Vec<_> = (0..polls)
        .map(|_| {
            let (etag, connecting) = (etag.clone(), connecting.clone());
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.expect("semaphore");
                let poll = raw_long_poll(addr, &etag);
                tokio::pin!(poll);
                // Hold the permit until the request is on its way.
                tokio::select! {
                    result = &mut poll => return result,
                    () = tokio::time::sleep(Duration::from_millis(50)) => drop(permit),
                }
                poll.await
            })
        })
        .collect();
    let metrics_url = format!("http://{addr}/metrics");
    let waiting = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("cache_proxy_long_polls_waiting ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    loop {
        let text = client()
            .get(&metrics_url)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let held = waiting(&text);
        if held as usize == polls {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "only {held} of {polls} long polls are held"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held_after = started.elapsed();
    let self_rss = rss_kib(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let gateway_rss = rss_kib(
        &std::fs::read_to_string(format!("/proc/{}/status", binary.child.id())).expect("status"),
    );
    feed.append(1).await;
    let appended = feed.head().await;
    let mut answered = 0;
    for task in tasks {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("every long poll is answered")
            .expect("task")
            .expect("long poll exchange");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body:.300}");
        assert!(
            body.contains(&format!("/feed/events/{appended}")),
            "{body:.600}"
        );
        answered += 1;
    }
    let total = started.elapsed();
    eprintln!(
        "{answered} long polls held after {held_after:?}, all answered after {total:?}; \
         feed server saw {} long polls; RSS test process {self_rss_before} -> {self_rss} KiB, \
         gateway {gateway_rss_before} -> {gateway_rss} KiB",
        feed.long_polls()
    );
    assert_eq!(answered, polls);
    assert!(
        feed.long_polls() <= 3,
        "the feed server saw {} long polls for {polls} clients",
        feed.long_polls()
    );
    assert!(total < Duration::from_secs(60), "took {total:?}");
    // Generous bounds: a held poll costs some KiB on each side, not MiB.
    assert!(
        self_rss.saturating_sub(self_rss_before) < 400 << 10,
        "the test process grew from {self_rss_before} to {self_rss} KiB"
    );
    assert!(
        gateway_rss.saturating_sub(gateway_rss_before) < 800 << 10,
        "the gateway grew from {gateway_rss_before} to {gateway_rss} KiB"
    );
}
