//! `GET /customers/{id}`: a customer's tier and how it was earned.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use feed::db::Database;
use kit::ApiError;

use crate::store::{self, Customer};

pub(crate) fn router(db: Database) -> Router {
    Router::new()
        .route("/customers/{id}", get(show))
        .with_state(db)
}

async fn show(
    State(db): State<Database>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    Ok(Json(customer(&db, &id).await?))
}

/// Customer `id`; 404 for a customer no order named.
pub(crate) async fn customer(db: &Database, id: &str) -> Result<Customer, ApiError> {
    let unknown = || ApiError::NotFound(format!("no loyalty record for customer {id}"));
    let mut conn = db.pool().acquire().await?;
    store::find(&mut conn, id)
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
