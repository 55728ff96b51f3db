//! `catalog`: serve the catalog service, or rebuild its replicas (it has none).

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "catalog",
    version,
    about = "The catalog service: products, published as an Atom feed."
)]
struct Cli {
    #[command(flatten)]
    config: catalog::Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed (the default).
    Serve,
    /// Rebuild replicas of other services' feeds. The catalog follows no feed, so
    /// there is nothing to rebuild; the command says so and exits.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.config.args.listen).await?;
            eprintln!("catalog listening on http://{}", listener.local_addr()?);
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                kit::shutdown_signal().await;
                on_signal.cancel();
            });
            catalog::run(cli.config, listener, shutdown).await
        }
        Command::Rebuild => {
            eprintln!(
                "catalog follows no feed: its products are its own, there is no replica to rebuild"
            );
            Ok(())
        }
    }
}
