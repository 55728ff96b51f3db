//! The handler both subscriptions feed: records what each event says about an order,
//! then counts the customer's orders that have become countable and publishes the tier
//! changes that brings.
//!
//! Why the result does not depend on how the two feeds interleave: an order counts
//! only once its total (sales) and its shipment (shipping) are both known, and a
//! customer's orders count strictly in the order their `OrderShipped` events have in
//! shipping's feed; a shipped order whose total is not known yet holds back the
//! customer's later ones until `OrderAccepted` arrives (in the real flow it always
//! exists: an order is accepted before it ships). The sequence of records a customer
//! passes through, and so the sequence of `CustomerTierChanged` events, is therefore
//! the same for a loyalty that ran from the start and one that replayed history, and
//! each change has an id derived from the order that caused it, so a rebuild does not
//! publish it twice.

use anyhow::Context as _;
use feed::event::{Event, EventType, NewEvent, StreamId};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::contracts::{self, CustomerTierChanged, OrderAccepted, OrderShipped};
use crate::store::{self, Record};
use crate::tier::Tier;

/// Counts shipped orders into customers' tiers.
#[derive(Debug, Clone)]
pub(crate) struct Earner {
    log: EventLog,
}

impl Earner {
    pub(crate) fn new(log: EventLog) -> Self {
        Self { log }
    }

    async fn apply(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<()> {
        let (customer_id, before) = match event.event_type.as_str() {
            "OrderAccepted" => {
                let e: OrderAccepted = data(event)?;
                let record = store::claim_customer(tx, &e.customer_id).await?;
                store::record_total(tx, e.order_id, &e.customer_id, e.total_cents).await?;
                (e.customer_id, record)
            }
            "OrderShipped" => {
                let e: OrderShipped = data(event)?;
                let record = store::claim_customer(tx, &e.customer_id).await?;
                store::record_shipped(tx, e.order_id, &e.customer_id, event.position).await?;
                (e.customer_id, record)
            }
            _ => return Ok(()),
        };
        self.count(tx, &customer_id, before).await
    }

    /// Counts the customer's countable orders, in shipping-feed order, starting from
    /// the customer's claimed record `before`.
    async fn count(
        &self,
        tx: &mut AnyConnection,
        customer_id: &str,
        before: Record,
    ) -> anyhow::Result<()> {
        let mut record = before;
        while let Some((order_id, Some(total_cents))) =
            store::next_uncounted(tx, customer_id).await?
        {
            store::mark_counted(tx, order_id).await?;
            let previous = record.tier;
            record.shipped_orders += 1;
            record.shipped_total_cents += total_cents;
            record.tier = Tier::earned(record.shipped_orders, record.shipped_total_cents);
            if record.tier != previous {
                self.publish(tx, customer_id, previous, record, order_id)
                    .await?;
            }
        }
        if record != before {
            store::save_customer(tx, customer_id, record).await?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        tx: &mut AnyConnection,
        customer_id: &str,
        previous: Tier,
        record: Record,
        order_id: Uuid,
    ) -> anyhow::Result<()> {
        let data = serde_json::to_value(CustomerTierChanged {
            customer_id,
            tier: record.tier,
            previous_tier: previous,
            shipped_orders: record.shipped_orders,
            shipped_total_cents: record.shipped_total_cents,
        })?;
        let event = NewEvent::new(
            StreamId::parse(format!("customer-{customer_id}"))?,
            EventType::parse("CustomerTierChanged")?,
            data,
        )
        .with_id(contracts::derived_id(order_id, "CustomerTierChanged"))
        .with_metadata(serde_json::json!({
            "correlation_id": customer_id,
            "causation_id": order_id.to_string(),
        }));
        self.log
            .append_unnumbered(tx, Expected::Any, &[event])
            .await?;
        tracing::info!(%customer_id, tier = record.tier.as_str(), previous = previous.as_str(), "tier changed");
        Ok(())
    }
}

fn data<T: DeserializeOwned>(event: &Event) -> anyhow::Result<T> {
    serde_json::from_value(event.data.clone()).with_context(|| {
        format!(
            "{} at position {} has unexpected data",
            event.event_type, event.position
        )
    })
}

impl Handler for Earner {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.apply(tx, event))
    }
}
