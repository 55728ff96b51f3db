//! The catalog replica and the shipments, in SQL that runs on SQLite and PostgreSQL.
//!
//! Both subscriptions start their transaction with [`take_turn`]. On PostgreSQL the
//! two run concurrently, and without a common lock a released order could read "the
//! product is missing" while a catalog transaction reads "no shipment waits for this
//! product": both commit and the shipment waits forever. Updating one shared row first
//! makes them take turns, each seeing what the other committed. (On SQLite the write
//! transaction already serialises them.)

use std::collections::HashMap;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{AnyConnection, Row as _};
use uuid::Uuid;

use crate::slip::{Product, Slip};

/// Waits for, and holds until commit, the right to read and change shipping's state.
pub(crate) async fn take_turn(tx: &mut AnyConnection) -> anyhow::Result<()> {
    sqlx::query("UPDATE shipping_turns SET turns = turns + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Adds or replaces a product in the replica (and undeletes it).
pub(crate) async fn upsert_product(
    tx: &mut AnyConnection,
    id: Uuid,
    name: &str,
    weight_grams: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO shipping_products (product_id, name, weight_grams, deleted) VALUES ($1, $2, $3, 0) \
         ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, weight_grams = excluded.weight_grams, deleted = 0",
    )
    .bind(id.to_string())
    .bind(name)
    .bind(weight_grams)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks a product deleted; it stays known to slips of goods already ordered.
pub(crate) async fn mark_deleted(tx: &mut AnyConnection, id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE shipping_products SET deleted = 1 WHERE product_id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The replica's products among `ids`.
pub(crate) async fn products(
    tx: &mut AnyConnection,
    ids: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, Product>> {
    let mut found = HashMap::new();
    for id in ids {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT name, weight_grams FROM shipping_products WHERE product_id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((name, weight_grams)) = row {
            found.insert(*id, Product { name, weight_grams });
        }
    }
    Ok(found)
}

/// Whether order `order_id` already has a shipment (pending or shipped).
pub(crate) async fn shipment_exists(
    tx: &mut AnyConnection,
    order_id: Uuid,
) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shipping_shipments WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
    Ok(n > 0)
}

/// Records a new, pending shipment with its lines.
pub(crate) async fn insert_pending(
    tx: &mut AnyConnection,
    order_id: Uuid,
    customer_id: &str,
    lines: &[(Uuid, i64)],
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO shipping_shipments (order_id, customer_id, status, parcels, created_at) \
         VALUES ($1, $2, 'pending', 1, $3)",
    )
    .bind(order_id.to_string())
    .bind(customer_id)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    for (line_no, (product_id, quantity)) in lines.iter().enumerate() {
        sqlx::query("INSERT INTO shipping_slip_lines (order_id, line_no, product_id, quantity) VALUES ($1, $2, $3, $4)")
            .bind(order_id.to_string())
            .bind(line_no as i64)
            .bind(product_id.to_string())
            .bind(*quantity)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The pending shipments that have a line for `product_id`.
pub(crate) async fn pending_with_product(
    tx: &mut AnyConnection,
    product_id: Uuid,
) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT s.order_id FROM shipping_shipments s \
         JOIN shipping_slip_lines l ON l.order_id = s.order_id \
         WHERE s.status = 'pending' AND l.product_id = $1 ORDER BY s.order_id",
    )
    .bind(product_id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    ids.iter()
        .map(|id| Uuid::parse_str(id).context("shipping_shipments.order_id"))
        .collect()
}

/// A pending shipment's customer and lines (product, quantity); None unless pending.
pub(crate) async fn pending(
    tx: &mut AnyConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<(String, Vec<(Uuid, i64)>)>> {
    let customer: Option<String> = sqlx::query_scalar(
        "SELECT customer_id FROM shipping_shipments WHERE order_id = $1 AND status = 'pending'",
    )
    .bind(order_id.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(customer) = customer else {
        return Ok(None);
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT product_id, quantity FROM shipping_slip_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    let lines = rows
        .into_iter()
        .map(|(p, q)| {
            Ok((
                Uuid::parse_str(&p).context("shipping_slip_lines.product_id")?,
                q,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some((customer, lines)))
}

/// Completes a shipment with its slip: names and unit weights copied onto the lines.
pub(crate) async fn mark_shipped(
    tx: &mut AnyConnection,
    order_id: Uuid,
    slip: &Slip,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE shipping_shipments SET status = 'shipped', total_weight_grams = $2, shipped_at = $3 WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .bind(slip.total_weight_grams)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    for (line_no, line) in slip.lines.iter().enumerate() {
        sqlx::query("UPDATE shipping_slip_lines SET name = $3, weight_grams = $4 WHERE order_id = $1 AND line_no = $2")
            .bind(order_id.to_string())
            .bind(line_no as i64)
            .bind(line.name.as_str())
            .bind(line.unit_weight_grams)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// A shipment as `GET /shipments/{order_id}` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Shipment {
    order_id: Uuid,
    customer_id: String,
    status: String,
    parcels: i64,
    created_at: String,
    shipped_at: Option<String>,
    packing_slip: PackingSlip,
    /// Products the catalog replica does not know yet (pending shipments only).
    waiting_for_products: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PackingSlip {
    lines: Vec<ShipmentLine>,
    total_weight_grams: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ShipmentLine {
    product_id: String,
    name: Option<String>,
    quantity: i64,
    unit_weight_grams: Option<i64>,
    weight_grams: Option<i64>,
}

/// The shipment of order `order_id`, if any.
pub(crate) async fn find(
    conn: &mut AnyConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<Shipment>> {
    let row = sqlx::query(
        "SELECT customer_id, status, parcels, total_weight_grams, created_at, shipped_at \
         FROM shipping_shipments WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get(1)?;
    let lines = sqlx::query(
        "SELECT l.product_id, l.quantity, l.name, l.weight_grams, p.product_id \
         FROM shipping_slip_lines l LEFT JOIN shipping_products p ON p.product_id = l.product_id \
         WHERE l.order_id = $1 ORDER BY l.line_no",
    )
    .bind(order_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut slip_lines = Vec::with_capacity(lines.len());
    let mut waiting: Vec<String> = Vec::new();
    for line in &lines {
        let product_id: String = line.try_get(0)?;
        let quantity: i64 = line.try_get(1)?;
        let unit_weight_grams: Option<i64> = line.try_get(3)?;
        let in_replica: Option<String> = line.try_get(4)?;
        if status == "pending" && in_replica.is_none() && !waiting.contains(&product_id) {
            waiting.push(product_id.clone());
        }
        slip_lines.push(ShipmentLine {
            product_id,
            name: line.try_get(2)?,
            quantity,
            unit_weight_grams,
            weight_grams: unit_weight_grams.map(|w| w.saturating_mul(quantity)),
        });
    }
    Ok(Some(Shipment {
        order_id,
        customer_id: row.try_get(0)?,
        status,
        parcels: row.try_get(2)?,
        created_at: row.try_get(4)?,
        shipped_at: row.try_get(5)?,
        packing_slip: PackingSlip {
            lines: slip_lines,
            total_weight_grams: row.try_get(3)?,
        },
        waiting_for_products: waiting,
    }))
}

fn now() -> String {
    feed::atom::format_time(&chrono::Utc::now())
}
