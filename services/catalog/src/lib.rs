//! The catalog service: it owns the products (name, description, pictures, weight,
//! size) and publishes every change to them as `ProductAdded`, `ProductUpdated` or
//! `ProductDeleted` on its feed, appended in the same transaction as the change. It
//! follows no other feed. Each product's events form the stream `product-<id>`, and
//! the stream's version is the product's version: `GET` answers it as the ETag, and a
//! `PUT`/`DELETE` with an `If-Match` that names another version is a 412 (a racing
//! writer that got in first is a 409). `ProductDeleted` carries the product as it was.
//!
//! Layout:
//! - `products`: the product resource: validation, storage, events and routes.
//! - [`run`]: opens the database, serves the routes plus the feed until shutdown;
//!   [`app`]: the same routes, unserved, for in-process tests.

use feed::db::MigrationSet;
use kit::Service;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod products;

/// The service's name: its database file, its feed's author and its index.
pub const NAME: &str = "catalog";

/// How the catalog is configured (flags and environment).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "catalog",
    version,
    about = "The catalog service: products, published as an Atom feed."
)]
pub struct Config {
    /// The flags every service takes.
    #[command(flatten)]
    pub args: kit::ServiceArgs,
}

impl Config {
    /// A config with SQLite under `data_dir` and everything else defaulted.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            args: kit::ServiceArgs::new(data_dir),
        }
    }
}

pub(crate) const MIGRATIONS: MigrationSet = MigrationSet {
    owner: "catalog",
    sqlite: &[(
        1,
        "products",
        include_str!("../../../migrations/catalog/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "products",
        include_str!("../../../migrations/catalog/postgres/0001_init.sql"),
    )],
};

/// Serves the catalog on `listener` until `shutdown` is cancelled. The public base URL
/// is `config.args.base_url`, or `http://<listener address>`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let base_url = config.args.public_base_url(&listener)?;
    let service = Service::open(NAME, &config.args, &MIGRATIONS, &base_url).await?;
    let app = service.app(products::router(service.clone()));
    tracing::info!(%base_url, "catalog listening");
    service
        .serve_until(listener, app, JoinSet::new(), shutdown.child_token())
        .await
}

/// The catalog's whole HTTP app (commands, feed, index) on the database `config`
/// names, reached at `base_url`. [`run`] serves it; tests drive it in-process.
pub async fn app(config: &Config, base_url: &str) -> anyhow::Result<axum::Router> {
    let service = Service::open(NAME, &config.args, &MIGRATIONS, base_url).await?;
    Ok(service.app(products::router(service.clone())))
}
