//! Everything a producer or a client controls: feed and entry documents, page
//! ranges, positions and the negotiated headers. None may panic or hang.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(feed) = feed::atom::parse_feed(&text) {
        // What the reader promises about any document it accepts.
        assert!(
            feed.entries
                .windows(2)
                .all(|w| w[0].position <= w[1].position)
        );
        if let (Some(head), Some(last)) = (feed.head_position, feed.entries.last()) {
            assert_eq!(head, last.position);
        }
    }
    let _ = feed::atom::parse_entry(&text);
    let _ = text.parse::<feed::page::PageRange>();
    let _ = feed::page::parse_position(&text);
    let _ = feed::negotiate::negotiate_format(Some(&text));
    let _ = feed::negotiate::negotiate_coding(Some(&text));
    let _ = feed::negotiate::if_none_match(&text, "\"a\"");
    let _ = feed::negotiate::prefer_wait([text.as_ref()]);
});
