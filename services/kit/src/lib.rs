//! What every retail service shares, so that each service crate holds only its
//! domain: the command-line configuration ([`ServiceArgs`]), opening the database and
//! the event log ([`Service::open`]), the HTTP shell around a service's own routes
//! ([`Service::app`]: feeds, index, body limit, bearer token on commands), the
//! problem+json error type ([`ApiError`]), pages in HTML and JSON ([`page`]) and the subscriptions to other services'
//! feeds ([`Subscriptions`]).
//!
//! Layout:
//! - `config`: [`ServiceArgs`], the flags every service binary takes.
//! - `error`: [`ApiError`] and the JSON body extractor [`ApiJson`].
//! - `auth`: the bearer-token check for commands.
//! - `service`: [`Service`], [`Subscriptions`], the index page and `serve`.
//! - `replay`: [`replay`], catching up with a feed with a progress bar (rebuilds).
//! - [`page`]: pages served as HTML and JSON (negotiation, weak ETags, 304).
//! - `testing` (feature `testing`): hostile input for the services' command tests, and
//!   upstream feeds and services on real sockets for their integration tests.

mod auth;
mod config;
mod error;
pub mod page;
mod replay;
mod service;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{ServiceArgs, redact_url};
pub use error::{ApiError, ApiJson};
pub use replay::replay;
pub use service::{
    MAX_BODY_BYTES, Service, Subscriptions, init_tracing, rebuild, serve, serve_command,
    shutdown_signal,
};

pub use feed;
