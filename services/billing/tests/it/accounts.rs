use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Databases, Reply, System, feed_events};

fn assert_problem(r: &Reply, status: StatusCode, field: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    if let Some(field) = field {
        assert_eq!(r.body["field"], field, "{:?}", r.body);
    }
}

#[tokio::test]
async fn credit_limits_are_validated_and_a_refused_command_appends_nothing() {
    let sys = System::start(100_000, Databases::default()).await;
    let r = sys
        .set_limit("kim", json!({ "credit_limit_cents": -1 }))
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("credit_limit_cents"),
    );
    let r = sys.set_limit("kim", json!({})).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("credit_limit_cents"),
    );
    let r = sys
        .set_limit("k%20m", json!({ "credit_limit_cents": 1 }))
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("customer_id"));
    let url = format!("{}/customers/kim", sys.billing.base);
    let r = sys
        .send(Method::PUT, &url, Some("{\"credit_limit_cents\": 1".into()))
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, None);
    let r = sys.account("kim").await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    assert!(
        feed_events(&sys.http, &sys.billing.base).await.is_empty(),
        "a refused command appended an event"
    );

    let r = sys
        .set_limit("kim", json!({ "credit_limit_cents": 2_500 }))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["credit_limit_cents"], 2_500);
    assert_eq!(r.body["default_limit"], false);
    let again = sys
        .set_limit("kim", json!({ "credit_limit_cents": 2_500 }))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let events = feed_events(&sys.http, &sys.billing.base).await;
    assert_eq!(
        events.len(),
        1,
        "setting the same limit twice is one change"
    );
    assert_eq!(events[0].event_type.as_str(), "CreditLimitSet");
    assert_eq!(events[0].stream.as_str(), "customer-kim");
    assert_eq!(
        events[0].data,
        json!({ "customer_id": "kim", "credit_limit_cents": 2_500 })
    );
    let account = sys.account("kim").await;
    assert_eq!(account.status, StatusCode::OK);
    assert_eq!(account.body["charges"], json!([]));
    sys.stop().await;
}
