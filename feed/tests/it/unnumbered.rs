//! `EventLog::append_unnumbered` on PostgreSQL: events committed without positions
//! and numbered afterwards, one numbering transaction at a time.

use std::time::Duration;

use feed::store::{AppendError, EventLog, Expected};
use feed::testing::PgCluster;

use crate::helpers::event;
use crate::store::{
    concurrent_appends_are_gapless_and_commit_ordered, racing_appenders_with_expected_versions,
};

/// An event row as `append_unnumbered` leaves it, written by hand: committed, with
/// no position, as if its process had not numbered it yet.
async fn insert_unnumbered_by_hand(url: &str, e: &feed::event::NewEvent, version: i64) {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO feed_events (id, stream, stream_version, type, occurred_at, data, metadata) \
         VALUES ($1, $2, $3, $4, '2026-12-07T00:00:00.000000Z', $5, '{}')",
    )
    .bind(e.id.to_string())
    .bind(e.stream.as_str())
    .bind(version)
    .bind(e.event_type.as_str())
    .bind(e.data.to_string())
    .execute(&mut conn)
    .await
    .expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unnumbered_appends_from_16_writers_are_gapless_and_commit_ordered() {
    let Some(pg) = PgCluster::start() else { return };
    let log = EventLog::connect(&pg.database("unnumbered"))
        .await
        .expect("connect");
    concurrent_appends_are_gapless_and_commit_ordered(log, |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_numbered_and_unnumbered_appends_mixed_stay_gapless_and_commit_ordered() {
    let Some(pg) = PgCluster::start() else { return };
    let log = EventLog::connect(&pg.database("mixed_modes"))
        .await
        .expect("connect");
    concurrent_appends_are_gapless_and_commit_ordered(log, |w| w % 2 == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unnumbered_appenders_with_version_checks_conflict_and_stay_gapless() {
    let Some(pg) = PgCluster::start() else { return };
    racing_appenders_with_expected_versions(
        EventLog::connect(&pg.database("racing_unnumbered"))
            .await
            .expect("log"),
        |_| true,
    )
    .await;
}

/// Half the writers append numbered, half unnumbered, on the same streams: a
/// numbered append numbers the committed unnumbered events before its own, so each
/// stream's versions stay in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_numbered_and_unnumbered_appenders_on_shared_streams_keep_versions_in_order() {
    let Some(pg) = PgCluster::start() else { return };
    racing_appenders_with_expected_versions(
        EventLog::connect(&pg.database("racing_mixed"))
            .await
            .expect("log"),
        |w| w % 4 < 2,
    )
    .await;
}

/// Retries, stale expectations, mixed batches and bad events get the answers an
/// `append` gives, and nothing of a refused batch is stored.
#[tokio::test]
async fn postgres_unnumbered_appends_check_versions_and_ids_like_numbered_ones() {
    let Some(pg) = PgCluster::start() else { return };
    let log = EventLog::connect(&pg.database("checks"))
        .await
        .expect("log");
    let first = event("order-1", 1);
    let mut tx = log.begin().await.expect("begin");
    log.append_unnumbered(&mut tx, Expected::NoStream, std::slice::from_ref(&first))
        .await
        .expect("append");
    tx.commit().await.expect("commit");

    // A retry, with its now-stale expectation, stores nothing new.
    let mut tx = log.begin().await.expect("begin");
    log.append_unnumbered(&mut tx, Expected::NoStream, std::slice::from_ref(&first))
        .await
        .expect("a retry is not a conflict");
    // A batch repeating the stored event with a new one is checked.
    let err = log
        .append_unnumbered(
            &mut tx,
            Expected::NoStream,
            &[first.clone(), event("order-1", 2)],
        )
        .await
        .expect_err("stale expectation");
    assert!(
        matches!(err, AppendError::Conflict { actual: 1, .. }),
        "{err}"
    );
    drop(tx);
    let mut tx = log.begin().await.expect("begin");
    let second = event("order-1", 3);
    log.append_unnumbered(
        &mut tx,
        Expected::Version(1),
        &[first.clone(), second.clone()],
    )
    .await
    .expect("a right expectation appends the new event");
    let err = log
        .append_unnumbered(&mut tx, Expected::Version(1), &[event("order-1", 4)])
        .await
        .expect_err("the stream is at 2 inside this transaction");
    assert!(
        matches!(err, AppendError::Conflict { actual: 2, .. }),
        "{err}"
    );
    drop(tx);
    // That transaction was rolled back: the right expectation is still version 1.
    let mut tx = log.begin().await.expect("begin");
    log.append_unnumbered(&mut tx, Expected::Version(1), std::slice::from_ref(&second))
        .await
        .expect("append");
    let bad = feed::event::NewEvent::new(
        feed::event::StreamId::parse("x").expect("id"),
        feed::event::EventType::parse("X").expect("type"),
        serde_json::json!("not an object"),
    );
    assert!(matches!(
        log.append_unnumbered(&mut tx, Expected::Any, &[bad]).await,
        Err(AppendError::Invalid(_))
    ));
    let twice = event("order-2", 1);
    assert!(matches!(
        log.append_unnumbered(&mut tx, Expected::Any, &[twice.clone(), twice])
            .await,
        Err(AppendError::Invalid(_))
    ));
    tx.commit().await.expect("commit");

    assert_eq!(log.head().await.expect("head"), 2);
    let all = log.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(
        all.iter()
            .map(|e| (e.position, e.id, e.stream_version))
            .collect::<Vec<_>>(),
        vec![(1, first.id, 1), (2, second.id, 2)]
    );
}

/// An event committed unnumbered is not in stream reads until it has a position;
/// the stream's version counts it, so appends check against it; a retry of it
/// through `append` numbers it and returns its position; and a head read numbers
/// whatever is committed.
#[tokio::test]
async fn postgres_events_committed_unnumbered_get_positions_before_anyone_reads_them() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.database("by_hand");
    let log = EventLog::connect(&url).await.expect("log");
    let early = event("order-5", 1);
    insert_unnumbered_by_hand(&url, &early, 1).await;
    let stream = early.stream.clone();
    assert_eq!(
        log.stream_version(&stream).await.expect("version"),
        0,
        "readers do not see it yet"
    );
    assert!(
        log.read_stream(&stream, 1, u64::MAX)
            .await
            .expect("read")
            .is_empty(),
        "an unnumbered event is not readable"
    );
    let mut tx = log.begin().await.expect("begin");
    let err = log
        .append(&mut tx, Expected::NoStream, &[event("order-5", 2)])
        .await
        .expect_err("the stream exists");
    assert!(
        matches!(err, AppendError::Conflict { actual: 1, .. }),
        "{err}"
    );
    drop(tx);
    let mut tx = log.begin().await.expect("begin");
    let retried = log
        .append(&mut tx, Expected::NoStream, std::slice::from_ref(&early))
        .await
        .expect("a retry");
    tx.commit().await.expect("commit");
    assert_eq!(retried, vec![1], "numbered by the retry");

    let late = event("order-6", 1);
    insert_unnumbered_by_hand(&url, &late, 1).await;
    assert_eq!(
        log.head().await.expect("head"),
        2,
        "numbered by the head read"
    );
    let all = log.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(
        all.iter().map(|e| (e.position, e.id)).collect::<Vec<_>>(),
        vec![(1, early.id), (2, late.id)]
    );
}

/// A long poll wakes for an unnumbered append of another pool (another process),
/// which numbers its own appends as they commit, and for an event committed
/// unnumbered by a process that never numbered it: the waiting process numbers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_unnumbered_appends_of_other_processes() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.database("wake_unnumbered");
    let log = EventLog::connect(&url).await.expect("log");
    let other = EventLog::connect(&url).await.expect("second pool");
    let wait = |seen| {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for_append(seen, Duration::from_secs(20)).await })
    };
    let waiter = wait(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = other.begin().await.expect("begin");
    other
        .append_unnumbered(&mut tx, Expected::Any, &[event("a", 1)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let head = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken well before the 20 s wait")
        .expect("task")
        .expect("wait");
    assert_eq!(head, 1);

    let waiter = wait(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    insert_unnumbered_by_hand(&url, &event("b", 1), 1).await;
    let head = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken well before the 20 s wait")
        .expect("task")
        .expect("wait");
    assert_eq!(head, 2);
}
