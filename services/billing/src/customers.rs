//! Customer accounts: `PUT /customers/{id}` sets the credit limit, `GET
//! /customers/{id}` shows the account: limit, charged total, what is left, the charges
//! and the refused orders. A customer billing has never heard of is a 404; one with
//! decisions but no account of its own is shown with the default limit.

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

use crate::charging::{charged_total, limit_of};

/// The longest customer id (ids appear in stream ids and URL paths).
const MAX_CUSTOMER_ID: usize = 64;

/// The routes' state: the service and the limit of customers without an account.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    pub(crate) service: Service,
    pub(crate) default_limit: i64,
}

pub(crate) fn router(accounts: Accounts) -> Router {
    Router::new()
        .route("/customers/{id}", get(fetch).put(set_limit))
        .with_state(accounts)
}

/// Whether `id` can be a customer id: what sales accepts, 1 to 64 characters from
/// `A-Z a-z 0-9 - _ . ~`.
fn is_customer_id(id: &str) -> bool {
    (1..=MAX_CUSTOMER_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && id != "."
        && id != ".."
}

#[derive(Debug, Deserialize)]
struct LimitInput {
    credit_limit_cents: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Charge {
    order_id: String,
    amount_cents: i64,
    currency: String,
    charged_at: String,
}

#[derive(Debug, Serialize)]
struct Refusal {
    order_id: String,
    amount_cents: i64,
    currency: String,
    reason: String,
    refused_at: String,
}

/// An account as the API shows it.
#[derive(Debug, Serialize)]
struct Account {
    customer_id: String,
    credit_limit_cents: i64,
    /// True when the customer has no account of its own and the default applies.
    default_limit: bool,
    charged_cents: i64,
    available_cents: i64,
    charges: Vec<Charge>,
    refused: Vec<Refusal>,
}

/// Reads the account through `conn`; None when billing knows nothing of the customer.
async fn account(
    conn: &mut AnyConnection,
    customer_id: &str,
    default_limit: i64,
) -> Result<Option<Account>, ApiError> {
    let limit = limit_of(conn, customer_id).await?;
    type Row = (String, i64, String, String, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, amount_cents, currency, outcome, reason, decided_at FROM billing_decisions \
         WHERE customer_id = $1 ORDER BY decided_at, order_id",
    )
    .bind(customer_id)
    .fetch_all(&mut *conn)
    .await?;
    if limit.is_none() && rows.is_empty() {
        return Ok(None);
    }
    let charged_cents = charged_total(conn, customer_id).await?;
    let credit_limit_cents = limit.unwrap_or(default_limit);
    let mut charges = Vec::new();
    let mut refused = Vec::new();
    for (order_id, amount_cents, currency, outcome, reason, decided_at) in rows {
        if outcome == "billed" {
            charges.push(Charge {
                order_id,
                amount_cents,
                currency,
                charged_at: decided_at,
            });
        } else {
            refused.push(Refusal {
                order_id,
                amount_cents,
                currency,
                reason: reason.unwrap_or_default(),
                refused_at: decided_at,
            });
        }
    }
    Ok(Some(Account {
        customer_id: customer_id.to_owned(),
        credit_limit_cents,
        default_limit: limit.is_none(),
        charged_cents,
        available_cents: credit_limit_cents.saturating_sub(charged_cents).max(0),
        charges,
        refused,
    }))
}

/// Sets the limit: the row and `CreditLimitSet`, unless it is unchanged.
async fn set_credit_limit(
    a: &Accounts,
    customer_id: &str,
    limit: i64,
) -> Result<Account, ApiError> {
    let s = &a.service;
    let mut tx = s.db.begin().await?;
    if limit_of(&mut tx, customer_id).await? != Some(limit) {
        sqlx::query(
            "INSERT INTO billing_customers (customer_id, credit_limit_cents, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id) DO UPDATE SET credit_limit_cents = excluded.credit_limit_cents, \
             updated_at = excluded.updated_at",
        )
        .bind(customer_id)
        .bind(limit)
        .bind(now_micros().to_rfc3339())
        .execute(&mut *tx)
        .await?;
        let stream = StreamId::parse(format!("customer-{customer_id}"))
            .map_err(|e| ApiError::invalid("customer_id", e.to_string()))?;
        let event_type = EventType::parse("CreditLimitSet").expect("a valid event type");
        let data = serde_json::json!({ "customer_id": customer_id, "credit_limit_cents": limit });
        s.log
            .append_unnumbered(
                &mut tx,
                Expected::Any,
                &[NewEvent::new(stream, event_type, data)],
            )
            .await?;
    }
    let account = account(&mut tx, customer_id, a.default_limit)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "account {customer_id} vanished inside its transaction"
            ))
        })?;
    tx.commit().await?;
    Ok(account)
}

async fn set_limit(
    State(a): State<Accounts>,
    Path(customer_id): Path<String>,
    ApiJson(input): ApiJson<LimitInput>,
) -> Result<Response, ApiError> {
    if !is_customer_id(&customer_id) {
        return Err(ApiError::invalid(
            "customer_id",
            format!("must be 1 to {MAX_CUSTOMER_ID} characters from A-Z a-z 0-9 - _ . ~"),
        ));
    }
    let limit = input
        .credit_limit_cents
        .ok_or_else(|| ApiError::invalid("credit_limit_cents", "is required"))?;
    if limit < 0 {
        return Err(ApiError::invalid(
            "credit_limit_cents",
            "must not be negative",
        ));
    }
    let account = set_credit_limit(&a, &customer_id, limit).await?;
    let location = format!("{}/customers/{customer_id}", a.service.feed.base_url());
    let mut r = Json(account).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    Ok(r)
}

async fn fetch(
    State(a): State<Accounts>,
    Path(customer_id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no customer {customer_id}"));
    if !is_customer_id(&customer_id) {
        return Err(not_found());
    }
    let mut conn = a.service.db.pool().acquire().await?;
    let account = account(&mut conn, &customer_id, a.default_limit)
        .await?
        .ok_or_else(not_found)?;
    let mut r = Json(account).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}
