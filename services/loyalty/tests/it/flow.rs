//! The whole chain with the real services: catalog, sales, billing, fulfilment,
//! shipping and loyalty, each on its own socket and SQLite file, following each
//! other's feeds.

use serde_json::{Value, json};

use feed::testing::{PATIENCE, eventually, feed_events, of_type};
use kit::testing::{Running, client, init_log};

struct Retail {
    catalog: Running,
    sales: Running,
    fulfilment: Running,
    shipping: Running,
    loyalty: Running,
    billing: Running,
    _data: tempfile::TempDir,
}

impl Retail {
    async fn start() -> Self {
        init_log();
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path();
        // Bind every socket first, so each service knows the others' feed URLs.
        let listeners: Vec<tokio::net::TcpListener> =
            futures::future::join_all((0..6).map(|_| tokio::net::TcpListener::bind("127.0.0.1:0")))
                .await
                .into_iter()
                .map(|l| l.expect("bind"))
                .collect();
        let feed = |i: usize| {
            format!(
                "http://{}/feed",
                listeners[i].local_addr().expect("address")
            )
        };
        let (catalog_feed, sales_feed, billing_feed, fulfilment_feed, shipping_feed) =
            (feed(0), feed(1), feed(2), feed(3), feed(4));
        let mut listeners = listeners.into_iter();
        let mut next = || listeners.next().expect("six listeners");
        Self {
            catalog: Running::on(next(), catalog::Config::new(dir), catalog::run),
            sales: Running::on(next(), sales::Config::new(dir, &catalog_feed), sales::run),
            billing: Running::on(next(), billing::Config::new(dir, &sales_feed), billing::run),
            fulfilment: Running::on(
                next(),
                fulfilment::Config::new(dir, &sales_feed, &billing_feed),
                fulfilment::run,
            ),
            shipping: Running::on(
                next(),
                shipping::Config::new(dir, &fulfilment_feed, &catalog_feed),
                shipping::run,
            ),
            loyalty: Running::on(
                next(),
                loyalty::Config::new(dir, &sales_feed, &shipping_feed),
                loyalty::run,
            ),
            _data: data,
        }
    }

    async fn stop(self) {
        for app in [
            self.loyalty,
            self.shipping,
            self.fulfilment,
            self.billing,
            self.sales,
            self.catalog,
        ] {
            app.stop().await;
        }
    }
}

async fn send(method: reqwest::Method, url: String, body: Value) -> reqwest::Response {
    client()
        .request(method, url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

/// Sends a command to sales until it is accepted: sales refuses products its catalog
/// replica has not seen yet (404 for a price, 422 for an order line), which lasts
/// until its subscription catches up.
async fn to_sales(method: reqwest::Method, url: String, body: Value) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = send(method.clone(), url.clone(), body.clone()).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        if status.is_success() {
            return serde_json::from_str(&text).expect("JSON");
        }
        assert!(
            (status == 404 || status == 422) && tokio::time::Instant::now() < deadline,
            "sales refused {url}: {status} {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Places an order; returns its id.
async fn place_order(sales: &Running, customer: &str, product: &str, quantity: i64) -> String {
    let body = json!({"customer_id": customer, "email": format!("{customer}@example.com"),
                      "lines": [{"product_id": product, "quantity": quantity}]});
    let order = to_sales(
        reqwest::Method::POST,
        format!("{}/orders", sales.base),
        body,
    )
    .await;
    order["order_id"].as_str().expect("order_id").to_owned()
}

#[tokio::test]
async fn orders_placed_through_sales_are_billed_released_shipped_and_counted_toward_loyalty() {
    let retail = Retail::start().await;
    let created = send(
        reqwest::Method::POST,
        format!("{}/products", retail.catalog.base),
        json!({"name": "Cast-iron teapot", "description": "Holds 1.2 l", "pictures": [],
               "weight_grams": 1200, "size_mm": {"l": 200, "w": 150, "h": 150}}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let product = location.rsplit('/').next().expect("product id").to_owned();
    to_sales(
        reqwest::Method::PUT,
        format!("{}/prices/{product}", retail.sales.base),
        json!({"unit_price_cents": 30_000, "currency": "EUR"}),
    )
    .await;

    // Within the default credit limit: the happy path.
    let good = place_order(&retail.sales, "ada", &product, 2).await;
    // Over it: billing fails and fulfilment cancels.
    let bad = place_order(&retail.sales, "bob", &product, 5).await;

    eventually("ada's order is shipped and counted", || async {
        retail.loyalty.get("/customers/ada").await.1["tier"] == "silver"
    })
    .await;
    let shipment = retail.shipping.get(&format!("/shipments/{good}")).await.1;
    assert_eq!(shipment["status"], "shipped");
    assert_eq!(shipment["customer_id"], "ada");
    assert_eq!(
        shipment["packing_slip"]["lines"][0]["name"],
        "Cast-iron teapot"
    );
    assert_eq!(shipment["packing_slip"]["total_weight_grams"], 2400);
    assert_eq!(
        retail.fulfilment.get(&format!("/orders/{good}")).await.1["state"],
        "ready"
    );
    let ada = retail.loyalty.get("/customers/ada").await.1;
    assert_eq!(ada["shipped_total_cents"], 60_000);
    assert_eq!(
        ada["orders"],
        json!([{"order_id": good, "total_cents": 60_000}])
    );

    eventually("bob's order is cancelled", || async {
        retail.fulfilment.get(&format!("/orders/{bad}")).await.1["state"] == "cancelled"
    })
    .await;
    assert_eq!(
        retail.shipping.get(&format!("/shipments/{bad}")).await.0,
        404
    );
    let fulfilment = feed_events(&client(), &retail.fulfilment.feed_url()).await;
    assert_eq!(of_type(&fulfilment, "OrderReadyForShipping").len(), 1);
    assert_eq!(
        of_type(&fulfilment, "OrderFulfilmentCancelled")[0].data["order_id"],
        bad
    );
    let shipped = feed_events(&client(), &retail.shipping.feed_url()).await;
    assert_eq!(shipped.len(), 1);
    let tiers = feed_events(&client(), &retail.loyalty.feed_url()).await;
    assert_eq!(
        of_type(&tiers, "CustomerTierChanged")[0].data,
        json!({"customer_id": "ada", "tier": "silver", "previous_tier": "bronze",
               "shipped_orders": 1, "shipped_total_cents": 60_000})
    );
    retail.stop().await;
}
