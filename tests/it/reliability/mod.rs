//! Reliability proofs (issue 7, items 1-3), against the real binaries and servers:
//!
//! - `crash`: `feedctl replay` and the billing service's subscriber are SIGKILLed at
//!   random moments and restarted until they catch up; the result must equal the
//!   source (digests over every row) with nothing applied twice.
//! - `outage`: the origin of a feed dies behind the cache-proxy; sealed pages keep
//!   being served from the cache, the subscriber backs off instead of hammering, and
//!   catches up with everything once the origin is back.
//! - `concurrency`: 16 command writers on two catalog replicas sharing one PostgreSQL
//!   database, with readers walking the feed: positions gapless and commit-ordered,
//!   sealed pages byte-identical throughout, a subscriber sees every position once,
//!   in order.
//!
//! The sizes below are the fast variants `cargo test --workspace` runs. Environment
//! variables make them bigger (`scripts/reliability.sh` sets them from its flags):
//! `RELIABILITY_EVENTS`, `RELIABILITY_KILLS`, `RELIABILITY_ORDERS`,
//! `RELIABILITY_OUTAGE_SECS`, `RELIABILITY_DURATION_SECS`, and `RELIABILITY_SEED` to
//! repeat a run's random choices (every test prints the seed it used). Each test ends
//! with one `RELIABILITY ...` line: what was tried and what was seen.

mod concurrency;
mod crash;
mod outage;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;

/// A size from `RELIABILITY_<name>`, or `default`.
pub(crate) fn knob(name: &str, default: u64) -> u64 {
    let var = format!("RELIABILITY_{name}");
    match std::env::var(&var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v} is not a whole number")),
        Err(_) => default,
    }
}

/// A seeded random generator; the seed is printed so a failing run can be repeated.
pub(crate) fn rng(test: &str) -> fastrand::Rng {
    let seed = match std::env::var("RELIABILITY_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RELIABILITY_SEED={v} is not a whole number")),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{test}: seed {seed} (RELIABILITY_SEED={seed} repeats the random choices)");
    fastrand::Rng::with_seed(seed)
}

/// The folder the workspace's binaries are built into: the test binary is
/// `<target>/debug/deps/it-<hash>`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary (`feedctl`, `billing`), built and up to date.
///
/// The root package's tests only get their own binaries from cargo, so the first
/// call runs `cargo test --workspace --no-run`: under `cargo test --workspace` (what
/// CI runs) everything is already built with exactly these features and the call
/// takes about a second; under `cargo test -p retail` it builds the rest of the
/// workspace once. A plain `cargo build -p feed` would resolve other features and
/// compile the whole dependency tree a second time.
pub(crate) fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // Cargo gives a test its package's variables (CARGO_PKG_NAME, ...). Build
        // scripts that watch those (ring does) would see them change and rebuild half
        // the dependency tree, for this build and again for the next outer one.
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            let set_by_cargo = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref());
            if set_by_cargo {
                cargo.env_remove(&var);
            }
        }
        let out = cargo
            .args(["test", "--workspace", "--no-run", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("building the workspace's binaries failed:\n{e}");
    }
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A child process that is SIGKILLed when dropped. Its stderr goes to a file, so a
/// chatty process never blocks on a full pipe and its last words can be shown.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stderr: PathBuf,
    /// Kept open: a closed pipe would turn the child's next print into EPIPE.
    _stdout: Option<ChildStdout>,
}

impl Proc {
    /// Starts `cmd`, its stderr appended to `stderr`.
    pub(crate) fn spawn(name: &str, cmd: Command, stderr: &Path) -> Self {
        Self::start(name, cmd, stderr, Stdio::null())
    }

    fn start(name: &str, mut cmd: Command, stderr: &Path, stdout: Stdio) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .expect("open the stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            stderr: stderr.to_path_buf(),
            _stdout: None,
        }
    }

    /// Starts `feedctl serve` and returns it with the feed URL it printed.
    pub(crate) fn feedctl_serve(args: &[&str], stderr: &Path) -> (Self, String) {
        let mut cmd = Command::new(binary("feedctl"));
        cmd.arg("serve").args(args);
        let mut p = Self::start("feedctl serve", cmd, stderr, Stdio::piped());
        let mut stdout = BufReader::new(p.child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        // A failed start closes stdout: the line is empty and the error is in the log.
        let _ = stdout.read_line(&mut line);
        // "serving http://127.0.0.1:PORT/feed on 127.0.0.1:PORT"
        let url = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("feedctl serve printed {line:?}; {}", p.last_words()))
            .to_owned();
        p._stdout = Some(stdout.into_inner());
        (p, url)
    }

    /// SIGKILLs the process; true when it was still running (not already exited).
    pub(crate) fn kill(&mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        let _ = self.child.kill();
        let _ = self.child.wait();
        running
    }

    /// Its exit status if it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit by itself (bounded).
    pub(crate) async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not finish within {limit:?}; {}",
                self.name,
                self.last_words()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of its stderr, for failure messages.
    pub(crate) fn last_words(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{} stderr ({}):\n{}",
            self.name,
            self.stderr.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one number from a SQLite file another process is writing, without creating
/// the file; None while the file or the table does not exist yet.
pub(crate) struct Peek {
    path: PathBuf,
    pool: Option<sqlx::AnyPool>,
}

impl Peek {
    pub(crate) fn new(path: &Path) -> Self {
        sqlx::any::install_default_drivers();
        Self {
            path: path.to_path_buf(),
            pool: None,
        }
    }

    pub(crate) async fn scalar(&mut self, sql: &'static str) -> Option<i64> {
        if self.pool.is_none() {
            if !self.path.exists() {
                return None;
            }
            let url = format!("sqlite://{}?mode=rw", self.path.display());
            self.pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .ok();
        }
        let pool = self.pool.as_ref()?;
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
    }

    pub(crate) async fn close(self) {
        if let Some(pool) = self.pool {
            pool.close().await;
        }
    }
}

/// What a log holds, summed up: enough to compare two logs row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogDigest {
    /// Rows in `feed_events`.
    pub(crate) rows: u64,
    /// Distinct event ids among them.
    pub(crate) distinct_ids: u64,
    /// Whether the positions are exactly 1..=rows.
    pub(crate) gapless: bool,
    /// SHA-256 over every (position, id, stream, stream_version, type, data,
    /// metadata), in position order, the JSON in serde_json's canonical form (sorted
    /// keys), so equal events give equal digests however their text was spelled.
    pub(crate) sha256: String,
}

