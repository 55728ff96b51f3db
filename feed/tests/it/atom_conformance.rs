//! Documents meet RFC 4287's MUST rules and parse in independent feed readers, and
//! any event survives the trip to Atom and back.

use chrono::{TimeZone, Utc};
use feed::atom::{self, ATOM_NS, FeedMeta, Links};
use feed::event::{Event, EventType, StreamId};
use feed::store::EventLog;
use proptest::prelude::*;

use crate::helpers::{TestFeed, append_n, client, get, sqlite_url};

/// Checks the MUST-level rules of RFC 4287 that a document produced by us could
/// break. Returns the violations.
fn rfc4287_violations(xml: &str) -> Vec<String> {
    let mut v = Vec::new();
    let doc = match roxmltree::Document::parse(xml) {
        Ok(d) => d,
        Err(e) => return vec![format!("not well-formed XML: {e}")],
    };
    let root = doc.root_element();
    let atom = |n: &roxmltree::Node<'_, '_>, name: &str| {
        n.tag_name().namespace() == Some(ATOM_NS) && n.tag_name().name() == name
    };
    let children = |n: roxmltree::Node<'_, '_>, name: &str| {
        n.children()
            .filter(|c| c.is_element() && atom(c, name))
            .count()
    };
    let is_date = |n: roxmltree::Node<'_, '_>| {
        let t = n.text().unwrap_or("");
        // RFC 3339 date-time, upper-case T and Z (section 3.3).
        chrono::DateTime::parse_from_rfc3339(t).is_ok()
            && t.contains('T')
            && !t.contains('t')
            && !t.contains('z')
    };
    let check_common =
        |n: roxmltree::Node<'_, '_>, what: &str, v: &mut Vec<String>, need_author: bool| {
            for name in ["id", "title", "updated"] {
                if children(n, name) != 1 {
                    v.push(format!(
                        "{what}: {} atom:{name} elements (4.1.1/4.1.2: exactly one)",
                        children(n, name)
                    ));
                }
            }
            for name in [
                "rights",
                "subtitle",
                "icon",
                "logo",
                "generator",
                "summary",
                "content",
                "published",
            ] {
                if children(n, name) > 1 {
                    v.push(format!("{what}: more than one atom:{name}"));
                }
            }
            if need_author && children(n, "author") == 0 {
                v.push(format!("{what}: no atom:author (4.1.1/4.1.2)"));
            }
            let mut alternates = std::collections::HashSet::new();
            for c in n.children().filter(|c| c.is_element()) {
                if (atom(&c, "updated") || atom(&c, "published")) && !is_date(c) {
                    v.push(format!(
                        "{what}: {} is not an RFC 3339 date-time (3.3)",
                        c.text().unwrap_or("")
                    ));
                }
                if atom(&c, "id") {
                    let t = c.text().unwrap_or("");
                    if !t.contains(':') || t.contains(' ') {
                        v.push(format!(
                            "{what}: atom:id {t:?} is not an absolute IRI (4.2.6)"
                        ));
                    }
                }
                if atom(&c, "link") {
                    let Some(href) = c.attribute("href") else {
                        v.push(format!("{what}: atom:link without href (4.2.7.1)"));
                        continue;
                    };
                    if c.attribute("rel").unwrap_or("alternate") == "alternate"
                        && !alternates.insert((
                            c.attribute("type").map(str::to_owned),
                            c.attribute("hreflang").map(str::to_owned),
                        ))
                    {
                        v.push(format!(
                            "{what}: two alternate links with the same type and hreflang ({href})"
                        ));
                    }
                }
                if atom(&c, "category") && c.attribute("term").is_none() {
                    v.push(format!("{what}: atom:category without term (4.2.2.1)"));
                }
                if atom(&c, "author") && children(c, "name") != 1 {
                    v.push(format!(
                        "{what}: person construct without exactly one atom:name (3.2.1)"
                    ));
                }
                if atom(&c, "title")
                    || atom(&c, "summary")
                    || atom(&c, "rights")
                    || atom(&c, "subtitle")
                {
                    let t = c.attribute("type").unwrap_or("text");
                    if !["text", "html", "xhtml"].contains(&t) {
                        v.push(format!("{what}: text construct of type {t} (3.1.1)"));
                    }
                    if t != "xhtml" && c.children().any(|x| x.is_element()) {
                        v.push(format!(
                            "{what}: text construct with child elements (3.1.1.1)"
                        ));
                    }
                }
            }
        };
    let check_entry = |e: roxmltree::Node<'_, '_>, v: &mut Vec<String>, need_author: bool| {
        check_common(e, "entry", v, need_author);
        let content = e.children().find(|c| c.is_element() && atom(c, "content"));
        match content {
            None => {
                let has_alternate = e.children().any(|c| {
                    c.is_element()
                        && atom(&c, "link")
                        && c.attribute("rel").unwrap_or("alternate") == "alternate"
                });
                if !has_alternate {
                    v.push("entry: no atom:content and no alternate link (4.1.1.2)".into());
                }
            }
            Some(c) => {
                let t = c.attribute("type").unwrap_or("text");
                let xmlish = t.ends_with("+xml") || t.ends_with("/xml");
                let inline_ok =
                    ["text", "html", "xhtml"].contains(&t) || xmlish || t.starts_with("text/");
                let has_summary = children(e, "summary") == 1;
                if !inline_ok && !has_summary {
                    v.push(format!("entry: content type {t} is Base64 (4.1.3.3) and then needs atom:summary (4.1.2)"));
                }
                if c.attribute("src").is_some() && !has_summary {
                    v.push("entry: content with src needs atom:summary".into());
                }
                if t == "text" && c.children().any(|x| x.is_element()) {
                    v.push("entry: text content with child elements (4.1.3.3)".into());
                }
            }
        }
    };
    if atom(&root, "feed") {
        let feed_has_author = children(root, "author") > 0;
        check_common(root, "feed", &mut v, false);
        let entries: Vec<_> = root
            .children()
            .filter(|c| c.is_element() && atom(c, "entry"))
            .collect();
        if !feed_has_author && entries.is_empty() {
            v.push("feed: no atom:author and no entries (4.1.1)".into());
        }
        for e in entries {
            check_entry(e, &mut v, !feed_has_author);
        }
    } else if atom(&root, "entry") {
        check_entry(root, &mut v, true);
    } else {
        v.push("root is neither atom:feed nor atom:entry".into());
    }
    v
}

