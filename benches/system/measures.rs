//! P1 to P7. Each function returns its table rows; a measure that cannot run here
//! (a tool missing) returns a row saying so instead of failing the whole run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use feed::subscriber::{Handler, Progress, Subscriber, SubscriberConfig};
use feed::{Event, EventLog, Expected, FeedConfig, FeedServer, Mirror};
use futures::future::BoxFuture;
use sqlx::AnyConnection;

use crate::Options;
use crate::report::{Row, per_sec, thousands};
use crate::roles::{Server, free_port, sample_events};
use crate::tools::{self, WrkResult};

/// ESDB's published sealed-page figure (other hardware, quoted in the issue).
const ESDB_PAGES_PER_SEC: f64 = 2_210.0;

pub(crate) async fn run_all(o: &Options) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let client = raw_client();
    let mut rows = Vec::new();
    let mut source = None;
    if o.wants("P1") || o.wants("P2") {
        eprintln!(
            "filling a SQLite log with {} events",
            thousands(o.events as f64)
        );
        let path = dir.path().join("source.db");
        filled_log(&path, o.page_size, o.events).await?;
        source = Some(path);
    }
    if let (true, Some(src)) = (o.wants("P1"), &source) {
        rows.extend(guard(
            "P1",
            "replay",
            p1_replay(o, dir.path(), src, &client).await,
        ));
    }
    if let (true, Some(src)) = (o.wants("P2"), &source) {
        rows.extend(guard(
            "P2",
            "sealed pages from the origin",
            p2_origin_pages(o, src, &client).await,
        ));
    }
    if o.wants("P3") {
        rows.extend(guard(
            "P3",
            "cache hits",
            p3_cache_hits(o, dir.path(), &client).await,
        ));
    }
    if o.wants("P4") {
        rows.extend(guard(
            "P4",
            "append-to-handler latency",
            p4_latency(o, dir.path()).await,
        ));
    }
    if o.wants("P5") {
        rows.extend(guard(
            "P5",
            "origin offload",
            p5_offload(o, dir.path(), &client).await,
        ));
    }
    if o.wants("P6") {
        rows.extend(guard("P6", "PostgreSQL appends", p6_postgres(o).await));
    }
    if o.wants("P7") {
        rows.extend(guard(
            "P7",
            "cache-proxy memory",
            p7_memory(o, &client).await,
        ));
    }
    Ok(rows)
}

/// A measure's rows, or one row naming why it could not run.
fn guard(id: &'static str, what: &str, result: anyhow::Result<Vec<Row>>) -> Vec<Row> {
    result.unwrap_or_else(|e| {
        eprintln!("{id} failed: {e:#}");
        vec![Row::missing(id, what, format!("{e:#}"))]
    })
}

/// A client that shows bodies as sent (no transparent decompression).
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .no_proxy()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client with static settings builds")
}

async fn filled_log(path: &Path, page_size: u64, events: u64) -> anyhow::Result<EventLog> {
    let log = EventLog::connect(&path.display().to_string()).await?;
    log.configure_page_size(Some(page_size)).await?;
    let mut from = 0;
    while from < events {
        let n = (events - from).min(1000);
        let batch = sample_events(from, n);
        let mut tx = log.begin().await?;
        log.append(&mut tx, Expected::Any, &batch).await?;
        tx.commit().await?;
        from += n;
    }
    Ok(log)
}

// ---------------------------------------------------------------------------
// P1: replay into an empty replica

struct Replayed {
    events_per_sec: f64,
    requests: u64,
}

