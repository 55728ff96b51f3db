//! `sales`: serve the sales service, or rebuild its catalog replica.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sales",
    version,
    about = "The sales service: prices and orders, published as an Atom feed."
)]
struct Cli {
    #[command(flatten)]
    config: sales::Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed, follow the catalog, send confirmations (default).
    Serve,
    /// Drop the catalog replica and its checkpoint, replay the catalog's feed from
    /// position 1 until caught up, and exit. Stop the service first.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.config.args.listen).await?;
            eprintln!("sales listening on http://{}", listener.local_addr()?);
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                kit::shutdown_signal().await;
                on_signal.cancel();
            });
            sales::run(cli.config, listener, shutdown).await
        }
        Command::Rebuild => {
            let position = sales::rebuild(&cli.config).await?;
            eprintln!("sales: replayed up to position {position}");
            Ok(())
        }
    }
}
