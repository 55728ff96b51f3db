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
//!
//! Which format a request gets is decided by [`crate::negotiate::negotiate_format`],
//! the reference rule every other component follows: HTML only when the client
//! prefers `text/html` (or `application/xhtml+xml`, `text/*`) strictly over Atom, so
//! `*/*`, no `Accept`, ties, and `application/xml` / `text/xml` (Atom is XML) all get
//! Atom; the `.atom` and `.html` suffixes override it. The gateway normalises
//! `Accept` into the same classes for its cache key, and pages that have no Atom form
//! (a service's index, the landing page) apply the same rule with JSON in Atom's place.
//!
//! When a service is shown under a landing page (the gateway's, configured as
//! `FeedConfig::home_url`, never taken from request headers), every page's breadcrumb
//! starts with a link back to it.

mod json;

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::atom::{self, Links};
use crate::event::{Event, Position, StreamId};

/// Bump whenever a template's output changes: it is part of every HTML ETag.
pub const TEMPLATE_VERSION: u32 = 2;

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
    /// The landing page above the service (the gateway's), first in the breadcrumb.
    home: Option<&'a str>,
    crumbs: &'a [Crumb<'a>],
    /// `(media type, href)` of the Atom variant.
    alternate: Option<(&'a str, &'a str)>,
    /// `(title, href)` of further Atom feeds the page announces (autodiscovery).
    feeds: &'a [(String, String)],
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
                @for (title, href) in c.feeds {
                    link rel="alternate" type=(atom::FEED_MEDIA_TYPE) href=(href) title=(title);
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
                                @if let Some(home) = c.home {
                                    li { a href=(home) rel="home" { "Home" } }
                                }
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
    /// The landing page above the service, if configured.
    pub(crate) home: Option<&'a str>,
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
        }
        @if v.live_etag.is_some() {
            // The live region lives outside what the script replaces (#range, #pager),
            // so screen readers keep the region they registered at load and hear
            // every status change; it stays empty without the script.
            p.live #live-status role="status" aria-live="polite" {}
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
            home: v.home,
            crumbs: &crumbs,
            alternate: Some((atom::FEED_MEDIA_TYPE, &atom_url)),
            access_keys: true,
            feeds: &[],
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
    /// The landing page above the service, if configured.
    pub(crate) home: Option<&'a str>,
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
            home: v.home,
            crumbs: &crumbs,
            alternate: Some(("application/atom+xml;type=entry", &atom_url)),
            access_keys: true,
            feeds: &[],
        },
        body,
    )
}

/// The page for a 404 of a feed resource, for people.
pub(crate) fn render_not_found(
    service: &str,
    base: &str,
    home: Option<&str>,
    detail: &str,
) -> String {
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
            home,
            crumbs: &crumbs,
            alternate: None,
            access_keys: false,
            feeds: &[],
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
    /// The landing page above the service (the gateway's), for the breadcrumb.
    pub home_url: Option<String>,
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
    /// The followed feed's URL (its head, `.../feed`).
    pub feed_url: String,
    /// The last position applied.
    pub checkpoint: Position,
    /// The followed feed's head, as last seen.
    pub head: Position,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Whether the last poll found nothing newer than the checkpoint.
    pub caught_up: bool,
    /// The last error, if the subscription is failing.
    pub last_error: Option<String>,
}

/// A link to event `position` of the feed whose head is `feed_url`, when that URL
/// has the standard shape (`<base>/feed`) and the position exists.
fn event_link(feed_url: &str, position: Position) -> Option<String> {
    (position > 0 && feed_url.ends_with("/feed")).then(|| format!("{feed_url}/events/{position}"))
}

