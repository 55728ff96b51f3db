//! Shipping with its replica, shipments and log on PostgreSQL.

use uuid::Uuid;

use crate::shipments::{System, wait_for_status};
use feed::testing::{feed_events, of_type};
use kit::testing::{Running, client};

#[tokio::test]
async fn on_postgresql_a_shipment_waits_for_its_product_and_ships_once() {
    let Some(cluster) = feed::testing::PgCluster::start() else {
        return;
    };
    let system = System::new().await;
    let mut config = system.config();
    config.args.database_url = Some(cluster.database("shipping"));
    let (mug, lamp, order, customer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    system.product("ProductAdded", mug, "Mug", 350).await;
    let app = Running::start(config.clone(), shipping::run).await;
    system
        .release(order, customer, &[(mug, 2), (lamp, 1)])
        .await;
    system
        .release(order, customer, &[(mug, 2), (lamp, 1)])
        .await;
    wait_for_status(&app, order, "pending").await;
    app.stop().await;

    system.product("ProductAdded", lamp, "Lamp", 1500).await;
    let app = Running::start(config, shipping::run).await;
    let shipment = wait_for_status(&app, order, "shipped").await;
    assert_eq!(
        shipment["packing_slip"]["total_weight_grams"],
        2 * 350 + 1500
    );
    assert_eq!(shipment["packing_slip"]["lines"][1]["name"], "Lamp");
    app.wait_caught_up(&system.heads().await).await;
    let events = feed_events(&client(), &app.feed_url()).await;
    assert_eq!(of_type(&events, "OrderShipped").len(), 1);
    assert_eq!(events.len(), 1);
    app.stop().await;
}
