//! The fulfilment service: a process manager. Per order it waits for two facts from
//! two services, `OrderAccepted` (sales) and `CustomerBilled` (billing), which may
//! arrive in either order, hours apart, and more than once; when it has both it
//! publishes `OrderReadyForShipping`, exactly once. `CustomerBillingFailed` cancels the
//! order instead (`OrderFulfilmentCancelled`, exactly once); a cancelled order never
//! becomes ready.
//!
//! The whole process state lives in the service's database (`fulfilment_orders`) and
//! is changed only inside the subscriber's transaction, together with the checkpoint
//! and the events published on a transition, so a restart resumes where it stopped
//! and a replayed event finds its effect already there. Published events carry ids
//! derived from the order id, so even a replay after a lost process state (a rebuild)
//! cannot publish twice.
//!
//! Layout:
//! - `contracts`: the events read and published, as serde types.
//! - `process`: the state machine, pure: stage + fact -> next stage + outcome.
//! - `store`: the process rows (claim, insert, update, find).
//! - `reactor`: the subscription handler that drives the process.
//! - `orders`: `GET /orders/{id}`, the process state as JSON.
//! - `replay`: `rebuild`, replaying the followed feeds with a progress bar.

mod contracts;
mod orders;
mod process;
mod reactor;
mod store;

use feed::db::MigrationSet;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The service's name: its database file, feed title and checkpoint prefix.
pub const NAME: &str = "fulfilment";

/// Checkpoint name of the subscription to sales.
const SALES_SUBSCRIPTION: &str = "fulfilment<-sales";
/// Checkpoint name of the subscription to billing.
const BILLING_SUBSCRIPTION: &str = "fulfilment<-billing";

const MIGRATIONS: MigrationSet = MigrationSet {
    owner: NAME,
    sqlite: &[(
        1,
        "init",
        include_str!("../../../migrations/fulfilment/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "init",
        include_str!("../../../migrations/fulfilment/postgres/0001_init.sql"),
    )],
};

/// The fulfilment service's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "fulfilment", about = "The order fulfilment process manager.")]
pub struct Config {
    /// Flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
    /// The sales service's feed (its `/feed` URL): OrderAccepted.
    #[arg(long, global = true, required = false, env = "SALES_FEED")]
    pub sales_feed: String,
    /// The billing service's feed (its `/feed` URL): CustomerBilled, CustomerBillingFailed.
    #[arg(long, global = true, required = false, env = "BILLING_FEED")]
    pub billing_feed: String,
}

impl Config {
    /// A configuration with the defaults: SQLite under `data_dir`, following the two
    /// feeds given.
    pub fn new(
        data_dir: impl Into<std::path::PathBuf>,
        sales_feed: impl Into<String>,
        billing_feed: impl Into<String>,
    ) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
            sales_feed: sales_feed.into(),
            billing_feed: billing_feed.into(),
        }
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled: follows sales and
/// billing, publishes its own feed, answers `GET /orders/{id}`. Returns an error if a
/// subscription stopped on a fatal feed error.
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
    let reactor = reactor::Reactor::new(service.log.clone());
    let mut tasks = JoinSet::new();
    for (name, url) in [
        (SALES_SUBSCRIPTION, &config.sales_feed),
        (BILLING_SUBSCRIPTION, &config.billing_feed),
    ] {
        service.subscriptions.spawn(
            &mut tasks,
            &service.db,
            name,
            url,
            reactor.clone(),
            stop.clone().cancelled_owned(),
        );
    }
    let app = service.app(orders::router(service.db.clone()));
    service.serve_until(listener, app, tasks, stop).await
}

/// Forgets the process state and both checkpoints, then replays sales and billing from
/// position 1 until caught up, showing progress. Events published during the replay
/// have the ids of the ones published the first time, so nothing is published twice.
pub async fn rebuild(config: Config) -> anyhow::Result<()> {
    let base_url = config
        .args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.args.listen));
    let service = kit::Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    kit::rebuild(
        &service.db,
        &["DELETE FROM fulfilment_orders"],
        &[SALES_SUBSCRIPTION, BILLING_SUBSCRIPTION],
    )
    .await?;
    let reactor = reactor::Reactor::new(service.log.clone());
    kit::replay(
        &service.db,
        SALES_SUBSCRIPTION,
        &config.sales_feed,
        reactor.clone(),
    )
    .await?;
    kit::replay(
        &service.db,
        BILLING_SUBSCRIPTION,
        &config.billing_feed,
        reactor,
    )
    .await?;
    service.db.close().await;
    Ok(())
}
