//! The HTML variants of the feed resources: negotiation, caching headers, escaping,
//! over real sockets. The pages in a real headless Chromium are tested on the running
//! retail system (the workspace's `tests/it/browser.rs`).

use feed::event::{EventType, NewEvent, StreamId};
use feed::store::{EventLog, Expected};

use crate::helpers::{TestFeed, append_n, client, get, header, sqlite_url};

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// 25 events on streams s-0..s-9, then 12 on `order-42` (so the stream has a sealed
/// page at size 10): positions 1..=37, sealed pages 1-10, 11-20, 21-30.
pub(crate) async fn seeded_log(dir: &tempfile::TempDir) -> EventLog {
    let log = EventLog::connect(&sqlite_url(dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 25, 25).await;
    let mut tx = log.begin().await.expect("begin");
    let events: Vec<NewEvent> = (1..=12)
        .map(|n| {
            let ty = match n {
                1 => "OrderAccepted",
                12 => "OrderShipped",
                _ => "OrderLineAdded",
            };
            NewEvent::new(
                StreamId::parse("order-42").expect("stream"),
                EventType::parse(ty).expect("type"),
                serde_json::json!({
                    "order_id": "42", "line": n, "sku": format!("SKU-{n}"), "quantity": n % 3 + 1,
                    "note": "<script>alert('x')</script>", "gift": n % 2 == 0,
                    "address": { "street": "1 Main St", "city": "Springfield", "zip": "12345" },
                    "lines": (0..n % 3 * 3).map(|i| serde_json::json!({ "sku": format!("SKU-{i}"), "qty": i })).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    log.append(&mut tx, Expected::Any, &events)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    log
}

/// The resources of the seeded log: (path, is a head, Atom media type).
const RESOURCES: [(&str, bool, &str); 5] = [
    ("/feed", true, "application/atom+xml"),
    ("/feed/archive/11-20", false, "application/atom+xml"),
    ("/feed/events/3", false, "application/atom+xml;type=entry"),
    ("/streams/order-42", false, "application/atom+xml"),
    (
        "/streams/order-42/archive/1-10",
        false,
        "application/atom+xml",
    ),
];

#[tokio::test]
async fn every_resource_negotiates_atom_or_html_by_accept_and_suffix() {
    let dir = tempfile::tempdir().expect("tmp");
    let feed = TestFeed::start(seeded_log(&dir).await, 10).await;
    let c = client();
    for (path, _, atom_type) in RESOURCES {
        let cases: [(String, Option<&str>, bool); 7] = [
            (path.to_owned(), Some("application/atom+xml"), false),
            (path.to_owned(), Some("text/html"), true),
            (path.to_owned(), Some("*/*"), false),
            (path.to_owned(), Some(BROWSER_ACCEPT), true),
            (path.to_owned(), None, false),
            (format!("{path}.atom"), Some(BROWSER_ACCEPT), false),
            (format!("{path}.html"), Some("application/atom+xml"), true),
        ];
        for (url, accept, html) in cases {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let r = get(&c, &feed.url(&url), &headers).await;
            let what = format!("GET {url} Accept: {accept:?}");
            assert_eq!(r.status(), 200, "{what}");
            let location = header(&r, "content-location");
            let content_type = header(&r, "content-type");
            let body = r.text().await.expect("body");
            if html {
                assert_eq!(content_type, "text/html; charset=utf-8", "{what}");
                assert_eq!(location, feed.url(&format!("{path}.html")), "{what}");
                assert!(body.starts_with("<!DOCTYPE html>"), "{what}");
                let alternate = format!(
                    "<link rel=\"alternate\" type=\"{atom_type}\" href=\"{}\"",
                    feed.url(&format!("{path}.atom"))
                );
                assert!(body.contains(&alternate), "{what}: no {alternate}");
            } else {
                assert_eq!(
                    content_type,
                    format!("{atom_type}; charset=utf-8"),
                    "{what}"
                );
                assert_eq!(location, feed.url(&format!("{path}.atom")), "{what}");
                assert!(body.starts_with("<?xml"), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn html_gets_weak_etags_its_own_cache_control_and_vary() {
    let dir = tempfile::tempdir().expect("tmp");
    let feed = TestFeed::start(seeded_log(&dir).await, 10).await;
    let c = client();
    for (path, is_head, _) in RESOURCES {
        let html_url = feed.url(&format!("{path}.html"));
        let atom = get(&c, &feed.url(path), &[]).await;
        let r = get(&c, &html_url, &[]).await;
        let etag = header(&r, "etag");
        assert!(
            etag.starts_with("W/\""),
            "{path}: HTML ETag {etag} is not weak"
        );
        assert!(
            etag.contains(feed::html::version_tag()),
            "{path}: {etag} lacks the template version"
        );
        assert_ne!(etag, format!("W/{}", header(&atom, "etag")), "{path}");
        let cache_control = header(&r, "cache-control");
        let stream_head = path == "/streams/order-42";
        if is_head || stream_head {
            assert_eq!(cache_control, feed::server::HEAD_CACHE, "{path}");
        } else {
            assert_eq!(
                cache_control, "max-age=300, stale-while-revalidate=86400",
                "{path}"
            );
        }
        let vary = if is_head {
            "Accept, Accept-Encoding, Prefer"
        } else {
            "Accept, Accept-Encoding"
        };
        assert_eq!(header(&r, "vary"), vary, "{path}");
        assert_eq!(header(&atom, "vary"), vary, "{path}");

        // Compressed like the Atom, with an ETag of its own per coding.
        let gz = get(&c, &html_url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(header(&gz, "content-encoding"), "gzip", "{path}");
        let gz_etag = header(&gz, "etag");
        assert!(gz_etag.starts_with("W/\"") && gz_etag != etag, "{path}");

        // Conditional GET: 304 for the HTML's ETag; the Atom's does not match the HTML.
        let r304 = get(&c, &html_url, &[("if-none-match", &etag)]).await;
        assert_eq!(r304.status(), 304, "{path}");
        assert_eq!(header(&r304, "etag"), etag, "{path}");
        assert_eq!(header(&r304, "vary"), vary, "{path}");
        assert_eq!(
            header(&r304, "content-location"),
            html_url,
            "{path}: 304 names the variant"
        );
        let cross = get(&c, &html_url, &[("if-none-match", &header(&atom, "etag"))]).await;
        assert_eq!(
            cross.status(),
            200,
            "{path}: the Atom's ETag matched the HTML"
        );
    }
}

#[tokio::test]
async fn hostile_event_data_is_escaped_in_every_page() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = seeded_log(&dir).await;
    let mut tx = log.begin().await.expect("begin");
    let hostile = NewEvent::new(
        StreamId::parse("order-42").expect("stream"),
        EventType::parse("OrderNoted").expect("type"),
        serde_json::json!({
            "<img src=x onerror=alert(1)>": "</pre></td><script>alert(1)</script>",
            "quote": "\" onmouseover=\"alert(2)",
        }),
    )
    .with_metadata(serde_json::json!({ "by": "<b>mallory</b>" }));
    log.append(&mut tx, Expected::Any, &[hostile])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let feed = TestFeed::start(log, 10).await;
    let c = client();
    for path in [
        "/feed.html",
        "/feed/events/38.html",
        "/streams/order-42.html",
    ] {
        let body = get(&c, &feed.url(path), &[])
            .await
            .text()
            .await
            .expect("body");
        for raw in [
            "<script>alert",
            "<img src=x",
            "<b>mallory",
            "\" onmouseover",
        ] {
            assert!(!body.contains(raw), "{path}: {raw:?} unescaped");
        }
        assert!(
            body.contains("&lt;/pre&gt;&lt;/td&gt;&lt;script&gt;alert(1)"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn pages_link_their_neighbours_and_assets_are_immutable() {
    let dir = tempfile::tempdir().expect("tmp");
    let feed = TestFeed::start(seeded_log(&dir).await, 10).await;
    let c = client();
    let page = get(&c, &feed.url("/feed/archive/11-20.html"), &[])
        .await
        .text()
        .await
        .expect("body");
    for (rel, target) in [
        ("next next-archive", "/feed/archive/21-30"),
        ("prev prev-archive", "/feed/archive/1-10"),
        ("first", "/feed/archive/1-10"),
        ("current", "/feed"),
    ] {
        let link = format!("href=\"{}\" rel=\"{rel}\"", feed.url(target));
        assert!(page.contains(&link), "no {link}");
    }
    assert!(page.contains(&format!("href=\"{}\"", feed.url("/feed/events/20"))));
    assert!(page.contains(&format!("href=\"{}\"", feed.url("/streams/s-9"))));

    let event = get(&c, &feed.url("/feed/events/37.html"), &[])
        .await
        .text()
        .await
        .expect("body");
    assert!(event.contains(&format!(
        "href=\"{}\" rel=\"prev\"",
        feed.url("/feed/events/36")
    )));
    assert!(
        !event.contains("rel=\"next\""),
        "the newest event has no next"
    );
    assert!(event.contains(&format!("href=\"{}\" rel=\"up\"", feed.url("/feed"))));
    assert!(event.contains(&format!(
        "href=\"{}\" rel=\"related\"",
        feed.url("/streams/order-42")
    )));

    let css = page
        .split("rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("stylesheet link");
    let r = get(&c, css, &[("accept-encoding", "br")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/css; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "max-age=31536000, immutable");
    assert_eq!(header(&r, "content-encoding"), "br");
    let missing = get(&c, &feed.url("/feed/_assets/feed.css"), &[]).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_browser_gets_a_404_page_and_a_program_gets_problem_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let feed = TestFeed::start(seeded_log(&dir).await, 10).await;
    let c = client();
    for path in ["/feed/events/99", "/feed/archive/41-50", "/streams/nope"] {
        let page = get(&c, &feed.url(path), &[("accept", BROWSER_ACCEPT)]).await;
        assert_eq!(page.status(), 404, "{path}");
        assert_eq!(
            header(&page, "content-type"),
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(header(&page, "cache-control"), "max-age=1", "{path}");
        let body = page.text().await.expect("body");
        assert!(
            body.contains(&format!("href=\"{}\" rel=\"current\"", feed.url("/feed"))),
            "{path}"
        );
        let explicit = get(&c, &feed.url(&format!("{path}.html")), &[]).await;
        assert_eq!(
            header(&explicit, "content-type"),
            "text/html; charset=utf-8",
            "{path}"
        );
        for accept in [None, Some("application/atom+xml")] {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let r = get(&c, &feed.url(path), &headers).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(
                header(&r, "content-type"),
                "application/problem+json",
                "{path}"
            );
        }
        let atom = get(
            &c,
            &feed.url(&format!("{path}.atom")),
            &[("accept", BROWSER_ACCEPT)],
        )
        .await;
        assert_eq!(
            header(&atom, "content-type"),
            "application/problem+json",
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_event_page_links_the_next_event_as_soon_as_another_writer_appends_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = seeded_log(&dir).await;
    let feed = TestFeed::start(log.clone(), 10).await;
    let c = client();
    // The newest event: no next event yet, and, its page still being the head, only
    // as cacheable as the head.
    let r = get(&c, &feed.url("/feed/events/37.html"), &[]).await;
    assert_eq!(header(&r, "cache-control"), feed::server::HEAD_CACHE);
    assert!(!r.text().await.expect("body").contains("rel=\"next\""));

    // Another writer (a replica sharing the database) appends behind this server's back.
    let mut tx = log.begin().await.expect("begin");
    log.append(
        &mut tx,
        Expected::Any,
        &[NewEvent::new(
            StreamId::parse("order-43").expect("stream"),
            EventType::parse("OrderAccepted").expect("type"),
            serde_json::json!({ "order_id": "43" }),
        )],
    )
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    let page = get(&c, &feed.url("/feed/events/37.html"), &[])
        .await
        .text()
        .await
        .expect("body");
    assert!(
        page.contains(&format!(
            "href=\"{}\" rel=\"next\"",
            feed.url("/feed/events/38")
        )),
        "the next event is linked once it exists"
    );

    // An event on a sealed page has links that never change: cached for minutes.
    let settled = get(&c, &feed.url("/feed/events/3.html"), &[]).await;
    assert_eq!(
        header(&settled, "cache-control"),
        "max-age=300, stale-while-revalidate=86400"
    );
}
