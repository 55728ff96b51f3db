use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use feed::db::{Database, MigrationSet};
use feed::server::{FeedConfig, FeedServer};
use feed::store::EventLog;
use feed::subscriber::{Handler, Status, Subscriber, SubscriberConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::ServiceArgs;

/// The largest command body a service accepts (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A running service's shared pieces. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    /// The service's name (`sales`).
    pub name: &'static str,
    /// Its database (its own tables and the event log live there).
    pub db: Database,
    /// Its event log.
    pub log: EventLog,
    /// Its feed routes.
    pub feed: FeedServer,
    /// The bearer token commands need, if any.
    pub token: Option<Arc<str>>,
    /// Its subscriptions, for the index page.
    pub subscriptions: Subscriptions,
    /// The landing page its HTML pages link back to (`--home-url`).
    pub home_url: Option<String>,
}

/// Written by hand so that the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("db", &self.db)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("subscriptions", &self.subscriptions)
            .field("home_url", &self.home_url)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Opens the database named by `args`, applies the feed's and the service's
    /// migrations, and sets up the feed server. `base_url` is the public URL the
    /// service is reached at (required when the listener is not bound yet).
    pub async fn open(
        name: &'static str,
        args: &ServiceArgs,
        migrations: &MigrationSet,
        base_url: &str,
    ) -> anyhow::Result<Self> {
        if args.database_url.is_none() {
            std::fs::create_dir_all(&args.data_dir)?;
        }
        let db = Database::connect(&args.database_url_for(name)).await?;
        let log = EventLog::open(db.clone()).await?;
        db.migrate(migrations).await?;
        let mut feed_config = FeedConfig::new(base_url, name);
        feed_config.page_size = args.page_size;
        feed_config.home_url = args.home_url.clone();
        let feed = FeedServer::new(log.clone(), feed_config).await?;
        Ok(Self {
            name,
            db,
            log,
            feed,
            token: args
                .api_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(Arc::from),
            subscriptions: Subscriptions::default(),
            home_url: args.home_url.clone(),
        })
    }

    /// Serves `app` (built with [`Service::app`]) on `listener` until `stop` is
    /// cancelled, then cancels `stop` (so the subscriptions started with its child
    /// futures end), waits for the `tasks` and closes the database. Long polls held
    /// on the feed are answered at once when the shutdown starts, so it is not held
    /// up by a gateway's long polls. The first failure (the server's, or a task's:
    /// e.g. a subscription's fatal feed error) is returned. Pass a child token of the
    /// caller's, so a failing service does not stop others sharing the parent.
    pub async fn serve_until(
        self,
        listener: TcpListener,
        app: Router,
        mut tasks: JoinSet<anyhow::Result<()>>,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let shutdown = self.feed.shutdown_on(stop.clone().cancelled_owned());
        let served = serve(listener, app, shutdown).await;
        stop.cancel();
        let mut failure = served.err().map(anyhow::Error::from);
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(service = self.name, error = %format!("{e:#}"), "a task of the service failed");
                failure.get_or_insert(e);
            }
        }
        self.db.close().await;
        failure.map_or(Ok(()), Err)
    }

    /// The service's whole HTTP app: its own `routes` (commands need the token), the
    /// feed routes, the index at `/`, a body limit and request tracing.
    pub fn app(&self, routes: Router) -> Router {
        let commands = routes.layer(axum::middleware::from_fn_with_state(
            self.token.clone(),
            crate::auth::require_token,
        ));
        Router::new()
            .route("/", get(index))
            .route("/index.html", get(index))
            .route("/index.json", get(index))
            .with_state(self.clone())
            .merge(self.feed.router())
            .merge(commands)
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                MAX_BODY_BYTES,
            ))
            .layer(axum::middleware::map_response(plain_errors_as_problems))
            // Spans record method, path and version, never headers: Authorization
            // carries the bearer token.
            .layer(
                tower_http::trace::TraceLayer::new_for_http().make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().include_headers(false),
                ),
            )
    }
}

/// The errors axum and tower-http produce before a handler runs (a body over the
/// limit, a path that does not decode, a method a route does not have) are plain text
/// or empty; commands promise problem+json, so such a 4xx is replaced by a problem
/// with the same status and the original text as its detail. Pages (HTML 404s of the
/// feeds) and problems pass unchanged.
async fn plain_errors_as_problems(r: axum::response::Response) -> axum::response::Response {
    if !r.status().is_client_error() {
        return r;
    }
    let plain = match r.headers().get(axum::http::header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.as_bytes().starts_with(b"text/plain"),
    };
    if !plain {
        return r;
    }
    let status = r.status();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return axum::response::IntoResponse::into_response(crate::ApiError::TooLarge);
    }
    // A 405 must keep naming the methods the resource has (RFC 9110 15.5.6).
    let allow = r.headers().get(axum::http::header::ALLOW).cloned();
    let text = axum::body::to_bytes(r.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    let mut problem = crate::error::problem(status, &detail, None);
    if let Some(allow) = allow {
        problem
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    problem
}

#[derive(Debug, Clone)]
struct SubscriptionInfo {
    name: String,
    feed_url: String,
    status: Arc<Status>,
}

/// The subscriptions a service runs, started on a [`JoinSet`] and listed on its index.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    list: Arc<std::sync::Mutex<Vec<SubscriptionInfo>>>,
}

