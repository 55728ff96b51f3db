//! Page arithmetic and the RFC 5005 link model. Pure: no I/O, no clock.
//!
//! A log is cut into pages by position. The page size may change over the life of a
//! log, so the layout is a list of segments: from position `from` on, pages have
//! `size` entries. A new size always starts at the first unsealed page, so every page
//! that was ever sealed keeps its range, its URL and its bytes. A page is *sealed*
//! once the head has reached its last position; the *head document* holds the
//! positions after the last sealed page (possibly none).
//!
//! # Why the newest sealed page links a page that does not exist yet
//!
//! A sealed page's `next-archive` is the permanent URL of the page after it, even
//! while that page is still being filled (the server then answers `307` to the head,
//! with `Cache-Control: max-age=1` so that no cache keeps the redirect). The two
//! alternatives both break a promise: linking the head would change the sealed
//! page's bytes when the next page seals (so it could not be immutable), and
//! leaving the link out would strand a reader walking forward at the newest sealed
//! page. This is also why a new page size starts only after the page being filled:
//! that page's range is already published.

use std::fmt;
use std::str::FromStr;

use crate::event::Position;

/// An inclusive range of positions (or stream versions) `from..=to`, `1 <= from <= to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRange {
    /// First position on the page.
    pub from: Position,
    /// Last position on the page.
    pub to: Position,
}

impl PageRange {
    /// Number of positions the range covers.
    pub fn len(&self) -> u64 {
        self.to - self.from + 1
    }

    /// Ranges are never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `p` lies on the page.
    pub fn contains(&self, p: Position) -> bool {
        self.from <= p && p <= self.to
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.from, self.to)
    }
}

/// Why a page range in a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a page range: {0:?} (expected FROM-TO with 1 <= FROM <= TO)")]
pub struct RangeError(pub String);

impl FromStr for PageRange {
    type Err = RangeError;

    /// Parses `FROM-TO` in plain decimal: no signs, no leading zeros, no spaces, so
    /// each page has exactly one spelling (and one cache key).
    fn from_str(s: &str) -> Result<Self, RangeError> {
        let err = || RangeError(s.chars().take(64).collect());
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let from = parse_position(a).ok_or_else(err)?;
        let to = parse_position(b).ok_or_else(err)?;
        if from == 0 || from > to {
            return Err(err());
        }
        Ok(PageRange { from, to })
    }
}

/// Parses a canonical decimal position: digits only, no leading zero, fits in i64
/// (what the databases store).
pub fn parse_position(s: &str) -> Option<Position> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    (n <= i64::MAX as u64).then_some(n)
}

/// One stretch of the log with a fixed page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First position the size applies to; always the start of a page.
    pub from: Position,
    /// Entries per page.
    pub size: u64,
}

/// How a log is cut into pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLayout {
    segments: Vec<Segment>,
}

impl PageLayout {
    /// A layout with one page size from position 1.
    pub fn uniform(size: u64) -> Self {
        Self {
            segments: vec![Segment {
                from: 1,
                size: size.max(1),
            }],
        }
    }

