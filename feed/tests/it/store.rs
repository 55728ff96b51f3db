use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use feed::store::{AppendError, EventLog, Expected};
use feed::testing::PgCluster;

use crate::helpers::{event, sqlite_url};

/// 16 writers append concurrently while a reader polls the log and records every
/// (position, id) it sees. Positions must never appear out of order (a reader that
/// saw p must never later discover a new event below p), and none may be missing.
/// Writers for which `unnumbered(w)` holds append with `append_unnumbered`.
pub(crate) async fn concurrent_appends_are_gapless_and_commit_ordered(
    log: EventLog,
    unnumbered: fn(u64) -> bool,
) {
    let writers = 16;
    let per_writer = 60;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let log = log.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<u64, String> = BTreeMap::new();
            let mut highest = 0u64;
            loop {
                let finished = done.load(Ordering::SeqCst);
                if finished {
                    // Events appended unnumbered may still wait for their positions
                    // after their commit; a head read gives them theirs.
                    log.head().await.expect("head");
                }
                let events = log.read_range(1, u64::MAX).await.expect("read");
                for e in &events {
                    match seen.get(&e.position) {
                        Some(id) => assert_eq!(
                            id,
                            &e.id.to_string(),
                            "position {} changed its event",
                            e.position
                        ),
                        None => {
                            assert!(
                                e.position > highest,
                                "position {} appeared after {highest} had been seen",
                                e.position
                            );
                            seen.insert(e.position, e.id.to_string());
                        }
                    }
                }
                highest = seen.keys().next_back().copied().unwrap_or(0);
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let mut tx = log.begin().await.expect("begin");
                // Single events and small batches, some with a conflict check.
                let batch: Vec<_> = (0..(i % 3 + 1))
                    .map(|k| event(&format!("w{w}"), i * 10 + k))
                    .collect();
                if unnumbered(w) {
                    log.append_unnumbered(&mut tx, Expected::Any, &batch)
                        .await
                        .expect("append");
                } else {
                    log.append(&mut tx, Expected::Any, &batch)
                        .await
                        .expect("append");
                }
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    let head = log.head().await.expect("head");
    let expected: u64 = (0..per_writer).map(|i| i % 3 + 1).sum::<u64>() * writers;
    assert_eq!(head, expected);
    assert_eq!(seen.len() as u64, head, "the reader missed positions");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    // Stream versions are gapless per stream too.
    for w in 0..writers {
        let stream = feed::event::StreamId::parse(format!("w{w}")).expect("stream");
        let events = log.read_stream(&stream, 1, u64::MAX).await.expect("stream");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_positions_are_gapless_and_commit_ordered_under_16_writers() {
    let Some(pg) = PgCluster::start() else { return };
    let log = EventLog::connect(&pg.database("gapless"))
        .await
        .expect("connect");
    concurrent_appends_are_gapless_and_commit_ordered(log, |_| false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_positions_are_gapless_and_commit_ordered_under_16_writers() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("connect");
    concurrent_appends_are_gapless_and_commit_ordered(log, |_| false).await;
}

async fn appending_the_same_id_again_returns_the_original_position(log: EventLog) {
    let e = event("order-1", 1);
    let mut tx = log.begin().await.expect("begin");
    let first = log
        .append(&mut tx, Expected::NoStream, std::slice::from_ref(&e))
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let mut tx = log.begin().await.expect("begin");
    log.append(&mut tx, Expected::Any, &[event("order-2", 2)])
        .await
        .expect("append");
    // A retry of the first command: same id, even with the now-stale expectation.
    let again = log
        .append(&mut tx, Expected::NoStream, &[e])
        .await
        .expect("retry");
    tx.commit().await.expect("commit");
    assert_eq!(first, vec![1]);
    assert_eq!(again, vec![1]);
    assert_eq!(log.head().await.expect("head"), 2);
}

async fn a_stale_expected_version_is_a_conflict_and_writes_nothing(log: EventLog) {
    let mut tx = log.begin().await.expect("begin");
    log.append(&mut tx, Expected::NoStream, &[event("order-9", 1)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let mut tx = log.begin().await.expect("begin");
    let err = log
        .append(&mut tx, Expected::Version(0), &[event("order-9", 2)])
        .await
        .expect_err("conflict");
    drop(tx);
    assert!(
        matches!(err, AppendError::Conflict { actual: 1, .. }),
        "{err}"
    );
    let mut tx = log.begin().await.expect("begin");
    let err = log
        .append(&mut tx, Expected::NoStream, &[event("order-9", 3)])
        .await
        .expect_err("conflict");
    assert!(matches!(err, AppendError::Conflict { .. }));
    let ok = log
        .append(&mut tx, Expected::Version(1), &[event("order-9", 4)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    assert_eq!(ok, vec![2]);
    let bad = feed::event::NewEvent::new(
        feed::event::StreamId::parse("x").expect("id"),
        feed::event::EventType::parse("X").expect("type"),
        serde_json::json!([1, 2]),
    );
    let mut tx = log.begin().await.expect("begin");
    assert!(matches!(
        log.append(&mut tx, Expected::Any, &[bad]).await,
        Err(AppendError::Invalid(_))
    ));
    drop(tx);
    assert_eq!(log.head().await.expect("head"), 2);
}

#[tokio::test]
async fn sqlite_appends_are_idempotent_and_checked_per_stream() {
    let dir = tempfile::tempdir().expect("tmp");
    appending_the_same_id_again_returns_the_original_position(
        EventLog::connect(&sqlite_url(&dir, "a.db"))
            .await
            .expect("log"),
    )
    .await;
    a_stale_expected_version_is_a_conflict_and_writes_nothing(
        EventLog::connect(&sqlite_url(&dir, "b.db"))
            .await
            .expect("log"),
    )
    .await;
}

#[tokio::test]
async fn postgres_appends_are_idempotent_and_checked_per_stream() {
    let Some(pg) = PgCluster::start() else { return };
    appending_the_same_id_again_returns_the_original_position(
        EventLog::connect(&pg.database("a")).await.expect("log"),
    )
    .await;
    a_stale_expected_version_is_a_conflict_and_writes_nothing(
        EventLog::connect(&pg.database("b")).await.expect("log"),
    )
    .await;
}

#[tokio::test]
async fn a_waiter_wakes_when_another_process_appends_to_the_same_sqlite_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = sqlite_url(&dir, "log.db");
    let log = EventLog::connect(&url).await.expect("log");
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            log.wait_for_append(0, std::time::Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedctl"))
        .args([
            "append",
            "--database-url",
            &url,
            "--stream",
            "a",
            "--type",
            "A",
            "--data",
            "{}",
        ])
        .output()
        .await
        .expect("feedctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("woken before the timeout")
        .expect("task")
        .expect("wait");
    assert_eq!(head, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_waiter_wakes_on_a_postgres_append_from_another_connection() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.database("notify");
    let log = EventLog::connect(&url).await.expect("log");
    let other = EventLog::connect(&url).await.expect("second pool");
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            log.wait_for_append(0, std::time::Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut tx = other.begin().await.expect("begin");
    other
        .append(&mut tx, Expected::Any, &[event("a", 1)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("woken by NOTIFY well before the 20 s wait")
        .expect("task")
        .expect("wait");
    assert_eq!(head, 1);
}

/// A batch that repeats a stored event and adds new ones is not a retry: its
/// expected version is checked like any other batch's.
async fn a_mixed_batch_is_checked_against_the_expected_version(log: EventLog) {
    let first = event("order-7", 1);
    let mut tx = log.begin().await.expect("begin");
    log.append(&mut tx, Expected::NoStream, std::slice::from_ref(&first))
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let mut tx = log.begin().await.expect("begin");
    let err = log
        .append(
            &mut tx,
            Expected::NoStream,
            &[first.clone(), event("order-7", 2)],
        )
        .await
        .expect_err("a stale expectation with a new event is a conflict");
    drop(tx);
    assert!(
        matches!(err, AppendError::Conflict { actual: 1, .. }),
        "{err}"
    );
    assert_eq!(log.head().await.expect("head"), 1, "nothing was written");
    let mut tx = log.begin().await.expect("begin");
    let positions = log
        .append(&mut tx, Expected::Version(1), &[first, event("order-7", 3)])
        .await
        .expect("a right expectation appends the new event");
    tx.commit().await.expect("commit");
    assert_eq!(positions, vec![1, 2]);
}

#[tokio::test]
async fn sqlite_mixed_batches_of_stored_and_new_events_check_the_expected_version() {
    let dir = tempfile::tempdir().expect("tmp");
    a_mixed_batch_is_checked_against_the_expected_version(
        EventLog::connect(&sqlite_url(&dir, "log.db"))
            .await
            .expect("log"),
    )
    .await;
}

#[tokio::test]
async fn postgres_mixed_batches_of_stored_and_new_events_check_the_expected_version() {
    let Some(pg) = PgCluster::start() else { return };
    a_mixed_batch_is_checked_against_the_expected_version(
        EventLog::connect(&pg.database("mixed")).await.expect("log"),
    )
    .await;
}

/// 8 writers race on 4 shared streams; half of them append with the version they
/// read, the others without a check. Conflicts must happen, and still every stored
/// position and stream version is gapless and no conflicting batch wrote anything.
///
/// Writers for which `unnumbered(w)` holds append with `append_unnumbered`.
pub(crate) async fn racing_appenders_with_expected_versions(
    log: EventLog,
    unnumbered: fn(u64) -> bool,
) {
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let appended = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let log = log.clone();
        let conflicts = conflicts.clone();
        let appended = appended.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let stream =
                    feed::event::StreamId::parse(format!("shared-{}", i % 4)).expect("stream");
                let expected = if w % 2 == 0 {
                    let v = log.stream_version(&stream).await.expect("version");
                    // Give the others a chance to get in between the read and the
                    // append, which is what makes conflicts happen.
                    tokio::task::yield_now().await;
                    if v == 0 {
                        Expected::NoStream
                    } else {
                        Expected::Version(v)
                    }
                } else {
                    Expected::Any
                };
                let batch = vec![
                    event(stream.as_str(), w * 100 + i),
                    event(stream.as_str(), i),
                ];
                let mut tx = log.begin().await.expect("begin");
                let result = if unnumbered(w) {
                    log.append_unnumbered(&mut tx, expected, &batch).await
                } else {
                    log.append(&mut tx, expected, &batch).await.map(|_| ())
                };
                match result {
                    Ok(()) => {
                        tx.commit().await.expect("commit");
                        appended.fetch_add(2, Ordering::SeqCst);
                    }
                    Err(AppendError::Conflict { .. }) => {
                        conflicts.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("append failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let head = log.head().await.expect("head");
    assert_eq!(head, appended.load(Ordering::SeqCst));
    assert!(
        conflicts.load(Ordering::SeqCst) > 0,
        "no conflict in 160 checked appends"
    );
    let all = log.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    for s in 0..4 {
        let stream = feed::event::StreamId::parse(format!("shared-{s}")).expect("stream");
        let events = log.read_stream(&stream, 1, u64::MAX).await.expect("stream");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
        assert!(
            events.windows(2).all(|w| w[0].position < w[1].position),
            "the versions of {stream} are not in position order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_appenders_with_version_checks_conflict_and_stay_gapless() {
    let dir = tempfile::tempdir().expect("tmp");
    racing_appenders_with_expected_versions(
        EventLog::connect(&sqlite_url(&dir, "log.db"))
            .await
            .expect("log"),
        |_| false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_appenders_with_version_checks_conflict_and_stay_gapless() {
    let Some(pg) = PgCluster::start() else { return };
    racing_appenders_with_expected_versions(
        EventLog::connect(&pg.database("racing"))
            .await
            .expect("log"),
        |_| false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_log_wakes_its_long_polls_on_appends_in_the_same_process() {
    let log = EventLog::connect("sqlite::memory:").await.expect("log");
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            log.wait_for_append(0, std::time::Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut tx = log.begin().await.expect("begin");
    log.append(&mut tx, Expected::Any, &[event("a", 1)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("woken well before the 20 s wait")
        .expect("task")
        .expect("wait");
    assert_eq!(head, 1);
}

/// SQLite reads a page-sized range of a file on a `rusqlite` connection of its own,
/// and of an in-memory log as one JSON array (data and metadata inside it as
/// strings); reading the same events row by row through sqlx, as a stream read does,
/// must give exactly the same events, for payloads that JSON and XML both find
/// awkward.
#[tokio::test]
async fn a_range_read_gives_the_same_events_as_row_by_row() {
    let dir = tempfile::tempdir().expect("tmp");
    for url in [sqlite_url(&dir, "log.db"), "sqlite::memory:".to_owned()] {
        let log = EventLog::connect(&url).await.expect("connect");
        range_reads_match_row_by_row(log).await;
    }
}

async fn range_reads_match_row_by_row(log: EventLog) {
    let payloads = [
        serde_json::json!({ "quote": "\"", "backslash": "\\", "slash": "/" }),
        serde_json::json!({ "nul": "\u{0}", "controls": "\u{1}\t\n\r\u{1f}", "del": "\u{7f}" }),
        serde_json::json!({ "bmp": "é ✓ \u{2028}\u{2029}", "astral": "🦀", "nonchar": "\u{fffe}" }),
        // The last one reads back one bit off without serde_json's float_roundtrip.
        serde_json::json!({ "big": u64::MAX, "neg": i64::MIN, "float": 1e300, "tiny": 5e-324, "exact": 2.8159947423473533e-81 }),
        serde_json::json!({ "nested": { "list": [1, [2, [3]], { "k": null }], "empty": {} } }),
        serde_json::json!({ "sql": "'); DROP TABLE feed_events; --", "json": "[\"not\", \"parsed\"]" }),
    ];
    let stream = feed::event::StreamId::parse("awkward-1").expect("stream");
    let mut tx = log.begin().await.expect("begin");
    let events: Vec<_> = payloads
        .iter()
        .map(|p| {
            feed::event::NewEvent::new(
                stream.clone(),
                feed::event::EventType::parse("Awkward.Stored").expect("type"),
                p.clone(),
            )
        })
        .collect();
    log.append(&mut tx, Expected::NoStream, &events)
        .await
        .expect("append");
    tx.commit().await.expect("commit");

    let in_one_row = log.read_range(1, 6).await.expect("range");
    let row_by_row = log.read_stream(&stream, 1, 6).await.expect("stream");
    assert_eq!(in_one_row, row_by_row);
    let data: Vec<_> = in_one_row.iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, payloads);
    assert_eq!(log.read_range(2, 3).await.expect("part"), row_by_row[1..3]);
    assert!(
        log.read_range(7, 200)
            .await
            .expect("past the head")
            .is_empty()
    );
}

/// 8 writers send the same batch at once (a retried command), and 8 more each send
/// a batch of the same shared event and one of their own. The shared events are
/// stored once, every writer is told their one position, and the log stays gapless.
async fn concurrent_retries_store_each_event_once(log: EventLog) {
    let retried = vec![event("order-r", 1), event("order-r", 2)];
    let shared = event("order-s", 3);
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let log = log.clone();
        let batch = if w % 2 == 0 {
            retried.clone()
        } else {
            vec![shared.clone(), event(&format!("own-{w}"), w)]
        };
        let expected = if w % 2 == 0 {
            Expected::NoStream
        } else {
            Expected::Any
        };
        tasks.push(tokio::spawn(async move {
            let mut tx = log.begin().await.expect("begin");
            let positions = log.append(&mut tx, expected, &batch).await.expect("append");
            tx.commit().await.expect("commit");
            (w, positions)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("writer"));
    }
    let head = log.head().await.expect("head");
    assert_eq!(head, 2 + 1 + 8, "each distinct event once");
    let all = log.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    let position_of = |id: uuid::Uuid| {
        all.iter()
            .find(|e| e.id == id)
            .map(|e| e.position)
            .expect("stored")
    };
    let retried_at = vec![position_of(retried[0].id), position_of(retried[1].id)];
    assert_eq!(retried_at[1], retried_at[0] + 1);
    let shared_at = position_of(shared.id);
    for (w, positions) in results {
        if w % 2 == 0 {
            assert_eq!(positions, retried_at, "writer {w}");
        } else {
            assert_eq!(positions[0], shared_at, "writer {w}");
            assert_ne!(positions[1], shared_at, "writer {w}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_retries_store_each_event_once() {
    let dir = tempfile::tempdir().expect("tmp");
    concurrent_retries_store_each_event_once(
        EventLog::connect(&sqlite_url(&dir, "log.db"))
            .await
            .expect("log"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_retries_store_each_event_once() {
    let Some(pg) = PgCluster::start() else { return };
    concurrent_retries_store_each_event_once(
        EventLog::connect(&pg.database("retries"))
            .await
            .expect("log"),
    )
    .await;
}

/// Writers append batches of one and of two events to the same two streams, with no
/// version check. An append that waited for the lock has read the stream's version
/// before the one it waited for committed, so it can find only part of its batch's
/// versions free. Every event must still be stored once, at the positions and
/// stream versions its append returned, with no gaps.
async fn racing_batches_on_shared_streams(log: EventLog) {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0..80u64 {
                let stream = format!("hot-{}", i % 2);
                let batch: Vec<_> = (0..w % 2 + 1)
                    .map(|k| event(&stream, w * 1000 + i * 10 + k))
                    .collect();
                let mut tx = log.begin().await.expect("begin");
                let positions = log
                    .append(&mut tx, Expected::Any, &batch)
                    .await
                    .expect("append");
                tx.commit().await.expect("commit");
                assert_eq!(positions.len(), batch.len());
                stored.extend(batch.into_iter().map(|e| e.id).zip(positions));
            }
            stored
        }));
    }
    let mut stored = BTreeMap::new();
    for t in tasks {
        for (id, position) in t.await.expect("writer") {
            assert!(
                stored.insert(position, id).is_none(),
                "two appends returned position {position}"
            );
        }
    }
    let head = log.head().await.expect("head");
    assert_eq!(head, stored.len() as u64, "each event once");
    let all = log.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(
        all.iter().map(|e| (e.position, e.id)).collect::<Vec<_>>(),
        stored.into_iter().collect::<Vec<_>>(),
        "the log holds each event at the position its append returned"
    );
    for s in 0..2 {
        let stream = feed::event::StreamId::parse(format!("hot-{s}")).expect("stream");
        let events = log.read_stream(&stream, 1, u64::MAX).await.expect("stream");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_racing_batches_on_shared_streams_store_each_event_once() {
    let dir = tempfile::tempdir().expect("tmp");
    racing_batches_on_shared_streams(
        EventLog::connect(&sqlite_url(&dir, "log.db"))
            .await
            .expect("log"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_batches_on_shared_streams_store_each_event_once() {
    let Some(pg) = PgCluster::start() else { return };
    racing_batches_on_shared_streams(
        EventLog::connect(&pg.database("shared_streams"))
            .await
            .expect("log"),
    )
    .await;
}

/// What a mirror does: imports events with their positions. Overlapping batches
/// skip what is stored, a gap or a different event at a taken position is refused
/// with nothing written, and the result is the source, event for event.
async fn importing_continues_the_log_and_refuses_gaps_and_divergence(target: EventLog) {
    let source = EventLog::connect("sqlite::memory:").await.expect("source");
    crate::helpers::append_n(&source, 10, 3).await;
    let all = source.read_range(1, u64::MAX).await.expect("read");
    let import = |events: Vec<feed::Event>| {
        let target = target.clone();
        async move {
            let mut tx = target.begin().await.expect("begin");
            let r = target.import(&mut tx, &events).await;
            if r.is_ok() {
                tx.commit().await.expect("commit");
            }
            r
        }
    };
    import(all[0..4].to_vec()).await.expect("first four");
    assert_eq!(target.head().await.expect("head"), 4);
    import(all[2..7].to_vec())
        .await
        .expect("an overlapping batch");
    import(all[5..7].to_vec())
        .await
        .expect("a batch already stored");
    assert_eq!(target.head().await.expect("head"), 7);
    match import(all[8..10].to_vec()).await {
        Err(feed::store::StoreError::NotNext { expected, got }) => {
            assert_eq!((expected, got), (8, 9));
        }
        other => panic!("a gap was not refused: {other:?}"),
    }
    let mut other = all[2].clone();
    other.id = uuid::Uuid::now_v7();
    match import(vec![other]).await {
        Err(feed::store::StoreError::Diverged(3)) => {}
        other => panic!("a different event at position 3 was not refused: {other:?}"),
    }
    assert_eq!(target.head().await.expect("head"), 7, "nothing written");
    import(all[7..10].to_vec()).await.expect("the rest");
    let copied = target.read_range(1, u64::MAX).await.expect("read");
    assert_eq!(copied, all);
}

#[tokio::test]
async fn sqlite_imports_continue_the_log_and_refuse_gaps_and_divergence() {
    let dir = tempfile::tempdir().expect("tmp");
    importing_continues_the_log_and_refuses_gaps_and_divergence(
        EventLog::connect(&sqlite_url(&dir, "mirror.db"))
            .await
            .expect("log"),
    )
    .await;
}

#[tokio::test]
async fn postgres_imports_continue_the_log_and_refuse_gaps_and_divergence() {
    let Some(pg) = PgCluster::start() else { return };
    importing_continues_the_log_and_refuses_gaps_and_divergence(
        EventLog::connect(&pg.database("mirror"))
            .await
            .expect("log"),
    )
    .await;
}
