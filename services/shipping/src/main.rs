//! `shipping`: shipments and packing slips, alone.

use clap::{Parser, Subcommand};
use shipping::Config;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "shipping",
    version,
    about = "Shipping: follows fulfilment and the catalog, ships released orders with packing slips, publishes OrderShipped."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed, following fulfilment and the catalog (the default).
    Serve,
    /// Drop the catalog replica and its checkpoint, replay until caught up, exit.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.config.args.listen).await?;
            tracing::info!(address = %listener.local_addr()?, "shipping listening");
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                kit::shutdown_signal().await;
                on_signal.cancel();
            });
            shipping::run(cli.config, listener, shutdown).await
        }
        Command::Rebuild => shipping::rebuild(cli.config).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
