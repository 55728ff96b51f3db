//! The shipping service: ships the orders fulfilment releases. It follows
//! fulfilment (`OrderReadyForShipping`) and the catalog (`ProductAdded` /
//! `ProductUpdated` / `ProductDeleted`, kept as a replica of names and weights). For
//! each released order it makes a shipment with a packing slip (product names,
//! quantities, total weight = sum of unit weight x quantity) and publishes
//! `OrderShipped` exactly once, in the transaction that records the shipment.
//!
//! The two feeds are independent, so a released order may name a product the catalog
//! subscription has not reached yet. Such a shipment waits as `pending`, and the
//! catalog event that brings the last missing product completes it (see `shipper`):
//! the slip is always built from real catalog data, and one slow product never holds
//! up the shipments behind it.
//!
//! Layout:
//! - `contracts`: the events read and published, as serde types.
//! - `slip`: the packing slip, pure: lines + products -> slip or the missing products.
//! - `store`: the catalog replica and the shipment rows.
//! - `shipper`: the subscription handler for both feeds.
//! - `shipments`: `GET /shipments/{order_id}`.
//! - `replay`: `rebuild`, replaying the followed feeds with a progress bar.

mod contracts;
mod shipments;
mod shipper;
mod slip;
mod store;

use feed::db::MigrationSet;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The service's name: its database file, feed title and checkpoint prefix.
pub const NAME: &str = "shipping";

/// Checkpoint name of the subscription to fulfilment.
const FULFILMENT_SUBSCRIPTION: &str = "shipping<-fulfilment";
/// Checkpoint name of the subscription to the catalog.
const CATALOG_SUBSCRIPTION: &str = "shipping<-catalog";

const MIGRATIONS: MigrationSet = MigrationSet {
    owner: NAME,
    sqlite: &[(
        1,
        "init",
        include_str!("../../../migrations/shipping/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "init",
        include_str!("../../../migrations/shipping/postgres/0001_init.sql"),
    )],
};

/// The shipping service's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "shipping", about = "Ships released orders with packing slips.")]
pub struct Config {
    /// Flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
    /// The fulfilment service's feed (its `/feed` URL): OrderReadyForShipping.
    #[arg(long, global = true, required = false, env = "FULFILMENT_FEED")]
    pub fulfilment_feed: String,
    /// The catalog service's feed (its `/feed` URL): ProductAdded/Updated/Deleted.
    #[arg(long, global = true, required = false, env = "CATALOG_FEED")]
    pub catalog_feed: String,
}

impl Config {
    /// A configuration with the defaults: SQLite under `data_dir`, following the two
    /// feeds given.
    pub fn new(
        data_dir: impl Into<std::path::PathBuf>,
        fulfilment_feed: impl Into<String>,
        catalog_feed: impl Into<String>,
    ) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
            fulfilment_feed: fulfilment_feed.into(),
            catalog_feed: catalog_feed.into(),
        }
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled: follows fulfilment
/// and the catalog, publishes its own feed, answers `GET /shipments/{order_id}`.
/// Returns an error if a subscription stopped on a fatal feed error.
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
    let shipper = shipper::Shipper::new(service.log.clone());
    let mut tasks = JoinSet::new();
    for (name, url) in [
        (CATALOG_SUBSCRIPTION, &config.catalog_feed),
        (FULFILMENT_SUBSCRIPTION, &config.fulfilment_feed),
    ] {
        service.subscriptions.spawn(
            &mut tasks,
            &service.db,
            name,
            url,
            shipper.clone(),
            stop.clone().cancelled_owned(),
        );
    }
    let app = service.app(shipments::router(service.db.clone()));
    service.serve_until(listener, app, tasks, stop).await
}

/// Drops the catalog replica and its checkpoint, replays the catalog from position 1
/// (completing any shipment still pending), then catches up with fulfilment, showing
/// progress. Shipments are shipping's own records, not a replica: they stay.
pub async fn rebuild(config: Config) -> anyhow::Result<()> {
    let base_url = config
        .args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.args.listen));
    let service = kit::Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    kit::rebuild(
        &service.db,
        &["DELETE FROM shipping_products"],
        &[CATALOG_SUBSCRIPTION],
    )
    .await?;
    let shipper = shipper::Shipper::new(service.log.clone());
    kit::replay(
        &service.db,
        CATALOG_SUBSCRIPTION,
        &config.catalog_feed,
        shipper.clone(),
    )
    .await?;
    kit::replay(
        &service.db,
        FULFILMENT_SUBSCRIPTION,
        &config.fulfilment_feed,
        shipper,
    )
    .await?;
    service.db.close().await;
    Ok(())
}
