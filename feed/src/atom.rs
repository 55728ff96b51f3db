//! Events as Atom documents (RFC 4287), and back.
//!
//! # How the JSON travels
//!
//! RFC 4287 section 4.1.3.3 allows three kinds of inline content: text, HTML/XHTML and
//! XML media types. Anything else (such as `application/json`) MUST be Base64-encoded,
//! and then section 4.1.2 demands an `atom:summary` as well. Base64 would make the
//! feed unreadable in a browser and a feed reader, and a summary would carry the data
//! twice. So the event data is carried once, as the entry's
//! `<content type="text">`: the JSON text, XML-escaped, readable by every feed
//! reader. A namespaced attribute, `ev:type="application/json"`, tells programs how to
//! read that text (RFC 4287 allows foreign attributes on every element). The position,
//! stream, stream version and metadata travel in extension elements of the namespace
//! [`EV_NS`].
//!
//! # Why not `atom_syndication`
//!
//! The writer and reader are hand-written: `atom_syndication` cannot put a foreign
//! attribute on `content`, has no entry documents, escapes every `"` in JSON (20 %
//! bigger pages) and validates nothing on reading. Here the writer is a single pass
//! over the events into one buffer, and the reader (on `roxmltree`, which refuses
//! DTDs and so entity expansion attacks) checks every element the subscriber relies on.
//! Tests read the same documents with two independent parsers (`feed-rs`,
//! `atom_syndication`) and check RFC 4287's MUST rules.
//!
//! Rendering is deterministic: the same events and links give the same bytes, which
//! is what makes content-derived ETags and the page hash chain possible.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{Event, EventType, Json, Position, StreamId};

/// The Atom namespace.
pub const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
/// RFC 5005 feed history namespace (`fh:archive`).
pub const FH_NS: &str = "http://purl.org/syndication/history/1.0";
/// Our extension namespace for event fields.
pub const EV_NS: &str = "urn:x-pullfeeds:event";
/// Media type of feed documents.
pub const FEED_MEDIA_TYPE: &str = "application/atom+xml";

/// The links of a feed document (absolute URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// `self`
    pub this: Option<String>,
    /// `current`: the head.
    pub current: Option<String>,
    /// `first`: the oldest document.
    pub first: Option<String>,
    /// `prev-archive`: the older sealed page.
    pub prev_archive: Option<String>,
    /// `next-archive`: the newer document.
    pub next_archive: Option<String>,
    /// `related`: for an entry document, its stream feed.
    pub related: Option<String>,
    /// `up`: for an entry document, the page it belongs to.
    pub up: Option<String>,
}

impl Links {
    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("self", &self.this),
            ("current", &self.current),
            ("first", &self.first),
            ("prev-archive", &self.prev_archive),
            ("next-archive", &self.next_archive),
            ("related", &self.related),
            ("up", &self.up),
        ]
        .into_iter()
        .filter_map(|(rel, href)| href.as_deref().map(|h| (rel, h)))
    }

    /// The links as an RFC 8288 `Link` header value.
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        for (rel, href) in self.pairs() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "<{href}>; rel=\"{rel}\"");
        }
        out
    }
}

/// Everything about a feed document except its entries.
#[derive(Debug, Clone)]
pub struct FeedMeta<'a> {
    /// The feed's `atom:id`, the same on the head and every archive page (RFC 5005).
    pub id: &'a str,
    /// Human title.
    pub title: &'a str,
    /// The publishing service, as `atom:author`.
    pub author: &'a str,
    /// Base URL of the service, for the entries' links.
    pub base_url: &'a str,
    /// Navigation.
    pub links: &'a Links,
    /// Sealed archive page (`fh:archive`).
    pub archive: bool,
    /// For the head: the log's last position (also when the head has no entries).
    pub head_position: Option<Position>,
    /// `atom:updated` when there are no entries.
    pub empty_updated: DateTime<Utc>,
    /// SHA-256 (hex) of the Atom bytes of the `prev-archive` page: the hash chain
    /// (see [`crate::server`]). None only where there is no older page.
    pub prev_archive_digest: Option<&'a str>,
}