/// A position, linked to its event page when there is one.
fn position_cell(feed_url: &str, position: Position, what: &str) -> Markup {
    html! {
        @match event_link(feed_url, position) {
            Some(href) => a href=(href) aria-label={ (what) " event " (position) } { (position) },
            None => (position),
        }
    }
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
            dt { "Feed" } dd { a href=(feed) rel="feed" { (feed) } " (" a href={ (feed) ".atom" } type="application/atom+xml" { "Atom" } ")" }
            dt { "Head position" } dd { (s.head_position) }
            dt { "Newest event" } dd {
                @if s.head_position > 0 {
                    a href={ (base) "/feed/events/" (s.head_position) } { "event " (s.head_position) }
                } @else { "none yet" }
            }
            dt { "As JSON" } dd { a href={ (base) "/index.json" } type="application/json" { (base) "/index.json" } }
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
                    th scope="col" { "State" }
                    th scope="col" { "Last error" }
                } }
                tbody {
                    @for f in &s.follows {
                        tr data-subscription=(f.name) {
                            th scope="row" { (f.name) }
                            td { a href=(f.feed_url) { (f.feed_url) } }
                            td.checkpoint { (position_cell(&f.feed_url, f.checkpoint, "checkpoint")) }
                            td.head { (position_cell(&f.feed_url, f.head, "head")) }
                            td.lag { (f.lag) }
                            td.state data-caught-up=(f.caught_up) {
                                @if f.caught_up { "caught up" } @else { "catching up" }
                            }
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
            home: s.home_url.as_deref(),
            crumbs: &crumbs,
            alternate: Some((atom::FEED_MEDIA_TYPE, &format!("{feed}.atom"))),
            access_keys: false,
            feeds: &[],
        },
        body,
    )
}

