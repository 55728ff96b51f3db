//! The gateway's own pages, in HTML for people and JSON for programs (see
//! `kit::page` for negotiation, variants and validators):
//!
//! - `/` (also `/index.html`, `/index.json`): every mounted service with its index
//!   and its feed, and a form to follow one order.
//! - `/orders/{order_id}` (also `.html`, `.json`): the story of one order across the
//!   services. The gateway reads the order's stream `order-<id>` from each service
//!   that writes one (sales, billing, fulfilment, shipping; catalog and loyalty never
//!   do), through its own public URLs, so through its cache like any other reader,
//!   merges the events by time and checks off the steps OrderAccepted ->
//!   CustomerBilled -> OrderReadyForShipping -> OrderShipped.
//! - `/orders?order=<id>`: where the landing page's form goes; redirects (303) to the
//!   order's page.
//!
//! Every URL on these pages is built from the gateway's configured address, never
//! from request headers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use feed::html::{Story, StoryEvent, StorySource, StoryStep};
use kit::page::{self, PageFormat};
use serde_json::json;

/// The services whose order streams make up an order's story, with the event each
/// contributes to it, in the order the steps happen.
const STEPS: [(&str, &str); 4] = [
    ("sales", "OrderAccepted"),
    ("billing", "CustomerBilled"),
    ("fulfilment", "OrderReadyForShipping"),
    ("shipping", "OrderShipped"),
];

/// How long the gateway waits for one stream document of one service.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Documents read per stream at most (an order's stream has a handful of events).
const MAX_PAGES: usize = 20;

/// What the pages need: the gateway's public URL and the services mounted on it.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway: String,
    services: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Site {
    pub(crate) fn new(gateway: &str, mounted: &[&str]) -> Self {
        let gateway = gateway.trim_end_matches('/').to_owned();
        let services = mounted
            .iter()
            .map(|s| ((*s).to_owned(), format!("{gateway}/{s}")))
            .collect();
        Self {
            inner: Arc::new(Inner {
                gateway,
                services,
                http: feed::subscriber::http_client(),
            }),
        }
    }
}

/// The routes of the gateway's own pages; merge the proxy router with them.
pub(crate) fn routes(site: Site) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/index.html", get(landing))
        .route("/index.json", get(landing))
        .route("/orders", get(follow_order))
        .route("/orders/{order}", get(order))
        .with_state(site)
}

/// The landing page.
async fn landing(State(site): State<Site>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let variant = match uri.path() {
        "/index.html" => Some(PageFormat::Html),
        "/index.json" => Some(PageFormat::Json),
        _ => None,
    };
    let format = page::requested(&headers, variant);
    let gw = &site.inner.gateway;
    let body = match format {
        PageFormat::Html => feed::html::landing_page(&site.inner.services, &format!("{gw}/orders")),
        PageFormat::Json => json!({
            "services": site.inner.services
                .iter()
                .map(|(name, base)| json!({ "name": name, "index": format!("{base}/"), "feed": format!("{base}/feed") }))
                .collect::<Vec<_>>(),
            "orders": format!("{gw}/orders/{{order_id}}"),
        })
        .to_string(),
    };
    let location = format!("{gw}/index{}", format.suffix());
    page::respond(&headers, format, &location, "max-age=60", body)
}

#[derive(Debug, serde::Deserialize)]
struct FollowQuery {
    order: Option<String>,
}