/// Renders a feed document; `entries` oldest first (they are written newest first),
/// however they hold their JSON. The server renders from the text the log stored,
/// checked to be JSON but not decoded. The log stores each value's compact
/// serialization, and serializing the value decoded from that text gives the same
/// text, so a page renders to the same bytes either way (test
/// `sealed_pages_render_the_same_bytes_from_stored_text_as_from_decoded_events`).
pub fn render_feed<J: Json>(meta: &FeedMeta<'_>, entries: &[Event<J>]) -> String {
    let mut out = String::with_capacity(1024 + entries.len() * 700);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    let _ = write!(
        out,
        "<feed xmlns=\"{ATOM_NS}\" xmlns:fh=\"{FH_NS}\" xmlns:ev=\"{EV_NS}\">\n<id>"
    );
    escape_text(&mut out, meta.id);
    out.push_str("</id>\n<title type=\"text\">");
    escape_text(&mut out, meta.title);
    out.push_str("</title>\n<updated>");
    let updated = entries.last().map_or(meta.empty_updated, |e| e.occurred_at);
    out.push_str(&format_time(&updated));
    out.push_str("</updated>\n<author><name>");
    escape_text(&mut out, meta.author);
    out.push_str("</name></author>\n");
    write_links(&mut out, meta.links);
    if meta.archive {
        out.push_str("<fh:archive/>\n");
    }
    if let Some(head) = meta.head_position {
        let _ = writeln!(out, "<ev:headPosition>{head}</ev:headPosition>");
    }
    if let Some(digest) = meta.prev_archive_digest {
        out.push_str("<ev:prevArchiveDigest>");
        escape_text(&mut out, digest);
        out.push_str("</ev:prevArchiveDigest>\n");
    }
    for e in entries.iter().rev() {
        write_entry(&mut out, e, meta.base_url, None, None);
    }
    out.push_str("</feed>\n");
    out
}

/// Renders one event as an Atom entry document.
pub fn render_entry<J: Json>(
    event: &Event<J>,
    author: &str,
    base_url: &str,
    links: &Links,
) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    write_entry(&mut out, event, base_url, Some(author), Some(links));
    out
}

fn write_links(out: &mut String, links: &Links) {
    for (rel, href) in links.pairs() {
        let _ = write!(
            out,
            "<link rel=\"{rel}\" type=\"{FEED_MEDIA_TYPE}\" href=\""
        );
        escape_attr(out, href);
        out.push_str("\"/>\n");
    }
}

fn write_entry<J: Json>(
    out: &mut String,
    e: &Event<J>,
    base_url: &str,
    author: Option<&str>,
    links: Option<&Links>,
) {
    if author.is_some() {
        let _ = writeln!(out, "<entry xmlns=\"{ATOM_NS}\" xmlns:ev=\"{EV_NS}\">");
    } else {
        out.push_str("<entry>\n");
    }
    let _ = write!(
        out,
        "<id>urn:uuid:{}</id>\n<title type=\"text\">{}</title>\n<updated>",
        e.id, e.event_type
    );
    out.push_str(&format_time(&e.occurred_at));
    out.push_str("</updated>\n");
    if let Some(author) = author {
        out.push_str("<author><name>");
        escape_text(out, author);
        out.push_str("</name></author>\n");
    }
    let _ = writeln!(out, "<category term=\"{}\"/>", e.event_type);
    let _ = write!(
        out,
        "<link rel=\"alternate\" type=\"{FEED_MEDIA_TYPE}\" href=\""
    );
    escape_attr(out, base_url);
    let _ = writeln!(out, "/feed/events/{}\"/>", e.position);
    if let Some(links) = links {
        write_links(out, links);
    }
    let _ = write!(
        out,
        "<ev:position>{}</ev:position>\n<ev:stream>{}</ev:stream>\n<ev:streamVersion>{}</ev:streamVersion>\n<ev:metadata>",
        e.position, e.stream, e.stream_version
    );
    push_escaped_json(out, &e.metadata.json_text());
    out.push_str("</ev:metadata>\n<content type=\"text\" ev:type=\"application/json\">");
    push_escaped_json(out, &e.data.json_text());
    out.push_str("</content>\n</entry>\n");
}

/// RFC 3339, UTC, microseconds: the exact form the log stores.
///
/// Written digit by digit: every event written to the log or to a page is formatted,
/// and chrono's `format` parses its pattern again on each call. Years outside
/// 0000-9999 and leap seconds take chrono's formatting (test
/// `times_format_exactly_as_the_strftime_pattern`).
pub fn format_time(t: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    let mut out = [0u8; 27];
    let mut put = |at: usize, width: u32, value: u32| {
        for i in 0..width {
            out[at + i as usize] = b'0' + (value / 10u32.pow(width - 1 - i) % 10) as u8;
        }
    };
    put(0, 4, t.year() as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 6, nanos / 1000);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[at] = c;
    }
    String::from_utf8(out.to_vec()).expect("ASCII digits and separators")
}

