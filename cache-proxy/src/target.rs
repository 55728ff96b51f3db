//! The request target as the cache keys it and forwards it.
//!
//! Invariant: the path and query the key holds are byte for byte the path and
//! query sent upstream, so whatever is stored under a key is what the origin
//! answered for exactly that key, and no request can fill an entry that a
//! different request is served from. To keep that true and still merge
//! spellings that RFC 3986 section 6.2.2 declares equivalent, each case is
//! decided here:
//!
//! - percent-encoding: hex digits are upper-cased (`%2f` -> `%2F`, 6.2.2.1)
//!   and encoded unreserved characters are decoded (`%7E` -> `~`, `%41` -> `A`,
//!   6.2.2.2), in the path and in the query; both forms name one resource, and
//!   the normalised form is then both the key and the forwarded target;
//! - characters a URI may not contain (space, `"`, `<`, `{`, non-ASCII, ...) are
//!   percent-encoded, as the upstream URL would otherwise encode them on its own;
//!   so is `'` in the query, which the WHATWG URL parser that builds the
//!   upstream request encodes there;
//! - dot segments (`.`, `..`, also as `%2E`) and backslashes are rejected (400):
//!   the upstream URL parser would resolve them (a WHATWG parser reads `\` as
//!   `/`), so the path forwarded would not be the path keyed, and `..` could
//!   climb out of a route;
//! - a malformed escape (`%` not followed by two hex digits) is rejected (400);
//! - encoded slashes (`%2F`), double slashes and the order of query parameters
//!   are kept verbatim: the origin decides what they mean, and since they are
//!   forwarded as keyed, a different spelling is merely a different entry.

/// A request target that cannot be keyed and forwarded unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetError {
    DotSegment,
    Backslash,
    BadEscape,
}

impl TargetError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetError::DotSegment => "the path contains a dot segment (. or ..)",
            TargetError::Backslash => "the path contains a backslash",
            TargetError::BadEscape => "the request target contains a malformed percent-escape",
        }
    }
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may stand unencoded in a path segment or query (RFC 3986 section
/// 3.3 `pchar` plus `/` and `?`), apart from `%`, which is handled separately.
fn is_allowed(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// The normalised form of one component (path or query), see the module doc.
fn normalise_component(input: &str, query: bool) -> Result<String, TargetError> {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let decoded = hi << 4 | lo;
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                push_escaped(&mut out, decoded);
            }
            i += 3;
        } else {
            if is_allowed(b) && !(query && b == b'\'') {
                out.push(char::from(b));
            } else {
                push_escaped(&mut out, b);
            }
            i += 1;
        }
    }
    Ok(out)
}

/// The normalised path (and query) of a request, or why it is refused.
pub(crate) fn normalise(path: &str, query: Option<&str>) -> Result<Target, TargetError> {
    if path.contains('\\') {
        return Err(TargetError::Backslash);
    }
    let path = normalise_component(path, false)?;
    // After decoding, `%2E` is `.`, so one check covers every spelling.
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(TargetError::DotSegment);
    }
    let query = query.map(|q| normalise_component(q, true)).transpose()?;
    Ok(Target { path, query })
}

/// A request target in normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) path: String,
    pub(crate) query: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equivalent_spellings_normalise_to_one_form_and_dangerous_ones_are_refused() {
        let ok: &[(&str, Option<&str>, &str, Option<&str>)] = &[
            ("/feed/archive/1-10", None, "/feed/archive/1-10", None),
            ("/feed/archive/1%2D10", None, "/feed/archive/1-10", None),
            ("/%66eed", None, "/feed", None),
            ("/a%2fb", None, "/a%2Fb", None),
            ("/a%2Fb", None, "/a%2Fb", None),
            ("//feed", None, "//feed", None),
            ("/a b", None, "/a%20b", None),
            ("/caf\u{e9}", None, "/caf%C3%A9", None),
            ("/x%7e", Some("b=2&a=1"), "/x~", Some("b=2&a=1")),
            ("/x", Some("q=%2f%41"), "/x", Some("q=%2FA")),
            ("/x", Some(""), "/x", Some("")),
            ("/it's", Some("a='1'"), "/it's", Some("a=%271%27")),
            ("/a/..b/c.", None, "/a/..b/c.", None),
        ];
        for (path, query, want_path, want_query) in ok {
            let t = normalise(path, *query).expect(path);
            assert_eq!(t.path, *want_path, "{path:?}");
            assert_eq!(t.query.as_deref(), *want_query, "{path:?} {query:?}");
        }
        let refused: &[(&str, TargetError)] = &[
            ("/a/../b", TargetError::DotSegment),
            ("/a/./b", TargetError::DotSegment),
            ("/a/%2e%2E/b", TargetError::DotSegment),
            ("/a/.%2e", TargetError::DotSegment),
            ("/..", TargetError::DotSegment),
            ("/a/%2e", TargetError::DotSegment),
            ("/a\\b", TargetError::Backslash),
            ("/a%zz", TargetError::BadEscape),
            ("/a%4", TargetError::BadEscape),
        ];
        for (path, err) in refused {
            assert_eq!(normalise(path, None), Err(*err), "{path:?}");
        }
        assert_eq!(normalise("/x", Some("a=%")), Err(TargetError::BadEscape));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases()))]

        #[test]
        fn normalising_never_panics_and_is_idempotent(
            path in "/[a-zA-Z0-9%./\\\\~ _?&=-]{0,60}",
            query in proptest::option::of("[a-zA-Z0-9%&=/.+ -]{0,40}"),
        ) {
            if let Ok(t) = normalise(&path, query.as_deref()) {
                let again = normalise(&t.path, t.query.as_deref());
                prop_assert_eq!(again, Ok(t.clone()));
                prop_assert!(t.path.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(t.path.len() <= path.len() * 3);
            }
        }

        #[test]
        fn normalising_any_text_never_panics(path in "\\PC{0,80}", query in "\\PC{0,40}") {
            let _ = normalise(&path, Some(&query));
        }
    }
}
