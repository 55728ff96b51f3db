//! The system under test: a catalog and a sales service on port-0 sockets, and typed
//! helpers to command them and to read their feeds, indexes and emails.

use std::path::{Path, PathBuf};

use feed::event::Event;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use feed::testing::{PATIENCE, eventually};

/// A reply: status, headers and the body as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A service task serving on a socket.
pub(crate) struct Running {
    pub(crate) base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub(crate) fn port(&self) -> u16 {
        self.base
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port")
    }

    /// Cancels the service and waits for it to stop cleanly.
    pub(crate) async fn stop(mut self) {
        self.halt().await;
    }

    /// Like [`Self::stop`], for a service that is replaced afterwards.
    pub(crate) async fn halt(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the service stops promptly")
            .expect("join")
            .expect("the service ran cleanly");
    }
}

pub(crate) async fn bind(port: u16) -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, base)
}

pub(crate) async fn start_catalog(dir: &Path) -> Running {
    init();
    let (listener, base) = bind(0).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(catalog::run(
        catalog::Config::new(dir),
        listener,
        shutdown.clone(),
    ));
    Running {
        base,
        shutdown,
        task,
    }
}

/// Starts sales on `port` (0: any) following `catalog_feed`.
pub(crate) async fn start_sales(config: sales::Config, port: u16) -> Running {
    init();
    let (listener, base) = bind(port).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sales::run(config, listener, shutdown.clone()));
    Running {
        base,
        shutdown,
        task,
    }
}

fn init() {
    if std::env::var_os("TEST_LOG").is_some() {
        kit::init_tracing();
    }
    feed::install_crypto();
}

/// A catalog and a sales service, each with its own data folder.
pub(crate) struct System {
    pub(crate) http: reqwest::Client,
    pub(crate) catalog: Running,
    pub(crate) sales: Running,
    pub(crate) sales_dir: tempfile::TempDir,
    _catalog_dir: tempfile::TempDir,
}

impl System {
    pub(crate) async fn start() -> Self {
        Self::start_configured(|_| {}).await
    }

    /// Starts the system with sales' config adjusted by `adjust`.
    pub(crate) async fn start_configured(adjust: impl FnOnce(&mut sales::Config)) -> Self {
        let catalog_dir = tempfile::tempdir().expect("dir");
        let sales_dir = tempfile::tempdir().expect("dir");
        let catalog = start_catalog(catalog_dir.path()).await;
        let mut config = sales::Config::new(sales_dir.path(), format!("{}/feed", catalog.base));
        adjust(&mut config);
        let sales = start_sales(config, 0).await;
        let http = reqwest::Client::builder()
            // No idle connections kept: the tests restart services on the same port,
            // and a connection to the stopped one, reused before its close is seen,
            // fails the request (hyper's IncompleteMessage).
            .pool_max_idle_per_host(0)
            .timeout(PATIENCE)
            .build()
            .expect("client");
        Self {
            http,
            catalog,
            sales,
            sales_dir,
            _catalog_dir: catalog_dir,
        }
    }

    pub(crate) fn sales_config(&self) -> sales::Config {
        sales::Config::new(self.sales_dir.path(), format!("{}/feed", self.catalog.base))
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

    /// Adds a product to the catalog and returns its id.
    pub(crate) async fn add_product(&self, name: &str) -> String {
        let body = json!({
            "name": name, "description": "", "pictures": [],
            "weight_grams": 500, "size_mm": { "l": 10, "w": 10, "h": 10 }
        });
        let r = self
            .send(
                Method::POST,
                &format!("{}/products", self.catalog.base),
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["product_id"]
            .as_str()
            .expect("product_id")
            .to_owned()
    }

    /// Renames a product in the catalog.
    pub(crate) async fn rename_product(&self, id: &str, name: &str) {
        let body = json!({
            "name": name, "description": "", "pictures": [],
            "weight_grams": 500, "size_mm": { "l": 10, "w": 10, "h": 10 }
        });
        let url = format!("{}/products/{id}", self.catalog.base);
        let r = self.send(Method::PUT, &url, Some(body.to_string())).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    /// Sets a price; answers as sales answers.
    pub(crate) async fn put_price(&self, product_id: &str, cents: i64, currency: &str) -> Reply {
        let body = json!({ "unit_price_cents": cents, "currency": currency });
        let url = format!("{}/prices/{product_id}", self.sales.base);
        self.send(Method::PUT, &url, Some(body.to_string())).await
    }

    /// Sets a price once sales' replica knows the product.
    pub(crate) async fn set_price(&self, product_id: &str, cents: i64, currency: &str) {
        eventually("the product to reach sales' replica", || async {
            let r = self.put_price(product_id, cents, currency).await;
            match r.status {
                StatusCode::OK => Some(()),
                StatusCode::NOT_FOUND => None,
                other => panic!("PUT /prices answered {other}: {:?}", r.body),
            }
        })
        .await;
    }

    pub(crate) async fn place_order(&self, customer: &str, lines: &[(&str, i64)]) -> Reply {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({ "product_id": p, "quantity": q }))
            .collect();
        let body = json!({ "customer_id": customer, "email": format!("{customer}@example.com"), "lines": lines });
        self.send(
            Method::POST,
            &format!("{}/orders", self.sales.base),
            Some(body.to_string()),
        )
        .await
    }

    /// Waits until sales' replica has applied everything the catalog published.
    pub(crate) async fn wait_for_replica(&self) {
        let head = index(&self.http, &self.catalog.base).await["publishes"]["head_position"]
            .as_u64()
            .expect("head");
        eventually("sales' catalog replica to catch up", || async {
            let idx = index(&self.http, &self.sales.base).await;
            let follows = idx["follows"].as_array().cloned().unwrap_or_default();
            let replica = follows
                .iter()
                .find(|f| f["subscription"] == "sales<-catalog")?;
            (replica["checkpoint"].as_u64()? >= head).then_some(())
        })
        .await;
    }

    pub(crate) fn mail_dir(&self) -> PathBuf {
        self.sales_dir.path().join("mail")
    }

    /// The email about `order_id`, once it has been written.
    pub(crate) async fn email_for(&self, order_id: &str) -> String {
        let dir = self.mail_dir();
        eventually("the confirmation email", || async {
            emails(&dir).into_iter().find(|m| m.contains(order_id))
        })
        .await
    }

    pub(crate) async fn stop(self) {
        self.sales.stop().await;
        self.catalog.stop().await;
    }
}

/// Every email written into `dir`, as text.
pub(crate) fn emails(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// A service's index (`/`).
pub(crate) async fn index(http: &reqwest::Client, base: &str) -> Value {
    let r = http.get(format!("{base}/")).send().await.expect("index");
    serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON index")
}

/// Every event in the feed of the service at `base`, oldest first.
pub(crate) async fn feed_events(http: &reqwest::Client, base: &str) -> Vec<Event> {
    feed::testing::feed_events(http, &format!("{base}/feed")).await
}

/// The events of one type in a service's feed.
pub(crate) async fn events_of(http: &reqwest::Client, base: &str, event_type: &str) -> Vec<Event> {
    feed_events(http, base)
        .await
        .into_iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .collect()
}
