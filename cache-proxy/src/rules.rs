//! The caching rules: RFC 9111 (HTTP Caching), RFC 5861 (stale-while-revalidate,
//! stale-if-error) and the conditional-request parts of RFC 9110, as pure
//! functions of their inputs and of `now`, so that every edge case is a table row.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::cache_control::CacheControl;

/// Status codes this cache stores (with explicit freshness). RFC 9111 section 3
/// allows any final status the cache understands; these are the heuristically
/// cacheable ones of RFC 9110 section 15.1 that a feed gateway meets.
const STORABLE_STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];

/// Request fields that change what a shared cache may do (RFC 9111 section 3.5).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestFacts {
    pub(crate) authorization: bool,
    pub(crate) cookie: bool,
}

/// Why a response was not stored; shown in `Cache-Status` `detail` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoStoreReason {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    VaryUnkeyed,
    NoFreshness,
    TooLarge,
    UnexpectedEncoding,
    /// The in-flight budget (`--max-in-flight`) was spent: streamed instead.
    InFlightLimit,
    /// The request said `Cache-Control: no-store` (RFC 9111 section 5.2.1.5).
    RequestNoStore,
    /// An unsafe request changed the resource while the response was on its way.
    Invalidated,
}

impl NoStoreReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NoStoreReason::Status => "status",
            NoStoreReason::NoStore => "no-store",
            NoStoreReason::Private => "private",
            NoStoreReason::Authorization => "authorization",
            NoStoreReason::SetCookie => "set-cookie",
            NoStoreReason::VaryStar => "vary-star",
            NoStoreReason::VaryUnkeyed => "vary-unkeyed",
            NoStoreReason::NoFreshness => "no-freshness",
            NoStoreReason::TooLarge => "too-large",
            NoStoreReason::UnexpectedEncoding => "unexpected-encoding",
            NoStoreReason::InFlightLimit => "in-flight-limit",
            NoStoreReason::RequestNoStore => "request-no-store",
            NoStoreReason::Invalidated => "invalidated",
        }
    }
}

/// Request fields this cache keys on (or never lets through to a cache fill), so a
/// `Vary` naming only these is honoured by construction of the key.
const KEYED_VARY: [&str; 3] = ["accept", "accept-encoding", "prefer"];

/// RFC 9111 section 3: may a shared cache store this response?
pub(crate) fn storable(
    req: RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
) -> Result<(), NoStoreReason> {
    // 3: "the response status code is final" and understood by the cache.
    if !STORABLE_STATUSES.contains(&status.as_u16()) {
        return Err(NoStoreReason::Status);
    }
    // 3: "the no-store cache directive is not present in the response".
    if cc.no_store {
        return Err(NoStoreReason::NoStore);
    }
    // 3 and 5.2.2.7: a shared cache does not store `private` responses.
    if cc.private {
        return Err(NoStoreReason::Private);
    }
    // 3.5: with Authorization, only if public, s-maxage or must-revalidate allow
    // it. Cookie is treated the same way: it identifies a user just as well.
    if (req.authorization || req.cookie)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Err(NoStoreReason::Authorization);
    }
    // Policy (RFC 9111 section 7 leaves it to the cache): a Set-Cookie response is
    // per user; storing it would hand one user's cookie to everybody.
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NoStoreReason::SetCookie);
    }
    // 4.1: "A stored response with a Vary header field value containing a member
    // '*' always fails to match." Other fields than the keyed ones are never
    // forwarded on a cache fill, but a stored variant for "absent" must not be
    // served to a client that sends them, so such responses are not stored.
    for value in headers.get_all(header::VARY) {
        for field in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let field = field.trim().to_ascii_lowercase();
            if field == "*" {
                return Err(NoStoreReason::VaryStar);
            }
            if !field.is_empty() && !KEYED_VARY.contains(&field.as_str()) {
                return Err(NoStoreReason::VaryUnkeyed);
            }
        }
    }
    // 3: the response must contain explicit freshness (max-age, s-maxage, Expires)
    // or be heuristically cacheable; this cache does not use heuristic freshness
    // (4.2.2 permits, never requires it).
    if cc.max_age.is_none() && cc.s_maxage.is_none() && !headers.contains_key(header::EXPIRES) {
        return Err(NoStoreReason::NoFreshness);
    }
    Ok(())
}

