//! The same process with fulfilment's state and log on PostgreSQL.

use serde_json::json;
use uuid::Uuid;

use feed::testing::{eventually, feed_events, of_type};
use kit::testing::{Producer, Running, client, init_log};

#[tokio::test]
async fn on_postgresql_orders_are_released_or_cancelled_exactly_once() {
    init_log();
    let Some(cluster) = feed::testing::PgCluster::start() else {
        return;
    };
    let sales = Producer::start("sales").await;
    let billing = Producer::start("billing").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut args = kit::ServiceArgs::new(data.path());
    args.database_url = Some(cluster.database("fulfilment"));
    let config = fulfilment::Config {
        args,
        sales_feed: sales.feed_url(),
        billing_feed: billing.feed_url(),
    };
    let (good, bad, customer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let line = json!([{"product_id": Uuid::new_v4(), "quantity": 1, "unit_price_cents": 500}]);
    let billed = |order: Uuid| json!({"order_id": order, "customer_id": customer, "amount_cents": 500, "currency": "EUR"});
    // Billing before acceptance for one order, twice; a failure for the other.
    billing
        .append(&format!("order-{good}"), "CustomerBilled", billed(good))
        .await;
    billing
        .append(&format!("order-{good}"), "CustomerBilled", billed(good))
        .await;
    let app = Running::start(config.clone(), fulfilment::run).await;
    for order in [good, bad] {
        let data = json!({
            "order_id": order, "customer_id": customer, "email": "a@example.com", "lines": line,
            "total_cents": 500, "currency": "EUR",
        });
        sales
            .append(&format!("order-{order}"), "OrderAccepted", data.clone())
            .await;
        sales
            .append(&format!("order-{order}"), "OrderAccepted", data)
            .await;
    }
    let mut failed = billed(bad);
    failed["reason"] = "no funds".into();
    billing
        .append(&format!("order-{bad}"), "CustomerBillingFailed", failed)
        .await;
    app.wait_caught_up(&[
        ("fulfilment<-sales", sales.head().await),
        ("fulfilment<-billing", billing.head().await),
    ])
    .await;
    app.stop().await;

    // A restart on the same database keeps the state.
    let app = Running::start(config, fulfilment::run).await;
    eventually("both processes are final", || async {
        app.get(&format!("/orders/{good}")).await.1["state"] == "ready"
            && app.get(&format!("/orders/{bad}")).await.1["state"] == "cancelled"
    })
    .await;
    let events = feed_events(&client(), &app.feed_url()).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        of_type(&events, "OrderReadyForShipping")[0].data["order_id"],
        good.to_string()
    );
    assert_eq!(
        of_type(&events, "OrderFulfilmentCancelled")[0].data["order_id"],
        bad.to_string()
    );
    app.stop().await;
}
