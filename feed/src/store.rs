//! The event log: one append-only table per service database.
//!
//! Invariants, and why they hold:
//! - **Positions are gapless and commit-ordered.** Every append first locks the
//!   single row of `feed_head` (SQLite: by writing it, which takes the write lock;
//!   PostgreSQL: `FOR UPDATE`) until the appending transaction ends. Appenders
//!   therefore take turns, the next one reads the counter only after the previous
//!   one committed or rolled back, and a reader that has seen position p can never later see a smaller new position.
//!   That is what lets a sealed page be cached forever.
//!   [`EventLog::append_unnumbered`] is the other way on PostgreSQL: the appending
//!   transaction takes no lock and commits its events with no position (NULL; `seq`
//!   keeps their insertion order). A numbering transaction takes the same lock and
//!   gives every committed unnumbered event the next position, in `seq` order, with
//!   the head in the same commit. Reads only see numbered events, so the invariant
//!   holds for them just the same, and appenders no longer take turns.
//! - **Appends are idempotent by event id.** The id lookup happens under the same
//!   lock, so two concurrent retries cannot both insert. (Unnumbered appends rely on
//!   the unique constraints on ids and stream versions instead, which also decide
//!   races between them and numbered appends.)
//! - **Optimistic concurrency per stream.** The caller names the version it expects;
//!   a mismatch is [`AppendError::Conflict`] and nothing is written.
//! - **Events are never updated or deleted.** (A PostgreSQL append may delete rows
//!   it inserted itself, before anyone could see them: see `append_in_one_statement`.)
//!
//! - **The database holds the page layout.** Every process serving the log keeps a
//!   copy of `feed_page_sizes` and the `feed_head.layout_version` it was read at;
//!   [`EventLog::head`] reads the version with the position, and reloads the layout
//!   when it moved. A size change is written under the append lock and starts after
//!   the page being filled, so any position a process has seen the head reach is laid
//!   out the same in its copy and in the database: replicas never disagree on page
//!   ranges, links or ETags.
//!
//! Waking long polls: PostgreSQL appends `pg_notify` in the appending transaction (an
//! unnumbered append: in the numbering transaction), so listeners hear of an append
//! exactly when its positions commit. SQLite has no notifications,
//! so while someone is waiting a background task asks `PRAGMA data_version` (which
//! changes when any other connection commits, from this process or another) every
//! couple of milliseconds; nobody waiting, nothing runs. An append made through the
//! log's own pool wakes that task as soon as its connection comes back to the pool,
//! which sqlx does right after the transaction ends, so a process's own appends reach
//! its long polls without waiting for the next check. A `:memory:` database has
//! a single connection and no other process, so there the task reads the head
//! through the log's own pool instead.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::atom::format_time;
use crate::db::{Backend, Database, DbError, FEED_MIGRATIONS, LocalCommits};
use crate::direct::DirectReader;
use crate::event::{Event, EventType, Json, NewEvent, Position, RawEvent, StreamId};
use crate::page::{PageLayout, Segment};

const NOTIFY_CHANNEL: &str = "feed_appended";
/// How often SQLite is asked for changes while a long poll waits.
const SQLITE_CHANGE_CHECK: Duration = Duration::from_millis(2);
/// Rows per multi-row INSERT; 100 rows x 8 columns stays far below both engines'
/// bind-parameter limits.
pub(crate) const INSERT_CHUNK: usize = 100;
/// Ranges shorter than this are read from SQLite as one row (see
/// `EventLog::read_range_as_one_row`); longer ones row by row, so that reading a whole
/// log does not hold it twice in memory.
pub(crate) const ONE_ROW_READ: u64 = 10_000;

/// What an appender expects the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Version(u64),
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer changed the stream first (HTTP 409).
    #[error("version conflict on stream {stream}: expected {expected:?}, found version {actual}")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the caller expected.
        expected: Expected,
        /// The stream's actual last version (0: no stream).
        actual: u64,
    },
    /// The events themselves are unacceptable (HTTP 422).
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The database failed; the transaction should be rolled back (HTTP 503/500).
    #[error("event log database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("event log database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row cannot be decoded (someone wrote to the table by hand).
    #[error("corrupt event row at position {position}: {reason}")]
    Corrupt {
        /// The row.
        position: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// An imported event does not continue the log.
    #[error("cannot import event at position {got}: the log expects position {expected}")]
    NotNext {
        /// The position the log would accept next.
        expected: Position,
        /// The position offered.
        got: Position,
    },
    /// An imported event's position is taken by a different event.
    #[error("position {0} already holds a different event")]
    Diverged(Position),
}

/// What the hash chain records of a sealed page.
#[derive(Debug)]
pub(crate) struct RecordedPage {
    /// The SHA-256 (hex) of its identity-coded Atom bytes.
    pub(crate) digest: String,
    /// Its Atom bytes as zstd, as served; None if recorded before they were kept.
    pub(crate) atom_zstd: Option<Vec<u8>>,
}

/// The event log of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Database,
    changes: Arc<Changes>,
}

#[derive(Debug)]
struct Changes {
    head: watch::Sender<Position>,
    waiter_arrived: Notify,
    /// The page layout and the `layout_version` it was read at.
    layout: std::sync::RwLock<(i64, Arc<PageLayout>)>,
    /// Page reads of a SQLite file (see [`crate::direct::DirectReader`]).
    reader: Option<Arc<DirectReader>>,
}

impl EventLog {
    /// Opens (and migrates) the log in `db`.
    pub async fn open(db: Database) -> Result<Self, DbError> {
        db.migrate(&FEED_MIGRATIONS).await?;
        let (head, _) = watch::channel(0);
        let reader = match db.backend() {
            Backend::Sqlite => DirectReader::for_url(db.url()).map(Arc::new),
            Backend::Postgres => None,
        };
        let log = Self {
            db,
            changes: Arc::new(Changes {
                head,
                waiter_arrived: Notify::new(),
                layout: std::sync::RwLock::new((-1, Arc::new(default_layout()))),
                reader,
            }),
        };
        log.head().await.map_err(|e| match e {
            StoreError::Db(e) => DbError::Connect(e),
            other => DbError::Connect(sqlx::Error::Protocol(other.to_string())),
        })?;
        log.spawn_change_watcher();
        Ok(log)
    }

