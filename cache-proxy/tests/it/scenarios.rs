//! Scenarios run against both fronts (see the `both_fronts!` list in main.rs).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH,
};

use crate::harness::{Front, client, raw, text};
use crate::origin::Origin;

const PAGE: &str = "/feed/archive/1-10";
const ATOM: &str = "application/atom+xml";
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get(front: &Front, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(front.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("front answers")
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

pub(crate) async fn two_hundred_concurrent_misses_make_exactly_one_upstream_request(
    origin: &Origin,
    front: &Front,
) {
    let client = client();
    let url = front.url(PAGE);
    let requests = (0..200).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let response = client
                .get(&url)
                .header(ACCEPT_ENCODING, "gzip")
                .send()
                .await
                .expect("answer");
            (response.status(), response.bytes().await.expect("body"))
        })
    });
    let results = futures::future::join_all(requests).await;
    let first = results[0].as_ref().expect("task").1.clone();
    for result in results {
        let (status, body) = result.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, first, "every client gets the same page");
    }
    assert_eq!(
        origin.counts(PAGE).requests,
        1,
        "{}: 200 concurrent misses, one origin request",
        front.name()
    );
}

pub(crate) async fn a_sealed_page_is_served_after_the_origin_stops_and_the_head_goes_stale_then_fails(
    origin: &Origin,
    front: &Front,
) {
    // The head says max-age=1, stale-if-error=3.
    let page = text(get(front, PAGE, &[]).await).await;
    let stored = Instant::now();
    let head = get(front, "/feed", &[]).await;
    assert_eq!(head.status(), StatusCode::OK);
    let head = text(head).await;

    origin.stop().await;

    let again = get(front, PAGE, &[]).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "{}: sealed page while the origin is down",
        front.name()
    );
    assert_eq!(text(again).await, page);

    sleep_until(stored + Duration::from_millis(1_500)).await;
    let stale = get(front, "/feed", &[]).await;
    assert_eq!(
        stale.status(),
        StatusCode::OK,
        "{}: stale head within stale-if-error",
        front.name()
    );
    assert_eq!(text(stale).await, head);

    sleep_until(stored + Duration::from_millis(5_500)).await;
    let failed = get(front, "/feed", &[]).await;
    assert!(
        matches!(failed.status().as_u16(), 502 | 504),
        "{}: after stale-if-error the head fails, got {}",
        front.name(),
        failed.status()
    );
    assert_eq!(failed.headers()[CONTENT_TYPE], "application/problem+json");

    origin.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(front, "/feed", &[]).await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the head recovers after the origin restarts",
            front.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn an_append_is_visible_through_the_cache_within_max_age_plus_one_second(
    origin: &Origin,
    front: &Front,
) {
    let before = origin.last_position();
    let body = text(get(front, "/feed", &[]).await).await;
    assert!(body.contains(&format!("<last>{before}</last>")));
    let last = origin.append(1);
    let appended = Instant::now();
    loop {
        let body = text(get(front, "/feed", &[]).await).await;
        if body.contains(&format!("<last>{last}</last>")) {
            break;
        }
        assert!(
            appended.elapsed() < Duration::from_secs(2),
            "{}: the append is not visible within max-age (1 s) + 1 s",
            front.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn a_client_if_none_match_is_answered_304_from_the_cache(
    origin: &Origin,
    front: &Front,
) {
    let first = get(front, PAGE, &[(ACCEPT_ENCODING.as_str(), "gzip")]).await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[ETAG].to_str().expect("ascii").to_owned();
    let conditional = get(
        front,
        PAGE,
        &[
            (ACCEPT_ENCODING.as_str(), "gzip"),
            (IF_NONE_MATCH.as_str(), &etag),
        ],
    )
    .await;
    assert_eq!(
        conditional.status(),
        StatusCode::NOT_MODIFIED,
        "{}",
        front.name()
    );
    assert_eq!(conditional.headers()[ETAG], etag.as_str());
    assert!(
        front.was_hit(&conditional),
        "{}: the 304 comes from the cache",
        front.name()
    );
    assert_eq!(
        origin.counts(PAGE).requests,
        1,
        "{}: the origin saw only the first request",
        front.name()
    );
}

pub(crate) async fn an_expired_entry_is_revalidated_with_if_none_match_without_a_new_download(
    origin: &Origin,
    front: &Front,
) {
    // The head says max-age=1 and nothing else.
    let first = get(front, "/feed", &[]).await;
    let etag = first.headers()[ETAG].clone();
    let body = text(first).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let second = get(front, "/feed", &[]).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()[ETAG], etag);
    assert_eq!(
        text(second).await,
        body,
        "{}: the stored body is served after a 304",
        front.name()
    );
    let counts = origin.counts("/feed");
    assert_eq!(
        counts.full,
        1,
        "{}: the head was downloaded once",
        front.name()
    );
    assert!(
        counts.not_modified >= 1,
        "{}: the origin answered a revalidation with 304: {counts:?}",
        front.name()
    );
}

pub(crate) async fn atom_html_gzip_and_identity_representations_never_get_mixed_up(
    origin: &Origin,
    front: &Front,
) {
    let variants: [(&str, Option<&str>, bool, bool); 6] = [
        (ATOM, Some("gzip"), false, true),
        (ATOM, None, false, false),
        (BROWSER, Some("gzip"), true, true),
        (BROWSER, None, true, false),
        ("*/*", Some("gzip;q=0, identity"), false, false),
        (
            "text/html;q=0.9, application/atom+xml",
            Some("gzip"),
            false,
            true,
        ),
    ];
    for round in 0..2 {
        for path in [PAGE, "/feed"] {
            for (accept, encoding, html, gzip) in variants {
                let mut headers = vec![(ACCEPT.as_str(), accept)];
                if let Some(encoding) = encoding {
                    headers.push((ACCEPT_ENCODING.as_str(), encoding));
                }
                let response = get(front, path, &headers).await;
                let what = format!(
                    "{} round {round} {path} accept={accept:?} encoding={encoding:?}",
                    front.name()
                );
                assert_eq!(response.status(), StatusCode::OK, "{what}");
                let content_type = response.headers()[CONTENT_TYPE]
                    .to_str()
                    .expect("ascii")
                    .to_owned();
                assert_eq!(
                    content_type.starts_with("text/html"),
                    html,
                    "{what}: {content_type}"
                );
                let encoded = response
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.as_bytes().to_vec());
                assert_eq!(encoded.as_deref() == Some(b"gzip"), gzip, "{what}");
                let etag = response.headers()[ETAG].to_str().expect("ascii").to_owned();
                assert!(
                    etag.contains(if html { "-html-" } else { "-atom-" }),
                    "{what}: {etag}"
                );
                assert!(
                    etag.contains(if gzip { "-gzip" } else { "-identity" }),
                    "{what}: {etag}"
                );
                let body = text(response).await;
                assert_eq!(body.starts_with("<html>"), html, "{what}: {body:.60}");
                assert_eq!(body.starts_with("<feed>"), !html, "{what}: {body:.60}");
            }
        }
    }
    // Four representations of the page, each fetched once.
    assert_eq!(origin.counts(PAGE).full, 4, "{}", front.name());
}

pub(crate) async fn a_request_with_authorization_neither_reads_nor_fills_the_cache_unless_the_response_allows_it(
    origin: &Origin,
    front: &Front,
) {
    // A cached head is not served to a credentialed request.
    get(front, "/feed", &[]).await;
    let before = origin.counts("/feed").requests;
    let credentialed = get(front, "/feed", &[(AUTHORIZATION.as_str(), "Bearer alice")]).await;
    assert_eq!(credentialed.status(), StatusCode::OK);
    assert!(!front.was_hit(&credentialed), "{}", front.name());
    assert_eq!(
        origin.counts("/feed").requests,
        before + 1,
        "{}: forwarded",
        front.name()
    );

    // A private answer is stored for nobody.
    let alice = get(
        front,
        "/account",
        &[(AUTHORIZATION.as_str(), "Bearer alice")],
    )
    .await;
    assert_eq!(text(alice).await, "secret account of alice");
    let bob = get(front, "/account", &[(AUTHORIZATION.as_str(), "Bearer bob")]).await;
    assert_eq!(text(bob).await, "secret account of bob", "{}", front.name());
    let anonymous = get(front, "/account", &[]).await;
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "{}: nothing was stored",
        front.name()
    );
    let with_cookie = get(front, "/account", &[("cookie", "session=alice")]).await;
    assert_eq!(with_cookie.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        origin.counts("/account").requests,
        4,
        "{}: all four went to the origin",
        front.name()
    );

    // A `public` answer to a credentialed request may be stored (RFC 9111 3.5).
    let shared = get(
        front,
        "/shared",
        &[(AUTHORIZATION.as_str(), "Bearer alice")],
    )
    .await;
    assert_eq!(shared.status(), StatusCode::OK);
    let anonymous = get(front, "/shared", &[]).await;
    if front.stores_public_credentialed() {
        assert_eq!(anonymous.status(), StatusCode::OK);
        assert!(front.was_hit(&anonymous));
        assert_eq!(text(anonymous).await, "the shared price list");
        assert_eq!(origin.counts("/shared").requests, 1);
    } else {
        assert_eq!(
            anonymous.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            front.name()
        );
        assert_eq!(origin.counts("/shared").requests, 2);
    }
}

