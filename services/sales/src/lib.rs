//! The sales service: it owns prices and orders. `PUT /prices/{product_id}` publishes
//! `PriceChanged`; `POST /orders` (AcceptOrder) prices each line, appends
//! `OrderAccepted` with the unit prices and the total, and answers 201. It follows the
//! catalog's feed into a replica of product names (subscription `sales<-catalog`),
//! which decides which products can be priced and ordered and names them in emails.
//!
//! The confirmation email is a reaction to sales' own `OrderAccepted`: sales follows
//! its own feed (subscription `sales<-sales`, the feed at its public base URL), and
//! that handler records the email in an outbox; a sender task sends it outside any
//! transaction and then appends `OrderConfirmationSent` (see `mailer` for the delivery
//! guarantees: the event exactly once, the email at least once). Placing an order
//! therefore never waits for a mail server, not even for the database lock a slow
//! one would otherwise hold.
//!
//! Layout:
//! - `replica`: the catalog replica and its handler.
//! - `prices`: the price resource.
//! - `orders`: the order resource (AcceptOrder and its validation).
//! - `mailer`: the mail transport (file or SMTP), the outbox and its sender.
//! - [`run`], [`rebuild`]: serving, and replaying the catalog replica from scratch.

use std::path::PathBuf;

use feed::db::{Database, MigrationSet};
use feed::store::EventLog;
use kit::Service;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod mailer;
mod orders;
mod prices;
mod replica;

/// The service's name: its database file, its feed's author and its index.
pub const NAME: &str = "sales";

/// The subscription that keeps the catalog replica.
const CATALOG_SUBSCRIPTION: &str = "sales<-catalog";
/// The subscription that sends confirmation emails (sales following itself).
const MAILER_SUBSCRIPTION: &str = "sales<-sales";

/// How sales is configured (flags and environment).
#[derive(Clone, clap::Parser)]
#[command(
    name = "sales",
    version,
    about = "The sales service: prices and orders, published as an Atom feed."
)]
pub struct Config {
    /// The flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
    /// The catalog's feed (its head), e.g. `http://127.0.0.1:8080/catalog/feed`.
    #[arg(long, global = true, required = false, env = "CATALOG_FEED")]
    pub catalog_feed: String,
    /// Send confirmation emails through this SMTP server (`smtp://host:port`,
    /// `smtps://user:pass@host`). Default: write each message as an .eml file into
    /// `<data-dir>/mail/`.
    #[arg(long, global = true, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The sender of confirmation emails.
    #[arg(
        long,
        global = true,
        env = "MAIL_FROM",
        default_value = "Retail Sales <sales@retail.example>"
    )]
    pub mail_from: String,
}

/// Written by hand so that a password in `--smtp-url` never reaches a log line.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("args", &self.args)
            .field("catalog_feed", &self.catalog_feed)
            .field("smtp_url", &self.smtp_url.as_deref().map(kit::redact_url))
            .field("mail_from", &self.mail_from)
            .finish()
    }
}

impl Config {
    /// A config with SQLite and the mail folder under `data_dir`, following
    /// `catalog_feed`.
    pub fn new(data_dir: impl Into<PathBuf>, catalog_feed: impl Into<String>) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
            catalog_feed: catalog_feed.into(),
            smtp_url: None,
            mail_from: "Retail Sales <sales@retail.example>".into(),
        }
    }
}

pub(crate) const MIGRATIONS: MigrationSet = MigrationSet {
    owner: "sales",
    sqlite: &[
        (
            1,
            "prices and orders",
            include_str!("../../../migrations/sales/sqlite/0001_init.sql"),
        ),
        (
            2,
            "mail outbox",
            include_str!("../../../migrations/sales/sqlite/0002_outbox.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "prices and orders",
            include_str!("../../../migrations/sales/postgres/0001_init.sql"),
        ),
        (
            2,
            "mail outbox",
            include_str!("../../../migrations/sales/postgres/0002_outbox.sql"),
        ),
    ],
};

/// Serves sales on `listener` until `shutdown` is cancelled, following the catalog
/// and its own feed meanwhile. The public base URL is `config.args.base_url`, or
/// `http://<listener address>`. Fails if a subscription stopped on a fatal feed error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let base_url = config.args.public_base_url(&listener)?;
    let mailer = mailer::Mailer::from_config(&config)?;
    let service = Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    // A child token, so a failing server also stops the subscriptions and the mailer,
    // and only them.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    service.subscriptions.spawn(
        &mut tasks,
        &service.db,
        CATALOG_SUBSCRIPTION,
        &config.catalog_feed,
        replica::CatalogReplica,
        stop.clone().cancelled_owned(),
    );
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    service.subscriptions.spawn(
        &mut tasks,
        &service.db,
        MAILER_SUBSCRIPTION,
        &format!("{base_url}/feed"),
        mailer::Confirmations::new(wake.clone()),
        stop.clone().cancelled_owned(),
    );
    tasks.spawn(mailer::send_confirmations(
        service.db.clone(),
        service.log.clone(),
        mailer,
        wake,
        stop.clone(),
    ));
    tracing::info!(%base_url, catalog_feed = %config.catalog_feed, "sales listening");
    let app = routes(&service);
    service.serve_until(listener, app, tasks, stop).await
}

/// The service's whole HTTP app around its routes.
fn routes(service: &Service) -> axum::Router {
    service.app(prices::router(service.clone()).merge(orders::router(service.clone())))
}

/// Sales' HTTP app (commands, feed, index) on the database `config` names, reached at
/// `base_url`, without its subscriptions and mailer: for tests that drive the routes
/// in-process.
pub async fn app(config: &Config, base_url: &str) -> anyhow::Result<axum::Router> {
    let service = Service::open(NAME, &config.args, &MIGRATIONS, base_url).await?;
    Ok(routes(&service))
}

/// Rebuilds the catalog replica: empties it and forgets its checkpoint in one
/// transaction, then replays the catalog's feed from position 1 until caught up,
/// showing a progress bar, and returns the last position applied. Run it while sales
/// is stopped. Orders, prices and sent confirmations are sales' own and stay.
pub async fn rebuild(config: &Config) -> anyhow::Result<u64> {
    if config.args.database_url.is_none() {
        std::fs::create_dir_all(&config.args.data_dir)?;
    }
    let db = Database::connect(&config.args.database_url_for(NAME)).await?;
    EventLog::open(db.clone()).await?;
    db.migrate(&MIGRATIONS).await?;
    kit::rebuild(
        &db,
        &["DELETE FROM sales_products"],
        &[CATALOG_SUBSCRIPTION],
    )
    .await?;
    let position = kit::replay(
        &db,
        CATALOG_SUBSCRIPTION,
        &config.catalog_feed,
        replica::CatalogReplica,
    )
    .await?;
    db.close().await;
    Ok(position)
}
