//! The whole retail system in one process: the six services of the seed article,
//! each with its own SQLite database, behind the caching gateway.
//!
//! Every service listens on a private loopback port; the gateway (`cache-proxy`)
//! mounts them at `/catalog`, `/sales`, `/billing`, `/fulfilment`, `/shipping` and
//! `/loyalty` and serves a landing page at `/`. Services subscribe to each other's
//! feeds through the gateway's public URLs, exactly as separate deployments would,
//! so the gateway's cache carries the feed reads.
//!
//! Layout: this file only (configuration, wiring, start-up and shutdown).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The services, in the order they start (producers before their followers).
pub const SERVICES: [&str; 6] = [
    "catalog",
    "sales",
    "billing",
    "fulfilment",
    "shipping",
    "loyalty",
];

/// Settings of the all-in-one system.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "retail",
    version,
    about = "Run the whole retail system: six services behind a caching gateway."
)]
pub struct Config {
    /// Address of the gateway (the one URL users and services use).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folder for the services' SQLite files and the sales mailbox.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Bearer token required on commands (POST/PUT/DELETE) of every service.
    #[arg(long, env = "RETAIL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Bytes the gateway may keep in its cache, e.g. 256MiB.
    #[arg(long, env = "CACHE_CAPACITY", default_value = "256MiB")]
    pub cache_capacity: cache_proxy::ByteSize,
    /// Entries per sealed feed page for every service (applies to new pages).
    #[arg(long, env = "PAGE_SIZE")]
    pub page_size: Option<u64>,
    /// PostgreSQL server for every service instead of SQLite files, e.g.
    /// `postgres://postgres@127.0.0.1:5432`: service `sales` uses database
    /// `retail_sales` there (create them first: `createdb retail_sales` ...).
    #[arg(long, env = "POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Services not to start (e.g. `--skip loyalty` to start it late, alone).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

impl Config {
    /// Defaults with `data_dir`, for tests.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            api_token: None,
            cache_capacity: cache_proxy::ByteSize(64 * 1024 * 1024),
            page_size: None,
            postgres_url: None,
            skip: Vec::new(),
        }
    }
}

/// The arguments every service gets: its own database under the data folder, its
/// public base URL on the gateway, the shared token.
fn service_args(config: &Config, gateway: &str, name: &str) -> kit::ServiceArgs {
    let mut args = kit::ServiceArgs::new(&config.data_dir);
    args.base_url = Some(format!("{gateway}/{name}"));
    args.api_token = config.api_token.clone();
    args.page_size = config.page_size;
    args.database_url = config
        .postgres_url
        .as_ref()
        .map(|server| format!("{}/retail_{name}", server.trim_end_matches('/')));
    args
}

/// Runs every service and the gateway on `listener` until `shutdown` is cancelled.
/// Returns the first error of any part (the others are then shut down too).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let gateway = format!("http://{}", listener.local_addr()?);
    let feed = |name: &str| format!("{gateway}/{name}/feed");
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut routes = Vec::new();
    for name in SERVICES {
        if config.skip.iter().any(|s| s == name) {
            continue;
        }
        let service_listener = TcpListener::bind("127.0.0.1:0").await?;
        routes.push(cache_proxy::Route::new(
            &format!("/{name}"),
            &format!("http://{}", service_listener.local_addr()?),
        )?);
        let args = service_args(&config, &gateway, name);
        let token = shutdown.clone();
        match name {
            "catalog" => {
                tasks.spawn(catalog::run(
                    catalog::Config { args },
                    service_listener,
                    token,
                ));
            }
            "sales" => {
                let mut c = sales::Config::new(&config.data_dir, feed("catalog"));
                c.args = args;
                tasks.spawn(sales::run(c, service_listener, token));
            }
            "billing" => {
                let mut c = billing::Config::new(&config.data_dir, feed("sales"));
                c.args = args;
                tasks.spawn(billing::run(c, service_listener, token));
            }
            "fulfilment" => {
                let c = fulfilment::Config {
                    args,
                    sales_feed: feed("sales"),
                    billing_feed: feed("billing"),
                };
                tasks.spawn(fulfilment::run(c, service_listener, token));
            }
            "shipping" => {
                let c = shipping::Config {
                    args,
                    fulfilment_feed: feed("fulfilment"),
                    catalog_feed: feed("catalog"),
                };
                tasks.spawn(shipping::run(c, service_listener, token));
            }
            "loyalty" => {
                let c = loyalty::Config {
                    args,
                    sales_feed: feed("sales"),
                    shipping_feed: feed("shipping"),
                };
                tasks.spawn(loyalty::run(c, service_listener, token));
            }
            other => anyhow::bail!("unknown service {other}"),
        }
    }
    let mut proxy_config = cache_proxy::Config::new(routes);
    proxy_config.capacity = config.cache_capacity;
    // The services refuse bigger commands anyway; refusing them at the gateway answers
    // the client with problem+json before any byte goes upstream, instead of racing a
    // service that closes the connection on an early 413.
    proxy_config.max_body_size = cache_proxy::ByteSize(kit::MAX_BODY_BYTES as u64);
    let proxy = cache_proxy::Proxy::new(proxy_config)?;
    let services: Vec<(String, String)> = SERVICES
        .iter()
        .filter(|s| !config.skip.iter().any(|k| k == *s))
        .map(|s| (s.to_string(), format!("{gateway}/{s}")))
        .collect();
    let app = cache_proxy::router(proxy).route(
        "/",
        axum::routing::get(
            move |query: axum::extract::Query<LandingQuery>, headers: axum::http::HeaderMap| {
                landing(services.clone(), query.0, headers)
            },
        ),
    );
    let gateway_shutdown = shutdown.clone();
    tasks.spawn(async move {
        cache_proxy::serve_router(listener, app, gateway_shutdown.cancelled_owned()).await?;
        Ok(())
    });
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "a part of the system stopped");
            first_error.get_or_insert(e);
            shutdown.cancel();
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `?order=<id>` on the landing page: follow one order across the services.
#[derive(Debug, serde::Deserialize)]
struct LandingQuery {
    order: Option<String>,
}

/// The gateway's landing page: every service with its index and feed, and a form to
/// follow one order (its `order-<id>` stream) across all of them. HTML for browsers,
/// JSON for everyone else.
async fn landing(
    services: Vec<(String, String)>,
    query: LandingQuery,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let common = [
        (header::VARY, "Accept"),
        (header::CACHE_CONTROL, "max-age=60"),
    ];
    if feed::negotiate::negotiate_format(accept) == feed::negotiate::Format::Html {
        let page = feed::html::landing_page(&services, query.order.as_deref());
        return (common, axum::response::Html(page)).into_response();
    }
    let list = serde_json::json!({
        "services": services
            .iter()
            .map(|(name, base)| serde_json::json!({ "name": name, "index": base, "feed": format!("{base}/feed") }))
            .collect::<Vec<_>>(),
    });
    (common, axum::Json(list)).into_response()
}
