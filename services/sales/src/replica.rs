//! The catalog replica: product names by id, kept from the catalog's feed.
//!
//! `ProductAdded` / `ProductUpdated` upsert the name (and revive a deleted id);
//! `ProductDeleted` marks the product deleted but keeps its name (the one it carries,
//! the product as it was when deleted; events from before it carried the product only
//! keep the name already known), so that orders placed before the deletion can still
//! be confirmed with it. Other event types are skipped.

use feed::event::Event;
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::AnyConnection;
use uuid::Uuid;

/// The replica's subscription handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CatalogReplica;

#[derive(Debug, Deserialize)]
struct ProductNamed {
    product_id: Uuid,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ProductDeleted {
    product_id: Uuid,
    name: Option<String>,
}

impl Handler for CatalogReplica {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match event.event_type.as_str() {
                "ProductAdded" | "ProductUpdated" => {
                    let p: ProductNamed = serde_json::from_value(event.data.clone())?;
                    sqlx::query(
                        "INSERT INTO sales_products (product_id, name, deleted) VALUES ($1, $2, 0) \
                         ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, deleted = 0",
                    )
                    .bind(p.product_id.to_string())
                    .bind(&p.name)
                    .execute(&mut *tx)
                    .await?;
                }
                "ProductDeleted" => {
                    let p: ProductDeleted = serde_json::from_value(event.data.clone())?;
                    match &p.name {
                        Some(name) => sqlx::query(
                            "INSERT INTO sales_products (product_id, name, deleted) VALUES ($1, $2, 1) \
                             ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, deleted = 1",
                        )
                        .bind(p.product_id.to_string())
                        .bind(name),
                        None => sqlx::query(
                            "UPDATE sales_products SET deleted = 1 WHERE product_id = $1",
                        )
                        .bind(p.product_id.to_string()),
                    }
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}

/// Whether `product_id` is in the catalog (known and not deleted).
pub(crate) async fn is_listed(
    conn: &mut AnyConnection,
    product_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let deleted: Option<i64> =
        sqlx::query_scalar("SELECT deleted FROM sales_products WHERE product_id = $1")
            .bind(product_id.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(deleted == Some(0))
}

/// The product's name as the replica knows it now (also after a deletion).
pub(crate) async fn name_of(
    conn: &mut AnyConnection,
    product_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM sales_products WHERE product_id = $1")
        .bind(product_id)
        .fetch_optional(conn)
        .await
}
