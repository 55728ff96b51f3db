//! Crash consistency: a follower SIGKILLed at random moments and restarted, again and
//! again, must end exactly where a follower that was never killed ends, and must never
//! need a hand to get going again.
//!
//! The kill moments come from a seeded generator: a quarter of the runs die within
//! 300 ms of starting (connecting, migrating, fetching the first page), the rest at a
//! random position ahead of the durable progress plus up to 20 ms (so inside a page's
//! transaction as often as between two). A run that exits by itself with an error
//! fails the test: it would need manual repair.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::{Peek, Proc, append_jsonl, binary, knob, log_digest, rng, uuid};

/// How the kills went.
#[derive(Debug, Default)]
struct Kills {
    /// Runs SIGKILLed while still running.
    killed: u64,
    /// Of those, how many left the follower short of the end (true interruptions).
    mid_way: u64,
    /// Runs killed within their first 300 ms.
    early: u64,
    /// The durable progress after each kill.
    progress: Vec<u64>,
}

/// Starts `start()` up to `kills` times and SIGKILLs each run at a random moment,
/// watching the durable progress through `peek` (`sql` reads it) towards `total`.
async fn kill_repeatedly(
    rng: &mut fastrand::Rng,
    kills: u64,
    total: u64,
    peek: &mut Peek,
    sql: &'static str,
    mut start: impl FnMut() -> Proc,
) -> Kills {
    let mut seen = Kills::default();
    for k in 0..kills {
        let before = progress(peek, sql).await;
        if before >= total {
            break;
        }
        let mut run = start();
        let early = rng.u8(0..4) == 0;
        if early {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        } else {
            let left = kills - k;
            let stride = (2 * (total - before) / (left + 1)).max(1);
            let target = (before + 1 + rng.u64(0..stride)).min(total);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            while progress(peek, sql).await < target && run.exited().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no progress to {target} in 300 s; {}",
                    run.last_words()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        }
        if run.kill() {
            seen.killed += 1;
            seen.early += u64::from(early);
            let after = progress(peek, sql).await;
            seen.mid_way += u64::from(after < total);
            seen.progress.push(after);
        } else if let Some(status) = run.exited()
            && !status.success()
        {
            panic!(
                "run {} failed by itself ({status}) and would need repair; {}",
                k + 1,
                run.last_words()
            );
        }
    }
    seen
}

async fn progress(peek: &mut Peek, sql: &'static str) -> u64 {
    peek.scalar(sql).await.map_or(0, |p| p.max(0) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedctl_replay_killed_at_random_moments_ends_equal_to_its_source() {
    let events = knob("EVENTS", 20_000);
    let kills = knob("KILLS", 8);
    let mut rng = rng("crash/replay");
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    let replica = dir.path().join("replica.db");
    let lines: Vec<serde_json::Value> = (1..=events)
        .map(|i| {
            json!({
                "stream": format!("thing-{}", i % 101),
                "type": "ThingHappened",
                "id": uuid(&mut rng),
                // Characters that need escaping in XML and JSON, and non-ASCII.
                "data": { "n": i, "note": format!("<&> \"quoted\" \u{e9}\u{2713} {i}"), "size": rng.u32(..) },
                "metadata": { "correlation_id": format!("c-{}", i / 7) },
            })
        })
        .collect();
    append_jsonl(dir.path(), &src, &lines);
    let (_origin, url) = Proc::feedctl_serve(
        &[
            "--database-url",
            &src,
            "--listen",
            "127.0.0.1:0",
            "--page-size",
            "100",
        ],
        &dir.path().join("serve.log"),
    );
    let log = dir.path().join("replay.log");
    let replay = || {
        let mut cmd = Command::new(binary("feedctl"));
        cmd.args(["replay", &url, "--into", &replica.display().to_string()]);
        Proc::spawn("feedctl replay", cmd, &log)
    };
    let mut peek = Peek::new(&replica);
    let head_sql = "SELECT position FROM feed_head WHERE id = 1";
    let seen = kill_repeatedly(&mut rng, kills, events, &mut peek, head_sql, replay).await;
    peek.close().await;

    // The last run is left alone: it must finish by itself, from wherever the kills
    // left the replica, and a run after it must find nothing to do.
    for _ in 0..2 {
        let mut last = replay();
        let status = last.wait(Duration::from_secs(600)).await;
        assert!(
            status.success(),
            "final replay failed: {}",
            last.last_words()
        );
    }
    let (source, copy) = (
        log_digest(&src).await,
        log_digest(&replica.display().to_string()).await,
    );
    assert_eq!(source.rows, events);
    assert!(copy.gapless, "the replica has holes in its positions");
    assert_eq!(copy.rows, events, "the replica holds {} rows", copy.rows);
    assert_eq!(copy.distinct_ids, events, "an event was stored twice");
    assert_eq!(copy, source, "the replica differs from its source");
    assert!(
        seen.mid_way >= seen.killed / 2,
        "only {} of {} kills interrupted the replay: the test proved little ({seen:?})",
        seen.mid_way,
        seen.killed
    );
    eprintln!(
        "RELIABILITY crash/replay: {events} events, {} SIGKILLs ({} mid-replay, {} within 300 ms of start), \
         progress at each kill {:?}; replica == source (sha256 {}), 0 duplicates",
        seen.killed, seen.mid_way, seen.early, seen.progress, copy.sha256
    );
}

/// One billing process following `sales_feed` into `data_dir`.
fn billing(data_dir: &Path, sales_feed: &str) -> Proc {
    let mut cmd = Command::new(binary("billing"));
    for var in [
        "DATABASE_URL",
        "LISTEN",
        "BASE_URL",
        "PAGE_SIZE",
        "DATA_DIR",
        "RETAIL_API_TOKEN",
        "SALES_FEED",
        "DEFAULT_CREDIT_LIMIT_CENTS",
    ] {
        cmd.env_remove(var);
    }
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir.display().to_string(),
        "--sales-feed",
        sales_feed,
        "--default-credit-limit-cents",
        "1000000",
    ]);
    Proc::spawn("billing", cmd, &data_dir.join("billing.log"))
}

