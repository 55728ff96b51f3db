//! The events fulfilment reads (from sales and billing) and publishes. Unknown fields
//! are ignored, so producers may add fields without breaking this reader. Order and
//! product ids are UUIDs; a customer id is whatever sales accepted (a UUID or a token
//! such as `alice`), carried through unchanged.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A line of an order, as fulfilment needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Line {
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i64,
}

/// sales: `OrderAccepted`.
#[derive(Debug, Deserialize)]
pub(crate) struct OrderAccepted {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) lines: Vec<Line>,
}

/// billing: `CustomerBilled`.
#[derive(Debug, Deserialize)]
pub(crate) struct CustomerBilled {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
}

/// billing: `CustomerBillingFailed`.
#[derive(Debug, Deserialize)]
pub(crate) struct CustomerBillingFailed {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// Published: `OrderReadyForShipping`.
#[derive(Debug, Serialize)]
pub(crate) struct OrderReadyForShipping<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: &'a str,
    pub(crate) lines: &'a [Line],
}

/// Published: `OrderFulfilmentCancelled`.
#[derive(Debug, Serialize)]
pub(crate) struct OrderFulfilmentCancelled<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: &'a str,
    pub(crate) reason: &'a str,
}

pub(crate) use feed::event::derived_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_differ_per_kind_and_subject() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            derived_id(a, "OrderReadyForShipping"),
            derived_id(a, "OrderReadyForShipping")
        );
        assert_ne!(
            derived_id(a, "OrderReadyForShipping"),
            derived_id(a, "OrderFulfilmentCancelled")
        );
        assert_ne!(
            derived_id(a, "OrderReadyForShipping"),
            derived_id(b, "OrderReadyForShipping")
        );
        assert_eq!(derived_id(a, "x").get_version_num(), 8);
    }
}
