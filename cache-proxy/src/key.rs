//! The cache key and the request normalisation that makes it complete.
//!
//! A cache fill forwards to the upstream nothing but what the key holds: the path
//! and query, a canonical `Accept` for the negotiated format and the one chosen
//! content-coding as `Accept-Encoding`. The upstream therefore cannot vary its
//! response on anything the key misses, which is what keeps unkeyed headers
//! (X-Forwarded-Host, Host, anything else) from poisoning the cache, and what
//! makes a stored variant match its key exactly.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};

/// The representation format, normalised from `Accept` (DESIGN.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    Atom,
    Html,
}

impl Format {
    /// The feed server's own negotiation (`feed::negotiate::negotiate_format`),
    /// so the variant a cache stores is the one the origin would have chosen for
    /// this client: browsers get HTML, feed readers, `*/*`, no `Accept` and JSON
    /// API clients (whose services answer JSON for anything but HTML) get Atom.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        match feed::negotiate::negotiate_format(joined(headers, header::ACCEPT).as_deref()) {
            feed::negotiate::Format::Atom => Format::Atom,
            feed::negotiate::Format::Html => Format::Html,
        }
    }

    /// The `Accept` sent upstream: a pure function of the format, which the
    /// negotiation above maps back to the same format.
    pub(crate) fn accept_header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Atom => "application/atom+xml, application/xml;q=0.9, */*;q=0.8",
            Format::Html => "text/html, application/xhtml+xml;q=0.9, */*;q=0.8",
        })
    }

    pub(crate) const ALL: [Format; 2] = [Format::Atom, Format::Html];
}

/// The content-coding of a stored variant (RFC 9110 section 8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Coding {
    Br,
    Zstd,
    Gzip,
    Identity,
}

impl Coding {
    pub(crate) const ALL: [Coding; 4] = [Coding::Br, Coding::Zstd, Coding::Gzip, Coding::Identity];

    /// RFC 9110 section 12.5.3 exactly as the feed server applies it
    /// (`feed::negotiate::negotiate_coding`), so a fill asks the upstream for
    /// the coding it would have sent this client anyway.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Coding {
        match feed::negotiate::negotiate_coding(joined(headers, header::ACCEPT_ENCODING).as_deref())
        {
            feed::negotiate::Coding::Identity => Coding::Identity,
            feed::negotiate::Coding::Gzip => Coding::Gzip,
            feed::negotiate::Coding::Br => Coding::Br,
            feed::negotiate::Coding::Zstd => Coding::Zstd,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
            Coding::Identity => "identity",
        }
    }

    /// The `Accept-Encoding` sent upstream: exactly the chosen coding.
    pub(crate) fn accept_encoding_header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// Whether a response with this `Content-Encoding` is the variant asked for
    /// (an upstream may always answer identity).
    pub(crate) fn admits(self, headers: &HeaderMap) -> bool {
        match headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            None => true,
            Some(ce) => {
                let ce = ce.trim().to_ascii_lowercase();
                ce == "identity" || ce == self.as_str()
            }
        }
    }
}

/// All the values of a list header as one list (RFC 9110 section 5.3), or
/// None when the header is absent; values that are not text are skipped.
fn joined(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Key of a stored response. Only GET and HEAD are answered from the cache, and
/// a HEAD is answered from the stored GET response (RFC 9110 section 9.3.2), so
/// the method class is implicit. Host and X-Forwarded-* never take part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    /// The route prefix, which names the upstream.
    pub(crate) route: Arc<str>,
    /// The request target's path and query as received, after the route prefix.
    pub(crate) path_and_query: String,
    pub(crate) format: Format,
    pub(crate) coding: Coding,
}