impl Subscriptions {
    /// Starts following `feed_url` into `handler` (checkpoint `name` in `db`) until
    /// `shutdown` resolves. A fatal feed error ends the task with that error.
    pub fn spawn<H: Handler + 'static>(
        &self,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        db: &Database,
        name: &str,
        feed_url: &str,
        handler: H,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let subscriber =
            Subscriber::new(SubscriberConfig::new(name, feed_url), db.clone(), handler);
        if let Ok(mut list) = self.list.lock() {
            list.push(SubscriptionInfo {
                name: name.to_owned(),
                feed_url: feed_url.to_owned(),
                status: subscriber.status(),
            });
        }
        tasks.spawn(async move { Ok(subscriber.run(shutdown).await?) });
    }

    fn snapshot(&self) -> Vec<SubscriptionInfo> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The service's home at `/` (negotiated), `/index.html` and `/index.json`: what it
/// publishes and what it follows, each subscription's checkpoint, head, lag and
/// whether it is caught up (see [`crate::page`] for the formats and validators).
async fn index(
    State(s): State<Service>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use crate::page::{self, PageFormat};
    let variant = match uri.path() {
        "/index.html" => Some(PageFormat::Html),
        "/index.json" => Some(PageFormat::Json),
        _ => None,
    };
    let format = page::requested(&headers, variant);
    let head = match s.log.head().await {
        Ok(head) => head,
        Err(e) => return axum::response::IntoResponse::into_response(crate::ApiError::from(e)),
    };
    let base = s.feed.base_url();
    let follows: Vec<feed::html::Following> = s
        .subscriptions
        .snapshot()
        .into_iter()
        .map(|i| feed::html::Following {
            name: i.name,
            feed_url: i.feed_url,
            checkpoint: i.status.checkpoint(),
            head: i.status.head(),
            lag: i.status.lag(),
            caught_up: i.status.caught_up(),
            last_error: i.status.last_error(),
        })
        .collect();
    let body = match format {
        PageFormat::Html => feed::html::service_index(&feed::html::ServiceIndex {
            name: s.name.to_owned(),
            base_url: base.to_owned(),
            home_url: s.home_url.as_deref().map(str::to_owned),
            head_position: head,
            follows,
        }),
        PageFormat::Json => {
            let follows: Vec<_> = follows
                .into_iter()
                .map(|f| {
                    serde_json::json!({
                        "subscription": f.name,
                        "feed": f.feed_url,
                        "checkpoint": f.checkpoint,
                        "head": f.head,
                        "lag": f.lag,
                        "caught_up": f.caught_up,
                        "error": f.last_error,
                    })
                })
                .collect();
            serde_json::json!({
                "service": s.name,
                "publishes": { "feed": format!("{base}/feed"), "head_position": head },
                "follows": follows,
            })
            .to_string()
        }
    };
    let location = format!("{base}/index{}", format.suffix());
    page::respond(&headers, format, &location, "max-age=1", body)
}

/// Serves an app on a listener until shutdown, the way every server of the system
/// serves: a header read timeout, header limits, each connection on one of the
/// process's serving threads.
pub use feed::server::serve;

/// The `serve` command of a service binary: binds `listen`, then runs `run` with the
/// listener and a token that Ctrl-C or SIGTERM cancels.
pub async fn serve_command<F, Fut>(name: &str, listen: SocketAddr, run: F) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener, tokio_util::sync::CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "{name} listening");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    run(listener, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Rebuilds replicas: in one transaction runs `drop_sql` (statements that empty the
/// service's replica tables) and forgets the checkpoints `subscriptions`; the next
/// start replays those feeds from position 1.
pub async fn rebuild(
    db: &Database,
    drop_sql: &[&'static str],
    subscriptions: &[&str],
) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    for sql in drop_sql {
        sqlx::query(*sql).execute(&mut *tx).await?;
    }
    for name in subscriptions {
        feed::subscriber::reset_checkpoint(&mut tx, name).await?;
    }
    tx.commit().await?;
    Ok(())
}
