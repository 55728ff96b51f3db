//! `shipping`: shipments and packing slips, alone.

use clap::{Parser, Subcommand};
use shipping::Config;

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
            let listen = cli.config.args.listen;
            kit::serve_command("shipping", listen, |listener, shutdown| {
                shipping::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => shipping::rebuild(cli.config).await,
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
            "--fulfilment-feed",
            "http://gw/fulfilment/feed",
            "--catalog-feed",
            "http://gw/catalog/feed",
        ];
        let before: Vec<&str> = std::iter::once("shipping")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["shipping", "rebuild"].into_iter().chain(flags).collect();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).expect("parses");
            assert!(matches!(cli.command, Some(Command::Rebuild)), "{args:?}");
            assert_eq!(
                cli.config.args.data_dir,
                std::path::Path::new("elsewhere"),
                "{args:?}"
            );
            assert_eq!(
                cli.config.fulfilment_feed, "http://gw/fulfilment/feed",
                "{args:?}"
            );
            assert_eq!(
                cli.config.catalog_feed, "http://gw/catalog/feed",
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_missing_feed_url_is_an_error() {
        assert!(Cli::try_parse_from(["shipping", "--data-dir", "d"]).is_err());
    }
}