impl CacheKey {
    /// Approximate bytes the key occupies, for the weigher.
    pub(crate) fn weight(&self) -> usize {
        self.route.len() + self.path_and_query.len() + std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("ascii"));
        h
    }

    /// One header line per item, as some clients and proxies send lists.
    fn lines(name: &'static str, items: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for item in items {
            h.append(name, HeaderValue::from_str(item).expect("ascii"));
        }
        h
    }

    #[test]
    fn accept_is_normalised_to_atom_or_html() {
        let table: &[(&str, Format)] = &[
            ("application/atom+xml", Format::Atom),
            ("*/*", Format::Atom),
            ("", Format::Atom),
            (
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                Format::Html,
            ),
            ("text/html, application/atom+xml", Format::Atom),
            ("text/html;q=0.5, application/atom+xml;q=0.4", Format::Html),
            ("application/atom+xml;q=0.5, text/html", Format::Html),
            ("text/html;q=0", Format::Atom),
            ("application/json", Format::Atom),
            ("text/html;q=bogus", Format::Atom),
            ("text/*", Format::Html),
            ("text/html;q=0.5, application/xml", Format::Atom),
            (
                "application/atom+xml;q=0.1, text/html;q=0.2, */*",
                Format::Html,
            ),
        ];
        for (accept, expected) in table {
            assert_eq!(
                Format::negotiate(&with("accept", accept)),
                *expected,
                "{accept:?}"
            );
        }
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Atom);
        for format in Format::ALL {
            let canonical = with("accept", format.accept_header().to_str().expect("ascii"));
            assert_eq!(Format::negotiate(&canonical), format);
        }
    }

    #[test]
    fn accept_encoding_is_normalised_to_one_coding() {
        let table: &[(&str, Coding)] = &[
            ("gzip", Coding::Gzip),
            ("gzip, deflate, br", Coding::Br),
            ("gzip, deflate, br, zstd", Coding::Zstd),
            ("br;q=0.5, gzip", Coding::Gzip),
            ("br;q=0, gzip;q=0", Coding::Identity),
            ("identity", Coding::Identity),
            ("identity, gzip;q=0.1", Coding::Identity),
            ("identity;q=0.1, gzip", Coding::Gzip),
            ("deflate", Coding::Identity),
            ("*", Coding::Zstd),
            ("*, zstd;q=0", Coding::Br),
            ("*;q=0.5, gzip", Coding::Gzip),
            ("GZIP;Q=1", Coding::Gzip),
            ("gzip;q=0, gzip;q=0.5", Coding::Gzip),
            ("", Coding::Identity),
        ];
        for (ae, expected) in table {
            assert_eq!(
                Coding::negotiate(&with("accept-encoding", ae)),
                *expected,
                "{ae:?}"
            );
        }
    }

    #[test]
    fn a_response_in_another_coding_is_not_the_requested_variant() {
        assert!(Coding::Gzip.admits(&with("content-encoding", "gzip")));
        assert!(Coding::Gzip.admits(&HeaderMap::new()));
        assert!(!Coding::Identity.admits(&with("content-encoding", "gzip")));
        assert!(!Coding::Br.admits(&with("content-encoding", "gzip")));
    }

    fn feed_format(accept: &str) -> Format {
        match feed::negotiate::negotiate_format(Some(accept)) {
            feed::negotiate::Format::Atom => Format::Atom,
            feed::negotiate::Format::Html => Format::Html,
        }
    }

    fn feed_coding(ae: &str) -> Coding {
        match feed::negotiate::negotiate_coding(Some(ae)) {
            feed::negotiate::Coding::Identity => Coding::Identity,
            feed::negotiate::Coding::Gzip => Coding::Gzip,
            feed::negotiate::Coding::Br => Coding::Br,
            feed::negotiate::Coding::Zstd => Coding::Zstd,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::proptest_cases()))]

        /// The variant the cache keys is the one the feed server would send for
        /// the same list, also when the client splits it over several lines.
        #[test]
        fn the_format_agrees_with_the_feed_servers_negotiation(
            items in proptest::collection::vec(
                (
                    "(application/atom\\+xml|text/html|application/xhtml\\+xml|application/xml|text/xml|application/\\*|text/\\*|\\*/\\*|application/json|image/webp|TEXT/HTML)",
                    proptest::option::of("(0|1|0\\.[0-9]{1,3}|1\\.0|bogus|2)"),
                    proptest::option::of("(level=1|charset=utf-8)"),
                ),
                0..6,
            )
        ) {
            let items = items
                .iter()
                .map(|(media, q, param)| {
                    let mut item = media.clone();
                    if let Some(param) = param {
                        item.push(';');
                        item.push_str(param);
                    }
                    if let Some(q) = q {
                        item.push_str(";q=");
                        item.push_str(q);
                    }
                    item
                })
                .collect::<Vec<_>>();
            let accept = items.join(", ");
            proptest::prop_assert_eq!(
                Format::negotiate(&lines("accept", &items)),
                feed_format(&accept),
                "{}", accept
            );
        }

        #[test]
        fn the_coding_agrees_with_the_feed_servers_negotiation(
            items in proptest::collection::vec(
                (
                    "(gzip|x-gzip|br|zstd|deflate|identity|\\*|GZIP|compress)",
                    proptest::option::of("(0|1|0\\.[0-9]{1,3}|bogus)"),
                ),
                0..6,
            )
        ) {
            let items = items
                .iter()
                .map(|(coding, q)| match q {
                    Some(q) => format!("{coding};q={q}"),
                    None => coding.clone(),
                })
                .collect::<Vec<_>>();
            let ae = items.join(", ");
            proptest::prop_assert_eq!(
                Coding::negotiate(&lines("accept-encoding", &items)),
                feed_coding(&ae),
                "{}", ae
            );
        }

        #[test]
        fn negotiation_never_panics_on_any_header(s in "[ -~]{0,120}") {
            let _ = Format::negotiate(&with("accept", &s));
            let _ = Coding::negotiate(&with("accept-encoding", &s));
        }
    }
}
