//! Sales on PostgreSQL (skipped, loudly, when the server binaries are not installed):
//! pricing, accepting orders, the catalog replica and the mailer's outbox work as on
//! SQLite; a confirmation stays exactly once across a restart and a replay of the
//! mailer's subscription from position 1.

use feed::db::Database;
use reqwest::StatusCode;

use crate::support::{System, emails, events_of, eventually, start_sales};

#[tokio::test]
async fn orders_are_priced_accepted_and_confirmed_once_on_postgresql() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    let database = pg.database("sales");
    let mut sys = System::start_configured(|c| c.args.database_url = Some(database.clone())).await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let refused = sys
        .place_order("quin", &[("00000000-0000-0000-0000-000000000000", 1)])
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let placed = sys.place_order("quin", &[(&kettle, 3)]).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    assert_eq!(placed.body["total_cents"], 3 * 1999);
    let order_id = placed.body["order_id"].as_str().expect("id").to_owned();
    let mail = sys.email_for(&order_id).await;
    assert!(mail.contains("3 x Kettle at 19.99 EUR"), "{mail}");
    eventually("OrderConfirmationSent", || async {
        (events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;

    // Restart with the mailer's checkpoint forgotten: it replays every OrderAccepted
    // and confirms nothing twice.
    let port = sys.sales.port();
    let mut config = sys.sales_config();
    config.args.database_url = Some(database.clone());
    sys.sales.halt().await;
    let db = Database::connect(&database).await.expect("db");
    kit::rebuild(&db, &[], &["sales<-sales"])
        .await
        .expect("reset the mailer");
    db.close().await;
    sys.sales = start_sales(config.clone(), port).await;
    let second = sys.place_order("quin", &[(&kettle, 1)]).await;
    let second_id = second.body["order_id"].as_str().expect("id").to_owned();
    sys.email_for(&second_id).await;
    eventually("the second confirmation", || async {
        (events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
            .await
            .len()
            == 2)
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent").await;
    assert_eq!(sent.len(), 2, "one confirmation per order after the replay");
    assert_eq!(emails(&sys.mail_dir()).len(), 2, "no email sent twice");

    // The catalog replica rebuilds on PostgreSQL too.
    sys.sales.halt().await;
    let position = sales::rebuild(&config).await.expect("rebuild");
    assert_eq!(position, 1, "the catalog's one event");
    sys.sales = start_sales(config, port).await;
    sys.set_price(&kettle, 2999, "EUR").await;
    sys.stop().await;
}
