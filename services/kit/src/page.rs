//! Pages that exist as HTML for people and as JSON for programs: a service's index,
//! and (in the all-in-one binary) the gateway's landing page and order view.
//!
//! Every such page answers at its plain URL (`/`) with the format negotiated from
//! `Accept`, and at explicit variants (`/index.html`, `/index.json`) without
//! negotiation, for caches and tools that cannot set headers; `Content-Location`
//! names the variant served. The negotiation mirrors the feeds' rule
//! (`feed::negotiate::negotiate_format`) with JSON in the place of Atom: HTML only when
//! the client prefers it strictly (a browser), JSON for `*/*`, for no `Accept` and for
//! ties, so programs never receive HTML by accident. The gateway's cache key
//! normalises `Accept` to the same formats.
//!
//! The ETag is weak (the page is not byte-for-byte stable across template versions or
//! codings) and carries `feed::html::version_tag()`, so a new template never matches
//! an old cached copy; `If-None-Match` gets a 304 with the same validators.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// `Vary` of every negotiated page.
pub const VARY: &str = "Accept, Accept-Encoding";

/// The two representations of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFormat {
    /// `text/html` for a browser.
    Html,
    /// `application/json` for everyone else.
    Json,
}

impl PageFormat {
    /// The format for a request's `Accept` header (see the module docs).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Json;
        };
        // For each format, the q of its most specific matching media range.
        let (mut html, mut json) = ((-1, 0.0f32), (-1, 0.0f32));
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| {
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                })
                .unwrap_or(0.0);
            let html_rank = match name.as_str() {
                "text/html" | "application/xhtml+xml" => Some(2),
                "text/*" => Some(1),
                "*/*" => Some(0),
                _ => None,
            };
            let json_rank = match name.as_str() {
                "application/json" => Some(2),
                "application/*" => Some(1),
                "*/*" => Some(0),
                _ => None,
            };
            for (rank, best) in [(html_rank, &mut html), (json_rank, &mut json)] {
                if let Some(rank) = rank
                    && (rank > best.0 || (rank == best.0 && q > best.1))
                {
                    *best = (rank, q);
                }
            }
        }
        if html.0 >= 0 && html.1 > 0.0 && (json.0 < 0 || html.1 > json.1) {
            Self::Html
        } else {
            Self::Json
        }
    }

    /// The variant's suffix: `.html` or `.json`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Html => ".html",
            Self::Json => ".json",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Self::Html => "text/html; charset=utf-8",
            Self::Json => "application/json",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Html => "h",
            Self::Json => "j",
        }
    }
}

/// The format a request asks for: the explicit `variant` when the URL named one,
/// else the negotiated one.
pub fn requested(headers: &HeaderMap, variant: Option<PageFormat>) -> PageFormat {
    variant.unwrap_or_else(|| {
        PageFormat::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
    })
}

/// The weak ETag of `body` in `format`.
pub fn etag(format: PageFormat, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{}-{}-{hex}\"", feed::html::version_tag(), format.tag())
}

/// Answers a page request: `body` (already rendered in `format`) with its
/// validators, or a 304 when the request's `If-None-Match` names the same ETag.
/// `content_location` is the URL of the explicit variant served.
pub fn respond(
    request: &HeaderMap,
    format: PageFormat,
    content_location: &str,
    cache_control: &'static str,
    body: String,
) -> Response {
    let etag = etag(format, &body);
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| feed::negotiate::if_none_match(h, &etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.media_type()),
        );
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(content_location) {
        h.insert(header::CONTENT_LOCATION, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_programs_json() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let cases = [
            (None, PageFormat::Json),
            (Some(""), PageFormat::Json),
            (Some("*/*"), PageFormat::Json),
            (Some("application/json"), PageFormat::Json),
            (Some("application/atom+xml"), PageFormat::Json),
            (Some("application/atom+xml, */*;q=0.8"), PageFormat::Json),
            (Some("text/html"), PageFormat::Html),
            (Some(browser), PageFormat::Html),
            (Some("application/json, text/html;q=0.9"), PageFormat::Json),
            (Some("application/json;q=0.5, text/html"), PageFormat::Html),
            (Some("text/html, application/json"), PageFormat::Json),
            (Some("text/html;q=0"), PageFormat::Json),
            (Some("text/*"), PageFormat::Html),
            (Some("text/html;q=bogus"), PageFormat::Json),
            // The Accept headers the gateway sends upstream for each cached format.
            (
                Some("text/html, application/xhtml+xml;q=0.9, */*;q=0.8"),
                PageFormat::Html,
            ),
            (Some("application/json, */*;q=0.8"), PageFormat::Json),
            (
                Some("application/atom+xml, application/xml;q=0.9, */*;q=0.8"),
                PageFormat::Json,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(PageFormat::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn etags_are_weak_carry_the_template_version_and_differ_per_format_and_content() {
        let a = etag(PageFormat::Html, "<p>a</p>");
        assert!(
            a.starts_with("W/\"") && a.contains(feed::html::version_tag()),
            "{a}"
        );
        assert_ne!(a, etag(PageFormat::Json, "<p>a</p>"));
        assert_ne!(a, etag(PageFormat::Html, "<p>b</p>"));
        assert_eq!(a, etag(PageFormat::Html, "<p>a</p>"));
    }
}
