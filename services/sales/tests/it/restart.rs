//! Restarts and replays: confirmations stay exactly once, the replica rebuilds.

use feed::db::Database;
use reqwest::StatusCode;

use crate::support::{System, emails, events_of, eventually, index, start_sales};

async fn confirmations_of(sys: &System, order_id: &str) -> usize {
    events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
        .await
        .iter()
        .filter(|e| e.data["order_id"] == order_id)
        .count()
}

#[tokio::test]
async fn restarting_sales_and_replaying_its_own_feed_never_duplicates_a_confirmation() {
    let mut sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let first = sys.place_order("frank", &[(&kettle, 1)]).await;
    let first_id = first.body["order_id"].as_str().expect("id").to_owned();
    eventually("the first confirmation", || async {
        (confirmations_of(&sys, &first_id).await == 1).then_some(())
    })
    .await;

    // A plain restart on the same data folder (and address) ...
    let port = sys.sales.port();
    let config = sys.sales_config();
    sys.sales.halt().await;
    sys.sales = start_sales(config.clone(), port).await;
    let second = sys.place_order("frank", &[(&kettle, 2)]).await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second_id = second.body["order_id"].as_str().expect("id").to_owned();
    eventually("the second confirmation", || async {
        (confirmations_of(&sys, &second_id).await == 1).then_some(())
    })
    .await;

    // ... and one where the mailer lost its checkpoint, as if it crashed before ever
    // saving one: on restart it replays every OrderAccepted from position 1.
    sys.sales.halt().await;
    let db = Database::connect(&config.args.database_url_for(sales::NAME))
        .await
        .expect("db");
    kit::rebuild(&db, &[], &["sales<-sales"])
        .await
        .expect("reset the mailer checkpoint");
    db.close().await;
    sys.sales = start_sales(config, port).await;
    let head = index(&sys.http, &sys.sales.base).await["publishes"]["head_position"]
        .as_u64()
        .expect("head");
    eventually("the mailer to replay the whole feed", || async {
        let idx = index(&sys.http, &sys.sales.base).await;
        let follows = idx["follows"].as_array().cloned().unwrap_or_default();
        let mailer = follows
            .iter()
            .find(|f| f["subscription"] == "sales<-sales")?;
        (mailer["checkpoint"].as_u64()? >= head).then_some(())
    })
    .await;

    assert_eq!(confirmations_of(&sys, &first_id).await, 1);
    assert_eq!(confirmations_of(&sys, &second_id).await, 1);
    assert_eq!(
        emails(&sys.mail_dir()).len(),
        2,
        "a replayed order was mailed again"
    );
    sys.stop().await;
}

#[tokio::test]
async fn rebuilding_the_catalog_replica_replays_the_catalog_from_the_start() {
    let mut sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    let mug = sys.add_product("Mug").await;
    sys.rename_product(&mug, "Big mug").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    sys.wait_for_replica().await;
    let port = sys.sales.port();
    let config = sys.sales_config();
    sys.sales.halt().await;

    let position = sales::rebuild(&config).await.expect("rebuild");
    assert_eq!(position, 3, "the replay reaches the catalog's head");

    sys.sales = start_sales(config, port).await;
    let r = sys.put_price(&mug, 450, "EUR").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the rebuilt replica knows the mug: {:?}",
        r.body
    );
    let order = sys.place_order("gina", &[(&mug, 1)]).await;
    let order_id = order.body["order_id"].as_str().expect("id").to_owned();
    let email = sys.email_for(&order_id).await;
    assert!(email.contains("1 x Big mug at"), "{email}");
    sys.stop().await;
}
