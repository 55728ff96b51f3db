//! `sales`: serve the sales service, or rebuild its catalog replica.

use clap::{Parser, Subcommand};

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
            let listen = cli.config.args.listen;
            kit::serve_command("sales", listen, |listener, shutdown| {
                sales::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => {
            let position = sales::rebuild(&cli.config).await?;
            eprintln!("sales: replayed up to position {position}");
            Ok(())
        }
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
            "--catalog-feed",
            "http://gw/catalog/feed",
        ];
        let before: Vec<&str> = std::iter::once("sales")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["sales", "rebuild"].into_iter().chain(flags).collect();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).expect("parses");
            assert!(matches!(cli.command, Some(Command::Rebuild)), "{args:?}");
            assert_eq!(
                cli.config.args.data_dir,
                std::path::Path::new("elsewhere"),
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
        assert!(Cli::try_parse_from(["sales", "--data-dir", "d"]).is_err());
    }
}
