//! Tiers from orders whose events arrive in awkward orders.

use serde_json::json;
use uuid::Uuid;

use crate::history::{Order, System, customer, tier_changes};
use kit::testing::{Running, client};

fn order(customer: &str, total_cents: i64) -> Order {
    Order {
        id: Uuid::new_v4(),
        customer: customer.to_owned(),
        total_cents,
        shipped: true,
    }
}

#[tokio::test]
async fn an_order_shipped_before_it_is_known_as_accepted_counts_once_both_are_known() {
    let system = System::new().await;
    let data = tempfile::tempdir().expect("temp dir");
    let app = Running::start(system.config(&data), loyalty::run).await;
    let ada = "ada";
    let big = order(ada, 60_000);

    system.ship(&big).await;
    app.wait_caught_up(&system.heads().await).await;
    let waiting = customer(&app, ada).await;
    assert_eq!(waiting["tier"], "bronze");
    assert_eq!(waiting["shipped_orders"], 0);
    assert_eq!(waiting["awaiting_totals"], json!([big.id.to_string()]));

    system.accept(&big).await;
    // Every event delivered twice.
    system.accept(&big).await;
    system.ship(&big).await;
    app.wait_caught_up(&system.heads().await).await;
    let silver = customer(&app, ada).await;
    assert_eq!(silver["tier"], "silver");
    assert_eq!(silver["shipped_orders"], 1);
    assert_eq!(silver["shipped_total_cents"], 60_000);
    assert_eq!(
        silver["orders"],
        json!([{"order_id": big.id.to_string(), "total_cents": 60_000}])
    );
    assert_eq!(silver["earned_by"], "60000 cents shipped (>= 50000)");

    let changes = tier_changes(&app).await;
    assert_eq!(
        changes[ada]
            .iter()
            .map(|(_, d)| d.clone())
            .collect::<Vec<_>>(),
        vec![json!({
            "customer_id": ada, "tier": "silver", "previous_tier": "bronze",
            "shipped_orders": 1, "shipped_total_cents": 60_000,
        })]
    );
    app.stop().await;
}

#[tokio::test]
async fn accepted_orders_that_never_ship_do_not_count() {
    let system = System::new().await;
    let data = tempfile::tempdir().expect("temp dir");
    let app = Running::start(system.config(&data), loyalty::run).await;
    let bob = Uuid::new_v4().to_string();
    for _ in 0..5 {
        system.accept(&order(&bob, 90_000)).await;
    }
    app.wait_caught_up(&system.heads().await).await;
    let record = customer(&app, &bob).await;
    assert_eq!(record["tier"], "bronze");
    assert_eq!(record["shipped_orders"], 0);
    assert_eq!(record["earned_by"], serde_json::Value::Null);
    assert!(tier_changes(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn unknown_customers_are_not_found_as_problem_json() {
    let system = System::new().await;
    let data = tempfile::tempdir().expect("temp dir");
    let app = Running::start(system.config(&data), loyalty::run).await;
    for path in [
        format!("/customers/{}", Uuid::new_v4()),
        "/customers/x".to_owned(),
    ] {
        let response = client()
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    app.stop().await;
}
