//! `GET /orders/{id}`: an order's fulfilment process as JSON.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use feed::db::Database;
use kit::ApiError;
use serde::Serialize;
use uuid::Uuid;

use crate::contracts::Line;
use crate::process::Stage;
use crate::store;

/// What `GET /orders/{id}` answers.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessView {
    order_id: Uuid,
    customer_id: String,
    state: Stage,
    accepted: bool,
    billed: bool,
    lines: Option<Vec<Line>>,
    reason: Option<String>,
    updated_at: String,
}

pub(crate) fn router(db: Database) -> Router {
    Router::new()
        .route("/orders/{id}", get(show))
        .with_state(db)
}

async fn show(
    State(db): State<Database>,
    Path(id): Path<String>,
) -> Result<Json<ProcessView>, ApiError> {
    let view = order(&db, &id).await?;
    Ok(Json(view))
}

/// The process of order `id`; 404 for an id that is not a UUID or not known.
pub(crate) async fn order(db: &Database, id: &str) -> Result<ProcessView, ApiError> {
    let unknown = || ApiError::NotFound(format!("no fulfilment process for order {id}"));
    let order_id = Uuid::parse_str(id).map_err(|_| unknown())?;
    let mut conn = db.pool().acquire().await?;
    let (p, updated_at) = store::find(&mut conn, order_id)
        .await
        .map_err(db_error)?
        .ok_or_else(unknown)?;
    Ok(ProcessView {
        order_id: p.order_id,
        customer_id: p.customer_id,
        state: p.stage,
        accepted: p.accepted,
        billed: p.billed,
        lines: p.lines,
        reason: p.reason,
        updated_at,
    })
}

/// A database failure keeps its 503/500 meaning; anything else is a bug.
fn db_error(e: anyhow::Error) -> ApiError {
    match e.downcast::<sqlx::Error>() {
        Ok(e) => e.into(),
        Err(e) => ApiError::Internal(e),
    }
}
