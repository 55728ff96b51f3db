//! Origin outages: a feed's origin (`feedctl serve`) behind the cache-proxy is
//! SIGKILLed for `RELIABILITY_OUTAGE_SECS` (8 s here, 60 s in the script) while a
//! `feed::Subscriber` follows the feed through the proxy with the settings services
//! use. Meanwhile the producer's database keeps taking appends (only its HTTP side is
//! down); the origin then comes back on the same database and port.
//!
//! What a user relies on: sealed pages stay available from the cache (200, the same
//! bytes, `Cache-Status: hit`), the head is served stale (`stale-if-error`), the
//! subscriber waits longer and longer between attempts instead of hammering the proxy,
//! and afterwards it has every event exactly once, in order.

use std::time::Duration;

use feed::subscriber::{Subscriber, SubscriberConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    Proc, Recorder, append_jsonl, knob, log_rows, out_of_order, recorded, recorder_db, rng, uuid,
};

/// Events in the log before the outage, appended during it, and after it. 620 leaves
/// the subscriber's checkpoint on the head (as it usually is), not on a sealed page.
const BEFORE: u64 = 620;
const DURING: u64 = 100;
const AFTER: u64 = 100;
/// Entries per page: 12 sealed pages before the outage.
const PAGE_SIZE: u64 = 50;

/// What one outage looked like.
#[derive(Debug)]
struct Outage {
    secs: u64,
    /// Subscriber requests while the origin was down.
    requests: u64,
    /// Upper bound for `requests` from the subscriber's backoff settings.
    allowed: u64,
    /// Sealed pages re-read through the proxy during the outage, all 200 and
    /// unchanged.
    sealed_reads: u64,
    sealed_pages: usize,
    /// Seconds from the origin's restart until the subscriber had everything.
    catch_up_secs: f64,
}

/// How many requests a subscriber backing off from `min` may make in `outage`: with
/// full jitter each pause is at least half the current delay, so k failed attempts
/// take at least (min / 2)(2^k - 1); a failure may cost two requests (the head from
/// the cache, then the long poll that fails), plus a few for the edges.
fn allowed_requests(outage: Duration, min: Duration) -> u64 {
    let k = (2.0 * outage.as_secs_f64() / min.as_secs_f64() + 1.0)
        .log2()
        .ceil() as u64;
    2 * k + 4
}

