//! Header parsing for the feed server: content negotiation (RFC 9110 section 12),
//! conditional requests (section 13) and `Prefer: wait` (RFC 7240). Pure functions.

use std::time::Duration;

/// The representation formats of every feed resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/atom+xml`.
    Atom,
    /// `text/html` for people.
    Html,
}

impl Format {
    /// The URL suffix that selects this format without negotiation.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Atom => ".atom",
            Self::Html => ".html",
        }
    }
}

/// A content-coding the server can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// No compression.
    Identity,
    /// gzip.
    Gzip,
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
}

impl Coding {
    /// The `Content-Encoding` token (None for identity).
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Br => Some("br"),
            Self::Zstd => Some("zstd"),
        }
    }

    /// A short tag used in ETags, so every coding has its own (RFC 9110 8.8.3.3).
    pub fn etag_tag(self) -> &'static str {
        match self {
            Self::Identity => "id",
            Self::Gzip => "gz",
            Self::Br => "br",
            Self::Zstd => "zst",
        }
    }
}

/// `(name, q)` pairs of a list header such as Accept or Accept-Encoding. Parameters
/// other than `q` are ignored; a malformed q counts as 0.
fn weighted(header: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    header.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let name = parts.next()?.trim().to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        let mut q = 1.0;
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0);
            }
        }
        Some((name, q))
    })
}

/// Picks Atom or HTML for an `Accept` header. HTML only when the client prefers it
/// strictly (a browser), so feed readers and `*/*` clients get Atom.
pub fn negotiate_format(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Atom;
    };
    let (mut atom, mut html) = (-1.0f32, -1.0f32);
    for (name, q) in weighted(accept) {
        let specificity_atom = match name.as_str() {
            "application/atom+xml" => Some(3),
            "application/xml" | "text/xml" => Some(2),
            "application/*" => Some(1),
            "*/*" => Some(0),
            _ => None,
        };
        let specificity_html = match name.as_str() {
            "text/html" | "application/xhtml+xml" => Some(3),
            "text/*" => Some(1),
            "*/*" => Some(0),
            _ => None,
        };
        // A more specific media range wins over a wildcard regardless of order.
        if let Some(s) = specificity_atom {
            atom = atom.max(q + s as f32 * 10.0);
        }
        if let Some(s) = specificity_html {
            html = html.max(q + s as f32 * 10.0);
        }
    }
    let strip = |v: f32| if v < 0.0 { -1.0 } else { v % 10.0 };
    let (atom_q, html_q) = (strip(atom), strip(html));
    // The q of the most specific match decides; ties go to Atom.
    if html_q > atom_q && html_q > 0.0 {
        Format::Html
    } else {
        Format::Atom
    }
}

