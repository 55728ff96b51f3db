//! Hostile input to every sales command, in-process (`tower::ServiceExt::oneshot` on
//! the real app and a real SQLite file): arbitrary and mutated JSON and odd paths
//! never panic, never get a 5xx, always get problem+json when refused, and a refused
//! command never appends (see `kit::testing`).

use axum::http::{Method, StatusCode};
use kit::testing::{self, check, hostile_body};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The app, with one product in its catalog replica (as the catalog subscription
/// would have put it there) and priced through the app itself.
async fn app_with_a_product(dir: &tempfile::TempDir) -> (axum::Router, String) {
    let config = sales::Config::new(dir.path(), "http://catalog.test/feed");
    let app = sales::app(&config, "http://sales.test").await.expect("app");
    let product = uuid::Uuid::new_v4().to_string();
    let db = feed::db::Database::connect(&config.args.database_url_for(sales::NAME))
        .await
        .expect("db");
    sqlx::query("INSERT INTO sales_products (product_id, name, deleted) VALUES ($1, 'Kettle', 0)")
        .bind(&product)
        .execute(db.pool())
        .await
        .expect("seed the replica");
    db.close().await;
    let priced = check(
        &app,
        Method::PUT,
        &format!("/prices/{product}"),
        &[],
        price().to_string().into_bytes(),
    )
    .await;
    assert_eq!(priced.status, StatusCode::OK, "{}", priced.body);
    (app, product)
}

fn price() -> serde_json::Value {
    json!({ "unit_price_cents": 1999, "currency": "EUR" })
}

fn order(product: &str) -> serde_json::Value {
    json!({
        "customer_id": "alice", "email": "alice@example.com",
        "lines": [{ "product_id": product, "quantity": 2 }, { "product_id": product, "quantity": 1 }]
    })
}

#[test]
fn no_sales_command_fails_with_a_5xx_or_appends_when_it_refuses_whatever_it_is_sent() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let (app, product) = rt.block_on(app_with_a_product(&dir));
    let path = prop_oneof![
        3 => Just(product.clone()),
        1 => "[A-Za-z0-9._~%-]{0,40}",
    ];
    let mut runner = TestRunner::new(testing::config());
    let strategy = (hostile_body(order(&product)), hostile_body(price()), path);
    runner
        .run(&strategy, |(order_body, price_body, path)| {
            rt.block_on(async {
                check(&app, Method::POST, "/orders", &[], order_body).await;
                check(
                    &app,
                    Method::PUT,
                    &format!("/prices/{path}"),
                    &[],
                    price_body,
                )
                .await;
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deep_huge_and_oversized_requests_are_refused_with_problems() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let (app, product) = app_with_a_product(&dir).await;
        testing::assert_rejects_abuse(&app, Method::POST, "/orders").await;
        testing::assert_rejects_abuse(&app, Method::PUT, &format!("/prices/{product}")).await;
    });
}
