//! The loyalty service: customer tiers earned by shipped orders. It follows sales
//! (`OrderAccepted`: each order's customer and total) and shipping (`OrderShipped`),
//! and publishes `CustomerTierChanged` when a customer moves up: bronze (default),
//! silver (3 shipped orders or 50 000 cents shipped), gold (10 orders or 200 000
//! cents).
//!
//! Loyalty is the late joiner: started with an empty database against a system with
//! history, it replays both feeds from position 1 and must end where a loyalty that
//! ran from the start ended, with the same tier changes. The two feeds are read by
//! independent subscriptions, so how their events interleave differs from run to run
//! (an `OrderShipped` may even be seen before the `OrderAccepted` of the same order).
//! The result is made independent of that: an order counts once both its total and
//! its shipment are known, and a customer's orders count in the order of shipping's
//! feed, waiting for a missing total rather than overtaking it (see `earn`).
//!
//! Layout:
//! - `contracts`: the events read and published, as serde types.
//! - `tier`: the tier rules, pure.
//! - `store`: orders and customers in SQL.
//! - `earn`: the subscription handler that counts orders and publishes tier changes.
//! - `customers`: `GET /customers/{id}`.
//! - `replay`: `rebuild`, replaying the followed feeds with a progress bar.

mod contracts;
mod customers;
mod earn;
mod store;
mod tier;

use feed::db::MigrationSet;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The service's name: its database file, feed title and checkpoint prefix.
pub const NAME: &str = "loyalty";

/// Checkpoint name of the subscription to sales.
const SALES_SUBSCRIPTION: &str = "loyalty<-sales";
/// Checkpoint name of the subscription to shipping.
const SHIPPING_SUBSCRIPTION: &str = "loyalty<-shipping";

const MIGRATIONS: MigrationSet = MigrationSet {
    owner: NAME,
    sqlite: &[(
        1,
        "init",
        include_str!("../../../migrations/loyalty/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "init",
        include_str!("../../../migrations/loyalty/postgres/0001_init.sql"),
    )],
};

/// The loyalty service's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "loyalty",
    about = "Customer loyalty tiers from shipped orders."
)]
pub struct Config {
    /// Flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
    /// The sales service's feed (its `/feed` URL): OrderAccepted.
    #[arg(long, global = true, required = false, env = "SALES_FEED")]
    pub sales_feed: String,
    /// The shipping service's feed (its `/feed` URL): OrderShipped.
    #[arg(long, global = true, required = false, env = "SHIPPING_FEED")]
    pub shipping_feed: String,
}

impl Config {
    /// A configuration with the defaults: SQLite under `data_dir`, following the two
    /// feeds given.
    pub fn new(
        data_dir: impl Into<std::path::PathBuf>,
        sales_feed: impl Into<String>,
        shipping_feed: impl Into<String>,
    ) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
            sales_feed: sales_feed.into(),
            shipping_feed: shipping_feed.into(),
        }
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled: follows sales and
/// shipping, publishes its own feed, answers `GET /customers/{id}`. Returns an error
/// if a subscription stopped on a fatal feed error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let base_url = match &config.args.base_url {
        Some(url) => url.clone(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let service = kit::Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    // A child token, so a failing server also stops the subscriptions.
    let stop = shutdown.child_token();
    let earner = earn::Earner::new(service.log.clone());
    let mut tasks = JoinSet::new();
    for (name, url) in [
        (SALES_SUBSCRIPTION, &config.sales_feed),
        (SHIPPING_SUBSCRIPTION, &config.shipping_feed),
    ] {
        service.subscriptions.spawn(
            &mut tasks,
            &service.db,
            name,
            url,
            earner.clone(),
            stop.clone().cancelled_owned(),
        );
    }
    let app = service.app(customers::router(service.db.clone()));
    service.serve_until(listener, app, tasks, stop).await
}

/// Forgets every order, customer and both checkpoints, then replays sales and shipping
/// from position 1 until caught up, showing progress. The tier changes published
/// again carry the ids of the first ones, so none appears twice in the feed.
pub async fn rebuild(config: Config) -> anyhow::Result<()> {
    let base_url = config
        .args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.args.listen));
    let service = kit::Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    kit::rebuild(
        &service.db,
        &[
            "DELETE FROM loyalty_orders",
            "DELETE FROM loyalty_customers",
        ],
        &[SALES_SUBSCRIPTION, SHIPPING_SUBSCRIPTION],
    )
    .await?;
    let earner = earn::Earner::new(service.log.clone());
    kit::replay(
        &service.db,
        SALES_SUBSCRIPTION,
        &config.sales_feed,
        earner.clone(),
    )
    .await?;
    kit::replay(
        &service.db,
        SHIPPING_SUBSCRIPTION,
        &config.shipping_feed,
        earner,
    )
    .await?;
    service.db.close().await;
    Ok(())
}