/// Picks the content-coding for an `Accept-Encoding` header: the highest q wins, ties
/// go to zstd, br, gzip in that order, and identity is used when nothing else is
/// acceptable (RFC 9110 12.5.3 allows sending identity then). An explicit
/// `identity;q=` takes part like any coding (`gzip;q=0.5, identity` means identity),
/// losing ties to compression.
pub fn negotiate_coding(accept_encoding: Option<&str>) -> Coding {
    let Some(header) = accept_encoding else {
        return Coding::Identity;
    };
    let mut best = (Coding::Identity, 0.0f32);
    let mut star = None;
    let mut identity: Option<f32> = None;
    let mut explicit = Vec::new();
    for (name, q) in weighted(header) {
        match name.as_str() {
            "*" => star = Some(q),
            "identity" => identity = Some(identity.map_or(q, |i| i.max(q))),
            "gzip" | "x-gzip" => explicit.push((Coding::Gzip, q)),
            "br" => explicit.push((Coding::Br, q)),
            "zstd" => explicit.push((Coding::Zstd, q)),
            _ => {}
        }
    }
    for coding in [Coding::Zstd, Coding::Br, Coding::Gzip] {
        let q = explicit
            .iter()
            .filter(|(c, _)| *c == coding)
            .map(|(_, q)| *q)
            .fold(None, |acc: Option<f32>, q| {
                Some(acc.map_or(q, |a| a.max(q)))
            })
            .or(star)
            .unwrap_or(0.0);
        if q > best.1 {
            best = (coding, q);
        }
    }
    match identity {
        Some(i) if i > best.1 => Coding::Identity,
        _ => best.0,
    }
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, RFC 9110
/// 13.1.2). `etag` is the full quoted tag, e.g. `"p1-100.gz"`.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// The longest a long poll may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The `wait` preference of a `Prefer` header (RFC 7240 section 4.3), capped at
/// [`MAX_WAIT`]. Several headers or comma-separated preferences may be present.
pub fn prefer_wait<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
    headers
        .into_iter()
        .flat_map(|h| h.split(','))
        .find_map(|pref| {
            let token = pref.split(';').next()?.trim();
            let (k, v) = token.split_once('=')?;
            if !k.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = v.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs).min(MAX_WAIT))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn browsers_get_html_and_everyone_else_atom() {
        let cases = [
            (None, Format::Atom),
            (Some("application/atom+xml"), Format::Atom),
            (Some("*/*"), Format::Atom),
            (Some("text/html"), Format::Html),
            (
                Some(
                    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
                ),
                Format::Html,
            ),
            (Some("application/atom+xml, text/html;q=0.5"), Format::Atom),
            (Some("text/html;q=0.5, application/atom+xml"), Format::Atom),
            (Some("text/html, application/atom+xml"), Format::Atom),
            (Some("text/html;q=0"), Format::Atom),
            (Some("application/json"), Format::Atom),
            (Some("text/*"), Format::Html),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate_format(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn codings_follow_q_values_and_fall_back_to_identity() {
        let cases = [
            (None, Coding::Identity),
            (Some(""), Coding::Identity),
            (Some("gzip"), Coding::Gzip),
            (Some("gzip, deflate, br"), Coding::Br),
            (Some("gzip, deflate, br, zstd"), Coding::Zstd),
            (Some("br;q=0.5, gzip"), Coding::Gzip),
            (Some("identity"), Coding::Identity),
            (Some("*"), Coding::Zstd),
            (Some("*, zstd;q=0"), Coding::Br),
            (Some("gzip;q=0"), Coding::Identity),
            (Some("GZIP;Q=1"), Coding::Gzip),
            (Some("deflate"), Coding::Identity),
            (Some("gzip;q=0.5, identity"), Coding::Identity),
            (Some("identity, gzip;q=0.5"), Coding::Identity),
            (Some("gzip, identity"), Coding::Gzip),
            (Some("identity;q=0.2, br;q=0.5"), Coding::Br),
            (Some("*;q=0.4, identity;q=0.6"), Coding::Identity),
        ];
        for (ae, want) in cases {
            assert_eq!(negotiate_coding(ae), want, "Accept-Encoding: {ae:?}");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(if_none_match("\"a\"", "\"a\""));
        assert!(if_none_match("W/\"a\"", "\"a\""));
        assert!(if_none_match("\"x\", \"a\"", "\"a\""));
        assert!(if_none_match("*", "\"a\""));
        assert!(!if_none_match("\"b\"", "\"a\""));
        assert!(!if_none_match("a", "\"a\""));
    }

    #[test]
    fn prefer_wait_is_read_and_capped() {
        assert_eq!(prefer_wait(["wait=5"]), Some(Duration::from_secs(5)));
        assert_eq!(
            prefer_wait(["respond-async, wait=10"]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(prefer_wait(["return=minimal", "Wait=100"]), Some(MAX_WAIT));
        assert_eq!(prefer_wait(["wait=-1"]), None);
        assert_eq!(prefer_wait(["wait"]), None);
        assert_eq!(prefer_wait(Vec::<&str>::new()), None);
    }

    /// 10,000 cases by default, `PROPTEST_CASES` for more.
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

    /// Header-shaped text: tokens, q values, separators and a little garbage.
    fn arb_list_header() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("gzip"),
            Just("br"),
            Just("zstd"),
            Just("identity"),
            Just("*"),
            Just("deflate"),
            Just("text/html"),
            Just("application/atom+xml"),
            Just("*/*"),
            Just("wait"),
            Just(""),
        ];
        let param = prop_oneof![
            (0u32..=1000).prop_map(|q| format!(";q={}", f64::from(q) / 1000.0)),
            Just(";q=".to_owned()),
            Just(";q=2".to_owned()),
            Just(";Q=0".to_owned()),
            Just("=\"5\"".to_owned()),
            Just("=-1".to_owned()),
            prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        ];
        prop::collection::vec((token, prop::option::of(param)), 0..8).prop_map(|items| {
            items
                .into_iter()
                .map(|(t, p)| format!("{t}{}", p.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    proptest! {
        #![proptest_config(parser_cases())]

        #[test]
        fn header_parsers_never_panic(
            s in prop::collection::vec(any::<char>(), 0..80).prop_map(String::from_iter)
        ) {
            let _ = negotiate_format(Some(&s));
            let _ = negotiate_coding(Some(&s));
            let _ = if_none_match(&s, "\"a\"");
            let _ = prefer_wait([s.as_str()]);
        }

    }

    proptest! {
        // Building structured headers costs more per case: a fifth of the cases keeps
        // `cargo test` at a few seconds.
        #![proptest_config(ProptestConfig { cases: (parser_cases().cases / 5).max(1), ..parser_cases() })]

        #[test]
        fn header_parsers_keep_their_promises_on_header_shaped_input(s in arb_list_header()) {
            let _ = negotiate_format(Some(&s));
            // A compression named once, with q=0, is never chosen.
            let coding = negotiate_coding(Some(&s));
            if let Some(name) = coding.header() {
                let items: Vec<String> = s
                    .split(',')
                    .map(|item| item.trim().to_ascii_lowercase())
                    .filter(|item| item.split(';').next() == Some(name))
                    .collect();
                let refused = items.len() == 1 && matches!(items[0].split_once(';'), Some((_, "q=0" | "q=0.0")));
                prop_assert!(!refused, "{name} chosen although refused in {s:?}");
            }
            if let Some(wait) = prefer_wait([s.as_str()]) {
                prop_assert!(wait <= MAX_WAIT);
            }
            prop_assert!(if_none_match("*", "\"x\""));
            let _ = if_none_match(&s, "\"gzip\"");
        }
    }
}
