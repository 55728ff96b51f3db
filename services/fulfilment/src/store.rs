//! The process rows. Every handler starts with [`claim`], which takes the order's row
//! lock before reading it (on PostgreSQL a row lock held to commit; on SQLite the
//! write transaction already serialises everything), so the two subscriptions, or two
//! replicas of the service, never decide on the same order from a stale read. A row
//! that does not exist yet cannot be locked: two first facts for the same order
//! racing on PostgreSQL make one `INSERT` fail on the primary key, the subscriber
//! rolls that batch back and retries it, and the retry sees the row.

use anyhow::Context as _;
use sqlx::{AnyConnection, Row as _};
use uuid::Uuid;

use crate::contracts::Line;
use crate::process::{Process, Stage};

/// Locks and reads the order's process, if any.
pub(crate) async fn claim(
    tx: &mut AnyConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<Process>> {
    sqlx::query("UPDATE fulfilment_orders SET order_id = order_id WHERE order_id = $1")
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(find(tx, order_id).await?.map(|(process, _)| process))
}

/// The order's process and when it last changed.
pub(crate) async fn find(
    conn: &mut AnyConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<(Process, String)>> {
    let row = sqlx::query(
        "SELECT customer_id, stage, accepted, billed, lines, reason, updated_at \
         FROM fulfilment_orders WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let customer_id: String = row.try_get(0)?;
    let stage: String = row.try_get(1)?;
    let accepted: i64 = row.try_get(2)?;
    let billed: i64 = row.try_get(3)?;
    let lines: Option<String> = row.try_get(4)?;
    let reason: Option<String> = row.try_get(5)?;
    let updated_at: String = row.try_get(6)?;
    let lines = lines
        .map(|l| serde_json::from_str::<Vec<Line>>(&l))
        .transpose()
        .context("fulfilment_orders.lines")?;
    let process = Process {
        order_id,
        customer_id,
        stage: Stage::parse(&stage).with_context(|| format!("unknown stage {stage:?}"))?,
        accepted: accepted != 0,
        billed: billed != 0,
        lines,
        reason,
    };
    Ok(Some((process, updated_at)))
}

/// Writes a process: inserts it when `existed` is false, updates it otherwise.
pub(crate) async fn save(
    tx: &mut AnyConnection,
    process: &Process,
    existed: bool,
) -> anyhow::Result<()> {
    let sql = if existed {
        "UPDATE fulfilment_orders SET customer_id = $2, stage = $3, accepted = $4, billed = $5, \
         lines = $6, reason = $7, updated_at = $8 WHERE order_id = $1"
    } else {
        "INSERT INTO fulfilment_orders (order_id, customer_id, stage, accepted, billed, lines, reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    };
    let lines = process
        .lines
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    sqlx::query(sql)
        .bind(process.order_id.to_string())
        .bind(process.customer_id.as_str())
        .bind(process.stage.as_str())
        .bind(i64::from(process.accepted))
        .bind(i64::from(process.billed))
        .bind(lines)
        .bind(process.reason.clone())
        .bind(feed::atom::format_time(&chrono::Utc::now()))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