    /// A layout from stored segments (sorted by `from`, the first at 1). Returns None
    /// when they do not form a valid layout.
    pub fn from_segments(mut segments: Vec<Segment>) -> Option<Self> {
        segments.sort_by_key(|s| s.from);
        if segments.first()?.from != 1 || segments.iter().any(|s| s.size == 0) {
            return None;
        }
        Some(Self { segments })
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The size of pages being filled now.
    pub fn current_size(&self) -> u64 {
        self.last().size
    }

    fn last(&self) -> &Segment {
        self.segments
            .last()
            .expect("a layout always has at least one segment (checked on construction)")
    }

    fn segment_of(&self, p: Position) -> &Segment {
        let i = self.segments.partition_point(|s| s.from <= p);
        &self.segments[i.saturating_sub(1)]
    }

    /// The page holding position `p` (sealed or not), `p >= 1`.
    pub fn page_of(&self, p: Position) -> PageRange {
        let seg = self.segment_of(p.max(1));
        let k = (p.max(1) - seg.from) / seg.size;
        let from = seg.from + k * seg.size;
        let mut to = from + seg.size - 1;
        // A later segment may start before this page would end (it cannot, since
        // segments start on page boundaries of the current page, but stay safe).
        if let Some(next) = self.segments.iter().find(|s| s.from > from) {
            to = to.min(next.from - 1);
        }
        PageRange { from, to }
    }

    /// First position of the head document for a log whose last position is `head`.
    pub fn head_start(&self, head: Position) -> Position {
        let page = self.page_of(head + 1);
        page.from
    }

    /// Whether `range` is exactly a page of this layout that is sealed at `head`.
    pub fn is_sealed_page(&self, range: PageRange, head: Position) -> bool {
        range.to <= head && self.page_of(range.from) == range
    }

    /// The newest sealed page at `head`, if any.
    pub fn last_sealed(&self, head: Position) -> Option<PageRange> {
        let start = self.head_start(head);
        (start > 1).then(|| self.page_of(start - 1))
    }

    /// The oldest sealed page at `head`, if any.
    pub fn first_sealed(&self, head: Position) -> Option<PageRange> {
        let first = self.page_of(1);
        (first.to <= head).then_some(first)
    }

    /// The sealed page before `range`, if any.
    pub fn prev(&self, range: PageRange) -> Option<PageRange> {
        (range.from > 1).then(|| self.page_of(range.from - 1))
    }

    /// The page after `range` if it is sealed at `head`.
    pub fn next_sealed(&self, range: PageRange, head: Position) -> Option<PageRange> {
        let next = self.page_of(range.to + 1);
        (next.to <= head).then_some(next)
    }

    /// The layout after switching to `size` when the log's last position is `head`.
    /// The page being filled keeps its range, because the newest sealed page already
    /// names it as its `next-archive`; the new size applies from the page after it.
    pub fn with_size_from_head(&self, size: u64, head: Position) -> Self {
        let size = size.max(1);
        if size == self.current_size() {
            return self.clone();
        }
        let filling = self.page_of(head + 1);
        // Nothing has been written under the current head page's size yet when the log
        // is empty: then the new size may start right away.
        let start = if head == 0 { 1 } else { filling.to + 1 };
        let mut segments: Vec<Segment> = self
            .segments
            .iter()
            .copied()
            .filter(|s| s.from < start)
            .collect();
        segments.push(Segment { from: start, size });
        Self { segments }
    }

    /// Whether `range` is the page currently being filled at `head` (the page the
    /// head document shows).
    pub fn is_filling_page(&self, range: PageRange, head: Position) -> bool {
        self.page_of(head + 1) == range
    }
}

/// Which document of a feed a link names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    /// The head (`current`).
    Head,
    /// A sealed page.
    Page(PageRange),
}

/// The RFC 5005 navigation of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Navigation {
    /// The document itself.
    pub this: Doc,
    /// The oldest document (a sealed page, or the head when nothing is sealed).
    pub first: Doc,
    /// The older sealed page (`prev-archive`).
    pub prev: Option<PageRange>,
    /// The newer page (`next-archive`). Only sealed pages have one. It is the
    /// permanent URL of the following page even while that page is still being filled
    /// (the server then redirects it to the head), so a sealed page never changes.
    pub next: Option<Doc>,
}

impl PageLayout {
    /// The navigation of the head at `head`.
    pub fn head_navigation(&self, head: Position) -> Navigation {
        Navigation {
            this: Doc::Head,
            first: self.first_sealed(head).map_or(Doc::Head, Doc::Page),
            prev: self.last_sealed(head),
            next: None,
        }
    }

