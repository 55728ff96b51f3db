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
    Json,
}

impl Format {
    /// Atom unless the client explicitly prefers HTML (browsers) or JSON (API
    /// clients) over Atom; `*/*` and a missing `Accept` get Atom.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        let (mut atom, mut html, mut json) = (0.0f32, 0.0f32, 0.0f32);
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let q = quality(parts);
                let slot = match media.as_str() {
                    "application/atom+xml" => &mut atom,
                    "text/html" | "application/xhtml+xml" => &mut html,
                    "application/json" | "application/problem+json" => &mut json,
                    _ => continue,
                };
                *slot = slot.max(q);
            }
        }
        if html > 0.0 && html > atom && html >= json {
            Format::Html
        } else if json > 0.0 && json > atom {
            Format::Json
        } else {
            Format::Atom
        }
    }

    /// The `Accept` sent upstream: a pure function of the format.
    pub(crate) fn accept_header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Atom => "application/atom+xml, application/xml;q=0.9, */*;q=0.8",
            Format::Html => "text/html, application/xhtml+xml;q=0.9, */*;q=0.8",
            Format::Json => "application/json, */*;q=0.8",
        })
    }
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
    /// RFC 9110 section 12.5.3: the best coding the client accepts (highest q,
    /// ties broken br > zstd > gzip); identity when it accepts none of them.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Coding {
        let mut q = [None::<f32>; 3];
        let mut star = None::<f32>;
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let weight = quality(parts);
                let slot = match name.as_str() {
                    "br" => &mut q[0],
                    "zstd" => &mut q[1],
                    "gzip" | "x-gzip" => &mut q[2],
                    "*" => &mut star,
                    _ => continue,
                };
                *slot = Some(weight);
            }
        }
        let mut best = (Coding::Identity, 0.0f32);
        for (coding, weight) in [Coding::Br, Coding::Zstd, Coding::Gzip].into_iter().zip(q) {
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

/// `;q=` of an `Accept`-style item; 1 when absent, 0 when malformed.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> f32 {
    for param in params {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("q")
        {
            return value
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0);
        }
    }
    1.0
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
    fn accept_is_normalised_to_atom_html_or_json() {
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
            ("application/json", Format::Json),
            ("application/problem+json, application/json", Format::Json),
            ("text/html;q=bogus", Format::Atom),
        ];
        for (accept, expected) in table {
            assert_eq!(
                Format::negotiate(&with("accept", accept)),
                *expected,
                "{accept:?}"
            );
        }
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Atom);
    }

    #[test]
    fn accept_encoding_is_normalised_to_one_coding() {
        let table: &[(&str, Coding)] = &[
            ("gzip", Coding::Gzip),
            ("gzip, deflate, br, zstd", Coding::Br),
            ("gzip, zstd", Coding::Zstd),
            ("br;q=0.5, gzip", Coding::Gzip),
            ("br;q=0, gzip;q=0", Coding::Identity),
            ("identity", Coding::Identity),
            ("deflate", Coding::Identity),
            ("*", Coding::Br),
            ("*;q=0.5, gzip", Coding::Gzip),
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
}
