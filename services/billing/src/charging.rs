//! Billing accepted orders: the handler of the `billing<-sales` subscription.
//!
//! Each `OrderAccepted` gets exactly one decision, made in the subscription's
//! transaction together with its checkpoint:
//! - a decision already stored for the order (a replay, a rebuild) is a no-op;
//! - otherwise the rule in [`decide`] picks billed or failed, the decision row is
//!   stored and the event appended with an id derived from the `OrderAccepted` id
//!   (UUID v5), so even a lost decision row could not publish a second event.

use feed::event::{Event, EventType, NewEvent, StreamId, now_micros};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::AnyConnection;
use uuid::Uuid;

/// The fields of `OrderAccepted` billing needs (others are ignored).
#[derive(Debug, Deserialize)]
struct OrderAccepted {
    order_id: Uuid,
    customer_id: String,
    total_cents: i64,
    currency: String,
}

/// What happens to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Charge it.
    Billed,
    /// Refuse it, for this reason.
    Failed(String),
}

/// The rule: the order is billed when the charges so far plus its total stay within
/// the limit.
pub(crate) fn decide(limit: i64, charged: i64, amount: i64) -> Decision {
    match charged.checked_add(amount) {
        Some(total) if total <= limit => Decision::Billed,
        _ => Decision::Failed(format!(
            "credit limit exceeded: {charged} cents charged + {amount} cents ordered > limit of {limit} cents"
        )),
    }
}

/// The credit limit of `customer_id` (None: no account, the default applies).
pub(crate) async fn limit_of(
    conn: &mut AnyConnection,
    customer_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT credit_limit_cents FROM billing_customers WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_optional(conn)
        .await
}

/// The sum of the customer's charges.
pub(crate) async fn charged_total(
    conn: &mut AnyConnection,
    customer_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM billing_decisions \
         WHERE customer_id = $1 AND outcome = 'billed'",
    )
    .bind(customer_id)
    .fetch_one(conn)
    .await
}

/// The subscription handler.
#[derive(Debug, Clone)]
pub(crate) struct Charging {
    log: EventLog,
    default_limit: i64,
}

impl Charging {
    pub(crate) fn new(log: EventLog, default_limit: i64) -> Self {
        Self { log, default_limit }
    }

    async fn bill(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<()> {
        let order: OrderAccepted = serde_json::from_value(event.data.clone()).map_err(|e| {
            anyhow::anyhow!(
                "OrderAccepted at position {} does not match the contract: {e}",
                event.position
            )
        })?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM billing_decisions WHERE order_id = $1")
                .bind(order.order_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_some() {
            return Ok(());
        }
        let limit = limit_of(tx, &order.customer_id)
            .await?
            .unwrap_or(self.default_limit);
        let charged = charged_total(tx, &order.customer_id).await?;
        let decision = decide(limit, charged, order.total_cents);
        let (outcome, reason, event_type) = match &decision {
            Decision::Billed => ("billed", None, "CustomerBilled"),
            Decision::Failed(reason) => ("failed", Some(reason.as_str()), "CustomerBillingFailed"),
        };
        sqlx::query(
            "INSERT INTO billing_decisions (order_id, customer_id, amount_cents, currency, outcome, reason, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order.order_id.to_string())
        .bind(&order.customer_id)
        .bind(order.total_cents)
        .bind(&order.currency)
        .bind(outcome)
        .bind(reason)
        .bind(now_micros().to_rfc3339())
        .execute(&mut *tx)
        .await?;
        let mut data = serde_json::json!({
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "amount_cents": order.total_cents,
            "currency": order.currency,
        });
        if let Some(reason) = reason {
            data["reason"] = reason.into();
        }
        let stream = StreamId::parse(format!("order-{}", order.order_id))?;
        let published = NewEvent::new(stream, EventType::parse(event_type)?, data)
            .with_id(Uuid::new_v5(&event.id, b"billing-decision"))
            .with_metadata(serde_json::json!({ "causation_id": event.id }));
        self.log
            .append_unnumbered(tx, Expected::Any, &[published])
            .await?;
        tracing::info!(order_id = %order.order_id, customer_id = %order.customer_id, outcome, "order billed");
        Ok(())
    }
}

impl Handler for Charging {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if event.event_type.as_str() == "OrderAccepted" {
                self.bill(tx, event).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_billed_up_to_and_including_the_limit() {
        assert_eq!(decide(10_000, 4_000, 6_000), Decision::Billed);
        assert_eq!(decide(0, 0, 0), Decision::Billed);
        assert!(matches!(decide(10_000, 4_000, 6_001), Decision::Failed(_)));
        assert!(matches!(decide(0, 0, 1), Decision::Failed(_)));
        assert!(matches!(decide(i64::MAX, i64::MAX, 1), Decision::Failed(_)));
    }
}
