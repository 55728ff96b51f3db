//! Criterion micro-benchmarks of the Atom writer and reader, and of the gzip
//! coding the server applies, on one full sealed page
//! (`DEFAULT_PAGE_SIZE` entries of a typical retail event), so regressions in the
//! code every replay and every page render runs show up:
//! `cargo bench -p feed --bench atom`.
//!
//! The reader is measured next to two general-purpose Atom readers on the same bytes
//! (atom_syndication and feed-rs, which the conformance tests use), as a reference
//! for what a subscriber built on them would spend per page.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use feed::atom::{FeedMeta, Links, parse_feed, parse_feed_raw, render_feed};
use feed::event::{Event, EventType, StreamId};
use feed::negotiate::Coding;
use feed::server::{Effort, compress};

fn page(n: u64) -> Vec<Event> {
    let start = Utc
        .with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
        .single()
        .expect("time");
    (1..=n)
        .map(|position| Event {
            position,
            id: uuid::Uuid::from_u128(u128::from(position) * 7_919),
            stream: StreamId::parse(format!("order-{:08}", position / 3)).expect("stream"),
            stream_version: position % 3 + 1,
            event_type: EventType::parse("OrderAccepted").expect("type"),
            occurred_at: start + chrono::Duration::milliseconds(position as i64 * 37),
            data: serde_json::json!({
                "order_id": format!("{position:08}"),
                "customer_id": format!("c-{}", position % 997),
                "email": "ada@example.com",
                "lines": [
                    {"product_id": "p-1", "name": "Kettle <steel> & lid", "quantity": 2, "unit_price_cents": 1250},
                    {"product_id": "p-2", "name": "Mug", "quantity": 1, "unit_price_cents": 450}
                ],
                "total_cents": 2950,
                "currency": "EUR"
            }),
            metadata: serde_json::json!({"correlation_id": format!("{position:08}"), "schema": 1}),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = feed::DEFAULT_PAGE_SIZE;
    let entries = page(n);
    let base = "http://127.0.0.1:8080/sales";
    let links = Links {
        this: Some(format!("{base}/feed/archive/1-{n}")),
        current: Some(format!("{base}/feed")),
        first: Some(format!("{base}/feed/archive/1-{n}")),
        prev_archive: None,
        next_archive: Some(format!("{base}/feed/archive/{}-{}", n + 1, 2 * n)),
        related: None,
        up: None,
    };
    let digest = "9fbf9e11".repeat(8);
    let meta = FeedMeta {
        id: "urn:uuid:6f1b2f5e-3c1d-4a8e-9d59-2b0c7f3e1a10",
        title: "sales events",
        author: "sales",
        base_url: base,
        links: &links,
        archive: true,
        head_position: None,
        empty_updated: Utc::now(),
        prev_archive_digest: Some(&digest),
    };
    let xml = render_feed(&meta, &entries);
    assert_eq!(
        parse_feed(&xml).expect("our own page").entries.len() as u64,
        n
    );

    let mut g = c.benchmark_group(format!("atom page of {n} entries"));
    g.throughput(Throughput::Bytes(xml.len() as u64));
    g.bench_function("encode (render_feed)", |b| {
        b.iter(|| render_feed(black_box(&meta), black_box(&entries)))
    });
    g.bench_function("decode (parse_feed)", |b| {
        b.iter(|| parse_feed(black_box(&xml)).expect("parse"))
    });
    g.bench_function("decode, JSON as text (parse_feed_raw)", |b| {
        b.iter(|| parse_feed_raw(black_box(&xml), 0).expect("parse"))
    });
    g.bench_function("reference: atom_syndication", |b| {
        b.iter(|| {
            black_box(&xml)
                .parse::<atom_syndication::Feed>()
                .expect("atom_syndication")
        })
    });
    g.bench_function("reference: feed-rs", |b| {
        b.iter(|| feed_rs::parser::parse(black_box(xml.as_bytes())).expect("feed-rs"))
    });
    g.finish();

    // The server's content coding of the same page: gzip as it is done once for a
    // sealed page, and at the speed it is done for every new version of a head.
    let mut g = c.benchmark_group(format!("gzip of a page of {n} entries"));
    g.throughput(Throughput::Bytes(xml.len() as u64));
    for (name, effort) in [("sealed page", Effort::Kept), ("head", Effort::Brief)] {
        let size = compress(xml.as_bytes(), Coding::Gzip, effort).len();
        eprintln!("gzip, {name}: {} -> {size} bytes", xml.len());
        g.bench_function(name, |b| {
            b.iter(|| compress(black_box(xml.as_bytes()), Coding::Gzip, effort))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
