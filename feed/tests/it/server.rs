use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use feed::store::{EventLog, Expected};
use sha2::{Digest, Sha256};

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
    let gz_before = header(
        &get(&c, &page, &[("accept-encoding", "gzip")]).await,
        "etag",
    );
    feed.stop().await;
    drop(log);
    let log = EventLog::connect(&url).await.expect("reopen");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let feed = TestFeed::start_on(log, 100, listener).await;
    // A new client: the connections to the stopped server are gone, and a request
    // sent on one of them just as it closed would fail (the test flaked on that).
    let c = client();
    let restarted = get(&c, &page, &[]).await;
    assert_eq!(header(&restarted, "etag"), etag);
    assert_eq!(restarted.bytes().await.expect("body"), before);
    let gz = get(&c, &page, &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    let gz_etag = header(&gz, "etag");
    assert_eq!(gz_etag, gz_before, "the gzip ETag changed with the restart");
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

/// Sends one request to a router in-process.
async fn oneshot(
    router: &axum::Router,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = router
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    (status, headers, body)
}

fn h(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

async fn server_for(log: EventLog, base: &str, page_size: u64) -> feed::FeedServer {
    let mut config = feed::FeedConfig::new(base, "test");
    config.page_size = Some(page_size);
    feed::FeedServer::new(log, config).await.expect("server")
}

/// A SQLite log of 35 events (three sealed pages of 10 and a head of 5) and a server
/// of it; the directory holds the log's file.
async fn three_sealed_pages_of_ten() -> (tempfile::TempDir, EventLog, feed::FeedServer) {
    let (dir, log) = crate::helpers::sqlite_log("log.db").await;
    append_n(&log, 35, 35).await;
    let server = server_for(log.clone(), "http://feeds.example", 10).await;
    (dir, log, server)
}

/// A client that reads a sealed page is most likely walking the archive, so the
/// server renders the next sealed page, in the same format and coding, while it
/// answers: a replay finds it ready. It renders each page once, reads nothing ahead
/// past the newest sealed page, and a page read ahead is the page asked for.
#[tokio::test]
async fn reading_a_sealed_page_renders_the_next_one_ahead_once() {
    let (_dir, log, server) = three_sealed_pages_of_ten().await;
    let r = server.clone().router();
    let gzip = [("accept-encoding", "gzip")];
    let (status, _, _) = oneshot(&r, "/feed", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(server.pages_rendered(), 0, "the head is no sealed page");

    let rendered_soon = |n: u64| {
        let server = server.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while server.pages_rendered() < n {
                assert!(
                    Instant::now() < deadline,
                    "{} pages rendered, not {n}",
                    server.pages_rendered()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            server.pages_rendered()
        }
    };
    let (status, _, _) = oneshot(&r, "/feed/archive/1-10", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(rendered_soon(2).await, 2, "page 1-10, and 11-20 ahead");
    let (status, headers, ahead) = oneshot(&r, "/feed/archive/11-20", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(h(&headers, "content-encoding"), "gzip");
    assert_eq!(rendered_soon(3).await, 3, "21-30 ahead, 11-20 not again");
    let (status, _, _) = oneshot(&r, "/feed/archive/21-30", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.pages_rendered(),
        3,
        "21-30 came from memory, and 31-40 is not sealed"
    );

    // What was read ahead is what a fresh server renders when asked.
    let fresh = server_for(log, "http://feeds.example", 10).await.router();
    let (_, _, asked) = oneshot(&fresh, "/feed/archive/11-20", &gzip).await;
    assert_eq!(gunzip(&ahead), gunzip(&asked));
}

/// The head names the newest sealed page as `prev-archive` with its digest, so the
/// server renders each page once when it seals, to record that digest. It keeps that
/// rendering, in the coding its subscribers ask for (zstd), instead of throwing it
/// away: a replay right after reads the pages from memory. The kept bytes and ETags
/// are the ones a server renders when asked.
#[tokio::test]
async fn the_sealed_pages_rendered_for_the_hash_chain_are_kept_for_the_next_reader() {
    let (_dir, log, server) = three_sealed_pages_of_ten().await;
    let r = server.clone().router();
    let (status, _, _) = oneshot(&r, "/feed", &[]).await;
    assert_eq!(status, 200);

    let zstd = [("accept-encoding", "zstd")];
    let mut kept = Vec::new();
    for page in ["1-10", "11-20", "21-30"] {
        let (status, headers, body) = oneshot(&r, &format!("/feed/archive/{page}"), &zstd).await;
        assert_eq!(status, 200);
        assert_eq!(h(&headers, "content-encoding"), "zstd");
        kept.push((h(&headers, "etag"), body));
    }
    assert_eq!(
        server.pages_rendered(),
        0,
        "the pages rendered for the chain were rendered again"
    );
    // The newest sealed page, so nothing is read ahead, here and below.
    let gzip = [("accept-encoding", "gzip")];
    let (status, _, _) = oneshot(&r, "/feed/archive/21-30", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.pages_rendered(),
        1,
        "another coding is rendered when asked"
    );

    // A server that starts on the recorded chain has nothing in memory, and serves
    // the same bytes (those the chain keeps).
    let fresh = server_for(log, "http://feeds.example", 10).await;
    let (_, headers, body) = oneshot(&fresh.clone().router(), "/feed/archive/21-30", &zstd).await;
    assert_eq!(fresh.pages_rendered(), 1);
    assert_eq!((h(&headers, "etag"), body), kept[2]);
}

/// A server started on a recorded chain holds no page in memory. When a client walks
/// the archive in zstd, the coding the chain keeps, the first page read ahead brings
/// the kept bytes of the next 16 sealed pages in one query, so the walk reads the
/// database once every 16 pages instead of once a page; the bytes and ETags are those
/// the chain keeps, and nothing past the newest sealed page is read.
#[tokio::test]
async fn a_new_server_reads_the_kept_bytes_of_the_pages_ahead_a_batch_at_a_time() {
    let (_dir, log) = crate::helpers::sqlite_log("log.db").await;
    kept_pages_are_read_ahead_a_batch_at_a_time(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_new_server_reads_the_kept_bytes_of_the_pages_ahead_a_batch_at_a_time() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    let log = EventLog::connect(&pg.database("ahead")).await.expect("log");
    kept_pages_are_read_ahead_a_batch_at_a_time(log).await;
}

async fn kept_pages_are_read_ahead_a_batch_at_a_time(log: EventLog) {
    append_n(&log, 205, 205).await;
    let first = server_for(log.clone(), "http://feeds.example", 10).await;
    let r = first.clone().router();
    let (status, _, _) = oneshot(&r, "/feed", &[]).await;
    assert_eq!(status, 200);
    let zstd = [("accept-encoding", "zstd")];
    let pages: Vec<String> = (0..20)
        .map(|p| format!("{}-{}", p * 10 + 1, p * 10 + 10))
        .collect();
    let mut kept = Vec::new();
    for page in &pages {
        let (_, headers, body) = oneshot(&r, &format!("/feed/archive/{page}"), &zstd).await;
        kept.push((h(&headers, "etag"), body));
    }

    let fresh = server_for(log, "http://feeds.example", 10).await;
    let r = fresh.clone().router();
    let kept_ahead_soon = |n: u64| {
        let fresh = fresh.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while fresh.pages_kept_ahead() < n {
                assert!(
                    Instant::now() < deadline,
                    "{} pages kept ahead, not {n}",
                    fresh.pages_kept_ahead()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fresh.pages_kept_ahead()
        }
    };
    let mut served = Vec::new();
    let (status, headers, body) = oneshot(&r, "/feed/archive/1-10", &zstd).await;
    assert_eq!(status, 200);
    served.push((h(&headers, "etag"), body));
    assert_eq!(kept_ahead_soon(16).await, 16, "pages 11-20 to 161-170");
    for page in &pages[1..16] {
        let (status, headers, body) = oneshot(&r, &format!("/feed/archive/{page}"), &zstd).await;
        assert_eq!(status, 200);
        served.push((h(&headers, "etag"), body));
    }
    assert_eq!(
        fresh.pages_rendered(),
        1,
        "only page 1-10 was read on its own"
    );
    // Asking for 161-170 reads ahead from 171-180: the last three sealed pages.
    let (_, headers, body) = oneshot(&r, "/feed/archive/161-170", &zstd).await;
    served.push((h(&headers, "etag"), body));
    assert_eq!(kept_ahead_soon(19).await, 19);
    for page in &pages[17..] {
        let (_, headers, body) = oneshot(&r, &format!("/feed/archive/{page}"), &zstd).await;
        served.push((h(&headers, "etag"), body));
    }
    assert_eq!(served, kept);
    assert_eq!(fresh.pages_rendered(), 1);
    assert_eq!(
        fresh.pages_kept_ahead(),
        19,
        "nothing past 191-200, the newest sealed page"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every variant of every sealed page of `server` as (path, coding, ETag, body).
async fn sealed_variants(server: &feed::FeedServer) -> Vec<(String, String, String, Vec<u8>)> {
    let r = server.clone().router();
    let mut all = Vec::new();
    for page in ["1-10", "11-20", "21-30"] {
        for coding in ["zstd", "gzip", "identity"] {
            let path = format!("/feed/archive/{page}");
            let (status, headers, body) = oneshot(&r, &path, &[("accept-encoding", coding)]).await;
            assert_eq!(status, 200);
            let served = h(&headers, "content-encoding");
            assert_eq!(
                if served.is_empty() {
                    "identity"
                } else {
                    &served
                },
                coding
            );
            all.push((path, coding.to_owned(), h(&headers, "etag"), body));
        }
    }
    all
}

/// A sealed page never changes: the hash chain keeps the bytes it was first rendered
/// to, and every later request, in any coding and after a restart, is served from
/// them, even if the events under it are rewritten in the database (which `feedctl
/// verify --against` then shows).
#[tokio::test]
async fn sealed_pages_are_served_from_the_bytes_kept_with_their_digests_after_a_restart() {
    let (_dir, log) = crate::helpers::sqlite_log("log.db").await;
    sealed_pages_are_served_from_kept_bytes(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_sealed_pages_are_served_from_the_bytes_kept_with_their_digests() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    let log = EventLog::connect(&pg.database("kept")).await.expect("log");
    sealed_pages_are_served_from_kept_bytes(log).await;
}

async fn sealed_pages_are_served_from_kept_bytes(log: EventLog) {
    append_n(&log, 35, 35).await;
    let server = server_for(log.clone(), "http://feeds.example", 10).await;
    let (status, _, _) = oneshot(&server.clone().router(), "/feed", &[]).await;
    assert_eq!(status, 200);
    let before = sealed_variants(&server).await;
    // The digest recorded for each page is that of the identity bytes served.
    for (path, coding, _, body) in &before {
        if coding == "identity" {
            let from: i64 = path["/feed/archive/".len()..]
                .split('-')
                .next()
                .expect("from")
                .parse()
                .expect("from");
            let recorded: String =
                sqlx::query_scalar("SELECT digest FROM feed_page_digests WHERE from_position = $1")
                    .bind(from)
                    .fetch_one(log.database().pool())
                    .await
                    .expect("digest");
            assert_eq!(recorded, hex(&Sha256::digest(body)), "{path}");
        }
    }
    sqlx::query("UPDATE feed_events SET data = '{\"n\":-1}'")
        .execute(log.database().pool())
        .await
        .expect("rewrite");
    let fresh = server_for(log.clone(), "http://feeds.example", 10).await;
    assert_eq!(sealed_variants(&fresh).await, before);
    // What is not a sealed page renders the events as they are now.
    let (_, _, event) = oneshot(&fresh.clone().router(), "/feed/events/5", &[]).await;
    assert!(
        String::from_utf8(event)
            .expect("utf-8")
            .contains(r#"{"n":-1}"#)
    );
}

/// A page whose digest was recorded before the chain kept the bytes of pages (a log
/// migrated from an older version) is rendered from its events once more; if it still
/// matches its digest, its bytes are kept from then on, and if its events were
/// changed, they are not.
#[tokio::test]
async fn a_page_recorded_without_its_bytes_is_kept_once_it_renders_to_its_digest() {
    let (_dir, log, server) = three_sealed_pages_of_ten().await;
    let (status, _, _) = oneshot(&server.clone().router(), "/feed", &[]).await;
    assert_eq!(status, 200);
    let before = sealed_variants(&server).await;
    let pool = log.database().pool();
    sqlx::query("UPDATE feed_page_digests SET atom_zstd = NULL")
        .execute(pool)
        .await
        .expect("forget the bytes");
    sqlx::query("UPDATE feed_events SET data = '{\"n\":-1}' WHERE position > 20")
        .execute(pool)
        .await
        .expect("rewrite page 21-30");
    let fresh = server_for(log.clone(), "http://feeds.example", 10).await;
    let after = sealed_variants(&fresh).await;
    assert_eq!(
        after[..6],
        before[..6],
        "pages 1-10 and 11-20 render as before"
    );
    assert_ne!(
        after[6..],
        before[6..],
        "page 21-30 renders its rewritten events"
    );
    let kept: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT from_position, atom_zstd FROM feed_page_digests ORDER BY from_position",
    )
    .fetch_all(pool)
    .await
    .expect("kept");
    let zstd_of = |from: i64| &before[(from as usize / 10) * 3].3;
    for (from, bytes) in kept {
        match from {
            1 | 11 => assert_eq!(bytes.as_ref(), Some(zstd_of(from)), "page {from}"),
            _ => assert_eq!(bytes, None, "page {from} no longer matches its digest"),
        }
    }
}

fn gunzip(body: &[u8]) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .expect("gzip");
    text
}

#[tokio::test]
async fn an_event_is_immutable_only_once_its_page_is_sealed_and_then_never_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "log.db");
    let log = EventLog::connect(&url).await.expect("log");
    append_n(&log, 25, 25).await;
    let base = "http://feeds.example/svc";
    let a = server_for(log.clone(), base, 10).await.router();

    let (status, headers, body) = oneshot(&a, "/feed/events/23", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h(&headers, "cache-control"), feed::server::HEAD_CACHE);
    let body = String::from_utf8(body).expect("utf-8");
    assert!(
        body.contains(&format!(
            "rel=\"up\" type=\"application/atom+xml\" href=\"{base}/feed\""
        )),
        "{body}"
    );
    assert!(h(&headers, "link").contains(&format!("<{base}/feed>; rel=\"up\"")));
    let filling_etag = h(&headers, "etag");

    let (_, headers, _) = oneshot(&a, "/feed/events/5", &[]).await;
    assert_eq!(h(&headers, "cache-control"), feed::server::IMMUTABLE);
    assert!(h(&headers, "link").contains(&format!("<{base}/feed/archive/1-10>; rel=\"up\"")));

    // The page of event 23 fills: from now on it is immutable with its archive page
    // as `up`, the same on every replica and after a restart.
    append_n(&log, 5, 5).await;
    let (_, headers, sealed) = oneshot(&a, "/feed/events/23", &[]).await;
    assert_eq!(h(&headers, "cache-control"), feed::server::IMMUTABLE);
    assert_ne!(h(&headers, "etag"), filling_etag);
    let sealed_text = String::from_utf8(sealed.clone()).expect("utf-8");
    assert!(sealed_text.contains(&format!("href=\"{base}/feed/archive/21-30\"")));
    let replica = server_for(EventLog::connect(&url).await.expect("log"), base, 10)
        .await
        .router();
    let (_, replica_headers, replica_body) = oneshot(&replica, "/feed/events/23", &[]).await;
    assert_eq!(replica_body, sealed);
    assert_eq!(h(&replica_headers, "etag"), h(&headers, "etag"));
}

#[tokio::test]
async fn every_document_sends_its_links_as_a_link_header() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 25, 25).await;
    let base = "http://feeds.example";
    let r = server_for(log, base, 10).await.router();
    let rels = |link: &str| -> Vec<(String, String)> {
        link.split(", ")
            .map(|l| {
                let (href, rel) = l.split_once("; rel=").expect("rel");
                (
                    rel.trim_matches('"').to_owned(),
                    href.trim_matches(['<', '>']).to_owned(),
                )
            })
            .collect()
    };
    let (_, head, _) = oneshot(&r, "/feed", &[]).await;
    assert_eq!(
        rels(&h(&head, "link")),
        [
            ("self", format!("{base}/feed")),
            ("current", format!("{base}/feed")),
            ("first", format!("{base}/feed/archive/1-10")),
            ("prev-archive", format!("{base}/feed/archive/11-20")),
        ]
        .map(|(r, u)| (r.to_owned(), u))
    );
    let (_, page, _) = oneshot(&r, "/feed/archive/11-20", &[]).await;
    assert_eq!(
        rels(&h(&page, "link")),
        [
            ("self", format!("{base}/feed/archive/11-20")),
            ("current", format!("{base}/feed")),
            ("first", format!("{base}/feed/archive/1-10")),
            ("prev-archive", format!("{base}/feed/archive/1-10")),
            ("next-archive", format!("{base}/feed/archive/21-30")),
        ]
        .map(|(r, u)| (r.to_owned(), u))
    );
    let (_, first, _) = oneshot(&r, "/feed/archive/1-10", &[]).await;
    assert!(!h(&first, "link").contains("prev-archive"));
    let (_, event, _) = oneshot(&r, "/feed/events/12", &[]).await;
    assert_eq!(
        rels(&h(&event, "link")),
        [
            ("self", format!("{base}/feed/events/12")),
            ("current", format!("{base}/feed")),
            ("related", format!("{base}/streams/s-1")),
            ("up", format!("{base}/feed/archive/11-20")),
        ]
        .map(|(r, u)| (r.to_owned(), u))
    );
}

#[tokio::test]
async fn every_content_coding_of_a_document_has_its_own_etag() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    append_n(&log, 25, 25).await;
    let r = server_for(log, "http://feeds.example", 10).await.router();
    for path in ["/feed", "/feed/archive/1-10", "/feed/events/3"] {
        let mut tags = BTreeSet::new();
        for coding in ["identity", "gzip", "br", "zstd"] {
            let (status, headers, body) = oneshot(&r, path, &[("accept-encoding", coding)]).await;
            assert_eq!(status, 200);
            if coding != "identity" {
                assert_eq!(h(&headers, "content-encoding"), coding, "{path}");
            }
            let etag = h(&headers, "etag");
            if path != "/feed" {
                // A sealed document's strong ETag names the bytes sent, so another
                // compressor (level or library) gives another ETag too (RFC 9110
                // section 8.8.1).
                let digest = hex(&Sha256::digest(&body)[..12]);
                assert!(
                    etag.starts_with(&format!("\"{digest}.")),
                    "{path} {coding}: {etag} does not name the digest {digest} of the body"
                );
            }
            tags.insert(etag);
        }
        assert_eq!(tags.len(), 4, "{path}: {tags:?}");
    }
}

#[tokio::test]
async fn two_servers_of_one_database_agree_on_pages_after_one_changes_the_page_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "log.db");
    let log_a = EventLog::connect(&url).await.expect("log");
    append_n(&log_a, 25, 25).await;
    let base = "http://feeds.example";
    let a = server_for(log_a.clone(), base, 10).await.router();
    assert_eq!(oneshot(&a, "/feed", &[]).await.0, 200);
    // A replica started later with another page size records the change once; it
    // applies after the page being filled (21-30).
    let b = server_for(EventLog::connect(&url).await.expect("log"), base, 4)
        .await
        .router();
    append_n(&log_a, 10, 5).await;
    for path in [
        "/feed",
        "/feed/archive/21-30",
        "/feed/archive/31-34",
        "/feed/archive/31-40",
        "/feed/events/33",
    ] {
        let (sa, ha, ba) = oneshot(&a, path, &[]).await;
        let (sb, hb, bb) = oneshot(&b, path, &[]).await;
        assert_eq!(sa, sb, "{path}: status");
        assert_eq!(h(&ha, "etag"), h(&hb, "etag"), "{path}: etag");
        assert_eq!(ba, bb, "{path}: bytes");
    }
    assert_eq!(oneshot(&a, "/feed/archive/31-34", &[]).await.0, 200);
    assert_eq!(oneshot(&a, "/feed/archive/31-40", &[]).await.0, 404);
    // The same size again changes nothing.
    let again = server_for(EventLog::connect(&url).await.expect("log"), base, 4).await;
    assert_eq!(again.layout().segments().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_append_from_another_connection_answers_an_http_long_poll() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    let db = pg.database("longpoll");
    let log = EventLog::connect(&db).await.expect("log");
    append_n(&log, 3, 3).await;
    let feed = TestFeed::start(log, 10).await;
    let c = client();
    let etag = header(&get(&c, &feed.url("/feed"), &[]).await, "etag");
    let poll = {
        let c = c.clone();
        let url = feed.url("/feed");
        let etag = etag.clone();
        tokio::spawn(async move {
            let r = get(&c, &url, &[("if-none-match", &etag), ("prefer", "wait=25")]).await;
            (r.status(), r.text().await.expect("body"))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = EventLog::connect(&db).await.expect("another pool");
    let mut tx = other.begin().await.expect("begin");
    other
        .append(&mut tx, Expected::Any, &[event("late", 4)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("answered well before the 25 s wait")
        .expect("task");
    assert_eq!(status, 200);
    assert!(body.contains("<ev:position>4</ev:position>"));
}

#[tokio::test]
async fn database_failures_get_a_generic_problem_without_sql_or_paths() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "secret-name.db");
    let log = EventLog::connect(&url).await.expect("log");
    append_n(&log, 25, 25).await;
    let r = server_for(log.clone(), "http://feeds.example", 10)
        .await
        .router();
    let leaks = |body: &[u8]| {
        let text = String::from_utf8_lossy(body).to_lowercase();
        [
            "secret-name",
            "feed_events",
            "select",
            "sqlite",
            "table",
            "/tmp",
            "data:",
        ]
        .into_iter()
        .filter(|w| text.contains(w))
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    // A row nobody can decode: 500.
    sqlx::query("UPDATE feed_events SET data = 'not json' WHERE position = 3")
        .execute(log.database().pool())
        .await
        .expect("corrupt");
    let (status, headers, body) = oneshot(&r, "/feed/archive/1-10", &[]).await;
    assert_eq!(status, 500);
    assert_eq!(h(&headers, "content-type"), "application/problem+json");
    assert_eq!(leaks(&body), Vec::<String>::new());
    // The table is gone: 503.
    sqlx::query("DROP TABLE feed_events")
        .execute(log.database().pool())
        .await
        .expect("drop");
    for path in [
        "/feed",
        "/feed/archive/11-20",
        "/feed/events/24",
        "/streams/s-1",
    ] {
        let (status, headers, body) = oneshot(&r, path, &[]).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(h(&headers, "content-type"), "application/problem+json");
        assert_eq!(leaks(&body), Vec::<String>::new(), "{path}");
    }
    // The pool is closed: 503 too.
    log.database().close().await;
    let (status, _, body) = oneshot(&r, "/feed", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(leaks(&body), Vec::<String>::new());
}

/// Two processes behind one public base URL (a load balancer) serve the same log;
/// the first readers of a fresh log ask for every sealed page at once on both. Each
/// records the hash chain where it finds it missing, and every page comes out 200,
/// with the same bytes from either process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_reads_of_every_sealed_page_on_two_processes_agree() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "log.db");
    let writer = EventLog::connect(&url).await.expect("log");
    append_n(&writer, 305, 50).await;
    // Each round is a new public base URL, so a new chain recorded from nothing.
    for round in 0..6 {
        first_reads_on_two_processes(&url, &format!("http://feeds{round}.example")).await;
    }
}

async fn first_reads_on_two_processes(url: &str, public: &str) {
    let mut bases = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let log = EventLog::connect(url).await.expect("second process");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        bases.push(format!("http://{}", listener.local_addr().expect("addr")));
        let mut config = feed::server::FeedConfig::new(public, "test");
        config.page_size = Some(10);
        let server = feed::server::FeedServer::new(log, config)
            .await
            .expect("server");
        tasks.push(tokio::spawn(async move {
            let _ = feed::server::serve(listener, server.router(), std::future::pending()).await;
        }));
    }
    let c = client();
    let mut requests = Vec::new();
    for from in (1..=291).step_by(10) {
        for base in &bases {
            requests.push((from, format!("{base}/feed/archive/{from}-{}", from + 9)));
        }
    }
    fastrand::shuffle(&mut requests);
    let answers = futures::future::join_all(requests.into_iter().map(|(from, url)| {
        let c = c.clone();
        async move {
            let r = get(&c, &url, &[]).await;
            (from, r.status().as_u16(), r.text().await.expect("body"))
        }
    }))
    .await;
    let mut pages = std::collections::BTreeMap::new();
    for (from, status, body) in answers {
        assert_eq!(status, 200, "page from {from}: {body}");
        if let Some(other) = pages.insert(from, body.clone()) {
            assert!(
                other == body,
                "page from {from} differs between the processes"
            );
        }
    }
    assert_eq!(pages.len(), 30);
    for task in tasks {
        task.abort();
    }
}