    /// Connects to `url` and opens the log there.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::open(Database::connect(url).await?).await
    }

    /// The database the log lives in (services keep their own tables there too).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Starts a write transaction on the log's database (see [`Database::begin`]).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.db.begin().await
    }

    /// Appends `events`, in order, inside the caller's transaction. Returns each
    /// event's position; events whose id is already in the log are not written again
    /// and report their original position. `expected` is checked against the stream
    /// of the first event whenever the batch holds a new event: a pure retry (every id
    /// already stored) returns the original positions without a check, but a batch
    /// that mixes stored and new events is checked like any other.
    pub async fn append(
        &self,
        tx: &mut AnyConnection,
        expected: Expected,
        events: &[NewEvent],
    ) -> Result<Vec<Position>, AppendError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, streams) = ids_and_streams(events)?;
        let looked_up = if self.db.backend() == Backend::Postgres
            && streams.len() == 1
            && events.len() <= INSERT_CHUNK
            && repeated_id(&ids).is_none()
        {
            match append_in_one_statement(tx, expected, events, &ids).await? {
                OneStatement::Appended(head) => {
                    self.db.commits().expect();
                    let first = head - events.len() as Position + 1;
                    return Ok((first..=head).collect());
                }
                OneStatement::Conflict(actual) => {
                    return Err(AppendError::Conflict {
                        stream: events[0].stream.clone(),
                        expected,
                        actual,
                    });
                }
                OneStatement::Declined(head) => {
                    let (existing, versions) =
                        existing_and_versions(tx, Backend::Postgres, &ids, &streams).await?;
                    (head, existing, versions)
                }
            }
        } else {
            lock_and_look_up(tx, self.db.backend(), &ids, &streams).await?
        };
        let (mut head, mut existing, mut versions) = looked_up;
        let postgres = self.db.backend() == Backend::Postgres;
        let stream = &events[0].stream;
        for _ in 0..UNNUMBERED_ATTEMPTS {
            if postgres {
                // Events committed by `append_unnumbered` and not numbered yet go
                // first, so that a stream's versions stay in position order and a
                // retry of one of them gets its position: number them (this
                // transaction holds the lock, so no one else numbers meanwhile) and
                // look again, until a numbering finds nothing. A numbering that finds
                // nothing proves the look-up before it saw nothing unnumbered.
                loop {
                    let numbered = number_under_lock(tx, head).await?;
                    if numbered == head {
                        break;
                    }
                    head = numbered;
                    (existing, versions) =
                        existing_and_versions(tx, Backend::Postgres, &ids, &streams).await?;
                }
            }
            if existing.len() == events.len() {
                return Ok(ids.iter().map(|id| existing[id]).collect());
            }
            if let Some(id) = repeated_id(&ids) {
                return Err(AppendError::Invalid(format!("event id {id} appears twice")));
            }
            let actual = versions.get(stream.as_str()).copied().unwrap_or(0);
            if !expected_holds(expected, actual) {
                return Err(AppendError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            let mut top = head;
            let mut positions = Vec::with_capacity(events.len());
            let mut rows = Vec::with_capacity(events.len());
            for (e, id) in events.iter().zip(&ids) {
                if let Some(p) = existing.get(id) {
                    positions.push(*p);
                    continue;
                }
                top += 1;
                let v = versions.entry(e.stream.as_str()).or_insert(0);
                *v += 1;
                positions.push(top);
                rows.push(Row8 {
                    position: top,
                    id: id.clone(),
                    stream: e.stream.as_str(),
                    version: *v,
                    event_type: e.event_type.as_str(),
                    occurred_at: format_time(&e.occurred_at),
                    data: e.data.json_text(),
                    metadata: e.metadata.json_text(),
                });
            }
            if !postgres {
                self.write_rows(tx, &rows, top).await?;
                self.db.commits().expect();
                return Ok(positions);
            }
            // Unnumbered appends take no lock, so one may have taken an id or a
            // stream version since the look-up: the insert skips those rows, and then
            // none is kept and the look-up runs again (and the numbering, above).
            if insert_rows_or_none(tx, &rows).await? {
                move_head_and_notify(tx, top).await?;
                self.db.commits().expect();
                return Ok(positions);
            }
            (existing, versions) =
                existing_and_versions(tx, Backend::Postgres, &ids, &streams).await?;
        }
        let actual = versions.get(stream.as_str()).copied().unwrap_or(0);
        Err(AppendError::Conflict {
            stream: stream.clone(),
            expected,
            actual,
        })
    }

    /// Appends `events`, in order, inside the caller's transaction, like
    /// [`append`](Self::append), but leaves them unnumbered: they get their positions
    /// after the transaction commits. Same checks (expected version, idempotent ids,
    /// JSON objects) and the same errors.
    ///
    /// On PostgreSQL this is what lets appenders run side by side: [`append`](Self::append)
    /// holds the log's lock from taking its positions until its commit, so concurrent
    /// appenders take turns, while this takes no lock at all. The unique constraints
    /// on ids and stream versions decide races between appenders. One numbering
    /// transaction at a time then gives the committed unnumbered events the next
    /// positions, in the order they were inserted, and moves the head: readers see an
    /// event only once it is numbered, so positions stay gapless and commit-ordered.
    /// Numbering happens at the next [`head`](Self::head) read of any process serving
    /// the log, and in the background of this process as soon as the appending
    /// transaction's connection comes back to the pool (and every 100 ms
    /// while a long poll waits). On SQLite, whose writers take turns anyway, this is
    /// [`append`](Self::append).
    pub async fn append_unnumbered(
        &self,
        tx: &mut AnyConnection,
        expected: Expected,
        events: &[NewEvent],
    ) -> Result<(), AppendError> {
        if self.db.backend() == Backend::Sqlite || events.is_empty() {
            return self.append(tx, expected, events).await.map(|_| ());
        }
        let (ids, streams) = ids_and_streams(events)?;
        if streams.len() == 1 && events.len() <= INSERT_CHUNK && repeated_id(&ids).is_none() {
            match insert_unnumbered_in_one_statement(tx, expected, events, &ids).await? {
                OneStatement::Appended(_) => {
                    self.db.commits().expect_unnumbered();
                    return Ok(());
                }
                OneStatement::Conflict(actual) => {
                    return Err(AppendError::Conflict {
                        stream: events[0].stream.clone(),
                        expected,
                        actual,
                    });
                }
                OneStatement::Declined(_) => {}
            }
        }
        // The general path: read the stored ids and the stream versions again (a new
        // statement sees everything committed by now), insert what is new, and run
        // again when a concurrent append took a version first.
        if let Some(id) = repeated_id(&ids) {
            return Err(AppendError::Invalid(format!("event id {id} appears twice")));
        }
        let first = &events[0].stream;
        for _ in 0..UNNUMBERED_ATTEMPTS {
            let (existing, mut versions) =
                existing_and_versions(tx, Backend::Postgres, &ids, &streams).await?;
            if existing.len() == events.len() {
                return Ok(());
            }
            let actual = versions.get(first.as_str()).copied().unwrap_or(0);
            if !expected_holds(expected, actual) {
                return Err(AppendError::Conflict {
                    stream: first.clone(),
                    expected,
                    actual,
                });
            }
            let rows: Vec<Row8<'_>> = events
                .iter()
                .zip(&ids)
                .filter(|(_, id)| !existing.contains_key(*id))
                .map(|(e, id)| {
                    let v = versions.entry(e.stream.as_str()).or_insert(0);
                    *v += 1;
                    Row8 {
                        position: UNNUMBERED,
                        id: id.clone(),
                        stream: e.stream.as_str(),
                        version: *v,
                        event_type: e.event_type.as_str(),
                        occurred_at: format_time(&e.occurred_at),
                        data: e.data.json_text(),
                        metadata: e.metadata.json_text(),
                    }
                })
                .collect();
            if insert_rows_or_none(tx, &rows).await? {
                self.db.commits().expect_unnumbered();
                return Ok(());
            }
        }
        let actual = stream_versions(tx, Backend::Postgres, &[first.as_str()])
            .await?
            .get(first.as_str())
            .copied()
            .unwrap_or(0);
        Err(AppendError::Conflict {
            stream: first.clone(),
            expected,
            actual,
        })
    }

    /// Numbers the events [`append_unnumbered`](Self::append_unnumbered) committed
    /// on PostgreSQL (see there) and returns the head; [`head`](Self::head) calls this
    /// when it finds any.
    async fn number_on_postgres(&self) -> Result<Position, StoreError> {
        let mut tx = self.begin().await?;
        let head = lock_head_for_update(&mut tx).await?;
        let head = number_under_lock(&mut tx, head).await?;
        tx.commit().await?;
        self.changes.head.send_if_modified(|h| bump(h, head));
        Ok(head)
    }

    /// Copies events from another log with their positions, ids and stream versions
    /// (what a mirror does). Events already present with the same id are skipped; a
    /// different event at a taken position, or a gap, is an error. [`RawEvent`]s are
    /// stored with their JSON exactly as they hold it.
    pub async fn import<J: Json>(
        &self,
        tx: &mut AnyConnection,
        events: &[Event<J>],
    ) -> Result<(), StoreError> {
        if self.db.backend() == Backend::Sqlite
            && let Some(first) = events.first().map(|e| e.position)
            && first > 0
            && events
                .iter()
                .zip(first..)
                .all(|(e, position)| e.position == position)
        {
            let rows: Vec<Row8<'_>> = events.iter().map(Row8::of).collect();
            if import_next_on_sqlite(tx, &rows, first - 1).await? {
                return Ok(());
            }
        }
        let mut head = lock_head(tx).await?;
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            if e.position <= head {
                let stored: Option<String> =
                    sqlx::query_scalar("SELECT id FROM feed_events WHERE position = $1")
                        .bind(e.position as i64)
                        .fetch_optional(&mut *tx)
                        .await?;
                if stored.as_deref() != Some(e.id.to_string().as_str()) {
                    return Err(StoreError::Diverged(e.position));
                }
                continue;
            }
            if e.position != head + 1 {
                return Err(StoreError::NotNext {
                    expected: head + 1,
                    got: e.position,
                });
            }
            head = e.position;
            rows.push(Row8::of(e));
        }
        if !rows.is_empty() {
            self.write_rows(tx, &rows, head).await?;
        }
        Ok(())
    }

    /// Inserts `rows` and moves the head to `head`. On PostgreSQL the last chunk of
    /// rows, the head update and the NOTIFY (delivered to listeners when, and only
    /// if, the transaction commits) are one statement: one round trip under the lock.
    async fn write_rows(
        &self,
        tx: &mut AnyConnection,
        rows: &[Row8<'_>],
        head: Position,
    ) -> Result<(), sqlx::Error> {
        let postgres = self.db.backend() == Backend::Postgres;
        let mut chunks = rows.chunks(INSERT_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            if postgres && chunks.peek().is_none() {
                let n = chunk.len() * 8;
                let sql = format!(
                    "WITH ins AS ({}), n AS (SELECT pg_notify(${}, ${})) \
                     UPDATE feed_head SET position = ${} FROM n WHERE id = 1",
                    insert_sql(Backend::Postgres, chunk.len()),
                    n + 1,
                    n + 2,
                    n + 3
                );
                bind_rows(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                    .bind(NOTIFY_CHANNEL)
                    .bind(head.to_string())
                    .bind(head as i64)
                    .execute(&mut *tx)
                    .await?;
                return Ok(());
            }
            bind_rows(
                sqlx::query(sqlx::AssertSqlSafe(insert_sql(
                    self.db.backend(),
                    chunk.len(),
                ))),
                chunk,
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE feed_head SET position = $1 WHERE id = 1")
            .bind(head as i64)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The last committed position (0 for an empty log). Also reloads the page
    /// layout when another process changed it (see the module doc).
    pub async fn head(&self) -> Result<Position, StoreError> {
        let (p, version, unnumbered): (i64, i64, bool) = match self.db.backend() {
            Backend::Sqlite => {
                let (p, version): (i64, i64) =
                    sqlx::query_as("SELECT position, layout_version FROM feed_head WHERE id = 1")
                        .fetch_one(self.db.pool())
                        .await?;
                (p, version, false)
            }
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT position, layout_version, \
                     EXISTS (SELECT 1 FROM feed_events WHERE position IS NULL) \
                     FROM feed_head WHERE id = 1",
                )
                .fetch_one(self.db.pool())
                .await?
            }
        };
        if unnumbered {
            let head = self.number_on_postgres().await?;
            self.reload_layout_if(version).await?;
            return Ok(head);
        }
        self.reload_layout_if(version).await?;
        Ok(p as Position)
    }

    async fn reload_layout_if(&self, version: i64) -> Result<(), StoreError> {
        if version != self.layout_version() {
            let layout = read_layout(self.db.pool()).await?;
            self.set_layout(version, layout.unwrap_or_else(default_layout));
        }
        Ok(())
    }

    fn layout_version(&self) -> i64 {
        self.changes.layout.read().map_or(-1, |l| l.0)
    }

    fn set_layout(&self, version: i64, layout: PageLayout) {
        if let Ok(mut slot) = self.changes.layout.write()
            && version > slot.0
        {
            *slot = (version, Arc::new(layout));
        }
    }

    /// The page layout as of the last head read.
    pub fn layout(&self) -> Arc<PageLayout> {
        match self.changes.layout.read() {
            Ok(l) => l.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Events with `from <= position <= to`, oldest first.
    pub async fn read_range(&self, from: Position, to: Position) -> Result<Vec<Event>, StoreError> {
        self.read_range_as(from, to, Stored::into_event).await
    }

    /// [`read_range`](Self::read_range) with the JSON left as the text the log
    /// stored, checked to be JSON but not decoded.
    pub async fn read_range_raw(
        &self,
        from: Position,
        to: Position,
    ) -> Result<Vec<RawEvent>, StoreError> {
        self.read_range_as(from, to, Stored::into_raw_event).await
    }

    async fn read_range_as<T>(
        &self,
        from: Position,
        to: Position,
        convert: fn(Stored) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        if self.db.backend() == Backend::Sqlite && to.saturating_sub(from) < ONE_ROW_READ {
            if let Some(reader) = &self.changes.reader {
                let reader = reader.clone();
                let (from, to) = (
                    from.min(i64::MAX as u64) as i64,
                    to.min(i64::MAX as u64) as i64,
                );
                let failed = |e: &dyn std::fmt::Display| {
                    StoreError::Db(sqlx::Error::Protocol(format!("page read: {e}")))
                };
                let rows = tokio::task::spawn_blocking(move || reader.read_range(from, to))
                    .await
                    .map_err(|e| failed(&e))?
                    .map_err(|e| failed(&e))?;
                return rows.into_iter().map(convert).collect();
            }
            return self.read_range_as_one_row(from, to, convert).await;
        }
        let rows = sqlx::query(
            "SELECT position, id, stream, stream_version, type, occurred_at, data, metadata \
             FROM feed_events WHERE position >= $1 AND position <= $2 ORDER BY position",
        )
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(to.min(i64::MAX as u64) as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| convert(stored_row(r)?)).collect()
    }

    /// [`read_range`](Self::read_range) on SQLite for a page-sized range: the rows come
    /// back as one JSON array in one row. sqlx runs each SQLite connection on a thread
    /// of its own and hands every row over to the async task separately, and those
    /// hand-overs (with the conversion of each row to an `AnyRow`) were half the cost of
    /// reading a page of 200 events. The stored `data` and `metadata` texts travel as
    /// JSON strings, so they are decoded from exactly the stored text, as row by row.
    async fn read_range_as_one_row<T>(
        &self,
        from: Position,
        to: Position,
        convert: fn(Stored) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let text: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(position, id, stream, stream_version, type, \
             occurred_at, data, metadata)) FROM (SELECT * FROM feed_events \
             WHERE position >= $1 AND position <= $2 ORDER BY position)",
        )
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(to.min(i64::MAX as u64) as i64)
        .fetch_one(self.db.pool())
        .await?;
        let rows: Vec<Stored> = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            position: from as i64,
            reason: format!("the rows of {from}..={to} as JSON: {e}"),
        })?;
        rows.into_iter().map(convert).collect()
    }

    /// The event at `position`, if any.
    pub async fn read_event(&self, position: Position) -> Result<Option<Event>, StoreError> {
        Ok(self.read_range(position, position).await?.pop())
    }

    /// The stream's events with `from <= stream_version <= to`, oldest first.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_stream_as(stream, from, to, Stored::into_event)
            .await
    }

    /// [`read_stream`](Self::read_stream) with the JSON left as the text the log
    /// stored, checked to be JSON but not decoded.
    pub async fn read_stream_raw(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<Vec<RawEvent>, StoreError> {
        self.read_stream_as(stream, from, to, Stored::into_raw_event)
            .await
    }

    async fn read_stream_as<T>(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        convert: fn(Stored) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, id, stream, stream_version, type, occurred_at, data, metadata \
             FROM feed_events WHERE stream = $1 AND stream_version >= $2 AND stream_version <= $3 \
             AND position IS NOT NULL ORDER BY stream_version",
        )
        .bind(stream.as_str())
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(to.min(i64::MAX as u64) as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| convert(stored_row(r)?)).collect()
    }

    /// The stream's last version among the events readers can see (0: no such stream).
    /// An append checks its expected version against every committed event,
    /// numbered or not.
    pub async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(stream_version) FROM feed_events WHERE stream = $1 \
                 AND position IS NOT NULL",
        )
        .bind(stream.as_str())
        .fetch_one(self.db.pool())
        .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Records the page layout before the log is first served: a log without one
    /// gets `page_size` (or [`crate::DEFAULT_PAGE_SIZE`]) from position 1; a log with
    /// one switches to `page_size` for the pages after the one being filled (see
    /// [`PageLayout::with_size_from_head`]) unless it is the size in force already.
    /// A change is written once, under the append lock, and every process serving the
    /// log picks it up at its next head read. Returns the layout now in force.
    pub async fn configure_page_size(
        &self,
        page_size: Option<u64>,
    ) -> Result<Arc<PageLayout>, StoreError> {
        let mut tx = self.begin().await?;
        let head = lock_head(&mut tx).await?;
        let wanted = match (read_layout(&mut *tx).await?, page_size) {
            (None, size) => PageLayout::uniform(size.unwrap_or(crate::DEFAULT_PAGE_SIZE)),
            (Some(stored), Some(size)) if stored.current_size() != size.max(1) => {
                stored.with_size_from_head(size, head)
            }
            (Some(_), _) => {
                tx.rollback().await?;
                self.head().await?;
                return Ok(self.layout());
            }
        };
        sqlx::query("DELETE FROM feed_page_sizes")
            .execute(&mut *tx)
            .await?;
        for s in wanted.segments() {
            sqlx::query("INSERT INTO feed_page_sizes (from_position, page_size) VALUES ($1, $2)")
                .bind(s.from as i64)
                .bind(s.size as i64)
                .execute(&mut *tx)
                .await?;
        }
        let version: i64 = sqlx::query_scalar(
            "UPDATE feed_head SET layout_version = layout_version + 1 WHERE id = 1 \
             RETURNING layout_version",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.set_layout(version, wanted);
        Ok(self.layout())
    }

    /// The stored digest of the sealed page starting at `from` in the chain of
    /// `base_url`: `(to, digest)`.
    pub(crate) async fn page_digest(
        &self,
        base_url: &str,
        from: Position,
    ) -> Result<Option<(Position, String)>, StoreError> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT to_position, digest FROM feed_page_digests \
             WHERE base_url = $1 AND from_position = $2",
        )
        .bind(base_url)
        .bind(from as i64)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|(to, d)| (to as Position, d)))
    }

    /// What rendering or serving page `this` of the chain of `base_url` needs, in one
    /// query: the digest of the sealed page starting at `prev`, and what is recorded
    /// of page `this` (its digest and stored bytes).
    pub(crate) async fn page_digest_pair(
        &self,
        base_url: &str,
        prev: Option<Position>,
        this: Position,
    ) -> Result<(Option<String>, Option<RecordedPage>), StoreError> {
        let rows: Vec<(i64, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT from_position, digest, \
             CASE WHEN from_position = $3 THEN atom_zstd END \
             FROM feed_page_digests WHERE base_url = $1 AND from_position IN ($2, $3)",
        )
        .bind(base_url)
        .bind(prev.unwrap_or(this) as i64)
        .bind(this as i64)
        .fetch_all(self.db.pool())
        .await?;
        let mut pair = (None, None);
        for (from, digest, atom_zstd) in rows {
            if from == this as i64 {
                pair.1 = Some(RecordedPage { digest, atom_zstd });
            } else {
                pair.0 = Some(digest);
            }
        }
        Ok(pair)
    }

    /// Up to `limit` recorded pages of the chain of `base_url` from position `from`
    /// on, oldest first, that have their bytes kept: `(from, to, atom_zstd)`.
    pub(crate) async fn kept_pages(
        &self,
        base_url: &str,
        from: Position,
        limit: u32,
    ) -> Result<Vec<(Position, Position, Vec<u8>)>, StoreError> {
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT from_position, to_position, atom_zstd FROM feed_page_digests \
             WHERE base_url = $1 AND from_position >= $2 AND atom_zstd IS NOT NULL \
             ORDER BY from_position LIMIT $3",
        )
        .bind(base_url)
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(f, t, b)| (f as Position, t as Position, b))
            .collect())
    }

    /// The newest recorded page of the chain of `base_url`: `(from, to, digest)`.
    pub(crate) async fn last_page_digest(
        &self,
        base_url: &str,
    ) -> Result<Option<(Position, Position, String)>, StoreError> {
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT from_position, to_position, digest FROM feed_page_digests \
             WHERE base_url = $1 ORDER BY from_position DESC LIMIT 1",
        )
        .bind(base_url)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|(f, t, d)| (f as Position, t as Position, d)))
    }

    /// Records the digest of a sealed page with its bytes (`atom_zstd`, the Atom
    /// document as zstd); returns the digest stored before if another one was
    /// recorded already (by this or another process), and then keeps that one's bytes.
    pub(crate) async fn record_page_digest(
        &self,
        base_url: &str,
        page: (Position, Position),
        digest: &str,
        atom_zstd: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let (from, to) = page;
        let done = sqlx::query(
            "INSERT INTO feed_page_digests \
             (base_url, from_position, to_position, digest, atom_zstd) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (base_url, from_position) DO NOTHING",
        )
        .bind(base_url)
        .bind(from as i64)
        .bind(to as i64)
        .bind(digest)
        .bind(atom_zstd)
        .execute(self.db.pool())
        .await?;
        if done.rows_affected() == 1 {
            return Ok(None);
        }
        Ok(self.page_digest(base_url, from).await?.map(|(_, d)| d))
    }

    /// Stores the bytes of a sealed page recorded without them (before migration 3
    /// on SQLite, 4 on PostgreSQL), if `digest` is still the recorded one.
    pub(crate) async fn store_page_bytes(
        &self,
        base_url: &str,
        from: Position,
        digest: &str,
        atom_zstd: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE feed_page_digests SET atom_zstd = $4 \
             WHERE base_url = $1 AND from_position = $2 AND digest = $3 AND atom_zstd IS NULL",
        )
        .bind(base_url)
        .bind(from as i64)
        .bind(digest)
        .bind(atom_zstd)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A receiver of the head position as appends commit. Holding one is what makes
    /// the log watch for changes; read the head from the database after subscribing,
    /// since the value may be older than the last commit.
    pub fn watch(&self) -> watch::Receiver<Position> {
        let rx = self.changes.head.subscribe();
        self.changes.waiter_arrived.notify_one();
        rx
    }

    /// Waits until the head moves past `seen` or `timeout` passes; returns the head.
    pub async fn wait_for_append(
        &self,
        seen: Position,
        timeout: Duration,
    ) -> Result<Position, StoreError> {
        let mut rx = self.watch();
        let head = self.head().await?;
        if head > seen {
            return Ok(head);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() > seen {
                return self.head().await;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(seen),
            }
        }
    }

    fn spawn_change_watcher(&self) {
        let changes = Arc::downgrade(&self.changes);
        let url = self.db.url().to_owned();
        match self.db.backend() {
            Backend::Postgres => {
                tokio::spawn(watch_postgres(url, changes.clone()));
                tokio::spawn(number_in_background(self.db.clone(), changes));
            }
            Backend::Sqlite if url.contains(":memory:") => {
                tokio::spawn(watch_sqlite_memory(self.db.clone(), changes));
            }
            Backend::Sqlite => {
                tokio::spawn(watch_sqlite(url, changes, self.db.commits().clone()));
            }
        }
    }
}

