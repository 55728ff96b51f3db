//! The events shipping reads (from fulfilment and the catalog) and publishes. Unknown
//! fields are ignored, so producers may add fields without breaking this reader.
//! Order and product ids are UUIDs; a customer id is whatever sales accepted (a UUID
//! or a token such as `alice`), carried through unchanged.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A line of a released order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Line {
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i64,
}

/// fulfilment: `OrderReadyForShipping`.
#[derive(Debug, Deserialize)]
pub(crate) struct OrderReadyForShipping {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) lines: Vec<Line>,
}

/// catalog: `ProductAdded` and `ProductUpdated` (the fields shipping keeps).
#[derive(Debug, Deserialize)]
pub(crate) struct ProductChanged {
    pub(crate) product_id: Uuid,
    pub(crate) name: String,
    pub(crate) weight_grams: i64,
}

/// catalog: `ProductDeleted`, carrying the product as it was when deleted (events
/// written before the catalog did so carry only the id).
#[derive(Debug, Deserialize)]
pub(crate) struct ProductDeleted {
    pub(crate) product_id: Uuid,
    pub(crate) name: Option<String>,
    pub(crate) weight_grams: Option<i64>,
}

/// Published: `OrderShipped`.
#[derive(Debug, Serialize)]
pub(crate) struct OrderShipped {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) total_weight_grams: i64,
    pub(crate) parcels: i64,
}

pub(crate) use feed::event::derived_id;
