//! The all-in-one `retail` binary as a child process: what it prints, that the printed
//! commands work, that a bad flag is a one-line error, Ctrl-C, and SIGKILL.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::support::System;

/// The binary on a fixed port and data folder, its stdout read line by line.
struct Retail {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Retail {
    fn start(dir: &std::path::Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_retail"));
        command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &dir.display().to_string(),
                "--page-size",
                "20",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("RETAIL_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start retail");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdout: rx }
    }

    /// Everything printed up to and including the line containing `last`.
    fn printed_until(&self, last: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {last:?} printed; got:\n{text}"));
            text.push_str(&line);
            text.push('\n');
            if line.contains(last) {
                return text;
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `within`); its exit status.
    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "retail did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Retail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a printed shell command; its stdout.
fn sh(command: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("sh");
    c.arg("-c").arg(command);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run sh");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_startup_text_lists_what_runs_and_its_commands_work_as_printed() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = feed::testing::free_port();
    let gw = format!("http://127.0.0.1:{port}");
    let token = "tok-printout-7";
    let mut retail = Retail::start(
        dir.path(),
        port,
        &["--skip", "loyalty", "--api-token", token],
        &[],
    );
    let text = retail.printed_until("Ctrl-C stops everything");
    assert!(
        text.contains(&format!("retail system up at {gw}/")),
        "{text}"
    );
    for s in ["catalog", "sales", "billing", "fulfilment", "shipping"] {
        assert!(text.contains(&format!("{gw}/{s}/")), "{s}: {text}");
    }
    assert!(
        !text.contains("loyalty"),
        "a skipped service is not offered: {text}"
    );
    assert!(!text.contains(token), "the token is never printed: {text}");
    assert!(text.contains("export RETAIL_API_TOKEN="), "{text}");
    let has_curl = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_curl {
        eprintln!(
            "\n*** SKIPPED: running the printed commands needs curl (apt-get install curl) ***\n"
        );
        retail.interrupt();
        assert!(retail.wait(Duration::from_secs(20)).success());
        return;
    }
    let sys = System::attach_with(
        gw.clone(),
        Some(token.to_owned()),
        &["catalog", "sales", "billing", "fulfilment", "shipping"],
    )
    .await;

    // The three commands, exactly as printed (continuation lines joined), with the
    // token exported as the text says.
    let commands: Vec<String> = text
        .split("try it:\n")
        .nth(1)
        .expect("a try-it section")
        .split("\n\n")
        .next()
        .expect("commands")
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("P=") || l.starts_with("curl"))
        .map(str::to_owned)
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    let env = [("RETAIL_API_TOKEN", token)];
    let product = sh(&format!("{}; printf '%s' \"$P\"", commands[0]), &env);
    let product = product.lines().last().expect("the product id").to_owned();
    uuid::Uuid::parse_str(&product).unwrap_or_else(|e| panic!("{product:?}: {e}"));
    let with_p = |c: &str| format!("P={product}; {c}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = sh(&with_p(&commands[1]), &env);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "pricing never worked: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = sh(&with_p(&commands[2]), &env);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let order = answer
        .split("\"order_id\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the order id")
        .to_owned();
    sys.wait_for_event("shipping", "OrderShipped", &order).await;

    retail.interrupt();
    assert!(retail.wait(Duration::from_secs(20)).success());
}

#[test]
fn an_unknown_service_to_skip_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_retail"))
        .args(["--skip", "loyality", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run retail");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("loyality") && first.starts_with("error:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("loyalty"),
        "the valid names are offered: {stderr}"
    );
}

/// The checkpoints stored in a service's SQLite file.
async fn checkpoints(dir: &std::path::Path, service: &str) -> Vec<(String, i64)> {
    let db = feed::db::Database::connect(&dir.join(format!("{service}.db")).display().to_string())
        .await
        .expect("open");
    let rows =
        sqlx::query_as("SELECT subscription, position FROM feed_checkpoints ORDER BY subscription")
            .fetch_all(db.pool())
            .await
            .expect("checkpoints");
    db.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_stops_the_system_cleanly_and_a_restart_continues_from_the_checkpoints() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = feed::testing::free_port();
    let gw = format!("http://127.0.0.1:{port}");
    let mut retail = Retail::start(dir.path(), port, &[], &[]);
    let sys = System::attach(gw.clone()).await;
    let mug = sys.product("Mug", 300, 900).await;
    let first = sys.order("nia", &[(&mug, 1)]).await;
    sys.wait_for_event("shipping", "OrderShipped", &first).await;
    sys.wait_for("/loyalty/customers/nia", |c| c["shipped_orders"] == 1)
        .await;
    sys.settle().await;
    let mut heads = Vec::new();
    for s in retail::SERVICES {
        heads.push(sys.head_position(s).await);
    }

    let started = Instant::now();
    retail.interrupt();
    let status = retail.wait(Duration::from_secs(20));
    assert!(status.success(), "Ctrl-C exits with 0, got {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // What each service had applied is on disk: the producers' heads.
    let saved: Vec<(String, i64)> = {
        let mut all = Vec::new();
        for s in retail::SERVICES {
            all.extend(checkpoints(dir.path(), s).await);
        }
        all
    };
    let head_of = |s: &str| {
        heads[retail::SERVICES
            .iter()
            .position(|x| *x == s)
            .expect("a service")]
    };
    for (subscription, position) in &saved {
        let producer = subscription.split("<-").nth(1).expect("name<-producer");
        assert_eq!(*position as u64, head_of(producer), "{subscription}");
    }
    assert_eq!(saved.len(), 9, "{saved:?}");

    // Restarted on the same folder it goes on from there: nothing is applied twice,
    // and a new order flows as before.
    let mut retail = Retail::start(dir.path(), port, &[], &[]);
    sys.wait_ready().await;
    let second = sys.order("nia", &[(&mug, 2)]).await;
    sys.wait_for_event("shipping", "OrderShipped", &second)
        .await;
    let customer = sys
        .wait_for("/loyalty/customers/nia", |c| c["shipped_orders"] == 2)
        .await;
    assert_eq!(customer["shipped_total_cents"], 900 + 2 * 900);
    sys.settle().await;
    for (service, types) in [
        ("sales", &["OrderAccepted", "OrderConfirmationSent"][..]),
        ("billing", &["CustomerBilled"][..]),
        ("fulfilment", &["OrderReadyForShipping"][..]),
        ("shipping", &["OrderShipped"][..]),
    ] {
        let events = sys.events(service).await;
        for t in types {
            let n = events
                .iter()
                .filter(|e| e.event_type.as_str() == *t)
                .count();
            assert_eq!(n, 2, "{service}: {n} {t} for 2 orders");
        }
    }
    retail.interrupt();
    assert!(retail.wait(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_process_mid_flow_and_restarting_it_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = feed::testing::free_port();
    let retail = Retail::start(dir.path(), port, &[], &[]);
    let sys = System::attach(format!("http://127.0.0.1:{port}")).await;
    for c in ["kim", "lou"] {
        let (status, _) = sys
            .command(
                Method::PUT,
                &format!("/billing/customers/{c}"),
                json!({"credit_limit_cents": 100_000_000}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let mug = sys.product("Mug", 300, 900).await;
    let mut orders = Vec::new();
    for i in 0..30 {
        orders.push(
            sys.order(if i % 2 == 0 { "kim" } else { "lou" }, &[(&mug, 1)])
                .await,
        );
    }
    // Kill it while the orders are still flowing through billing, fulfilment, shipping.
    retail.kill();
    let in_flight = 30
        - checkpoints(dir.path(), "loyalty")
            .await
            .into_iter()
            .filter(|(name, _)| name == "loyalty<-shipping")
            .map(|(_, p)| p)
            .sum::<i64>();
    assert!(in_flight > 0, "everything had been counted before the kill");
    let retail = Retail::start(dir.path(), port, &[], &[]);
    sys.wait_ready().await;
    for i in 0..10 {
        orders.push(
            sys.order(if i % 2 == 0 { "kim" } else { "lou" }, &[(&mug, 2)])
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while sys.events("shipping").await.len() < orders.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every order shipped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sys.settle().await;
    crate::support::assert_nothing_duplicated(&sys, &orders, dir.path()).await;
    retail.kill();
}
