//! The pages in a real headless Chromium: follow links from the landing page to a
//! service, its head, a sealed page and an event and back, watch the live mode add
//! an event, and save screenshots under `target/screenshots/` for people to look at.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::response::Html;
use axum::routing::get;
use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};

use super::seeded_log;
use super::webdriver::Browser;

/// A gateway-like site on one port: the landing page at `/`, one service `shop`
/// under `/shop` (its feed routes and its index), as the retail binary lays it out.
struct Site {
    root: String,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(serde::Deserialize)]
struct OrderQuery {
    order: Option<String>,
}

async fn start_site(log: EventLog) -> Site {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let root = format!("http://{}", listener.local_addr().expect("addr"));
    let base = format!("{root}/shop");
    let mut config = FeedConfig::new(&base, "shop");
    config.page_size = Some(10);
    let feed = FeedServer::new(log.clone(), config).await.expect("feed");
    let services = vec![("shop".to_owned(), base.clone())];
    let index_base = base.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |Query(q): Query<OrderQuery>| {
                let services = services.clone();
                async move { Html(feed::html::landing_page(&services, q.order.as_deref())) }
            }),
        )
        .route(
            "/shop/",
            get(move || {
                let (log, base) = (log.clone(), index_base.clone());
                async move {
                    Html(feed::html::service_index(&feed::html::ServiceIndex {
                        name: "shop".into(),
                        base_url: base,
                        head_position: log.head().await.expect("head"),
                        follows: vec![feed::html::Following {
                            name: "shop<-catalog".into(),
                            feed_url: "http://127.0.0.1:9/catalog/feed".into(),
                            checkpoint: 40,
                            head: 42,
                            lag: 2,
                            last_error: Some("connection refused".into()),
                        }],
                    }))
                }
            }),
        )
        .nest("/shop", feed.router());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = feed::server::serve(listener, app, async {
            let _ = rx.await;
        })
        .await;
    });
    Site {
        root,
        base,
        stop: Some(tx),
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/screenshots")
        .join(format!("{name}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_browses_from_the_landing_page_to_an_event_and_watches_the_head_live() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let log = seeded_log(&dir).await;
    let site = start_site(log.clone()).await;
    let outcome =
        tokio::time::timeout(Duration::from_secs(120), browse(&browser, &site, &log)).await;
    browser.quit().await;
    outcome.expect("the browser walk took longer than two minutes");
}

async fn browse(b: &Browser, site: &Site, log: &EventLog) {
    let base = &site.base;
    // Landing page: every service, its links, the order form.
    b.goto(&format!("{}/", site.root)).await;
    assert_eq!(b.text("h1").await, "Retail event feeds");
    assert_eq!(b.eval("return document.documentElement.lang;").await, "en");
    b.screenshot(&screenshot_path("landing")).await;

    // The service index, then its feed head.
    b.click(&format!("a[href='{base}/']")).await;
    assert_eq!(b.text("h1").await, "shop service");
    assert!(b.text("table.follows").await.contains("connection refused"));
    b.screenshot(&screenshot_path("service-index")).await;
    b.back().await;
    b.click("a[rel=feed]").await;
    assert_eq!(b.current_url().await, format!("{base}/feed"));
    assert_eq!(b.text("h1").await, "shop events");
    assert_eq!(b.text(".badge").await, "Head");
    assert_eq!(b.count("#events tbody tr[data-position]").await, 7);
    assert_eq!(b.text("#events tbody tr th a").await, "37", "newest first");
    // The script filled in relative times next to the UTC times.
    let ago = b
        .wait_for(
            "const a = document.querySelector('#events .ago'); return a && a.textContent;",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        ago.as_str()
            .is_some_and(|a| a.contains("ago") || a.contains("now")),
        "relative time {ago}"
    );
    assert!(b.text("#events tbody tr .time").await.contains("UTC"));
    assert_eq!(
        b.eval("return document.querySelector('link[rel=alternate]').getAttribute('href');")
            .await,
        format!("{base}/feed.atom")
    );
    b.screenshot(&screenshot_path("head")).await;

    // Older: the newest sealed page; its events in a table, long JSON folded.
    b.click("a[rel~=prev-archive]").await;
    assert_eq!(b.current_url().await, format!("{base}/feed/archive/21-30"));
    assert_eq!(b.text(".badge").await, "Sealed");
    assert!(b.text("#range").await.contains("21–30"));
    assert_eq!(b.count("#events tbody tr[data-position]").await, 10);
    assert!(b.count("#events details").await > 0, "long bodies fold");
    assert!(b.count("#events .j-key").await > 0, "JSON is highlighted");
    assert!(
        b.text("#events")
            .await
            .contains("<script>alert('x')</script>"),
        "hostile data shows as text"
    );
    b.screenshot(&screenshot_path("sealed-page")).await;

    // An event, then back to the page.
    b.click("#events tbody tr[data-position='28'] th a").await;
    assert_eq!(b.current_url().await, format!("{base}/feed/events/28"));
    assert!(b.text("h1").await.starts_with("OrderLineAdded"));
    assert!(b.text("dl.facts").await.contains("order-42"));
    assert_eq!(
        b.eval("return document.querySelector('a[rel=up]').href;")
            .await,
        format!("{base}/feed/archive/21-30")
    );
    b.screenshot(&screenshot_path("event")).await;
    b.click("a[rel=next]").await;
    assert_eq!(b.current_url().await, format!("{base}/feed/events/29"));
    b.back().await;
    b.back().await;
    assert_eq!(b.current_url().await, format!("{base}/feed/archive/21-30"));
    assert_eq!(b.text(".badge").await, "Sealed");

    // Follow an order from the landing page to its stream.
    b.goto(&format!("{}/", site.root)).await;
    b.eval("document.querySelector('input[name=order]').value = '42'; document.querySelector('form.order').requestSubmit(); return true;")
        .await;
    b.wait_for(
        "return document.querySelector('#order-links a') !== null;",
        Duration::from_secs(10),
    )
    .await;
    b.click("#order-links a").await;
    assert_eq!(b.current_url().await, format!("{base}/streams/order-42"));
    assert_eq!(b.text("h1").await, "shop stream order-42");
    b.screenshot(&screenshot_path("stream")).await;

    // The head on a phone-sized screen.
    b.emulate_width(Some(390)).await;
    b.goto(&format!("{base}/feed")).await;
    b.screenshot(&screenshot_path("head-phone")).await;
    b.emulate_width(None).await;

    // Live mode: an event appended while the page is open shows up without a reload.
    b.goto(&format!("{base}/feed")).await;
    b.eval("window.notReloaded = true; return true;").await;
    b.wait_for(
        "const s = document.getElementById('live-status'); return s && s.dataset.state === 'on';",
        Duration::from_secs(5),
    )
    .await;
    // Give the script time to be parked in its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tx = log.begin().await.expect("begin");
    log.append(
        &mut tx,
        Expected::Any,
        &[NewEvent::new(
            StreamId::parse("order-43").expect("stream"),
            EventType::parse("OrderAccepted").expect("type"),
            serde_json::json!({ "order_id": "43", "live": true }),
        )],
    )
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    b.wait_for(
        "return document.querySelector('#events tbody tr[data-position=\"38\"]') !== null;",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(b.eval("return window.notReloaded === true;").await, true);
    assert_eq!(b.text("#events tbody tr th a").await, "38");
    assert!(b.text("#range").await.contains("31–38"));
    b.wait_for(
        "const s = document.getElementById('live-status'); return s && !s.hidden && s.dataset.state === 'on';",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot(&screenshot_path("head-live")).await;
}