/// JSON text, XML-escaped. Valid JSON holds no C0 control but the whitespace
/// between tokens (serde_json's compact text none at all); of that, a carriage return
/// is written `&#13;`, since XML readers turn a literal one into a line feed. The two
/// other code points XML 1.0 forbids that can occur in a Rust string (U+FFFE, U+FFFF)
/// can only sit inside JSON strings, where `\uXXXX` is an exact equivalent. The runs
/// between the few characters that need escaping are copied as slices.
fn push_escaped_json(out: &mut String, json: &str) {
    let bytes = json.as_bytes();
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        // U+FFFE and U+FFFF are EF BF BE and EF BF BF in UTF-8.
        let (replacement, len) = match bytes[i] {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'\r' => ("&#13;", 1),
            0xEF if bytes.get(i + 1) == Some(&0xBF) => match bytes.get(i + 2) {
                Some(0xBE) => ("\\ufffe", 3),
                Some(0xBF) => ("\\uffff", 3),
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte or at the lead byte of a character: a boundary.
        out.push_str(&json[copied..i]);
        out.push_str(replacement);
        i += len;
        copied = i;
    }
    out.push_str(&json[copied..]);
}

fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => escape_text(out, c.encode_utf8(&mut [0; 4])),
        }
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Atom document: {0}")]
pub struct AtomError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, AtomError> {
    Err(AtomError(msg.into()))
}

/// A feed document as the subscriber sees it; `J` is how its entries hold their JSON
/// (see [`Event`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFeed<J = serde_json::Value> {
    /// Navigation links.
    pub links: Links,
    /// Whether it declares itself a sealed archive page.
    pub archive: bool,
    /// The producer's last position (head documents only).
    pub head_position: Option<Position>,
    /// The digest of the `prev-archive` page's bytes, as the producer recorded it.
    pub prev_archive_digest: Option<String>,
    /// Entries, oldest first.
    pub entries: Vec<Event<J>>,
}

/// The most bytes a document may have before the reader refuses it (a 1000-event page
/// is about 0.5 MB).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Reads a feed document. Besides the XML, it checks what RFC 4287 requires of a
/// feed (`atom:id`, `atom:title`, `atom:updated`) and that a head's
/// `ev:headPosition` is its newest entry's position: a head claiming more than it
/// holds would make a subscriber skip events.
pub fn parse_feed(xml: &str) -> Result<ParsedFeed, AtomError> {
    parse_feed_after(xml, 0)
}

/// [`parse_feed`] for a reader that has applied every position up to `after`: the
/// entries at or below it are left out of [`ParsedFeed::entries`] without being
/// decoded (only their `ev:position` is read, so the head check still sees them).
/// This is what a caught-up subscriber wants of a head that holds one new entry
/// among a page of old ones.
pub fn parse_feed_after(xml: &str, after: Position) -> Result<ParsedFeed, AtomError> {
    parse_feed_with(xml, after, decoded)
}

/// [`parse_feed_after`] for a mirror: each entry's JSON is kept as the text it came
/// in, checked to be JSON but not decoded (see [`crate::event::RawEvent`]).
pub fn parse_feed_raw(xml: &str, after: Position) -> Result<ParsedFeed<Box<RawValue>>, AtomError> {
    parse_feed_with(xml, after, kept_as_text)
}

/// The JSON checked and kept as text.
pub(crate) fn kept_as_text(text: Cow<'_, str>) -> Result<Box<RawValue>, serde_json::Error> {
    RawValue::from_string(text.into_owned())
}

