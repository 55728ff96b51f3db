//! A mirror's pages written to SQLite on a connection that one thread owns.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and hands each
//! command to it and the result back: BEGIN, the checkpoint's compare-and-set, the
//! import and COMMIT are four round trips between threads per page, each a wake-up of
//! a sleeping thread. On a replay that is a large part of a page's time (BENCHMARKS.md,
//! P1). A [`DirectWriter`] takes a whole page, with its checkpoint, in one message:
//! its thread runs the transaction on a `rusqlite` connection to the same file and
//! answers once. It does only the common case, the next page of a subscription (its
//! consecutive positions checked by the subscriber) imported right above the log's
//! head; whatever else it finds (the checkpoint moved, the head elsewhere, an error)
//! it rolls back and reports as not written, and the subscriber takes its general
//! path through sqlx, which sorts out overlaps, gaps and competing instances.

use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc;

use rusqlite::{Connection, ToSql, TransactionBehavior};
use tokio::sync::oneshot;

use crate::event::{Position, RawEvent};
use crate::store::{IMPORT_NEXT_HEAD_SQL, INSERT_CHUNK, Row8, Stored, import_next_insert_sql};

/// The checkpoint's compare-and-set, as the subscriber runs it (`$1` the
/// subscription, `$2` the new position, `$3` and `$4` the page's URL and digest, `$5`
/// the time, `$6` the position it read).
pub(crate) const CHECKPOINT_CAS_SQL: &str = "UPDATE feed_checkpoints SET position = $2, \
     page_url = $3, page_digest = $4, updated_at = $5 WHERE subscription = $1 AND position = $6";

/// The first checkpoint of a subscription (`$1` to `$5` as above): it moves from
/// nothing, so it is an insert that does nothing if another instance got there first.
pub(crate) const CHECKPOINT_INSERT_SQL: &str = "INSERT INTO feed_checkpoints \
     (subscription, position, page_url, page_digest, updated_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subscription) DO NOTHING";

/// One page for the writer: the events of `from + 1 ..= last`, consecutive.
#[derive(Debug)]
pub(crate) struct PageWrite {
    pub(crate) subscription: String,
    /// Whether the subscription's checkpoint row exists (at `from`).
    pub(crate) stored: bool,
    pub(crate) from: Position,
    pub(crate) last: Position,
    pub(crate) page_url: String,
    pub(crate) page_digest: Option<String>,
    pub(crate) updated_at: String,
    pub(crate) events: Vec<RawEvent>,
}

/// What became of a page; it comes back unless it was lost.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed, with the checkpoint at `last`.
    Written(PageWrite),
    /// Nothing was written; the page comes back for the general path. The reason is
    /// for the log.
    NotWritten(PageWrite, String),
    /// The thread ended with the page (it panicked), whose events went with it. The
    /// outcome is unknown; the subscriber fails the step and reads its checkpoint
    /// again.
    Lost(String),
}

type Job = (PageWrite, oneshot::Sender<Outcome>);

/// A thread with its own SQLite connection, writing a mirror's pages.
#[derive(Debug, Clone)]
pub(crate) struct DirectWriter {
    jobs: mpsc::Sender<Job>,
}

impl DirectWriter {
    /// A writer for the SQLite database at the sqlx URL `url`, or `None` if the URL
    /// is not a file this process can open a second connection to (`:memory:`).
    pub(crate) fn for_url(url: &str) -> Option<Self> {
        let path = file_of(url)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("feed-direct-writer".into())
            .spawn(move || serve(&path, queue))
            .ok()?;
        Some(Self { jobs })
    }

    /// Queues `page` behind the pages queued before it; the thread writes them in
    /// the order they came, each in its own transaction.
    pub(crate) fn submit(&self, page: PageWrite) -> Pending {
        let (answer, outcome) = oneshot::channel();
        Pending(match self.jobs.send((page, answer)) {
            Ok(()) => Ok(outcome),
            Err(mpsc::SendError((page, _))) => Err(page),
        })
    }
}

/// A page queued on a [`DirectWriter`].
#[derive(Debug)]
pub(crate) struct Pending(Result<oneshot::Receiver<Outcome>, PageWrite>);

impl Pending {
    /// What became of the page, once the thread has written it or declined.
    pub(crate) async fn outcome(self) -> Outcome {
        match self.0 {
            Ok(outcome) => outcome
                .await
                .unwrap_or_else(|_| Outcome::Lost("the writer thread ended mid-page".into())),
            Err(page) => Outcome::NotWritten(page, "the writer thread has ended".into()),
        }
    }
}

