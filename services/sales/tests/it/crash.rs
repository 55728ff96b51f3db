//! The real `sales` binary as its own process inside the whole system: the other five
//! services and the gateway run in this test (`retail::run` with sales `--external`),
//! sales runs as a child process behind the gateway, and is killed with SIGKILL while
//! orders are in flight, then restarted on the same data folder.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use feed::db::Database;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The sales binary on `port`, published under the gateway `gw`.
struct SalesProcess(Child);

impl SalesProcess {
    fn start(dir: &std::path::Path, port: u16, gw: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_sales"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", &dir.display().to_string()])
            .args(["--base-url", &format!("{gw}/sales")])
            .args(["--home-url", &format!("{gw}/")])
            .args(["--catalog-feed", &format!("{gw}/catalog/feed")])
            .args(["--page-size", "20"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sales binary");
        Self(child)
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SalesProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Gateway {
    url: String,
    http: reqwest::Client,
}

impl Gateway {
    async fn get(&self, path: &str) -> (u16, Value) {
        match self
            .http
            .get(format!("{}{path}", self.url))
            .header("accept", "application/json")
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("command");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Every event of `service`'s feed, oldest first (first page, then next-archive).
    async fn events(&self, service: &str) -> Vec<feed::Event> {
        feed::testing::feed_events(&self.http, &format!("{}/{service}/feed", self.url)).await
    }

    /// Waits until `ok` holds, or panics naming `what` after `within`.
    async fn until<F, Fut>(&self, what: &str, within: Duration, mut ok: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        while !ok().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every service's index answers through the gateway.
    async fn ready(&self) {
        for s in retail::SERVICES {
            self.until(
                &format!("{s} to answer"),
                Duration::from_secs(60),
                // A query no one asked for before: the gateway's cache cannot
                // answer it with the index it stored before a kill.
                || async {
                    let probe = uuid::Uuid::new_v4();
                    self.get(&format!("/{s}/?probe={probe}")).await.0 == 200
                },
            )
            .await;
        }
    }

    /// Every subscription caught up and no feed growing, twice in a row.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut last = Vec::new();
        loop {
            let mut heads = Vec::new();
            let mut caught_up = true;
            for s in retail::SERVICES {
                let (_, index) = self.get(&format!("/{s}/index.json")).await;
                heads.push(index["publishes"]["head_position"].as_u64().unwrap_or(0));
                for f in index["follows"].as_array().into_iter().flatten() {
                    caught_up &= f["caught_up"] == true && f["lag"] == 0;
                }
            }
            if caught_up && heads == last {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the system did not settle: {heads:?}"
            );
            last = heads;
            // Longer than the indexes' max-age at the gateway.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
}

async fn count(db_file: &std::path::Path, sql: &'static str) -> i64 {
    let db = Database::connect(&db_file.display().to_string())
        .await
        .expect("open");
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .expect("count");
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_sales_process_mid_flow_and_restarting_it_duplicates_nothing_anywhere() {
    feed::install_crypto();
    let dir = tempfile::tempdir().expect("tmp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gw = format!("http://{}", listener.local_addr().expect("address"));
    let sales_port = feed::testing::free_port();
    let sales_url = format!("http://127.0.0.1:{sales_port}");
    let mut config = retail::Config::new(dir.path());
    config.page_size = Some(20);
    config.external = vec![retail::External {
        name: "sales".into(),
        url: sales_url,
    }];
    let stop = CancellationToken::new();
    let system = tokio::spawn(retail::run(config, listener, stop.clone()));
    let sales = SalesProcess::start(dir.path(), sales_port, &gw);
    let gateway = Gateway {
        url: gw.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
    };
    gateway.ready().await;

    for c in ["kim", "lou"] {
        let (status, body) = gateway
            .send(
                reqwest::Method::PUT,
                &format!("/billing/customers/{c}"),
                json!({"credit_limit_cents": 100_000_000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, product) = gateway
        .send(
            reqwest::Method::POST,
            "/catalog/products",
            json!({"name": "Mug", "description": "", "pictures": [], "weight_grams": 300, "size_mm": {"l": 1, "w": 1, "h": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let mug = product["product_id"].as_str().expect("id").to_owned();
    gateway
        .until(
            "sales to price the mug",
            Duration::from_secs(30),
            || async {
                gateway
                    .send(
                        reqwest::Method::PUT,
                        &format!("/sales/prices/{mug}"),
                        json!({"unit_price_cents": 900, "currency": "EUR"}),
                    )
                    .await
                    .0
                    == 200
            },
        )
        .await;
    let place = |customer: &'static str, quantity: u64| {
        let gateway = &gateway;
        let mug = mug.clone();
        async move {
            let (status, body) = gateway
                .send(
                    reqwest::Method::POST,
                    "/sales/orders",
                    json!({"customer_id": customer, "email": format!("{customer}@example.com"),
                           "lines": [{"product_id": mug, "quantity": quantity}]}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body["order_id"].as_str().expect("order id").to_owned()
        }
    };
    let mut orders: Vec<String> = futures::future::join_all(
        (0..30).map(|i| place(if i % 2 == 0 { "kim" } else { "lou" }, 1)),
    )
    .await;

    // Kill sales at once, while the orders are on their way through the system.
    sales.kill();
    let shipped_at_kill = count(
        &dir.path().join("shipping.db"),
        "SELECT COUNT(*) FROM shipping_shipments WHERE status = 'shipped'",
    )
    .await;
    assert!(
        shipped_at_kill < 30,
        "every order had shipped before the kill: nothing was in flight"
    );

    let sales = SalesProcess::start(dir.path(), sales_port, &gw);
    gateway.ready().await;
    for i in 0..10 {
        orders.push(place(if i % 2 == 0 { "kim" } else { "lou" }, 2).await);
    }
    gateway
        .until("every order to ship", Duration::from_secs(120), || async {
            gateway.events("shipping").await.len() >= orders.len()
        })
        .await;
    gateway.settle().await;

    // Nothing duplicated, anywhere: every feed holds each event once, gapless; each
    // order has exactly one event of each kind; loyalty counted each order once and
    // published no tier change twice. For the email this means: the mail itself is
    // sent at least once (a kill between sending and recording sends it again on
    // restart, with the same Message-ID), while OrderConfirmationSent, the record
    // of it, exists exactly once per order.
    let mut wanted = orders.clone();
    wanted.sort();
    for service in retail::SERVICES {
        let events = gateway.events(service).await;
        let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "{service} holds an event twice");
        let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>());
        let kinds: &[&str] = match service {
            "sales" => &["OrderAccepted", "OrderConfirmationSent"],
            "billing" => &["CustomerBilled"],
            "fulfilment" => &["OrderReadyForShipping"],
            "shipping" => &["OrderShipped"],
            _ => &[],
        };
        for kind in kinds {
            let mut of_kind: Vec<String> = events
                .iter()
                .filter(|e| e.event_type.as_str() == *kind)
                .map(|e| e.data["order_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            of_kind.sort();
            assert_eq!(of_kind, wanted, "{service}: one {kind} per order");
        }
        if service == "loyalty" {
            let mut changes: Vec<String> = events
                .iter()
                .filter(|e| e.event_type.as_str() == "CustomerTierChanged")
                .map(|e| format!("{}/{}", e.data["customer_id"], e.data["tier"]))
                .collect();
            let n = changes.len();
            changes.sort();
            changes.dedup();
            assert_eq!(changes.len(), n, "a tier change was published twice");
            // 20 orders each: both customers went to silver and then to gold.
            assert_eq!(n, 4, "{changes:?}");
        }
    }
    let mut counted = Vec::new();
    for c in ["kim", "lou"] {
        let (_, record) = gateway.get(&format!("/loyalty/customers/{c}")).await;
        assert_eq!(record["shipped_orders"], 20, "{c}: {record}");
        assert_eq!(record["tier"], "gold", "{c}: {record}");
        counted.extend(
            record["orders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| o["order_id"].as_str().unwrap_or_default().to_owned()),
        );
    }
    counted.sort();
    assert_eq!(counted, wanted, "loyalty counts each order once");
    let mails: Vec<String> = crate::support::emails(&dir.path().join("mail"));
    for order in &orders {
        let copies: Vec<&String> = mails
            .iter()
            .filter(|m| m.contains(order.as_str()))
            .collect();
        assert!(!copies.is_empty(), "{order} was never mailed");
        let id = format!("Message-ID: <order-{order}@retail.example>");
        assert!(
            copies.iter().all(|m| m.contains(&id)),
            "{order}'s copies share {id}"
        );
    }

    drop(sales);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), system).await;
}
