//! Loyalty started late, on an empty database, reaches the state of a loyalty that
//! ran from the start.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::history::{Lcg, System, customer, expected_tiers, history, publish, tier_changes};
use kit::testing::Running;

/// 200 orders for 12 customers: a few heavy buyers (gold by count), several silver,
/// some bronze, and one gold by a single big order.
const ORDERS_PER_CUSTOMER: [usize; 12] = [60, 40, 30, 20, 15, 12, 8, 5, 4, 3, 2, 1];

#[tokio::test]
async fn a_loyalty_started_late_on_an_empty_database_reaches_the_same_tiers_as_one_that_ran_from_the_start()
 {
    let system = System::new().await;
    let mut rng = Lcg::new(0x5eed_2026);
    let orders = history(&mut rng, &ORDERS_PER_CUSTOMER);
    assert_eq!(orders.len(), 200);
    let expected = expected_tiers(&orders);
    let tiers: BTreeSet<&str> = expected.values().copied().collect();
    assert_eq!(
        tiers.len(),
        3,
        "the history reaches every tier: {expected:?}"
    );

    let early_data = tempfile::tempdir().expect("temp dir");
    let early = Running::start(system.config(&early_data), loyalty::run).await;
    publish(&system, &mut rng, &orders).await;
    early.wait_caught_up(&system.heads().await).await;

    let late_data = tempfile::tempdir().expect("temp dir");
    let late = Running::start(system.config(&late_data), loyalty::run).await;
    late.wait_caught_up(&system.heads().await).await;

    for (id, tier) in &expected {
        let from_start = customer(&early, id).await;
        assert_eq!(from_start["tier"], *tier, "customer {id}: {from_start}");
        assert_eq!(customer(&late, id).await, from_start, "customer {id}");
        assert_eq!(from_start["awaiting_totals"], Value::Array(vec![]));
    }
    let changes = tier_changes(&early).await;
    assert_eq!(tier_changes(&late).await, changes);
    // Heavy buyers went bronze -> silver -> gold; everyone above bronze has changes.
    assert!(
        changes.values().any(|c| c.len() == 2),
        "someone went through silver to gold: {changes:?}"
    );
    assert_eq!(
        changes.len(),
        expected.values().filter(|t| **t != "bronze").count()
    );

    // Rebuilding the early one replays both feeds into the same state without
    // publishing any tier change twice.
    early.stop().await;
    loyalty::rebuild(system.config(&early_data))
        .await
        .expect("rebuild");
    let rebuilt = Running::start(system.config(&early_data), loyalty::run).await;
    rebuilt.wait_caught_up(&system.heads().await).await;
    for id in expected.keys() {
        assert_eq!(
            customer(&rebuilt, id).await,
            customer(&late, id).await,
            "customer {id}"
        );
    }
    assert_eq!(tier_changes(&rebuilt).await, changes);
    rebuilt.stop().await;
    late.stop().await;
}
