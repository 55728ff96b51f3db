//! The caching gateway in front of the services (see DESIGN.md section 7).
//!
//! `cache-proxy` routes path prefixes to upstream services and keeps their GET
//! responses in a moka cache bounded in bytes, following RFC 9111 (HTTP caching),
//! RFC 5861 (stale-while-revalidate, stale-if-error), RFC 8246 (immutable) and
//! RFC 9211 (`Cache-Status`). Each key has at most one upstream exchange in
//! flight (fill, revalidation with If-None-Match, or long poll), shared by every
//! request that wants it; a stale copy that stale-if-error covers is served when
//! the upstream fails or is slow. The cache key is the route, the normalised
//! path and query, the format (Atom or HTML, negotiated as the feed server
//! does) and the content-coding, and a cache fill sends upstream nothing but
//! that, so no client-supplied header can change what other clients get.
//! Successful unsafe requests invalidate what is stored for their target.
//!
//! Embedding: build a [`Proxy`] from a [`Config`], take [`router`] (an axum
//! `Router` whose fallback is the proxy, so more routes such as a landing page
//! can be added to it) and serve it with [`serve_router`], or call [`serve`].
//!
//! Layout:
//! - `config`: [`Config`], [`Route`], sizes and durations, the `--config` file
//! - `proxy`: the request path: routing, pass / fill / stale, forwarding;
//!   `proxy::poll` coalesced long polls, `proxy::invalidate` RFC 9111 4.4
//! - `flight`: one upstream exchange per key, however many requests wait
//! - `budget`: the bound on response bytes buffered outside the cache
//! - `target`: the request target's normalisation (the key is what is forwarded)
//! - `key`: the cache key, Accept and Accept-Encoding normalisation
//! - `entry`: a stored response, the 304 merge, the moka weigher and expiry
//! - `rules`: RFC 9111 / 5861 / 8246 rules as pure functions of `now`
//! - `cache_control`: the Cache-Control parser
//! - `status`: outcome enums and the `Cache-Status` header
//! - `metrics`: Prometheus counters at `/metrics`
//! - `error`: [`ProxyError`], [`Fault`] and problem+json responses

mod budget;
mod cache_control;
mod config;
mod entry;
mod error;
mod flight;
mod key;
mod metrics;
mod proxy;
mod rules;
mod status;
mod target;

/// Cases per property test: 2,000 (eight times proptest's default, which is
/// what a debug build on a loaded machine affords in seconds), or
/// `PROPTEST_CASES` for a longer run.
#[cfg(test)]
fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

use std::future::Future;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

pub use config::{ByteSize, Config, ConfigError, Route, RouteError, parse_duration};
pub use error::{Fault, ProxyError};
pub use proxy::{BuildError, Proxy};

/// The gateway as an axum router: `/metrics`, `/healthz` and, as fallback, the
/// proxy. Routes added to the returned router take precedence over the proxy.
pub fn router(proxy: Proxy) -> Router {
    let max_body = usize::try_from(proxy.config().max_body_size.0).unwrap_or(usize::MAX);
    Router::new()
        .route("/metrics", get(proxy::metrics))
        .route("/healthz", get(proxy::health))
        .fallback(proxy::handle)
        // Bodies without a Content-Length are cut off at the limit by the layer;
        // a declared length over the limit gets a problem+json 413 up front.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::from_fn_with_state(
            proxy.clone(),
            proxy::declared_body_limit,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(proxy)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = proxy.config().serve_limits();
    serve_router(listener, router(proxy), limits, shutdown).await
}

/// Serves a router built on [`router`] (with extra routes) until `shutdown`
/// resolves, as the feed server serves ([`feed::server::serve_with`], with
/// `limits` from [`Config::serve_limits`]); the proxy sees each client's address
/// for `X-Forwarded-For`.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    limits: feed::server::ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    feed::server::serve_with(listener, app, shutdown, limits).await
}