    /// The navigation of sealed page `range`. It depends on nothing but the range,
    /// which is what keeps a sealed page's bytes fixed forever.
    pub fn page_navigation(&self, range: PageRange) -> Navigation {
        Navigation {
            this: Doc::Page(range),
            first: Doc::Page(self.page_of(1)),
            prev: self.prev(range),
            next: Some(Doc::Page(self.page_of(range.to + 1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(from: u64, to: u64) -> PageRange {
        PageRange { from, to }
    }

    #[test]
    fn page_ranges_have_one_spelling() {
        assert_eq!("1-100".parse::<PageRange>(), Ok(r(1, 100)));
        for bad in [
            "",
            "-",
            "0-10",
            "10-1",
            "01-10",
            "1-010",
            "+1-2",
            "1 -2",
            "1-",
            "-1",
            "1-2-3",
            "a-b",
            "1-99999999999999999999",
            "1-9223372036854775808",
        ] {
            assert!(bad.parse::<PageRange>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn head_holds_what_is_not_sealed() {
        let l = PageLayout::uniform(10);
        assert_eq!(l.head_start(0), 1);
        assert_eq!(l.head_start(9), 1);
        assert_eq!(l.head_start(10), 11);
        assert_eq!(l.last_sealed(10), Some(r(1, 10)));
        assert_eq!(l.last_sealed(9), None);
        assert!(l.is_sealed_page(r(11, 20), 20));
        assert!(!l.is_sealed_page(r(11, 20), 19));
        assert!(!l.is_sealed_page(r(12, 21), 30));
    }

    #[test]
    fn a_new_page_size_applies_after_the_page_being_filled() {
        let l = PageLayout::uniform(10).with_size_from_head(4, 25);
        // 21-30 is being filled and already named by 11-20: it keeps its range.
        let want = [Segment { from: 1, size: 10 }, Segment { from: 31, size: 4 }];
        assert_eq!(l.segments(), &want);
        assert_eq!(l.page_of(25), r(21, 30));
        assert_eq!(l.page_of(31), r(31, 34));
        assert_eq!(l.page_of(36), r(35, 38));
        assert_eq!(l.next_sealed(r(21, 30), 34), Some(r(31, 34)));
        assert_eq!(l.prev(r(31, 34)), Some(r(21, 30)));
        // Changing again before anything under the new size was written replaces it.
        let l2 = l.with_size_from_head(6, 28);
        let want = [Segment { from: 1, size: 10 }, Segment { from: 31, size: 6 }];
        assert_eq!(l2.segments(), &want);
        // An empty log takes the new size at once.
        assert_eq!(
            PageLayout::uniform(10).with_size_from_head(3, 0),
            PageLayout::uniform(3)
        );
    }

    /// Cases for the parser properties: 10,000 by default, `PROPTEST_CASES` for more.
    fn parser_cases() -> ProptestConfig {
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

    proptest! {
        #![proptest_config(parser_cases())]

        #[test]
        fn range_parser_never_panics_on_any_text(
            s in prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter)
        ) {
            let _ = s.parse::<PageRange>();
        }

        #[test]
        fn range_parser_never_panics_on_digits_and_dashes(
            s in prop::collection::vec(prop::sample::select(&['0', '1', '9', '-', '+', ' '][..]), 0..45)
                .prop_map(String::from_iter)
        ) {
            if let Ok(r) = s.parse::<PageRange>() {
                // Accepted means canonical: it prints back to the same text.
                prop_assert_eq!(r.to_string(), s);
                prop_assert!(1 <= r.from && r.from <= r.to);
            }
        }

        #[test]
        fn every_range_has_exactly_one_spelling(from in 1u64..=i64::MAX as u64, len in 0u64..1_000_000) {
            let to = from.saturating_add(len).min(i64::MAX as u64);
            let r = PageRange { from, to };
            prop_assert_eq!(r.to_string().parse::<PageRange>(), Ok(r));
            let padded = format!("0{from}-{to}");
            prop_assert!(padded.parse::<PageRange>().is_err());
        }

        #[test]
        fn positions_parse_only_in_canonical_decimal(n in any::<u64>(), junk in "[^0-9]{1,3}") {
            let text = n.to_string();
            prop_assert_eq!(parse_position(&text), (n <= i64::MAX as u64).then_some(n));
            let prefixed = format!("{junk}{text}");
            let suffixed = format!("{text}{junk}");
            prop_assert_eq!(parse_position(&prefixed), None);
            prop_assert_eq!(parse_position(&suffixed), None);
        }
    }

    proptest! {
        #[test]
        fn walking_next_from_first_visits_every_sealed_position_once(
            sizes in proptest::collection::vec((1u64..7, 0u64..40), 1..4),
            extra in 0u64..30,
        ) {
            let mut layout = PageLayout::uniform(sizes[0].0);
            let mut head = sizes[0].1;
            for &(size, grow) in &sizes[1..] {
                layout = layout.with_size_from_head(size, head);
                head += grow;
            }
            head += extra;
            let mut seen = 0;
            let mut page = layout.first_sealed(head);
            while let Some(p) = page {
                prop_assert_eq!(p.from, seen + 1);
                prop_assert!(layout.is_sealed_page(p, head));
                seen = p.to;
                page = layout.next_sealed(p, head);
            }
            prop_assert_eq!(seen + 1, layout.head_start(head));
            // And backwards from the head.
            let mut back = layout.last_sealed(head);
            let mut expect_to = layout.head_start(head) - 1;
            while let Some(p) = back {
                prop_assert_eq!(p.to, expect_to);
                expect_to = p.from - 1;
                back = layout.prev(p);
            }
            prop_assert_eq!(expect_to, 0);
        }

    }
}
