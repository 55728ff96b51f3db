//! `cargo run --release`: the whole retail system on one machine.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let config = retail::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let gateway = format!("http://{}", listener.local_addr()?);
    // `$RETAIL_API_TOKEN` in the printed commands works when the token came from it.
    let token_in_env =
        config.api_token.is_some() && std::env::var("RETAIL_API_TOKEN").ok() == config.api_token;
    print!("{}", retail::startup_text(&config, &gateway, token_in_env));
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        kit::shutdown_signal().await;
        on_signal.cancel();
    });
    retail::run(config, listener, shutdown).await
}
