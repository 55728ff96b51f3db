//! Shipments and packing slips against real fulfilment and catalog feeds.

use serde_json::{Value, json};
use uuid::Uuid;

use feed::testing::{eventually, feed_events, of_type};
use kit::testing::{Producer, Running, client, init_log};

pub(crate) struct System {
    pub(crate) catalog: Producer,
    pub(crate) fulfilment: Producer,
    pub(crate) data: tempfile::TempDir,
}

impl System {
    pub(crate) async fn new() -> Self {
        init_log();
        Self {
            catalog: Producer::start("catalog").await,
            fulfilment: Producer::start("fulfilment").await,
            data: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn config(&self) -> shipping::Config {
        shipping::Config {
            args: kit::ServiceArgs::new(self.data.path()),
            fulfilment_feed: self.fulfilment.feed_url(),
            catalog_feed: self.catalog.feed_url(),
        }
    }

    pub(crate) async fn start(&self) -> Running {
        Running::start(self.config(), shipping::run).await
    }

    pub(crate) async fn product(&self, event_type: &str, id: Uuid, name: &str, weight_grams: i64) {
        let data = json!({
            "product_id": id, "name": name, "description": "", "pictures": [],
            "weight_grams": weight_grams, "size_mm": {"l": 10, "w": 10, "h": 10},
        });
        self.catalog
            .append(&format!("product-{id}"), event_type, data)
            .await;
    }

    pub(crate) async fn release(&self, order: Uuid, customer: Uuid, lines: &[(Uuid, i64)]) {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let data = json!({"order_id": order, "customer_id": customer, "lines": lines});
        self.fulfilment
            .append(&format!("order-{order}"), "OrderReadyForShipping", data)
            .await;
    }

    pub(crate) async fn heads(&self) -> [(&'static str, u64); 2] {
        [
            ("shipping<-catalog", self.catalog.head().await),
            ("shipping<-fulfilment", self.fulfilment.head().await),
        ]
    }
}

pub(crate) async fn wait_for_status(app: &Running, order: Uuid, status: &str) -> Value {
    eventually(&format!("the shipment of {order} is {status}"), || async {
        let (code, body) = app.get(&format!("/shipments/{order}")).await;
        code == 200 && body["status"] == status
    })
    .await;
    app.get(&format!("/shipments/{order}")).await.1
}

fn shipped_for(events: &[feed::event::Event], order: Uuid) -> usize {
    of_type(events, "OrderShipped")
        .iter()
        .filter(|e| e.data["order_id"] == order.to_string())
        .count()
}

#[tokio::test]
async fn a_released_order_ships_once_with_a_slip_of_names_and_the_total_weight() {
    let system = System::new().await;
    let (mug, teapot, order, customer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    system.product("ProductAdded", mug, "Mug", 350).await;
    system.product("ProductAdded", teapot, "Teapot", 900).await;
    system
        .product("ProductUpdated", teapot, "Cast-iron teapot", 1200)
        .await;
    for n in 0..6 {
        system
            .product("ProductAdded", Uuid::new_v4(), &format!("Filler {n}"), 1)
            .await;
    }
    let app = system.start().await;
    app.wait_caught_up(&system.heads().await).await;
    system
        .release(order, customer, &[(mug, 3), (teapot, 1)])
        .await;
    // Delivered twice by the producer.
    system
        .release(order, customer, &[(mug, 3), (teapot, 1)])
        .await;

    let shipment = wait_for_status(&app, order, "shipped").await;
    assert_eq!(shipment["customer_id"], customer.to_string());
    assert_eq!(shipment["parcels"], 1);
    assert_eq!(
        shipment["packing_slip"]["total_weight_grams"],
        3 * 350 + 1200
    );
    let lines = &shipment["packing_slip"]["lines"];
    assert_eq!(lines[0]["name"], "Mug");
    assert_eq!(lines[0]["quantity"], 3);
    assert_eq!(lines[0]["weight_grams"], 1050);
    assert_eq!(lines[1]["name"], "Cast-iron teapot");
    assert_eq!(lines[1]["quantity"], 1);
    assert_eq!(shipment["waiting_for_products"], json!([]));
    app.wait_caught_up(&system.heads().await).await;
    app.stop().await;

    // And delivered again by a replay from position 1.
    let db =
        feed::db::Database::connect(&system.data.path().join("shipping.db").display().to_string())
            .await
            .expect("open shipping's database");
    kit::rebuild(&db, &[], &["shipping<-fulfilment"])
        .await
        .expect("reset the checkpoint");
    db.close().await;
    let app = system.start().await;
    app.wait_caught_up(&system.heads().await).await;

    let events = feed_events(&client(), &app.feed_url()).await;
    assert_eq!(events.len(), 1, "one event in shipping's feed: {events:?}");
    let shipped = &events[0];
    assert_eq!(shipped.event_type.as_str(), "OrderShipped");
    assert_eq!(shipped.stream.as_str(), format!("order-{order}"));
    assert_eq!(
        shipped.data,
        json!({"order_id": order, "customer_id": customer, "total_weight_grams": 2250, "parcels": 1})
    );
    app.stop().await;
}

#[tokio::test]
async fn a_product_that_reaches_the_catalog_feed_after_the_order_still_ends_with_a_correct_slip() {
    let system = System::new().await;
    let (mug, lamp, order, later, customer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    system.product("ProductAdded", mug, "Mug", 350).await;
    let app = system.start().await;
    system
        .release(order, customer, &[(lamp, 2), (mug, 1)])
        .await;
    system.release(later, customer, &[(mug, 4)]).await;

    let pending = wait_for_status(&app, order, "pending").await;
    assert_eq!(pending["waiting_for_products"], json!([lamp.to_string()]));
    assert_eq!(pending["packing_slip"]["total_weight_grams"], Value::Null);
    // The order behind it is not held up.
    wait_for_status(&app, later, "shipped").await;
    app.wait_caught_up(&system.heads().await).await;
    assert_eq!(
        shipped_for(&feed_events(&client(), &app.feed_url()).await, order),
        0,
        "not shipped without a slip"
    );

    system
        .product("ProductAdded", lamp, "Desk lamp", 2000)
        .await;
    let shipment = wait_for_status(&app, order, "shipped").await;
    assert_eq!(
        shipment["packing_slip"]["total_weight_grams"],
        2 * 2000 + 350
    );
    assert_eq!(shipment["packing_slip"]["lines"][0]["name"], "Desk lamp");
    assert_eq!(shipment["packing_slip"]["lines"][1]["name"], "Mug");

    // A rename afterwards does not rewrite the slip that went out, nor ship again.
    system
        .product("ProductUpdated", lamp, "Floor lamp", 5000)
        .await;
    app.wait_caught_up(&system.heads().await).await;
    let events = feed_events(&client(), &app.feed_url()).await;
    assert_eq!(shipped_for(&events, order), 1);
    let shipped = of_type(&events, "OrderShipped")
        .into_iter()
        .find(|e| e.data["order_id"] == order.to_string())
        .expect("shipped");
    assert_eq!(shipped.data["total_weight_grams"], 4350);
    assert_eq!(
        app.get(&format!("/shipments/{order}")).await.1["packing_slip"]["lines"][0]["name"],
        "Desk lamp"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_product_deleted_from_the_catalog_is_still_named_on_slips_of_goods_already_ordered() {
    let system = System::new().await;
    let (vase, order, customer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    system.product("ProductAdded", vase, "Vase", 800).await;
    system
        .catalog
        .append(
            &format!("product-{vase}"),
            "ProductDeleted",
            json!({"product_id": vase, "name": "Vase", "description": "", "pictures": [],
                   "weight_grams": 800, "size_mm": {"l": 10, "w": 10, "h": 10}}),
        )
        .await;
    let app = system.start().await;
    app.wait_caught_up(&system.heads().await).await;
    system.release(order, customer, &[(vase, 1)]).await;
    let shipment = wait_for_status(&app, order, "shipped").await;
    assert_eq!(shipment["packing_slip"]["lines"][0]["name"], "Vase");
    assert_eq!(shipment["packing_slip"]["total_weight_grams"], 800);
    app.stop().await;
}

#[tokio::test]
async fn rebuilding_the_catalog_replica_keeps_shipments_and_serves_new_orders() {
    let system = System::new().await;
    let (mug, first, second, customer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    system.product("ProductAdded", mug, "Mug", 350).await;
    let app = system.start().await;
    system.release(first, customer, &[(mug, 2)]).await;
    let before = wait_for_status(&app, first, "shipped").await;
    app.wait_caught_up(&system.heads().await).await;
    app.stop().await;

    shipping::rebuild(system.config()).await.expect("rebuild");
    let app = system.start().await;
    assert_eq!(app.get(&format!("/shipments/{first}")).await.1, before);
    system.release(second, customer, &[(mug, 1)]).await;
    assert_eq!(
        wait_for_status(&app, second, "shipped").await["packing_slip"]["total_weight_grams"],
        350
    );
    app.wait_caught_up(&system.heads().await).await;
    assert_eq!(
        of_type(
            &feed_events(&client(), &app.feed_url()).await,
            "OrderShipped"
        )
        .len(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_shipments_are_not_found_as_problem_json() {
    let system = System::new().await;
    let app = system.start().await;
    for path in [
        format!("/shipments/{}", Uuid::new_v4()),
        "/shipments/nope".to_owned(),
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

#[tokio::test]
async fn a_shipment_waiting_for_a_product_ships_when_its_deletion_brings_the_product_data() {
    let system = System::new().await;
    let (lamp, order, customer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let app = system.start().await;
    system.release(order, customer, &[(lamp, 2)]).await;
    wait_for_status(&app, order, "pending").await;
    // The catalog's only word on the lamp is its deletion, which carries the product.
    system
        .catalog
        .append(
            &format!("product-{lamp}"),
            "ProductDeleted",
            json!({"product_id": lamp, "name": "Desk lamp", "description": "", "pictures": [],
                   "weight_grams": 650, "size_mm": {"l": 10, "w": 10, "h": 10}}),
        )
        .await;
    let shipment = wait_for_status(&app, order, "shipped").await;
    assert_eq!(shipment["packing_slip"]["lines"][0]["name"], "Desk lamp");
    assert_eq!(shipment["packing_slip"]["total_weight_grams"], 1300);
    app.stop().await;
}