#[tokio::test]
async fn every_document_meets_rfc_4287_and_parses_in_independent_readers() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = EventLog::connect(&sqlite_url(&dir, "log.db"))
        .await
        .expect("log");
    let feed = TestFeed::start(log.clone(), 10).await;
    let c = client();
    // The empty head too.
    let mut paths = vec!["/feed".to_owned()];
    let empty = get(&c, &feed.url("/feed"), &[])
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(
        rfc4287_violations(&empty),
        Vec::<String>::new(),
        "empty head"
    );
    append_n(&log, 25, 25).await;
    // A stream long enough for sealed stream pages.
    let mut tx = log.begin().await.expect("begin");
    let big: Vec<_> = (0..23).map(|i| crate::helpers::event("big", i)).collect();
    log.append(&mut tx, feed::Expected::Any, &big)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    paths.extend(
        [
            "/feed/archive/1-10",
            "/feed/archive/11-20",
            "/feed/archive/21-30",
            "/streams/s-3",
            "/streams/s-3.atom",
            "/streams/big/archive/1-10",
            "/streams/big/archive/11-20",
            "/streams/big",
        ]
        .map(str::to_owned),
    );
    for path in &paths {
        let xml = get(&c, &feed.url(path), &[])
            .await
            .text()
            .await
            .expect("body");
        assert_eq!(rfc4287_violations(&xml), Vec::<String>::new(), "{path}");
        let parsed = feed_rs::parser::parse(xml.as_bytes())
            .unwrap_or_else(|e| panic!("feed-rs rejects {path}: {e}"));
        let ours = atom::parse_feed(&xml).expect("our reader");
        assert_eq!(parsed.entries.len(), ours.entries.len(), "{path}");
        for (theirs, mine) in parsed.entries.iter().zip(ours.entries.iter().rev()) {
            assert_eq!(theirs.id, format!("urn:uuid:{}", mine.id));
            let content = theirs
                .content
                .as_ref()
                .and_then(|c| c.body.clone())
                .expect("content");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&content).expect("json"),
                mine.data
            );
        }
        let other = atom_syndication::Feed::read_from(xml.as_bytes())
            .unwrap_or_else(|e| panic!("atom_syndication rejects {path}: {e}"));
        assert_eq!(other.entries().len(), ours.entries.len());
    }
    let entry = get(&c, &feed.url("/feed/events/7"), &[]).await;
    assert!(
        entry.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/atom+xml;type=entry")
    );
    let xml = entry.text().await.expect("body");
    assert_eq!(
        rfc4287_violations(&xml),
        Vec::<String>::new(),
        "entry document"
    );
    assert_eq!(atom::parse_entry(&xml).expect("entry").position, 7);
    let parsed = feed_rs::parser::parse(xml.as_bytes()).expect("feed-rs reads the entry document");
    assert_eq!(parsed.entries.len(), 1);
    let theirs = &parsed.entries[0];
    let mine = atom::parse_entry(&xml).expect("entry");
    assert_eq!(theirs.id, format!("urn:uuid:{}", mine.id));
    let content = theirs
        .content
        .as_ref()
        .and_then(|c| c.body.clone())
        .expect("content");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&content).expect("json"),
        mine.data
    );
}

