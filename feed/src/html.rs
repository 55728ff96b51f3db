//! The browser rendering of the feed documents: the same resources as the Atom, for
//! people (DESIGN.md section 4, "Content negotiation").
//!
//! Pages are server-rendered with `maud` (every spliced value is escaped by the
//! template; event JSON goes through the `json` submodule, which escapes it itself) and work
//! without JavaScript. One small script (`static/feed.js`) adds relative times and,
//! on the head page, a live mode that long-polls the head and inserts new rows. The
//! stylesheet and script are embedded in the binary and served by the feed router
//! under content-hashed, immutable URLs (`/feed/_assets/feed.<hash>.css`); the
//! gateway's landing page, which has no feed router behind it, inlines the CSS.
//!
//! Rendering is deterministic (no "now" in a page: relative times are left to the
//! script), so a sealed page's HTML can be cached and its ETag derived from its bytes.
//! Every HTML ETag is weak and carries [`version_tag`], which changes with
//! [`TEMPLATE_VERSION`] and with the assets, so a new template never needs a purge.
//!
//! Links point at the negotiated URLs (the same URL as the Atom), so a link copied
//! from a page works in a feed reader too; `<link rel="alternate">` names the
//! explicit `.atom` variant.

mod json;

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::atom::{self, Links};
use crate::event::{Event, Position, StreamId};

/// Bump whenever a template's output changes: it is part of every HTML ETag.
pub const TEMPLATE_VERSION: u32 = 1;

/// Pretty JSON longer than this many lines is folded into a `<details>` in tables.
const FOLD_LINES: usize = 16;

/// An embedded static file served under a content-hashed name.
#[derive(Debug)]
pub(crate) struct Asset {
    /// File name including the hash, e.g. `feed.3f2a9c1b.css`.
    pub(crate) name: String,
    pub(crate) body: &'static str,
    pub(crate) media_type: &'static str,
    /// Hex digest of the body: in the name and the ETag.
    pub(crate) hash: String,
}

impl Asset {
    fn new(stem: &str, ext: &str, body: &'static str, media_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        let hash = hex(&digest[..6]);
        Self {
            name: format!("{stem}.{hash}.{ext}"),
            body,
            media_type,
            hash,
        }
    }
}

static CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "feed",
        "css",
        include_str!("../static/feed.css"),
        "text/css",
    )
});
static JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "feed",
        "js",
        include_str!("../static/feed.js"),
        "text/javascript",
    )
});
static VERSION_TAG: LazyLock<String> =
    LazyLock::new(|| format!("t{TEMPLATE_VERSION}-{}{}", &CSS.hash[..4], &JS.hash[..4]));

/// The embedded asset named `name`, if any.
pub(crate) fn asset(name: &str) -> Option<&'static Asset> {
    [&*CSS, &*JS].into_iter().find(|a| a.name == name)
}

/// Identifies the templates and assets in force; part of every HTML ETag.
pub fn version_tag() -> &'static str {
    &VERSION_TAG
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a page gets its stylesheet.
#[derive(Clone, Copy)]
enum Styles<'a> {
    /// Linked from the feed router of the service at this base URL (plus the script).
    Served(&'a str),
    /// Inlined, for pages served where no feed router is mounted.
    Inline,
}

/// A breadcrumb: text and, unless it is the current page, a link.
type Crumb<'a> = (&'a str, Option<&'a str>);

struct Chrome<'a> {
    title: &'a str,
    styles: Styles<'a>,
    crumbs: &'a [Crumb<'a>],
    /// `(media type, href)` of the Atom variant.
    alternate: Option<(&'a str, &'a str)>,
    /// Whether the page has the pager's access keys (named in the footer).
    access_keys: bool,
}