/// How the reader turns the text of an entry's `content` or `ev:metadata` into the
/// entry's JSON.
pub(crate) type JsonFrom<J> = fn(Cow<'_, str>) -> Result<J, serde_json::Error>;

/// The JSON decoded.
fn decoded(text: Cow<'_, str>) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_str(&text)
}

/// [`parse_feed_after`], reading each entry's JSON with `json`.
pub(crate) fn parse_feed_with<J>(
    xml: &str,
    after: Position,
    json: JsonFrom<J>,
) -> Result<ParsedFeed<J>, AtomError> {
    if xml.len() > MAX_DOCUMENT_BYTES {
        return err("document too large");
    }
    let doc = roxmltree::Document::parse(xml).map_err(|e| AtomError(e.to_string()))?;
    let root = doc.root_element();
    if !is(root, ATOM_NS, "feed") {
        return err("the root element is not atom:feed");
    }
    let mut feed = ParsedFeed {
        links: Links::default(),
        archive: false,
        head_position: None,
        prev_archive_digest: None,
        entries: Vec::new(),
    };
    let (mut id, mut title, mut updated) = (false, false, false);
    let mut newest_skipped = 0;
    for child in root.children().filter(|n| n.is_element()) {
        match (child.tag_name().namespace(), child.tag_name().name()) {
            (Some(ATOM_NS), "id") => id = !text_of(child).trim().is_empty(),
            (Some(ATOM_NS), "title") => title = true,
            (Some(ATOM_NS), "updated") => {
                let t = text_of(child);
                DateTime::parse_from_rfc3339(t.trim())
                    .map_err(|e| AtomError(format!("feed atom:updated {:?}: {e}", truncate(&t))))?;
                updated = true;
            }
            (Some(EV_NS), "prevArchiveDigest") => {
                feed.prev_archive_digest = Some(text_of(child).trim().to_owned());
            }
            (Some(ATOM_NS), "link") => read_link(child, &mut feed.links),
            (Some(ATOM_NS), "entry") => match entry_position(child) {
                Some(p) if (1..=after).contains(&p) => newest_skipped = newest_skipped.max(p),
                _ => feed.entries.push(read_entry(child, json)?),
            },
            (Some(FH_NS), "archive") => feed.archive = true,
            (Some(EV_NS), "headPosition") => {
                feed.head_position = Some(parse_num(child, "ev:headPosition")?);
            }
            _ => {}
        }
    }
    for (present, what) in [
        (id, "atom:id"),
        (title, "atom:title"),
        (updated, "atom:updated"),
    ] {
        if !present {
            return err(format!("feed without {what}"));
        }
    }
    feed.entries.sort_by_key(|e| e.position);
    let newest = feed
        .entries
        .last()
        .map_or(0, |e| e.position)
        .max(newest_skipped);
    if let Some(head) = feed.head_position
        && newest != 0
        && newest != head
    {
        return err(format!(
            "the head says the log ends at position {head}, but its newest entry is {newest}"
        ));
    }
    Ok(feed)
}

/// Reads an entry document.
pub fn parse_entry(xml: &str) -> Result<Event, AtomError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| AtomError(e.to_string()))?;
    let root = doc.root_element();
    if !is(root, ATOM_NS, "entry") {
        return err("the root element is not atom:entry");
    }
    read_entry(root, decoded)
}

fn is(node: roxmltree::Node<'_, '_>, ns: &str, name: &str) -> bool {
    node.tag_name().namespace() == Some(ns) && node.tag_name().name() == name
}

/// Section 4.2.7.2: a relation that is not an absolute IRI is relative to the IANA
/// registry, so `self` and `http://www.iana.org/assignments/relation/self` are equal.
fn read_link(node: roxmltree::Node<'_, '_>, links: &mut Links) {
    let rel = node.attribute("rel").unwrap_or("alternate");
    let rel = rel
        .strip_prefix("http://www.iana.org/assignments/relation/")
        .unwrap_or(rel);
    let Some(href) = node.attribute("href") else {
        return;
    };
    let slot = match rel {
        "self" => &mut links.this,
        "current" => &mut links.current,
        "first" => &mut links.first,
        "prev-archive" => &mut links.prev_archive,
        "next-archive" => &mut links.next_archive,
        "related" => &mut links.related,
        "up" => &mut links.up,
        _ => return,
    };
    *slot = Some(href.to_owned());
}

/// The text of `node`'s children, borrowed from the document when there is one
/// piece (nearly always), so reading a page does not copy every field.
fn text_of<'a>(node: roxmltree::Node<'a, '_>) -> Cow<'a, str> {
    let mut texts = node.children().filter_map(|c| c.text());
    match (texts.next(), texts.next()) {
        (None, _) => Cow::Borrowed(""),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let mut all = String::from(first);
            all.push_str(second);
            all.extend(texts);
            Cow::Owned(all)
        }
    }
}

