//! The whole retail system in one process: the six services of the seed article,
//! each with its own SQLite database (or its own PostgreSQL database on one server),
//! behind the caching gateway.
//!
//! Every service listens on a private loopback port; the gateway (`cache-proxy`)
//! mounts them at `/catalog`, `/sales`, `/billing`, `/fulfilment`, `/shipping` and
//! `/loyalty` and serves a landing page at `/` and an order view at
//! `/orders/{order_id}`. Services subscribe to each other's feeds through the
//! gateway's public URLs, exactly as separate deployments would, so the gateway's
//! cache carries the feed reads. A service can also be left out (`--skip`) or run
//! elsewhere as its own binary (`--external name=url`: the gateway routes to it).
//!
//! Layout:
//! - this file: configuration, wiring, start-up and shutdown, the start-up text.
//! - `web`: the gateway's own pages: the landing page and the order view.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod web;

/// The services, in the order they start (producers before their followers).
pub const SERVICES: [&str; 6] = [
    "catalog",
    "sales",
    "billing",
    "fulfilment",
    "shipping",
    "loyalty",
];

/// A service run outside this process (`--external shipping=http://127.0.0.1:8095`):
/// the gateway routes its prefix there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// One of [`SERVICES`].
    pub name: String,
    /// Where it listens, e.g. `http://127.0.0.1:8095`.
    pub url: String,
}

impl std::str::FromStr for External {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=URL"))?;
        if !SERVICES.contains(&name) {
            return Err(format!(
                "{name:?} is no service; the services are {}",
                SERVICES.join(", ")
            ));
        }
        url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

/// Settings of the all-in-one system.
#[derive(Clone, clap::Parser)]
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
    /// `retail_sales` there (create them first: `createdb retail_sales` ...). A query
    /// string (`?sslmode=require`) applies to every database.
    #[arg(long, env = "POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Services not to start (e.g. `--skip loyalty` to start it late, alone).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SERVICES))]
    pub skip: Vec<String>,
    /// Services that run elsewhere, as `NAME=URL` (e.g. `shipping=http://127.0.0.1:8095`):
    /// not started here, but mounted on the gateway. Start such a service with
    /// `--base-url <gateway>/NAME` and the gateway's feed URLs.
    #[arg(long, value_delimiter = ',')]
    pub external: Vec<External>,
    /// Sales sends confirmation emails through this SMTP server (`smtp://host:port`,
    /// `smtps://user:pass@host`). Default: `.eml` files in `<data-dir>/mail/`.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The sender of confirmation emails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Retail Sales <sales@retail.example>"
    )]
    pub mail_from: String,
    /// Billing's credit limit for customers without an account, in cents.
    #[arg(long, env = "DEFAULT_CREDIT_LIMIT_CENTS", default_value_t = 100_000)]
    pub default_credit_limit_cents: u64,
}

/// Written by hand so that the token and passwords never reach a log line.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("cache_capacity", &self.cache_capacity)
            .field("page_size", &self.page_size)
            .field(
                "postgres_url",
                &self.postgres_url.as_deref().map(kit::redact_url),
            )
            .field("skip", &self.skip)
            .field("external", &self.external)
            .field("smtp_url", &self.smtp_url.as_deref().map(kit::redact_url))
            .field("mail_from", &self.mail_from)
            .field(
                "default_credit_limit_cents",
                &self.default_credit_limit_cents,
            )
            .finish()
    }
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
            external: Vec::new(),
            smtp_url: None,
            mail_from: "Retail Sales <sales@retail.example>".into(),
            default_credit_limit_cents: 100_000,
        }
    }

    /// The services the gateway mounts (every one not skipped), in start order.
    pub fn mounted(&self) -> Vec<&'static str> {
        SERVICES
            .into_iter()
            .filter(|s| !self.skip.iter().any(|k| k == s))
            .collect()
    }

    fn external(&self, name: &str) -> Option<&External> {
        self.external.iter().find(|e| e.name == name)
    }

    /// Refuses settings that name services that do not exist, or one both skipped
    /// and external (the command line checks this too; library callers may not).
    fn check(&self) -> anyhow::Result<()> {
        for name in &self.skip {
            anyhow::ensure!(
                SERVICES.contains(&name.as_str()),
                "--skip {name}: no such service; the services are {}",
                SERVICES.join(", ")
            );
        }
        for e in &self.external {
            anyhow::ensure!(
                SERVICES.contains(&e.name.as_str()),
                "--external {}: no such service",
                e.name
            );
            anyhow::ensure!(
                !self.skip.contains(&e.name),
                "{} is both skipped and external",
                e.name
            );
        }
        Ok(())
    }
}

