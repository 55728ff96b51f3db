//! `cache-proxy`: the caching gateway as a standalone binary.
//!
//! ```text
//! cache-proxy --listen 127.0.0.1:8080 \
//!     --route /catalog=http://127.0.0.1:8081 --route /sales=http://127.0.0.1:8082 \
//!     --capacity 256MiB
//! cache-proxy --config /etc/cache-proxy.toml
//! ```

use anyhow::Context;
use cache_proxy::{Config, ConfigError, Proxy};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,cache_proxy=info")),
        )
        .init();
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::CommandLine(err)) => err.exit(),
        Err(err) => {
            eprintln!("cache-proxy: {err}");
            std::process::exit(2);
        }
    };
    // Every held long poll is an open connection: take all the descriptors the
    // hard limit allows rather than the soft default (often 1024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open file limit"),
    }
    let listen = config.listen;
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("{} -> {}", r.prefix, r.upstream))
        .collect();
    let proxy = Proxy::new(config).context("configuring the proxy")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%local, ?routes, "cache-proxy listening");
    println!("cache-proxy listening on http://{local}");
    cache_proxy::serve(listener, proxy, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("cache-proxy stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
