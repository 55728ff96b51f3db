//! The servers under test, each in a child process: this binary re-executed with
//! [`ROLE_VAR`] set. A child prints `LISTEN <addr>` once it accepts connections and
//! exits when its stdin closes, so it never outlives the benchmark.
//!
//! - `origin`: a feed server ([`feed::FeedServer`]) on the SQLite log `BENCH_DB`, with
//!   links from `BENCH_BASE` (default: its own address). It counts the requests it
//!   serves (`GET /_bench/requests`) and appends `n` events on
//!   `POST /_bench/append?n=N`, in its own process, like a service's command would.
//! - `proxy`: the cache-proxy with one route, `BENCH_PREFIX` (default `/o`) to
//!   `BENCH_UPSTREAM`, and a capacity of `BENCH_CAPACITY` bytes.
//! - `blob`: `GET /blob/{n}`: `BENCH_BLOB_BYTES` bytes, cacheable for an hour.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use feed::{EventLog, EventType, Expected, FeedConfig, FeedServer, NewEvent, StreamId};

/// The environment variable naming the role of a child process.
pub(crate) const ROLE_VAR: &str = "BENCH_ROLE";

/// Runs the role `role` until stdin closes.
pub(crate) fn run(role: &str) -> anyhow::Result<()> {
    feed::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match role {
            "origin" => origin().await,
            "proxy" => proxy().await,
            "blob" => blob().await,
            other => bail!("unknown {ROLE_VAR} {other:?}"),
        }
    })
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

async fn listen() -> anyhow::Result<tokio::net::TcpListener> {
    let port: u16 = std::env::var("BENCH_PORT").map_or(Ok(0), |p| p.parse())?;
    Ok(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?)
}

fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTEN {addr}")?;
    out.flush()?;
    Ok(())
}

/// Resolves when the parent closes our stdin (or dies).
async fn parent_gone() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    long_polls: AtomicU64,
}

async fn count(State(counts): State<Arc<Counts>>, request: Request, next: Next) -> Response {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if request.headers().contains_key("prefer") {
        counts.long_polls.fetch_add(1, Ordering::Relaxed);
    }
    next.run(request).await
}

#[derive(Clone)]
struct Bench {
    log: EventLog,
    counts: Arc<Counts>,
}

async fn requests(State(b): State<Bench>) -> String {
    format!(
        "{} {}",
        b.counts.requests.load(Ordering::Relaxed),
        b.counts.long_polls.load(Ordering::Relaxed)
    )
}

#[derive(serde::Deserialize)]
struct AppendQuery {
    n: Option<usize>,
}

async fn append(State(b): State<Bench>, Query(q): Query<AppendQuery>) -> Response {
    let events = sample_events(0, q.n.unwrap_or(1) as u64);
    let result = async {
        let mut tx = b.log.begin().await?;
        let positions = b.log.append(&mut tx, Expected::Any, &events).await?;
        tx.commit().await?;
        anyhow::Ok(positions.last().copied().unwrap_or(0))
    }
    .await;
    match result {
        Ok(p) => p.to_string().into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#}"),
        )
            .into_response(),
    }
}

async fn origin() -> anyhow::Result<()> {
    let log = EventLog::connect(&var("BENCH_DB")?).await?;
    let listener = listen().await?;
    let addr = listener.local_addr()?;
    let base = std::env::var("BENCH_BASE").unwrap_or_else(|_| format!("http://{addr}"));
    let config = FeedConfig::new(base, "bench");
    let server = FeedServer::new(log.clone(), config).await?;
    let counts = Arc::new(Counts::default());
    let bench = Router::new()
        .route("/_bench/requests", get(requests))
        .route("/_bench/append", post(append))
        .with_state(Bench {
            log,
            counts: counts.clone(),
        });
    let app = server
        .router()
        .layer(axum::middleware::from_fn_with_state(counts, count))
        .merge(bench);
    announce(addr)?;
    feed::server::serve(listener, app, parent_gone()).await?;
    Ok(())
}

