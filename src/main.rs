//! The all-in-one entry point. For now it publishes a demo log under `./data` with a
//! few events, so `cargo run --release` shows a feed; the retail services replace it.

use anyhow::Context;
use clap::Parser;
use feed::event::{EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};

/// Serve a demo event feed.
#[derive(Debug, Parser)]
struct Config {
    /// Folder for the demo database.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    data_dir: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    std::fs::create_dir_all(&config.data_dir)?;
    let log = EventLog::connect(&config.data_dir.join("demo.db").display().to_string()).await?;
    if log.head().await? == 0 {
        let mut tx = log.begin().await?;
        for i in 1..=5 {
            let stream = StreamId::parse(format!("order-{i}"))?;
            let event = NewEvent::new(
                stream,
                EventType::parse("OrderAccepted")?,
                serde_json::json!({ "order": i }),
            );
            log.append(&mut tx, Expected::NoStream, &[event]).await?;
        }
        tx.commit().await?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = FeedServer::new(log, FeedConfig::new(&base, "demo")).await?;
    println!("demo feed at {base}/feed  (try: curl -s {base}/feed)");
    feed::server::serve(listener, server.router(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
