//! Orders: `POST /orders` (AcceptOrder) and `GET /orders/{id}`.
//!
//! Accepting an order reads each line's product (from the catalog replica) and price
//! inside the write transaction, so the unit prices in `OrderAccepted` are exactly
//! the prices in force when the order was stored. Every line must be priced in the
//! same currency. Refusals are 422s naming the line's field, and write nothing.

use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use feed::event::{EventType, NewEvent, StreamId, now_micros};
use feed::store::Expected;
use kit::{ApiError, ApiJson, Service};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The most lines an order may have.
const MAX_LINES: usize = 100;
/// The largest quantity of one line.
const MAX_QUANTITY: i64 = 1_000_000;
/// The longest customer id; customer ids are used in stream ids and URL paths.
const MAX_CUSTOMER_ID: usize = 64;
/// The longest email address (RFC 5321's path limit).
const MAX_EMAIL: usize = 254;

pub(crate) fn router(service: Service) -> Router {
    Router::new()
        .route("/orders", post(accept))
        .route("/orders/{id}", get(fetch))
        .with_state(service)
}

/// An order line as `OrderAccepted` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Line {
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i64,
    pub(crate) unit_price_cents: i64,
}

/// The `OrderAccepted` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrderAccepted {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) email: String,
    pub(crate) lines: Vec<Line>,
    pub(crate) total_cents: i64,
    pub(crate) currency: String,
}

/// The body of `POST /orders`; optional fields so a missing one is named.
#[derive(Debug, Deserialize)]
struct OrderInput {
    customer_id: Option<String>,
    email: Option<String>,
    lines: Option<Vec<LineInput>>,
}

#[derive(Debug, Deserialize)]
struct LineInput {
    product_id: Option<String>,
    quantity: Option<i64>,
}

/// An order that passed the checks that need no database.
#[derive(Debug)]
struct OrderRequest {
    customer_id: String,
    email: String,
    lines: Vec<(Uuid, i64)>,
}

/// Whether `id` can be a customer id: 1 to 64 characters that are safe in a URL path
/// and a stream id (a UUID, or a token like `alice`).
fn is_customer_id(id: &str) -> bool {
    (1..=MAX_CUSTOMER_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && id != "."
        && id != ".."
}

impl OrderInput {
    fn validate(self) -> Result<OrderRequest, ApiError> {
        let customer_id = self
            .customer_id
            .ok_or_else(|| ApiError::invalid("customer_id", "is required"))?;
        if !is_customer_id(&customer_id) {
            return Err(ApiError::invalid(
                "customer_id",
                format!("must be 1 to {MAX_CUSTOMER_ID} characters from A-Z a-z 0-9 - _ . ~"),
            ));
        }
        let email = self
            .email
            .ok_or_else(|| ApiError::invalid("email", "is required"))?;
        if email.len() > MAX_EMAIL || lettre::Address::from_str(&email).is_err() {
            return Err(ApiError::invalid("email", "is not an email address"));
        }
        let input = self
            .lines
            .ok_or_else(|| ApiError::invalid("lines", "is required"))?;
        if input.is_empty() || input.len() > MAX_LINES {
            return Err(ApiError::invalid(
                "lines",
                format!("must hold 1 to {MAX_LINES} lines"),
            ));
        }
        let mut lines = Vec::with_capacity(input.len());
        for (i, line) in input.into_iter().enumerate() {
            let product_id = line.product_id.ok_or_else(|| {
                ApiError::invalid(format!("lines[{i}].product_id"), "is required")
            })?;
            let product_id = Uuid::parse_str(&product_id).map_err(|_| {
                ApiError::invalid(
                    format!("lines[{i}].product_id"),
                    "is not a product id (a UUID)",
                )
            })?;
            let quantity = line
                .quantity
                .ok_or_else(|| ApiError::invalid(format!("lines[{i}].quantity"), "is required"))?;
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(ApiError::invalid(
                    format!("lines[{i}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            lines.push((product_id, quantity));
        }
        Ok(OrderRequest {
            customer_id,
            email,
            lines,
        })
    }
}

/// Prices the order, stores it and appends `OrderAccepted`, all in one transaction.
async fn accept_order(s: &Service, request: OrderRequest) -> Result<OrderAccepted, ApiError> {
    let order_id = Uuid::now_v7();
    let mut tx = s.db.begin().await?;
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut currency: Option<String> = None;
    let mut total_cents: i64 = 0;
    for (i, (product_id, quantity)) in request.lines.into_iter().enumerate() {
        let field = format!("lines[{i}].product_id");
        if !crate::replica::is_listed(&mut tx, product_id).await? {
            return Err(ApiError::invalid(
                field,
                format!("product {product_id} is not in the catalog"),
            ));
        }
        let (price, _) = crate::prices::price_of(&mut tx, product_id)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(field.clone(), format!("product {product_id} has no price"))
            })?;
        match &currency {
            None => currency = Some(price.currency.clone()),
            Some(c) if *c != price.currency => {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "is priced in {}, but the order is in {c}; an order has one currency",
                        price.currency
                    ),
                ));
            }
            Some(_) => {}
        }
        total_cents = price
            .unit_price_cents
            .checked_mul(quantity)
            .and_then(|line_total| total_cents.checked_add(line_total))
            .ok_or_else(|| ApiError::invalid("lines", "the order total is too large"))?;
        lines.push(Line {
            product_id,
            quantity,
            unit_price_cents: price.unit_price_cents,
        });
    }
    let order = OrderAccepted {
        order_id,
        customer_id: request.customer_id,
        email: request.email,
        lines,
        total_cents,
        currency: currency.expect("an order has at least one line, which set the currency"),
    };
    let accepted_at = now_micros();
    sqlx::query(
        "INSERT INTO sales_orders (order_id, customer_id, email, total_cents, currency, accepted_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id.to_string())
    .bind(&order.customer_id)
    .bind(&order.email)
    .bind(order.total_cents)
    .bind(&order.currency)
    .bind(accepted_at.to_rfc3339())
    .execute(&mut *tx)
    .await?;
    for (i, line) in order.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO sales_order_lines (order_id, line_no, product_id, quantity, unit_price_cents) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(order_id.to_string())
        .bind(i as i64)
        .bind(line.product_id.to_string())
        .bind(line.quantity)
        .bind(line.unit_price_cents)
        .execute(&mut *tx)
        .await?;
    }
    let data = serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.into()))?;
    let mut event = NewEvent::new(
        stream_of(order_id),
        EventType::parse("OrderAccepted").expect("valid"),
        data,
    );
    event.occurred_at = accepted_at;
    s.log
        .append_unnumbered(&mut tx, Expected::NoStream, &[event])
        .await?;
    tx.commit().await?;
    Ok(order)
}

