//! feedctl end to end, as a user runs it: separate processes, real sockets.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FEEDCTL: &str = env!("CARGO_BIN_EXE_feedctl");

fn feedctl(args: &[&str]) -> std::process::Output {
    Command::new(FEEDCTL)
        .args(args)
        .output()
        .expect("run feedctl")
}

struct Serving(Child, String);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `feedctl serve` on a free port and returns it with its feed URL.
fn serve(db: &str, page_size: u32) -> Serving {
    serve_on(db, page_size, "127.0.0.1:0")
}

/// Starts `feedctl serve` on `listen`.
fn serve_on(db: &str, page_size: u32, listen: &str) -> Serving {
    let mut child = Command::new(FEEDCTL)
        .args([
            "serve",
            "--database-url",
            db,
            "--listen",
            listen,
            "--page-size",
            &page_size.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    // "serving http://127.0.0.1:PORT/feed on 127.0.0.1:PORT"
    let url = line
        .split_whitespace()
        .nth(1)
        .expect("url in the first line")
        .to_owned();
    Serving(child, url)
}

#[test]
fn append_serve_tail_replay_and_verify_work_together() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    let out = feedctl(&[
        "append",
        "--database-url",
        &src,
        "--stream",
        "order-1",
        "--type",
        "OrderAccepted",
        "--data",
        r#"{"total":5}"#,
        "--id",
        "6f1e0f5e-51a3-4a43-9d3a-1b2a4e1c0c01",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // The same id again is a no-op that reports the original position.
    let again = feedctl(&[
        "append",
        "--database-url",
        &src,
        "--stream",
        "order-1",
        "--type",
        "OrderAccepted",
        "--data",
        r#"{"total":5}"#,
        "--id",
        "6f1e0f5e-51a3-4a43-9d3a-1b2a4e1c0c01",
    ]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "1");

    let mut jsonl = tempfile::NamedTempFile::new().expect("tmp");
    for i in 0..249 {
        writeln!(
            jsonl,
            r#"{{"stream":"s-{}","type":"Thing.Happened","data":{{"i":{i},"t":"<é>"}}}}"#,
            i % 7
        )
        .expect("write");
    }
    let out = feedctl(&[
        "append",
        "--database-url",
        &src,
        "--jsonl",
        &jsonl.path().display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = serve(&src, 50);
    let tail = feedctl(&["tail", &server.1, "--from", "240"]);
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 11);
    assert_eq!(lines[0]["position"], 240);
    assert_eq!(lines[10]["position"], 250);
    assert_eq!(lines[10]["data"]["t"], "<é>");

    let mirror = dir.path().join("mirror.db").display().to_string();
    let out = feedctl(&["replay", &server.1, "--into", &mirror]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = feedctl(&["tail", &server.1]);
    let mirror_server = serve(&mirror, 50);
    let b = feedctl(&["tail", &mirror_server.1]);
    assert_eq!(
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
        "the mirror holds the same events, ids and positions"
    );

    let ok = feedctl(&["verify", &server.1]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("positions 1..=250 contiguous"));
}

#[test]
fn tail_follow_prints_events_appended_later() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    assert!(
        feedctl(&[
            "append",
            "--database-url",
            &src,
            "--stream",
            "a",
            "--type",
            "A",
            "--data",
            "{}"
        ])
        .status
        .success()
    );
    let server = serve(&src, 10);
    let mut tail = Command::new(FEEDCTL)
        .args(["tail", &server.1, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let mut out = BufReader::new(tail.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    assert!(line.contains("\"position\":1"));
    assert!(
        feedctl(&[
            "append",
            "--database-url",
            &src,
            "--stream",
            "a",
            "--type",
            "B",
            "--data",
            r#"{"late":true}"#
        ])
        .status
        .success()
    );
    line.clear();
    out.read_line(&mut line).expect("second line");
    assert!(line.contains("\"late\":true"), "{line}");
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn bad_arguments_and_unreachable_urls_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("x.db").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "append",
            "--database-url",
            &db,
            "--stream",
            "a b",
            "--type",
            "A",
            "--data",
            "{}",
        ],
        vec![
            "append",
            "--database-url",
            &db,
            "--stream",
            "a",
            "--type",
            "A",
            "--data",
            "[1]",
        ],
        vec![
            "append",
            "--database-url",
            &db,
            "--stream",
            "a",
            "--type",
            "A",
            "--data",
            "{nope",
        ],
        vec![
            "append",
            "--database-url",
            "mysql://x",
            "--stream",
            "a",
            "--type",
            "A",
            "--data",
            "{}",
        ],
        vec!["tail", "http://127.0.0.1:9/feed"],
        vec!["replay", "http://127.0.0.1:9/feed", "--into", &db],
        vec!["verify", "http://127.0.0.1:9/feed"],
    ];
    for args in cases {
        let out = feedctl(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("feedctl: error: "), "{args:?}: {err}");
    }
    // A bad line in a bulk load writes nothing at all.
    let mut jsonl = tempfile::NamedTempFile::new().expect("tmp");
    writeln!(jsonl, r#"{{"stream":"a","type":"A","data":{{}}}}"#).expect("write");
    writeln!(jsonl, r#"{{"stream":"a","type":"A","data":7}}"#).expect("write");
    let out = feedctl(&[
        "append",
        "--database-url",
        &db,
        "--jsonl",
        &jsonl.path().display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    let server = serve(&db, 10);
    let tail = feedctl(&["tail", &server.1]);
    assert!(tail.status.success());
    assert!(tail.stdout.is_empty(), "a half-written bulk load");
    // Usage errors come from clap with a non-zero status.
    assert!(!feedctl(&["append"]).status.success());
    std::thread::sleep(Duration::from_millis(10));
}

/// Runs `f` on a connection to the database at `db`, from a synchronous test.
fn with_db<T>(db: &str, f: impl AsyncFnOnce(&feed::db::Database) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = feed::db::Database::connect(db).await.expect("connect");
        let out = f(&db).await;
        db.close().await;
        out
    })
}

/// Runs SQL against a database from a synchronous test.
fn sql(db: &str, query: &'static str) {
    with_db(db, async |db| {
        sqlx::query(query).execute(db.pool()).await.expect(query);
    });
}

/// Rewrites the bytes kept of the sealed page starting at `from` in the database at
/// `db` (see `helpers::rewrite_stored_page`).
fn rewrite_page(db: &str, from: u64, find: &str, replace: &str) {
    with_db(db, async |db| {
        crate::helpers::rewrite_stored_page(db, from, find, replace).await;
    });
}

fn checkpoint_of(db: &str) -> i64 {
    with_db(db, async |db| {
        let p: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM feed_checkpoints")
            .fetch_one(db.pool())
            .await
            .unwrap_or(None);
        p.unwrap_or(0)
    })
}

/// Appends `n` events to `db` through `feedctl append --jsonl FILE`.
fn append_jsonl(db: &str, n: usize) {
    let mut jsonl = tempfile::NamedTempFile::new().expect("tmp");
    for i in 0..n {
        writeln!(
            jsonl,
            r#"{{"stream":"s-{}","type":"Thing.Happened","data":{{"i":{i}}}}}"#,
            i % 7
        )
        .expect("write");
    }
    let out = feedctl(&[
        "append",
        "--database-url",
        db,
        "--jsonl",
        &jsonl.path().display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `127.0.0.1:PORT` of a feed URL served by [`serve`].
fn listen_address(feed_url: &str) -> String {
    feed_url
        .trim_start_matches("http://")
        .trim_end_matches("/feed")
        .to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_are_one_line_while_help_and_version_print_normally() {
    for args in [
        vec![],
        vec!["append"],
        vec!["frobnicate"],
        vec!["tail"],
        vec!["verify", "http://x/feed", "--nope"],
        vec![
            "serve",
            "--database-url",
            "x.db",
            "--listen",
            "not-an-address",
        ],
    ] {
        let out = feedctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("feedctl: error: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    let missing = stderr(&feedctl(&["append"]));
    assert!(missing.contains("--database-url"), "{missing}");
    let help = feedctl(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.lines().count() > 5 && text.contains("Usage:"),
        "{text}"
    );
    let version = feedctl(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("feedctl "));
    assert!(feedctl(&["verify", "--help"]).status.success());
}

#[test]
fn append_reads_json_lines_from_stdin() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("log.db").display().to_string();
    let mut child = Command::new(FEEDCTL)
        .args(["append", "--database-url", &db, "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for i in 0..3 {
            writeln!(
                stdin,
                r#"{{"stream":"cart-1","type":"ItemAdded","data":{{"sku":"{i}"}}}}"#
            )
            .expect("write");
        }
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("appended 3 events; head is now 3"));
    let server = serve(&db, 10);
    let tail = feedctl(&["tail", &server.1]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["data"]["sku"], "2");
    assert_eq!(lines[2]["stream_version"], 3);
}

#[test]
fn verify_passes_on_a_feed_that_grows_during_the_walk() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    append_jsonl(&src, 300);
    let server = serve(&src, 10);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && rounds < 200 {
                append_jsonl(&src, 7);
                rounds += 1;
            }
            rounds
        })
    };
    let out = feedctl(&["verify", &server.1]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = appender.join().expect("appender");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(rounds > 0);
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(ok.contains("hash chain intact"), "{ok}");
}

#[test]
fn verify_names_the_first_missing_position_of_a_lost_tail() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    append_jsonl(&src, 250);
    let server = serve(&src, 10);
    assert!(feedctl(&["verify", &server.1]).status.success());
    // The tail lost, in a log whose chain was recorded before the bytes of sealed
    // pages were kept (with them, the origin would still serve the sealed pages as
    // they were published).
    sql(&src, "UPDATE feed_page_digests SET atom_zstd = NULL");
    sql(&src, "DELETE FROM feed_events WHERE position > 150");
    // A fresh server at the same address (nothing in memory) shows the loss.
    let listen = listen_address(&server.1);
    drop(server);
    let server = serve_on(&src, 10, &listen);
    let out = feedctl(&["verify", &server.1]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("history diverges at position 151")),
        "{err}"
    );
}

#[test]
fn verify_finds_rewritten_and_truncated_history_in_the_feed_and_in_a_replica() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    let mirror = dir.path().join("mirror.db").display().to_string();
    append_jsonl(&src, 250);
    let server = serve(&src, 50);
    // Serving the pages once records the hash chain.
    assert!(feedctl(&["verify", &server.1]).status.success());
    let out = feedctl(&["replay", &server.1, "--into", &mirror]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = feedctl(&["verify", &server.1, "--against", &mirror]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("holds the same events"));

    // A rewritten event in the replica: found at its exact position.
    sql(
        &mirror,
        "UPDATE feed_events SET data = '{\"i\":-1}' WHERE position = 77",
    );
    let out = feedctl(&["verify", &server.1, "--against", &mirror]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("differs at position 77 (data)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).ends_with("history diverges at position 77\n"));

    // The replica lost its tail.
    sql(&mirror, "DELETE FROM feed_events WHERE position > 200");
    let out = feedctl(&["verify", &server.1, "--against", &mirror]);
    assert!(
        stderr(&out).contains("no event at position 201"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).ends_with("history diverges at position 77\n"));

    // An event of a sealed page rewritten at the source: a restarted server at the
    // same address still serves the page as it was sealed (the bytes the chain
    // keeps), so the feed's history is intact, and the source no longer holds it.
    sql(
        &src,
        "UPDATE feed_events SET data = '{\"i\":-1}' WHERE position = 120",
    );
    let listen = listen_address(&server.1);
    drop(server);
    let server = serve_on(&src, 50, &listen);
    let out = feedctl(&["verify", &server.1]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = feedctl(&["verify", &server.1, "--against", &src]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("differs at position 120 (data)"),
        "{}",
        stderr(&out)
    );

    // The sealed page itself rewritten at the source: the next page's digest gives
    // it away.
    rewrite_page(&src, 101, r#"{"i":119}"#, r#"{"i":-1}"#);
    drop(server);
    let server = serve_on(&src, 50, &listen);
    let out = feedctl(&["verify", &server.1]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/feed/archive/101-150 was rewritten"), "{err}");
    assert!(
        err.ends_with("history diverges in the page starting at position 101\n"),
        "{err}"
    );
}

#[test]
fn a_replay_killed_with_sigkill_resumes_when_run_again_and_ends_equal() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src.db").display().to_string();
    let mirror = dir.path().join("mirror.db").display().to_string();
    append_jsonl(&src, 5000);
    let server = serve(&src, 50);
    let mut replay = Command::new(FEEDCTL)
        .args(["replay", &server.1, "--into", &mirror])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replay");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&mirror).exists() || checkpoint_of(&mirror) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replay made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    replay.kill().expect("SIGKILL");
    let _ = replay.wait();
    let at_kill = checkpoint_of(&mirror);
    assert!(at_kill < 5000, "the replay finished before it was killed");
    let out = feedctl(&["replay", &server.1, "--into", &mirror]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("mirrored up to position 5000"));
    let out = feedctl(&["verify", &server.1, "--against", &mirror]);
    assert!(out.status.success(), "{}", stderr(&out));
}