const BILLING_CHECKPOINT: &str =
    "SELECT position FROM feed_checkpoints WHERE subscription = 'billing<-sales'";

/// Runs billing until its checkpoint reaches `total`, then stops it.
async fn bill_everything(data_dir: &Path, sales_feed: &str, total: u64) {
    let mut run = billing(data_dir, sales_feed);
    let mut peek = Peek::new(&data_dir.join("billing.db"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while progress(&mut peek, BILLING_CHECKPOINT).await < total {
        assert!(
            run.exited().is_none(),
            "billing stopped by itself; {}",
            run.last_words()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "billing did not catch up in 600 s; {}",
            run.last_words()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peek.close().await;
    run.kill();
}

/// Billing's decisions, one row per order: (order, customer, amount, outcome, reason).
async fn decisions(data_dir: &Path) -> Vec<(String, String, i64, String, Option<String>)> {
    let db = feed::Database::connect(&data_dir.join("billing.db").display().to_string())
        .await
        .expect("open billing.db");
    let rows = sqlx::query_as(
        "SELECT order_id, customer_id, amount_cents, outcome, reason FROM billing_decisions ORDER BY order_id",
    )
    .fetch_all(db.pool())
    .await
    .expect("read decisions");
    db.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_service_killed_at_random_moments_bills_every_order_exactly_once() {
    let orders = knob("ORDERS", 2_000);
    let kills = knob("KILLS", 8);
    let mut rng = rng("crash/billing");
    let dir = tempfile::tempdir().expect("tmp");
    let sales = dir.path().join("sales.db").display().to_string();
    // A sales log: orders of 25 customers whose totals soon reach the credit limit, so
    // every decision depends on all earlier ones and a charge applied twice (or lost)
    // changes what follows. Other event types in between are skipped by billing.
    let mut lines = Vec::new();
    for i in 0..orders {
        let order_id = uuid(&mut rng);
        lines.push(json!({
            "stream": format!("order-{order_id}"),
            "type": "OrderAccepted",
            "id": uuid(&mut rng),
            "data": {
                "order_id": order_id,
                "customer_id": format!("c-{}", rng.u8(0..25)),
                "email": "someone@example.com",
                "lines": [{ "product_id": uuid(&mut rng), "quantity": 1 }],
                "total_cents": rng.i64(1_000..=60_000),
                "currency": "EUR",
            },
        }));
        if i % 10 == 0 {
            lines.push(json!({
                "stream": format!("order-{order_id}"),
                "type": "OrderConfirmationSent",
                "id": uuid(&mut rng),
                "data": { "order_id": order_id },
            }));
        }
    }
    let total = lines.len() as u64;
    append_jsonl(dir.path(), &sales, &lines);
    let (_origin, feed) = Proc::feedctl_serve(
        &[
            "--database-url",
            &sales,
            "--listen",
            "127.0.0.1:0",
            "--page-size",
            "100",
        ],
        &dir.path().join("serve.log"),
    );

    let reference = dir.path().join("reference");
    let victim = dir.path().join("victim");
    for d in [&reference, &victim] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let never_killed = {
        let (reference, feed) = (reference.clone(), feed.clone());
        tokio::spawn(async move { bill_everything(&reference, &feed, total).await })
    };
    let mut peek = Peek::new(&victim.join("billing.db"));
    let seen = kill_repeatedly(
        &mut rng,
        kills,
        total,
        &mut peek,
        BILLING_CHECKPOINT,
        || billing(&victim, &feed),
    )
    .await;
    peek.close().await;
    bill_everything(&victim, &feed, total).await;
    never_killed.await.expect("the reference run");

    let (expected, got) = (decisions(&reference).await, decisions(&victim).await);
    assert_eq!(expected.len() as u64, orders);
    let billed = expected.iter().filter(|d| d.3 == "billed").count();
    assert!(
        billed > 0 && billed < expected.len(),
        "every order had the same outcome ({billed} billed): the comparison would not notice a double charge"
    );
    assert_eq!(got.len() as u64, orders, "decisions after the kills");
    assert_eq!(got, expected, "the killed billing decided differently");
    let (expected_log, got_log) = (
        log_digest(&reference.join("billing.db").display().to_string()).await,
        log_digest(&victim.join("billing.db").display().to_string()).await,
    );
    assert_eq!(expected_log.rows, orders, "one billing event per order");
    assert_eq!(
        got_log.distinct_ids, orders,
        "a billing event published twice"
    );
    assert_eq!(
        got_log, expected_log,
        "billing's feed differs after the kills"
    );
    assert!(
        seen.mid_way >= seen.killed / 2,
        "only {} of {} kills interrupted billing ({seen:?})",
        seen.mid_way,
        seen.killed
    );
    eprintln!(
        "RELIABILITY crash/billing: {orders} orders ({total} sales events), {} SIGKILLs ({} mid-way, {} within 300 ms of start), \
         checkpoint at each kill {:?}; decisions and feed == never-killed run ({billed} billed, {} failed; sha256 {})",
        seen.killed,
        seen.mid_way,
        seen.early,
        seen.progress,
        orders as usize - billed,
        got_log.sha256
    );
}
