//! `billing`: serve the billing service, or replay sales' feed.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "billing",
    version,
    about = "The billing service: customer accounts and charges, published as an Atom feed."
)]
struct Cli {
    #[command(flatten)]
    config: billing::Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the feed, and bill sales' orders (the default).
    Serve,
    /// Forget the checkpoint on sales' feed and replay it from position 1 until caught
    /// up (orders already decided stay decided), then exit. Stop the service first.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listen = cli.config.args.listen;
            kit::serve_command("billing", listen, |listener, shutdown| {
                billing::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => {
            let position = billing::rebuild(&cli.config).await?;
            eprintln!("billing: replayed up to position {position}");
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
            "--sales-feed",
            "http://gw/sales/feed",
        ];
        let before: Vec<&str> = std::iter::once("billing")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["billing", "rebuild"].into_iter().chain(flags).collect();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).expect("parses");
            assert!(matches!(cli.command, Some(Command::Rebuild)), "{args:?}");
            assert_eq!(
                cli.config.args.data_dir,
                std::path::Path::new("elsewhere"),
                "{args:?}"
            );
            assert_eq!(cli.config.sales_feed, "http://gw/sales/feed", "{args:?}");
        }
    }

    #[test]
    fn a_missing_feed_url_is_an_error() {
        assert!(Cli::try_parse_from(["billing", "--data-dir", "d"]).is_err());
    }
}
