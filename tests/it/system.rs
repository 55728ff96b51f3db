use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::System;

fn config(dir: &tempfile::TempDir) -> retail::Config {
    let mut c = retail::Config::new(dir.path());
    c.page_size = Some(50);
    c
}

fn mails(dir: &tempfile::TempDir) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.path().join("mail")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_flows_from_sales_to_shipping_and_loyalty() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let teapot = sys.product("Cast-iron teapot", 1200, 2500).await;
    let cups = sys.product("Tea cups (set of 4)", 800, 1800).await;
    let order = sys.order("alice", &[(&teapot, 1), (&cups, 2)]).await;

    let accepted = sys.wait_for_event("sales", "OrderAccepted", &order).await;
    assert_eq!(accepted.data["total_cents"], 2500 + 2 * 1800);
    assert_eq!(accepted.stream.as_str(), format!("order-{order}"));
    sys.wait_for_event("billing", "CustomerBilled", &order)
        .await;
    sys.wait_for_event("fulfilment", "OrderReadyForShipping", &order)
        .await;
    let shipped = sys.wait_for_event("shipping", "OrderShipped", &order).await;
    assert_eq!(shipped.data["total_weight_grams"], 1200 + 2 * 800);

    let slip = sys
        .wait_for(&format!("/shipping/shipments/{order}"), |_| true)
        .await;
    let slip_text = slip.to_string();
    assert!(
        slip_text.contains("Cast-iron teapot") && slip_text.contains("Tea cups (set of 4)"),
        "{slip}"
    );
    assert!(
        slip_text.contains("2800"),
        "total weight on the slip: {slip}"
    );

    let tier = sys
        .wait_for("/loyalty/customers/alice", |c| {
            c["shipped_orders"] == 1 || c["tier"].is_string()
        })
        .await;
    assert!(tier["tier"].is_string(), "{tier}");

    sys.wait_for_event("sales", "OrderConfirmationSent", &order)
        .await;
    let mail = mails(&dir)
        .into_iter()
        .find(|m| m.contains("alice@example.com"))
        .expect("a confirmation email");
    assert!(
        mail.contains("Cast-iron teapot") && mail.contains("Tea cups"),
        "{mail}"
    );

    // The order can be followed across services by its stream.
    for service in ["sales", "billing", "fulfilment", "shipping"] {
        let r = sys
            .client
            .get(format!("{}/{service}/streams/order-{order}", sys.url))
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status(), 200, "{service} has no stream for the order");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_billing_failure_cancels_fulfilment_and_nothing_ships() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let (status, body) = sys
        .command(
            Method::PUT,
            "/billing/customers/bob",
            json!({"credit_limit_cents": 1000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let piano = sys.product("Piano", 250_000, 500_000).await;
    let order = sys.order("bob", &[(&piano, 1)]).await;
    let failed = sys
        .wait_for_event("billing", "CustomerBillingFailed", &order)
        .await;
    assert!(failed.data["reason"].is_string());
    sys.wait_for_event("fulfilment", "OrderFulfilmentCancelled", &order)
        .await;
    // Give shipping time to (wrongly) react, then check it did not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = sys.get_json(&format!("/shipping/shipments/{order}")).await;
    assert_eq!(status, 404);
    assert!(
        !sys.events("fulfilment")
            .await
            .iter()
            .any(|e| e.event_type.as_str() == "OrderReadyForShipping")
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_commands_get_problem_json_and_append_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    c.api_token = Some("s3cret".into());
    let sys = System::start(c).await;
    let product = sys.product("Kettle", 900, 3000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut heads = Vec::new();
    for s in retail::SERVICES {
        heads.push(sys.head_position(s).await);
    }
    let post = |token: Option<&'static str>, path: &'static str, body: String| {
        let mut r = sys
            .client
            .post(format!("{}{path}", sys.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let order = |lines: serde_json::Value| {
        json!({"customer_id": "carol", "email": "carol@example.com", "lines": lines}).to_string()
    };
    let cases: Vec<(Option<&'static str>, &'static str, String, u16)> = vec![
        (None, "/sales/orders", order(json!([{"product_id": product, "quantity": 1}])), 401),
        (Some("wrong"), "/sales/orders", order(json!([{"product_id": product, "quantity": 1}])), 401),
        (Some("s3cret"), "/sales/orders", "{not json".into(), 400),
        (Some("s3cret"), "/sales/orders", json!({"email": "x@example.com", "lines": []}).to_string(), 422),
        (Some("s3cret"), "/sales/orders", order(json!([{"product_id": "00000000-0000-0000-0000-000000000000", "quantity": 1}])), 422),
        (Some("s3cret"), "/sales/orders", order(json!([{"product_id": product, "quantity": -1}])), 422),
        (Some("s3cret"), "/catalog/products", json!({"name": "", "description": "", "pictures": [], "weight_grams": -5, "size_mm": {"l": 1, "w": 1, "h": 1}}).to_string(), 422),
        (Some("s3cret"), "/catalog/products", format!("{{\"name\":\"{}\"}}", "x".repeat(200_000)), 413),
    ];
    for (token, path, body, want) in cases {
        let r = post(token, path, body.clone()).await.expect("request");
        assert_eq!(
            r.status().as_u16(),
            want,
            "{path} {}",
            &body[..body.len().min(120)]
        );
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path} {want}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (s, before) in retail::SERVICES.iter().zip(heads) {
        assert_eq!(
            sys.head_position(s).await,
            before,
            "{s} appended after a rejected command"
        );
    }
    // Feeds and queries stay public.
    assert_eq!(
        sys.client
            .get(format!("{}/sales/feed", sys.url))
            .send()
            .await
            .expect("feed")
            .status(),
        200
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_loyalty_reaches_the_same_tiers_as_one_that_ran_from_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let cheap = sys.product("Pencil", 10, 500).await;
    let dear = sys.product("Desk", 30_000, 45_000).await;
    let customers = ["dan", "eve", "fay", "gus", "hal"];
    for c in customers {
        let (status, body) = sys
            .command(
                Method::PUT,
                &format!("/billing/customers/{c}"),
                json!({"credit_limit_cents": 1_000_000_000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut orders = Vec::new();
    for i in 0..200 {
        let customer = customers[i % customers.len()];
        let product = if i % 7 == 0 { &dear } else { &cheap };
        orders.push(sys.order(customer, &[(product, 1 + (i as u64 % 3))]).await);
    }
    let last = orders.last().expect("orders").clone();
    sys.wait_for_event("shipping", "OrderShipped", &last).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shipped = sys.events("shipping").await.len();
        let (_, index) = sys.get_json("/loyalty/").await;
        let caught_up = index["follows"].as_array().is_some_and(|f| {
            f.iter()
                .all(|s| s["caught_up"] == true && s["checkpoint"].as_u64() > Some(0))
        });
        if shipped == 200 && caught_up {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "system did not settle: {shipped} shipped, {index}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A loyalty started now, on an empty database, replays both feeds from position 1.
    let late_dir = tempfile::tempdir().expect("tmp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let late_url = format!("http://{}", listener.local_addr().expect("addr"));
    let late = loyalty::Config {
        args: kit::ServiceArgs::new(late_dir.path()),
        sales_feed: format!("{}/sales/feed", sys.url),
        shipping_feed: format!("{}/shipping/feed", sys.url),
    };
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(loyalty::run(late, listener, token.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let index: serde_json::Value = sys
            .client
            .get(format!("{late_url}/"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("index")
            .json()
            .await
            .expect("json");
        if index["follows"].as_array().is_some_and(|f| {
            f.len() == 2
                && f.iter()
                    .all(|s| s["caught_up"] == true && s["checkpoint"].as_u64() > Some(0))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "late loyalty did not catch up: {index}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for customer in customers {
        let (_, original) = sys
            .get_json(&format!("/loyalty/customers/{customer}"))
            .await;
        let replayed: serde_json::Value = sys
            .client
            .get(format!("{late_url}/customers/{customer}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(original["tier"], replayed["tier"], "{customer}");
        assert_eq!(
            original["shipped_orders"], replayed["shipped_orders"],
            "{customer}"
        );
        assert_eq!(
            original["shipped_total_cents"], replayed["shipped_total_cents"],
            "{customer}"
        );
    }
    token.cancel();
    let _ = task.await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_flow_runs_on_postgresql() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    for s in retail::SERVICES {
        pg.database(&format!("retail_{s}"));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    c.postgres_url = Some(format!("postgres://postgres@127.0.0.1:{}", pg.port()));
    let sys = System::start(c).await;
    let lamp = sys.product("Lamp", 700, 3900).await;
    let order = sys.order("ida", &[(&lamp, 3)]).await;
    let shipped = sys.wait_for_event("shipping", "OrderShipped", &order).await;
    assert_eq!(shipped.data["total_weight_grams"], 2100);
    sys.wait_for("/loyalty/customers/ida", |c| c["tier"].is_string())
        .await;
    sys.stop().await;
}

/// The all-in-one binary as a child process on a fixed port and data folder.
struct Process(std::process::Child);

impl Process {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_retail"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &dir.display().to_string(),
                "--page-size",
                "20",
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start retail");
        Self(child)
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown code runs.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_process_mid_flow_and_restarting_it_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = feed::testing::free_port();
    let proc = Process::start(dir.path(), port);
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
    proc.kill();
    let proc = Process::start(dir.path(), port);
    sys.wait_ready().await;
    for i in 0..10 {
        orders.push(
            sys.order(if i % 2 == 0 { "kim" } else { "lou" }, &[(&mug, 2)])
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let shipped = sys.events("shipping").await;
        if shipped.len() >= orders.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} orders shipped",
            shipped.len(),
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (service, types) in [
        ("sales", &["OrderAccepted", "OrderConfirmationSent"][..]),
        ("billing", &["CustomerBilled"][..]),
        ("fulfilment", &["OrderReadyForShipping"][..]),
        ("shipping", &["OrderShipped"][..]),
    ] {
        let events = sys.events(service).await;
        for t in types {
            let mut ids: Vec<String> = events
                .iter()
                .filter(|e| e.event_type.as_str() == *t)
                .map(|e| e.data["order_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            ids.sort();
            let n = ids.len();
            ids.dedup();
            assert_eq!(n, ids.len(), "{service}: duplicate {t}");
            assert_eq!(
                n,
                orders.len(),
                "{service}: {n} {t} for {} orders",
                orders.len()
            );
        }
    }
    drop(proc);
}
