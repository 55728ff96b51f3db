//! `loyalty`: customer loyalty tiers, alone.

use clap::{Parser, Subcommand};
use loyalty::Config;

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
            let listen = cli.config.args.listen;
            kit::serve_command("loyalty", listen, |listener, shutdown| {
                loyalty::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => loyalty::rebuild(cli.config).await,
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
            "--shipping-feed",
            "http://gw/shipping/feed",
        ];
        let before: Vec<&str> = std::iter::once("loyalty")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["loyalty", "rebuild"].into_iter().chain(flags).collect();
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
                cli.config.shipping_feed, "http://gw/shipping/feed",
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_missing_feed_url_is_an_error() {
        assert!(Cli::try_parse_from(["loyalty", "--data-dir", "d"]).is_err());
    }
}
