//! Database connections shared by the event log, the subscribers and the services.
//!
//! Everything goes through sqlx's `Any` driver so that one SQL text serves SQLite and
//! PostgreSQL; where the two differ (locking, notifications, pragmas) the code asks
//! [`Backend`] and branches. SQL files live under `migrations/<owner>/<backend>/` and
//! are embedded in the binaries, each owner with its own bookkeeping table so that
//! several owners (the feed, a service) can share one database.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor};
use tokio::sync::Notify;

/// Which database engine sits behind a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::BadUrl(url.to_owned()))
        }
    }

    /// The folder name used under `migrations/<owner>/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Errors opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL {0:?}: expected sqlite:PATH, postgres://... or a file path")]
    BadUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool plus the knowledge of which engine it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    url: String,
    commits: Arc<LocalCommits>,
}

/// How a log hears that an append made through this pool has committed, so its
/// long polls wake at once instead of at the next SQLite change check.
///
/// sqlx returns a connection to the pool right after its transaction ends. An
/// append sets `expected`; while it is set, each return wakes the log's change
/// watcher, which clears it once it has seen the change (or on its next timed check,
/// so a rolled-back append does not keep waking it).
///
/// On PostgreSQL the same hook tells the log's numbering task (see
/// `EventLog::append_unnumbered`) that a transaction which may hold unnumbered
/// events has ended. Which connection comes back is not known, so for a while after
/// each unnumbered append every return wakes it ([`UNNUMBERED_WINDOW`]); the wakes
/// coalesce while it works.
#[derive(Debug, Default)]
pub(crate) struct LocalCommits {
    expected: AtomicBool,
    returned: Notify,
    /// Milliseconds after [`epoch`] of the last unnumbered append, plus one (0: none).
    unnumbered_at: AtomicU64,
    unnumbered_returned: Notify,
}

/// How long after an unnumbered append the return of any connection wakes the
/// numbering task. A transaction left open longer than this after appending is
/// numbered by the next head read or timed check instead.
const UNNUMBERED_WINDOW: Duration = Duration::from_secs(10);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl LocalCommits {
    /// An append is in a transaction that will end soon.
    pub(crate) fn expect(&self) {
        self.expected.store(true, Ordering::Release);
    }

    /// An unnumbered append is in a transaction that will end soon.
    pub(crate) fn expect_unnumbered(&self) {
        self.unnumbered_at
            .store(millis_since_epoch(), Ordering::Release);
    }

    /// Resolves when a connection comes back to the pool shortly after an unnumbered
    /// append.
    pub(crate) async fn returned_after_unnumbered(&self) {
        self.unnumbered_returned.notified().await;
    }

    /// The watcher has seen the change, or gives up waiting for it.
    pub(crate) fn settle(&self) {
        self.expected.store(false, Ordering::Release);
    }

    /// Resolves when a connection comes back to the pool while an append is expected.
    pub(crate) async fn returned(&self) {
        self.returned.notified().await;
    }

    fn connection_returned(&self) {
        if self.expected.load(Ordering::Acquire) {
            self.returned.notify_one();
        }
        let at = self.unnumbered_at.load(Ordering::Acquire);
        if at != 0 && millis_since_epoch() - at < UNNUMBERED_WINDOW.as_millis() as u64 {
            self.unnumbered_returned.notify_one();
        }
    }
}