async fn watch_postgres(url: String, changes: std::sync::Weak<Changes>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                if changes.upgrade().is_none() {
                    return;
                }
                tracing::warn!(error = %e, "cannot listen for appends; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            // try_recv returns None after a lost connection (notifications may have been
            // missed), and reconnects on the next call.
            let next = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
            let Some(c) = changes.upgrade() else { return };
            match next {
                Err(_) => continue,
                Ok(Ok(Some(n))) => {
                    if let Ok(p) = n.payload().parse::<Position>() {
                        c.head.send_if_modified(|h| bump(h, p));
                    }
                }
                Ok(Ok(None)) => {
                    if let Ok(p) = read_head_with(&url).await {
                        c.head.send_if_modified(|h| bump(h, p));
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lost the append listener; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Numbers what `append_unnumbered` committed on a PostgreSQL log: as soon as a
/// connection of this process's pool comes back after an unnumbered append, and every
/// [`UNNUMBERED_CHECK`] while a long poll of this process waits (for appends of other
/// processes). Ends when the log is dropped.
async fn number_in_background(db: Database, changes: std::sync::Weak<Changes>) {
    let commits = db.commits().clone();
    loop {
        let Some(c) = changes.upgrade() else { return };
        let watched = c.head.receiver_count() > 0;
        let wait = if watched {
            UNNUMBERED_CHECK
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = commits.returned_after_unnumbered() => {}
            () = c.waiter_arrived.notified(), if !watched => {}
            () = tokio::time::sleep(wait) => {
                if !watched {
                    continue;
                }
            }
        }
        let log = EventLog {
            db: db.clone(),
            changes: c,
        };
        if let Err(e) = log.head().await {
            tracing::warn!(error = %e, "cannot number the appended events; trying again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn read_head_with(url: &str) -> Result<Position, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    let p: i64 = sqlx::query_scalar("SELECT position FROM feed_head WHERE id = 1")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(p as Position)
}

/// The change watcher of a SQLite file, on a connection of its own: every
/// [`SQLITE_CHANGE_CHECK`], and at once when a connection of this process's pool comes
/// back after an append (see [`LocalCommits`]).
async fn watch_sqlite(url: String, changes: std::sync::Weak<Changes>, commits: Arc<LocalCommits>) {
    let mut conn: Option<AnyConnection> = None;
    let mut last_version: Option<i64> = None;
    let mut timed = true;
    loop {
        let Some(c) = changes.upgrade() else { return };
        if c.head.receiver_count() == 0 {
            // Wake up now and then to notice that the log itself was dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), c.waiter_arrived.notified()).await;
            continue;
        }
        if conn.is_none() {
            conn = AnyConnection::connect(&url).await.ok();
        }
        let Some(db) = conn.as_mut() else {
            drop(c);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let checked: Result<bool, sqlx::Error> = async {
            let version: i64 = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut *db)
                .await?;
            if last_version == Some(version) {
                return Ok(false);
            }
            last_version = Some(version);
            let p: i64 = sqlx::query_scalar("SELECT position FROM feed_head WHERE id = 1")
                .fetch_one(&mut *db)
                .await?;
            Ok(c.head.send_if_modified(|h| bump(h, p as Position)))
        }
        .await;
        match checked {
            // A connection came back before the append's commit: keep listening.
            Ok(false) if !timed => {}
            Ok(_) => commits.settle(),
            Err(_) => conn = None,
        }
        drop(c);
        timed = tokio::select! {
            () = tokio::time::sleep(SQLITE_CHANGE_CHECK) => true,
            () = commits.returned() => false,
        };
    }
}

/// How often an in-memory log's head is read while a long poll waits.
const MEMORY_CHANGE_CHECK: Duration = Duration::from_millis(10);

/// The change watcher of a `:memory:` log: its only connection is the pool's, and
/// nothing outside this process can write to it, so reading the head through the pool
/// sees every append. The pool's one connection comes back only when the append's
/// transaction has ended, so the first return after an append is its commit.
async fn watch_sqlite_memory(db: Database, changes: std::sync::Weak<Changes>) {
    let commits = db.commits().clone();
    loop {
        let Some(c) = changes.upgrade() else { return };
        if c.head.receiver_count() == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.waiter_arrived.notified()).await;
            continue;
        }
        // Settled before the read, whose own return of the connection must not wake
        // this loop again.
        commits.settle();
        let head: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT position FROM feed_head WHERE id = 1")
                .fetch_one(db.pool())
                .await;
        if let Ok(p) = head {
            c.head.send_if_modified(|h| bump(h, p as Position));
        }
        drop(c);
        tokio::select! {
            () = tokio::time::sleep(MEMORY_CHANGE_CHECK) => {}
            () = commits.returned() => {}
        }
    }
}

fn bump(h: &mut Position, p: Position) -> bool {
    if p > *h {
        *h = p;
        true
    } else {
        false
    }
}

/// The layout of a log that has none stored yet.
fn default_layout() -> PageLayout {
    PageLayout::uniform(crate::DEFAULT_PAGE_SIZE)
}

/// The stored page layout, if any.
async fn read_layout<'c, E>(db: E) -> Result<Option<PageLayout>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT from_position, page_size FROM feed_page_sizes ORDER BY from_position",
    )
    .fetch_all(db)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    PageLayout::from_segments(
        rows.into_iter()
            .map(|(from, size)| Segment {
                from: from as u64,
                size: size as u64,
            })
            .collect(),
    )
    .map(Some)
    .ok_or(StoreError::Corrupt {
        position: 0,
        reason: "feed_page_sizes does not form a page layout".into(),
    })
}

/// The position of an event committed by [`EventLog::append_unnumbered`] and not
/// numbered yet, as the look-ups report it (stored as NULL; positions start at 1).
const UNNUMBERED: Position = 0;
/// How many times an unnumbered append reads the stream versions again after a
/// concurrent append took the version it meant to write.
const UNNUMBERED_ATTEMPTS: usize = 8;
/// Most events one numbering statement gives positions to.
const NUMBERING_BATCH: i64 = 10_000;
/// How often a PostgreSQL log looks for committed unnumbered events while a long poll
/// of this process waits. Every process numbers its own appends as they commit, so
/// this only catches what a process left behind (it stopped right after a commit, or
/// kept a transaction open for longer than the wake-up window of `LocalCommits`).
const UNNUMBERED_CHECK: Duration = Duration::from_millis(100);

/// The ids of `events` as text and their distinct streams, in order, once each event
/// is checked to have JSON objects for data and metadata.
fn ids_and_streams(events: &[NewEvent]) -> Result<(Vec<String>, Vec<&str>), AppendError> {
    for e in events {
        if !e.data.is_object() {
            return Err(AppendError::Invalid(format!(
                "event {}: data must be a JSON object",
                e.id
            )));
        }
        if !e.metadata.is_object() {
            return Err(AppendError::Invalid(format!(
                "event {}: metadata must be a JSON object",
                e.id
            )));
        }
    }
    let ids = events.iter().map(|e| e.id.to_string()).collect();
    let mut seen = HashSet::new();
    let streams = events
        .iter()
        .map(|e| e.stream.as_str())
        .filter(|s| seen.insert(*s))
        .collect();
    Ok((ids, streams))
}

/// The first id that appears a second time in `ids`.
fn repeated_id(ids: &[String]) -> Option<&String> {
    let mut seen = HashSet::new();
    ids.iter().find(|id| !seen.insert(*id))
}

fn expected_holds(expected: Expected, actual: u64) -> bool {
    match expected {
        Expected::Any => true,
        Expected::NoStream => actual == 0,
        Expected::Version(v) => actual == v,
    }
}

/// The `VALUES` rows `(k, id, type, occurred_at, data, metadata)` of `n` events, with
/// the parameters of the five from `$first` on, and the list of their id parameters.
fn event_values(n: usize, first: usize) -> (String, String) {
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "({}, {})",
                i + 1,
                placeholders(Backend::Postgres, first + i * 5, 5)
            )
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("${}", first + i * 5)).collect();
    (values.join(", "), ids.join(", "))
}

/// Binds the five parameters of each event of [`event_values`].
fn bind_events<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    events: &'q [NewEvent],
    ids: &'q [String],
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
    for (e, id) in events.iter().zip(ids) {
        q = q
            .bind(id.as_str())
            .bind(e.event_type.as_str())
            .bind(format_time(&e.occurred_at))
            .bind(e.data.json_text().into_owned())
            .bind(e.metadata.json_text().into_owned());
    }
    q
}

/// An expectation as the one-statement appends take it: -1 for any version.
fn expected_param(expected: Expected) -> i64 {
    match expected {
        Expected::Any => -1,
        Expected::NoStream => 0,
        Expected::Version(v) => v as i64,
    }
}

/// On PostgreSQL, inserts a batch of new events of one stream, with distinct ids,
/// unnumbered, in a single statement and without a lock: it reads the stream's
/// version, checks the expected version and that no id is stored, and inserts the
/// events at the next stream versions. The reads see what had committed when the
/// statement started; a concurrent append of the same stream or id that commits
/// after that meets the unique constraints, and the insert skips it (`ON CONFLICT DO
/// NOTHING`, which first waits for that append's transaction to end). When one event
/// was skipped, the ones inserted are deleted again (this transaction's own, seen by
/// nobody) and the caller takes the general path.
async fn insert_unnumbered_in_one_statement(
    tx: &mut AnyConnection,
    expected: Expected,
    events: &[NewEvent],
    ids: &[String],
) -> Result<OneStatement, sqlx::Error> {
    let n = events.len();
    // $1 stream, $2 expected version (-1: any), then five per event.
    let (values, id_params) = event_values(n, 3);
    let sql = format!(
        "WITH cur AS MATERIALIZED (SELECT COALESCE(MAX(stream_version), 0) AS v FROM feed_events WHERE stream = $1), \
         dup AS MATERIALIZED (SELECT COUNT(*) AS c FROM feed_events WHERE id IN ({ids})), \
         ok AS MATERIALIZED (SELECT cur.v FROM cur, dup \
           WHERE dup.c = 0 AND (CAST($2 AS BIGINT) < 0 OR cur.v = $2)), \
         ins AS (INSERT INTO feed_events (id, stream, stream_version, type, occurred_at, data, metadata) \
           SELECT x.id, $1, ok.v + x.k, x.t, x.a, x.d, x.m \
           FROM ok, (VALUES {values}) AS x (k, id, t, a, d, m) \
           ON CONFLICT DO NOTHING RETURNING seq), \
         inserted AS MATERIALIZED (SELECT COUNT(*) AS c, STRING_AGG(CAST(seq AS TEXT), ',') AS s FROM ins) \
         SELECT cur.v, dup.c, inserted.c, inserted.s FROM cur, dup, inserted",
        ids = id_params,
        values = values,
    );
    let expected = expected_param(expected);
    let q = sqlx::query_as::<_, (i64, i64, i64, Option<String>)>(sqlx::AssertSqlSafe(sql))
        .bind(events[0].stream.as_str())
        .bind(expected);
    let q = bind_events(q, events, ids);
    let (version, stored, inserted, seqs) = q.fetch_one(&mut *tx).await?;
    if inserted == n as i64 {
        return Ok(OneStatement::Appended(UNNUMBERED));
    }
    if let Some(seqs) = &seqs {
        delete_own_rows(tx, seqs).await?;
    }
    if stored == 0 && expected >= 0 && version != expected {
        return Ok(OneStatement::Conflict(version as u64));
    }
    Ok(OneStatement::Declined(UNNUMBERED))
}

/// Inserts `rows` (numbered, or unnumbered with [`UNNUMBERED`]) on PostgreSQL,
/// skipping any whose id or stream version is taken (see
/// [`insert_unnumbered_in_one_statement`]). Returns whether every row went in; if
/// not, none did.
async fn insert_rows_or_none(
    tx: &mut AnyConnection,
    rows: &[Row8<'_>],
) -> Result<bool, sqlx::Error> {
    let mut seqs = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "{} ON CONFLICT DO NOTHING RETURNING seq",
            insert_sql(Backend::Postgres, chunk.len())
        );
        for row in bind_rows(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
            .fetch_all(&mut *tx)
            .await?
        {
            seqs.push(row.try_get::<i64, _>(0)?);
        }
    }
    if seqs.len() == rows.len() {
        return Ok(true);
    }
    if !seqs.is_empty() {
        let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
        delete_own_rows(tx, &list.join(",")).await?;
    }
    Ok(false)
}

/// Moves the head to `head` and notifies listeners (at commit), after an append's
/// inserts on PostgreSQL.
async fn move_head_and_notify(tx: &mut AnyConnection, head: Position) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH n AS (SELECT pg_notify($1, $2)) UPDATE feed_head SET position = $3 FROM n WHERE id = 1",
    )
    .bind(NOTIFY_CHANNEL)
    .bind(head.to_string())
    .bind(head as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes rows this transaction inserted, by their `seq`s (a comma-separated list
/// of numbers the database returned for them): nobody else has seen them.
async fn delete_own_rows(tx: &mut AnyConnection, seqs: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM feed_events WHERE seq IN ({seqs})"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Takes the append lock on PostgreSQL without writing the head row.
async fn lock_head_for_update(tx: &mut AnyConnection) -> Result<Position, sqlx::Error> {
    let p: i64 = sqlx::query_scalar("SELECT position FROM feed_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    Ok(p as Position)
}

/// Gives the committed unnumbered events the positions after `head`, in the order
/// they were inserted, moves the head and notifies listeners (at commit); returns
/// the new head. The caller holds the lock, taken in an earlier statement, so this
/// statement's snapshot has every earlier numbering in it.
async fn number_under_lock(
    tx: &mut AnyConnection,
    mut head: Position,
) -> Result<Position, sqlx::Error> {
    loop {
        let (count, top): (i64, i64) = sqlx::query_as(
            "WITH p AS MATERIALIZED (SELECT seq, row_number() OVER (ORDER BY seq) AS n \
               FROM feed_events WHERE position IS NULL ORDER BY seq LIMIT $3), \
             u AS (UPDATE feed_events SET position = CAST($1 AS BIGINT) + p.n FROM p \
               WHERE feed_events.seq = p.seq AND feed_events.position IS NULL \
               RETURNING feed_events.position), \
             m AS MATERIALIZED (SELECT COUNT(*) AS c, COALESCE(MAX(position), CAST($1 AS BIGINT)) AS top FROM u), \
             upd AS (UPDATE feed_head SET position = m.top FROM m WHERE feed_head.id = 1 AND m.c > 0), \
             n AS MATERIALIZED (SELECT pg_notify($2, CAST(m.top AS TEXT)) FROM m WHERE m.c > 0) \
             SELECT m.c, m.top + 0 * (SELECT COUNT(*) FROM n) FROM m",
        )
        .bind(head as i64)
        .bind(NOTIFY_CHANNEL)
        .bind(NUMBERING_BATCH)
        .fetch_one(&mut *tx)
        .await?;
        if top as Position != head + count as Position {
            return Err(sqlx::Error::Protocol(format!(
                "numbering {count} events above {head} reached {top}"
            )));
        }
        head = top as Position;
        if count < NUMBERING_BATCH {
            return Ok(head);
        }
    }
}

/// What [`append_in_one_statement`] did.
enum OneStatement {
    /// The events were appended; the new head.
    Appended(Position),
    /// Nothing was written: the stream is at this version, not the expected one.
    Conflict(u64),
    /// Nothing was written, because some of the ids may already be stored or the
    /// stream may have moved: the caller holds the lock at this head and takes the
    /// general path, which reads both again.
    Declined(Position),
}

/// On PostgreSQL, appends a batch of new events of one stream, with distinct ids, in
/// a single statement: it takes the lock, reads the head and the stream's version,
/// checks the expected version and that no id is stored, inserts, moves the head and
/// notifies. With the transaction's BEGIN and COMMIT that is three round trips, like
/// a plain INSERT, and the lock is held from this statement to the COMMIT only.
///
/// The statement's reads see the snapshot taken when it started, which may be older
/// than the moment it got the lock (see [`lock_and_look_up`]): an append that
/// committed while it waited is not in them. The locked head is current, because
/// `FOR UPDATE` returns the newest version of the row it waited for, so the events
/// go in right above it. What the reads may have missed the unique constraints see:
/// the insert skips (`ON CONFLICT DO NOTHING`) an event whose id is stored, or whose
/// stream version is taken, which is how a stream that moved shows up, since stream
/// versions have no gaps. So when every event went in, the reads were right about
/// these ids and this stream, and the head moves. When one was skipped, the statement
/// leaves the head alone, the events it did insert are deleted again (they are this
/// transaction's own, never seen by anyone), and the caller takes the general path,
/// still holding the lock.
async fn append_in_one_statement(
    tx: &mut AnyConnection,
    expected: Expected,
    events: &[NewEvent],
    ids: &[String],
) -> Result<OneStatement, sqlx::Error> {
    let n = events.len();
    // $1 stream, $2 expected version (-1: any), $3 channel, then five per event.
    let (values, id_params) = event_values(n, 4);
    let sql = format!(
        "WITH locked AS MATERIALIZED (SELECT position FROM feed_head WHERE id = 1 FOR UPDATE), \
         seen AS MATERIALIZED (SELECT position FROM feed_head WHERE id = 1), \
         cur AS MATERIALIZED (SELECT COALESCE(MAX(stream_version), 0) AS v FROM feed_events WHERE stream = $1), \
         dup AS MATERIALIZED (SELECT COUNT(*) AS c FROM feed_events WHERE id IN ({ids})), \
         ok AS MATERIALIZED (SELECT locked.position AS head, cur.v FROM locked, cur, dup \
           WHERE dup.c = 0 AND (CAST($2 AS BIGINT) < 0 OR cur.v = $2) \
           AND NOT EXISTS (SELECT 1 FROM feed_events WHERE position IS NULL)), \
         ins AS ({INSERT_EVENTS} \
           SELECT ok.head + x.k, x.id, $1, ok.v + x.k, x.t, x.a, x.d, x.m \
           FROM ok, (VALUES {values}) AS x (k, id, t, a, d, m) \
           ON CONFLICT DO NOTHING RETURNING position), \
         inserted AS MATERIALIZED (SELECT COUNT(*) AS c, STRING_AGG(CAST(position AS TEXT), ',') AS p FROM ins), \
         upd AS (UPDATE feed_head SET position = ok.head + {n} FROM ok, inserted \
           WHERE feed_head.id = 1 AND inserted.c = {n}), \
         notified AS MATERIALIZED (SELECT pg_notify($3, CAST(ok.head + {n} AS TEXT)) FROM ok, inserted \
           WHERE inserted.c = {n}) \
         SELECT locked.position, seen.position, cur.v, dup.c, inserted.p, (SELECT COUNT(*) FROM notified) \
         FROM locked, seen, cur, dup, inserted",
        ids = id_params,
        values = values,
    );
    let expected = expected_param(expected);
    let q =
        sqlx::query_as::<_, (i64, i64, i64, i64, Option<String>, i64)>(sqlx::AssertSqlSafe(sql))
            .bind(events[0].stream.as_str())
            .bind(expected)
            .bind(NOTIFY_CHANNEL);
    let q = bind_events(q, events, ids);
    let (locked, seen, version, stored, inserted, notified) = q.fetch_one(&mut *tx).await?;
    let head = locked as Position;
    if notified == 1 {
        return Ok(OneStatement::Appended(head + n as Position));
    }
    if let Some(positions) = &inserted {
        // Only what this statement inserted, by the positions it returned.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM feed_events WHERE position IN ({positions})"
        )))
        .execute(&mut *tx)
        .await?;
    }
    if stored == 0 && locked == seen && expected >= 0 && version != expected {
        // The reads were current and found the stream at another version.
        return Ok(OneStatement::Conflict(version as u64));
    }
    Ok(OneStatement::Declined(head))
}

/// On SQLite, imports `rows` (consecutive positions) if the head is at `head`, in a
/// single command to the connection's worker thread: each INSERT, and the head's
/// update after them, runs only if the head is still at `head`, and the inserts do
/// not move it, so either all of them run or none does. One hand-over to the worker
/// thread and back instead of four (lock, two INSERTs, head), which is what a page
/// of a replay costs most on a busy machine. Returns whether it imported; if not,
/// nothing was written and the caller takes the general path.
async fn import_next_on_sqlite(
    tx: &mut AnyConnection,
    rows: &[Row8<'_>],
    head: Position,
) -> Result<bool, sqlx::Error> {
    let mut sql = String::new();
    for chunk in rows.chunks(INSERT_CHUNK) {
        sql.push_str(&import_next_insert_sql(chunk.len()));
        sql.push_str("; ");
    }
    sql.push_str(IMPORT_NEXT_HEAD_SQL);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for chunk in rows.chunks(INSERT_CHUNK) {
        q = bind_rows(q, chunk).bind(head as i64);
    }
    let last = head + rows.len() as Position;
    let done = q
        .bind(last as i64)
        .bind(head as i64)
        .execute(&mut *tx)
        .await?;
    match done.rows_affected() {
        0 => Ok(false),
        n if n == rows.len() as u64 + 1 => Ok(true),
        n => Err(sqlx::Error::Protocol(format!(
            "importing {} events above {head} changed {n} rows",
            rows.len()
        ))),
    }
}

/// An INSERT of `n` rows (8 anonymous parameters each, in [`bind_rows`] order) that
/// runs only if the head is at the value of one more parameter after them: a chunk of
/// [`import_next_on_sqlite`] and of a direct write (`crate::direct`).
pub(crate) fn import_next_insert_sql(n: usize) -> String {
    let row = format!("({})", placeholders(Backend::Sqlite, 1, 8));
    format!(
        "{INSERT_EVENTS} SELECT * FROM (VALUES {}) \
         WHERE (SELECT position FROM feed_head WHERE id = 1) = ?",
        vec![row.as_str(); n].join(", ")
    )
}

/// Moves the head from the second parameter to the first, after an import's INSERTs.
pub(crate) const IMPORT_NEXT_HEAD_SQL: &str =
    "UPDATE feed_head SET position = ? WHERE id = 1 AND position = ?";

/// Takes the append lock (see the module doc) and returns the current head.
async fn lock_head(tx: &mut AnyConnection) -> Result<Position, sqlx::Error> {
    let p: i64 = sqlx::query_scalar(
        "UPDATE feed_head SET position = position WHERE id = 1 RETURNING position",
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(p as Position)
}

/// Takes the append lock, then reads the positions of the ids already in the log
/// and the current version of each stream: the head, the stored ids and the stream
/// versions, as of holding the lock.
///
/// On PostgreSQL one statement does both, which saves a round trip while every other
/// writer waits. Its reads see the snapshot taken when the statement started, which
/// may be older than the moment it got the lock; but every append moves the head, so
/// when the head the lock returned equals the head in that snapshot, no append
/// committed in between and the reads are current. Otherwise they are read again, now
/// under the lock.
async fn lock_and_look_up<'a>(
    tx: &mut AnyConnection,
    backend: Backend,
    ids: &[String],
    streams: &[&'a str],
) -> Result<(Position, HashMap<String, Position>, HashMap<&'a str, u64>), sqlx::Error> {
    if backend == Backend::Postgres && ids.len() + streams.len() <= 500 {
        let sql = format!(
            "WITH locked AS MATERIALIZED (SELECT position FROM feed_head WHERE id = 1 FOR UPDATE) \
             {} \
             UNION ALL SELECT CAST(2 AS BIGINT), '', position FROM locked \
             UNION ALL SELECT CAST(3 AS BIGINT), '', position FROM feed_head WHERE id = 1",
            look_up_sql(backend, ids.len(), streams.len())
        );
        let rows = bind_look_up(sqlx::query(sqlx::AssertSqlSafe(sql)), ids, streams)
            .fetch_all(&mut *tx)
            .await?;
        let (existing, versions, heads) = read_look_up(&rows, streams)?;
        match heads {
            (Some(locked), Some(seen)) if locked == seen => {
                return Ok((locked, existing, versions));
            }
            (Some(locked), _) => {
                let (existing, versions) = existing_and_versions(tx, backend, ids, streams).await?;
                return Ok((locked, existing, versions));
            }
            (None, _) => return Err(sqlx::Error::RowNotFound),
        }
    }
    let head = lock_head(tx).await?;
    let (existing, versions) = existing_and_versions(tx, backend, ids, streams).await?;
    Ok((head, existing, versions))
}

/// The positions of the ids already in the log and the current version of each
/// stream, in one query when the batch fits in one statement.
async fn existing_and_versions<'a>(
    tx: &mut AnyConnection,
    backend: Backend,
    ids: &[String],
    streams: &[&'a str],
) -> Result<(HashMap<String, Position>, HashMap<&'a str, u64>), sqlx::Error> {
    if ids.len() + streams.len() > 500 {
        let existing = existing_ids(tx, backend, ids).await?;
        let versions = stream_versions(tx, backend, streams).await?;
        return Ok((existing, versions));
    }
    let rows = bind_look_up(
        sqlx::query(sqlx::AssertSqlSafe(look_up_sql(
            backend,
            ids.len(),
            streams.len(),
        ))),
        ids,
        streams,
    )
    .fetch_all(&mut *tx)
    .await?;
    let (existing, versions, _) = read_look_up(&rows, streams)?;
    Ok((existing, versions))
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Rows of kind 0 (id, position) for the stored ids and of kind 1 (stream, version)
/// for the streams; the ids bind to `$1..`, the streams after them.
fn look_up_sql(backend: Backend, ids: usize, streams: usize) -> String {
    format!(
        "SELECT CAST(0 AS BIGINT), id, COALESCE(position, 0) FROM feed_events WHERE id IN ({}) \
         UNION ALL \
         SELECT CAST(1 AS BIGINT), stream, MAX(stream_version) FROM feed_events \
         WHERE stream IN ({}) GROUP BY stream",
        placeholders(backend, 1, ids),
        placeholders(backend, ids + 1, streams)
    )
}

fn bind_look_up<'q>(mut q: Query<'q>, ids: &'q [String], streams: &[&'q str]) -> Query<'q> {
    for id in ids {
        q = q.bind(id.as_str());
    }
    for s in streams {
        q = q.bind(*s);
    }
    q
}

type LookedUp<'a> = (
    HashMap<String, Position>,
    HashMap<&'a str, u64>,
    (Option<Position>, Option<Position>),
);