fn layout(c: &Chrome<'_>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (c.title) }
                @if let Some((media_type, href)) = c.alternate {
                    link rel="alternate" type=(media_type) href=(href) title="Atom";
                }
                @match c.styles {
                    Styles::Served(base) => {
                        link rel="stylesheet" href={ (base) "/feed/_assets/" (CSS.name) };
                        script src={ (base) "/feed/_assets/" (JS.name) } defer {}
                    }
                    Styles::Inline => style { (PreEscaped(CSS.body)) }
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.site {
                    div.wrap {
                        nav aria-label="Breadcrumb" {
                            ol.crumbs {
                                @for (text, href) in c.crumbs {
                                    li {
                                        @match href {
                                            Some(href) => a href=(href) { (text) },
                                            None => span aria-current="page" { (text) },
                                        }
                                    }
                                }
                            }
                        }
                        @if let Some((_, href)) = c.alternate {
                            a.alt href=(href) type="application/atom+xml" { "Atom feed" }
                        }
                    }
                }
                main #main.wrap { (body) }
                footer {
                    div.wrap {
                        "Pull-based event feeds: every feed page here is also an Atom document at the same URL (RFC 4287, RFC 5005)."
                        @if c.access_keys {
                            " Access keys (with your browser's modifier, e.g. Alt+Shift): "
                            kbd { "N" } " newer, " kbd { "O" } " older, " kbd { "F" } " first, "
                            kbd { "H" } " head, " kbd { "U" } " an event's page."
                        }
                    }
                }
            }
        }
    }
    .into_string()
}

fn utc(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(atom::format_time(t)) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
    }
}

/// Pretty, highlighted JSON; folded into `<details>` when long and `fold` is set.
fn json_block(value: &serde_json::Value, fold: bool, label: &str) -> Markup {
    let code = json::highlight(value);
    let lines = code.matches('\n').count() + 1;
    let pre = html! { pre.json { code { (PreEscaped(&code)) } } };
    if fold && lines > FOLD_LINES {
        let mut preview = value.to_string();
        if preview.chars().count() > 72 {
            preview = preview.chars().take(72).collect::<String>() + "…";
        }
        html! {
            details {
                summary aria-label={ "Show " (label) ", " (lines) " lines" } { (preview) " (" (lines) " lines)" }
                (pre)
            }
        }
    } else {
        pre
    }
}

/// Which feed of a service a page shows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed<'a> {
    /// The whole log, by position.
    Log,
    /// One stream, by stream version.
    Stream(&'a StreamId),
}

/// A feed document (head or sealed page) as HTML.
#[derive(Debug)]
pub(crate) struct PageView<'a> {
    pub(crate) service: &'a str,
    pub(crate) base: &'a str,
    pub(crate) feed: Feed<'a>,
    /// Absolute links of the Atom document (negotiated URLs).
    pub(crate) links: &'a Links,
    /// Positions (log) or versions (stream) the document covers; for the head
    /// `from` may exceed `to` when it is empty.
    pub(crate) from: Position,
    pub(crate) to: Position,
    /// The page size in force (for "n of size" on the head).
    pub(crate) page_size: u64,
    pub(crate) sealed: bool,
    /// Oldest first, as stored.
    pub(crate) entries: &'a [Event],
    /// For the log head: the ETag the live script polls with.
    pub(crate) live_etag: Option<&'a str>,
}

/// Renders a feed document.
pub(crate) fn render_page(v: &PageView<'_>) -> String {
    let self_url = v.links.this.as_deref().unwrap_or(v.base);
    let atom_url = format!("{self_url}.atom");
    let (title, feed_name, unit) = match v.feed {
        Feed::Log => (
            format!("{} events", v.service),
            "events".to_owned(),
            "positions",
        ),
        Feed::Stream(s) => (
            format!("{} stream {s}", v.service),
            format!("stream {s}"),
            "versions",
        ),
    };
    let page_title = if v.sealed {
        format!("{title} {}–{}", v.from, v.to)
    } else {
        format!("{title} (head)")
    };
    let index = format!("{}/", v.base);
    let head_url = v.links.current.as_deref();
    let crumbs: Vec<Crumb<'_>> = if v.sealed {
        vec![
            (v.service, Some(&index)),
            (&feed_name, head_url),
            ("archive", None),
        ]
    } else {
        vec![(v.service, Some(&index)), (&feed_name, None)]
    };
    let count = v.entries.len() as u64;
    let body = html! {
        h1 { (title) }
        p.summary #range {
            @if v.sealed {
                span.badge.sealed { "Sealed" }
                span { (unit) " " (v.from) "–" (v.to) " · this page never changes" }
            } @else {
                span.badge.head { "Head" }
                @if count == 0 {
                    span { "no " (unit) " after " (v.from.saturating_sub(1)) " yet" }
                } @else {
                    span { (unit) " " (v.from) "–" (v.to) " · " (count) " of " (v.page_size) ", still filling" }
                }
            }
            @if v.live_etag.is_some() {
                span.live #live-status role="status" aria-live="polite" hidden {}
            }
        }
        (pager(v.links))
        (events_table(v, &title))
    };
    let mut main = body.into_string();
    if let Some(etag) = v.live_etag {
        // The live script finds the head and its ETag here.
        let live_url = format!("{}/feed.html", v.base);
        main = html! {
            div data-live=(live_url) data-etag=(etag) { (PreEscaped(main)) }
        }
        .into_string();
    }
    layout(
        &Chrome {
            title: &page_title,
            styles: Styles::Served(v.base),
            crumbs: &crumbs,
            alternate: Some((atom::FEED_MEDIA_TYPE, &atom_url)),
            access_keys: true,
        },
        PreEscaped(main),
    )
}

