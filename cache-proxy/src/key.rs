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
    /// this client: per format, the q of the most specific matching media range
    /// counts (`application/atom+xml` > `application/xml`, `text/xml` >
    /// `application/*` > `*/*`; `text/html`, `application/xhtml+xml` > `text/*` >
    /// `*/*`), and HTML wins only when its q is strictly higher and not 0. Any
    /// other client (feed readers, `*/*`, no `Accept`, JSON API clients, whose
    /// services answer JSON for anything but HTML) gets the Atom variant.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        let mut values = headers.get_all(header::ACCEPT).iter().peekable();
        if values.peek().is_none() {
            return Format::Atom;
        }
        let (mut atom, mut html) = (-1.0f32, -1.0f32);
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for (name, q) in weighted(value) {
                let atom_specificity = match name.as_str() {
                    "application/atom+xml" => Some(3u8),
                    "application/xml" | "text/xml" => Some(2),
                    "application/*" => Some(1),
                    "*/*" => Some(0),
                    _ => None,
                };
                let html_specificity = match name.as_str() {
                    "text/html" | "application/xhtml+xml" => Some(3u8),
                    "text/*" => Some(1),
                    "*/*" => Some(0),
                    _ => None,
                };
                // Specificity dominates q (q <= 1 < 10), so the maximum is the
                // most specific range, and among equals the highest q.
                if let Some(s) = atom_specificity {
                    atom = atom.max(q + f32::from(s) * 10.0);
                }
                if let Some(s) = html_specificity {
                    html = html.max(q + f32::from(s) * 10.0);
                }
            }
        }
        let q = |v: f32| if v < 0.0 { -1.0 } else { v % 10.0 };
        if q(html) > q(atom) && q(html) > 0.0 {
            Format::Html
        } else {
            Format::Atom
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

    /// RFC 9110 section 12.5.3 as the feed server applies it
    /// (`feed::negotiate::negotiate_coding`): the highest q wins (a coding
    /// listed twice counts with its higher q, `*` stands for the unlisted
    /// ones), ties go to zstd, br, gzip in that order, identity when the client
    /// accepts none of them.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Coding {
        let mut q = [None::<f32>; 3];
        let mut star = None::<f32>;
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(value) = value.to_str() else { continue };
            for (name, weight) in weighted(value) {
                let slot = match name.as_str() {
                    "zstd" => &mut q[0],
                    "br" => &mut q[1],
                    "gzip" | "x-gzip" => &mut q[2],
                    "*" => {
                        star = Some(weight);
                        continue;
                    }
                    _ => continue,
                };
                *slot = Some(slot.map_or(weight, |old| old.max(weight)));
            }
        }
        let mut best = (Coding::Identity, 0.0f32);
        for (coding, weight) in [Coding::Zstd, Coding::Br, Coding::Gzip].into_iter().zip(q) {
            let weight = weight.or(star).unwrap_or(0.0);
            if weight > best.1 {
                best = (coding, weight);
            }
        }
        best.0
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

/// `(name, q)` items of an `Accept`-style list, names lower-cased; parameters
/// other than `q` are ignored, a malformed or out-of-range q counts as 0 (the
/// feed server's reading, so both agree on every input).
fn weighted(value: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let name = parts.next()?.trim().to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
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

        /// The variant the cache keys is the one the feed server would send.
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
            let accept = items
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
                .collect::<Vec<_>>()
                .join(", ");
            proptest::prop_assert_eq!(
                Format::negotiate(&with("accept", &accept)),
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
            let ae = items
                .iter()
                .map(|(coding, q)| match q {
                    Some(q) => format!("{coding};q={q}"),
                    None => coding.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            proptest::prop_assert_eq!(
                Coding::negotiate(&with("accept-encoding", &ae)),
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
