use std::collections::HashMap;

use serde_json::json;

use crate::support::{Databases, System, feed_events};

#[tokio::test]
async fn orders_within_the_credit_limit_are_billed_and_one_beyond_it_fails() {
    let sys = System::start(5_000, Databases::default()).await;
    let kettle = sys.priced_product("Kettle", 3_000).await;
    let r = sys
        .set_limit("hank", json!({ "credit_limit_cents": 10_000 }))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{:?}", r.body);

    let first = sys.order("hank", &kettle, 2).await;
    let second = sys.order("hank", &kettle, 1).await;
    let third = sys.order("hank", &kettle, 1).await;
    // Ivy has no account: the default limit of 5000 cents applies.
    let ivy_first = sys.order("ivy", &kettle, 1).await;
    let ivy_second = sys.order("ivy", &kettle, 1).await;

    let decisions = sys.wait_for_decisions(5).await;
    let by_order: HashMap<String, _> = decisions
        .iter()
        .map(|e| (e.data["order_id"].as_str().expect("order_id").to_owned(), e))
        .collect();
    assert_eq!(by_order.len(), 5, "one decision per order");
    for (order, expected) in [
        (&first, "CustomerBilled"),
        (&second, "CustomerBilled"),
        (&third, "CustomerBillingFailed"),
        (&ivy_first, "CustomerBilled"),
        (&ivy_second, "CustomerBillingFailed"),
    ] {
        let e = by_order[order.as_str()];
        assert_eq!(e.event_type.as_str(), expected, "order {order}");
        assert_eq!(e.stream.as_str(), format!("order-{order}"));
    }
    assert_eq!(
        by_order[first.as_str()].data,
        json!({ "order_id": first, "customer_id": "hank", "amount_cents": 6_000, "currency": "EUR" })
    );
    let failed = &by_order[third.as_str()].data;
    assert_eq!(failed["amount_cents"], 3_000);
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("credit limit")),
        "{failed}"
    );

    let hank = sys.account("hank").await.body;
    assert_eq!(hank["credit_limit_cents"], 10_000);
    assert_eq!(hank["charged_cents"], 9_000);
    assert_eq!(hank["available_cents"], 1_000);
    assert_eq!(hank["charges"].as_array().map(Vec::len), Some(2));
    assert_eq!(hank["refused"][0]["order_id"], third.as_str());
    let ivy = sys.account("ivy").await;
    assert_eq!(ivy.status, reqwest::StatusCode::OK);
    assert_eq!(ivy.body["default_limit"], true);
    assert_eq!(ivy.body["credit_limit_cents"], 5_000);
    assert_eq!(ivy.body["charged_cents"], 3_000);
    sys.stop().await;
}

#[tokio::test]
async fn replaying_sales_feed_from_the_start_bills_no_order_twice() {
    let mut sys = System::start(100_000, Databases::default()).await;
    let kettle = sys.priced_product("Kettle", 1_000).await;
    let mut orders = Vec::new();
    for quantity in 1..=3 {
        orders.push(sys.order("jill", &kettle, quantity).await);
    }
    sys.wait_for_decisions(3).await;

    // Rebuild: forget the checkpoint and replay sales' whole feed, then run again.
    let sales_head = feed_events(&sys.http, &sys.sales.base).await.len() as u64;
    let config = sys.billing_config();
    sys.billing.halt().await;
    let position = billing::rebuild(&config).await.expect("rebuild");
    assert!(
        position >= sales_head,
        "the replay reaches sales' head ({sales_head}), got {position}"
    );
    sys.start_billing_again().await;
    // A plain restart too.
    sys.restart_billing().await;

    orders.push(sys.order("jill", &kettle, 4).await);
    sys.wait_for_decisions(4).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let decisions = sys.decisions().await;
    let mut decided: Vec<&str> = decisions
        .iter()
        .filter_map(|e| e.data["order_id"].as_str())
        .collect();
    decided.sort_unstable();
    let mut expected: Vec<&str> = orders.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(decided, expected, "each order decided exactly once");
    let jill = sys.account("jill").await.body;
    assert_eq!(
        jill["charged_cents"], 10_000,
        "1 + 2 + 3 + 4 kettles, each charged once"
    );
    assert_eq!(jill["charges"].as_array().map(Vec::len), Some(4));
    sys.stop().await;
}
