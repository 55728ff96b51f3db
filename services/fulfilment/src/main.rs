//! `fulfilment`: the order fulfilment process manager, alone.

use clap::{Parser, Subcommand};
use fulfilment::Config;

#[derive(Debug, Parser)]
#[command(
    name = "fulfilment",
    version,
    about = "The order fulfilment process manager: follows sales and billing, publishes OrderReadyForShipping / OrderFulfilmentCancelled."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed, following sales and billing (the default).
    Serve,
    /// Forget the process state and checkpoints, replay sales and billing until caught up, exit.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listen = cli.config.args.listen;
            kit::serve_command("fulfilment", listen, |listener, shutdown| {
                fulfilment::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => fulfilment::rebuild(cli.config).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_may_stand_before_or_after_the_subcommand() {
        let flags = [
            "--data-dir",
            "elsewhere",
            "--sales-feed",
            "http://gw/sales/feed",
            "--billing-feed",
            "http://gw/billing/feed",
        ];
        let before: Vec<&str> = std::iter::once("fulfilment")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["fulfilment", "rebuild"].into_iter().chain(flags).collect();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).expect("parses");
            assert!(matches!(cli.command, Some(Command::Rebuild)), "{args:?}");
            assert_eq!(
                cli.config.args.data_dir,
                std::path::Path::new("elsewhere"),
                "{args:?}"
            );
            assert_eq!(cli.config.sales_feed, "http://gw/sales/feed", "{args:?}");
            assert_eq!(
                cli.config.billing_feed, "http://gw/billing/feed",
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_missing_feed_url_is_an_error() {
        assert!(Cli::try_parse_from(["fulfilment", "--data-dir", "d"]).is_err());
    }
}