/// The writer thread: opens its connection on the first page and keeps it.
fn serve(path: &Path, queue: mpsc::Receiver<Job>) {
    let mut conn: Option<Connection> = None;
    for (page, answer) in queue {
        if conn.is_none() {
            match open(path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let why = format!("opening {}: {e}", path.display());
                    let _ = answer.send(Outcome::NotWritten(page, why));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let outcome = match write_page(c, &page) {
            Ok(None) => Outcome::Written(page),
            Ok(Some(why)) => Outcome::NotWritten(page, why.into()),
            Err(e) => Outcome::NotWritten(page, e.to_string()),
        };
        let _ = answer.send(outcome);
    }
}

/// The file of the SQLite database at the sqlx URL `url`, unless it is `:memory:`.
fn file_of(url: &str) -> Option<std::path::PathBuf> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    if url.contains(":memory:") || path.as_os_str().is_empty() {
        return None;
    }
    Some(path.to_path_buf())
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // The same settings as the pool's connections (`Database::connect`).
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
    )?;
    Ok(conn)
}

/// One transaction: the checkpoint (its compare-and-set, or its first insert), the
/// guarded INSERTs, the head.
/// `Ok(Some(reason))` when it declined and rolled back.
fn write_page(conn: &mut Connection, page: &PageWrite) -> rusqlite::Result<Option<&'static str>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last = page.last as i64;
    let from = page.from as i64;
    let mut params: Vec<(&str, &dyn ToSql)> = vec![
        ("$1", &page.subscription),
        ("$2", &last),
        ("$3", &page.page_url),
        ("$4", &page.page_digest),
        ("$5", &page.updated_at),
    ];
    let sql = if page.stored {
        params.push(("$6", &from));
        CHECKPOINT_CAS_SQL
    } else {
        CHECKPOINT_INSERT_SQL
    };
    let moved = tx.prepare_cached(sql)?.execute(&params[..])?;
    if moved != 1 {
        return Ok(Some("the checkpoint moved"));
    }
    let rows: Vec<Row8<'_>> = page.events.iter().map(Row8::of).collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut insert = tx.prepare_cached(&import_next_insert_sql(chunk.len()))?;
        let mut i = 0;
        for r in chunk {
            insert.raw_bind_parameter(i + 1, r.position as i64)?;
            insert.raw_bind_parameter(i + 2, r.id.as_str())?;
            insert.raw_bind_parameter(i + 3, r.stream)?;
            insert.raw_bind_parameter(i + 4, r.version as i64)?;
            insert.raw_bind_parameter(i + 5, r.event_type)?;
            insert.raw_bind_parameter(i + 6, r.occurred_at.as_str())?;
            insert.raw_bind_parameter(i + 7, r.data.as_ref())?;
            insert.raw_bind_parameter(i + 8, r.metadata.as_ref())?;
            i += 8;
        }
        insert.raw_bind_parameter(i + 1, from)?;
        if insert.raw_execute()? != chunk.len() {
            // Dropping `tx` rolls back what earlier chunks inserted.
            return Ok(Some("the log's head is not just below the page"));
        }
    }
    let moved = tx
        .prepare_cached(IMPORT_NEXT_HEAD_SQL)?
        .execute((last, from))?;
    if moved != 1 {
        return Ok(Some("the log's head is not just below the page"));
    }
    tx.commit()?;
    Ok(None)
}

/// Reads of a SQLite log's rows on `rusqlite` connections, on a blocking thread,
/// instead of through sqlx: a page's 200 rows come back without passing one by one
/// between sqlx's worker thread and the task, and without the detour through one JSON
/// array that `EventLog::read_range_as_one_row` takes to avoid that (SQLite writing
/// the array, serde_json taking it apart again).
#[derive(Debug)]
pub(crate) struct DirectReader {
    path: std::path::PathBuf,
    /// Connections not in use; a read takes one or opens one, and gives it back.
    idle: std::sync::Mutex<Vec<Connection>>,
}

/// Most idle connections a reader keeps.
const IDLE_READERS: usize = 4;

impl DirectReader {
    /// A reader for the SQLite file at the sqlx URL `url`, or `None` if it is not a
    /// file (`:memory:`).
    pub(crate) fn for_url(url: &str) -> Option<Self> {
        Some(Self {
            path: file_of(url)?,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The rows with `from <= position <= to`, oldest first, read in one
    /// transaction (so from one snapshot). Blocks: call it on a blocking thread.
    pub(crate) fn read_range(&self, from: i64, to: i64) -> rusqlite::Result<Vec<Stored>> {
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match taken {
            Some(conn) => conn,
            None => open(&self.path)?,
        };
        let rows = read_rows(&mut conn, from, to)?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(conn);
        }
        Ok(rows)
    }
}

fn read_rows(conn: &mut Connection, from: i64, to: i64) -> rusqlite::Result<Vec<Stored>> {
    let mut statement = conn.prepare_cached(
        "SELECT position, id, stream, stream_version, type, occurred_at, data, metadata \
         FROM feed_events WHERE position >= ?1 AND position <= ?2 ORDER BY position",
    )?;
    let rows = statement.query_map([from, to], |r| {
        Ok(Stored(
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })?;
    rows.collect()
}
