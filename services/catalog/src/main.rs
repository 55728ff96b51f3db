//! `catalog`: serve the catalog service, or rebuild its replicas (it has none).

use clap::{Parser, Subcommand};

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
            let listen = cli.config.args.listen;
            kit::serve_command("catalog", listen, |listener, shutdown| {
                catalog::run(cli.config, listener, shutdown)
            })
            .await
        }
        Command::Rebuild => {
            eprintln!(
                "catalog follows no feed: its products are its own, there is no replica to rebuild"
            );
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
        let flags = ["--data-dir", "elsewhere"];
        let before: Vec<&str> = std::iter::once("catalog")
            .chain(flags)
            .chain(["rebuild"])
            .collect();
        let after: Vec<&str> = ["catalog", "rebuild"].into_iter().chain(flags).collect();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).expect("parses");
            assert!(matches!(cli.command, Some(Command::Rebuild)), "{args:?}");
            assert_eq!(
                cli.config.args.data_dir,
                std::path::Path::new("elsewhere"),
                "{args:?}"
            );
        }
    }
}
