//! The pages of the running system through the gateway: the landing page, every
//! service's index (negotiation, variants, validators, their head and lag fields),
//! the order view, and the breadcrumb back to the landing page.

use serde_json::{Value, json};

use crate::support::System;
use crate::system::config;

const BROWSER: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Checks negotiation and validators of a page that exists as HTML and JSON at
/// `path` (a directory URL ending in `/`), with variants `index.html` and `index.json`.
async fn assert_negotiated_page(sys: &System, path: &str) {
    let base = format!("{}{path}", sys.url);
    let cases: [(&str, Option<&str>, bool); 10] = [
        ("", None, false),
        ("", Some("*/*"), false),
        ("", Some("application/json"), false),
        ("", Some("application/atom+xml"), false),
        (
            "",
            Some("application/atom+xml, application/json;q=0.5"),
            false,
        ),
        ("", Some("text/html"), true),
        ("", Some(BROWSER), true),
        ("index.html", Some("application/json"), true),
        ("index.json", Some(BROWSER), false),
        ("index.html", None, true),
    ];
    for (variant, accept, html) in cases {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = sys.get(&format!("{path}{variant}"), &headers).await;
        let what = format!("GET {path}{variant} Accept: {accept:?}");
        assert_eq!(r.status(), 200, "{what}");
        let (media, location) = if html {
            ("text/html; charset=utf-8", format!("{base}index.html"))
        } else {
            ("application/json", format!("{base}index.json"))
        };
        assert_eq!(header(&r, "content-type"), media, "{what}");
        assert_eq!(header(&r, "content-location"), location, "{what}");
        assert_eq!(header(&r, "vary"), "Accept, Accept-Encoding", "{what}");
        let etag = header(&r, "etag");
        assert!(
            etag.starts_with("W/\"") && etag.contains(feed::html::version_tag()),
            "{what}: ETag {etag}"
        );
        assert!(!header(&r, "cache-control").is_empty(), "{what}");
        let body = r.text().await.expect("body");
        if html {
            assert!(body.starts_with("<!DOCTYPE html>"), "{what}");
        } else {
            serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    // A conditional GET of the unchanged page: 304 with the same validators.
    let first = sys.get(&format!("{path}index.html"), &[]).await;
    let etag = header(&first, "etag");
    let again = sys
        .get(&format!("{path}index.html"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status(), 304, "{path}index.html with If-None-Match");
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(header(&again, "vary"), "Accept, Accept-Encoding");
    assert_eq!(
        header(&again, "content-location"),
        format!("{base}index.html")
    );
    assert_eq!(
        header(&again, "cache-control"),
        header(&first, "cache-control")
    );
    // The JSON's validator does not match the HTML.
    let json_etag = header(&sys.get(&format!("{path}index.json"), &[]).await, "etag");
    assert_ne!(json_etag, etag);
    let cross = sys
        .get(
            &format!("{path}index.html"),
            &[("if-none-match", &json_etag)],
        )
        .await;
    assert_eq!(cross.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_landing_page_and_every_index_negotiate_html_and_json_with_weak_validators() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    assert_negotiated_page(&sys, "/").await;
    for service in retail::SERVICES {
        assert_negotiated_page(&sys, &format!("/{service}/")).await;
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_landing_page_lists_every_service_and_feed_and_each_link_works() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    c.skip = vec!["loyalty".into()];
    let sys = System::start(c).await;
    let gw = &sys.url;
    let (status, landing) = sys.get_json("/").await;
    assert_eq!(status, 200);
    let listed: Vec<(Value, Value, Value)> = landing["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| (s["name"].clone(), s["index"].clone(), s["feed"].clone()))
        .collect();
    let mounted = ["catalog", "sales", "billing", "fulfilment", "shipping"];
    assert_eq!(
        listed,
        mounted.map(|s| (
            json!(s),
            json!(format!("{gw}/{s}/")),
            json!(format!("{gw}/{s}/feed"))
        ))
    );
    assert_eq!(landing["orders"], format!("{gw}/orders/{{order_id}}"));
    for (_, index, feed) in &listed {
        let index = sys
            .client
            .get(index.as_str().expect("url"))
            .send()
            .await
            .expect("index");
        assert_eq!(index.status(), 200);
        let feed = sys
            .client
            .get(feed.as_str().expect("url"))
            .header("accept", "application/atom+xml")
            .send()
            .await
            .expect("feed");
        assert_eq!(feed.status(), 200);
        feed::atom::parse_feed(&feed.text().await.expect("body")).expect("an Atom feed");
    }
    let html = sys
        .get("/", &[("accept", BROWSER)])
        .await
        .text()
        .await
        .expect("body");
    for s in mounted {
        assert!(html.contains(&format!("href=\"{gw}/{s}/\"")), "{s} index");
        assert!(
            html.contains(&format!("href=\"{gw}/{s}/feed\"")),
            "{s} feed"
        );
        assert!(
            html.contains(&format!(
                "<link rel=\"alternate\" type=\"application/atom+xml\" href=\"{gw}/{s}/feed.atom\""
            )),
            "{s} feed autodiscovery"
        );
    }
    assert!(
        !html.contains("/loyalty/"),
        "a skipped service is not listed"
    );
    assert!(html.contains(&format!("action=\"{gw}/orders\"")));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_index_shows_what_a_service_publishes_and_how_far_each_subscription_got() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let gw = sys.url.clone();
    let mug = sys.product("Mug", 300, 900).await;
    let order = sys.order("kim", &[(&mug, 1)]).await;
    sys.wait_for_event("shipping", "OrderShipped", &order).await;
    sys.settle().await;

    let expected: [(&str, &[(&str, &str)]); 6] = [
        ("catalog", &[]),
        (
            "sales",
            &[("sales<-catalog", "catalog"), ("sales<-sales", "sales")],
        ),
        ("billing", &[("billing<-sales", "sales")]),
        (
            "fulfilment",
            &[
                ("fulfilment<-sales", "sales"),
                ("fulfilment<-billing", "billing"),
            ],
        ),
        (
            "shipping",
            &[
                ("shipping<-catalog", "catalog"),
                ("shipping<-fulfilment", "fulfilment"),
            ],
        ),
        (
            "loyalty",
            &[
                ("loyalty<-sales", "sales"),
                ("loyalty<-shipping", "shipping"),
            ],
        ),
    ];
    for (service, follows) in expected {
        let (_, index) = sys.get_json(&format!("/{service}/")).await;
        assert_eq!(index["service"], service);
        let events = sys.events(service).await.len() as u64;
        assert_eq!(
            index["publishes"]["head_position"], events,
            "{service}: {index}"
        );
        assert_eq!(index["publishes"]["feed"], format!("{gw}/{service}/feed"));
        let listed = index["follows"].as_array().expect("follows");
        assert_eq!(listed.len(), follows.len(), "{service}: {index}");
        for (name, producer) in follows {
            let f = listed
                .iter()
                .find(|f| f["subscription"] == *name)
                .unwrap_or_else(|| panic!("{service} has no {name}: {index}"));
            let head = sys.events(producer).await.len() as u64;
            assert_eq!(f["feed"], format!("{gw}/{producer}/feed"), "{name}");
            assert_eq!(f["checkpoint"], head, "{name}: {f}");
            assert_eq!(f["head"], head, "{name}: {f}");
            assert_eq!(f["lag"], 0, "{name}: {f}");
            assert_eq!(f["caught_up"], true, "{name}: {f}");
            assert_eq!(f["error"], Value::Null, "{name}: {f}");
        }
    }
    // The HTML links each checkpoint to its event and leads back to the landing page.
    let html = sys
        .get("/billing/", &[("accept", BROWSER)])
        .await
        .text()
        .await
        .expect("body");
    let sales_head = sys.events("sales").await.len();
    assert!(
        html.contains(&format!("href=\"{gw}/sales/feed/events/{sales_head}\"")),
        "{html}"
    );
    assert!(html.contains("caught up"));
    assert!(html.contains(&format!("href=\"{gw}/\" rel=\"home\"")));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_view_merges_the_order_streams_of_every_service_into_one_story() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let gw = sys.url.clone();
    let lamp = sys.product("Lamp", 700, 3900).await;
    let order = sys.order("lou", &[(&lamp, 2)]).await;
    sys.wait_for_event("shipping", "OrderShipped", &order).await;
    sys.wait_for_event("sales", "OrderConfirmationSent", &order)
        .await;

    let (status, view) = sys.get_json(&format!("/orders/{order}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["order_id"], order);
    let events: Vec<(String, String)> = view["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["service"].as_str().unwrap_or_default().to_owned(),
                e["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for wanted in [
        ("sales", "OrderAccepted"),
        ("billing", "CustomerBilled"),
        ("fulfilment", "OrderReadyForShipping"),
        ("shipping", "OrderShipped"),
        ("sales", "OrderConfirmationSent"),
    ] {
        assert!(
            events
                .iter()
                .any(|(s, t)| (s.as_str(), t.as_str()) == wanted),
            "{wanted:?} in {events:?}"
        );
    }
    assert_eq!(events.len(), 5, "{events:?}");
    let position = |s: &str, t: &str| {
        events
            .iter()
            .position(|e| (e.0.as_str(), e.1.as_str()) == (s, t))
    };
    assert!(position("sales", "OrderAccepted") < position("billing", "CustomerBilled"));
    assert!(
        position("billing", "CustomerBilled") < position("fulfilment", "OrderReadyForShipping")
    );
    assert!(position("fulfilment", "OrderReadyForShipping") < position("shipping", "OrderShipped"));
    let times: Vec<&str> = view["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap_or_default())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged by time: {times:?}"
    );
    // Every step is done and links an event page that exists and is that event.
    for step in view["steps"].as_array().expect("steps") {
        assert_eq!(step["done"], true, "{step}");
        let url = step["event"].as_str().expect("event url");
        assert!(url.starts_with(&format!(
            "{gw}/{}/feed/events/",
            step["service"].as_str().unwrap_or_default()
        )));
        let entry = sys
            .client
            .get(url)
            .header("accept", "application/atom+xml")
            .send()
            .await
            .expect("event");
        assert_eq!(entry.status(), 200, "{url}");
        assert!(
            entry
                .text()
                .await
                .expect("body")
                .contains(step["event_type"].as_str().unwrap_or("?"))
        );
    }
    assert_eq!(
        view["sources"].as_array().map(Vec::len),
        Some(4),
        "catalog and loyalty write no order streams: {view}"
    );

    // The HTML of the same story, the form's redirect, and the variants.
    let r = sys
        .get(&format!("/orders/{order}"), &[("accept", BROWSER)])
        .await;
    assert_eq!(
        header(&r, "content-location"),
        format!("{gw}/orders/{order}.html")
    );
    let html = r.text().await.expect("body");
    assert_eq!(html.matches("data-done=\"true\"").count(), 4, "{html}");
    assert!(html.contains(&format!("href=\"{gw}/\" rel=\"home\"")));
    let json_variant = sys
        .get(&format!("/orders/{order}.json"), &[("accept", BROWSER)])
        .await;
    assert_eq!(header(&json_variant, "content-type"), "application/json");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirects
        .get(format!("{gw}/orders?order={order}"))
        .send()
        .await
        .expect("form");
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), format!("{gw}/orders/{order}"));

    // An order nobody has heard of: a page saying so, as a 404.
    let unknown = uuid::Uuid::new_v4();
    let (status, view) = sys.get_json(&format!("/orders/{unknown}")).await;
    assert_eq!(status, 404, "{view}");
    assert_eq!(view["events"], json!([]));
    let (status, _) = sys.get_json("/orders/no%20such%20id").await;
    assert_eq!(status, 404);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feed_pages_through_the_gateway_lead_back_to_the_landing_page() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let gw = sys.url.clone();
    let kettle = sys.product("Kettle", 900, 3000).await;
    let order = sys.order("max", &[(&kettle, 1)]).await;
    sys.wait_for_event("sales", "OrderAccepted", &order).await;
    let home = format!("href=\"{gw}/\" rel=\"home\"");
    for path in [
        "/sales/feed.html".to_owned(),
        "/sales/feed/events/1.html".to_owned(),
        format!("/sales/streams/order-{order}.html"),
        "/sales/feed/events/999.html".to_owned(),
    ] {
        let body = sys.get(&path, &[]).await.text().await.expect("body");
        assert!(body.contains(&home), "{path} has no way home");
    }
    sys.stop().await;
}