/// newer / older / first / head, as links with `rel` and access keys.
fn pager(links: &Links) -> Markup {
    let this = links.this.as_deref();
    let items: [(&str, &str, &str, Option<&str>); 4] = [
        (
            "Newer",
            "next next-archive",
            "n",
            links.next_archive.as_deref(),
        ),
        (
            "Older",
            "prev prev-archive",
            "o",
            links.prev_archive.as_deref(),
        ),
        ("First", "first", "f", links.first.as_deref()),
        ("Head", "current", "h", links.current.as_deref()),
    ];
    html! {
        nav.pager #pager aria-label="Pages" {
            ul {
                @for (text, rel, key, href) in items {
                    li {
                        @match href.filter(|h| Some(*h) != this) {
                            Some(href) => a href=(href) rel=(rel) accesskey=(key) { (text) },
                            None => span aria-disabled="true" { (text) },
                        }
                    }
                }
            }
        }
    }
}

fn events_table(v: &PageView<'_>, title: &str) -> Markup {
    let stream_feed = matches!(v.feed, Feed::Stream(_));
    html! {
        table.events #events {
            caption { "Events of " (title) " on this page, newest first" }
            thead {
                tr {
                    th scope="col" { "Position" }
                    @if stream_feed { th scope="col" { "Version" } }
                    th scope="col" { "Type" }
                    @if !stream_feed { th scope="col" { "Stream" } }
                    th scope="col" { "Time" }
                    th scope="col" { "Data" }
                }
            }
            tbody {
                @if v.entries.is_empty() {
                    tr.empty-row { td.empty colspan="5" { "No events here yet." } }
                }
                @for e in v.entries.iter().rev() {
                    tr data-position=(e.position) {
                        th.pos scope="row" data-label="Position" {
                            a href={ (v.base) "/feed/events/" (e.position) } aria-label={ "Event " (e.position) } { (e.position) }
                        }
                        @if stream_feed { td.ver data-label="Version" { (e.stream_version) } }
                        td.type data-label="Type" { (e.event_type.as_str()) }
                        @if !stream_feed {
                            td.stream data-label="Stream" {
                                a href={ (v.base) "/streams/" (e.stream.as_str()) } { (e.stream.as_str()) }
                            }
                        }
                        td.time data-label="Time" { (utc(&e.occurred_at)) }
                        td.data data-label="Data" { (json_block(&e.data, true, "data")) }
                    }
                }
            }
        }
    }
}

/// One event as HTML.
#[derive(Debug)]
pub(crate) struct EventView<'a> {
    pub(crate) service: &'a str,
    pub(crate) base: &'a str,
    pub(crate) event: &'a Event,
    /// The document holding the event (its sealed page, or the head).
    pub(crate) page_url: &'a str,
    /// Whether a next event exists.
    pub(crate) has_next: bool,
}