#[test]
fn the_checker_catches_raw_json_content_and_missing_elements() {
    let bad = r#"<feed xmlns="http://www.w3.org/2005/Atom"><id>x:1</id><title>t</title><updated>2026-01-01T00:00:00Z</updated>
        <author><name>a</name></author>
        <entry><id>urn:uuid:1</id><title>T</title><content type="application/json">{"a":1}</content></entry></feed>"#;
    let v = rfc4287_violations(bad);
    assert!(v.iter().any(|m| m.contains("4.1.3.3")), "{v:?}");
    assert!(v.iter().any(|m| m.contains("atom:updated")), "{v:?}");
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC*".prop_map(serde_json::Value::from),
        // XML-special and awkward characters.
        "[<>&\"'\\]\\[{}\u{0}-\u{1f}\u{7f}\u{fffe}\u{ffff}\u{10ffff}é€😀 ]{0,20}"
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map("\\PC{0,12}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        1u64..i64::MAX as u64,
        any::<u128>(),
        "[a-z0-9:._~-]{1,40}",
        1u64..1_000_000,
        "[A-Z][A-Za-z0-9_.]{0,30}",
        0i64..4_000_000_000_000_000,
        prop::collection::btree_map("\\PC{0,12}", arb_json(), 0..10),
        prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 0..3),
    )
        .prop_filter_map(
            "valid names",
            |(position, id, stream, version, t, micros, data, meta)| {
                Some(Event {
                    position,
                    id: uuid::Uuid::from_u128(id),
                    stream: StreamId::parse(stream).ok()?,
                    stream_version: version,
                    event_type: EventType::parse(t).ok()?,
                    occurred_at: Utc.timestamp_micros(micros).single()?,
                    data: serde_json::Value::Object(data.into_iter().collect()),
                    metadata: serde_json::Value::Object(meta.into_iter().collect()),
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_event_survives_atom_and_back(events in prop::collection::vec(arb_event(), 1..6), big in 0usize..3) {
        let mut events = events;
        if big > 1 {
            events[0].data["big"] = serde_json::Value::from("x<&>".repeat(20_000));
        }
        // A page holds distinct, ordered positions.
        for (i, e) in events.iter_mut().enumerate() {
            e.position = i as u64 + 1;
        }
        let links = Links { this: Some("http://h/feed".into()), ..Links::default() };
        let xml = atom::render_feed(&FeedMeta {
            id: "http://h/feed",
            title: "t <&>",
            author: "svc",
            base_url: "http://h",
            links: &links,
            archive: true,
            head_position: None,
            empty_updated: Utc.timestamp_micros(0).single().expect("epoch"),
            prev_archive_digest: Some("00ff"),
        }, &events);
        prop_assert_eq!(rfc4287_violations(&xml), Vec::<String>::new());
        let back = atom::parse_feed(&xml).expect("parse");
        prop_assert_eq!(&back.entries, &events);
        prop_assert!(back.archive);
        let entry = atom::render_entry(&events[0], "svc", "http://h", &links);
        prop_assert_eq!(atom::parse_entry(&entry).expect("entry"), events[0].clone());
    }

    #[test]
    fn the_atom_reader_never_panics_on_garbage(s in "\\PC{0,300}") {
        let _ = atom::parse_feed(&s);
        let _ = atom::parse_entry(&s);
    }
}

/// Cases per hostile-input property: 10,000 by default, `PROPTEST_CASES` for more.
fn hostile_cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A valid head document with a few events, the seed of the mutations.
fn valid_head() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(render_valid_head).clone()
}

fn render_valid_head() -> String {
    // Two entries: enough for order and head checks, small enough that 10,000
    // mutants parse in seconds in a debug build.
    let events: Vec<Event> = (1..=2u64)
        .map(|p| Event {
            position: p,
            id: uuid::Uuid::from_u128(p as u128),
            stream: feed::StreamId::parse(format!("order-{p}")).expect("stream"),
            stream_version: 1,
            event_type: feed::EventType::parse("OrderAccepted").expect("type"),
            occurred_at: Utc
                .timestamp_micros(1_700_000_000_000_000 + p as i64)
                .single()
                .expect("time"),
            data: serde_json::json!({ "n": p, "s": "<&>\"" }),
            metadata: serde_json::json!({ "correlation": "c" }),
        })
        .collect();
    let links = Links {
        this: Some("http://h/feed".into()),
        current: Some("http://h/feed".into()),
        first: Some("http://h/feed/archive/1-10".into()),
        prev_archive: Some("http://h/feed/archive/1-10".into()),
        ..Links::default()
    };
    atom::render_feed(
        &FeedMeta {
            id: "http://h/feed",
            title: "t",
            author: "svc",
            base_url: "http://h",
            links: &links,
            archive: false,
            head_position: Some(2),
            empty_updated: Utc.timestamp_micros(0).single().expect("epoch"),
            prev_archive_digest: Some("ab"),
        },
        &events,
    )
}

/// One change to a document's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Replace(usize, u8),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        Just(b"<".to_vec()),
        Just(b">".to_vec()),
        Just(b"&".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"</entry>".to_vec()),
        Just(b"<entry>".to_vec()),
        Just(b"<ev:position>0</ev:position>".to_vec()),
        Just(b"<ev:headPosition>99999999999999999999</ev:headPosition>".to_vec()),
        Just(b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]>".to_vec()),
        Just(b"&a;".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"\0".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), special).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..200).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn mutate(doc: &mut Vec<u8>, m: &Mutation) {
    let len = doc.len().max(1);
    match m {
        Mutation::Delete(at, n) => {
            let at = at % len;
            let end = (at + n).min(doc.len());
            if at < end {
                doc.drain(at..end);
            }
        }
        Mutation::Insert(at, bytes) => {
            let at = at % (doc.len() + 1);
            doc.splice(at..at, bytes.iter().copied());
        }
        Mutation::Replace(at, b) => {
            if !doc.is_empty() {
                let at = at % doc.len();
                doc[at] = *b;
            }
        }
        Mutation::Truncate(at) => doc.truncate(at % len),
        Mutation::Duplicate(at, n) => {
            let at = at % len;
            let end = (at + n).min(doc.len());
            if at < end {
                let copy = doc[at..end].to_vec();
                doc.splice(end..end, copy);
            }
        }
    }
}