pub(crate) async fn poisoning_attempts_never_change_what_other_clients_get(
    _origin: &Origin,
    front: &Front,
) {
    let mut attacks: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "x-forwarded-host",
            vec![("x-forwarded-host", "evil.example")],
        ),
        (
            "forwarded",
            vec![("forwarded", "host=evil.example;proto=https")],
        ),
        ("x-host", vec![("x-host", "evil.example")]),
        ("x-original-url", vec![("x-original-url", "/evil")]),
        ("x-forwarded-proto", vec![("x-forwarded-proto", "evil")]),
        ("host", vec![(HOST.as_str(), "evil.example")]),
        (
            "everything",
            vec![
                ("x-forwarded-host", "evil.example"),
                (HOST.as_str(), "evil.example:80"),
            ],
        ),
    ];
    if matches!(front, Front::Proxy(_)) {
        // cache-proxy forwards only keyed fields on a cache fill; Varnish cannot
        // drop every unknown header, so only the known ones are tried there.
        attacks.push(("unkeyed", vec![("x-evil", "evil"), ("user-agent", "evil")]));
    }
    for (i, (name, headers)) in attacks.iter().enumerate() {
        for path in [format!("/feed?poison={i}"), format!("{PAGE}?poison={i}")] {
            let _ = get(front, &path, headers).await;
            let victim = get(front, &path, &[]).await;
            assert_eq!(victim.status(), StatusCode::OK);
            let body = text(victim).await;
            assert!(
                !body.contains("evil"),
                "{}: attack {name} on {path} reached a victim: {body:.300}",
                front.name()
            );
        }
    }
    // An absolute-form request target naming another host.
    let path = "/feed?poison=absolute";
    let attack = format!(
        "GET http://evil.example{} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        front.target(path)
    );
    let _ = raw(front.addr(), &attack).await;
    let body = text(get(front, path, &[]).await).await;
    assert!(
        !body.contains("evil"),
        "{}: absolute-form attack reached a victim: {body:.300}",
        front.name()
    );
}

