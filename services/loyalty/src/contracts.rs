//! The events loyalty reads (from sales and shipping) and publishes. Unknown fields are
//! ignored, so producers may add fields without breaking this reader. Order ids are
//! UUIDs; a customer id is whatever sales accepted (a UUID or a token such as
//! `alice`), carried through unchanged.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tier::Tier;

/// sales: `OrderAccepted` (the fields loyalty keeps).
#[derive(Debug, Deserialize)]
pub(crate) struct OrderAccepted {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) total_cents: i64,
}

/// shipping: `OrderShipped`.
#[derive(Debug, Deserialize)]
pub(crate) struct OrderShipped {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
}

/// Published: `CustomerTierChanged`.
#[derive(Debug, Serialize)]
pub(crate) struct CustomerTierChanged<'a> {
    pub(crate) customer_id: &'a str,
    pub(crate) tier: Tier,
    pub(crate) previous_tier: Tier,
    pub(crate) shipped_orders: i64,
    pub(crate) shipped_total_cents: i64,
}

pub(crate) use feed::event::derived_id;