/// What the reader promises about any document it accepts.
fn check_accepted(feed: &atom::ParsedFeed) -> Result<(), TestCaseError> {
    let positions: Vec<u64> = feed.entries.iter().map(|e| e.position).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    prop_assert_eq!(&positions, &sorted);
    prop_assert!(positions.iter().all(|p| *p > 0));
    if let (Some(head), Some(last)) = (feed.head_position, positions.last()) {
        prop_assert_eq!(head, *last);
    }
    Ok(())
}

proptest! {
    #![proptest_config(hostile_cases())]

    #[test]
    fn the_atom_reader_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(feed) = atom::parse_feed(&text) {
            check_accepted(&feed)?;
        }
        let _ = atom::parse_entry(&text);
    }

    #[test]
    fn the_atom_reader_survives_mutated_valid_documents(mutations in prop::collection::vec(arb_mutation(), 1..5)) {
        let mut doc = valid_head().into_bytes();
        for m in &mutations {
            mutate(&mut doc, m);
        }
        let text = String::from_utf8_lossy(&doc);
        if let Ok(feed) = atom::parse_feed(&text) {
            check_accepted(&feed)?;
        }
        let _ = atom::parse_entry(&text);
    }
}

#[test]
fn the_atom_reader_refuses_what_it_cannot_rely_on() {
    let valid = valid_head();
    let parsed = atom::parse_feed(&valid).expect("the seed is valid");
    assert_eq!(parsed.entries.len(), 2);
    assert_eq!(parsed.prev_archive_digest.as_deref(), Some("ab"));
    let cases = [
        (valid.replacen("<id>http://h/feed</id>", "", 1), "atom:id"),
        (
            valid.replacen("<title type=\"text\">t</title>", "", 1),
            "atom:title",
        ),
        (
            {
                let start = valid.find("<updated>").expect("updated");
                let end = valid.find("</updated>").expect("updated") + "</updated>".len();
                format!("{}{}", &valid[..start], &valid[end..])
            },
            "atom:updated",
        ),
        (
            valid.replace("<ev:headPosition>2<", "<ev:headPosition>9<"),
            "ends at position 9",
        ),
        (
            format!(
                "<?xml version=\"1.0\"?><!DOCTYPE lol [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>{}",
                valid
                    .replacen("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n", "", 1)
                    .replacen("<title type=\"text\">t", "<title type=\"text\">&c;", 1)
            ),
            "",
        ),
    ];
    for (doc, says) in cases {
        let err = atom::parse_feed(&doc).expect_err(says);
        assert!(err.to_string().contains(says), "{err} (wanted {says})");
    }
    // Deep nesting is refused or read, never a stack overflow.
    let deep = format!(
        "<feed xmlns=\"http://www.w3.org/2005/Atom\">{}{}</feed>",
        "<x>".repeat(100_000),
        "</x>".repeat(100_000)
    );
    assert!(atom::parse_feed(&deep).is_err());
}