/// The landing page's form: on to the order's own page.
async fn follow_order(State(site): State<Site>, Query(q): Query<FollowQuery>) -> Response {
    let order = q.order.as_deref().map(str::trim).unwrap_or_default();
    let mut target = match url::Url::parse(&site.inner.gateway) {
        Ok(url) => url,
        Err(e) => return kit::ApiError::Internal(e.into()).into_response(),
    };
    if order.is_empty() {
        target.set_path("/");
    } else if let Ok(mut segments) = target.path_segments_mut() {
        segments.clear().push("orders").push(order);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(target.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `/orders/{order}`, where `order` may end in `.html` or `.json`.
async fn order(
    State(site): State<Site>,
    Path(order): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (order_id, variant) = if let Some(id) = order.strip_suffix(".html") {
        (id, Some(PageFormat::Html))
    } else if let Some(id) = order.strip_suffix(".json") {
        (id, Some(PageFormat::Json))
    } else {
        (order.as_str(), None)
    };
    let format = page::requested(&headers, variant);
    let gw = &site.inner.gateway;
    let Ok(stream) = feed::StreamId::parse(format!("order-{order_id}")) else {
        return kit::ApiError::NotFound(format!("{order_id:?} is not an order id")).into_response();
    };
    let story = story(&site, order_id, &stream).await;
    let found = story.events.len();
    let body = match format {
        PageFormat::Html => feed::html::story_page(&story),
        PageFormat::Json => story_json(order_id, &story).to_string(),
    };
    let location = format!("{gw}/orders/{order_id}{}", format.suffix());
    let mut response = page::respond(&headers, format, &location, "max-age=1", body);
    if found == 0 && response.status() == StatusCode::OK {
        // Nothing anywhere yet: the page says so, as a 404 (briefly cacheable, the
        // order may be accepted any moment).
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}

/// Reads the order's stream from every service that writes one and merges them.
async fn story(site: &Site, order_id: &str, stream: &feed::StreamId) -> Story {
    let gw = &site.inner.gateway;
    let consulted: Vec<&str> = STEPS
        .iter()
        .map(|(service, _)| *service)
        .filter(|s| site.inner.services.iter().any(|(name, _)| name == s))
        .collect();
    let reads = consulted.iter().map(|service| {
        let url = format!("{gw}/{service}/streams/{stream}");
        async move {
            let events = read_stream(&site.inner.http, &url).await;
            (*service, url, events)
        }
    });
    let mut sources = Vec::new();
    let mut events = Vec::new();
    for (service, url, read) in futures::future::join_all(reads).await {
        let found = match read {
            Ok(list) => {
                let n = list.len();
                events.extend(list.into_iter().map(|event| StoryEvent {
                    service: service.to_owned(),
                    url: format!("{gw}/{service}/feed/events/{}", event.position),
                    event,
                }));
                Some(n)
            }
            Err(e) => {
                tracing::warn!(%service, %url, error = %format!("{e:#}"), "cannot read an order stream");
                None
            }
        };
        sources.push(StorySource {
            service: service.to_owned(),
            stream_url: url,
            found,
        });
    }
    // By time; events of one instant in the order of the steps' services.
    let rank = |service: &str| {
        STEPS
            .iter()
            .position(|(s, _)| *s == service)
            .unwrap_or(STEPS.len())
    };
    events.sort_by(|a, b| {
        (
            a.event.occurred_at,
            rank(&a.service),
            a.event.stream_version,
        )
            .cmp(&(
                b.event.occurred_at,
                rank(&b.service),
                b.event.stream_version,
            ))
    });
    Story {
        title: format!("Order {order_id}"),
        home_url: format!("{gw}/"),
        url: format!("{gw}/orders/{order_id}"),
        steps: STEPS
            .iter()
            .filter(|(service, _)| consulted.contains(service))
            .map(|(service, event_type)| StoryStep {
                event_type: (*event_type).to_owned(),
                service: (*service).to_owned(),
            })
            .collect(),
        sources,
        events,
    }
}

/// Every event of the stream whose head is `url`, oldest first: from its `first`
/// document along `next-archive`. A stream that does not exist (404) is empty.
async fn read_stream(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<feed::Event>> {
    let head = match fetch(http, url).await? {
        Some(doc) => doc,
        None => return Ok(Vec::new()),
    };
    let mut doc = match head.links.first.clone() {
        Some(first) if Some(&first) != head.links.this.as_ref() => fetch(http, &first)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{first} vanished"))?,
        _ => head,
    };
    let mut events = Vec::new();
    for _ in 0..MAX_PAGES {
        events.append(&mut doc.entries);
        match doc.links.next_archive.clone() {
            Some(next) if doc.archive => {
                doc = fetch(http, &next)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{next} vanished"))?;
            }
            _ => return Ok(events),
        }
    }
    anyhow::bail!("{url} has more than {MAX_PAGES} pages")
}

async fn fetch(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Option<feed::atom::ParsedFeed>> {
    let response = http
        .get(url)
        .header(header::ACCEPT, feed::atom::FEED_MEDIA_TYPE)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await?;
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let text = response.error_for_status()?.text().await?;
    Ok(Some(feed::atom::parse_feed(&text)?))
}

fn story_json(order_id: &str, story: &Story) -> serde_json::Value {
    json!({
        "order_id": order_id,
        "steps": story.steps.iter().map(|step| {
            let done = story.events.iter().find(|e| e.service == step.service && e.event.event_type.as_str() == step.event_type);
            json!({
                "event_type": step.event_type,
                "service": step.service,
                "done": done.is_some(),
                "event": done.map(|e| e.url.clone()),
            })
        }).collect::<Vec<_>>(),
        "events": story.events.iter().map(|e| json!({
            "service": e.service,
            "type": e.event.event_type.as_str(),
            "position": e.event.position,
            "stream_version": e.event.stream_version,
            "occurred_at": feed::atom::format_time(&e.event.occurred_at),
            "url": e.url,
            "data": e.event.data,
        })).collect::<Vec<_>>(),
        "sources": story.sources.iter().map(|s| json!({
            "service": s.service,
            "stream": s.stream_url,
            "events": s.found,
        })).collect::<Vec<_>>(),
    })
}