/// Runs the outage; panics on anything but the backoff bound, which is returned.
async fn outage(secs: u64) -> Outage {
    let mut rng = rng("outage");
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    let mut next = 1u64;
    let mut append = |n: u64, rng: &mut fastrand::Rng| {
        let lines: Vec<_> = (next..next + n)
            .map(|i| json!({"stream": format!("s-{}", i % 13), "type": "Counted", "id": uuid(rng), "data": {"i": i}}))
            .collect();
        next += n;
        append_jsonl(dir.path(), &src, &lines);
    };
    append(BEFORE, &mut rng);

    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let proxy_url = format!("http://{}", proxy_listener.local_addr().expect("addr"));
    let origin_port = feed::testing::free_port();
    let route =
        cache_proxy::Route::new("/src", &format!("http://127.0.0.1:{origin_port}")).expect("route");
    let proxy = cache_proxy::Proxy::new(cache_proxy::Config::new(vec![route])).expect("proxy");
    let stop = CancellationToken::new();
    let proxy_task = tokio::spawn(cache_proxy::serve(
        proxy_listener,
        proxy,
        stop.clone().cancelled_owned(),
    ));
    let listen = format!("127.0.0.1:{origin_port}");
    let base = format!("{proxy_url}/src");
    let page_size = PAGE_SIZE.to_string();
    let origin_args = [
        "--database-url",
        &src,
        "--listen",
        &listen,
        "--base-url",
        &base,
        "--page-size",
        &page_size,
    ];
    let serve_log = dir.path().join("serve.log");
    let (mut origin, _) = Proc::feedctl_serve(&origin_args, &serve_log);

    let replica = recorder_db(&dir.path().join("replica.db")).await;
    let config = SubscriberConfig::new("outage", format!("{base}/feed"));
    let min_backoff = config.backoff.0;
    let subscriber = Subscriber::new(config, replica.clone(), Recorder);
    let status = subscriber.status();
    let sub_task = tokio::spawn(subscriber.run(stop.clone().cancelled_owned()));
    wait_until("the first catch-up", Duration::from_secs(60), || {
        status.checkpoint() == BEFORE && status.caught_up()
    })
    .await;

    // The sealed pages, read the way the subscriber reads them.
    let client = feed::subscriber::http_client();
    let mut sealed = Vec::new();
    let mut url = first_page(&client, &format!("{base}/feed")).await;
    loop {
        let (code, _, body) = get(&client, &url).await;
        assert_eq!(code, 200, "{url}");
        let doc = feed::atom::parse_feed(&body).expect("a feed document");
        if !doc.archive {
            break;
        }
        let next_url = doc.links.next_archive.clone().expect("next-archive");
        sealed.push((url, body));
        url = next_url;
    }
    assert_eq!(
        sealed.len() as u64,
        BEFORE / PAGE_SIZE,
        "sealed pages before the outage"
    );

    // Let the subscriber settle into its long poll, then kill the origin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests_before = status.requests();
    let down_at = tokio::time::Instant::now();
    assert!(origin.kill(), "the origin had stopped by itself");
    append(DURING, &mut rng);
    let mut sealed_reads = 0;
    while down_at.elapsed() < Duration::from_secs(secs) {
        for (url, before) in &sealed {
            let (code, cache_status, body) = get(&client, url).await;
            assert_eq!(code, 200, "{url} during the outage ({cache_status})");
            assert!(
                cache_status.contains("; hit"),
                "{url} during the outage: Cache-Status {cache_status}"
            );
            assert_eq!(&body, before, "{url} changed during the outage");
            sealed_reads += 1;
        }
        let (code, cache_status, _) = get(&client, &format!("{base}/feed")).await;
        assert_eq!(
            code, 200,
            "the head is not served stale during the outage ({cache_status})"
        );
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs(secs) / 4)).await;
    }
    let requests = status.requests() - requests_before;

    let (origin_back, _) = Proc::feedctl_serve(&origin_args, &serve_log);
    let back_at = tokio::time::Instant::now();
    append(AFTER, &mut rng);
    let total = BEFORE + DURING + AFTER;
    wait_until(
        "the catch-up after the outage",
        Duration::from_secs(120),
        || status.checkpoint() == total,
    )
    .await;
    let catch_up_secs = back_at.elapsed().as_secs_f64();
    stop.cancel();
    sub_task
        .await
        .expect("subscriber task")
        .expect("the subscriber stopped with an error");
    let _ = proxy_task.await;
    drop(origin_back);

    let applied = recorded(&replica).await;
    let source = feed::Database::connect(&src)
        .await
        .expect("open the source");
    let expected = log_rows(&source).await;
    assert_eq!(expected.len() as u64, total);
    assert_eq!(
        out_of_order(&applied),
        Vec::<String>::new(),
        "the subscriber applied positions out of order or twice"
    );
    assert_eq!(applied.len() as u64, total, "events applied");
    assert!(applied == expected, "the replica differs from the source");
    Outage {
        secs,
        requests,
        allowed: allowed_requests(Duration::from_secs(secs), min_backoff),
        sealed_reads,
        sealed_pages: sealed.len(),
        catch_up_secs,
    }
}

async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET with the subscriber's headers: (status, Cache-Status, body).
async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let resp = client
        .get(url)
        .header("accept", feed::atom::FEED_MEDIA_TYPE)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    let cache_status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.text().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (code, cache_status, body)
}

async fn first_page(client: &reqwest::Client, head: &str) -> String {
    let (code, _, body) = get(client, head).await;
    assert_eq!(code, 200, "{head}");
    let doc = feed::atom::parse_feed(&body).expect("the head");
    doc.links.first.expect("a first link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_origin_outage_sealed_pages_stay_served_and_the_subscriber_loses_nothing() {
    let o = outage(knob("OUTAGE_SECS", 8)).await;
    eprintln!(
        "RELIABILITY outage/cache: origin down {} s; {} reads of {} sealed pages through the proxy during it, \
         all 200 hit and unchanged; head served stale; subscriber caught up {:.1} s after the restart with \
         {} events, none twice; {} subscriber requests during the outage (bound {})",
        o.secs,
        o.sealed_reads,
        o.sealed_pages,
        o.catch_up_secs,
        BEFORE + DURING + AFTER,
        o.requests,
        o.allowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_origin_outage_the_subscriber_backs_off_instead_of_polling_in_a_loop() {
    let o = outage(knob("OUTAGE_SECS", 8)).await;
    eprintln!(
        "RELIABILITY outage/backoff: origin down {} s; {} subscriber requests during it (bound {})",
        o.secs, o.requests, o.allowed
    );
    assert!(
        o.requests <= o.allowed,
        "{} requests in a {} s outage: the subscriber does not back off (at most {} expected)",
        o.requests,
        o.secs,
        o.allowed
    );
}