#[test]
fn a_reader_that_applied_some_positions_gets_only_the_newer_entries_and_the_same_checks() {
    let valid = valid_head();
    let all = atom::parse_feed(&valid).expect("the seed is valid");
    let newer = atom::parse_feed_after(&valid, 1).expect("valid");
    assert_eq!(newer.entries, all.entries[1..]);
    assert_eq!(newer.head_position, Some(2));
    assert_eq!(newer.links, all.links);
    let none_new = atom::parse_feed_after(&valid, 2).expect("valid");
    assert!(none_new.entries.is_empty());
    assert_eq!(none_new.head_position, Some(2));
    // An entry already applied is not decoded again...
    let old_broken = valid.replacen("<ev:stream>order-1</ev:stream>", "", 1);
    assert!(atom::parse_feed(&old_broken).is_err());
    assert_eq!(
        atom::parse_feed_after(&old_broken, 1)
            .expect("valid")
            .entries
            .len(),
        1
    );
    // ...but the head must still name its newest entry, and a newer entry must be whole.
    let lying = valid.replace("<ev:headPosition>2<", "<ev:headPosition>9<");
    let err = atom::parse_feed_after(&lying, 2).expect_err("a head past its entries");
    assert!(err.to_string().contains("ends at position 9"), "{err}");
    let new_broken = valid.replacen("<ev:stream>order-2</ev:stream>", "", 1);
    let err = atom::parse_feed_after(&new_broken, 1).expect_err("an entry without ev:stream");
    assert!(err.to_string().contains("ev:stream"), "{err}");
}

