//! The tier rules. A record only grows (orders are counted, never uncounted), so a
//! customer's tier only goes up.

use serde::Serialize;

/// A loyalty tier, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Tier {
    Bronze,
    Silver,
    Gold,
}

/// Silver: this many shipped orders...
const SILVER_ORDERS: i64 = 3;
/// ...or this much shipped, in cents.
const SILVER_CENTS: i64 = 50_000;
/// Gold: this many shipped orders...
const GOLD_ORDERS: i64 = 10;
/// ...or this much shipped, in cents.
const GOLD_CENTS: i64 = 200_000;

impl Tier {
    /// The tier a record of shipped orders earns.
    pub(crate) fn earned(shipped_orders: i64, shipped_total_cents: i64) -> Self {
        if shipped_orders >= GOLD_ORDERS || shipped_total_cents >= GOLD_CENTS {
            Self::Gold
        } else if shipped_orders >= SILVER_ORDERS || shipped_total_cents >= SILVER_CENTS {
            Self::Silver
        } else {
            Self::Bronze
        }
    }

    /// What earned this tier with that record, in words (None for bronze).
    pub(crate) fn earned_by(self, shipped_orders: i64, shipped_total_cents: i64) -> Option<String> {
        let (orders, cents) = match self {
            Self::Bronze => return None,
            Self::Silver => (SILVER_ORDERS, SILVER_CENTS),
            Self::Gold => (GOLD_ORDERS, GOLD_CENTS),
        };
        let mut reasons = Vec::new();
        if shipped_orders >= orders {
            reasons.push(format!("{shipped_orders} shipped orders (>= {orders})"));
        }
        if shipped_total_cents >= cents {
            reasons.push(format!("{shipped_total_cents} cents shipped (>= {cents})"));
        }
        Some(reasons.join(" and "))
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Silver => "silver",
            Self::Gold => "gold",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Self::Bronze, Self::Silver, Self::Gold]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_earned_by_order_count_or_shipped_total_at_the_thresholds() {
        let table = [
            (0, 0, Tier::Bronze),
            (2, 49_999, Tier::Bronze),
            (3, 0, Tier::Silver),
            (1, 50_000, Tier::Silver),
            (9, 199_999, Tier::Silver),
            (10, 0, Tier::Gold),
            (1, 200_000, Tier::Gold),
        ];
        for (orders, cents, tier) in table {
            assert_eq!(
                Tier::earned(orders, cents),
                tier,
                "{orders} orders, {cents} cents"
            );
        }
    }

    #[test]
    fn the_reason_names_what_reached_the_threshold() {
        assert_eq!(Tier::Bronze.earned_by(1, 10), None);
        assert_eq!(
            Tier::Silver.earned_by(3, 100).as_deref(),
            Some("3 shipped orders (>= 3)")
        );
        assert_eq!(
            Tier::Gold.earned_by(12, 250_000).as_deref(),
            Some("12 shipped orders (>= 10) and 250000 cents shipped (>= 200000)")
        );
    }

    #[test]
    fn tiers_round_trip_through_their_names() {
        for tier in [Tier::Bronze, Tier::Silver, Tier::Gold] {
            assert_eq!(Tier::parse(tier.as_str()), Some(tier));
        }
        assert_eq!(Tier::parse("platinum"), None);
    }
}
