//! The process manager against real sales and billing feeds.

use serde_json::{Value, json};
use uuid::Uuid;

use feed::testing::{feed_events, of_type};
use kit::testing::{Producer, Running, client, init_log};

struct System {
    sales: Producer,
    billing: Producer,
    data: tempfile::TempDir,
}

impl System {
    async fn new() -> Self {
        init_log();
        Self {
            sales: Producer::start("sales").await,
            billing: Producer::start("billing").await,
            data: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self) -> fulfilment::Config {
        fulfilment::Config {
            args: kit::ServiceArgs::new(self.data.path()),
            sales_feed: self.sales.feed_url(),
            billing_feed: self.billing.feed_url(),
        }
    }

    async fn start(&self) -> Running {
        Running::start(self.config(), fulfilment::run).await
    }

    async fn accept(&self, order: Uuid, customer: impl std::fmt::Display) {
        self.sales
            .append(
                &format!("order-{order}"),
                "OrderAccepted",
                accepted(order, &customer.to_string()),
            )
            .await;
    }

    async fn bill(&self, order: Uuid, customer: impl std::fmt::Display) {
        let data = json!({"order_id": order, "customer_id": customer.to_string(), "amount_cents": 2400, "currency": "EUR"});
        self.billing
            .append(&format!("order-{order}"), "CustomerBilled", data)
            .await;
    }

    async fn fail_billing(&self, order: Uuid, customer: impl std::fmt::Display) {
        let data = json!({
            "order_id": order, "customer_id": customer.to_string(), "amount_cents": 2400, "currency": "EUR",
            "reason": "credit limit exceeded",
        });
        self.billing
            .append(&format!("order-{order}"), "CustomerBillingFailed", data)
            .await;
    }

    async fn heads(&self) -> [(&'static str, u64); 2] {
        [
            ("fulfilment<-sales", self.sales.head().await),
            ("fulfilment<-billing", self.billing.head().await),
        ]
    }
}

fn accepted(order: Uuid, customer: &str) -> Value {
    json!({
        "order_id": order, "customer_id": customer, "email": "ada@example.com",
        "lines": [
            {"product_id": "00000000-0000-0000-0000-0000000000a1", "quantity": 2, "unit_price_cents": 700},
            {"product_id": "00000000-0000-0000-0000-0000000000b2", "quantity": 1, "unit_price_cents": 1000},
        ],
        "total_cents": 2400, "currency": "EUR",
    })
}

async fn wait_for_state(app: &Running, order: Uuid, state: &str) -> Value {
    feed::testing::eventually(&format!("order {order} is {state}"), || async {
        let (status, body) = app.get(&format!("/orders/{order}")).await;
        status == 200 && body["state"] == state
    })
    .await;
    app.get(&format!("/orders/{order}")).await.1
}

/// Some unrelated traffic, so the interesting events sit on sealed pages too.
async fn noise(system: &System, n: usize) {
    for _ in 0..n {
        let (order, customer) = (Uuid::new_v4(), Uuid::new_v4());
        system.accept(order, customer).await;
        system.bill(order, customer).await;
    }
}

#[tokio::test]
async fn an_order_billed_before_it_is_accepted_and_delivered_twice_is_released_for_shipping_once() {
    let system = System::new().await;
    let (order, customer) = (Uuid::new_v4(), Uuid::new_v4());
    noise(&system, 3).await;
    system.bill(order, customer).await;
    let app = system.start().await;
    let waiting = wait_for_state(&app, order, "awaiting_acceptance").await;
    assert_eq!(waiting["billed"], true);
    assert_eq!(waiting["accepted"], false);

    system.accept(order, customer).await;
    noise(&system, 4).await;
    let ready = wait_for_state(&app, order, "ready").await;
    assert_eq!(ready["customer_id"], customer.to_string());
    app.wait_caught_up(&system.heads().await).await;
    app.stop().await;

    // Deliver everything again: forget both checkpoints, as a rebuild does, so every
    // event is replayed; and the producers publish the same facts once more.
    let db = feed::db::Database::connect(
        &system
            .data
            .path()
            .join("fulfilment.db")
            .display()
            .to_string(),
    )
    .await
    .expect("open fulfilment's database");
    kit::rebuild(&db, &[], &["fulfilment<-sales", "fulfilment<-billing"])
        .await
        .expect("reset checkpoints");
    db.close().await;
    system.accept(order, customer).await;
    system.bill(order, customer).await;
    let app = system.start().await;
    app.wait_caught_up(&system.heads().await).await;

    let events = feed_events(&client(), &app.feed_url()).await;
    let ours: Vec<_> = of_type(&events, "OrderReadyForShipping")
        .into_iter()
        .filter(|e| e.data["order_id"] == order.to_string())
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "exactly one OrderReadyForShipping for the order"
    );
    let ready = ours[0];
    assert_eq!(ready.stream.as_str(), format!("order-{order}"));
    assert_eq!(ready.data["customer_id"], customer.to_string());
    assert_eq!(
        ready.data["lines"],
        json!([
            {"product_id": "00000000-0000-0000-0000-0000000000a1", "quantity": 2},
            {"product_id": "00000000-0000-0000-0000-0000000000b2", "quantity": 1},
        ])
    );
    // The noise orders too were each released exactly once, despite the replay.
    assert_eq!(of_type(&events, "OrderReadyForShipping").len(), 8);
    assert_eq!(events.len(), 8);
    assert_eq!(wait_for_state(&app, order, "ready").await["accepted"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_billing_cancels_the_order_once_and_it_is_never_released() {
    let system = System::new().await;
    let (order, customer) = (Uuid::new_v4(), Uuid::new_v4());
    let app = system.start().await;
    system.accept(order, customer).await;
    wait_for_state(&app, order, "awaiting_billing").await;
    system.fail_billing(order, customer).await;
    let cancelled = wait_for_state(&app, order, "cancelled").await;
    assert_eq!(cancelled["reason"], "credit limit exceeded");

    // A second failure report and a late success change nothing.
    system.fail_billing(order, customer).await;
    system.bill(order, customer).await;
    system.accept(order, customer).await;
    app.wait_caught_up(&system.heads().await).await;

    let events = feed_events(&client(), &app.feed_url()).await;
    assert!(
        of_type(&events, "OrderReadyForShipping").is_empty(),
        "a cancelled order is never released"
    );
    let cancellations = of_type(&events, "OrderFulfilmentCancelled");
    assert_eq!(cancellations.len(), 1);
    assert_eq!(
        cancellations[0].data,
        json!({"order_id": order, "customer_id": customer, "reason": "credit limit exceeded"})
    );
    assert_eq!(cancellations[0].stream.as_str(), format!("order-{order}"));
    assert_eq!(
        wait_for_state(&app, order, "cancelled").await["billed"],
        false
    );
    app.stop().await;
}

#[tokio::test]
async fn the_process_state_survives_a_restart_and_a_rebuild_and_the_flow_finishes_after_it() {
    let system = System::new().await;
    // Sales accepts tokens as customer ids too.
    let (order, customer) = (Uuid::new_v4(), "alice");
    let app = system.start().await;
    system.accept(order, customer).await;
    wait_for_state(&app, order, "awaiting_billing").await;
    app.stop().await;

    // Billing happens while fulfilment is down.
    system.bill(order, customer).await;
    let app = system.start().await;
    wait_for_state(&app, order, "ready").await;
    app.wait_caught_up(&system.heads().await).await;
    let events = feed_events(&client(), &app.feed_url()).await;
    assert_eq!(of_type(&events, "OrderReadyForShipping").len(), 1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data["customer_id"], "alice");
    app.stop().await;

    // A rebuild forgets the state and replays both feeds: same state, nothing new
    // published.
    fulfilment::rebuild(system.config()).await.expect("rebuild");
    let app = system.start().await;
    assert_eq!(
        wait_for_state(&app, order, "ready").await["customer_id"],
        "alice"
    );
    assert_eq!(feed_events(&client(), &app.feed_url()).await, events);
    app.stop().await;
}

#[tokio::test]
async fn unknown_orders_are_not_found_as_problem_json() {
    let system = System::new().await;
    let app = system.start().await;
    for path in [
        format!("/orders/{}", Uuid::new_v4()),
        "/orders/not-a-uuid".to_owned(),
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