/// Sorts the rows of a look-up by kind; kinds 2 and 3 are the locked and the seen head.
fn read_look_up<'a>(rows: &[AnyRow], streams: &[&'a str]) -> Result<LookedUp<'a>, sqlx::Error> {
    let (mut existing, mut versions, mut heads) = (HashMap::new(), HashMap::new(), (None, None));
    for row in rows {
        let kind: i64 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let n: i64 = row.try_get(2)?;
        match kind {
            0 => {
                existing.insert(name, n as Position);
            }
            1 => {
                if let Some(key) = streams.iter().find(|k| **k == name) {
                    versions.insert(*key, n as u64);
                }
            }
            2 => heads.0 = Some(n as Position),
            _ => heads.1 = Some(n as Position),
        }
    }
    Ok((existing, versions, heads))
}

async fn existing_ids(
    tx: &mut AnyConnection,
    backend: Backend,
    ids: &[String],
) -> Result<HashMap<String, Position>, sqlx::Error> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT id, COALESCE(position, 0) FROM feed_events WHERE id IN ({})",
            placeholders(backend, 1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for row in q.fetch_all(&mut *tx).await? {
            let id: String = row.try_get(0)?;
            let p: i64 = row.try_get(1)?;
            found.insert(id, p as Position);
        }
    }
    Ok(found)
}

