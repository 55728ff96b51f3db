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
    let mut child = Command::new(FEEDCTL)
        .args([
            "serve",
            "--database-url",
            db,
            "--listen",
            "127.0.0.1:0",
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
