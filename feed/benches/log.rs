//! Throughput of the feed machinery against baselines measured in the same run.
//!
//! `cargo bench -p feed --bench log [-- EVENTS]` (default 100,000 events) prints:
//! - append events/s through `EventLog::append` vs raw multi-row INSERTs of the same
//!   rows (SQLite file, batches of 1,000 per transaction);
//! - replay time, events/s and requests over HTTP (feed server + subscriber mirroring
//!   into a second SQLite file) for several page sizes (how the default was chosen).
//!
//! The replay against its baseline (a copy of the same rows inside SQLite) is P1 of
//! `cargo bench --bench system`.

use std::time::Instant;

use feed::db::Database;
use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use feed::subscriber::{Mirror, Progress, Subscriber, SubscriberConfig};

fn events(n: u64) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                StreamId::parse(format!("order-{}", i % 5000)).expect("stream"),
                EventType::parse("OrderAccepted").expect("type"),
                serde_json::json!({
                    "order_id": format!("{i:08}"), "customer_id": i % 997,
                    "lines": [{"product_id": "p-1", "quantity": 2, "unit_price_cents": 1250}],
                    "total_cents": 2500, "currency": "EUR"
                }),
            )
        })
        .collect()
}

/// A multi-row INSERT of `rows` rows into the baseline table.
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p: Vec<String> = (1..=8).map(|k| format!("${}", i * 8 + k)).collect();
            format!("({})", p.join(","))
        })
        .collect();
    format!(
        "INSERT INTO raw_events (position, id, stream, stream_version, type, occurred_at, data, metadata) VALUES {}",
        values.join(",")
    )
}

async fn raw_insert(db: &Database, rows: &[NewEvent], start: u64) {
    let mut pos = start;
    for chunk in rows.chunks(1000) {
        let mut tx = db.begin().await.expect("begin");
        for part in chunk.chunks(100) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(part.len())));
            for e in part {
                pos += 1;
                q = q
                    .bind(pos as i64)
                    .bind(e.id.to_string())
                    .bind(e.stream.to_string())
                    .bind(pos as i64)
                    .bind(e.event_type.to_string())
                    .bind(feed::atom::format_time(&e.occurred_at))
                    .bind(e.data.to_string())
                    .bind(e.metadata.to_string());
            }
            q.execute(&mut *tx).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
}

const RAW_TABLE: &str = "CREATE TABLE raw_events (position BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, stream TEXT NOT NULL, stream_version BIGINT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, UNIQUE (stream, stream_version))";

async fn replay_over_http(src: &EventLog, page_size: u64, dir: &std::path::Path) -> (f64, u64) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = FeedConfig::new(&base, "bench");
    config.page_size = Some(page_size);
    let server = FeedServer::new(src.clone(), config).await.expect("server");
    let task = tokio::spawn(async move {
        let _ = feed::server::serve(listener, server.router(), std::future::pending()).await;
    });
    // Each replay into a fresh folder of its own.
    let mirror_dir = tempfile::tempdir_in(dir).expect("tmp");
    let mirror = EventLog::connect(&mirror_dir.path().join("mirror.db").display().to_string())
        .await
        .expect("mirror");
    let mut sub = Subscriber::new(
        SubscriberConfig::new("bench", format!("{base}/feed")),
        mirror.database().clone(),
        Mirror(mirror.clone()),
    );
    let started = Instant::now();
    while let Progress::Applied { .. } = sub.poll_once().await.expect("step") {}
    let secs = started.elapsed().as_secs_f64();
    let requests = sub.status().requests();
    task.abort();
    (secs, requests)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let rows = events(n);

    // Append: the log API vs raw INSERTs, both 1,000 events per transaction.
    let log = EventLog::connect(&path("src.db")).await.expect("log");
    let t = Instant::now();
    for chunk in rows.chunks(1000) {
        let mut tx = log.begin().await.expect("begin");
        log.append(&mut tx, Expected::Any, chunk)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
    let append = n as f64 / t.elapsed().as_secs_f64();
    let raw = Database::connect(&path("raw.db")).await.expect("raw");
    sqlx::query(RAW_TABLE)
        .execute(raw.pool())
        .await
        .expect("table");
    let t = Instant::now();
    raw_insert(&raw, &rows, 0).await;
    let insert = n as f64 / t.elapsed().as_secs_f64();

    println!("| measure ({n} events, SQLite) | ours | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| append events/s (log API vs raw INSERT) | {append:.0} | {insert:.0} | {:.2} |",
        append / insert
    );
    println!();
    println!("| page size | replay s | events/s | requests |");
    println!("| --- | --- | --- | --- |");
    let all = log.read_range(1, n).await.expect("read");
    for size in [50, 100, 200, 500, 1000] {
        // A fresh log per size: a size applies to pages not yet started.
        let src = EventLog::connect(&path(&format!("src-{size}.db")))
            .await
            .expect("log");
        src.configure_page_size(Some(size)).await.expect("layout");
        for chunk in all.chunks(5000) {
            let mut tx = src.begin().await.expect("begin");
            src.import(&mut tx, chunk).await.expect("import");
            tx.commit().await.expect("commit");
        }
        let (secs, requests) = replay_over_http(&src, size, dir.path()).await;
        println!(
            "| {size} | {secs:.2} | {:.0} | {requests} |",
            n as f64 / secs
        );
    }
}
