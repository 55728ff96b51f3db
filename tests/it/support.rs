use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The whole system running in this process on a port-0 gateway.
pub(crate) struct System {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
    token: Option<String>,
    services: Vec<&'static str>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl System {
    pub(crate) async fn start(config: retail::Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let token = config.api_token.clone();
        let services = config.mounted();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(retail::run(config, listener, shutdown.clone()));
        feed::install_crypto();
        let client = reqwest::Client::builder()
            .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let system = Self {
            url,
            client,
            token,
            services,
            shutdown,
            task: Some(task),
        };
        system.wait_ready().await;
        system
    }

    /// A system started elsewhere (another process) at `url`, with every service.
    pub(crate) async fn attach(url: String) -> Self {
        Self::attach_with(url, None, &retail::SERVICES).await
    }

    /// A system started elsewhere at `url` with `services`, whose commands need `token`.
    pub(crate) async fn attach_with(
        url: String,
        token: Option<String>,
        services: &[&'static str],
    ) -> Self {
        feed::install_crypto();
        let client = reqwest::Client::builder()
            .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let system = Self {
            url,
            client,
            token,
            services: services.to_vec(),
            shutdown: CancellationToken::new(),
            task: None,
        };
        system.wait_ready().await;
        system
    }

    /// Waits until every service answers through the gateway.
    pub(crate) async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for s in &self.services {
            loop {
                let ok = self
                    .client
                    .get(format!("{}/{s}/feed", self.url))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{s} did not come up"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// Sends a command with the configured token.
    pub(crate) async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("command");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub(crate) async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .header("accept", "application/json")
            .send()
            .await
            .expect("get");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// All events of a service's feed, oldest first (through the gateway).
    pub(crate) async fn events(&self, service: &str) -> Vec<feed::Event> {
        feed::testing::feed_events(&self.client, &format!("{}/{service}/feed", self.url)).await
    }

    pub(crate) async fn head_position(&self, service: &str) -> u64 {
        let (_, index) = self.get_json(&format!("/{service}/")).await;
        index["publishes"]["head_position"].as_u64().unwrap_or(0)
    }

    /// A GET with `headers`, as sent.
    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.url));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("get")
    }