/// The database URL of service `name` on the PostgreSQL `server`: the server's URL
/// with the path `/retail_<name>`, keeping credentials and any query string.
pub fn postgres_database_url(server: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server)
        .with_context(|| format!("--postgres-url {:?} is not a URL", kit::redact_url(server)))?;
    anyhow::ensure!(
        url.has_host(),
        "--postgres-url {:?} names no host",
        kit::redact_url(server)
    );
    url.set_path(&format!("/retail_{name}"));
    Ok(url.to_string())
}

/// The arguments every service gets: its own database under the data folder, its
/// public base URL on the gateway, the shared token, the landing page.
fn service_args(config: &Config, gateway: &str, name: &str) -> anyhow::Result<kit::ServiceArgs> {
    let mut args = kit::ServiceArgs::new(&config.data_dir);
    args.base_url = Some(format!("{gateway}/{name}"));
    args.home_url = Some(format!("{gateway}/"));
    args.api_token = config.api_token.clone();
    args.page_size = config.page_size;
    args.database_url = config
        .postgres_url
        .as_deref()
        .map(|server| postgres_database_url(server, name))
        .transpose()?;
    Ok(args)
}

/// Runs every service and the gateway on `listener` until `shutdown` is cancelled.
/// Returns the first error of any part (the others are then shut down too).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.check()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let gateway = format!("http://{}", listener.local_addr()?);
    let feed = |name: &str| format!("{gateway}/{name}/feed");
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut routes = Vec::new();
    for name in config.mounted() {
        if let Some(external) = config.external(name) {
            routes.push(cache_proxy::Route::new(&format!("/{name}"), &external.url)?);
            continue;
        }
        let service_listener = TcpListener::bind("127.0.0.1:0").await?;
        routes.push(cache_proxy::Route::new(
            &format!("/{name}"),
            &format!("http://{}", service_listener.local_addr()?),
        )?);
        let args = service_args(&config, &gateway, name)?;
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
                c.smtp_url = config.smtp_url.clone();
                c.mail_from = config.mail_from.clone();
                tasks.spawn(sales::run(c, service_listener, token));
            }
            "billing" => {
                let mut c = billing::Config::new(&config.data_dir, feed("sales"));
                c.args = args;
                c.default_credit_limit_cents = config.default_credit_limit_cents;
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
    let limits = proxy.config().serve_limits();
    let site = web::Site::new(&gateway, &config.mounted());
    let app = web::routes(site).merge(cache_proxy::router(proxy));
    let gateway_shutdown = shutdown.clone();
    tasks.spawn(async move {
        cache_proxy::serve_router(listener, app, limits, gateway_shutdown.cancelled_owned())
            .await?;
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

/// What `cargo run` prints once the gateway listens at `gateway`: the URLs of the
/// services it mounts and commands to place an order and watch it flow.
///
/// The commands are meant to be pasted into a POSIX shell as they are: the first one
/// keeps the new product's id in `$P` for the next two. With a token configured they
/// send `Authorization: Bearer $RETAIL_API_TOKEN`; `token_in_env` says whether the
/// token came from that variable (then the shell that started the system has it),
/// otherwise the text says to export it first. The token itself is never printed.
pub fn startup_text(config: &Config, gateway: &str, token_in_env: bool) -> String {
    let mounted = config.mounted();
    let has = |s: &str| mounted.contains(&s);
    let mut out = format!(
        "retail system up at {gateway}/  (data in {})\n\n",
        config.data_dir.display()
    );
    out.push_str(&format!(
        "services: {}\n",
        mounted
            .iter()
            .map(|s| format!("{gateway}/{s}/"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if let Some(first) = mounted.first() {
        out.push_str(&format!(
            "feeds:    {gateway}/<service>/feed   (open them in a browser, or: cargo run -p feed --bin feedctl -- tail --follow {gateway}/{first}/feed)\n"
        ));
    }
    if !(has("catalog") && has("sales")) {
        out.push_str("\n(the example order needs catalog and sales, which are not started here)\n");
        return out;
    }
    let auth = if config.api_token.is_some() {
        " -H \"Authorization: Bearer $RETAIL_API_TOKEN\""
    } else {
        ""
    };
    out.push_str("\ntry it:\n");
    if config.api_token.is_some() && !token_in_env {
        out.push_str("  export RETAIL_API_TOKEN=...   # the token given to --api-token: the commands send it\n");
    }
    out.push_str(&format!(
        r#"  P=$(curl -s{auth} -H 'content-type: application/json' {gateway}/catalog/products \
       -d '{{"name":"Teapot","description":"Cast iron, 1 l","pictures":[],"weight_grams":1200,"size_mm":{{"l":200,"w":150,"h":120}}}}' \
       | sed -E 's/.*"product_id":"([^"]+)".*/\1/'); echo "product $P"
  # sales learns of the product from the catalog's feed within a second, then:
  curl -si{auth} -X PUT -H 'content-type: application/json' {gateway}/sales/prices/$P -d '{{"unit_price_cents":2500,"currency":"EUR"}}'
  curl -si{auth} -H 'content-type: application/json' {gateway}/sales/orders \
       -d '{{"customer_id":"alice","email":"alice@example.com","lines":[{{"product_id":"'$P'","quantity":2}}]}}'
"#
    ));
    let flow: Vec<String> = [
        ("sales", "sales/feed"),
        ("billing", "billing/feed"),
        ("fulfilment", "fulfilment/feed"),
        ("shipping", "shipping/feed"),
        ("loyalty", "loyalty/customers/alice"),
    ]
    .into_iter()
    .filter(|(s, _)| has(s))
    .map(|(_, path)| format!("{gateway}/{path}"))
    .collect();
    out.push_str(&format!(
        "\nthen watch the order flow: {}\nor follow it on one page: {gateway}/orders/<order_id>\n",
        flow.join(" -> ")
    ));
    out.push_str("Ctrl-C stops everything; a restart continues from the checkpoints.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_its_own_database_on_the_postgresql_server() {
        for (server, want) in [
            (
                "postgres://postgres@127.0.0.1:5432",
                "postgres://postgres@127.0.0.1:5432/retail_sales",
            ),
            (
                "postgres://u:pw@db.example:6543/",
                "postgres://u:pw@db.example:6543/retail_sales",
            ),
            (
                "postgres://u@db/postgres?sslmode=require&application_name=retail",
                "postgres://u@db/retail_sales?sslmode=require&application_name=retail",
            ),
        ] {
            assert_eq!(
                postgres_database_url(server, "sales").expect("url"),
                want,
                "{server}"
            );
        }
        assert!(postgres_database_url("not a url", "sales").is_err());
    }

    #[test]
    fn externals_name_a_service_and_a_url() {
        let e: External = "shipping=http://127.0.0.1:8095/".parse().expect("parses");
        assert_eq!(
            e,
            External {
                name: "shipping".into(),
                url: "http://127.0.0.1:8095".into()
            }
        );
        assert!("warehouse=http://x".parse::<External>().is_err());
        assert!("shipping".parse::<External>().is_err());
        assert!("shipping=::".parse::<External>().is_err());
    }

    #[test]
    fn the_command_line_refuses_unknown_services_to_skip() {
        use clap::Parser as _;
        let config =
            Config::try_parse_from(["retail", "--skip", "loyalty,shipping"]).expect("parses");
        assert_eq!(config.skip, ["loyalty", "shipping"]);
        let err = Config::try_parse_from(["retail", "--skip", "loyality"])
            .expect_err("a typo is refused");
        assert!(err.to_string().contains("loyalty"), "{err}");
    }

    #[test]
    fn the_startup_text_lists_only_the_services_started_and_never_the_token() {
        let mut config = Config::new("data");
        config.skip = vec!["loyalty".into()];
        config.api_token = Some("tok-1f2e".into());
        let text = startup_text(&config, "http://127.0.0.1:8080", false);
        assert!(text.contains("http://127.0.0.1:8080/shipping/"), "{text}");
        assert!(!text.contains("/loyalty"), "{text}");
        assert!(!text.contains("tok-1f2e"), "{text}");
        assert!(text.contains("export RETAIL_API_TOKEN="), "{text}");
        assert!(text.contains("Bearer $RETAIL_API_TOKEN"), "{text}");
        let from_env = startup_text(&config, "http://127.0.0.1:8080", true);
        assert!(!from_env.contains("export RETAIL_API_TOKEN"), "{from_env}");

        config.skip = vec!["sales".into()];
        let text = startup_text(&config, "http://gw", true);
        assert!(!text.contains("curl"), "no example without sales: {text}");
    }
}
