//! Criterion micro-benchmark of the cache lookup path: a request that is answered
//! from the cache, from the request head to the response body, through the same
//! axum router the binary serves (key normalisation, the lookup, freshness, the
//! response headers), without sockets, so a regression in the hit path shows up
//! apart from the network: `cargo bench -p cache-proxy --bench lookup`.
//!
//! The stored page is a real sealed page of the feed server (200 entries), filled
//! once per coding from a feed server on a loopback port before measuring.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use cache_proxy::{Config, Proxy, Route};
use criterion::{Criterion, criterion_group, criterion_main};
use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use http::{Request, StatusCode};
use tower::ServiceExt;

const PAGE: &str = "/feed/archive/1-200";

async fn origin(dir: &tempfile::TempDir) -> String {
    let log = EventLog::connect(&dir.path().join("log.db").display().to_string())
        .await
        .expect("log");
    let mut tx = log.begin().await.expect("begin");
    let events: Vec<NewEvent> = (0..250)
        .map(|i| {
            NewEvent::new(
                StreamId::parse(format!("order-{i}")).expect("stream"),
                EventType::parse("OrderAccepted").expect("type"),
                serde_json::json!({
                    "order_id": i,
                    "lines": [{"product_id": "p-1", "quantity": 2, "unit_price_cents": 1250}],
                    "total_cents": 2500,
                    "currency": "EUR"
                }),
            )
        })
        .collect();
    log.append(&mut tx, Expected::Any, &events)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = FeedConfig::new(&base, "bench");
    config.page_size = Some(200);
    let server = FeedServer::new(log, config).await.expect("feed server");
    tokio::spawn(async move {
        let _ = feed::server::serve(listener, server.router(), std::future::pending()).await;
    });
    base
}

fn request(headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::get(PAGE);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut r = r.body(Body::empty()).expect("request");
    r.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    r
}

/// Status, body length and `Cache-Status` of one answer from the router.
async fn answer(app: &axum::Router, headers: &[(&str, &str)]) -> (StatusCode, usize, String) {
    let response = app
        .clone()
        .oneshot(request(headers))
        .await
        .expect("infallible");
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, body.len(), cache)
}

fn bench(c: &mut Criterion) {
    feed::install_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let upstream = rt.block_on(origin(&dir));
    let proxy = Proxy::new(Config::new(vec![
        Route::new("/", &upstream).expect("route"),
    ]))
    .expect("proxy");
    let app = cache_proxy::router(proxy);

    let gzip: &[(&str, &str)] = &[("accept-encoding", "gzip, deflate, br;q=0.5")];
    let identity: &[(&str, &str)] = &[];
    let etag = rt.block_on(async {
        // Fill both variants, then check that they are hits from now on.
        for headers in [gzip, identity] {
            answer(&app, headers).await;
            let (status, len, cache) = answer(&app, headers).await;
            assert_eq!(status, StatusCode::OK);
            assert!(len > 4_000, "a page of 200 entries, not {len} bytes");
            assert!(cache.contains("hit"), "not a hit: {cache}");
        }
        let response = app.clone().oneshot(request(gzip)).await.expect("answer");
        response.headers()["etag"]
            .to_str()
            .expect("etag")
            .to_owned()
    });
    let revalidate = [gzip[0], ("if-none-match", etag.as_str())];

    let mut g = c.benchmark_group("cache hit of a 200-entry sealed page");
    g.bench_function("gzip client", |b| {
        b.to_async(&rt).iter(|| answer(&app, gzip))
    });
    g.bench_function("identity client", |b| {
        b.to_async(&rt).iter(|| answer(&app, identity))
    });
    g.bench_function("revalidation (304)", |b| {
        b.to_async(&rt).iter(|| async {
            let (status, _, _) = answer(&app, &revalidate).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