async fn stream_versions<'a>(
    tx: &mut AnyConnection,
    backend: Backend,
    streams: &[&'a str],
) -> Result<HashMap<&'a str, u64>, sqlx::Error> {
    let mut versions = HashMap::new();
    for chunk in streams.chunks(500) {
        let sql = format!(
            "SELECT stream, MAX(stream_version) FROM feed_events WHERE stream IN ({}) GROUP BY stream",
            placeholders(backend, 1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q.bind(*s);
        }
        for row in q.fetch_all(&mut *tx).await? {
            let s: String = row.try_get(0)?;
            let v: i64 = row.try_get(1)?;
            if let Some(key) = chunk.iter().find(|k| **k == s) {
                versions.insert(*key, v as u64);
            }
        }
    }
    Ok(versions)
}

pub(crate) struct Row8<'a> {
    pub(crate) position: Position,
    pub(crate) id: String,
    pub(crate) stream: &'a str,
    pub(crate) version: u64,
    pub(crate) event_type: &'a str,
    pub(crate) occurred_at: String,
    pub(crate) data: Cow<'a, str>,
    pub(crate) metadata: Cow<'a, str>,
}

impl<'a> Row8<'a> {
    /// The row of an event imported with its position and stream version.
    pub(crate) fn of<J: Json>(e: &'a Event<J>) -> Self {
        Row8 {
            position: e.position,
            id: e.id.to_string(),
            stream: e.stream.as_str(),
            version: e.stream_version,
            event_type: e.event_type.as_str(),
            occurred_at: format_time(&e.occurred_at),
            data: e.data.json_text(),
            metadata: e.metadata.json_text(),
        }
    }
}

