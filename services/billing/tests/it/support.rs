//! The system under test: catalog -> sales -> billing on port-0 sockets, and typed
//! helpers to command them and read their feeds.

use std::future::Future;

use feed::event::Event;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use feed::testing::{PATIENCE, eventually};

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

/// A service task serving on a socket.
pub(crate) struct Running {
    pub(crate) base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub(crate) async fn start<F, Fut>(port: u16, run: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        if std::env::var_os("TEST_LOG").is_some() {
            kit::init_tracing();
        }
        feed::install_crypto();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, shutdown.clone()));
        Self {
            base,
            shutdown,
            task,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.base
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port")
    }

    /// Cancels the service and waits for it to stop cleanly.
    pub(crate) async fn halt(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the service stops promptly")
            .expect("join")
            .expect("the service ran cleanly");
    }
}

/// Where sales and billing keep their data (SQLite in the temp folder by default).
#[derive(Debug, Default)]
pub(crate) struct Databases {
    pub(crate) sales: Option<String>,
    pub(crate) billing: Option<String>,
}

/// catalog -> sales -> billing, each with its own data folder.
pub(crate) struct System {
    pub(crate) http: reqwest::Client,
    pub(crate) catalog: Running,
    pub(crate) sales: Running,
    pub(crate) billing: Running,
    billing_config: billing::Config,
    _dir: tempfile::TempDir,
}

impl System {
    /// Starts the three services; billing's default credit limit is `default_limit`.
    pub(crate) async fn start(default_limit: u64, databases: Databases) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let catalog_config = catalog::Config::new(dir.path().join("catalog"));
        let catalog = Running::start(0, |l, s| catalog::run(catalog_config, l, s)).await;
        let mut sales_config =
            sales::Config::new(dir.path().join("sales"), format!("{}/feed", catalog.base));
        sales_config.args.database_url = databases.sales;
        let sales = Running::start(0, |l, s| sales::run(sales_config, l, s)).await;
        let mut billing_config =
            billing::Config::new(dir.path().join("billing"), format!("{}/feed", sales.base));
        billing_config.args.database_url = databases.billing;
        billing_config.default_credit_limit_cents = default_limit;
        let config = billing_config.clone();
        let billing = Running::start(0, |l, s| billing::run(config, l, s)).await;
        Self {
            http: reqwest::Client::builder()
                // No idle connections kept: the tests restart services on the same port,
                // and a connection to the stopped one, reused before its close is seen,
                // fails the request (hyper's IncompleteMessage).
                .pool_max_idle_per_host(0)
                .timeout(PATIENCE)
                .build()
                .expect("client"),
            catalog,
            sales,
            billing,
            billing_config,
            _dir: dir,
        }
    }

    pub(crate) fn billing_config(&self) -> billing::Config {
        self.billing_config.clone()
    }

    /// Restarts billing on its old address and data.
    pub(crate) async fn restart_billing(&mut self) {
        self.billing.halt().await;
        self.start_billing_again().await;
    }

    /// Starts billing (halted before) again on its old address and data.
    pub(crate) async fn start_billing_again(&mut self) {
        let config = self.billing_config();
        self.billing = Running::start(self.billing.port(), |l, s| billing::run(config, l, s)).await;
    }

    pub(crate) async fn send(&self, method: Method, url: &str, body: Option<String>) -> Reply {
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Adds a product priced at `cents` EUR and returns its id once sales can sell it.
    pub(crate) async fn priced_product(&self, name: &str, cents: i64) -> String {
        let body = json!({
            "name": name, "pictures": [], "weight_grams": 100, "size_mm": { "l": 1, "w": 1, "h": 1 }
        });
        let r = self
            .send(
                Method::POST,
                &format!("{}/products", self.catalog.base),
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let id = r.body["product_id"].as_str().expect("id").to_owned();
        let url = format!("{}/prices/{id}", self.sales.base);
        let price = json!({ "unit_price_cents": cents, "currency": "EUR" }).to_string();
        eventually("the product to reach sales' replica", || async {
            let r = self.send(Method::PUT, &url, Some(price.clone())).await;
            match r.status {
                StatusCode::OK => Some(()),
                StatusCode::NOT_FOUND => None,
                other => panic!("PUT /prices answered {other}: {:?}", r.body),
            }
        })
        .await;
        id
    }

    /// Places an order and returns its id.
    pub(crate) async fn order(&self, customer: &str, product_id: &str, quantity: i64) -> String {
        let body = json!({
            "customer_id": customer, "email": format!("{customer}@example.com"),
            "lines": [{ "product_id": product_id, "quantity": quantity }]
        });
        let r = self
            .send(
                Method::POST,
                &format!("{}/orders", self.sales.base),
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["order_id"].as_str().expect("order_id").to_owned()
    }

    pub(crate) async fn set_limit(&self, customer: &str, body: Value) -> Reply {
        let url = format!("{}/customers/{customer}", self.billing.base);
        self.send(Method::PUT, &url, Some(body.to_string())).await
    }

    pub(crate) async fn account(&self, customer: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("{}/customers/{customer}", self.billing.base),
            None,
        )
        .await
    }

    /// Billing's decision events (billed or failed), oldest first.
    pub(crate) async fn decisions(&self) -> Vec<Event> {
        feed_events(&self.http, &self.billing.base)
            .await
            .into_iter()
            .filter(|e| {
                matches!(
                    e.event_type.as_str(),
                    "CustomerBilled" | "CustomerBillingFailed"
                )
            })
            .collect()
    }

    /// Waits until billing has decided `n` orders, and returns the decisions.
    pub(crate) async fn wait_for_decisions(&self, n: usize) -> Vec<Event> {
        eventually(&format!("{n} billing decisions"), || async {
            let d = self.decisions().await;
            (d.len() >= n).then_some(d)
        })
        .await
    }

    pub(crate) async fn stop(mut self) {
        self.billing.halt().await;
        self.sales.halt().await;
        self.catalog.halt().await;
    }
}

/// Every event in the feed of the service at `base`, oldest first.
pub(crate) async fn feed_events(http: &reqwest::Client, base: &str) -> Vec<Event> {
    feed::testing::feed_events(http, &format!("{base}/feed")).await
}