/// The stream of everything about one order.
pub(crate) fn stream_of(order_id: Uuid) -> StreamId {
    StreamId::parse(format!("order-{order_id}"))
        .expect("`order-` and a UUID form a valid stream id")
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize)]
struct OrderView {
    #[serde(flatten)]
    order: OrderAccepted,
    accepted_at: String,
    confirmation_sent_at: Option<String>,
}

async fn find_order(s: &Service, order_id: Uuid) -> Result<OrderView, ApiError> {
    type Row = (String, String, i64, String, String, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT customer_id, email, total_cents, currency, accepted_at, confirmation_sent_at \
         FROM sales_orders WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(s.db.pool())
    .await?;
    let (customer_id, email, total_cents, currency, accepted_at, confirmation_sent_at) =
        row.ok_or_else(|| ApiError::NotFound(format!("no order {order_id}")))?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT product_id, quantity, unit_price_cents FROM sales_order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id.to_string())
    .fetch_all(s.db.pool())
    .await?;
    let lines = rows
        .into_iter()
        .map(|(product_id, quantity, unit_price_cents)| {
            Ok(Line {
                product_id: Uuid::parse_str(&product_id)
                    .map_err(|e| ApiError::Internal(e.into()))?,
                quantity,
                unit_price_cents,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(OrderView {
        order: OrderAccepted {
            order_id,
            customer_id,
            email,
            lines,
            total_cents,
            currency,
        },
        accepted_at,
        confirmation_sent_at,
    })
}

async fn accept(
    State(s): State<Service>,
    ApiJson(input): ApiJson<OrderInput>,
) -> Result<Response, ApiError> {
    let order = accept_order(&s, input.validate()?).await?;
    let location = format!("{}/orders/{}", s.feed.base_url(), order.order_id);
    let mut r = (StatusCode::CREATED, Json(&order)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    Ok(r)
}

async fn fetch(State(s): State<Service>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let order_id =
        Uuid::parse_str(&id).map_err(|_| ApiError::NotFound(format!("no order {id}")))?;
    let view = find_order(&s, order_id).await?;
    let mut r = Json(view).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: serde_json::Value) -> String {
        let input: OrderInput = serde_json::from_value(json).expect("shape");
        match input.validate() {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_of_an_order_is_named() {
        let p = Uuid::nil().to_string();
        let ok = serde_json::json!({"customer_id": "alice", "email": "a@example.com", "lines": [{"product_id": p, "quantity": 1}]});
        let input: OrderInput = serde_json::from_value(ok.clone()).expect("shape");
        assert!(input.validate().is_ok());
        let cases = [
            ("customer_id", serde_json::json!("a/b"), "customer_id"),
            ("customer_id", serde_json::json!(""), "customer_id"),
            ("email", serde_json::json!("not-an-address"), "email"),
            ("lines", serde_json::json!([]), "lines"),
            (
                "lines",
                serde_json::json!([{"product_id": p, "quantity": 1}, {"product_id": p, "quantity": -2}]),
                "lines[1].quantity",
            ),
            (
                "lines",
                serde_json::json!([{"product_id": "kettle", "quantity": 1}]),
                "lines[0].product_id",
            ),
            (
                "lines",
                serde_json::json!([{"quantity": 1}]),
                "lines[0].product_id",
            ),
        ];
        for (key, value, field) in cases {
            let mut json = ok.clone();
            json[key] = value;
            assert_eq!(field_of(json), field);
        }
        let mut json = ok;
        json.as_object_mut().expect("object").remove("email");
        assert_eq!(field_of(json), "email");
    }
}
