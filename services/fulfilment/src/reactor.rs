//! The handler both subscriptions feed: turns an event into a [`Fact`], runs the
//! state machine on the order's stored process, saves the result and publishes the
//! outcome, all in the subscriber's transaction.

use anyhow::Context as _;
use feed::event::{Event, EventType, NewEvent, StreamId};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::contracts::{
    self, CustomerBilled, CustomerBillingFailed, OrderAccepted, OrderFulfilmentCancelled,
    OrderReadyForShipping,
};
use crate::process::{self, Fact, Outcome, Process};
use crate::store;

/// Drives the fulfilment process from sales' and billing's events.
#[derive(Debug, Clone)]
pub(crate) struct Reactor {
    log: EventLog,
}

impl Reactor {
    pub(crate) fn new(log: EventLog) -> Self {
        Self { log }
    }

    async fn react(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<()> {
        let (order_id, fact) = match event.event_type.as_str() {
            "OrderAccepted" => {
                let e: OrderAccepted = data(event)?;
                (
                    e.order_id,
                    Fact::Accepted {
                        customer_id: e.customer_id,
                        lines: e.lines,
                    },
                )
            }
            "CustomerBilled" => {
                let e: CustomerBilled = data(event)?;
                (
                    e.order_id,
                    Fact::Billed {
                        customer_id: e.customer_id,
                    },
                )
            }
            "CustomerBillingFailed" => {
                let e: CustomerBillingFailed = data(event)?;
                (
                    e.order_id,
                    Fact::BillingFailed {
                        customer_id: e.customer_id,
                        reason: e.reason,
                    },
                )
            }
            _ => return Ok(()),
        };
        let current = store::claim(tx, order_id).await?;
        let (next, outcome) = process::decide(order_id, current.as_ref(), fact);
        if current.as_ref() != Some(&next) {
            store::save(tx, &next, current.is_some()).await?;
        }
        if let Some(outcome) = outcome {
            self.publish(tx, &next, outcome, event.id).await?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        tx: &mut AnyConnection,
        process: &Process,
        outcome: Outcome,
        cause: Uuid,
    ) -> anyhow::Result<()> {
        let (kind, data) = match outcome {
            Outcome::Ready => (
                "OrderReadyForShipping",
                serde_json::to_value(OrderReadyForShipping {
                    order_id: process.order_id,
                    customer_id: &process.customer_id,
                    lines: process.lines.as_deref().unwrap_or_default(),
                })?,
            ),
            Outcome::Cancelled => (
                "OrderFulfilmentCancelled",
                serde_json::to_value(OrderFulfilmentCancelled {
                    order_id: process.order_id,
                    customer_id: &process.customer_id,
                    reason: process.reason.as_deref().unwrap_or_default(),
                })?,
            ),
        };
        let event = NewEvent::new(
            StreamId::parse(format!("order-{}", process.order_id))?,
            EventType::parse(kind)?,
            data,
        )
        .with_id(contracts::derived_id(process.order_id, kind))
        .with_metadata(serde_json::json!({
            "correlation_id": process.order_id.to_string(),
            "causation_id": cause.to_string(),
        }));
        self.log
            .append_unnumbered(tx, Expected::Any, &[event])
            .await?;
        tracing::info!(order_id = %process.order_id, event = kind, "published");
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

impl Handler for Reactor {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.react(tx, event))
    }
}