/// How long a stored response may be used, and how it may be used once stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Freshness {
    /// RFC 9111 section 4.2.1 freshness_lifetime.
    pub(crate) lifetime: Duration,
    /// RFC 5861 section 3: window after staleness in which it may be served while
    /// a background revalidation runs.
    pub(crate) stale_while_revalidate: Duration,
    /// RFC 5861 section 4: window after staleness in which it may be served when
    /// the origin errs.
    pub(crate) stale_if_error: Duration,
    /// RFC 8246: the response will not change while fresh.
    pub(crate) immutable: bool,
}

/// RFC 9111 section 4.2.1: the freshness lifetime (shared cache: s-maxage first),
/// and the RFC 5861 stale windows, which must-revalidate, proxy-revalidate,
/// s-maxage (5.2.2.10 implies proxy-revalidate) and no-cache switch off.
/// `response_time` stands in for a missing `Date` (4.2.1).
pub(crate) fn freshness(
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Freshness {
    let lifetime = if cc.no_cache || cc.invalid_freshness {
        // 5.2.2.4: no-cache means "validate before every reuse".
        Duration::ZERO
    } else if let Some(s) = cc.s_maxage.or(cc.max_age) {
        Duration::from_secs(s)
    } else {
        expires_lifetime(headers, response_time)
    };
    let may_serve_stale =
        !(cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache);
    let window = |secs: Option<u64>| match secs {
        Some(s) if may_serve_stale => Duration::from_secs(s),
        _ => Duration::ZERO,
    };
    Freshness {
        lifetime,
        stale_while_revalidate: window(cc.stale_while_revalidate),
        stale_if_error: window(cc.stale_if_error),
        immutable: cc.immutable,
    }
}

/// The longest a 404 is used (DESIGN.md section 4: a page that does not exist
/// yet will exist soon, so it must not be cached for minutes, whatever the
/// upstream says; Varnish's VCL applies the same cap).
pub(crate) const NOT_FOUND_LIFETIME: Duration = Duration::from_secs(1);

/// Policy on top of RFC 9111 (which lets a cache use less freshness than it
/// is given): a 404 is fresh for [`NOT_FOUND_LIFETIME`] at most and never
/// served stale.
pub(crate) fn limit_for_status(f: Freshness, status: StatusCode) -> Freshness {
    if status == StatusCode::NOT_FOUND {
        Freshness {
            lifetime: f.lifetime.min(NOT_FOUND_LIFETIME),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            immutable: false,
        }
    } else {
        f
    }
}

/// RFC 9111 section 4.2.1: `Expires` minus `Date`; an invalid Expires (5.3: "e.g.
/// the value 0") means already expired.
fn expires_lifetime(headers: &HeaderMap, response_time: SystemTime) -> Duration {
    let Some(expires) = headers.get(header::EXPIRES) else {
        return Duration::ZERO;
    };
    let Some(expires) = http_date(expires) else {
        return Duration::ZERO;
    };
    // 4.2.1: without Date, the time the response was received serves.
    let date = headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or(response_time);
    expires.duration_since(date).unwrap_or(Duration::ZERO)
}

pub(crate) fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// Inputs of the age calculation, recorded when a response arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgeInputs {
    pub(crate) request_time: SystemTime,
    pub(crate) response_time: SystemTime,
    pub(crate) date: Option<SystemTime>,
    pub(crate) age: Option<u64>,
}