fn parse_num(node: roxmltree::Node<'_, '_>, what: &str) -> Result<u64, AtomError> {
    let t = text_of(node);
    t.trim()
        .parse::<u64>()
        .map_err(|_| AtomError(format!("{what} is not a number: {:?}", truncate(&t))))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// An entry's `ev:position`, if it has one that reads as a number.
fn entry_position(node: roxmltree::Node<'_, '_>) -> Option<Position> {
    node.children()
        .find(|c| is(*c, EV_NS, "position"))
        .and_then(|c| parse_num(c, "ev:position").ok())
}

fn read_entry<J>(node: roxmltree::Node<'_, '_>, json: JsonFrom<J>) -> Result<Event<J>, AtomError> {
    let mut id = None;
    let mut title = None;
    let mut updated = None;
    let mut position = None;
    let mut stream = None;
    let mut version = None;
    let mut metadata = None;
    let mut data = None;
    for c in node.children().filter(|n| n.is_element()) {
        match (c.tag_name().namespace(), c.tag_name().name()) {
            (Some(ATOM_NS), "id") => id = Some(text_of(c)),
            (Some(ATOM_NS), "title") => title = Some(text_of(c)),
            (Some(ATOM_NS), "updated") => updated = Some(text_of(c)),
            (Some(ATOM_NS), "content") => {
                if c.attribute("type").unwrap_or("text") != "text" {
                    return err("entry content is not type=\"text\" JSON");
                }
                data = Some(text_of(c));
            }
            (Some(EV_NS), "position") => position = Some(parse_num(c, "ev:position")?),
            (Some(EV_NS), "streamVersion") => version = Some(parse_num(c, "ev:streamVersion")?),
            (Some(EV_NS), "stream") => stream = Some(text_of(c)),
            (Some(EV_NS), "metadata") => metadata = Some(text_of(c)),
            _ => {}
        }
    }
    let id = id.ok_or_else(|| AtomError("entry without atom:id".into()))?;
    let uuid = id
        .trim()
        .strip_prefix("urn:uuid:")
        .and_then(|u| Uuid::parse_str(u).ok())
        .ok_or_else(|| AtomError(format!("entry id is not urn:uuid: {:?}", truncate(&id))))?;
    let position =
        position.ok_or_else(|| AtomError(format!("entry {uuid} without ev:position")))?;
    let missing = |what: &str| AtomError(format!("entry at position {position} without {what}"));
    let event_type = EventType::parse(title.ok_or_else(|| missing("atom:title"))?.trim())
        .map_err(|e| AtomError(e.to_string()))?;
    let updated = updated.ok_or_else(|| missing("atom:updated"))?;
    let occurred_at = DateTime::parse_from_rfc3339(updated.trim())
        .map_err(|e| AtomError(format!("entry at position {position}: atom:updated: {e}")))?
        .with_timezone(&Utc);
    let stream = StreamId::parse(stream.ok_or_else(|| missing("ev:stream"))?.trim())
        .map_err(|e| AtomError(e.to_string()))?;
    let data = data.ok_or_else(|| missing("atom:content"))?;
    let data = json(data).map_err(|e| {
        AtomError(format!(
            "entry at position {position}: content is not JSON: {e}"
        ))
    })?;
    let metadata = json(metadata.unwrap_or(Cow::Borrowed("{}")))
        .map_err(|e| AtomError(format!("entry at position {position}: ev:metadata: {e}")))?;
    if position == 0 {
        return err("entry at position 0");
    }
    Ok(Event {
        position,
        id: uuid,
        stream,
        stream_version: version.ok_or_else(|| missing("ev:streamVersion"))?,
        event_type,
        occurred_at,
        data,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The escaping as the XML 1.0 rules state it, one character at a time.
    fn escaped_char_by_char(json: &str) -> String {
        let mut out = String::new();
        for c in json.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '\r' => out.push_str("&#13;"),
                '\u{FFFE}' => out.push_str("\\ufffe"),
                '\u{FFFF}' => out.push_str("\\uffff"),
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn json_is_escaped_exactly_as_character_by_character(
            s in "(\\PC|[&<>\r\n\t\u{FFFE}\u{FFFF}\u{FFFD}\u{EFBF}\u{FEFF}\u{10FFFF}])*"
        ) {
            let mut out = String::from("x");
            super::push_escaped_json(&mut out, &s);
            prop_assert_eq!(out, format!("x{}", escaped_char_by_char(&s)));
        }
    }

    /// A JSON value of every kind, with awkward strings and numbers, `depth` deep.
    fn awkward_value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
        use serde_json::Value;
        const CHARS: [char; 16] = [
            'a', '"', '\\', '/', '<', '>', '&', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}',
            '\u{FFFE}', '\u{FFFF}', '\u{FFFD}', 'é', '🦀',
        ];
        match rng.u8(0..if depth == 0 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => Value::from(rng.i64(..)),
            3 => Value::from(rng.u64(..)),
            4 => serde_json::Number::from_f64(f64::from_bits(rng.u64(..)))
                .map_or(Value::from(0.5), Value::Number),
            5 => Value::String(
                (0..rng.usize(0..12))
                    .map(|_| CHARS[rng.usize(..16)])
                    .collect(),
            ),
            6 => Value::Array(
                (0..rng.usize(0..4))
                    .map(|_| awkward_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.usize(0..4))
                    .map(|i| {
                        (
                            format!("k{i}{}", CHARS[rng.usize(..16)]),
                            awkward_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    #[tokio::test]
    async fn sealed_pages_render_the_same_bytes_from_stored_text_as_from_decoded_events() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = crate::store::EventLog::connect(&dir.path().join("log.db").display().to_string())
            .await
            .expect("log");
        let mut rng = fastrand::Rng::with_seed(7);
        let events: Vec<_> = (0..400)
            .map(|i| {
                let data = serde_json::json!({ "n": i, "v": awkward_value(&mut rng, 3) });
                let mut e = crate::event::NewEvent::new(
                    crate::event::StreamId::parse(format!("s-{}", i % 7)).expect("stream"),
                    crate::event::EventType::parse("Awkward").expect("type"),
                    data,
                );
                e.metadata = serde_json::json!({ "m": awkward_value(&mut rng, 2) });
                e
            })
            .collect();
        let mut tx = log.begin().await.expect("begin");
        log.append(&mut tx, crate::store::Expected::Any, &events)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        let links = super::Links {
            this: Some("http://h/feed/archive/1-400".into()),
            ..super::Links::default()
        };
        let meta = super::FeedMeta {
            id: "http://h/feed",
            title: "t",
            author: "svc",
            base_url: "http://h",
            links: &links,
            archive: true,
            head_position: None,
            empty_updated: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            prev_archive_digest: Some("ab"),
        };
        // Both read paths: one row for the whole range, and row by row.
        for (from, to) in [(1, 400), (1, crate::store::ONE_ROW_READ + 1)] {
            let stored = log.read_range_raw(from, to).await.expect("stored");
            let decoded = log.read_range(from, to).await.expect("decoded");
            assert_eq!(stored.len(), 400);
            let (a, b) = (
                super::render_feed(&meta, &stored),
                super::render_feed(&meta, &decoded),
            );
            if let Some(at) = a.bytes().zip(b.bytes()).position(|(x, y)| x != y) {
                let around = |s: &str| {
                    s[at.saturating_sub(80)..]
                        .chars()
                        .take(160)
                        .collect::<String>()
                };
                panic!(
                    "from stored text: {:?}\nfrom decoded events: {:?}",
                    around(&a),
                    around(&b)
                );
            }
            assert_eq!(a.len(), b.len());
        }
        // A mirror reads the page back with each entry's JSON as the text that was
        // stored (but for the two code points XML forbids, written as JSON escapes),
        // and leaves out what it has applied.
        let as_sent = |t: &str| {
            t.replace('\u{FFFE}', "\\ufffe")
                .replace('\u{FFFF}', "\\uffff")
        };
        let stored = log.read_range_raw(1, 400).await.expect("stored");
        let page = super::parse_feed_raw(&super::render_feed(&meta, &stored), 100).expect("raw");
        assert_eq!(page.entries.len(), 300);
        for (read, kept) in page.entries.iter().zip(&stored[100..]) {
            assert_eq!(read.position, kept.position);
            assert_eq!(read.data.get(), as_sent(kept.data.get()));
            assert_eq!(read.metadata.get(), as_sent(kept.metadata.get()));
        }
    }

    proptest! {
        #[test]
        fn times_format_exactly_as_the_strftime_pattern(
            secs in -70_000_000_000i64..300_000_000_000i64,
            nanos in 0u32..2_000_000_000,
        ) {
            if let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, nanos) {
                prop_assert_eq!(
                    super::format_time(&t),
                    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
                );
            }
        }
    }

    #[test]
    fn escaping_json_covers_every_replaced_character() {
        let mut out = String::new();
        super::push_escaped_json(&mut out, "a&b<c>d\u{FFFE}e\u{FFFF}f\u{FFFD}\u{FEFF}\r\n\t");
        assert_eq!(
            out,
            "a&amp;b&lt;c&gt;d\\ufffee\\ufffff\u{FFFD}\u{FEFF}&#13;\n\t"
        );
    }
}
