//! `feedctl`: publish, append to, read, mirror and verify event feeds from the
//! command line.

mod commands;
mod verify;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

/// Publish, append to, tail, mirror and verify Atom event feeds.
#[derive(Debug, Parser)]
#[command(name = "feedctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish the log in a database as Atom feeds over HTTP.
    Serve(commands::ServeArgs),
    /// Append events to the log in a database.
    Append(commands::AppendArgs),
    /// Print a feed's events as JSON lines.
    Tail(commands::TailArgs),
    /// Mirror a feed into a local log (resumable, checkpointed).
    Replay(commands::ReplayArgs),
    /// Walk a whole feed and check contiguity, links, sealed-page stability and the
    /// hash chain; with --against, that a database holds the same log.
    Verify(verify::VerifyArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("feedctl: error: {}", usage_error(&e));
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Serve(a) => commands::serve(a).await,
        Command::Append(a) => commands::append(a).await,
        Command::Tail(a) => commands::tail(a).await,
        Command::Replay(a) => commands::replay(a).await,
        Command::Verify(a) => verify::verify(a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("feedctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A clap usage error as one line: its first paragraph without the `error:` prefix
/// (the usage and tips that follow are what `--help` is for).
fn usage_error(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required: serve, append, tail, replay or verify (see feedctl --help)"
            .to_owned();
    }
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("{line} (see feedctl --help)")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,feedctl=info,feed=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
