//! Scenarios run against both fronts (see the `both_fronts!` list in main.rs).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH,
};

use crate::harness::{Front, client, raw, text};
use crate::origin::{Flaky, Origin};

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
    // Fields neither front knows by name: a fill forwards only keyed fields.
    attacks.push(("unkeyed", vec![("x-evil", "evil"), ("user-agent", "evil")]));
    attacks.push((
        "unkeyed and prefer",
        vec![("x-evil", "evil"), ("prefer", "return=evil")],
    ));
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

pub(crate) async fn a_successful_command_invalidates_the_stored_target_and_its_location(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    // PUT on the stored URL itself.
    let before = text(get(front, "/items/1", &[]).await).await;
    assert_eq!(before, "item 1 version 1");
    assert!(
        front.was_hit(&get(front, "/items/1", &[]).await),
        "{name}: stored"
    );
    let put = client()
        .put(front.url("/items/1"))
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(put.status(), StatusCode::OK);
    let after = get(front, "/items/1", &[]).await;
    assert!(!front.was_hit(&after), "{name}: not a stale hit after PUT");
    assert_eq!(text(after).await, "item 1 version 2", "{name}");

    // A command elsewhere whose Location names the stored URL.
    assert_eq!(
        text(get(front, "/items/2", &[]).await).await,
        "item 2 version 1"
    );
    let touch = client()
        .post(front.url("/items/2/touch"))
        .send()
        .await
        .expect("answer");
    assert_eq!(touch.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        text(get(front, "/items/2", &[]).await).await,
        "item 2 version 2",
        "{name}: the Location was invalidated"
    );

    // A command on another URL leaves this one alone.
    assert!(front.was_hit(&get(front, "/items/2", &[]).await));
    let failed = client()
        .delete(front.url("/orders"))
        .send()
        .await
        .expect("answer");
    assert!(failed.status().is_success());
    assert!(
        front.was_hit(&get(front, "/items/2", &[]).await),
        "{name}: a command on another URL leaves this one"
    );
    assert_eq!(origin.counts("/items/1").full, 2, "{name}");
}

pub(crate) async fn responses_that_must_not_be_shared_are_never_stored(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    for kind in [
        "set-cookie",
        "no-store",
        "private",
        "vary-star",
        "vary-user-agent",
    ] {
        let path = format!("/kinds/{kind}");
        for _ in 0..3 {
            let response = get(front, &path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(
                !front.was_hit(&response),
                "{name}: {kind} served from cache"
            );
        }
        assert_eq!(origin.counts(&path).requests, 3, "{name}: {kind}");
    }
}

pub(crate) async fn a_304_that_adds_set_cookie_is_not_kept(origin: &Origin, front: &Front) {
    let name = front.name();
    let path = "/kinds/cookie-on-304";
    let first = get(front, path, &[]).await;
    assert!(first.headers().get("set-cookie").is_none());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // Stale: revalidated; the 304 adds Set-Cookie.
    let revalidated = get(front, path, &[]).await;
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert!(origin.counts(path).not_modified >= 1, "{name}: revalidated");
    let after = get(front, path, &[]).await;
    assert!(
        !front.was_hit(&after),
        "{name}: the merged response may not be stored"
    );
    assert!(
        after.headers().get("set-cookie").is_none(),
        "{name}: another client's cookie leaked: {:?}",
        after.headers().get("set-cookie")
    );
}

pub(crate) async fn age_counts_the_upstreams_age_and_the_time_stored(
    _origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let age = |r: &reqwest::Response| -> u64 {
        r.headers()["age"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number")
    };
    let first = get(front, "/kinds/aged", &[]).await;
    let first_age = age(&first);
    assert!((30..=35).contains(&first_age), "{name}: Age {first_age}");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let later = get(front, "/kinds/aged", &[]).await;
    assert!(front.was_hit(&later), "{name}");
    let later_age = age(&later);
    assert!(
        later_age >= first_age + 2 && later_age <= first_age + 10,
        "{name}: Age {first_age} then {later_age}"
    );
}

pub(crate) async fn a_stale_copy_is_served_when_the_origin_answers_5xx(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let stored = text(get(front, "/flaky", &[]).await).await;
    origin.set_flaky(Flaky::Failing);
    // Past max-age=1 and stale-while-revalidate=2, within stale-if-error=60.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    for _ in 0..3 {
        let response = get(front, "/flaky", &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(text(response).await, stored, "{name}");
    }
    assert!(
        origin.counts("/flaky").requests >= 2,
        "{name}: the origin was asked"
    );
    origin.set_flaky(Flaky::Healthy);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = text(get(front, "/flaky", &[]).await).await;
        if body != stored {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: recovers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn a_stale_copy_is_served_when_the_origin_is_too_slow(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let stored = text(get(front, "/flaky", &[]).await).await;
    origin.set_flaky(Flaky::Slow);
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    // Several clients at once: none waits for the 10 s origin, nor in line
    // behind another's attempt.
    let started = Instant::now();
    let responses = futures::future::join_all((0..10).map(|_| get(front, "/flaky", &[]))).await;
    let elapsed = started.elapsed();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(text(response).await, stored, "{name}");
    }
    assert!(
        elapsed < Duration::from_millis(9_500),
        "{name}: stale copies took {elapsed:?} (origin answers after 10 s)"
    );
    origin.set_flaky(Flaky::Healthy);
}

pub(crate) async fn a_failed_background_refresh_keeps_the_stale_copy(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let stored = text(get(front, "/flaky", &[]).await).await;
    origin.set_flaky(Flaky::Failing);
    // Past max-age=1, within stale-while-revalidate=2: served stale while a
    // background refresh fails.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let before = origin.counts("/flaky").requests;
    assert_eq!(
        text(get(front, "/flaky", &[]).await).await,
        stored,
        "{name}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.counts("/flaky").requests == before {
        assert!(
            Instant::now() < deadline,
            "{name}: the background refresh ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = get(front, "/flaky", &[]).await;
    assert_eq!(
        after.status(),
        StatusCode::OK,
        "{name}: the failure did not replace it"
    );
    assert_eq!(text(after).await, stored, "{name}");
    origin.set_flaky(Flaky::Healthy);
}

pub(crate) async fn an_origin_error_is_kept_a_second_at_most_and_coalescing_resumes(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let path = "/recovering/1";
    let failed = get(front, path, &[]).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR, "{name}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let client = client();
    let url = front.url(path);
    let requests = (0..200).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).send().await.expect("answer").status() })
    });
    for status in futures::future::join_all(requests).await {
        assert_eq!(status.expect("task"), StatusCode::OK, "{name}");
    }
    assert_eq!(
        origin.counts(path).full,
        1,
        "{name}: 200 concurrent requests after the error made one origin request"
    );
}

