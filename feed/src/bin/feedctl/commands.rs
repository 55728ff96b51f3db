//! serve, append, tail and replay.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use feed::event::{Event, EventType, NewEvent, StreamId};
use feed::server::{FeedConfig, FeedServer};
use feed::store::{EventLog, Expected};
use feed::subscriber::{Handler, Mirror, Progress, Subscriber, SubscriberConfig};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Database holding the log (postgres://..., sqlite:PATH or a file path).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Public base URL used in every link. Default: `http://<listen>`.
    #[arg(long, env = "BASE_URL")]
    base_url: Option<String>,
    /// Entries per sealed page (applies from the first unsealed page on).
    #[arg(long, env = "PAGE_SIZE")]
    page_size: Option<u64>,
    /// Name of the publisher, shown as the feed's author.
    #[arg(long, default_value = "feedctl")]
    name: String,
}

pub(crate) async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let log = EventLog::connect(&a.database_url).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let base = a.base_url.unwrap_or_else(|| format!("http://{addr}"));
    let mut config = FeedConfig::new(&base, &a.name);
    config.page_size = a.page_size;
    let server = FeedServer::new(log, config).await?;
    // Printed on stdout so scripts and tests can find the port when listening on :0.
    println!("serving {base}/feed on {addr}");
    std::io::stdout().flush()?;
    let app = server
        .router()
        .layer(tower_http::trace::TraceLayer::new_for_http());
    feed::server::serve(listener, app, server.shutdown_on(shutdown_signal())).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[derive(Debug, clap::Args)]
pub(crate) struct AppendArgs {
    /// Database holding the log.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The event's stream (aggregate), e.g. order-42.
    #[arg(long, required_unless_present = "jsonl", conflicts_with = "jsonl")]
    stream: Option<String>,
    /// The event type, e.g. OrderAccepted.
    #[arg(long = "type", required_unless_present = "jsonl")]
    event_type: Option<String>,
    /// The event data: a JSON object.
    #[arg(long, required_unless_present = "jsonl")]
    data: Option<String>,
    /// The event id (idempotency key). Default: a new UUID.
    #[arg(long)]
    id: Option<Uuid>,
    /// Append every line of FILE (`-` for stdin): {"stream", "type", "data", "id"?}.
    /// All lines are checked before anything is written, and all go in one
    /// transaction.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    stream: StreamId,
    #[serde(rename = "type")]
    event_type: EventType,
    data: serde_json::Value,
    id: Option<Uuid>,
    metadata: Option<serde_json::Value>,
}

pub(crate) async fn append(a: AppendArgs) -> anyhow::Result<ExitCode> {
    let events = match &a.jsonl {
        Some(path) => read_jsonl(path)?,
        None => {
            let stream = StreamId::parse(a.stream.unwrap_or_default())?;
            let event_type = EventType::parse(a.event_type.unwrap_or_default())?;
            let data: serde_json::Value =
                serde_json::from_str(&a.data.unwrap_or_default()).context("--data is not JSON")?;
            if !data.is_object() {
                bail!("--data must be a JSON object");
            }
            let mut e = NewEvent::new(stream, event_type, data);
            if let Some(id) = a.id {
                e = e.with_id(id);
            }
            vec![e]
        }
    };
    let log = EventLog::connect(&a.database_url).await?;
    let mut tx = log.begin().await?;
    let mut last = 0;
    for chunk in events.chunks(1000) {
        let positions = log.append(&mut tx, Expected::Any, chunk).await?;
        last = positions.last().copied().unwrap_or(last);
    }
    tx.commit().await?;
    if events.len() == 1 {
        println!("{last}");
    } else {
        eprintln!(
            "appended {} events; head is now {}",
            events.len(),
            log.head().await?
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_jsonl(path: &PathBuf) -> anyhow::Result<Vec<NewEvent>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).with_context(|| format!("line {}", i + 1))?;
        if !l.data.is_object() {
            bail!("line {}: data must be a JSON object", i + 1);
        }
        let mut e = NewEvent::new(l.stream, l.event_type, l.data);
        if let Some(id) = l.id {
            e = e.with_id(id);
        }
        if let Some(m) = l.metadata {
            e = e.with_metadata(m);
        }
        events.push(e);
    }
    Ok(events)
}

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The feed's head URL, e.g. http://127.0.0.1:8080/feed.
    feed_url: String,
    /// First position to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Keep following new events (long poll).
    #[arg(long, short)]
    follow: bool,
}

struct Print;

impl Handler for Print {
    fn handle<'a>(
        &'a self,
        _tx: &'a mut AnyConnection,
        e: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let line = serde_json::json!({
                "position": e.position,
                "id": e.id,
                "stream": e.stream,
                "stream_version": e.stream_version,
                "type": e.event_type,
                "occurred_at": feed::atom::format_time(&e.occurred_at),
                "data": e.data,
            });
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            Ok(())
        })
    }
}

pub(crate) async fn tail(a: TailArgs) -> anyhow::Result<ExitCode> {
    // The checkpoint lives in a private in-memory database: tail keeps no state.
    let db = feed::db::Database::connect("sqlite::memory:").await?;
    db.migrate(&feed::db::FEED_MIGRATIONS).await?;
    let name = "tail";
    if a.from > 1 {
        sqlx::query(
            "INSERT INTO feed_checkpoints (subscription, position, updated_at) VALUES ($1, $2, '')",
        )
        .bind(name)
        .bind((a.from - 1) as i64)
        .execute(db.pool())
        .await?;
    }
    let subscriber = Subscriber::new(SubscriberConfig::new(name, &a.feed_url), db, Print);
    follow_or_catch_up(subscriber, a.follow, |_| {}).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a subscriber until it has caught up (or forever with `follow`). Without
/// `follow`, failures are not retried: the first one is the command's error.
async fn follow_or_catch_up<H: Handler>(
    mut subscriber: Subscriber<H>,
    follow: bool,
    mut on_progress: impl FnMut(&Subscriber<H>),
) -> anyhow::Result<()> {
    if follow {
        subscriber.run(shutdown_signal()).await?;
        return Ok(());
    }
    loop {
        let step = subscriber.poll_once().await?;
        on_progress(&subscriber);
        if let Progress::CaughtUp { .. } = step {
            return Ok(());
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The feed's head URL.
    feed_url: String,
    /// The database to mirror into (created and migrated if empty).
    #[arg(long)]
    into: String,
    /// Keep mirroring new events after catching up.
    #[arg(long, short)]
    follow: bool,
}

pub(crate) async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let log = EventLog::connect(&a.into).await?;
    let db = log.database().clone();
    let name = format!("replay {}", a.feed_url);
    let subscriber = Subscriber::new(
        SubscriberConfig::new(name, &a.feed_url),
        db,
        Mirror(log.clone()),
    );
    let status = subscriber.status();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .expect("a valid progress template"),
    );
    let result = follow_or_catch_up(subscriber, a.follow, |_| {
        bar.set_length(status.head().max(status.checkpoint()));
        bar.set_position(status.checkpoint());
    })
    .await;
    bar.finish_and_clear();
    result?;
    eprintln!("mirrored up to position {}", log.head().await?);
    Ok(ExitCode::SUCCESS)
}