impl AgeInputs {
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Self {
        AgeInputs {
            request_time,
            response_time,
            date: headers.get(header::DATE).and_then(http_date),
            age: headers
                .get(header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::cache_control::parse_delta_seconds),
        }
    }
}

/// RFC 9111 section 4.2.3: corrected_initial_age.
pub(crate) fn corrected_initial_age(a: &AgeInputs) -> Duration {
    // apparent_age = max(0, response_time - date_value)
    let apparent_age = a
        .date
        .and_then(|d| a.response_time.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    // response_delay = response_time - request_time
    let response_delay = a
        .response_time
        .duration_since(a.request_time)
        .unwrap_or(Duration::ZERO);
    // corrected_age_value = age_value + response_delay
    let corrected_age_value = Duration::from_secs(a.age.unwrap_or(0)) + response_delay;
    apparent_age.max(corrected_age_value)
}

/// RFC 9111 section 4.2.3: current_age = corrected_initial_age + resident_time.
pub(crate) fn current_age(
    corrected_initial_age: Duration,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    corrected_initial_age + now.duration_since(response_time).unwrap_or(Duration::ZERO)
}

/// What a stored response may be used for at a given age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// RFC 9111 section 4.2: fresh, serve it.
    Fresh,
    /// RFC 5861 section 3: stale but inside stale-while-revalidate: serve it and
    /// revalidate in the background.
    StaleWhileRevalidate,
    /// RFC 9111 section 4.3: stale: validate with the origin before reuse.
    Revalidate,
}

/// RFC 9111 section 4.2 ("response_is_fresh = (freshness_lifetime > current_age)")
/// and RFC 5861 section 3.
pub(crate) fn reuse(f: &Freshness, age: Duration) -> Reuse {
    if f.lifetime > age {
        Reuse::Fresh
    } else if f.lifetime + f.stale_while_revalidate > age {
        Reuse::StaleWhileRevalidate
    } else {
        Reuse::Revalidate
    }
}

/// How a stored response may be used for a request with these `Cache-Control`
/// request directives (RFC 9111 section 5.2.1): `no-cache` (5.2.1.4) and a
/// `max-age` the response is older than (5.2.1.1) ask for validation first,
/// except that a fresh `immutable` response is used as is (RFC 8246 section 2:
/// it will not change while fresh, so validating it only costs the origin).
pub(crate) fn reuse_for_request(f: &Freshness, age: Duration, request: &CacheControl) -> Reuse {
    let base = reuse(f, age);
    if base == Reuse::Fresh && f.immutable {
        return base;
    }
    let too_old = !request.invalid_freshness
        && request
            .max_age
            .is_some_and(|max| age > Duration::from_secs(max));
    if request.no_cache || too_old {
        Reuse::Revalidate
    } else {
        base
    }
}

/// RFC 5861 section 4: after an error (a 500, 502, 503 or 504 response, or no
/// response at all) the stale response may be used within stale-if-error.
pub(crate) fn stale_if_error_allows(f: &Freshness, age: Duration) -> bool {
    f.lifetime + f.stale_if_error > age
}

/// RFC 5861 section 4: the errors that allow a stale response.
pub(crate) fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// How long the cache keeps an entry after storing it: its remaining freshness
/// plus the longest window in which a stale copy is still useful (either stale
/// window, or `keep` for a cheap If-None-Match revalidation when it has a
/// validator; Varnish calls the latter "keep").
pub(crate) fn retention(
    f: &Freshness,
    initial_age: Duration,
    has_validator: bool,
    keep: Duration,
) -> Duration {
    let keep = if has_validator { keep } else { Duration::ZERO };
    let useful = f.lifetime + f.stale_while_revalidate.max(f.stale_if_error).max(keep);
    useful.saturating_sub(initial_age)
}

/// RFC 9211 section 2.6: the `ttl` parameter (negative once stale).
pub(crate) fn ttl_seconds(f: &Freshness, age: Duration) -> i64 {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    secs(f.lifetime) - secs(age)
}