pub(crate) async fn no_spelling_of_a_target_fills_an_entry_another_target_is_served_from(
    _origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    // Pairs that a careless cache might confuse; each is requested first, then
    // all of them again, and every answer must be the origin's answer for a
    // target equivalent to the one asked (RFC 3986 section 6.2.2).
    let targets = [
        "/echo/a/b",
        "/echo/a%2Fb",
        "/echo/a%2fb",
        "/echo//a/b",
        "/echo/A/b",
        "/echo/%41/b",
        "/echo/~x",
        "/echo/%7Ex",
        "/echo?a=1&b=2",
        "/echo?b=2&a=1",
        "/echo?a=%2f",
        "/echo?a=%2F",
        "/echo/x;y",
        "/echo/x%3By",
    ];
    let mut answers = Vec::new();
    for round in 0..2 {
        for target in targets {
            let raw_response = raw(
                front.addr(),
                &format!(
                    "GET {} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                    front.target(target)
                ),
            )
            .await;
            assert!(
                raw_response.starts_with("HTTP/1.1 200"),
                "{name}: {target}: {raw_response}"
            );
            let seen = raw_response
                .rsplit("origin saw ")
                .next()
                .expect("echo body")
                .trim()
                .to_owned();
            assert_eq!(
                equivalent(&seen),
                equivalent(target),
                "{name} round {round}: asked {target}, got the answer for {seen}"
            );
            answers.push((target, seen));
        }
    }
    // Dot segments and backslashes are refused by both fronts.
    for target in [
        "/echo/a/../b",
        "/echo/%2e%2e/b",
        "/echo/./b",
        "/echo/a\\b",
        "/echo/%zz",
    ] {
        let response = raw(
            front.addr(),
            &format!(
                "GET {} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                front.target(target)
            ),
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{name}: {target}: {response}"
        );
        assert!(
            response.contains("application/problem+json"),
            "{name}: {target}"
        );
    }
}

/// A target in RFC 3986 normal form: hex digits upper case, unreserved
/// characters decoded.
fn equivalent(target: &str) -> String {
    let bytes = target.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = target.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    out
}

pub(crate) async fn a_404_is_kept_a_second_at_most_whatever_it_says(
    origin: &Origin,
    front: &Front,
) {
    let name = front.name();
    let path = "/kinds/missing-for-long";
    assert_eq!(get(front, path, &[]).await.status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(get(front, path, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        origin.counts(path).requests,
        2,
        "{name}: max-age=600 on a 404 is cut to 1 s"
    );
}
