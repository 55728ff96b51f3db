//! cache-proxy-only behaviour: memory bound, stale-while-revalidate, metrics,
//! Cache-Status, limits and problem+json errors, pass-through of commands.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, ETAG};

use crate::harness::{PREFIX, client, proxy_config, spawn_proxy, spawn_proxy_with, text};
use crate::init_tracing;
use crate::origin::{Origin, OriginConfig};

fn cache_status(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    let body = response.bytes().await.expect("body");
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem+json body");
    assert_eq!(problem["status"], status);
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    problem
}

#[tokio::test]
async fn cache_status_says_miss_and_stored_then_hit() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    let first = client()
        .get(front.url("/feed/archive/1-10"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        cache_status(&first),
        "cache-proxy; fwd=uri-miss; fwd-status=200; stored"
    );
    let second = client()
        .get(front.url("/feed/archive/1-10"))
        .send()
        .await
        .expect("answer");
    assert!(
        cache_status(&second).starts_with("cache-proxy; hit; ttl="),
        "{}",
        cache_status(&second)
    );
    assert!(second.headers().contains_key("age"));
    let missing = client()
        .get(front.url("/account"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        cache_status(&missing),
        "cache-proxy; fwd=uri-miss; fwd-status=401; detail=status"
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    let url = front.url("/feed");
    let first = text(client().get(&url).send().await.expect("answer")).await;
    origin.append(1);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // max-age=1 is over, stale-while-revalidate=5 is not.
    let stale = futures::future::join_all((0..20).map(|_| client().get(&url).send())).await;
    let mut served_stale = 0;
    for response in stale {
        let response = response.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        if cache_status(&response).contains("detail=stale-while-revalidate") {
            served_stale += 1;
            assert_eq!(text(response).await, first);
        }
    }
    assert!(
        served_stale >= 1,
        "at least the first request after expiry is served stale"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.counts("/feed").full < 2 {
        assert!(Instant::now() < deadline, "the background refresh happens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = text(client().get(&url).send().await.expect("answer")).await;
    assert!(fresh.contains(&format!("<last>{}</last>", origin.last_position())));
    assert_eq!(
        origin.counts("/feed").requests,
        2,
        "one fill and one background refresh"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_with_nothing_stale_is_a_502_problem() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    origin.stop().await;
    let response = client()
        .get(front.url("/feed"))
        .send()
        .await
        .expect("answer");
    let problem = assert_problem(response, 502).await;
    assert_eq!(problem["title"], "Bad Gateway");
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_problem() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let mut config = proxy_config(&origin);
    config.upstream_timeout = Duration::from_millis(300);
    let front = spawn_proxy_with(config).await;
    let response = client()
        .get(front.url("/slow"))
        .send()
        .await
        .expect("answer");
    assert_problem(response, 504).await;
}

#[tokio::test]
async fn bad_requests_get_clear_problems() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    let base = format!("http://{}", front.addr());
    let no_route = client()
        .get(format!("{base}/nowhere/feed"))
        .send()
        .await
        .expect("answer");
    assert_problem(no_route, 404).await;
    let dots = crate::harness::raw(
        front.addr(),
        &format!("GET {PREFIX}/a/%2e%2e/feed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400"), "{dots}");
    assert!(dots.contains("application/problem+json"));
    let long = client()
        .get(front.url(&format!("/feed?{}", "a".repeat(9_000))))
        .send()
        .await
        .expect("answer");
    assert_problem(long, 414).await;
    let mut big = client().get(front.url("/feed"));
    for i in 0..40 {
        big = big.header(format!("x-filler-{i}"), "f".repeat(1_000));
    }
    assert_problem(big.send().await.expect("answer"), 431).await;
    let too_big = crate::harness::raw(
        front.addr(),
        &format!(
            "POST {PREFIX}/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    assert!(too_big.contains("application/problem+json"));
    assert_eq!(
        origin.counts("/feed").requests + origin.counts("/orders").requests,
        0,
        "none of them reached the origin"
    );
}

#[tokio::test]
async fn commands_pass_through_with_their_body_and_credentials() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    for _ in 0..2 {
        let response = client()
            .post(front.url("/orders"))
            .header("authorization", "Bearer alice")
            .body("hello")
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(cache_status(&response).contains("fwd=method"));
        assert_eq!(text(response).await, "POST by alice: 5 bytes");
    }
    assert_eq!(origin.counts("/orders").requests, 2);
}

#[tokio::test]
async fn metrics_count_hits_misses_coalesced_waits_and_upstream_requests() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    let url = front.url("/feed/archive/11-20");
    futures::future::join_all((0..50).map(|_| client().get(&url).send())).await;
    client().get(&url).send().await.expect("answer");
    let metrics = client()
        .get(format!("http://{}/metrics", front.addr()))
        .send()
        .await
        .expect("answer");
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.expect("text");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert_eq!(value("cache_proxy_misses_total"), 1);
    assert_eq!(value("cache_proxy_upstream_requests_total"), 1);
    // Of the 50 concurrent requests, one fetched and the rest either waited for
    // it or arrived after it was stored; plus the final hit.
    assert_eq!(
        value("cache_proxy_hits_total") + value("cache_proxy_coalesced_waits_total"),
        50
    );
    assert!(value("cache_proxy_bytes_cached") > 2_000);
    assert_eq!(value("cache_proxy_entries"), 1);
}

struct Binary {
    child: Child,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_capacity_while_three_times_capacity_of_pages_is_requested() {
    init_tracing();
    const CAPACITY: u64 = 8 << 20;
    const PAGE_BYTES: usize = 256 << 10;
    const PAGES: u64 = 320; // 80 MiB: ten times the capacity
    let origin = Origin::start(OriginConfig {
        page_size: 1,
        initial_events: PAGES,
        page_bytes: PAGE_BYTES,
        ..Default::default()
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_cache-proxy"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--route", &format!("/svc={}", origin.url())])
        .args(["--capacity", &CAPACITY.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the cache-proxy binary");
    let binary = Binary { child };
    let base = format!("http://127.0.0.1:{port}");
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/metrics")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the binary starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up allocator and connection pools with a page, then measure.
    client
        .get(format!("{base}/svc/feed/archive/1-1"))
        .send()
        .await
        .expect("answer")
        .bytes()
        .await
        .expect("body");
    let baseline = rss_bytes(binary.child.id());
    let mut peak = baseline;
    let mut halfway = baseline;
    for round in 0..PAGES / 8 {
        let batch = (0..8).map(|i| {
            let n = round * 8 + i + 1;
            client
                .get(format!("{base}/svc/feed/archive/{n}-{n}"))
                .send()
        });
        for response in futures::future::join_all(batch).await {
            let response = response.expect("answer");
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.bytes().await.expect("body").len() > PAGE_BYTES);
        }
        let rss = rss_bytes(binary.child.id());
        peak = peak.max(rss);
        if round == PAGES / 16 {
            halfway = rss;
        }
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("text");
    let cached: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cache_proxy_bytes_cached ")?.parse().ok())
        .expect("bytes gauge");
    assert!(
        cached <= CAPACITY,
        "the cache holds {cached} bytes, capacity {CAPACITY}"
    );
    assert!(
        cached >= CAPACITY / 2,
        "the cache is in use: {cached} bytes"
    );
    // RSS exceeds the cached bytes by allocator slack and in-flight bodies
    // (8 concurrent 256 KiB responses), measured at about 18 MiB here; it must
    // not follow the 80 MiB that went through, and must stop growing once the
    // cache is full.
    let growth = peak.saturating_sub(baseline);
    let end = rss_bytes(binary.child.id());
    eprintln!("rss baseline {baseline} halfway {halfway} end {end} peak {peak}; cached {cached}");
    assert!(
        growth < CAPACITY + (24 << 20),
        "RSS grew by {growth} bytes for a {CAPACITY}-byte cache"
    );
    assert!(
        end < halfway + (6 << 20),
        "RSS kept growing after the cache filled: {halfway} -> {end}"
    );
}

#[tokio::test]
async fn the_gateway_router_accepts_extra_routes_from_an_embedding_program() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let proxy = cache_proxy::Proxy::new(proxy_config(&origin)).expect("proxy");
    let app =
        cache_proxy::router(proxy).route("/", axum::routing::get(|| async { "landing page" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(cache_proxy::serve_router(
        listener,
        app,
        std::future::pending(),
    ));
    let landing = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("answer");
    assert_eq!(text(landing).await, "landing page");
    let feed = client()
        .get(format!("http://{addr}{PREFIX}/feed"))
        .send()
        .await
        .expect("answer");
    assert_eq!(feed.status(), StatusCode::OK);
    assert!(feed.headers().contains_key(ETAG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_an_expired_entry_make_one_conditional_request() {
    init_tracing();
    let origin = Origin::start(OriginConfig {
        head_cache_control: "max-age=1",
        ..OriginConfig::default()
    })
    .await;
    let front = spawn_proxy(&origin).await;
    let url = front.url("/feed");
    let body = text(client().get(&url).send().await.expect("answer")).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let responses = futures::future::join_all((0..50).map(|_| client().get(&url).send())).await;
    for response in responses {
        let response = response.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, body);
    }
    let counts = origin.counts("/feed");
    assert_eq!(counts.full, 1, "{counts:?}");
    assert_eq!(
        counts.not_modified, 1,
        "one revalidation for 50 requests: {counts:?}"
    );
}

#[tokio::test]
async fn head_requests_are_answered_from_the_stored_get() {
    init_tracing();
    let origin = Origin::start(OriginConfig::default()).await;
    let front = spawn_proxy(&origin).await;
    let url = front.url("/feed/archive/1-10");
    let head = client().head(&url).send().await.expect("answer");
    assert_eq!(head.status(), StatusCode::OK);
    let length: usize = head.headers()["content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!(head.bytes().await.expect("body").is_empty());
    let get = client().get(&url).send().await.expect("answer");
    assert!(cache_status(&get).contains("hit"));
    assert_eq!(get.bytes().await.expect("body").len(), length);
    assert_eq!(origin.counts("/feed/archive/1-10").requests, 1);
}

#[tokio::test]
async fn a_response_larger_than_the_object_limit_is_streamed_and_not_stored() {
    init_tracing();
    let origin = Origin::start(OriginConfig {
        page_bytes: 100_000,
        ..OriginConfig::default()
    })
    .await;
    let mut config = proxy_config(&origin);
    config.max_object_size = cache_proxy::ByteSize(10_000);
    let front = spawn_proxy_with(config).await;
    let url = front.url("/feed/archive/1-10");
    for _ in 0..2 {
        let response = client().get(&url).send().await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            cache_status(&response).contains("detail=too-large"),
            "{}",
            cache_status(&response)
        );
        assert!(response.bytes().await.expect("body").len() > 100_000);
    }
    assert_eq!(origin.counts("/feed/archive/1-10").requests, 2);
}
