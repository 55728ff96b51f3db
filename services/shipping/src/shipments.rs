//! `GET /shipments/{order_id}`: a shipment and its packing slip as JSON.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use feed::db::Database;
use kit::ApiError;
use uuid::Uuid;

use crate::store::{self, Shipment};

pub(crate) fn router(db: Database) -> Router {
    Router::new()
        .route("/shipments/{order_id}", get(show))
        .with_state(db)
}

async fn show(
    State(db): State<Database>,
    Path(order_id): Path<String>,
) -> Result<Json<Shipment>, ApiError> {
    Ok(Json(shipment(&db, &order_id).await?))
}

/// The shipment of order `id`; 404 for an id that is not a UUID or has no shipment.
pub(crate) async fn shipment(db: &Database, id: &str) -> Result<Shipment, ApiError> {
    let unknown = || ApiError::NotFound(format!("no shipment for order {id}"));
    let order_id = Uuid::parse_str(id).map_err(|_| unknown())?;
    let mut conn = db.pool().acquire().await?;
    store::find(&mut conn, order_id)
        .await
        .map_err(db_error)?
        .ok_or_else(unknown)
}

/// A database failure keeps its 503/500 meaning; anything else is a bug.
fn db_error(e: anyhow::Error) -> ApiError {
    match e.downcast::<sqlx::Error>() {
        Ok(e) => e.into(),
        Err(e) => ApiError::Internal(e),
    }
}
