//! The handler both subscriptions feed.
//!
//! **A product missing from the replica** (the catalog subscription lags behind
//! fulfilment's): the shipment is recorded as `pending` with its lines and nothing is
//! published; the fulfilment checkpoint moves on, so later orders are not held up.
//! When a `ProductAdded` / `ProductUpdated` arrives (or a `ProductDeleted`, which
//! carries the product as it was: goods already ordered still ship), every pending
//! shipment with a line for that product is tried again once the catalog page holding
//! it is applied, and the one whose last missing product that was ships in that
//! catalog transaction: slip completed, `OrderShipped` published. The
//! alternative, failing the handler until the catalog catches up, would block every
//! later order behind one slow product and retry forever for a product that never
//! comes; a pending shipment is visible instead (`GET /shipments/{order_id}` names the
//! products it waits for).
//!
//! Exactly once: a shipment is created only if the order has none (a replayed
//! `OrderReadyForShipping` finds it and does nothing), it ships only from `pending`,
//! and `OrderShipped` has an id derived from the order id, which the log accepts once.

use anyhow::Context as _;
use feed::event::{Event, EventType, NewEvent, StreamId};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::contracts::{self, OrderReadyForShipping, OrderShipped, ProductChanged, ProductDeleted};
use crate::{slip, store};

/// Applies catalog events to the replica and ships released orders.
#[derive(Debug, Clone)]
pub(crate) struct Shipper {
    log: EventLog,
}

impl Shipper {
    pub(crate) fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// Applies one event. Returns the product the replica learnt of, if any: pending
    /// shipments waiting for it are tried once the whole batch is applied, so a
    /// product added and updated on the same page ships with its latest data.
    async fn apply(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<Option<Uuid>> {
        match event.event_type.as_str() {
            "OrderReadyForShipping" => {
                let e: OrderReadyForShipping = data(event)?;
                store::take_turn(tx).await?;
                if !store::shipment_exists(tx, e.order_id).await? {
                    let lines: Vec<(Uuid, i64)> =
                        e.lines.iter().map(|l| (l.product_id, l.quantity)).collect();
                    store::insert_pending(tx, e.order_id, &e.customer_id, &lines).await?;
                    self.try_ship(tx, e.order_id, event.id).await?;
                }
                Ok(None)
            }
            "ProductAdded" | "ProductUpdated" => {
                let e: ProductChanged = data(event)?;
                store::take_turn(tx).await?;
                store::upsert_product(tx, e.product_id, &e.name, e.weight_grams).await?;
                Ok(Some(e.product_id))
            }
            "ProductDeleted" => {
                let e: ProductDeleted = data(event)?;
                store::take_turn(tx).await?;
                match (&e.name, e.weight_grams) {
                    // The product as it was: a shipment still waiting for it can ship.
                    (Some(name), Some(weight_grams)) => {
                        store::upsert_product(tx, e.product_id, name, weight_grams).await?;
                        store::mark_deleted(tx, e.product_id).await?;
                        Ok(Some(e.product_id))
                    }
                    _ => {
                        store::mark_deleted(tx, e.product_id).await?;
                        Ok(None)
                    }
                }
            }
            _ => Ok(None),
        }
    }

    /// Applies a batch of one feed's events, then ships the pending shipments that
    /// waited for a product the batch brought.
    async fn apply_batch(&self, tx: &mut AnyConnection, events: &[Event]) -> anyhow::Result<()> {
        let mut learnt: Vec<(Uuid, Uuid)> = Vec::new();
        for event in events {
            if let Some(product_id) = self.apply(tx, event).await?
                && !learnt.iter().any(|(p, _)| *p == product_id)
            {
                learnt.push((product_id, event.id));
            }
        }
        for (product_id, cause) in learnt {
            for order_id in store::pending_with_product(tx, product_id).await? {
                self.try_ship(tx, order_id, cause).await?;
            }
        }
        Ok(())
    }

    /// Ships the pending shipment of `order_id` if the replica knows all its products.
    async fn try_ship(
        &self,
        tx: &mut AnyConnection,
        order_id: Uuid,
        cause: Uuid,
    ) -> anyhow::Result<()> {
        let Some((customer_id, lines)) = store::pending(tx, order_id).await? else {
            return Ok(());
        };
        let ids: Vec<Uuid> = lines.iter().map(|(p, _)| *p).collect();
        let products = store::products(tx, &ids).await?;
        let slip = match slip::pack(&lines, &products) {
            Ok(slip) => slip,
            Err(missing) => {
                tracing::info!(%order_id, ?missing, "shipment waits for products the catalog replica lacks");
                return Ok(());
            }
        };
        store::mark_shipped(tx, order_id, &slip).await?;
        let data = serde_json::to_value(OrderShipped {
            order_id,
            customer_id,
            total_weight_grams: slip.total_weight_grams,
            parcels: 1,
        })?;
        let event = NewEvent::new(
            StreamId::parse(format!("order-{order_id}"))?,
            EventType::parse("OrderShipped")?,
            data,
        )
        .with_id(contracts::derived_id(order_id, "OrderShipped"))
        .with_metadata(serde_json::json!({
            "correlation_id": order_id.to_string(),
            "causation_id": cause.to_string(),
        }));
        self.log
            .append_unnumbered(tx, Expected::Any, &[event])
            .await?;
        tracing::info!(%order_id, total_weight_grams = slip.total_weight_grams, "shipped");
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

impl Handler for Shipper {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.apply_batch(tx, std::slice::from_ref(event)))
    }

    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [Event],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.apply_batch(tx, events))
    }
}