/// Turns what a user typed into a URL sqlx accepts: a bare path means a SQLite file,
/// created if missing. A URL of any other scheme (`mysql://...`) is returned as it is,
/// so that [`Backend::of_url`] refuses it instead of it becoming a file name.
pub fn normalize_url(input: &str) -> String {
    if input.starts_with("postgres:") || input.starts_with("postgresql:") {
        return input.to_owned();
    }
    if !input.starts_with("sqlite:") && has_scheme(input) {
        return input.to_owned();
    }
    let url = if input.starts_with("sqlite:") {
        input.to_owned()
    } else {
        format!("sqlite://{input}")
    };
    if url.contains("mode=") || url.contains(":memory:") {
        url
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Whether `s` starts with `scheme://` (RFC 3986 scheme characters).
fn has_scheme(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

impl Database {
    /// Opens a pool on `url` (see [`normalize_url`]). SQLite files get WAL with
    /// `synchronous=NORMAL` (durable across process crashes, which is what the
    /// checkpoint protocol needs) and a busy timeout so concurrent writers queue.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let url = normalize_url(url);
        let backend = Backend::of_url(&url)?;
        let options = AnyConnectOptions::from_str(&url).map_err(DbError::Connect)?;
        let commits = Arc::new(LocalCommits::default());
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        {
            let commits = commits.clone();
            pool = pool.after_release(move |_conn, _meta| {
                commits.connection_returned();
                Box::pin(async { Ok(true) })
            });
        }
        if backend == Backend::Sqlite {
            // A SQLite connection is a file handle in this process: nothing can
            // break it between uses, so the pool does not ping it (a hand-over to
            // its worker thread and back) every time it lends it out.
            pool = pool.test_before_acquire(false);
        }
        if url.contains(":memory:") {
            // Every connection to :memory: is a separate database: keep exactly one.
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else if backend == Backend::Sqlite {
            pool = pool.max_connections(8).after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                    )
                    .await?;
                    Ok(())
                })
            });
        } else {
            pool = pool.max_connections(16);
        }
        let pool = pool.connect_with(options).await.map_err(DbError::Connect)?;
        Ok(Self {
            pool,
            backend,
            url,
            commits,
        })
    }

    pub(crate) fn commits(&self) -> &Arc<LocalCommits> {
        &self.commits
    }

    /// The sqlx pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The normalised URL the pool was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts a transaction that may write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes
    /// later fails with SQLITE_BUSY instead of waiting when another writer got in
    /// between.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Applies `set`'s migrations for this backend.
    pub async fn migrate(&self, set: &MigrationSet) -> Result<(), DbError> {
        let files = match self.backend {
            Backend::Sqlite => set.sqlite,
            Backend::Postgres => set.postgres,
        };
        let migrations = files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(format!("_migrations_{}", set.owner));
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

use sqlx::SqlSafeStr as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_sqlite_urls_and_unknown_schemes_are_refused() {
        assert_eq!(normalize_url("data/x.db"), "sqlite://data/x.db?mode=rwc");
        assert_eq!(normalize_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(normalize_url("postgres://u@h/db"), "postgres://u@h/db");
        for bad in ["mysql://u@h/db", "http://h/x.db", "MSSQL+odbc://x"] {
            assert!(
                matches!(
                    Backend::of_url(&normalize_url(bad)),
                    Err(DbError::BadUrl(_))
                ),
                "{bad} accepted"
            );
        }
    }
}

/// The embedded SQL of one owner, for both backends: `(version, description, sql)`.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// Who owns the tables (`feed`, `sales`, ...); names the bookkeeping table.
    pub owner: &'static str,
    /// Migrations for SQLite, in version order.
    pub sqlite: &'static [(i64, &'static str, &'static str)],
    /// Migrations for PostgreSQL, in version order.
    pub postgres: &'static [(i64, &'static str, &'static str)],
}

/// The feed's own tables: the event log and the subscribers' checkpoints.
pub const FEED_MIGRATIONS: MigrationSet = MigrationSet {
    owner: "feed",
    sqlite: &[
        (
            1,
            "event log",
            include_str!("../../migrations/feed/sqlite/0001_event_log.sql"),
        ),
        (
            2,
            "layout version and page digests",
            include_str!("../../migrations/feed/sqlite/0002_layout_version_and_page_digests.sql"),
        ),
        (
            3,
            "sealed page bytes",
            include_str!("../../migrations/feed/sqlite/0003_sealed_page_bytes.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "event log",
            include_str!("../../migrations/feed/postgres/0001_event_log.sql"),
        ),
        (
            2,
            "layout version and page digests",
            include_str!("../../migrations/feed/postgres/0002_layout_version_and_page_digests.sql"),
        ),
        (
            3,
            "events numbered after commit",
            include_str!("../../migrations/feed/postgres/0003_events_numbered_after_commit.sql"),
        ),
        (
            4,
            "sealed page bytes",
            include_str!("../../migrations/feed/postgres/0004_sealed_page_bytes.sql"),
        ),
    ],
};
