//! A late-joining loyalty on PostgreSQL agrees with one that ran from the start on
//! SQLite.

use crate::history::{Lcg, System, customer, expected_tiers, history, publish, tier_changes};
use kit::testing::Running;

#[tokio::test]
async fn on_postgresql_a_late_joiner_reaches_the_same_tiers() {
    let Some(cluster) = feed::testing::PgCluster::start() else {
        return;
    };
    let system = System::new().await;
    let mut rng = Lcg::new(42);
    let orders = history(&mut rng, &[14, 6, 3, 2, 1]);
    let early_data = tempfile::tempdir().expect("temp dir");
    let early = Running::start(system.config(&early_data), loyalty::run).await;
    publish(&system, &mut rng, &orders).await;
    early.wait_caught_up(&system.heads().await).await;

    let late_data = tempfile::tempdir().expect("temp dir");
    let mut config = system.config(&late_data);
    config.args.database_url = Some(cluster.database("loyalty"));
    let late = Running::start(config, loyalty::run).await;
    late.wait_caught_up(&system.heads().await).await;
    for (id, tier) in expected_tiers(&orders) {
        let from_start = customer(&early, &id).await;
        assert_eq!(from_start["tier"], tier);
        assert_eq!(customer(&late, &id).await, from_start, "customer {id}");
    }
    assert_eq!(tier_changes(&late).await, tier_changes(&early).await);
    late.stop().await;
    early.stop().await;
}
