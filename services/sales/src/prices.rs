//! Prices: `PUT /prices/{product_id}` sets a product's unit price and currency,
//! `GET /prices/{product_id}` reads it. Only products in the catalog replica can be
//! priced (404 otherwise). A change appends `PriceChanged` to the stream
//! `price-<product_id>`; setting the price it already has appends nothing.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use feed::event::{EventType, NewEvent, StreamId, now_micros};
use feed::store::Expected;
use kit::{ApiError, ApiJson, Service};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use uuid::Uuid;

/// The highest unit price accepted: ten billion in major units.
const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000_000;

pub(crate) fn router(service: Service) -> Router {
    Router::new()
        .route("/prices/{product_id}", get(fetch).put(set))
        .with_state(service)
}

/// A product's price, as stored, shown and carried by `PriceChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Price {
    pub(crate) product_id: Uuid,
    pub(crate) unit_price_cents: i64,
    pub(crate) currency: String,
}

/// The body of `PUT /prices/{product_id}`; optional fields so a missing one is named.
#[derive(Debug, Deserialize)]
struct PriceInput {
    unit_price_cents: Option<i64>,
    currency: Option<String>,
}

impl PriceInput {
    fn validate(self, product_id: Uuid) -> Result<Price, ApiError> {
        let unit_price_cents = self
            .unit_price_cents
            .ok_or_else(|| ApiError::invalid("unit_price_cents", "is required"))?;
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&unit_price_cents) {
            return Err(ApiError::invalid(
                "unit_price_cents",
                format!("must be between 0 and {MAX_UNIT_PRICE_CENTS}"),
            ));
        }
        let currency = self
            .currency
            .ok_or_else(|| ApiError::invalid("currency", "is required"))?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "currency",
                "must be an ISO 4217 code: three uppercase letters",
            ));
        }
        Ok(Price {
            product_id,
            unit_price_cents,
            currency,
        })
    }
}

fn parse_product_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no product {id} in the catalog")))
}

/// The product's price and its stream version, read through `conn`.
pub(crate) async fn price_of(
    conn: &mut AnyConnection,
    product_id: Uuid,
) -> Result<Option<(Price, u64)>, sqlx::Error> {
    let row: Option<(i64, String, i64)> = sqlx::query_as(
        "SELECT unit_price_cents, currency, version FROM sales_prices WHERE product_id = $1",
    )
    .bind(product_id.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(unit_price_cents, currency, version)| {
        (
            Price {
                product_id,
                unit_price_cents,
                currency,
            },
            u64::try_from(version).unwrap_or(0),
        )
    }))
}

/// Sets the price: the row and `PriceChanged`, unless it is unchanged.
async fn set_price(s: &Service, price: Price) -> Result<Price, ApiError> {
    let mut tx = s.db.begin().await?;
    if !crate::replica::is_listed(&mut tx, price.product_id).await? {
        return Err(ApiError::NotFound(format!(
            "no product {} in the catalog",
            price.product_id
        )));
    }
    let current = price_of(&mut tx, price.product_id).await?;
    let version = match &current {
        Some((p, _)) if *p == price => return Ok(price),
        Some((_, v)) => *v,
        None => 0,
    };
    sqlx::query(
        "INSERT INTO sales_prices (product_id, unit_price_cents, currency, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (product_id) DO UPDATE SET \
         unit_price_cents = excluded.unit_price_cents, currency = excluded.currency, \
         version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(price.product_id.to_string())
    .bind(price.unit_price_cents)
    .bind(&price.currency)
    .bind((version + 1) as i64)
    .bind(now_micros().to_rfc3339())
    .execute(&mut *tx)
    .await?;
    let stream = StreamId::parse(format!("price-{}", price.product_id))
        .expect("`price-` and a UUID form a valid stream id");
    let event_type = EventType::parse("PriceChanged").expect("a valid event type");
    let data = serde_json::to_value(&price).map_err(|e| ApiError::Internal(e.into()))?;
    s.log
        .append_unnumbered(
            &mut tx,
            Expected::Version(version),
            &[NewEvent::new(stream, event_type, data)],
        )
        .await?;
    tx.commit().await?;
    Ok(price)
}

/// Answers 200 with the price and, as every command does, its `Location`.
async fn set(
    State(s): State<Service>,
    Path(product_id): Path<String>,
    ApiJson(input): ApiJson<PriceInput>,
) -> Result<Response, ApiError> {
    let price = input.validate(parse_product_id(&product_id)?)?;
    let price = set_price(&s, price).await?;
    let location = format!("{}/prices/{}", s.feed.base_url(), price.product_id);
    let mut r = Json(price).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    Ok(r)
}

async fn fetch(
    State(s): State<Service>,
    Path(product_id): Path<String>,
) -> Result<Json<Price>, ApiError> {
    let product_id = parse_product_id(&product_id)?;
    let mut conn = s.db.pool().acquire().await?;
    let (price, _) = price_of(&mut conn, product_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("product {product_id} has no price")))?;
    Ok(Json(price))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_need_a_non_negative_amount_and_an_uppercase_currency_code() {
        let check = |cents: Option<i64>, currency: Option<&str>| {
            PriceInput {
                unit_price_cents: cents,
                currency: currency.map(str::to_owned),
            }
            .validate(Uuid::nil())
        };
        assert!(check(Some(0), Some("EUR")).is_ok());
        for (cents, currency, field) in [
            (Some(-1), Some("EUR"), "unit_price_cents"),
            (None, Some("EUR"), "unit_price_cents"),
            (Some(1), Some("eur"), "currency"),
            (Some(1), Some("EURO"), "currency"),
            (Some(1), None, "currency"),
        ] {
            match check(cents, currency) {
                Err(ApiError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{cents:?} {currency:?}: {other:?}"),
            }
        }
    }
}