/// The start of an INSERT of whole rows, in the order [`bind_rows`] binds them.
const INSERT_EVENTS: &str = "INSERT INTO feed_events (position, id, stream, stream_version, type, occurred_at, data, metadata)";

/// A multi-row INSERT of `n` rows, bound from `$1` by [`bind_rows`].
fn insert_sql(backend: Backend, n: usize) -> String {
    let values: Vec<String> = (0..n)
        .map(|i| format!("({})", placeholders(backend, i * 8 + 1, 8)))
        .collect();
    format!("{INSERT_EVENTS} VALUES {}", values.join(", "))
}

fn bind_rows<'q>(mut q: Query<'q>, rows: &'q [Row8<'_>]) -> Query<'q> {
    for r in rows {
        q = q
            .bind((r.position != UNNUMBERED).then_some(r.position as i64))
            .bind(r.id.as_str())
            .bind(r.stream)
            .bind(r.version as i64)
            .bind(r.event_type)
            .bind(r.occurred_at.as_str())
            .bind(r.data.as_ref())
            .bind(r.metadata.as_ref());
    }
    q
}

/// `n` bind parameters numbered from `first`, as `backend` spells them. SQLite gets
/// anonymous `?`s, bound in order: for a numbered one the driver asks SQLite for its
/// name, which SQLite finds by scanning the statement's list of names, so binding the
/// 800 values of a 100-row INSERT as `$1..$800` made 800 scans of 800 names.
fn placeholders(backend: Backend, first: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => (first..first + n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The columns of one `feed_events` row, in table order.
#[derive(serde::Deserialize)]
pub(crate) struct Stored(
    pub(crate) i64,
    pub(crate) String,
    pub(crate) String,
    pub(crate) i64,
    pub(crate) String,
    pub(crate) String,
    pub(crate) String,
    pub(crate) String,
);

impl Stored {
    /// The event with its `data` and `metadata` as the stored texts.
    fn into_texts(self) -> Result<Event<String>, StoreError> {
        let Stored(position, id, stream, version, event_type, occurred_at, data, metadata) = self;
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        Ok(Event {
            position: position as Position,
            id: Uuid::parse_str(&id).map_err(|e| corrupt(format!("id: {e}")))?,
            stream: StreamId::parse(stream).map_err(|e| corrupt(e.to_string()))?,
            stream_version: version as u64,
            event_type: EventType::parse(event_type).map_err(|e| corrupt(e.to_string()))?,
            occurred_at: DateTime::parse_from_rfc3339(&occurred_at)
                .map_err(|e| corrupt(format!("occurred_at: {e}")))?
                .with_timezone(&Utc),
            data,
            metadata,
        })
    }

    /// The event with its stored JSON texts read by `read`.
    fn into_json<J>(
        self,
        read: fn(String) -> serde_json::Result<J>,
    ) -> Result<Event<J>, StoreError> {
        let texts = self.into_texts()?;
        let position = texts.position as i64;
        texts.try_map_json(|what, text| {
            read(text).map_err(|e| StoreError::Corrupt {
                position,
                reason: format!("{what}: {e}"),
            })
        })
    }

    fn into_event(self) -> Result<Event, StoreError> {
        self.into_json(|text| serde_json::from_str(&text))
    }

    /// The event with its JSON texts checked (so a page is never rendered with text
    /// that is not JSON) but not decoded.
    fn into_raw_event(self) -> Result<RawEvent, StoreError> {
        self.into_json(RawValue::from_string)
    }
}

fn stored_row(row: &AnyRow) -> Result<Stored, StoreError> {
    Ok(Stored(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
    ))
}
