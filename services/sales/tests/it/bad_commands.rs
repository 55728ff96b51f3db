//! Refused commands answer problem+json naming the field, and append nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Reply, System, emails, feed_events};

fn assert_problem(r: &Reply, status: StatusCode, field: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.header("content-type"), "application/problem+json");
    if let Some(field) = field {
        assert_eq!(r.body["field"], field, "{:?}", r.body);
    }
}

#[tokio::test]
async fn orders_for_unknown_unpriced_or_negative_lines_are_refused_and_append_nothing() {
    let sys = System::start().await;
    let priced = sys.add_product("Kettle").await;
    let dollars = sys.add_product("Mug").await;
    let unpriced = sys.add_product("Teapot").await;
    sys.set_price(&priced, 1999, "EUR").await;
    sys.set_price(&dollars, 500, "USD").await;
    sys.wait_for_replica().await;
    let head = feed_events(&sys.http, &sys.sales.base).await.len();
    let unknown = uuid::Uuid::new_v4().to_string();

    let r = sys
        .place_order("dave", &[(&priced, 1), (&unknown, 1)])
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[1].product_id"),
    );
    let r = sys
        .place_order("dave", &[(&priced, 1), (&unpriced, 1)])
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[1].product_id"),
    );
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no price")),
        "{:?}",
        r.body
    );
    let r = sys.place_order("dave", &[(&priced, -1)]).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[0].quantity"),
    );
    let r = sys.place_order("dave", &[(&priced, 0)]).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[0].quantity"),
    );
    let r = sys
        .place_order("dave", &[(&priced, 1), (&dollars, 1)])
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[1].product_id"),
    );
    let r = sys.place_order("dave", &[]).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("lines"));

    let orders = format!("{}/orders", sys.sales.base);
    let r = sys
        .send(
            Method::POST,
            &orders,
            Some("{\"customer_id\": \"dave\",".into()),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, None);
    let no_email =
        json!({ "customer_id": "dave", "lines": [{ "product_id": priced, "quantity": 1 }] });
    let r = sys
        .send(Method::POST, &orders, Some(no_email.to_string()))
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("email"));
    let huge = json!({ "customer_id": "x".repeat(80 * 1024) });
    let r = sys
        .send(Method::POST, &orders, Some(huge.to_string()))
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, None);

    let r = sys.put_price(&unknown, 100, "EUR").await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    let r = sys.put_price(&unpriced, -1, "EUR").await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("unit_price_cents"),
    );
    let r = sys.put_price(&unpriced, 100, "eur").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("currency"));
    let r = sys
        .send(
            Method::GET,
            &format!("{}/orders/{unknown}", sys.sales.base),
            None,
        )
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);

    assert_eq!(
        feed_events(&sys.http, &sys.sales.base).await.len(),
        head,
        "a refused command appended an event"
    );
    assert!(emails(&sys.mail_dir()).is_empty());
    sys.stop().await;
}

#[tokio::test]
async fn a_product_deleted_from_the_catalog_can_no_longer_be_priced_or_ordered() {
    let sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let r = sys
        .send(
            Method::DELETE,
            &format!("{}/products/{kettle}", sys.catalog.base),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    sys.wait_for_replica().await;
    let r = sys.place_order("erin", &[(&kettle, 1)]).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("lines[0].product_id"),
    );
    let r = sys.put_price(&kettle, 2999, "EUR").await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    sys.stop().await;
}
