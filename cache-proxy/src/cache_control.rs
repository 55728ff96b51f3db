//! The `Cache-Control` field (RFC 9111 section 5.2), parsed once per message.
//!
//! The parser never fails: unknown directives are ignored (RFC 9111 section 5.2.3),
//! and a freshness directive with an invalid or repeated value marks the response
//! as having invalid freshness information, which the rules treat as stale
//! (RFC 9111 section 4.2.1: "a cache SHOULD consider responses that have invalid
//! freshness information to be stale").

use http::HeaderValue;

/// RFC 9111 section 1.2.2: a delta-seconds value too large to represent, or a
/// calculation that overflows, is taken as 2^31.
pub(crate) const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// The directives this cache acts on. Request and response directives share
/// one struct because they share one grammar.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) no_store: bool,
    /// Response `no-cache`, with or without field names: a qualified `no-cache`
    /// is treated as unqualified, which is the conservative reading.
    pub(crate) no_cache: bool,
    /// Response `private`, with or without field names (same reasoning).
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) immutable: bool,
    /// Request `only-if-cached` (RFC 9111 section 5.2.1.7).
    pub(crate) only_if_cached: bool,
    /// A freshness directive had a malformed or repeated value.
    pub(crate) invalid_freshness: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line of a message (they form one list,
    /// RFC 9110 section 5.3).
    pub(crate) fn from_values<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut cc = CacheControl::default();
        for value in values {
            // Non-visible-ASCII field values are opaque; parse what is readable.
            cc.add(&String::from_utf8_lossy(value.as_bytes()));
        }
        cc
    }

    /// Parses one field value.
    #[cfg(test)]
    pub(crate) fn parse(value: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.add(value);
        cc
    }

    fn add(&mut self, value: &str) {
        for (name, arg) in directives(value) {
            match name.as_str() {
                "max-age" => set_delta(&mut self.max_age, arg, &mut self.invalid_freshness),
                "s-maxage" => set_delta(&mut self.s_maxage, arg, &mut self.invalid_freshness),
                "stale-while-revalidate" => {
                    set_delta(
                        &mut self.stale_while_revalidate,
                        arg,
                        &mut self.invalid_freshness,
                    );
                }
                "stale-if-error" => {
                    set_delta(&mut self.stale_if_error, arg, &mut self.invalid_freshness);
                }
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "immutable" => self.immutable = true,
                "only-if-cached" => self.only_if_cached = true,
                _ => {}
            }
        }
    }
}

/// Records a delta-seconds argument; a missing, malformed or repeated one
/// invalidates the freshness information (RFC 9111 sections 1.2.2 and 4.2.1).
fn set_delta(slot: &mut Option<u64>, arg: Option<String>, invalid: &mut bool) {
    match arg.as_deref().and_then(parse_delta_seconds) {
        Some(secs) if slot.is_none() => *slot = Some(secs),
        Some(secs) => {
            *invalid = true;
            // Keep the smaller value: the safer one wherever it is still consulted.
            *slot = slot.map(|old| old.min(secs));
        }
        None => *invalid = true,
    }
}