/// Digests the log in the database at `url`.
pub(crate) async fn log_digest(url: &str) -> LogDigest {
    let db = feed::Database::connect(url).await.expect("open the log");
    let rows = sqlx::query(
        "SELECT position, id, stream, stream_version, type, data, metadata \
         FROM feed_events ORDER BY position",
    )
    .fetch_all(db.pool())
    .await
    .expect("read the log");
    db.close().await;
    let mut hash = Sha256::new();
    let mut ids = std::collections::HashSet::new();
    let mut gapless = true;
    for (i, row) in rows.iter().enumerate() {
        let position: i64 = row.get("position");
        let id: String = row.get("id");
        let stream: String = row.get("stream");
        let version: i64 = row.get("stream_version");
        let event_type: String = row.get("type");
        let data: String = row.get("data");
        let metadata: String = row.get("metadata");
        gapless &= position == i as i64 + 1;
        hash.update(
            format!(
                "{position}\t{id}\t{stream}\t{version}\t{event_type}\t{}\t{}\n",
                canonical(&data),
                canonical(&metadata)
            )
            .as_bytes(),
        );
        ids.insert(id);
    }
    LogDigest {
        rows: rows.len() as u64,
        distinct_ids: ids.len() as u64,
        gapless,
        sha256: hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn canonical(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| panic!("stored JSON does not parse ({e}): {json}"))
}

/// Runs `feedctl` to completion; it must succeed.
fn feedctl(args: &[&str]) {
    let out = Command::new(binary("feedctl"))
        .args(args)
        .output()
        .expect("run feedctl");
    assert!(
        out.status.success(),
        "feedctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UUID from the seeded generator, so a run with the same seed repeats it.
pub(crate) fn uuid(rng: &mut fastrand::Rng) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Appends `lines` (JSON values) to the log at `db` with `feedctl append --jsonl`
/// (the file is written into `dir`).
pub(crate) fn append_jsonl(dir: &Path, db: &str, lines: &[serde_json::Value]) {
    let file = dir.join("events.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).expect("write the events");
    feedctl(&[
        "append",
        "--database-url",
        db,
        "--jsonl",
        &file.display().to_string(),
    ]);
}

/// A subscriber's handler that writes down every event it applies, in the order it
/// applies them. The table has no uniqueness constraint on purpose: an event applied
/// twice shows up as two rows instead of being absorbed.
pub(crate) struct Recorder;

impl feed::Handler for Recorder {
    fn handle<'a>(
        &'a self,
        tx: &'a mut sqlx::AnyConnection,
        e: &'a feed::Event,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO applied (position, id, data) VALUES ($1, $2, $3)")
                .bind(e.position as i64)
                .bind(e.id.to_string())
                .bind(e.data.to_string())
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }
}

/// A fresh SQLite database for a [`Recorder`] subscriber.
pub(crate) async fn recorder_db(path: &Path) -> feed::Database {
    let db = feed::Database::connect(&path.display().to_string())
        .await
        .expect("open the subscriber's database");
    db.migrate(&feed::db::FEED_MIGRATIONS)
        .await
        .expect("migrate");
    sqlx::query(
        "CREATE TABLE applied (seq INTEGER PRIMARY KEY AUTOINCREMENT, position BIGINT NOT NULL, \
         id TEXT NOT NULL, data TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .expect("create the table");
    db
}

/// What a [`Recorder`] applied, in order: (position, id, canonical data).
pub(crate) async fn recorded(db: &feed::Database) -> Vec<(i64, String, String)> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT position, id, data FROM applied ORDER BY seq")
            .fetch_all(db.pool())
            .await
            .expect("read what was applied");
    rows.into_iter()
        .map(|(p, id, data)| (p, id, canonical(&data)))
        .collect()
}

/// The log's events as a [`Recorder`] would have them: (position, id, canonical data).
pub(crate) async fn log_rows(db: &feed::Database) -> Vec<(i64, String, String)> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT position, id, data FROM feed_events ORDER BY position")
            .fetch_all(db.pool())
            .await
            .expect("read the log");
    rows.into_iter()
        .map(|(p, id, data)| (p, id, canonical(&data)))
        .collect()
}

/// The positions in `applied` that break "each position once, in order, from 1".
pub(crate) fn out_of_order(applied: &[(i64, String, String)]) -> Vec<String> {
    applied
        .iter()
        .enumerate()
        .filter(|(i, row)| row.0 != *i as i64 + 1)
        .take(5)
        .map(|(i, row)| format!("#{} applied position {}", i + 1, row.0))
        .collect()
}
