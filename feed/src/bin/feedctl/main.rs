//! `feedctl`: publish, append to, read, mirror and verify event feeds from the
//! command line.

mod commands;
mod verify;

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
    /// Walk a whole feed and check contiguity, links and sealed-page stability.
    Verify(verify::VerifyArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,feedctl=info,feed=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