async fn replay(feed_url: &str, into: &Path, expected: u64) -> anyhow::Result<Replayed> {
    let mirror = EventLog::connect(&into.display().to_string()).await?;
    let mut sub = Subscriber::new(
        SubscriberConfig::new("bench", feed_url),
        mirror.database().clone(),
        Mirror(mirror.clone()),
    );
    let started = Instant::now();
    loop {
        match sub.poll_once().await? {
            Progress::Applied { position, .. } if position >= expected => break,
            Progress::Applied { .. } => {}
            Progress::CaughtUp { position, .. } => {
                bail!("replay of {feed_url} stopped at {position} of {expected}")
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let head = mirror.head().await?;
    if head != expected {
        bail!("the replica of {feed_url} holds {head} events, not {expected}");
    }
    mirror.database().close().await;
    Ok(Replayed {
        events_per_sec: expected as f64 / secs,
        requests: sub.status().requests(),
    })
}

/// The baseline: the same rows copied from one SQLite file into a fresh log's
/// table in another, one transaction per page, inside SQLite itself (the source is
/// attached and each page is one `INSERT ... SELECT`): the write-bound cost of
/// filling a replica, with nothing in between.
async fn direct_copy(src: &Path, dst: &Path, page: u64, expected: u64) -> anyhow::Result<f64> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    // The destination gets the log's schema (tables and indexes) first.
    EventLog::connect(&dst.display().to_string())
        .await?
        .database()
        .close()
        .await;
    let dst = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dst)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal),
        )
        .await?;
    let src = src
        .to_str()
        .context("the source path is not UTF-8")?
        .replace('\'', "''");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ATTACH DATABASE '{src}' AS src"
    )))
    .execute(&dst)
    .await?;
    let started = Instant::now();
    let mut from = 1i64;
    let mut copied = 0u64;
    loop {
        let mut tx = dst.begin().await?;
        let rows = sqlx::query(
            "INSERT INTO main.feed_events (position, id, stream, stream_version, type, occurred_at, data, metadata) \
             SELECT position, id, stream, stream_version, type, occurred_at, data, metadata \
             FROM src.feed_events WHERE position >= ?1 AND position < ?2 ORDER BY position",
        )
        .bind(from)
        .bind(from + page as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if rows == 0 {
            break;
        }
        sqlx::query("UPDATE main.feed_head SET position = ?1 WHERE id = 1")
            .bind(from + rows as i64 - 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        copied += rows;
        from += page as i64;
    }
    let secs = started.elapsed().as_secs_f64();
    if copied != expected {
        bail!("the direct copy holds {copied} events, not {expected}");
    }
    Ok(copied as f64 / secs)
}

async fn p1_replay(
    o: &Options,
    dir: &Path,
    src: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Row>> {
    let n = o.events;
    let rounds = o.p1_rounds.max(1);
    let (mut copies, mut directs, mut restarts, mut colds, mut warms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rendereds = Vec::new();
    let mut first_heads = Vec::new();
    let mut requests = 0;
    // The measures of a round run one after another, so a machine that speeds up or
    // slows down moves them all.
    for round in 1..=rounds {
        let r = p1_round(
            src,
            &dir.join(format!("p1-{round}")),
            o.page_size,
            n,
            client,
        )
        .await?;
        eprintln!(
            "P1 round {round}/{rounds}: copy {}, origin {}, restarted origin {}, rendering {}, cold cache {}, warm cache {}",
            per_sec(r.copy),
            per_sec(r.direct.events_per_sec),
            per_sec(r.restarted),
            per_sec(r.rendered),
            per_sec(r.cold),
            per_sec(r.warm)
        );
        copies.push(r.copy);
        directs.push(r.direct.events_per_sec);
        restarts.push(r.restarted);
        rendereds.push(r.rendered);
        colds.push(r.cold);
        warms.push(r.warm);
        first_heads.push(r.first_head.as_secs_f64());
        requests = r.direct.requests;
    }
    let copy = median(&mut copies);
    let rounds_note = if rounds > 1 {
        format!("median of {rounds} rounds, ")
    } else {
        String::new()
    };
    let baseline = (
        copy.0,
        format!("{} ({rounds_note}{}; direct copy)", per_sec(copy.0), copy.1),
    );
    let (direct, restarted) = (median(&mut directs), median(&mut restarts));
    let rendered = median(&mut rendereds);
    let (cold, warm) = (median(&mut colds), median(&mut warms));
    Ok(vec![
        Row::ratio_at_least(
            "P1",
            format!(
                "replay {} events over HTTP from the origin",
                thousands(n as f64)
            ),
            (
                direct.0,
                format!(
                    "{} ({rounds_note}{}; {} requests; before it, the first head request on a log never served, \
                     which renders every sealed page once for the hash chain and keeps it: {:.1} s)",
                    per_sec(direct.0),
                    direct.1,
                    thousands(requests as f64),
                    median(&mut first_heads).0
                ),
            ),
            baseline.clone(),
            0.8,
        ),
        Row::ratio_at_least(
            "P1",
            "the same from the origin restarted, so each sealed page is read from the bytes the hash chain keeps when first asked for",
            (
                restarted.0,
                format!("{} ({rounds_note}{})", per_sec(restarted.0), restarted.1),
            ),
            baseline.clone(),
            0.8,
        ),
        Row::reference(
            "P1",
            "reference: the same from the origin restarted on a chain recorded without page bytes (a log from before they were kept), so each sealed page is rendered from its events when first asked for",
            (
                rendered.0,
                format!("{} ({rounds_note}{})", per_sec(rendered.0), rendered.1),
            ),
            baseline.clone(),
        ),
        Row::ratio_at_least(
            "P1",
            "the same through a warm cache-proxy",
            (
                warm.0,
                format!(
                    "{} ({rounds_note}{}; cold cache: {})",
                    per_sec(warm.0),
                    warm.1,
                    per_sec(cold.0)
                ),
            ),
            baseline,
            0.8,
        ),
    ])
}

/// The median of `values` and their range as text (`12,345-13,456/s`).
fn median(values: &mut [f64]) -> (f64, String) {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let m = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    let range = format!(
        "{}-{}",
        thousands(values[0]),
        per_sec(values[values.len() - 1])
    );
    (m, range)
}

/// One round of P1.
struct P1Round {
    copy: f64,
    first_head: Duration,
    direct: Replayed,
    restarted: f64,
    rendered: f64,
    cold: f64,
    warm: f64,
}

/// Drops the page bytes the hash chain of `base` keeps in the log at `src`.
async fn forget_page_bytes(src: &Path, base: &str) -> anyhow::Result<()> {
    let db = feed::db::Database::connect(&src.display().to_string()).await?;
    sqlx::query("UPDATE feed_page_digests SET atom_zstd = NULL WHERE base_url = $1")
        .bind(base)
        .execute(db.pool())
        .await?;
    db.close().await;
    Ok(())
}

async fn p1_round(
    src: &Path,
    dir: &Path,
    page_size: u64,
    n: u64,
    client: &reqwest::Client,
) -> anyhow::Result<P1Round> {
    std::fs::create_dir_all(dir)?;
    let db = src.display().to_string();
    eprintln!("P1: direct SQLite-to-SQLite copy");
    let copy = direct_copy(src, &dir.join("p1-copy.db"), page_size, n).await?;

    eprintln!("P1: replay from the origin");
    let port = free_port()?;
    let origin_env = [("BENCH_DB", db.clone()), ("BENCH_PORT", port.to_string())];
    let origin = Server::spawn("origin", &origin_env)?;
    // A live origin records each sealed page's hash-chain digest the next time it
    // renders its head, which names the newest one, and keeps the page it rendered
    // for that. This log was filled with no server running, so its first head
    // request renders and records the whole chain: a one-time cost, timed here and
    // shown apart, as the proxy run below pays it in its readiness check too.
    let first_head = Instant::now();
    crate::roles::wait_until_up(client, &format!("{}/feed", origin.url())).await?;
    let first_head = first_head.elapsed();
    let direct = replay(
        &format!("{}/feed", origin.url()),
        &dir.join("p1-direct.db"),
        n,
    )
    .await?;
    drop(origin);

    eprintln!("P1: replay from the origin, restarted");
    // The same address, so the same base URL and the chain recorded above: the new
    // process holds no page in memory and reads each one from the bytes the chain
    // keeps when asked.
    let origin = Server::spawn("origin", &origin_env)?;
    let base = origin.url();
    crate::roles::wait_until_up(client, &format!("{base}/feed")).await?;
    let restarted = replay(&format!("{base}/feed"), &dir.join("p1-restarted.db"), n).await?;
    drop(origin);

    eprintln!("P1: replay from the origin, restarted on a chain without page bytes");
    // As on a log whose chain was recorded before the bytes of its pages were kept:
    // each page is rendered from its events when first asked for (and kept again).
    forget_page_bytes(src, &base).await?;
    let origin = Server::spawn("origin", &origin_env)?;
    crate::roles::wait_until_up(client, &format!("{base}/feed")).await?;
    let rendered = replay(&format!("{base}/feed"), &dir.join("p1-rendered.db"), n).await?;
    drop(origin);

    eprintln!("P1: replay through cache-proxy (cold, then warm)");
    let origin_port = free_port()?;
    let proxy = Server::spawn(
        "proxy",
        &[("BENCH_UPSTREAM", format!("http://127.0.0.1:{origin_port}"))],
    )?;
    let _origin = Server::spawn(
        "origin",
        &[
            ("BENCH_DB", db),
            ("BENCH_PORT", origin_port.to_string()),
            ("BENCH_BASE", format!("{}/o", proxy.url())),
        ],
    )?;
    crate::roles::wait_until_up(client, &format!("{}/o/feed", proxy.url())).await?;
    let feed = format!("{}/o/feed", proxy.url());
    let cold = replay(&feed, &dir.join("p1-cold.db"), n).await?;
    let warm = replay(&feed, &dir.join("p1-warm.db"), n).await?;
    Ok(P1Round {
        copy,
        first_head,
        direct,
        restarted: restarted.events_per_sec,
        rendered: rendered.events_per_sec,
        cold: cold.events_per_sec,
        warm: warm.events_per_sec,
    })
}

// ---------------------------------------------------------------------------
// P2: sealed pages from the origin, no cache

async fn blocking_wrk(
    url: String,
    seconds: u64,
    connections: u32,
    headers: Vec<&'static str>,
) -> anyhow::Result<WrkResult> {
    let target = url.clone();
    let r =
        tokio::task::spawn_blocking(move || tools::wrk(&target, seconds, connections, &headers))
            .await??;
    if r.errors > 0 {
        bail!("wrk saw {} errors against {url}", r.errors);
    }
    Ok(r)
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    gzip: bool,
) -> anyhow::Result<(bytes::Bytes, Option<String>)> {
    let mut req = client.get(url);
    if gzip {
        req = req.header(reqwest::header::ACCEPT_ENCODING, "gzip");
    }
    let resp = req.send().await?.error_for_status()?;
    let coding = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((resp.bytes().await?, coding))
}

async fn p2_origin_pages(
    o: &Options,
    src: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Row>> {
    let origin = Server::spawn("origin", &[("BENCH_DB", src.display().to_string())])?;
    let url = format!("{}/feed/archive/1-{}", origin.url(), o.page_size);
    let (identity, _) = fetch(client, &url, false).await?;
    let (gzip, coding) = fetch(client, &url, true).await?;
    if coding.as_deref() != Some("gzip") {
        bail!("the origin did not answer gzip for {url}");
    }
    eprintln!(
        "P2: wrk on the origin ({} bytes, {} gzip)",
        identity.len(),
        gzip.len()
    );
    let ours = blocking_wrk(
        url,
        o.wrk_seconds,
        o.wrk_connections,
        vec!["Accept-Encoding: gzip"],
    )
    .await?;
    drop(origin);

    let nginx = tools::nginx(client, &[("page", &identity, &gzip)]).await?;
    let nginx_url = format!("http://127.0.0.1:{}/page", nginx.port);
    let (served, coding) = fetch(client, &nginx_url, true).await?;
    if coding.as_deref() != Some("gzip") || served != gzip {
        bail!("nginx did not serve the stored gzip file");
    }
    eprintln!("P2: wrk on nginx gzip_static");
    let base = blocking_wrk(
        nginx_url,
        o.wrk_seconds,
        o.wrk_connections,
        vec!["Accept-Encoding: gzip"],
    )
    .await?;
    let what = format!(
        "sealed page ({} KB, {} KB gzip) req/s from the origin, gzip",
        identity.len() / 1000,
        gzip.len() / 1000
    );
    Ok(vec![
        Row::ratio_at_least(
            "P2",
            what.clone(),
            (ours.requests_per_sec, per_sec(ours.requests_per_sec)),
            (
                base.requests_per_sec,
                format!("{} (nginx gzip_static)", per_sec(base.requests_per_sec)),
            ),
            0.5,
        ),
        Row::ratio_at_least(
            "P2",
            what,
            (ours.requests_per_sec, per_sec(ours.requests_per_sec)),
            (
                ESDB_PAGES_PER_SEC,
                format!("{} (ESDB, published)", per_sec(ESDB_PAGES_PER_SEC)),
            ),
            10.0,
        ),
    ])
}

// ---------------------------------------------------------------------------
// P3: cache hits, cache-proxy against Varnish

/// Entries per page in P3: about 250 KB of Atom.
const P3_PAGE: u64 = 500;

async fn p3_cache_hits(
    o: &Options,
    dir: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Row>> {
    let path = dir.join("p3.db");
    filled_log(&path, P3_PAGE, P3_PAGE + 10).await?;
    let origin = Server::spawn("origin", &[("BENCH_DB", path.display().to_string())])?;
    let page = format!("/feed/archive/1-{P3_PAGE}");
    let (identity, _) = fetch(client, &format!("{}{page}", origin.url()), false).await?;
    let run = |url: String, gzip: bool| {
        let headers = if gzip {
            vec!["Accept-Encoding: gzip"]
        } else {
            vec![]
        };
        blocking_wrk(url, o.wrk_seconds, o.wrk_connections, headers)
    };
    // Every front is warmed for both codings first, and must not ask the origin
    // during the runs: these are hits.
    let warm = |url: String| async move {
        for gzip in [true, false] {
            fetch(client, &url, gzip).await?;
            fetch(client, &url, gzip).await?;
        }
        anyhow::Ok(())
    };

    let proxy = Server::spawn("proxy", &[("BENCH_UPSTREAM", origin.url())])?;
    let proxy_url = format!("{}/o{page}", proxy.url());
    warm(proxy_url.clone()).await?;
    let before = origin.origin_counts(client).await?.0;
    eprintln!("P3: wrk on cache-proxy hits");
    let proxy_gzip = run(proxy_url.clone(), true).await?;
    let proxy_identity = run(proxy_url, false).await?;
    let proxy_misses = origin.origin_counts(client).await?.0 - before;
    drop(proxy);

    let vcl = std::fs::read_to_string("cache-proxy/varnish/default.vcl")
        .context("cache-proxy/varnish/default.vcl (run from the workspace root)")?;
    // The shipped VCL's own run instructions say which parameters it needs.
    let params: Vec<&str> = ["http_gzip_support=off"]
        .into_iter()
        .filter(|p| vcl.contains(&format!("-p {p}")))
        .collect();
    let varnish = tools::varnish(client, &vcl, origin.addr.port(), &params).await?;
    let varnish_url = format!("http://127.0.0.1:{}{page}", varnish.port);
    warm(varnish_url.clone()).await?;
    eprintln!("P3: wrk on Varnish hits (shipped VCL)");
    let v_gzip = run(varnish_url.clone(), true).await?;
    let v_identity = run(varnish_url, false).await?;
    drop(varnish);

    let stock = tools::varnish(client, tools::STOCK_VCL, origin.addr.port(), &[]).await?;
    let stock_url = format!("http://127.0.0.1:{}{page}", stock.port);
    warm(stock_url.clone()).await?;
    eprintln!("P3: wrk on Varnish hits (stock configuration)");
    let stock_identity = run(stock_url, false).await?;
    drop(stock);

    let kb = identity.len() / 1000;
    // What loopback and wrk leave for any server sending these bytes on this
    // machine: nginx sending them as a file (sendfile), no cache code at all.
    let file_measure = format!(
        "reference: cache hits req/s, {kb} KB page, identity clients, against nginx sending the same bytes as a static file"
    );
    let file_row = match identity_file_rate(client, &origin, &page, &identity, &run).await {
        Ok(file) => Row::reference(
            "P3",
            file_measure,
            (
                proxy_identity.requests_per_sec,
                per_sec(proxy_identity.requests_per_sec),
            ),
            (file, format!("{} (nginx, sendfile)", per_sec(file))),
        ),
        Err(e) => Row::missing("P3", file_measure, format!("{e:#}")),
    };
    let note = if proxy_misses > 0 {
        format!(" ({proxy_misses} origin requests during the runs)")
    } else {
        String::new()
    };
    Ok(vec![
        Row::ratio_at_least(
            "P3",
            format!("cache hits req/s, {kb} KB page, gzip clients"),
            (
                proxy_gzip.requests_per_sec,
                format!("{}{note}", per_sec(proxy_gzip.requests_per_sec)),
            ),
            (
                v_gzip.requests_per_sec,
                format!(
                    "{} (Varnish, shipped VCL)",
                    per_sec(v_gzip.requests_per_sec)
                ),
            ),
            1.0,
        ),
        Row::ratio_at_least(
            "P3",
            format!("cache hits req/s, {kb} KB page, identity clients"),
            (
                proxy_identity.requests_per_sec,
                per_sec(proxy_identity.requests_per_sec),
            ),
            (
                v_identity.requests_per_sec,
                format!(
                    "{} (Varnish, shipped VCL)",
                    per_sec(v_identity.requests_per_sec)
                ),
            ),
            1.0,
        ),
        Row::ratio_at_least(
            "P3",
            format!("cache hits req/s, {kb} KB page, identity clients"),
            (
                proxy_identity.requests_per_sec,
                per_sec(proxy_identity.requests_per_sec),
            ),
            (
                stock_identity.requests_per_sec,
                format!(
                    "{} (Varnish, stock: gunzip per hit)",
                    per_sec(stock_identity.requests_per_sec)
                ),
            ),
            10.0,
        ),
        file_row,
    ])
}

/// Identity requests/s of nginx serving `identity` (the page at `page` of `origin`)
/// as a static file, through `run` (wrk with the P3 settings).
async fn identity_file_rate<F, R>(
    client: &reqwest::Client,
    origin: &Server,
    page: &str,
    identity: &[u8],
    run: &F,
) -> anyhow::Result<f64>
where
    F: Fn(String, bool) -> R,
    R: std::future::Future<Output = anyhow::Result<WrkResult>>,
{
    let (gzip, _) = fetch(client, &format!("{}{page}", origin.url()), true).await?;
    let nginx = tools::nginx(client, &[("page", identity, &gzip)]).await?;
    let url = format!("http://127.0.0.1:{}/page", nginx.port);
    let (served, coding) = fetch(client, &url, false).await?;
    if coding.is_some() || served != identity {
        bail!("nginx did not serve the identity file as it is");
    }
    eprintln!("P3: wrk on nginx sending the page as a file");
    Ok(run(url, false).await?.requests_per_sec)
}

// ---------------------------------------------------------------------------
// P4: latency from append to the subscriber's handler

/// Records when each position reached the handler.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<u64, Instant>>>);

impl Handler for Arrivals {
    fn handle<'a>(
        &'a self,
        _tx: &'a mut AnyConnection,
        e: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        let now = Instant::now();
        if let Ok(mut seen) = self.0.lock() {
            seen.entry(e.position).or_insert(now);
        }
        Box::pin(async { Ok(()) })
    }
}

struct Latency {
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Appends `samples` events one by one, `gap` apart, to a feed served in this
/// process (optionally behind an in-process cache-proxy), and measures how long
/// each took to reach a subscriber's handler after its commit.
async fn latency(
    dir: &Path,
    name: &str,
    samples: usize,
    long_poll: bool,
    through_proxy: bool,
) -> anyhow::Result<Latency> {
    let log = EventLog::connect(&dir.join(format!("p4-{name}.db")).display().to_string()).await?;
    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin_url = format!("http://{}", origin_listener.local_addr()?);
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = {
        let stop = stop.clone();
        move || {
            let stop = stop.clone();
            async move { stop.notified().await }
        }
    };
    let feed_url = if through_proxy {
        let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let proxy_url = format!("http://{}", proxy_listener.local_addr()?);
        let route = cache_proxy::Route::new("/o", &origin_url)?;
        let proxy = cache_proxy::Proxy::new(cache_proxy::Config::new(vec![route]))?;
        tokio::spawn(cache_proxy::serve(proxy_listener, proxy, stopped()));
        format!("{proxy_url}/o")
    } else {
        origin_url
    };
    let server = FeedServer::new(log.clone(), FeedConfig::new(&feed_url, "bench")).await?;
    tokio::spawn(feed::server::serve(
        origin_listener,
        server.router(),
        stopped(),
    ));

    let arrivals = Arrivals::default();
    let mut config = SubscriberConfig::new("bench", format!("{feed_url}/feed"));
    if !long_poll {
        config.long_poll = Duration::ZERO;
        config.poll_interval = Duration::from_secs(1);
    }
    // The subscriber keeps its checkpoint in a database of its own, as a
    // consuming service does, so its commits never queue behind the producer's
    // appends for SQLite's one write lock.
    let own =
        EventLog::connect(&dir.join(format!("p4-{name}-sub.db")).display().to_string()).await?;
    let sub = Subscriber::new(config, own.database().clone(), arrivals.clone());
    let status = sub.status();
    let running = tokio::spawn(sub.run(stopped()));
    let wait_for = |position: u64| {
        let status = status.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while status.checkpoint() < position || !status.caught_up() {
                if Instant::now() > deadline {
                    bail!("the subscriber did not reach {position} within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }
    };
    wait_for(0).await?;

    let mut committed = HashMap::new();
    let mut last = 0;
    for i in 0..samples as u64 {
        let mut tx = log.begin().await?;
        let p = log
            .append(&mut tx, Expected::Any, &sample_events(i, 1))
            .await?;
        tx.commit().await?;
        let at = Instant::now();
        last = p[0];
        committed.insert(last, at);
        // Spread the appends so each one is a separate wake-up, at random phases
        // of a polling subscriber's interval.
        tokio::time::sleep(Duration::from_millis(5 + fastrand::u64(0..10))).await;
    }
    wait_for(last).await?;
    stop.notify_waiters();
    running.abort();

    let seen = arrivals.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut latencies: Vec<Duration> = committed
        .iter()
        .map(|(p, at)| seen.get(p).map(|s| s.saturating_duration_since(*at)))
        .collect::<Option<_>>()
        .context("an appended event never reached the handler")?;
    latencies.sort();
    Ok(Latency {
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

async fn p4_latency(o: &Options, dir: &Path) -> anyhow::Result<Vec<Row>> {
    let n = o.latency_samples;
    eprintln!("P4: {n} appends, long poll");
    let long = latency(dir, "long", n, true, false).await?;
    eprintln!("P4: {n} appends, long poll through cache-proxy");
    let proxied = latency(dir, "proxied", n, true, true).await?;
    eprintln!("P4: {n} appends, 1-second polling");
    let polled = latency(dir, "polled", n, false, false).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let text = |l: &Latency| format!("p50 {:.1} ms, p99 {:.1} ms", ms(l.p50), ms(l.p99));
    let row = |what: &str, l: &Latency| Row {
        id: "P4",
        measure: format!("append to handler, {what}, {n} appends"),
        ours: text(l),
        baseline: format!("{} (1 s polling)", text(&polled)),
        ratio: Some(ms(l.p99) / ms(polled.p99)),
        goal: "p99 <= 10 ms".into(),
        met: Some(l.p99 <= Duration::from_millis(10)),
    };
    Ok(vec![
        row("long poll", &long),
        row("long poll via cache-proxy", &proxied),
    ])
}

// ---------------------------------------------------------------------------
// P5: how much of the pollers' load reaches the origin

async fn pollers(
    client: &reqwest::Client,
    url: &str,
    count: usize,
    run: Duration,
    long_poll: bool,
) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, url, sent, stop) =
                (client.clone(), url.to_owned(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                let mut etag: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let mut req = client.get(&url);
                    if let Some(e) = &etag {
                        req = req.header(reqwest::header::IF_NONE_MATCH, e);
                        if long_poll {
                            req = req.header("prefer", "wait=10");
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    match req.send().await {
                        Ok(resp) => {
                            if let Some(e) = resp.headers().get(reqwest::header::ETAG) {
                                etag = e.to_str().ok().map(str::to_owned);
                            }
                            let _ = resp.bytes().await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let counted = sent.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    counted
}

async fn p5_offload(o: &Options, dir: &Path, client: &reqwest::Client) -> anyhow::Result<Vec<Row>> {
    let path = dir.join("p5.db");
    filled_log(&path, feed::DEFAULT_PAGE_SIZE, 50).await?;
    let origin_port = free_port()?;
    let proxy = Server::spawn(
        "proxy",
        &[("BENCH_UPSTREAM", format!("http://127.0.0.1:{origin_port}"))],
    )?;
    let origin = Server::spawn(
        "origin",
        &[
            ("BENCH_DB", path.display().to_string()),
            ("BENCH_PORT", origin_port.to_string()),
            ("BENCH_BASE", format!("{}/o", proxy.url())),
        ],
    )?;
    let head = format!("{}/o/feed", proxy.url());
    crate::roles::wait_until_up(client, &head).await?;
    let run = Duration::from_secs(o.poll_seconds);
    let mut rows = Vec::new();
    for (long_poll, every) in [
        (false, Duration::from_millis(100)),
        (true, Duration::from_millis(250)),
    ] {
        let kind = if long_poll { "long-pollers" } else { "pollers" };
        eprintln!("P5: {} {kind} for {} s", o.pollers, o.poll_seconds);
        let (before, _) = origin.origin_counts(client).await?;
        let appending = async {
            let mut changes = 0u64;
            let until = Instant::now() + run;
            while Instant::now() < until {
                tokio::time::sleep(every).await;
                origin.append(client, 1).await?;
                changes += 1;
            }
            anyhow::Ok(changes)
        };
        let (sent, changes) =
            tokio::join!(pollers(client, &head, o.pollers, run, long_poll), appending);
        let changes = changes? as f64;
        let (after, _) = origin.origin_counts(client).await?;
        let upstream = after - before;
        let ratio = upstream as f64 / sent.max(1) as f64;
        let (goal, met) = if long_poll {
            // Coalesced: about one upstream long poll per head change, not one per client.
            (
                "coalesced: <= 2 origin requests per head change".to_owned(),
                upstream as f64 <= 2.0 * changes + 2.0,
            )
        } else {
            ("<= 0.001".to_owned(), ratio <= 0.001)
        };
        rows.push(Row {
            id: "P5",
            measure: format!(
                "origin requests / client requests, {} {kind}, head changes every {} ms",
                o.pollers,
                every.as_millis()
            ),
            ours: format!(
                "{} / {} = {ratio:.5}",
                thousands(upstream as f64),
                thousands(sent as f64)
            ),
            baseline: "-".into(),
            ratio: None,
            goal,
            met: Some(met),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// P6: appends on PostgreSQL

const RAW_TABLES: [&str; 3] = [
    "CREATE TABLE raw_events (position BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, \
     stream TEXT NOT NULL, stream_version BIGINT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL, \
     data TEXT NOT NULL, metadata TEXT NOT NULL)",
    "CREATE TABLE locked_events (position BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, \
     stream TEXT NOT NULL, stream_version BIGINT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL, \
     data TEXT NOT NULL, metadata TEXT NOT NULL)",
    "CREATE TABLE locked_head (id INTEGER PRIMARY KEY, position BIGINT NOT NULL); \
     INSERT INTO locked_head VALUES (1, 0)",
];

/// What each P6 writer does in its transactions.
#[derive(Clone, Copy, PartialEq)]
enum Appends {
    /// `EventLog::append_unnumbered`, timed until the head has numbered every event.
    Unnumbered,
    /// `EventLog::append`.
    Log,
    /// A plain INSERT into a table with no log semantics: the baseline.
    Raw,
    /// The least an append with gapless, commit-ordered positions must do: lock a
    /// counter row until the commit, insert at the next position, move the counter.
    /// No id or version checks, no NOTIFY. A reference for what the lock costs.
    LockOnly,
}

/// Appends `n` events, one per transaction, from `writers` concurrent writers;
/// returns events/s.
async fn pg_appends(log: &EventLog, n: u64, writers: usize, how: Appends) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let offset = match how {
        Appends::Log => 0,
        Appends::Raw => 10_000_000,
        Appends::LockOnly => 20_000_000,
        Appends::Unnumbered => 30_000_000,
    };
    let head_before = log.head().await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (log, next) = (log.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    let events = sample_events(offset + i, 1);
                    let mut tx = log.begin().await?;
                    let sql = match how {
                        Appends::Log => {
                            log.append(&mut tx, Expected::Any, &events).await?;
                            None
                        }
                        Appends::Unnumbered => {
                            log.append_unnumbered(&mut tx, Expected::Any, &events)
                                .await?;
                            None
                        }
                        Appends::Raw => Some(
                            "INSERT INTO raw_events (id, stream, stream_version, type, occurred_at, data, metadata) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        ),
                        Appends::LockOnly => Some(
                            "WITH locked AS MATERIALIZED (SELECT position FROM locked_head WHERE id = 1 FOR UPDATE), \
                             ins AS (INSERT INTO locked_events (position, id, stream, stream_version, type, occurred_at, data, metadata) \
                               SELECT locked.position + 1, $1, $2, $3, $4, $5, $6, $7 FROM locked), \
                             upd AS (UPDATE locked_head SET position = locked.position + 1 FROM locked WHERE locked_head.id = 1) \
                             SELECT position FROM locked",
                        ),
                    };
                    if let Some(sql) = sql {
                        let e = &events[0];
                        sqlx::query(sql)
                            .bind(e.id.to_string())
                            .bind(e.stream.as_str())
                            .bind(i as i64)
                            .bind(e.event_type.as_str())
                            .bind(feed::atom::format_time(&e.occurred_at))
                            .bind(e.data.to_string())
                            .bind(e.metadata.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    if how == Appends::Unnumbered {
        // Every event counts once it has its position: a head read numbers what is
        // committed and not numbered yet.
        let head = log.head().await?;
        if head != head_before + n {
            bail!("after {n} unnumbered appends the head moved from {head_before} to {head}");
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn p6_postgres(o: &Options) -> anyhow::Result<Vec<Row>> {
    let Some(pg) = feed::testing::PgCluster::start() else {
        bail!("PostgreSQL server binaries are not installed");
    };
    let log = EventLog::connect(&pg.database("bench")).await?;
    for sql in RAW_TABLES {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(log.database().pool())
            .await?;
    }
    let mut rows = Vec::new();
    for (writers, n) in [(1usize, o.pg_events / 4), (16, o.pg_events)] {
        eprintln!("P6: {n} appends, {writers} writer(s)");
        let unnumbered = pg_appends(&log, n, writers, Appends::Unnumbered).await?;
        let ours = pg_appends(&log, n, writers, Appends::Log).await?;
        let raw = pg_appends(&log, n, writers, Appends::Raw).await?;
        let locked = pg_appends(&log, n, writers, Appends::LockOnly).await?;
        rows.push(Row::ratio_at_least(
            "P6",
            format!(
                "PostgreSQL appends numbered after commit (append_unnumbered, what the services use), \
                 one event per transaction, {writers} writer(s), until numbered"
            ),
            (unnumbered, per_sec(unnumbered)),
            (raw, format!("{} (raw INSERT)", per_sec(raw))),
            0.5,
        ));
        rows.push(Row::reference(
            "P6",
            format!(
                "PostgreSQL appends numbered in the transaction (append, which returns the \
                 positions), one event per transaction, {writers} writer(s)"
            ),
            (ours, per_sec(ours)),
            (raw, format!("{} (raw INSERT)", per_sec(raw))),
        ));
        rows.push(Row::reference(
            "P6",
            format!(
                "reference: the least a gapless append does (a counter row locked until commit, \
                 the insert, the counter moved), {writers} writer(s)"
            ),
            (locked, per_sec(locked)),
            (raw, format!("{} (raw INSERT)", per_sec(raw))),
        ));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// P7: cache-proxy memory with the cache full

async fn p7_memory(o: &Options, client: &reqwest::Client) -> anyhow::Result<Vec<Row>> {
    const BLOB: u64 = 256 * 1024;
    let capacity = o.capacity_mib << 20;
    let blobs = Server::spawn("blob", &[("BENCH_BLOB_BYTES", BLOB.to_string())])?;
    let proxy = Server::spawn(
        "proxy",
        &[
            ("BENCH_UPSTREAM", blobs.url()),
            ("BENCH_CAPACITY", capacity.to_string()),
        ],
    )?;
    let idle = proxy.peak_rss()?;
    let count = 3 * capacity / BLOB;
    eprintln!(
        "P7: {count} distinct {} KiB objects through a {} MiB cache",
        BLOB / 1024,
        o.capacity_mib
    );
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, next, base) = (client.clone(), next.clone(), proxy.url());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(());
                    }
                    let body = client
                        .get(format!("{base}/o/blob/{i}"))
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    if body.len() as u64 != BLOB {
                        bail!("blob {i} came back with {} bytes", body.len());
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let peak = proxy.peak_rss()?;
    let mb = |b: u64| b as f64 / 1e6;
    let limit = 1.2 * capacity as f64 + 30e6;
    Ok(vec![Row {
        id: "P7",
        measure: format!(
            "cache-proxy peak RSS after {} MB of distinct objects (idle: {:.0} MB)",
            (count * BLOB) / 1_000_000,
            mb(idle)
        ),
        ours: format!("{:.0} MB", mb(peak)),
        baseline: format!("{:.0} MB (capacity)", mb(capacity)),
        ratio: Some(peak as f64 / capacity as f64),
        goal: "<= 1.2x capacity + 30 MB".into(),
        met: Some((peak as f64) <= limit),
    }])
}
