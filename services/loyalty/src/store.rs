//! Orders and customers, in SQL that runs on SQLite and PostgreSQL.
//!
//! Every handler starts with [`claim_customer`], an upsert that takes the customer's
//! row lock (PostgreSQL runs the sales and shipping subscriptions concurrently; on
//! SQLite the write transaction serialises them anyway). Everything a handler then
//! reads about that customer's orders is what the other subscription committed, so an
//! order can never be counted twice or be missed between them.

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{AnyConnection, Row as _};
use uuid::Uuid;

use crate::tier::Tier;

/// A customer's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) tier: Tier,
    pub(crate) shipped_orders: i64,
    pub(crate) shipped_total_cents: i64,
}

/// Locks (creating it as bronze if new) and reads the customer's record.
pub(crate) async fn claim_customer(
    tx: &mut AnyConnection,
    customer_id: &str,
) -> anyhow::Result<Record> {
    sqlx::query(
        "INSERT INTO loyalty_customers (customer_id, tier, shipped_orders, shipped_total_cents, updated_at) \
         VALUES ($1, 'bronze', 0, 0, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET customer_id = excluded.customer_id",
    )
    .bind(customer_id)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    let (tier, shipped_orders, shipped_total_cents): (String, i64, i64) = sqlx::query_as(
        "SELECT tier, shipped_orders, shipped_total_cents FROM loyalty_customers WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Record {
        tier: Tier::parse(&tier).with_context(|| format!("unknown tier {tier:?}"))?,
        shipped_orders,
        shipped_total_cents,
    })
}

/// Saves the customer's record.
pub(crate) async fn save_customer(
    tx: &mut AnyConnection,
    customer_id: &str,
    record: Record,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE loyalty_customers SET tier = $2, shipped_orders = $3, shipped_total_cents = $4, updated_at = $5 \
         WHERE customer_id = $1",
    )
    .bind(customer_id)
    .bind(record.tier.as_str())
    .bind(record.shipped_orders)
    .bind(record.shipped_total_cents)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Remembers an order's total (the first one reported wins).
pub(crate) async fn record_total(
    tx: &mut AnyConnection,
    order_id: Uuid,
    customer_id: &str,
    total_cents: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO loyalty_orders (order_id, customer_id, total_cents, counted) VALUES ($1, $2, $3, 0) \
         ON CONFLICT (order_id) DO UPDATE SET total_cents = excluded.total_cents \
         WHERE loyalty_orders.total_cents IS NULL",
    )
    .bind(order_id.to_string())
    .bind(customer_id)
    .bind(total_cents)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Remembers where an order's `OrderShipped` sits in shipping's feed (the first
/// report wins).
pub(crate) async fn record_shipped(
    tx: &mut AnyConnection,
    order_id: Uuid,
    customer_id: &str,
    position: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO loyalty_orders (order_id, customer_id, shipped_position, counted) VALUES ($1, $2, $3, 0) \
         ON CONFLICT (order_id) DO UPDATE SET shipped_position = excluded.shipped_position \
         WHERE loyalty_orders.shipped_position IS NULL",
    )
    .bind(order_id.to_string())
    .bind(customer_id)
    .bind(i64::try_from(position)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The customer's earliest shipped order (in shipping-feed order) not counted yet,
/// with its total if known.
pub(crate) async fn next_uncounted(
    tx: &mut AnyConnection,
    customer_id: &str,
) -> anyhow::Result<Option<(Uuid, Option<i64>)>> {
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT order_id, total_cents FROM loyalty_orders \
         WHERE customer_id = $1 AND counted = 0 AND shipped_position IS NOT NULL \
         ORDER BY shipped_position LIMIT 1",
    )
    .bind(customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|(id, total)| {
        Ok((
            Uuid::parse_str(&id).context("loyalty_orders.order_id")?,
            total,
        ))
    })
    .transpose()
}

/// Marks an order as counted toward its customer's tier.
pub(crate) async fn mark_counted(tx: &mut AnyConnection, order_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE loyalty_orders SET counted = 1 WHERE order_id = $1")
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A customer as `GET /customers/{id}` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Customer {
    customer_id: String,
    tier: Tier,
    /// What earned the tier, in words (null for bronze).
    earned_by: Option<String>,
    shipped_orders: i64,
    shipped_total_cents: i64,
    /// The orders counted, in the order they counted.
    orders: Vec<CountedOrder>,
    /// Shipped orders whose total sales has not reported yet.
    awaiting_totals: Vec<String>,
    updated_at: String,
}

#[derive(Debug, Serialize)]
struct CountedOrder {
    order_id: String,
    total_cents: Option<i64>,
}

/// The customer `customer_id`, if loyalty has heard of them.
pub(crate) async fn find(
    conn: &mut AnyConnection,
    customer_id: &str,
) -> anyhow::Result<Option<Customer>> {
    let row = sqlx::query(
        "SELECT tier, shipped_orders, shipped_total_cents, updated_at FROM loyalty_customers WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let tier: String = row.try_get(0)?;
    let tier = Tier::parse(&tier).with_context(|| format!("unknown tier {tier:?}"))?;
    let shipped_orders: i64 = row.try_get(1)?;
    let shipped_total_cents: i64 = row.try_get(2)?;
    let shipped: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT order_id, total_cents, counted FROM loyalty_orders \
         WHERE customer_id = $1 AND shipped_position IS NOT NULL ORDER BY shipped_position",
    )
    .bind(customer_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut orders = Vec::new();
    let mut awaiting_totals = Vec::new();
    for (order_id, total_cents, counted) in shipped {
        if counted != 0 {
            orders.push(CountedOrder {
                order_id,
                total_cents,
            });
        } else {
            awaiting_totals.push(order_id);
        }
    }
    Ok(Some(Customer {
        customer_id: customer_id.to_owned(),
        tier,
        earned_by: tier.earned_by(shipped_orders, shipped_total_cents),
        shipped_orders,
        shipped_total_cents,
        orders,
        awaiting_totals,
        updated_at: row.try_get(3)?,
    }))
}

fn now() -> String {
    feed::atom::format_time(&chrono::Utc::now())
}
