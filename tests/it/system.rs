//! The whole flow through the gateway, on SQLite and on PostgreSQL, with the same
//! assertions; billing failures; refused commands; the late joiner.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::System;

pub(crate) fn config(dir: &tempfile::TempDir) -> retail::Config {
    let mut c = retail::Config::new(dir.path());
    c.page_size = Some(50);
    c
}

pub(crate) fn mails(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("mail")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// The events of `event_type` in `service`'s feed about `order`.
async fn about(sys: &System, service: &str, event_type: &str, order: &str) -> Vec<feed::Event> {
    sys.events(service)
        .await
        .into_iter()
        .filter(|e| e.event_type.as_str() == event_type && e.data["order_id"] == order)
        .collect()
}

/// The flow every backend must run the same way: an order of two products by a new
/// customer goes through sales, billing, fulfilment and shipping, is mailed and
/// counted by loyalty; two more orders make the customer silver. `data_dir` holds
/// the mail folder.
async fn assert_the_order_flow(sys: &System, data_dir: &std::path::Path) {
    let teapot = sys.product("Cast-iron teapot", 1200, 2500).await;
    let cups = sys.product("Tea cups (set of 4)", 800, 1800).await;
    let order = sys.order("alice", &[(&teapot, 1), (&cups, 2)]).await;
    let total = 2500 + 2 * 1800;

    let accepted = sys.wait_for_event("sales", "OrderAccepted", &order).await;
    assert_eq!(accepted.data["total_cents"], total);
    assert_eq!(accepted.data["customer_id"], "alice");
    assert_eq!(accepted.stream.as_str(), format!("order-{order}"));
    let billed = sys
        .wait_for_event("billing", "CustomerBilled", &order)
        .await;
    assert_eq!(billed.data["amount_cents"], total);
    let ready = sys
        .wait_for_event("fulfilment", "OrderReadyForShipping", &order)
        .await;
    assert_eq!(
        ready.data["lines"],
        json!([{"product_id": teapot, "quantity": 1}, {"product_id": cups, "quantity": 2}])
    );
    let shipped = sys.wait_for_event("shipping", "OrderShipped", &order).await;
    assert_eq!(shipped.data["total_weight_grams"], 1200 + 2 * 800);

    // The packing slip, field by field.
    let slip = sys
        .wait_for(&format!("/shipping/shipments/{order}"), |s| {
            s["status"] == "shipped"
        })
        .await;
    let slip_lines: Vec<(Value, Value, Value, Value)> = slip["packing_slip"]["lines"]
        .as_array()
        .expect("slip lines")
        .iter()
        .map(|l| {
            (
                l["name"].clone(),
                l["quantity"].clone(),
                l["unit_weight_grams"].clone(),
                l["weight_grams"].clone(),
            )
        })
        .collect();
    assert_eq!(
        slip_lines,
        [
            (
                json!("Cast-iron teapot"),
                json!(1),
                json!(1200),
                json!(1200)
            ),
            (
                json!("Tea cups (set of 4)"),
                json!(2),
                json!(800),
                json!(1600)
            ),
        ]
    );
    assert_eq!(slip["packing_slip"]["total_weight_grams"], 2800);

    // Loyalty counted the one shipped order: still bronze, with its total.
    let customer = sys
        .wait_for("/loyalty/customers/alice", |c| c["shipped_orders"] == 1)
        .await;
    assert_eq!(customer["tier"], "bronze", "{customer}");
    assert_eq!(customer["shipped_total_cents"], total, "{customer}");
    assert_eq!(
        customer["orders"],
        json!([{"order_id": order, "total_cents": total}])
    );
    assert_eq!(customer["awaiting_totals"], json!([]));
    assert_eq!(customer["earned_by"], Value::Null);

    // The confirmation: one event, one email naming the products.
    sys.wait_for_event("sales", "OrderConfirmationSent", &order)
        .await;
    let mail = mails(data_dir)
        .into_iter()
        .find(|m| m.contains(&order))
        .expect("a confirmation email");
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(
        mail.contains("1 x Cast-iron teapot at 25.00 EUR") && mail.contains("2 x Tea cups"),
        "{mail}"
    );

    // Billing charged it.
    let (_, account) = sys.get_json("/billing/customers/alice").await;
    assert_eq!(account["charged_cents"], total, "{account}");

    // Two more orders: the third shipped order makes alice silver, once.
    let second = sys.order("alice", &[(&cups, 1)]).await;
    let third = sys.order("alice", &[(&teapot, 1)]).await;
    let customer = sys
        .wait_for("/loyalty/customers/alice", |c| c["shipped_orders"] == 3)
        .await;
    assert_eq!(customer["tier"], "silver", "{customer}");
    assert_eq!(customer["earned_by"], "3 shipped orders (>= 3)");
    assert_eq!(customer["shipped_total_cents"], total + 1800 + 2500);
    let counted: Vec<&Value> = customer["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| &o["order_id"])
        .collect();
    assert_eq!(counted.len(), 3);
    for o in [&order, &second, &third] {
        assert!(counted.contains(&&json!(o)), "{o} counted: {customer}");
    }
    sys.settle().await;
    let changes: Vec<Value> = sys
        .wait_for_count("loyalty", "CustomerTierChanged", 1)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        changes,
        [
            json!({"customer_id": "alice", "tier": "silver", "previous_tier": "bronze",
                "shipped_orders": 3, "shipped_total_cents": total + 1800 + 2500})
        ]
    );

    // The order's page on the gateway tells the same story.
    let (status, view) = sys.get_json(&format!("/orders/{order}")).await;
    assert_eq!(status, 200, "{view}");
    let steps: Vec<(Value, Value)> = view["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["event_type"].clone(), s["done"].clone()))
        .collect();
    assert_eq!(
        steps,
        [
            "OrderAccepted",
            "CustomerBilled",
            "OrderReadyForShipping",
            "OrderShipped"
        ]
        .map(|t| (json!(t), json!(true)))
    );
    for service in ["sales", "billing", "fulfilment", "shipping"] {
        let r = sys
            .get(&format!("/{service}/streams/order-{order}"), &[])
            .await;
        assert_eq!(r.status(), 200, "{service} has no stream for the order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_flows_from_sales_to_shipping_and_loyalty() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    assert_the_order_flow(&sys, dir.path()).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_flow_runs_the_same_on_postgresql() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    for s in retail::SERVICES {
        pg.database(&format!("retail_{s}"));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    // A query string applies to every service's database.
    c.postgres_url = Some(format!(
        "postgres://postgres@127.0.0.1:{}/?application_name=retail-test",
        pg.port()
    ));
    let sys = System::start(c).await;
    assert_the_order_flow(&sys, dir.path()).await;
    assert!(
        !dir.path().join("sales.db").exists(),
        "on PostgreSQL no service writes a SQLite file"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_billing_failure_cancels_fulfilment_and_nothing_ships() {
    let dir = tempfile::tempdir().expect("tmp");
    let sys = System::start(config(&dir)).await;
    let (status, body) = sys
        .command(
            Method::PUT,
            "/billing/customers/bob",
            json!({"credit_limit_cents": 1000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let piano = sys.product("Piano", 250_000, 500_000).await;
    let order = sys.order("bob", &[(&piano, 1)]).await;
    let failed = sys
        .wait_for_event("billing", "CustomerBillingFailed", &order)
        .await;
    assert!(failed.data["reason"].is_string());
    sys.wait_for_event("fulfilment", "OrderFulfilmentCancelled", &order)
        .await;
    sys.settle().await;
    let (status, _) = sys.get_json(&format!("/shipping/shipments/{order}")).await;
    assert_eq!(status, 404);
    assert!(
        about(&sys, "fulfilment", "OrderReadyForShipping", &order)
            .await
            .is_empty()
    );
    let (status, view) = sys.get_json(&format!("/orders/{order}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["steps"][1]["done"], false, "{view}");
    sys.stop().await;
}

/// Every command route, with a valid body for `product` (an existing product).
fn command_routes(product: &str, doomed: &str) -> Vec<(Method, String, Option<Value>)> {
    let teapot = json!({"name": "Teapot", "description": "", "pictures": [], "weight_grams": 900, "size_mm": {"l": 1, "w": 1, "h": 1}});
    vec![
        (
            Method::POST,
            "/catalog/products".into(),
            Some(teapot.clone()),
        ),
        (
            Method::PUT,
            format!("/catalog/products/{product}"),
            Some(teapot),
        ),
        (Method::DELETE, format!("/catalog/products/{doomed}"), None),
        (
            Method::PUT,
            format!("/sales/prices/{product}"),
            Some(json!({"unit_price_cents": 3100, "currency": "EUR"})),
        ),
        (
            Method::POST,
            "/sales/orders".into(),
            Some(
                json!({"customer_id": "carol", "email": "carol@example.com", "lines": [{"product_id": product, "quantity": 1}]}),
            ),
        ),
        (
            Method::PUT,
            "/billing/customers/carol".into(),
            Some(json!({"credit_limit_cents": 500_000})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_needs_the_token_through_the_gateway_and_bad_ones_append_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    c.api_token = Some("s3cret".into());
    let sys = System::start(c).await;
    let product = sys.product("Kettle", 900, 3000).await;
    let doomed = sys.product("Discontinued", 100, 100).await;
    sys.settle().await;
    let mut heads = Vec::new();
    for s in retail::SERVICES {
        heads.push(sys.head_position(s).await);
    }
    let send = |method: Method, path: &str, body: Option<String>, token: Option<&str>, ct: &str| {
        let mut r = sys.client.request(method, format!("{}{path}", sys.url));
        if let Some(body) = body {
            r = r.header("content-type", ct.to_owned()).body(body);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Without the token, or with a wrong one, no command runs.
    for (method, path, body) in command_routes(&product, &doomed) {
        let body = body.map(|b| b.to_string());
        for token in [
            None,
            Some("wrong"),
            Some("s3cre"),
            Some("s3cretX"),
            Some("S3CRET"),
        ] {
            let r = send(
                method.clone(),
                &path,
                body.clone(),
                token,
                "application/json",
            )
            .await
            .expect("request");
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
    }
    // Bad input with the token: a clear status and problem+json.
    let order = |lines: Value| {
        json!({"customer_id": "carol", "email": "carol@example.com", "lines": lines}).to_string()
    };
    let cases: Vec<(Method, &str, String, &str, u16)> = vec![
        (Method::POST, "/sales/orders", "{not json".into(), "application/json", 400),
        (Method::POST, "/sales/orders", "[1, 2]".into(), "application/json", 400),
        (Method::POST, "/sales/orders", order(json!([{"product_id": product, "quantity": 1}])), "text/plain", 415),
        (Method::POST, "/sales/orders", json!({"email": "x@example.com", "lines": []}).to_string(), "application/json", 422),
        // An unknown product is a field of the body, not the addressed resource: 422.
        (Method::POST, "/sales/orders", order(json!([{"product_id": "00000000-0000-0000-0000-000000000000", "quantity": 1}])), "application/json", 422),
        (Method::POST, "/sales/orders", order(json!([{"product_id": product, "quantity": -1}])), "application/json", 422),
        (Method::POST, "/catalog/products", json!({"name": "", "description": "", "pictures": [], "weight_grams": -5, "size_mm": {"l": 1, "w": 1, "h": 1}}).to_string(), "application/json", 422),
        (Method::POST, "/catalog/products", format!("{{\"name\":\"{}\"}}", "x".repeat(200_000)), "application/json", 413),
        (Method::PUT, "/billing/customers/carol", json!({"credit_limit_cents": -1}).to_string(), "application/json", 422),
    ];
    for (method, path, body, ct, want) in cases {
        let r = send(method.clone(), path, Some(body.clone()), Some("s3cret"), ct)
            .await
            .expect("request");
        assert_eq!(
            r.status().as_u16(),
            want,
            "{method} {path} {}",
            &body[..body.len().min(120)]
        );
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path} {want}"
        );
    }
    // If-Match through the gateway: a stale tag fails the precondition, junk is a 400.
    for (if_match, want) in [("\"7\"", 412), ("seven", 400)] {
        let r = sys
            .client
            .delete(format!("{}/catalog/products/{doomed}", sys.url))
            .bearer_auth("s3cret")
            .header("if-match", if_match)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status().as_u16(), want, "If-Match: {if_match}");
    }
    sys.settle().await;
    for (s, before) in retail::SERVICES.iter().zip(&heads) {
        assert_eq!(
            sys.head_position(s).await,
            *before,
            "{s} appended after a refused command"
        );
    }
    // With the token every command goes through (and answers with a Location).
    for (method, path, body) in command_routes(&product, &doomed) {
        let r = send(
            method.clone(),
            &path,
            body.map(|b| b.to_string()),
            Some("s3cret"),
            "application/json",
        )
        .await
        .expect("request");
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        if method != Method::DELETE {
            assert!(
                r.headers().get("location").is_some(),
                "{method} {path} names what it changed"
            );
        }
    }
    // Feeds and queries stay public.
    assert_eq!(sys.get("/sales/feed", &[]).await.status(), 200);
    assert_eq!(
        sys.get(&format!("/catalog/products/{product}"), &[])
            .await
            .status(),
        200
    );
    sys.stop().await;
}

/// A late-joiner customer: name, the orders (desk or pencil, quantity), and the tier
/// and reason that must come of them.
type Shopper = (
    &'static str,
    Vec<(bool, u64)>,
    &'static str,
    Option<&'static str>,
);

/// The late joiner's customers, chosen so that every tier is reached, by count and by
/// amount.
fn shoppers() -> Vec<Shopper> {
    // `true` is the desk (45 000 cents), `false` the pencil (500 cents).
    vec![
        ("dan", vec![(false, 1)], "bronze", None),
        ("ivy", vec![(false, 2), (false, 1)], "bronze", None),
        (
            "eve",
            vec![(false, 1); 3],
            "silver",
            Some("3 shipped orders (>= 3)"),
        ),
        (
            "fay",
            vec![(true, 2)],
            "silver",
            Some("90000 cents shipped (>= 50000)"),
        ),
        (
            "gus",
            vec![(false, 1); 10],
            "gold",
            Some("10 shipped orders (>= 10)"),
        ),
        (
            "hal",
            vec![(true, 5)],
            "gold",
            Some("225000 cents shipped (>= 200000)"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_loyalty_reaches_the_same_tiers_as_one_that_ran_from_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(&dir);
    // Small pages, so the late joiner walks sealed archive pages.
    c.page_size = Some(10);
    let sys = System::start(c).await;
    let pencil = sys.product("Pencil", 10, 500).await;
    let desk = sys.product("Desk", 30_000, 45_000).await;
    let mut orders = 0;
    for (customer, list, _, _) in shoppers() {
        let (status, body) = sys
            .command(
                Method::PUT,
                &format!("/billing/customers/{customer}"),
                json!({"credit_limit_cents": 1_000_000_000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for (is_desk, quantity) in list {
            sys.order(
                customer,
                &[(if is_desk { &desk } else { &pencil }, quantity)],
            )
            .await;
            orders += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while sys.events("shipping").await.len() < orders {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything shipped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sys.settle().await;

    // A loyalty started now, on a fresh data folder, replays both feeds from position 1.
    let late_dir = tempfile::tempdir().expect("tmp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let late_url = format!("http://{}", listener.local_addr().expect("addr"));
    let late = loyalty::Config::new(
        late_dir.path(),
        format!("{}/sales/feed", sys.url),
        format!("{}/shipping/feed", sys.url),
    );
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(loyalty::run(late, listener, token.clone()));
    let get = |url: String| {
        let client = sys.client.clone();
        async move {
            client
                .get(url)
                .header("accept", "application/json")
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let index = get(format!("{late_url}/")).await;
        if index["follows"].as_array().is_some_and(|f| {
            f.len() == 2 && f.iter().all(|s| s["caught_up"] == true && s["lag"] == 0)
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "late loyalty did not catch up: {index}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (customer, list, tier, reason) in shoppers() {
        let (_, original) = sys
            .get_json(&format!("/loyalty/customers/{customer}"))
            .await;
        let replayed = get(format!("{late_url}/customers/{customer}")).await;
        for record in [&original, &replayed] {
            assert_eq!(record["tier"], tier, "{customer}: {record}");
            assert_eq!(record["earned_by"], json!(reason), "{customer}: {record}");
            assert_eq!(record["shipped_orders"], list.len(), "{customer}: {record}");
        }
        assert_eq!(
            original["shipped_total_cents"], replayed["shipped_total_cents"],
            "{customer}"
        );
        assert_eq!(original["orders"], replayed["orders"], "{customer}");
    }
    // The same tier changes, in the same order, with the same ids.
    let changes = |events: Vec<feed::Event>| -> Vec<(uuid::Uuid, Value)> {
        events
            .into_iter()
            .filter(|e| e.event_type.as_str() == "CustomerTierChanged")
            .map(|e| (e.id, e.data))
            .collect()
    };
    // Per customer the sequence is fixed; across customers it follows how the two
    // feeds interleaved, so compare them sorted.
    let sorted = |mut list: Vec<(uuid::Uuid, Value)>| {
        list.sort_by_key(|(_, d)| (d["customer_id"].to_string(), d["shipped_orders"].as_i64()));
        list
    };
    let original = sorted(changes(sys.events("loyalty").await));
    let late_events = {
        let text = sys
            .client
            .get(format!("{late_url}/feed"))
            .header("accept", "application/atom+xml")
            .send()
            .await
            .expect("feed")
            .text()
            .await
            .expect("body");
        feed::atom::parse_feed(&text).expect("atom").entries
    };
    assert_eq!(sorted(changes(late_events)), original);
    // eve and fay to silver, gus to silver then gold, hal straight to gold.
    assert_eq!(original.len(), 5, "{original:?}");
    token.cancel();
    let _ = task.await;
    sys.stop().await;
}