/// Renders an event page.
pub(crate) fn render_event(v: &EventView<'_>) -> String {
    let e = v.event;
    let base = v.base;
    let self_url = format!("{base}/feed/events/{}", e.position);
    let atom_url = format!("{self_url}.atom");
    let head = format!("{base}/feed");
    let index = format!("{base}/");
    let stream_url = format!("{base}/streams/{}", e.stream);
    let title = format!("{} #{} · {}", e.event_type, e.position, v.service);
    let crumb = format!("event {}", e.position);
    let crumbs: [Crumb<'_>; 3] = [
        (v.service, Some(&index)),
        ("events", Some(&head)),
        (&crumb, None),
    ];
    let prev = (e.position > 1).then(|| format!("{base}/feed/events/{}", e.position - 1));
    let next = v
        .has_next
        .then(|| format!("{base}/feed/events/{}", e.position + 1));
    let body = html! {
        h1 { (e.event_type.as_str()) " " span.badge.sealed { "#" (e.position) } }
        nav.pager #pager aria-label="Events" {
            ul {
                li { @match &prev {
                    Some(href) => a href=(href) rel="prev" accesskey="o" { "Previous event" },
                    None => span aria-disabled="true" { "Previous event" },
                } }
                li { @match &next {
                    Some(href) => a href=(href) rel="next" accesskey="n" { "Next event" },
                    None => span aria-disabled="true" { "Next event" },
                } }
                li { a href=(v.page_url) rel="up" accesskey="u" { "Its page" } }
                li { a href=(head) rel="current" accesskey="h" { "Head" } }
            }
        }
        dl.facts {
            dt { "Position" } dd { (e.position) }
            dt { "Type" } dd { (e.event_type.as_str()) }
            dt { "Stream" } dd { a href=(stream_url) rel="related" { (e.stream.as_str()) } " · version " (e.stream_version) }
            dt { "Occurred" } dd { (utc(&e.occurred_at)) }
            dt { "Id" } dd { code { "urn:uuid:" (e.id) } }
            dt { "Published by" } dd { a href=(index) { (v.service) } }
        }
        h2 #data { "Data" }
        (json_block(&e.data, false, "data"))
        h2 #metadata { "Metadata" }
        (json_block(&e.metadata, false, "metadata"))
    };
    layout(
        &Chrome {
            title: &title,
            styles: Styles::Served(base),
            crumbs: &crumbs,
            alternate: Some(("application/atom+xml;type=entry", &atom_url)),
            access_keys: true,
        },
        body,
    )
}

