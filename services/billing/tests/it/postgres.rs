//! The sales -> billing flow with both services on PostgreSQL (skipped, loudly, when
//! the PostgreSQL server binaries are not installed).

use std::collections::HashMap;

use feed::testing::PgCluster;
use serde_json::json;

use crate::support::{Databases, System};

#[tokio::test]
async fn orders_flow_from_sales_to_billing_on_postgresql_exactly_once() {
    let Some(pg) = PgCluster::start() else { return };
    let databases = Databases {
        sales: Some(pg.database("sales")),
        billing: Some(pg.database("billing")),
    };
    let mut sys = System::start(100_000, databases).await;
    let kettle = sys.priced_product("Kettle", 4_000).await;
    let r = sys
        .set_limit("lena", json!({ "credit_limit_cents": 10_000 }))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{:?}", r.body);
    let billed = sys.order("lena", &kettle, 2).await;
    let refused = sys.order("lena", &kettle, 1).await;
    sys.wait_for_decisions(2).await;

    let config = sys.billing_config();
    sys.billing.halt().await;
    billing::rebuild(&config)
        .await
        .expect("replay on PostgreSQL");
    sys.start_billing_again().await;
    let third = sys.order("lena", &kettle, 1).await;
    sys.wait_for_decisions(3).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let decisions = sys.decisions().await;
    assert_eq!(decisions.len(), 3, "one decision per order after a replay");
    let by_order: HashMap<&str, &str> = decisions
        .iter()
        .map(|e| {
            (
                e.data["order_id"].as_str().expect("id"),
                e.event_type.as_str(),
            )
        })
        .collect();
    assert_eq!(by_order[billed.as_str()], "CustomerBilled");
    assert_eq!(by_order[refused.as_str()], "CustomerBillingFailed");
    assert_eq!(
        by_order[third.as_str()],
        "CustomerBillingFailed",
        "8000 + 4000 > 10000"
    );
    let account = sys.account("lena").await.body;
    assert_eq!(account["charged_cents"], 8_000);
    sys.stop().await;
}