/// The gateway's landing page: every service with links to its index and its feed
/// head, and a "follow this order" form.
///
/// `services` are `(name, public base URL)` pairs, e.g. `("sales",
/// "http://127.0.0.1:8080/sales")`. The form GETs `orders_url` with `?order=<id>`
/// (the gateway answers with a redirect to the order's page). Every feed is also
/// announced as `<link rel="alternate" type="application/atom+xml">` (feed
/// autodiscovery: a page may name several feeds). The page is self-contained
/// (inline CSS, no script), because the gateway mounts no feed router of its own.
pub fn landing_page<N: AsRef<str>, U: AsRef<str>>(services: &[(N, U)], orders_url: &str) -> String {
    let crumbs: [Crumb<'_>; 1] = [("Home", None)];
    let feeds: Vec<(String, String)> = services
        .iter()
        .map(|(name, base)| {
            let base = base.as_ref().trim_end_matches('/');
            (
                format!("{} events", name.as_ref()),
                format!("{base}/feed.atom"),
            )
        })
        .collect();
    let body = html! {
        h1 { "Retail event feeds" }
        p { "Every service publishes its events as an Atom feed; the others pull them. Open a feed to browse it page by page." }
        h2 #services { "Services" }
        ul.cards {
            @for (name, base) in services {
                @let base = base.as_ref().trim_end_matches('/');
                li data-service=(name.as_ref()) {
                    h3 { (name.as_ref()) }
                    ul {
                        li { a href={ (base) "/" } rel="service" { (name.as_ref()) " home" } }
                        li { a href={ (base) "/feed" } rel="feed" { (name.as_ref()) " feed head" } }
                        li { a href={ (base) "/feed.atom" } type="application/atom+xml" { (name.as_ref()) " feed as Atom" } }
                    }
                }
            }
        }
        h2 #order { "Follow an order" }
        form.order method="get" action=(orders_url) {
            label {
                "Order id"
                input type="text" name="order" required placeholder="e.g. 0193b2c4-…" autocomplete="off" spellcheck="false";
            }
            button type="submit" { "Follow" }
        }
    };
    layout(
        &Chrome {
            title: "Retail event feeds",
            styles: Styles::Inline,
            home: None,
            crumbs: &crumbs,
            alternate: None,
            access_keys: false,
            feeds: &feeds,
        },
        body,
    )
}

/// One event of an aggregate's story, as found in one service's stream.
#[derive(Debug, Clone)]
pub struct StoryEvent {
    /// The publishing service (`billing`).
    pub service: String,
    /// The event's page (`<base>/feed/events/<position>`).
    pub url: String,
    /// The event.
    pub event: Event,
}

/// A step the story is expected to reach: an event type and who publishes it.
#[derive(Debug, Clone)]
pub struct StoryStep {
    /// The event type that completes the step (`OrderShipped`).
    pub event_type: String,
    /// The service that publishes it.
    pub service: String,
}

/// One service's stream of the aggregate, as consulted.
#[derive(Debug, Clone)]
pub struct StorySource {
    /// The service.
    pub service: String,
    /// The stream's URL there.
    pub stream_url: String,
    /// Events found; None when the service could not be read.
    pub found: Option<usize>,
}

/// Everything several services published about one aggregate (an order), merged by
/// time, with the expected steps checked off.
#[derive(Debug, Clone)]
pub struct Story {
    /// The page's heading, e.g. `Order 0193…`.
    pub title: String,
    /// The landing page.
    pub home_url: String,
    /// The page's own URL (its JSON variant is `<url>.json`).
    pub url: String,
    /// The expected steps, in order.
    pub steps: Vec<StoryStep>,
    /// The services consulted.
    pub sources: Vec<StorySource>,
    /// The events, oldest first.
    pub events: Vec<StoryEvent>,
}

/// The page of a [`Story`]. Self-contained like the landing page.
pub fn story_page(s: &Story) -> String {
    let crumbs: [Crumb<'_>; 1] = [(&s.title, None)];
    let body = html! {
        h1 { (s.title) }
        h2 #steps { "Steps" }
        ol.steps {
            @for step in &s.steps {
                @let done = s.events.iter().find(|e| e.event.event_type.as_str() == step.event_type && e.service == step.service);
                li data-step=(step.event_type) data-done=(done.is_some()) {
                    @match done {
                        Some(e) => {
                            span.badge.sealed { "done" } " "
                            a href=(e.url) { (step.event_type) } " by " (step.service) " at " (utc(&e.event.occurred_at))
                        }
                        None => { span.badge.head { "waiting" } " " (step.event_type) " by " (step.service) }
                    }
                }
            }
        }
        h2 #story { "Everything published about it" }
        table.events #events {
            caption { "Events of " (s.title) " in every service, oldest first" }
            thead { tr {
                th scope="col" { "Time" }
                th scope="col" { "Service" }
                th scope="col" { "Type" }
                th scope="col" { "Event" }
                th scope="col" { "Data" }
            } }
            tbody {
                @if s.events.is_empty() {
                    tr.empty-row { td.empty colspan="5" { "No service has published anything about it yet." } }
                }
                @for e in &s.events {
                    tr data-type=(e.event.event_type.as_str()) data-service=(e.service) {
                        td.time data-label="Time" { (utc(&e.event.occurred_at)) }
                        td data-label="Service" { (e.service) }
                        td.type data-label="Type" { (e.event.event_type.as_str()) }
                        th.pos scope="row" data-label="Event" {
                            a href=(e.url) aria-label={ (e.event.event_type.as_str()) " in " (e.service) } { (e.service) " #" (e.event.position) }
                        }
                        td.data data-label="Data" { (json_block(&e.event.data, true, "data")) }
                    }
                }
            }
        }
        h2 #sources { "Streams consulted" }
        ul.sources {
            @for src in &s.sources {
                li {
                    a href=(src.stream_url) { (src.service) } ": "
                    @match src.found {
                        Some(0) => "nothing yet",
                        Some(n) => { (n) " events" },
                        None => span.error { "could not be read" },
                    }
                }
            }
        }
        p { a href={ (s.url) ".json" } type="application/json" { "This page as JSON" } }
    };
    layout(
        &Chrome {
            title: &s.title,
            styles: Styles::Inline,
            home: Some(&s.home_url),
            crumbs: &crumbs,
            alternate: None,
            access_keys: false,
            feeds: &[],
        },
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landing_page_links_and_announces_every_service_and_its_feed() {
        let services = [
            ("sales", "http://gw/sales"),
            ("billing", "http://gw/billing/"),
        ];
        let page = landing_page(&services, "http://gw/orders");
        assert!(page.contains("href=\"http://gw/sales/feed\""));
        assert!(page.contains("href=\"http://gw/billing/\""));
        assert!(page.contains("action=\"http://gw/orders\""));
        for feed in ["http://gw/sales/feed.atom", "http://gw/billing/feed.atom"] {
            assert!(
                page.contains(&format!(
                    "<link rel=\"alternate\" type=\"application/atom+xml\" href=\"{feed}\""
                )),
                "{feed}"
            );
        }
        assert!(page.contains("<html lang=\"en\">"));
    }

    #[test]
    fn a_story_checks_off_the_steps_it_has_events_for_and_escapes_their_data() {
        let event = |position, ty: &str| Event {
            position,
            id: uuid::Uuid::from_u128(position.into()),
            stream: StreamId::parse("order-7").expect("stream"),
            stream_version: 1,
            event_type: crate::event::EventType::parse(ty).expect("type"),
            occurred_at: DateTime::<Utc>::from_timestamp(1_700_000_000 + position as i64, 0)
                .expect("time"),
            data: serde_json::json!({ "note": "<script>x</script>" }),
            metadata: serde_json::json!({}),
        };
        let step = |event_type: &str, service: &str| StoryStep {
            event_type: event_type.into(),
            service: service.into(),
        };
        let page = story_page(&Story {
            title: "Order 7".into(),
            home_url: "http://gw/".into(),
            url: "http://gw/orders/7".into(),
            steps: vec![
                step("OrderAccepted", "sales"),
                step("OrderShipped", "shipping"),
            ],
            sources: vec![StorySource {
                service: "sales".into(),
                stream_url: "http://gw/sales/streams/order-7".into(),
                found: Some(1),
            }],
            events: vec![StoryEvent {
                service: "sales".into(),
                url: "http://gw/sales/feed/events/3".into(),
                event: event(3, "OrderAccepted"),
            }],
        });
        assert!(
            page.contains("data-step=\"OrderAccepted\" data-done=\"true\""),
            "{page}"
        );
        assert!(
            page.contains("data-step=\"OrderShipped\" data-done=\"false\""),
            "{page}"
        );
        assert!(page.contains("href=\"http://gw/sales/feed/events/3\""));
        assert!(page.contains("href=\"http://gw/\" rel=\"home\""));
        assert!(!page.contains("<script>x"), "data is escaped");
    }

    #[test]
    fn a_service_index_links_positions_to_their_events_and_says_whether_caught_up() {
        let page = service_index(&ServiceIndex {
            name: "billing".into(),
            base_url: "http://gw/billing".into(),
            home_url: Some("http://gw/".into()),
            head_position: 4,
            follows: vec![Following {
                name: "billing<-sales".into(),
                feed_url: "http://gw/sales/feed".into(),
                checkpoint: 9,
                head: 12,
                lag: 3,
                caught_up: false,
                last_error: None,
            }],
        });
        assert!(page.contains("href=\"http://gw/sales/feed/events/9\""));
        assert!(page.contains("href=\"http://gw/sales/feed/events/12\""));
        assert!(page.contains("data-caught-up=\"false\""));
        assert!(page.contains("catching up"));
        assert!(page.contains("href=\"http://gw/\" rel=\"home\""));
    }

    #[test]
    fn assets_have_content_hashed_names() {
        let css = asset(&CSS.name).expect("css");
        assert!(css.name.starts_with("feed.") && css.name.ends_with(".css"));
        assert!(asset("feed.css").is_none());
        assert!(version_tag().starts_with(&format!("t{TEMPLATE_VERSION}-")));
    }
}