/// RFC 9111 section 1.2.2: `delta-seconds = 1*DIGIT`, saturating at 2^31.
pub(crate) fn parse_delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// Splits a field value into lower-cased directive names and unquoted arguments,
/// honouring quoted strings (which may contain commas and `\` escapes).
fn directives(value: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        // name
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let mut arg = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            let mut a = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                a.push(escaped);
                            }
                        }
                        _ => a.push(c),
                    }
                }
                // Skip anything between the closing quote and the next comma.
                while chars.peek().is_some_and(|c| *c != ',') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    a.push(c);
                    chars.next();
                }
                a = a.trim().to_owned();
            }
            arg = Some(a);
        }
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() {
            out.push((name, arg));
        }
        if chars.next().is_none() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn directives_are_parsed_per_rfc_9111_section_5_2() {
        let table: &[(&str, CacheControl)] = &[
            ("", CacheControl::default()),
            (
                "max-age=31536000, immutable",
                CacheControl {
                    max_age: Some(31_536_000),
                    immutable: true,
                    ..Default::default()
                },
            ),
            (
                "max-age=1, stale-while-revalidate=5, stale-if-error=86400",
                CacheControl {
                    max_age: Some(1),
                    stale_while_revalidate: Some(5),
                    stale_if_error: Some(86_400),
                    ..Default::default()
                },
            ),
            // Names are case-insensitive; whitespace around items is optional.
            (
                "  Max-Age=60 ,PUBLIC,,  S-MaxAge=10",
                CacheControl {
                    max_age: Some(60),
                    s_maxage: Some(10),
                    public: true,
                    ..Default::default()
                },
            ),
            // Quoted arguments are allowed (RFC 9111 5.2: both token and quoted-string).
            (
                r#"max-age="30""#,
                CacheControl {
                    max_age: Some(30),
                    ..Default::default()
                },
            ),
            // Qualified forms may hold commas inside the quotes.
            (
                r#"private="Set-Cookie, X-Foo", max-age=5"#,
                CacheControl {
                    private: true,
                    max_age: Some(5),
                    ..Default::default()
                },
            ),
            (
                r#"no-cache="Set-Cookie", no-store"#,
                CacheControl {
                    no_cache: true,
                    no_store: true,
                    ..Default::default()
                },
            ),
            // Malformed or repeated freshness is invalid freshness (4.2.1).
            (
                "max-age=abc",
                CacheControl {
                    invalid_freshness: true,
                    ..Default::default()
                },
            ),
            (
                "max-age=-1",
                CacheControl {
                    invalid_freshness: true,
                    ..Default::default()
                },
            ),
            (
                "max-age",
                CacheControl {
                    invalid_freshness: true,
                    ..Default::default()
                },
            ),
            (
                "max-age=5, max-age=10",
                CacheControl {
                    max_age: Some(5),
                    invalid_freshness: true,
                    ..Default::default()
                },
            ),
            // Overflowing delta-seconds saturate at 2^31 (1.2.2).
            (
                "max-age=99999999999999999999999",
                CacheControl {
                    max_age: Some(MAX_DELTA_SECONDS),
                    ..Default::default()
                },
            ),
            // Unknown extensions are ignored (5.2.3).
            (
                "community=\"UCI\", must-revalidate, proxy-revalidate",
                CacheControl {
                    must_revalidate: true,
                    proxy_revalidate: true,
                    ..Default::default()
                },
            ),
        ];
        for (input, expected) in table {
            assert_eq!(&CacheControl::parse(input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn several_field_lines_combine_into_one_list() {
        let values = [
            HeaderValue::from_static("max-age=5"),
            HeaderValue::from_static("no-store"),
        ];
        let cc = CacheControl::from_values(values.iter());
        assert_eq!(cc.max_age, Some(5));
        assert!(cc.no_store);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases()))]

        #[test]
        fn the_parser_never_panics_on_any_input(s in "\\PC*") {
            let _ = CacheControl::parse(&s);
        }

        #[test]
        fn the_parser_never_panics_on_directive_soup(
            parts in proptest::collection::vec(
                "(max-age|s-maxage|no-store|private|\"|=|,|\\\\| |[0-9]{1,25}|stale-if-error)",
                0..20,
            )
        ) {
            let s: String = parts.concat();
            let cc = CacheControl::parse(&s);
            for v in [cc.max_age, cc.s_maxage, cc.stale_if_error].into_iter().flatten() {
                prop_assert!(v <= MAX_DELTA_SECONDS);
            }
        }

        #[test]
        fn several_field_lines_parse_like_one_comma_joined_line(
            a in "[a-z0-9=, -]{0,30}",
            b in "[a-z0-9=, -]{0,30}",
        ) {
            let lines = [
                HeaderValue::from_str(&a).expect("visible ascii"),
                HeaderValue::from_str(&b).expect("visible ascii"),
            ];
            let joined = CacheControl::parse(&format!("{a},{b}"));
            prop_assert_eq!(CacheControl::from_values(lines.iter()), joined);
        }
    }
}