#[test]
fn the_atom_reader_refuses_xml_that_is_not_well_formed() {
    let valid = valid_head();
    let body = valid.replacen("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n", "", 1);
    // Each case edits the valid document once: (what, the text, its replacement).
    let edits = [
        ("an unclosed element", "</feed>", ""),
        ("a mismatched end tag", "</ev:stream>", "</ev:streams>"),
        ("an undeclared prefix", "<ev:stream>", "<xx:stream>"),
        (
            "an undeclared attribute prefix",
            "<link rel=",
            "<link xx:a=\"1\" rel=",
        ),
        ("an unknown entity", "order-1<", "order-1&nbsp;<"),
        ("a control character", "order-1<", "order-1\u{1}<"),
        (
            "a reference to a control character",
            "order-1<",
            "order-1&#1;<",
        ),
        ("U+FFFE", "order-1<", "order-1\u{FFFE}<"),
        (
            "an unquoted attribute",
            "<link rel=\"self\"",
            "<link rel=self",
        ),
        (
            "a duplicate attribute",
            "<link rel=\"self\"",
            "<link rel=\"self\" rel=\"up\"",
        ),
        (
            "attributes without white space between them",
            "<link rel=\"self\" type=",
            "<link rel=\"self\"type=",
        ),
        (
            "'<' in an attribute value",
            "<link rel=\"self\"",
            "<link rel=\"se<lf\"",
        ),
        ("\"]]>\" in text", "order-1<", "order-1]]><"),
        (
            "an XML declaration without a version",
            "version=\"1.0\" ",
            "",
        ),
        ("a colon at the end of a name", "<entry>", "<entry:>"),
        ("a name that starts with a digit", "<entry>", "<entry><1x/>"),
        ("'--' in a comment", "<entry>", "<entry><!-- a -- b -->"),
    ];
    let whole = [
        ("two root elements", format!("{valid}<feed/>")),
        ("text after the root", format!("{valid}trailing")),
        (
            "a DTD",
            format!("<?xml version=\"1.0\"?><!DOCTYPE feed>{body}"),
        ),
        ("an XML declaration that is not first", format!("\n{valid}")),
    ];
    let cases = edits
        .iter()
        .map(|(what, from, to)| {
            assert!(
                valid.contains(from),
                "{what}: {from:?} is not in the document"
            );
            (*what, valid.replacen(from, to, 1))
        })
        .chain(whole);
    for (what, doc) in cases {
        assert!(
            roxmltree::Document::parse(&doc).is_err(),
            "{what}: the reference parser accepts it, so the case is wrong"
        );
        assert!(atom::parse_feed(&doc).is_err(), "{what} was accepted");
    }
    // What XML allows is read: comments, a processing instruction, CDATA, character
    // references and CRLF line ends.
    let allowed = valid
        .replacen("<entry>", "<!-- c --><?pi x?><entry>", 1)
        .replacen("order-1<", "order<![CDATA[-]]>&#x31;<", 1)
        .replace('\n', "\r\n");
    let parsed = atom::parse_feed(&allowed).expect("well-formed");
    assert_eq!(
        parsed.entries,
        atom::parse_feed(&valid).expect("valid").entries
    );
}
