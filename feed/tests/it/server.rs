use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use feed::store::{EventLog, Expected};

use crate::helpers::{TestFeed, append_n, client, event, get, header, sqlite_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_page_never_changes_after_more_appends_or_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "log.db");
    let log = EventLog::connect(&url).await.expect("log");
    append_n(&log, 120, 40).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let feed = TestFeed::start_on(log.clone(), 100, listener).await;
    let c = client();
    let page = feed.url("/feed/archive/1-100");
    let before = get(&c, &page, &[]).await;
    assert_eq!(before.status(), 200);
    let etag = header(&before, "etag");
    let before = before.bytes().await.expect("body");

    append_n(&log, 10_000, 500).await;
    let after = get(&c, &page, &[]).await;
    assert_eq!(header(&after, "etag"), etag);
    assert_eq!(after.bytes().await.expect("body"), before);

    // A new process on the same database and base URL serves the same bytes and ETag.
    feed.stop().await;
    drop(log);
    let log = EventLog::connect(&url).await.expect("reopen");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let feed = TestFeed::start_on(log, 100, listener).await;
    let restarted = get(&c, &page, &[]).await;
    assert_eq!(header(&restarted, "etag"), etag);
    assert_eq!(restarted.bytes().await.expect("body"), before);
    let gz = get(&c, &page, &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    let gz_etag = header(&gz, "etag");
    let gz_again = get(
        &c,
        &feed.url("/feed/archive/1-100"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(header(&gz_again, "etag"), gz_etag);
}

#[tokio::test]
async fn conditional_requests_get_304_with_the_caching_headers() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 25, 25).await;
    let feed = TestFeed::start(log, 10).await;
    let c = client();
    for path in [
        "/feed",
        "/feed/archive/11-20",
        "/feed/events/3",
        "/streams/s-1",
    ] {
        let r = get(&c, &feed.url(path), &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status(), 200, "{path}");
        let etag = header(&r, "etag");
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: strong ETag {etag}"
        );
        let identity = get(&c, &feed.url(path), &[]).await;
        assert_ne!(
            header(&identity, "etag"),
            etag,
            "{path}: gzip and identity share an ETag"
        );
        assert_eq!(header(&identity, "content-encoding"), "");
        let r304 = get(
            &c,
            &feed.url(path),
            &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
        )
        .await;
        assert_eq!(r304.status(), 304, "{path}");
        assert_eq!(header(&r304, "etag"), etag);
        assert!(
            !header(&r304, "cache-control").is_empty(),
            "{path}: 304 without Cache-Control"
        );
        assert!(
            header(&r304, "vary").contains("Accept-Encoding"),
            "{path}: 304 without Vary"
        );
        assert!(!header(&r304, "content-location").is_empty(), "{path}");
    }
    let sealed = get(&c, &feed.url("/feed/archive/1-10"), &[]).await;
    assert_eq!(
        header(&sealed, "cache-control"),
        "max-age=31536000, immutable"
    );
    assert_eq!(header(&sealed, "vary"), "Accept, Accept-Encoding");
    let head = get(&c, &feed.url("/feed"), &[]).await;
    assert_eq!(
        header(&head, "cache-control"),
        "max-age=1, stale-while-revalidate=5, stale-if-error=86400"
    );
    assert_eq!(header(&head, "vary"), "Accept, Accept-Encoding, Prefer");
    assert!(header(&head, "link").contains("rel=\"prev-archive\""));
    for coding in ["br", "zstd"] {
        let r = get(
            &c,
            &feed.url("/feed/archive/1-10"),
            &[("accept-encoding", coding)],
        )
        .await;
        assert_eq!(header(&r, "content-encoding"), coding);
    }
    // The page being filled is already named by the newest sealed page: it leads to
    // the head until it is sealed.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let filling = get(&no_redirects, &feed.url("/feed/archive/21-30"), &[]).await;
    assert_eq!(filling.status(), 307);
    assert_eq!(header(&filling, "location"), feed.url("/feed"));
    assert_eq!(header(&filling, "cache-control"), "max-age=1");
    let sealed_xml = get(&c, &feed.url("/feed/archive/11-20"), &[])
        .await
        .text()
        .await
        .expect("body");
    assert!(sealed_xml.contains(&format!(
        "<link rel=\"next-archive\" type=\"application/atom+xml\" href=\"{}\"/>",
        feed.url("/feed/archive/21-30")
    )));
    for missing in [
        "/feed/archive/31-40",
        "/feed/archive/2-11",
        "/feed/archive/0-9",
        "/feed/archive/abc",
        "/feed/archive/01-10",
        "/feed/events/26",
        "/feed/events/0",
        "/streams/nope",
    ] {
        let r = get(&c, &feed.url(missing), &[]).await;
        assert_eq!(r.status(), 404, "{missing}");
        assert_eq!(header(&r, "cache-control"), "max-age=1", "{missing}");
        assert_eq!(header(&r, "content-type"), "application/problem+json");
    }
    let atom = get(&c, &feed.url("/feed/archive/1-10.atom"), &[]).await;
    assert_eq!(atom.status(), 200);
    assert!(header(&atom, "content-location").ends_with("/feed/archive/1-10.atom"));
}

