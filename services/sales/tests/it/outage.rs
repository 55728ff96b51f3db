//! Sales while its database is unavailable: SQLite locked by another process's
//! exclusive transaction, PostgreSQL stopped. Commands answer 503 problem+json with
//! Retry-After and write nothing; reads of SQLite keep working; once the database is
//! back, commands work again and the subscriptions (the catalog replica, the mailer)
//! catch up on their own, without a restart.

use std::time::Duration;

use reqwest::StatusCode;
use sqlx::Connection as _;

use crate::support::{Reply, System, events_of, eventually, start_sales};

/// Waits up to `within` for `probe`, for waits longer than the support's patience
/// (a subscriber backing off after minutes of errors, a long poll timing out).
async fn within<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_unavailable(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {:?}",
        r.body
    );
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{what}"
    );
    assert_eq!(r.header("retry-after"), "1", "{what}");
    assert_eq!(
        r.body["detail"], "the service's database is unavailable",
        "{what}: the body names no SQL, file or host"
    );
}

async fn accepted_orders(sys: &System) -> usize {
    events_of(&sys.http, &sys.sales.base, "OrderAccepted")
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_sqlite_database_makes_commands_503_and_everything_recovers_when_it_is_released() {
    let sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let before = sys.place_order("olga", &[(&kettle, 1)]).await;
    assert_eq!(before.status, StatusCode::CREATED);
    let before_id = before.body["order_id"].as_str().expect("id").to_owned();
    eventually("the first confirmation", || async {
        (events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;

    // Another process takes the database's write lock and keeps it.
    let file = sys.sales_dir.path().join("sales.db");
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite:{}", file.display()))
        .await
        .expect("open sales.db");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .expect("lock");
    // Meanwhile the catalog goes on: sales' replica cannot apply it yet.
    let teapot = sys.add_product("Teapot").await;

    let lines = [(kettle.as_str(), 2)];
    let (order, price) = tokio::join!(
        sys.place_order("olga", &lines),
        sys.put_price(&kettle, 2500, "EUR"),
    );
    assert_unavailable(&order, "POST /orders");
    assert_unavailable(&price, "PUT /prices");
    // Reads do not need the write lock.
    let read = sys
        .send(
            reqwest::Method::GET,
            &format!("{}/orders/{before_id}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);

    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("unlock");
    locker.close().await.expect("close");

    // Nothing of the refused commands was written.
    assert_eq!(accepted_orders(&sys).await, 1);
    let price_now = sys
        .send(
            reqwest::Method::GET,
            &format!("{}/prices/{kettle}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(price_now.body["unit_price_cents"], 1999);

    // Commands work again; the replica and the mailer catch up on their own.
    let after = sys.place_order("olga", &[(&kettle, 3)]).await;
    assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
    within(
        "the replica to learn of the teapot",
        Duration::from_secs(60),
        || async {
            (sys.put_price(&teapot, 3000, "EUR").await.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    within(
        "the second confirmation",
        Duration::from_secs(60),
        || async {
            (events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
                .await
                .len()
                == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(accepted_orders(&sys).await, 2);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_postgresql_makes_commands_503_and_everything_recovers_when_it_is_back() {
    let Some(cluster) = feed::testing::PgCluster::start() else {
        return;
    };
    let database = cluster.database("sales");
    let mut sys = System::start_configured(|c| c.args.database_url = Some(database.clone())).await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let first = sys.place_order("pia", &[(&kettle, 1)]).await;
    assert_eq!(first.status, StatusCode::CREATED);

    cluster.stop();
    let teapot = sys.add_product("Teapot").await;
    let refused = sys.place_order("pia", &[(&kettle, 2)]).await;
    assert_unavailable(&refused, "POST /orders with PostgreSQL stopped");
    let refused = sys.put_price(&kettle, 2500, "EUR").await;
    assert_unavailable(&refused, "PUT /prices with PostgreSQL stopped");

    cluster.restart();
    let after = within(
        "commands to work again",
        Duration::from_secs(60),
        || async {
            let r = sys.place_order("pia", &[(&kettle, 3)]).await;
            (r.status == StatusCode::CREATED).then_some(r)
        },
    )
    .await;
    let after_id = after.body["order_id"].as_str().expect("id").to_owned();
    within(
        "the replica to learn of the teapot",
        Duration::from_secs(90),
        || async {
            (sys.put_price(&teapot, 3000, "EUR").await.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    within(
        "the new order's confirmation",
        Duration::from_secs(90),
        || async {
            events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
                .await
                .iter()
                .any(|e| e.data["order_id"] == after_id)
                .then_some(())
        },
    )
    .await;
    // Exactly the two accepted orders exist: the refused one left nothing behind.
    assert_eq!(accepted_orders(&sys).await, 2);
    let price = sys
        .send(
            reqwest::Method::GET,
            &format!("{}/prices/{kettle}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(price.body["unit_price_cents"], 1999);

    // And the service restarts cleanly on the database it recovered.
    let port = sys.sales.port();
    let mut config = sys.sales_config();
    config.args.database_url = Some(database);
    sys.sales.halt().await;
    sys.sales = start_sales(config, port).await;
    assert_eq!(accepted_orders(&sys).await, 2);
    sys.stop().await;
}