async fn proxy() -> anyhow::Result<()> {
    let upstream = var("BENCH_UPSTREAM")?;
    let prefix = std::env::var("BENCH_PREFIX").unwrap_or_else(|_| "/o".into());
    let route = cache_proxy::Route::new(&prefix, &upstream)?;
    let mut config = cache_proxy::Config::new(vec![route]);
    if let Ok(bytes) = std::env::var("BENCH_CAPACITY") {
        config.capacity = cache_proxy::ByteSize(bytes.parse()?);
    }
    let proxy = cache_proxy::Proxy::new(config)?;
    let listener = listen().await?;
    announce(listener.local_addr()?)?;
    cache_proxy::serve(listener, proxy, parent_gone()).await?;
    Ok(())
}

async fn blob_handler(State(size): State<usize>, Path(n): Path<u64>) -> Response {
    // Distinct, incompressible-looking bytes per blob, so no two bodies share pages.
    let mut rng = fastrand::Rng::with_seed(n);
    let body: Vec<u8> = (0..size).map(|_| rng.u8(b'a'..=b'z')).collect();
    (
        [
            (header::CACHE_CONTROL, "max-age=3600".to_owned()),
            (header::ETAG, format!("\"blob-{n}\"")),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ],
        body,
    )
        .into_response()
}

async fn blob() -> anyhow::Result<()> {
    let size: usize = var("BENCH_BLOB_BYTES")?.parse()?;
    let app = Router::new()
        .route("/blob/{n}", get(blob_handler))
        .with_state(size);
    let listener = listen().await?;
    announce(listener.local_addr()?)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(parent_gone())
        .await?;
    Ok(())
}

/// `n` events as a retail service would append them, numbered from `from`.
pub(crate) fn sample_events(from: u64, n: u64) -> Vec<NewEvent> {
    let accepted = EventType::parse("OrderAccepted").expect("a valid event type");
    (from..from + n)
        .map(|i| {
            NewEvent::new(
                StreamId::parse(format!("order-{}", i % 5000)).expect("a valid stream id"),
                accepted.clone(),
                serde_json::json!({
                    "order_id": format!("{i:08}"),
                    "customer_id": format!("c-{}", i % 997),
                    "lines": [{"product_id": "p-1", "quantity": 2, "unit_price_cents": 1250}],
                    "total_cents": 2500,
                    "currency": "EUR"
                }),
            )
        })
        .collect()
}

/// A child process in a role; killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    _stdin: ChildStdin,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Starts this binary in `role` with `env`, and waits for it to listen.
    pub(crate) fn spawn(role: &str, env: &[(&str, String)]) -> anyhow::Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE_VAR, role)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {role} child"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("LISTEN ") else {
            let _ = child.kill();
            bail!("the {role} child did not start (said {line:?})");
        };
        let addr = addr.parse()?;
        Ok(Server {
            child,
            _stdin: stdin,
            addr,
        })
    }

    /// `http://<addr>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Peak resident set size (VmHWM) in bytes.
    pub(crate) fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .context("no VmHWM in /proc status")
    }

    /// (requests, long polls) an `origin` child has served.
    pub(crate) async fn origin_counts(
        &self,
        client: &reqwest::Client,
    ) -> anyhow::Result<(u64, u64)> {
        let text = client
            .get(format!("{}/_bench/requests", self.url()))
            .send()
            .await?
            .text()
            .await?;
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(r)), Some(Ok(l))) => Ok((r, l)),
            _ => bail!("bad /_bench/requests answer {text:?}"),
        }
    }

    /// Appends `n` events in the origin child; returns its new head position.
    pub(crate) async fn append(&self, client: &reqwest::Client, n: usize) -> anyhow::Result<u64> {
        let text = client
            .post(format!("{}/_bench/append?n={n}", self.url()))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text.trim().parse()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (for servers that must know each other's
/// address before they start).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `url` answers at all.
pub(crate) async fn wait_until_up(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    // Generous: varnishd compiles its VCL with a C compiler first.
    for _ in 0..1200 {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up within 60 s")
}
