//! The billing service: it owns customer accounts (credit limits) and the charges on
//! them. It follows sales' feed (subscription `billing<-sales`): each
//! `OrderAccepted` is decided exactly once. If the customer's charged total plus the
//! order's total stays within the credit limit (customers without an account get
//! `--default-credit-limit-cents`), the charge is recorded and `CustomerBilled`
//! published; otherwise `CustomerBillingFailed` with the reason. Both go to the
//! order's stream `order-<order_id>`. `PUT /customers/{id}` sets a credit limit and
//! publishes `CreditLimitSet` on `customer-<id>` (an event outside the shared
//! contract; subscribers skip types they do not know).
//!
//! Amounts are compared in cents whatever their currency: the retail system sells in
//! one currency at a time (sales keeps each order in a single currency).
//!
//! Layout:
//! - `customers`: the account resource (`PUT`/`GET /customers/{id}`).
//! - `charging`: the `OrderAccepted` handler and its decision rule.
//! - [`run`], [`rebuild`]: serving, and replaying sales' feed from position 1.

use std::path::PathBuf;

use feed::db::{Database, MigrationSet};
use feed::store::EventLog;
use kit::Service;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod charging;
mod customers;

/// The service's name: its database file, its feed's author and its index.
pub const NAME: &str = "billing";

/// The subscription that bills accepted orders.
const SALES_SUBSCRIPTION: &str = "billing<-sales";

/// How billing is configured (flags and environment).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "billing",
    version,
    about = "The billing service: customer accounts and charges, published as an Atom feed."
)]
pub struct Config {
    /// The flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
    /// Sales' feed (its head), e.g. `http://127.0.0.1:8080/sales/feed`.
    #[arg(long, global = true, required = false, env = "SALES_FEED")]
    pub sales_feed: String,
    /// The credit limit of customers without an account, in cents.
    #[arg(
        long,
        global = true,
        env = "DEFAULT_CREDIT_LIMIT_CENTS",
        default_value_t = 100_000
    )]
    pub default_credit_limit_cents: u64,
}

impl Config {
    /// A config with SQLite under `data_dir`, following `sales_feed`, with the default
    /// credit limit of 100000 cents.
    pub fn new(data_dir: impl Into<PathBuf>, sales_feed: impl Into<String>) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
            sales_feed: sales_feed.into(),
            default_credit_limit_cents: 100_000,
        }
    }

    fn default_limit(&self) -> i64 {
        i64::try_from(self.default_credit_limit_cents).unwrap_or(i64::MAX)
    }
}

pub(crate) const MIGRATIONS: MigrationSet = MigrationSet {
    owner: "billing",
    sqlite: &[(
        1,
        "accounts and charges",
        include_str!("../../../migrations/billing/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "accounts and charges",
        include_str!("../../../migrations/billing/postgres/0001_init.sql"),
    )],
};

/// Serves billing on `listener` until `shutdown` is cancelled, billing sales' orders
/// meanwhile. The public base URL is `config.args.base_url`, or
/// `http://<listener address>`. Fails if the subscription stopped on a fatal feed error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let base_url = config.args.public_base_url(&listener)?;
    let service = Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    // A child token, so a failing server also stops the subscription, and only it.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    service.subscriptions.spawn(
        &mut tasks,
        &service.db,
        SALES_SUBSCRIPTION,
        &config.sales_feed,
        charging::Charging::new(service.log.clone(), config.default_limit()),
        stop.clone().cancelled_owned(),
    );
    tracing::info!(%base_url, sales_feed = %config.sales_feed, "billing listening");
    let app = routes(&service, &config);
    service.serve_until(listener, app, tasks, stop).await
}

/// The service's whole HTTP app around its routes.
fn routes(service: &Service, config: &Config) -> axum::Router {
    service.app(customers::router(customers::Accounts {
        service: service.clone(),
        default_limit: config.default_limit(),
    }))
}

/// Billing's HTTP app (commands, feed, index) on the database `config` names, reached
/// at `base_url`, without its subscription: for tests that drive the routes in-process.
pub async fn app(config: &Config, base_url: &str) -> anyhow::Result<axum::Router> {
    let service = Service::open(NAME, &config.args, &MIGRATIONS, base_url).await?;
    Ok(routes(&service, config))
}

/// Replays sales' feed from position 1: forgets the `billing<-sales` checkpoint and
/// follows the feed until caught up, showing a progress bar, and returns the last
/// position applied. Decisions already made stay (they were published and cannot be
/// taken back), so replayed orders are no-ops and only orders never seen are billed.
/// Run it while billing is stopped.
pub async fn rebuild(config: &Config) -> anyhow::Result<u64> {
    if config.args.database_url.is_none() {
        std::fs::create_dir_all(&config.args.data_dir)?;
    }
    let db = Database::connect(&config.args.database_url_for(NAME)).await?;
    let log = EventLog::open(db.clone()).await?;
    db.migrate(&MIGRATIONS).await?;
    kit::rebuild(&db, &[], &[SALES_SUBSCRIPTION]).await?;
    let handler = charging::Charging::new(log, config.default_limit());
    let position = kit::replay(&db, SALES_SUBSCRIPTION, &config.sales_feed, handler).await?;
    db.close().await;
    Ok(position)
}