/// RFC 9110 section 13.1.2: If-None-Match uses the weak comparison; `*` matches
/// any current representation.
pub(crate) fn if_none_match_matches(
    if_none_match: &HeaderValue,
    etag: Option<&HeaderValue>,
) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    if list.trim() == "*" {
        return etag.is_some();
    }
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
        return false;
    };
    let opaque = |tag: &str| -> Option<String> {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        (tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"')).then(|| tag.to_owned())
    };
    let Some(ours) = opaque(etag) else {
        return false;
    };
    list.split(',')
        .filter_map(opaque)
        .any(|theirs| theirs == ours)
}

/// RFC 7240 section 4.3: the `wait` preference in seconds, if the request has one.
pub(crate) fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers.get_all("prefer").iter().find_map(|value| {
        value.to_str().ok()?.split(',').find_map(|pref| {
            let pref = pref.split(';').next()?.trim();
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
    })
}

/// The `Prefer` field values with every `wait` preference set to `wait` seconds
/// (RFC 7240 section 4.3), other preferences kept, so an upstream never holds a
/// request longer than the proxy will wait for it.
pub(crate) fn cap_prefer_wait(headers: &HeaderMap, wait: u64) -> Option<HeaderValue> {
    let mut prefs = Vec::new();
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for pref in value.split(',') {
            let token = pref.split(';').next().unwrap_or_default();
            let is_wait = token
                .split_once('=')
                .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("wait"));
            if is_wait {
                prefs.push(format!("wait={wait}"));
            } else if !pref.trim().is_empty() {
                prefs.push(pref.trim().to_owned());
            }
        }
    }
    HeaderValue::from_str(&prefs.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields<'a> = &'a [(&'a str, &'a str)];

    fn headers(pairs: Fields<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = http::HeaderName::from_bytes(k.as_bytes()).expect("valid name");
            h.append(name, HeaderValue::from_str(v).expect("valid value"));
        }
        h
    }

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse(s)
    }

    const ANON: RequestFacts = RequestFacts {
        authorization: false,
        cookie: false,
    };
    const AUTH: RequestFacts = RequestFacts {
        authorization: true,
        cookie: false,
    };
    const COOKIE: RequestFacts = RequestFacts {
        authorization: false,
        cookie: true,
    };

    #[test]
    fn storability_follows_rfc_9111_section_3() {
        use NoStoreReason::*;
        let none: &[(&str, &str)] = &[];
        type Row<'a> = (
            RequestFacts,
            u16,
            &'a str,
            Fields<'a>,
            Result<(), NoStoreReason>,
        );
        let table: &[Row<'_>] = &[
            (ANON, 200, "max-age=60", none, Ok(())),
            (ANON, 404, "max-age=1", none, Ok(())),
            (ANON, 500, "max-age=60", none, Err(Status)),
            (ANON, 206, "max-age=60", none, Err(Status)),
            (ANON, 304, "max-age=60", none, Err(Status)),
            (ANON, 200, "max-age=60, no-store", none, Err(NoStore)),
            (ANON, 200, "private, max-age=60", none, Err(Private)),
            (ANON, 200, r#"private="x", max-age=60"#, none, Err(Private)),
            // 3.5: Authorization needs public, s-maxage or must-revalidate.
            (AUTH, 200, "max-age=60", none, Err(Authorization)),
            (AUTH, 200, "public, max-age=60", none, Ok(())),
            (AUTH, 200, "s-maxage=60", none, Ok(())),
            (AUTH, 200, "must-revalidate, max-age=60", none, Ok(())),
            (AUTH, 200, "public, private, max-age=60", none, Err(Private)),
            (COOKIE, 200, "max-age=60", none, Err(Authorization)),
            (COOKIE, 200, "public, max-age=60", none, Ok(())),
            (
                ANON,
                200,
                "max-age=60",
                &[("set-cookie", "a=b")],
                Err(SetCookie),
            ),
            (
                ANON,
                200,
                "public, max-age=60",
                &[("set-cookie", "a=b")],
                Err(SetCookie),
            ),
            (ANON, 200, "max-age=60", &[("vary", "*")], Err(VaryStar)),
            (
                ANON,
                200,
                "max-age=60",
                &[("vary", "Accept, User-Agent")],
                Err(VaryUnkeyed),
            ),
            (
                ANON,
                200,
                "max-age=60",
                &[("vary", "Accept, Accept-Encoding, Prefer")],
                Ok(()),
            ),
            (ANON, 200, "", none, Err(NoFreshness)),
            (ANON, 200, "no-cache", none, Err(NoFreshness)),
            (ANON, 200, "no-cache, max-age=60", none, Ok(())),
            (
                ANON,
                200,
                "",
                &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
                Ok(()),
            ),
        ];
        for (req, status, cache_control, extra, expected) in table {
            let mut h = headers(extra);
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_str(cache_control).expect("ascii"),
            );
            let got = storable(
                *req,
                StatusCode::from_u16(*status).expect("status"),
                &h,
                &cc(cache_control),
            );
            assert_eq!(
                got, *expected,
                "{req:?} {status} {cache_control:?} {extra:?}"
            );
        }
    }

    #[test]
    fn freshness_lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let secs = Duration::from_secs;
        let date = [("date", "Thu, 01 Jan 2099 00:00:00 GMT")];
        let expires = [
            ("date", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ("expires", "Thu, 01 Jan 2099 00:01:00 GMT"),
        ];
        let bad_expires = [("expires", "0")];
        let table: &[(&str, Fields<'_>, Duration)] = &[
            ("max-age=60", &date, secs(60)),
            ("max-age=60, s-maxage=5", &date, secs(5)),
            ("", &expires, secs(60)),
            ("max-age=10", &expires, secs(10)),
            ("", &bad_expires, Duration::ZERO),
            ("no-cache, max-age=60", &date, Duration::ZERO),
            ("max-age=1, max-age=60", &date, Duration::ZERO),
        ];
        for (cache_control, extra, expected) in table {
            let f = freshness(&cc(cache_control), &headers(extra), SystemTime::UNIX_EPOCH);
            assert_eq!(f.lifetime, *expected, "{cache_control:?}");
        }
    }

    #[test]
    fn stale_windows_are_switched_off_by_revalidation_directives() {
        let secs = Duration::from_secs;
        let table: &[(&str, Duration, Duration)] = &[
            (
                "max-age=1, stale-while-revalidate=5, stale-if-error=86400",
                secs(5),
                secs(86_400),
            ),
            (
                "max-age=1, stale-while-revalidate=5, must-revalidate",
                Duration::ZERO,
                Duration::ZERO,
            ),
            (
                "max-age=1, stale-if-error=9, proxy-revalidate",
                Duration::ZERO,
                Duration::ZERO,
            ),
            (
                "s-maxage=1, stale-if-error=9",
                Duration::ZERO,
                Duration::ZERO,
            ),
            (
                "no-cache, max-age=1, stale-if-error=9",
                Duration::ZERO,
                Duration::ZERO,
            ),
        ];
        for (cache_control, swr, sie) in table {
            let f = freshness(
                &cc(cache_control),
                &HeaderMap::new(),
                SystemTime::UNIX_EPOCH,
            );
            assert_eq!(
                (f.stale_while_revalidate, f.stale_if_error),
                (*swr, *sie),
                "{cache_control:?}"
            );
        }
    }

    #[test]
    fn reuse_moves_from_fresh_to_stale_while_revalidate_to_revalidate() {
        let f = freshness(
            &cc("max-age=10, stale-while-revalidate=5, stale-if-error=30"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        let at = |s: u64| reuse(&f, Duration::from_secs(s));
        assert_eq!(at(0), Reuse::Fresh);
        assert_eq!(at(9), Reuse::Fresh);
        // 4.2: fresh only while freshness_lifetime > current_age.
        assert_eq!(at(10), Reuse::StaleWhileRevalidate);
        assert_eq!(at(14), Reuse::StaleWhileRevalidate);
        assert_eq!(at(15), Reuse::Revalidate);
        assert!(stale_if_error_allows(&f, Duration::from_secs(39)));
        assert!(!stale_if_error_allows(&f, Duration::from_secs(40)));
        let no_cache = freshness(
            &cc("no-cache, max-age=10"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(reuse(&no_cache, Duration::ZERO), Reuse::Revalidate);
    }

    #[test]
    fn age_is_corrected_per_rfc_9111_section_4_2_3() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        let table: &[(AgeInputs, Duration)] = &[
            // Direct from origin, no Age, Date = response time.
            (
                AgeInputs {
                    request_time: t0,
                    response_time: t0,
                    date: Some(t0),
                    age: None,
                },
                s(0),
            ),
            // An upstream cache said Age: 30; the round trip took 2 s.
            (
                AgeInputs {
                    request_time: t0,
                    response_time: t0 + s(2),
                    date: Some(t0),
                    age: Some(30),
                },
                s(32),
            ),
            // The origin clock is 100 s behind: apparent_age dominates.
            (
                AgeInputs {
                    request_time: t0,
                    response_time: t0,
                    date: Some(t0 - s(100)),
                    age: Some(5),
                },
                s(100),
            ),
            // The origin clock is ahead: apparent_age is clamped at 0.
            (
                AgeInputs {
                    request_time: t0,
                    response_time: t0,
                    date: Some(t0 + s(100)),
                    age: None,
                },
                s(0),
            ),
            // No Date at all.
            (
                AgeInputs {
                    request_time: t0,
                    response_time: t0 + s(1),
                    date: None,
                    age: None,
                },
                s(1),
            ),
        ];
        for (inputs, expected) in table {
            assert_eq!(corrected_initial_age(inputs), *expected, "{inputs:?}");
        }
        assert_eq!(current_age(s(32), t0, t0 + s(8)), s(40));
        // A clock that went backwards never makes the age negative.
        assert_eq!(current_age(s(3), t0, t0 - s(8)), s(3));
    }

    #[test]
    fn retention_covers_the_longest_useful_stale_window() {
        let s = Duration::from_secs;
        let head = freshness(
            &cc("max-age=1, stale-while-revalidate=5, stale-if-error=86400"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(retention(&head, s(0), true, s(600)), s(86_401));
        let page = freshness(
            &cc("max-age=300"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(retention(&page, s(0), true, s(600)), s(900));
        assert_eq!(retention(&page, s(0), false, s(600)), s(300));
        assert_eq!(retention(&page, s(1000), false, s(600)), s(0));
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let etag = HeaderValue::from_static("\"h-7-atom-gzip\"");
        let weak = HeaderValue::from_static("W/\"h-7-atom-gzip\"");
        let table: &[(&str, Option<&HeaderValue>, bool)] = &[
            ("\"h-7-atom-gzip\"", Some(&etag), true),
            ("W/\"h-7-atom-gzip\"", Some(&etag), true),
            ("\"h-7-atom-gzip\"", Some(&weak), true),
            ("\"a\", \"h-7-atom-gzip\"", Some(&etag), true),
            ("\"h-7-atom-identity\"", Some(&etag), false),
            ("h-7-atom-gzip", Some(&etag), false),
            ("*", Some(&etag), true),
            ("*", None, false),
            ("\"x\"", None, false),
        ];
        for (inm, etag, expected) in table {
            assert_eq!(
                if_none_match_matches(&HeaderValue::from_str(inm).expect("ascii"), *etag),
                *expected,
                "{inm:?} vs {etag:?}"
            );
        }
    }

    #[test]
    fn prefer_wait_is_read_per_rfc_7240() {
        let table: &[(&str, Option<u64>)] = &[
            ("wait=10", Some(10)),
            ("respond-async, wait=30", Some(30)),
            ("Wait = 5", Some(5)),
            ("wait=\"7\"", Some(7)),
            ("return=minimal", None),
            ("wait=soon", None),
        ];
        for (value, expected) in table {
            let h = headers(&[("prefer", value)]);
            assert_eq!(prefer_wait(&h), *expected, "{value:?}");
        }
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn expires_without_date_counts_from_the_response_time_passed_in() {
        let received = httpdate::parse_http_date("Thu, 01 Jan 2099 00:00:00 GMT").expect("date");
        let h = headers(&[("expires", "Thu, 01 Jan 2099 00:02:00 GMT")]);
        assert_eq!(
            freshness(&cc(""), &h, received).lifetime,
            Duration::from_secs(120)
        );
        assert_eq!(
            freshness(&cc(""), &h, received + Duration::from_secs(200)).lifetime,
            Duration::ZERO
        );
    }

    #[test]
    fn request_directives_ask_for_validation_except_for_fresh_immutable_responses() {
        let s = Duration::from_secs;
        let page = freshness(
            &cc("max-age=31536000, immutable"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        let head = freshness(
            &cc("max-age=10, stale-while-revalidate=5"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        let table: &[(&Freshness, u64, &str, Reuse)] = &[
            (&head, 2, "", Reuse::Fresh),
            (&head, 2, "no-cache", Reuse::Revalidate),
            (&head, 2, "max-age=0", Reuse::Revalidate),
            (&head, 2, "max-age=5", Reuse::Fresh),
            (&head, 12, "", Reuse::StaleWhileRevalidate),
            (&head, 12, "no-cache", Reuse::Revalidate),
            (&head, 2, "max-age=bogus", Reuse::Fresh),
            (&head, 2, "no-store", Reuse::Fresh),
            (&page, 100, "no-cache", Reuse::Fresh),
            (&page, 100, "max-age=0", Reuse::Fresh),
            (&page, 31_536_001, "no-cache", Reuse::Revalidate),
        ];
        for (f, age, request, expected) in table {
            assert_eq!(
                reuse_for_request(f, s(*age), &cc(request)),
                *expected,
                "age {age} request {request:?}"
            );
        }
    }

    #[test]
    fn the_forwarded_wait_is_capped_and_other_preferences_kept() {
        let table: &[(&[&str], &str)] = &[
            (&["wait=600"], "wait=30"),
            (&["respond-async, wait=600"], "respond-async, wait=30"),
            (&["return=minimal", "Wait = 5"], "return=minimal, wait=30"),
        ];
        for (values, expected) in table {
            let mut h = HeaderMap::new();
            for v in *values {
                h.append("prefer", HeaderValue::from_str(v).expect("ascii"));
            }
            assert_eq!(
                cap_prefer_wait(&h, 30).expect("value"),
                *expected,
                "{values:?}"
            );
        }
    }

    #[test]
    fn a_404_is_fresh_for_a_second_at_most_and_never_stale() {
        let f = freshness(
            &cc("max-age=600, stale-while-revalidate=60, stale-if-error=600, immutable"),
            &HeaderMap::new(),
            SystemTime::UNIX_EPOCH,
        );
        let limited = limit_for_status(f, StatusCode::NOT_FOUND);
        assert_eq!(limited.lifetime, NOT_FOUND_LIFETIME);
        assert_eq!(limited.stale_while_revalidate, Duration::ZERO);
        assert_eq!(limited.stale_if_error, Duration::ZERO);
        assert!(!limited.immutable);
        assert_eq!(limit_for_status(f, StatusCode::OK), f);
    }
}
