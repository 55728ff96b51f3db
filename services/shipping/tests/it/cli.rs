//! The `shipping` binary itself: `rebuild` run from the command line, as the README
//! shows it, with the flags after the subcommand.

use std::time::Duration;

use feed::db::Database;
use serde_json::json;
use uuid::Uuid;

use crate::shipments::{System, wait_for_status};
use feed::testing::{feed_events, of_type};
use kit::testing::client;

/// The replica's rows: (product id, name, weight, deleted), by name.
async fn replica(db: &Database) -> Vec<(String, String, i64, i64)> {
    sqlx::query_as(
        "SELECT product_id, name, weight_grams, deleted FROM shipping_products ORDER BY name",
    )
    .fetch_all(db.pool())
    .await
    .expect("read the replica")
}

#[tokio::test]
async fn the_rebuild_command_replays_the_catalog_into_a_broken_replica() {
    let system = System::new().await;
    let (mug, vase, order, customer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    system.product("ProductAdded", mug, "Mug", 350).await;
    system.product("ProductAdded", vase, "Vase", 800).await;
    let app = system.start().await;
    system.release(order, customer, &[(mug, 2)]).await;
    let shipped = wait_for_status(&app, order, "shipped").await;
    app.wait_caught_up(&system.heads().await).await;
    app.stop().await;

    // While shipping is down the catalog moves on, and the replica gets damaged.
    system
        .product("ProductUpdated", mug, "Mug (large)", 420)
        .await;
    system
        .catalog
        .append(
            &format!("product-{vase}"),
            "ProductDeleted",
            json!({"product_id": vase, "name": "Vase", "description": "", "pictures": [],
                   "weight_grams": 800, "size_mm": {"l": 10, "w": 10, "h": 10}}),
        )
        .await;
    let db_path = system.data.path().join("shipping.db");
    let db = Database::connect(&db_path.display().to_string())
        .await
        .expect("open shipping's database");
    sqlx::query("UPDATE shipping_products SET name = 'garbage', weight_grams = 1")
        .execute(db.pool())
        .await
        .expect("damage the replica");
    db.close().await;

    let data_dir = system.data.path().display().to_string();
    let (fulfilment_feed, catalog_feed) = (system.fulfilment.feed_url(), system.catalog.feed_url());
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shipping"))
            .args(["rebuild", "--data-dir", &data_dir])
            .args(["--fulfilment-feed", &fulfilment_feed])
            .args(["--catalog-feed", &catalog_feed])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("rebuild finishes within a minute")
    .expect("run the shipping binary");
    assert!(
        output.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let db = Database::connect(&db_path.display().to_string())
        .await
        .expect("reopen shipping's database");
    assert_eq!(
        replica(&db).await,
        vec![
            (mug.to_string(), "Mug (large)".to_owned(), 420, 0),
            (vase.to_string(), "Vase".to_owned(), 800, 1),
        ]
    );
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT position FROM feed_checkpoints WHERE subscription = 'shipping<-catalog'",
    )
    .fetch_one(db.pool())
    .await
    .expect("the catalog checkpoint");
    assert_eq!(checkpoint as u64, system.catalog.head().await);
    db.close().await;

    // The shipment made before the rebuild is untouched and was not published again.
    let app = system.start().await;
    assert_eq!(app.get(&format!("/shipments/{order}")).await.1, shipped);
    app.wait_caught_up(&system.heads().await).await;
    assert_eq!(
        of_type(
            &feed_events(&client(), &app.feed_url()).await,
            "OrderShipped"
        )
        .len(),
        1
    );
    app.stop().await;
}
