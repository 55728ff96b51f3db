//! `TestCatalog`: a catalog served on a free port, and typed request helpers.

use std::time::Duration;

use feed::atom::ParsedFeed;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

pub(crate) struct TestCatalog {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) token: Option<String>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestCatalog {
    pub(crate) async fn start(api_token: Option<&str>) -> Self {
        Self::start_on(api_token, None).await
    }

    /// Starts the catalog on `database_url` (PostgreSQL), or a fresh SQLite file.
    pub(crate) async fn start_on(api_token: Option<&str>, database_url: Option<String>) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            kit::init_tracing();
        }
        feed::install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = catalog::Config::new(dir.path());
        config.args.api_token = api_token.map(str::to_owned);
        config.args.database_url = database_url;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(catalog::run(config, listener, shutdown.clone()));
        let client = reqwest::Client::builder()
            .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let app = Self {
            base,
            client,
            token: api_token.map(str::to_owned),
            shutdown,
            task,
            _dir: dir,
        };
        app.wait_until_up().await;
        app
    }

    async fn wait_until_up(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(format!("{}/", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("catalog did not come up at {}", self.base);
    }

    /// Sends `body` (raw text) with the configured token.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let token = self.token.clone();
        self.send_raw(method, path, body.map(|b| b.to_string()), token.as_deref())
            .await
    }

    /// Adds a product and returns its id.
    pub(crate) async fn add(&self, product: Value) -> String {
        let r = self.send(Method::POST, "/products", Some(product)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["product_id"]
            .as_str()
            .expect("product_id")
            .to_owned()
    }

    /// The head feed document, as Atom.
    pub(crate) async fn feed(&self) -> ParsedFeed {
        let resp = self
            .client
            .get(format!("{}/feed", self.base))
            .header("accept", "application/atom+xml")
            .send()
            .await
            .expect("feed");
        assert_eq!(resp.status(), StatusCode::OK);
        feed::atom::parse_feed(&resp.text().await.expect("text")).expect("valid Atom")
    }

    /// The last position in the feed.
    pub(crate) async fn head_position(&self) -> u64 {
        let f = self.feed().await;
        f.head_position
            .unwrap_or_else(|| f.entries.last().map_or(0, |e| e.position))
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        result
            .expect("catalog stops promptly")
            .expect("task")
            .expect("catalog ran cleanly");
    }
}

pub(crate) fn kettle() -> Value {
    serde_json::json!({
        "name": "Kettle",
        "description": "Boils water",
        "pictures": ["https://img.example.com/kettle.jpg"],
        "weight_grams": 1200,
        "size_mm": { "l": 200, "w": 150, "h": 250 }
    })
}