pub(crate) async fn a_long_poll_is_forwarded_and_does_not_hold_up_ordinary_requests(
    origin: &Origin,
    front: &Front,
) {
    let first = get(front, "/feed", &[]).await;
    let etag = first.headers()[ETAG].to_str().expect("ascii").to_owned();
    let poll = {
        let (url, etag) = (front.url("/feed"), etag.clone());
        tokio::spawn(async move {
            let response = client()
                .get(url)
                .header(IF_NONE_MATCH, etag)
                .header("prefer", "wait=20")
                .send()
                .await
                .expect("long poll answers");
            (response.status(), text(response).await)
        })
    };
    let parked = Instant::now() + Duration::from_secs(10);
    while origin.waiting() == 0 {
        assert!(
            Instant::now() < parked,
            "{}: the long poll reaches the origin",
            front.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ordinary = get(front, "/feed", &[]).await;
    assert_eq!(ordinary.status(), StatusCode::OK);
    let conditional = get(front, "/feed", &[(IF_NONE_MATCH.as_str(), &etag)]).await;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert!(
        !poll.is_finished(),
        "{}: the long poll is still waiting",
        front.name()
    );

    let last = origin.append(1);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll returns after the append")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(&format!("<last>{last}</last>")),
        "{}: {body}",
        front.name()
    );

    // A long poll that times out at the origin comes back as 304 with
    // Preference-Applied, and is not stored.
    let etag = format!("\"h-{last}-atom-identity\"");
    let timed_out = get(
        front,
        "/feed",
        &[(IF_NONE_MATCH.as_str(), &etag), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(
        timed_out.status(),
        StatusCode::NOT_MODIFIED,
        "{}",
        front.name()
    );
    assert_eq!(timed_out.headers()["preference-applied"], "wait=1");
}

pub(crate) async fn a_missing_page_is_cached_for_at_most_a_second(origin: &Origin, front: &Front) {
    let path = "/feed/archive/31-40";
    let missing = get(front, path, &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    origin.append(20);
    let sealed = Instant::now();
    loop {
        let response = get(front, path, &[]).await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            sealed.elapsed() < Duration::from_millis(2_500),
            "{}: the 404 outlived max-age=1",
            front.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