#[tokio::test]
async fn links_are_built_from_the_configured_base_url_not_the_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 15, 15).await;
    let feed = TestFeed::start(log, 10).await;
    let c = client();
    let r = get(
        &c,
        &feed.url("/feed"),
        &[
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    let body = r.text().await.expect("body");
    assert!(!body.contains("evil.example"));
    assert!(body.contains(&format!("href=\"{}/feed/archive/1-10\"", feed.base)));
}

#[tokio::test]
async fn walking_forward_and_backward_visits_every_position_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 537, 100).await;
    let feed = TestFeed::start(log, 50).await;
    let c = client();
    let read = |url: String| {
        let c = c.clone();
        async move {
            let text = get(&c, &url, &[]).await.text().await.expect("body");
            feed::atom::parse_feed(&text).expect("parse")
        }
    };
    let head = read(feed.url("/feed")).await;
    let mut forward = Vec::new();
    let mut doc = read(head.links.first.clone().expect("first")).await;
    loop {
        forward.extend(doc.entries.iter().map(|e| e.position));
        match (&doc.archive, doc.links.next_archive.clone()) {
            (true, Some(next)) => doc = read(next).await,
            (false, None) => break,
            other => panic!("inconsistent links: {other:?}"),
        }
    }
    assert_eq!(forward, (1..=537).collect::<Vec<_>>());

    let mut backward = BTreeSet::new();
    let mut count = 0;
    let mut doc = head;
    loop {
        for e in &doc.entries {
            backward.insert(e.position);
            count += 1;
        }
        match doc.links.prev_archive.clone() {
            Some(prev) => doc = read(prev).await,
            None => break,
        }
    }
    assert_eq!(count, 537, "some position was visited twice");
    assert_eq!(
        backward.into_iter().collect::<Vec<_>>(),
        (1..=537).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_soon_after_an_append_and_304_after_the_wait() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 3, 3).await;
    let feed = TestFeed::start(log.clone(), 10).await;
    let c = client();
    let etag = header(&get(&c, &feed.url("/feed"), &[]).await, "etag");

    // Nothing appended: 304 after the wait, with Preference-Applied.
    let started = Instant::now();
    let r = get(
        &c,
        &feed.url("/feed"),
        &[("if-none-match", &etag), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "preference-applied"), "wait=1");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // An append while waiting: answered with the new head.
    let poll = {
        let c = c.clone();
        let url = feed.url("/feed");
        let etag = etag.clone();
        tokio::spawn(async move {
            let r = get(&c, &url, &[("if-none-match", &etag), ("prefer", "wait=20")]).await;
            (r.status(), r.text().await.expect("body"), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = log.begin().await.expect("begin");
    log.append(&mut tx, Expected::Any, &[event("late", 4)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let committed = Instant::now();
    let (status, body, answered) = poll.await.expect("poll");
    assert_eq!(status, 200);
    assert!(body.contains("<ev:position>4</ev:position>"));
    let latency = answered.saturating_duration_since(committed);
    assert!(
        latency < Duration::from_millis(100),
        "long poll answered {latency:?} after the append"
    );
}