/// The page for a 404 of a feed resource, for people.
pub(crate) fn render_not_found(service: &str, base: &str, detail: &str) -> String {
    let index = format!("{base}/");
    let head = format!("{base}/feed");
    let crumbs: [Crumb<'_>; 2] = [(service, Some(&index)), ("not found", None)];
    let body = html! {
        h1 { "Not found" }
        p { (detail) }
        p { "Pages appear once their events exist; a page that is still filling lives in the head." }
        ul {
            li { a href=(head) rel="current" { "The newest events (" (service) " feed head)" } }
            li { a href=(index) { (service) " home" } }
        }
    };
    layout(
        &Chrome {
            title: "Not found",
            styles: Styles::Served(base),
            crumbs: &crumbs,
            alternate: None,
            access_keys: false,
        },
        body,
    )
}

/// What a service shows on its index page.
#[derive(Debug, Clone)]
pub struct ServiceIndex {
    /// The service's name (`sales`).
    pub name: String,
    /// Its public base URL (no trailing slash).
    pub base_url: String,
    /// The last position of its log.
    pub head_position: Position,
    /// The feeds it follows.
    pub follows: Vec<Following>,
}

/// One subscription on a service index.
#[derive(Debug, Clone)]
pub struct Following {
    /// The subscription's name (its checkpoint key).
    pub name: String,
    /// The followed feed's URL.
    pub feed_url: String,
    /// The last position applied.
    pub checkpoint: Position,
    /// The followed feed's head, as last seen.
    pub head: Position,
    /// `head - checkpoint`.
    pub lag: u64,
    /// The last error, if the subscription is failing.
    pub last_error: Option<String>,
}

/// A service's home page: what it publishes and what it follows.
pub fn service_index(s: &ServiceIndex) -> String {
    let base = s.base_url.trim_end_matches('/');
    let feed = format!("{base}/feed");
    let title = format!("{} service", s.name);
    let crumbs: [Crumb<'_>; 1] = [(&s.name, None)];
    let body = html! {
        h1 { (title) }
        h2 #publishes { "Publishes" }
        dl.facts {
            dt { "Feed" } dd { a href=(feed) { (feed) } " (" a href={ (feed) ".atom" } type="application/atom+xml" { "Atom" } ")" }
            dt { "Head position" } dd { (s.head_position) }
            dt { "Newest event" } dd {
                @if s.head_position > 0 {
                    a href={ (base) "/feed/events/" (s.head_position) } { "event " (s.head_position) }
                } @else { "none yet" }
            }
        }
        h2 #follows { "Follows" }
        @if s.follows.is_empty() {
            p { "This service follows no other feed." }
        } @else {
            table.follows {
                caption { "Subscriptions and their checkpoints" }
                thead { tr {
                    th scope="col" { "Subscription" }
                    th scope="col" { "Feed" }
                    th scope="col" { "Checkpoint" }
                    th scope="col" { "Head" }
                    th scope="col" { "Lag" }
                    th scope="col" { "Last error" }
                } }
                tbody {
                    @for f in &s.follows {
                        tr {
                            th scope="row" { (f.name) }
                            td { a href=(f.feed_url) { (f.feed_url) } }
                            td { (f.checkpoint) }
                            td { (f.head) }
                            td { (f.lag) }
                            td { @match &f.last_error { Some(e) => span.error { (e) }, None => "none" } }
                        }
                    }
                }
            }
        }
    };
    layout(
        &Chrome {
            title: &title,
            styles: Styles::Served(base),
            crumbs: &crumbs,
            alternate: Some((atom::FEED_MEDIA_TYPE, &format!("{feed}.atom"))),
            access_keys: false,
        },
        body,
    )
}

/// The gateway's landing page: every service with links to its index and its feed
/// head, and a "follow this order" form.
///
/// `services` are `(name, public base URL)` pairs, e.g. `("sales",
/// "http://127.0.0.1:8080/sales")`. The form GETs the landing page itself with
/// `?order=<id>`; pass that id as `order` and the page lists the stream
/// `order-<id>` of every service. The page is self-contained (inline CSS, no
/// script), because the gateway mounts no feed router of its own.
pub fn landing_page<N: AsRef<str>, U: AsRef<str>>(
    services: &[(N, U)],
    order: Option<&str>,
) -> String {
    let order = order.map(str::trim).filter(|o| !o.is_empty());
    let stream = order.map(|o| StreamId::parse(format!("order-{o}")));
    let crumbs: [Crumb<'_>; 1] = [("retail", None)];
    let body = html! {
        h1 { "Retail event feeds" }
        p { "Every service publishes its events as an Atom feed; the others pull them. Open a feed to browse it page by page." }
        h2 #services { "Services" }
        ul.cards {
            @for (name, base) in services {
                @let base = base.as_ref().trim_end_matches('/');
                li {
                    h3 { (name.as_ref()) }
                    ul {
                        li { a href={ (base) "/" } { (name.as_ref()) " home" } }
                        li { a href={ (base) "/feed" } rel="feed" { (name.as_ref()) " feed head" } }
                        li { a href={ (base) "/feed.atom" } type="application/atom+xml" { (name.as_ref()) " feed as Atom" } }
                    }
                }
            }
        }
        h2 #order { "Follow an order" }
        form.order method="get" action="" {
            label {
                "Order id"
                input type="text" name="order" value=[order] required placeholder="e.g. 0193b2c4-…" autocomplete="off" spellcheck="false";
            }
            button type="submit" { "Follow" }
        }
        @match &stream {
            Some(Ok(stream)) => {
                h3 { "Stream " (stream.as_str()) " in every service" }
                ul #order-links {
                    @for (name, base) in services {
                        li {
                            a href={ (base.as_ref().trim_end_matches('/')) "/streams/" (stream.as_str()) } {
                                (name.as_ref()) ": " (stream.as_str())
                            }
                        }
                    }
                }
            }
            Some(Err(_)) => p.error role="alert" { "That is not an order id: use letters, digits and - _ . ~ : only." },
            None => {}
        }
    };
    layout(
        &Chrome {
            title: "Retail event feeds",
            styles: Styles::Inline,
            crumbs: &crumbs,
            alternate: None,
            access_keys: false,
        },
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landing_page_links_every_service_and_the_order_streams() {
        let services = [
            ("sales", "http://gw/sales"),
            ("billing", "http://gw/billing/"),
        ];
        let page = landing_page(&services, Some("42"));
        assert!(page.contains("href=\"http://gw/sales/feed\""));
        assert!(page.contains("href=\"http://gw/billing/\""));
        assert!(page.contains("href=\"http://gw/billing/streams/order-42\""));
        assert!(page.contains("<html lang=\"en\">"));
        let hostile = landing_page(&services, Some("<script>"));
        assert!(!hostile.contains("<script>"));
        assert!(hostile.contains("not an order id"));
        assert!(!landing_page(&services, None).contains("order-links"));
    }

    #[test]
    fn assets_have_content_hashed_names() {
        let css = asset(&CSS.name).expect("css");
        assert!(css.name.starts_with("feed.") && css.name.ends_with(".css"));
        assert!(asset("feed.css").is_none());
        assert!(version_tag().starts_with(&format!("t{TEMPLATE_VERSION}-")));
    }
}