    /// Waits until every subscription of every service has caught up with its feed
    /// and no feed grows any more: the system has settled.
    pub(crate) async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut last: Vec<u64> = Vec::new();
        loop {
            let mut heads = Vec::new();
            let mut all_caught_up = true;
            for s in &self.services {
                let (_, index) = self.get_json(&format!("/{s}/index.json")).await;
                heads.push(index["publishes"]["head_position"].as_u64().unwrap_or(0));
                for f in index["follows"].as_array().into_iter().flatten() {
                    all_caught_up &= f["caught_up"] == true && f["lag"] == 0;
                }
            }
            if all_caught_up && heads == last {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the system did not settle: heads {heads:?}"
            );
            last = heads;
            // Longer than the indexes' max-age at the gateway, so the next look is fresh.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }

    /// Polls a GET until `ok` accepts its JSON (or panics after 30 s).
    pub(crate) async fn wait_for(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get_json(path).await;
            if status == 200 && ok(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {path}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `service`'s feed holds `n` events of `event_type`; returns them.
    pub(crate) async fn wait_for_count(
        &self,
        service: &str,
        event_type: &str,
        n: usize,
    ) -> Vec<feed::Event> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found: Vec<feed::Event> = self
                .events(service)
                .await
                .into_iter()
                .filter(|e| e.event_type.as_str() == event_type)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{service} has {} {event_type}, not {n}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a service's feed holds an event of `event_type` for `order_id`.
    pub(crate) async fn wait_for_event(
        &self,
        service: &str,
        event_type: &str,
        order_id: &str,
    ) -> feed::Event {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self
                .events(service)
                .await
                .into_iter()
                .find(|e| e.event_type.as_str() == event_type && e.data["order_id"] == order_id)
            {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {event_type} for order {order_id} in {service}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adds a product and prices it; returns its id.
    pub(crate) async fn product(&self, name: &str, weight: u64, price: u64) -> String {
        let (status, body) = self
            .command(
                reqwest::Method::POST,
                "/catalog/products",
                json!({"name": name, "description": "test", "pictures": [], "weight_grams": weight, "size_mm": {"l": 10, "w": 10, "h": 10}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"]
            .as_str()
            .or_else(|| body["product_id"].as_str())
            .expect("product id")
            .to_owned();
        // Sales learns about products from the catalog feed: wait until it can price it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self
                .command(
                    reqwest::Method::PUT,
                    &format!("/sales/prices/{id}"),
                    json!({"unit_price_cents": price, "currency": "EUR"}),
                )
                .await;
            if status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sales never learned of {id}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        id
    }

    pub(crate) async fn order(&self, customer: &str, lines: &[(&str, u64)]) -> String {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let (status, body) = self
            .command(reqwest::Method::POST, "/sales/orders", json!({"customer_id": customer, "email": format!("{customer}@example.com"), "lines": lines}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["order_id"]
            .as_str()
            .or_else(|| body["id"].as_str())
            .expect("order id")
            .to_owned()
    }
}

/// What "nothing lost, nothing duplicated" means after a crash, for `orders` (every
/// order placed): every feed holds each event id once; per order exactly one
/// OrderAccepted, OrderConfirmationSent, CustomerBilled, OrderReadyForShipping and
/// OrderShipped; loyalty counted each shipped order exactly once, and published no
/// tier change twice.
///
/// The email is the one effect outside any database: it is sent *at least once* (a
/// crash after the send and before OrderConfirmationSent commits sends it again), so
/// an order may have more than one mail file, but every copy carries the same
/// Message-ID for the receiver to drop duplicates, while the event that records the
/// sending exists exactly once. `data_dir` holds the mail folder.
pub(crate) async fn assert_nothing_duplicated(
    sys: &System,
    orders: &[String],
    data_dir: &std::path::Path,
) {
    let mut wanted: Vec<String> = orders.to_vec();
    wanted.sort();
    let mut customers: Vec<String> = Vec::new();
    for service in retail::SERVICES {
        let events = sys.events(service).await;
        let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "{service} holds an event twice");
        let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{service}: gapless"
        );
        let per_order: &[&str] = match service {
            "sales" => &["OrderAccepted", "OrderConfirmationSent"],
            "billing" => &["CustomerBilled"],
            "fulfilment" => &["OrderReadyForShipping"],
            "shipping" => &["OrderShipped"],
            _ => &[],
        };
        for t in per_order {
            let mut of_type: Vec<String> = events
                .iter()
                .filter(|e| e.event_type.as_str() == *t)
                .map(|e| e.data["order_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            of_type.sort();
            assert_eq!(of_type, wanted, "{service}: one {t} per order");
        }
        if service == "sales" {
            for e in events
                .iter()
                .filter(|e| e.event_type.as_str() == "OrderAccepted")
            {
                let c = e.data["customer_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if !customers.contains(&c) {
                    customers.push(c);
                }
            }
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
            assert_eq!(
                changes.len(),
                n,
                "a tier change was published twice: {changes:?}"
            );
        }
    }
    let mut counted: Vec<String> = Vec::new();
    for c in &customers {
        let (_, record) = sys.get_json(&format!("/loyalty/customers/{c}")).await;
        let list = record["orders"].as_array().cloned().unwrap_or_default();
        assert_eq!(record["shipped_orders"], list.len(), "{c}: {record}");
        counted.extend(
            list.iter()
                .map(|o| o["order_id"].as_str().unwrap_or_default().to_owned()),
        );
    }
    counted.sort();
    assert_eq!(counted, wanted, "loyalty counts each order once");

    let mails: Vec<String> = std::fs::read_dir(data_dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    for order in orders {
        let copies: Vec<&String> = mails
            .iter()
            .filter(|m| m.contains(order.as_str()))
            .collect();
        assert!(!copies.is_empty(), "order {order} was never mailed");
        let id = format!("Message-ID: <order-{order}@retail.example>");
        assert!(
            copies.iter().all(|m| m.contains(&id)),
            "every copy of {order}'s mail has {id}"
        );
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
