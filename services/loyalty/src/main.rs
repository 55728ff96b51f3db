//! `loyalty`: customer loyalty tiers, alone.

use clap::{Parser, Subcommand};
use loyalty::Config;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "loyalty",
    version,
    about = "Loyalty: follows sales and shipping, keeps customer tiers, publishes CustomerTierChanged."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed, following sales and shipping (the default).
    Serve,
    /// Forget all tiers and checkpoints, replay sales and shipping from position 1 until caught up, exit.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.config.args.listen).await?;
            tracing::info!(address = %listener.local_addr()?, "loyalty listening");
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                kit::shutdown_signal().await;
                on_signal.cancel();
            });
            loyalty::run(cli.config, listener, shutdown).await
        }
        Command::Rebuild => loyalty::rebuild(cli.config).await,
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
