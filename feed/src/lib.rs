//! Append-only event logs published as RFC 5005 Atom feeds, and checkpointed
//! subscribers that follow them: the machinery of pull-based integration between
//! services, without a broker.
//!
//! A service appends its events to its own [`EventLog`], in the same database
//! transaction as the state change they describe, and mounts the [`FeedServer`]'s
//! router to publish them: a head document (`/feed`), sealed archive pages that never
//! change and are cached for a year, single events and per-aggregate streams. Another
//! service follows that feed with a [`Subscriber`], whose [`Handler`] applies the
//! events inside a transaction of the follower's own database together with its
//! checkpoint, so a crash neither loses nor repeats an effect.
//!
//! ```no_run
//! use feed::{EventLog, Expected, FeedConfig, FeedServer, NewEvent, StreamId, EventType};
//! use feed::subscriber::{Handler, Subscriber, SubscriberConfig};
//! use futures::future::BoxFuture;
//!
//! # async fn example() -> anyhow::Result<()> {
//! // 1. Open the log (a file path means SQLite; postgres://... works the same).
//! let log = EventLog::connect("data/sales.db").await?;
//!
//! // 2. Change state and append the event in one transaction.
//! let mut tx = log.begin().await?;
//! sqlx::query("UPDATE sales_orders SET state = 'accepted' WHERE id = $1")
//!     .bind("42")
//!     .execute(&mut *tx)
//!     .await?;
//! let event = NewEvent::new(
//!     StreamId::parse("order-42")?,
//!     EventType::parse("OrderAccepted")?,
//!     serde_json::json!({ "order_id": "42", "total_cents": 2500 }),
//! );
//! log.append(&mut tx, Expected::NoStream, &[event]).await?;
//! tx.commit().await?;
//!
//! // 3. Publish the feed: merge this router into the service's own.
//! let feed = FeedServer::new(log.clone(), FeedConfig::new("http://127.0.0.1:8082", "sales")).await?;
//! let app: axum::Router = feed.router();
//! # let _ = app;
//!
//! // 4. Follow another service's feed into this database.
//! struct Billing;
//! impl Handler for Billing {
//!     fn handle<'a>(
//!         &'a self,
//!         tx: &'a mut sqlx::AnyConnection,
//!         event: &'a feed::Event,
//!     ) -> BoxFuture<'a, anyhow::Result<()>> {
//!         Box::pin(async move {
//!             if event.event_type.as_str() == "CustomerBilled" {
//!                 sqlx::query("INSERT INTO sales_paid (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
//!                     .bind(event.data["order_id"].as_str().unwrap_or_default())
//!                     .execute(&mut *tx)
//!                     .await?;
//!             }
//!             Ok(()) // unknown event types are skipped
//!         })
//!     }
//! }
//! let config = SubscriberConfig::new("sales<-billing", "http://127.0.0.1:8083/feed");
//! let subscriber = Subscriber::new(config, log.database().clone(), Billing);
//! tokio::spawn(subscriber.run(std::future::pending()));
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - [`db`]: connections (sqlx `Any`: SQLite and PostgreSQL) and embedded migrations.
//! - [`event`]: the event and its validated names ([`StreamId`], [`EventType`]).
//! - [`store`]: the event log: gapless commit-ordered positions, idempotent appends,
//!   optimistic concurrency, change notification for long polls.
//! - [`page`]: page arithmetic and RFC 5005 navigation (pure).
//! - [`atom`]: events to Atom documents and back; how the JSON travels.
//! - [`html`]: the same documents as HTML pages for browsers; the landing page.
//! - [`negotiate`]: Accept, Accept-Encoding, If-None-Match and Prefer parsing (pure).
//! - [`server`]: the axum routes with caching headers, compression, long polls, the
//!   hash chain of sealed pages, and limits against hostile clients; `serve`.
//! - [`subscriber`]: following a feed with checkpoints (compare-and-set, so several
//!   instances may run), backoff and verification (gaps, changed pages, the chain).
//! - `testing` (feature `testing`): throwaway PostgreSQL clusters, waiting and reading
//!   whole feeds, for tests.
//!
//! The `feedctl` binary serves, appends to, tails, mirrors and verifies feeds.

pub mod atom;
pub mod db;
mod direct;
pub mod event;
pub mod html;
pub mod negotiate;
pub mod page;
pub mod server;
pub mod store;
pub mod subscriber;

#[cfg(feature = "testing")]
pub mod testing;

pub use db::Database;
pub use event::{Event, EventType, NewEvent, Position, RawEvent, StreamId};
pub use server::{FeedConfig, FeedServer};
pub use store::{AppendError, EventLog, Expected, StoreError};
pub use subscriber::{Handler, Mirror, Progress, Subscriber, SubscriberConfig};

/// Entries per sealed page unless configured otherwise. Chosen from the replay
/// measurement in the README ("Page size").
pub const DEFAULT_PAGE_SIZE: u64 = 200;

/// Installs rustls' ring provider once (reqwest is built without a default one).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
