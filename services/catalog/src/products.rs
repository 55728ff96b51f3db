//! Products: `POST /products`, `PUT /products/{id}` (full replace), `DELETE
//! /products/{id}`, `GET /products/{id}`, `GET /products`.
//!
//! Every command writes the `catalog_products` row and appends its event to the
//! product's stream in one transaction; the append names the version the command
//! read (`Expected::Version`), so two racing updates cannot both win: the loser gets a
//! 409 and writes nothing.
//!
//! `If-Match` follows RFC 9110 13.1.1: the product's ETag is its version (`"3"`); a
//! `PUT`/`DELETE` whose `If-Match` names no current tag (another version, a weak tag,
//! a tag that is no version at all) is a 412 and changes nothing; a header that is not
//! entity-tag syntax is a 400.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use feed::event::{EventType, NewEvent, StreamId, now_micros};
use feed::store::Expected;
use kit::{ApiError, ApiJson, Service};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// The longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// The most pictures a product may have.
const MAX_PICTURES: usize = 20;
/// The longest picture URL, in bytes.
const MAX_URL_BYTES: usize = 2048;
/// Upper bounds that keep sums over many products (shipping weights) far from
/// overflowing: 1000 tonnes, 1 km.
const MAX_WEIGHT_GRAMS: i64 = 1_000_000_000;
const MAX_SIZE_MM: i64 = 1_000_000;

pub(crate) fn router(service: Service) -> Router {
    Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{id}", get(fetch).put(replace).delete(remove))
        .with_state(service)
}

/// A product's size in millimetres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Size {
    l: i64,
    w: i64,
    h: i64,
}

/// A valid product, as stored and as carried by `ProductAdded` / `ProductUpdated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Product {
    product_id: Uuid,
    name: String,
    description: String,
    pictures: Vec<String>,
    weight_grams: i64,
    size_mm: Size,
}

/// A product as the API shows it: the product and its version (also the ETag).
#[derive(Debug, Serialize)]
struct ProductView {
    #[serde(flatten)]
    product: Product,
    version: u64,
}

/// The body of `POST /products` and `PUT /products/{id}`. Every field is optional
/// here so that a missing one is reported by name (422), not as a parse error.
#[derive(Debug, Deserialize)]
struct ProductInput {
    name: Option<String>,
    description: Option<String>,
    pictures: Option<Vec<String>>,
    weight_grams: Option<i64>,
    size_mm: Option<SizeInput>,
}

#[derive(Debug, Deserialize)]
struct SizeInput {
    l: Option<i64>,
    w: Option<i64>,
    h: Option<i64>,
}

impl ProductInput {
    /// Checks every field; the first problem is a 422 naming its field.
    fn validate(self, product_id: Uuid) -> Result<Product, ApiError> {
        let name = self
            .name
            .ok_or_else(|| ApiError::invalid("name", "is required"))?;
        if name.trim().is_empty() {
            return Err(ApiError::invalid("name", "must not be blank"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "name",
                "must not contain control characters",
            ));
        }
        let description = self.description.unwrap_or_default();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(ApiError::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        let pictures = self.pictures.unwrap_or_default();
        if pictures.len() > MAX_PICTURES {
            return Err(ApiError::invalid(
                "pictures",
                format!("at most {MAX_PICTURES} pictures"),
            ));
        }
        for (i, picture) in pictures.iter().enumerate() {
            check_picture_url(picture)
                .map_err(|detail| ApiError::invalid(format!("pictures[{i}]"), detail))?;
        }
        let weight_grams = self
            .weight_grams
            .ok_or_else(|| ApiError::invalid("weight_grams", "is required"))?;
        if !(1..=MAX_WEIGHT_GRAMS).contains(&weight_grams) {
            return Err(ApiError::invalid(
                "weight_grams",
                format!("must be between 1 and {MAX_WEIGHT_GRAMS}"),
            ));
        }
        let size = self
            .size_mm
            .ok_or_else(|| ApiError::invalid("size_mm", "is required"))?;
        let dimension = |value: Option<i64>, field: &str| -> Result<i64, ApiError> {
            let field = format!("size_mm.{field}");
            let v = value.ok_or_else(|| ApiError::invalid(field.clone(), "is required"))?;
            if (1..=MAX_SIZE_MM).contains(&v) {
                Ok(v)
            } else {
                Err(ApiError::invalid(
                    field,
                    format!("must be between 1 and {MAX_SIZE_MM}"),
                ))
            }
        };
        let size_mm = Size {
            l: dimension(size.l, "l")?,
            w: dimension(size.w, "w")?,
            h: dimension(size.h, "h")?,
        };
        Ok(Product {
            product_id,
            name,
            description,
            pictures,
            weight_grams,
            size_mm,
        })
    }
}

fn check_picture_url(s: &str) -> Result<(), String> {
    if s.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(s).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    Ok(())
}

fn stream_of(id: Uuid) -> StreamId {
    StreamId::parse(format!("product-{id}"))
        .expect("`product-` and a UUID are URL-safe stream characters")
}

fn event(kind: &'static str, id: Uuid, data: serde_json::Value) -> NewEvent {
    let event_type = EventType::parse(kind).expect("the catalog's event type names are valid");
    NewEvent::new(stream_of(id), event_type, data)
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.into()))
}

/// Parses a path id; anything that is not a UUID names no product (404).
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

fn not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("no product {id}"))
}

/// What an `If-Match` header demands (RFC 9110 13.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Precondition {
    /// No header, or `*`: the product must exist, any version will do.
    Exists,
    /// One of these entity tags must be the product's current strong ETag
    /// (`"<version>"`). Weak tags never match: If-Match compares strongly.
    OneOf(Vec<String>),
}

impl Precondition {
    /// Whether the product at `version` satisfies it.
    fn holds(&self, version: u64) -> bool {
        match self {
            Self::Exists => true,
            Self::OneOf(tags) => {
                let current = format!("\"{version}\"");
                tags.contains(&current)
            }
        }
    }
}

/// Parses `If-Match`: absent or `*` is [`Precondition::Exists`]; a list of entity
/// tags (`"3"`, `W/"3"`, `"3", "4"`) is [`Precondition::OneOf`]; anything that is not
/// entity-tag syntax is a 400, since no reading of it could be evaluated.
fn if_match(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter().peekable();
    if values.peek().is_none() {
        return Ok(Precondition::Exists);
    }
    let mut tags = Vec::new();
    for value in values {
        let value = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("If-Match is not ASCII".into()))?;
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Precondition::Exists);
            }
            let (weak, opaque) = match item.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let is_tag = opaque.len() >= 2
                && opaque.starts_with('"')
                && opaque.ends_with('"')
                && opaque[1..opaque.len() - 1]
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b));
            if !is_tag {
                return Err(ApiError::BadRequest(format!(
                    "If-Match {item:?} is not an entity tag (expected e.g. \"3\")"
                )));
            }
            if !weak {
                tags.push(opaque.to_owned());
            }
        }
    }
    Ok(Precondition::OneOf(tags))
}

type Row = (String, String, String, String, i64, i64, i64, i64, i64);

/// The columns [`decode`] reads, in its order (a macro: sqlx takes only static SQL).
macro_rules! select_products {
    ($rest:literal) => {
        concat!(
            "SELECT product_id, name, description, pictures, weight_grams, size_l, size_w, size_h, version \
             FROM catalog_products ",
            $rest
        )
    };
}

fn decode(row: Row) -> Result<ProductView, ApiError> {
    let (id, name, description, pictures, weight_grams, l, w, h, version) = row;
    let internal =
        |e: String| ApiError::Internal(anyhow::anyhow!("corrupt catalog_products row {id}: {e}"));
    Ok(ProductView {
        product: Product {
            product_id: Uuid::parse_str(&id).map_err(|e| internal(e.to_string()))?,
            name,
            description,
            pictures: serde_json::from_str(&pictures).map_err(|e| internal(e.to_string()))?,
            weight_grams,
            size_mm: Size { l, w, h },
        },
        version: u64::try_from(version).map_err(|e| internal(e.to_string()))?,
    })
}

/// Adds a product: the row and `ProductAdded`, version 1.
async fn add(s: &Service, product: Product) -> Result<ProductView, ApiError> {
    let now = now_micros().to_rfc3339();
    let mut tx = s.db.begin().await?;
    sqlx::query(
        "INSERT INTO catalog_products \
         (product_id, name, description, pictures, weight_grams, size_l, size_w, size_h, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9)",
    )
    .bind(product.product_id.to_string())
    .bind(&product.name)
    .bind(&product.description)
    .bind(serde_json::to_string(&product.pictures).map_err(|e| ApiError::Internal(e.into()))?)
    .bind(product.weight_grams)
    .bind(product.size_mm.l)
    .bind(product.size_mm.w)
    .bind(product.size_mm.h)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    let added = event("ProductAdded", product.product_id, to_json(&product)?);
    s.log
        .append_unnumbered(&mut tx, Expected::NoStream, &[added])
        .await?;
    tx.commit().await?;
    Ok(ProductView {
        product,
        version: 1,
    })
}

/// The product as stored, read inside `tx`; 404 when there is none, 412 when it does
/// not satisfy the client's `If-Match`.
async fn current(
    tx: &mut sqlx::AnyConnection,
    id: Uuid,
    precondition: &Precondition,
) -> Result<ProductView, ApiError> {
    let row: Option<Row> = sqlx::query_as(select_products!("WHERE product_id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    let view = decode(row.ok_or_else(|| not_found(id))?)?;
    if precondition.holds(view.version) {
        Ok(view)
    } else {
        Err(ApiError::PreconditionFailed(format!(
            "product {id} is at version {} (ETag \"{}\"), which If-Match does not name",
            view.version, view.version
        )))
    }
}

/// Replaces a product: the row and `ProductUpdated`.
async fn update(
    s: &Service,
    product: Product,
    precondition: &Precondition,
) -> Result<ProductView, ApiError> {
    let id = product.product_id;
    let mut tx = s.db.begin().await?;
    let version = current(&mut tx, id, precondition).await?.version;
    sqlx::query(
        "UPDATE catalog_products SET name = $2, description = $3, pictures = $4, weight_grams = $5, \
         size_l = $6, size_w = $7, size_h = $8, version = $9, updated_at = $10 WHERE product_id = $1",
    )
    .bind(id.to_string())
    .bind(&product.name)
    .bind(&product.description)
    .bind(serde_json::to_string(&product.pictures).map_err(|e| ApiError::Internal(e.into()))?)
    .bind(product.weight_grams)
    .bind(product.size_mm.l)
    .bind(product.size_mm.w)
    .bind(product.size_mm.h)
    .bind((version + 1) as i64)
    .bind(now_micros().to_rfc3339())
    .execute(&mut *tx)
    .await?;
    let updated = event("ProductUpdated", id, to_json(&product)?);
    s.log
        .append_unnumbered(&mut tx, Expected::Version(version), &[updated])
        .await?;
    tx.commit().await?;
    Ok(ProductView {
        product,
        version: version + 1,
    })
}

/// Deletes a product: the row goes, `ProductDeleted` stays in the log, carrying the
/// product as it was when deleted (so a consumer that needs its name or weight for
/// goods already ordered has them in the event itself).
async fn delete(s: &Service, id: Uuid, precondition: &Precondition) -> Result<(), ApiError> {
    let mut tx = s.db.begin().await?;
    let view = current(&mut tx, id, precondition).await?;
    sqlx::query("DELETE FROM catalog_products WHERE product_id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let deleted = event("ProductDeleted", id, to_json(&view.product)?);
    s.log
        .append_unnumbered(&mut tx, Expected::Version(view.version), &[deleted])
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn find(s: &Service, id: Uuid) -> Result<ProductView, ApiError> {
    let row: Option<Row> = sqlx::query_as(select_products!("WHERE product_id = $1"))
        .bind(id.to_string())
        .fetch_optional(s.db.pool())
        .await?;
    decode(row.ok_or_else(|| not_found(id))?)
}

async fn all(s: &Service) -> Result<Vec<ProductView>, ApiError> {
    let rows: Vec<Row> = sqlx::query_as(select_products!("ORDER BY created_at, product_id"))
        .fetch_all(s.db.pool())
        .await?;
    rows.into_iter().map(decode).collect()
}

fn respond(status: StatusCode, view: &ProductView, location: Option<String>) -> Response {
    let mut r = (status, Json(view)).into_response();
    let h = r.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", view.version)) {
        h.insert(header::ETAG, etag);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, location);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn create(
    State(s): State<Service>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Response, ApiError> {
    let product = input.validate(Uuid::now_v7())?;
    let view = add(&s, product).await?;
    let location = format!("{}/products/{}", s.feed.base_url(), view.product.product_id);
    Ok(respond(StatusCode::CREATED, &view, Some(location)))
}

async fn replace(
    State(s): State<Service>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let precondition = if_match(&headers)?;
    let view = update(&s, input.validate(id)?, &precondition).await?;
    let location = format!("{}/products/{id}", s.feed.base_url());
    Ok(respond(StatusCode::OK, &view, Some(location)))
}

async fn remove(
    State(s): State<Service>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    delete(&s, parse_id(&id)?, &if_match(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn fetch(State(s): State<Service>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = find(&s, parse_id(&id)?).await?;
    Ok(respond(StatusCode::OK, &view, None))
}

async fn list(State(s): State<Service>) -> Result<Response, ApiError> {
    let products = all(&s).await?;
    let mut r = Json(serde_json::json!({ "products": products })).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> ProductInput {
        serde_json::from_value(json).expect("shape")
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_product_is_valid() {
        let p = input(serde_json::json!({
            "name": "Kettle", "description": "Boils", "pictures": ["https://img.example/k.jpg"],
            "weight_grams": 1200, "size_mm": {"l": 200, "w": 150, "h": 250}
        }))
        .validate(Uuid::nil())
        .expect("valid");
        assert_eq!(
            p.size_mm,
            Size {
                l: 200,
                w: 150,
                h: 250
            }
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = serde_json::json!({
            "name": "Kettle", "pictures": [], "weight_grams": 1, "size_mm": {"l": 1, "w": 1, "h": 1}
        });
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("name", serde_json::json!(""), "name"),
            ("name", serde_json::json!("x".repeat(201)), "name"),
            (
                "pictures",
                serde_json::json!(["ftp://x/y.png"]),
                "pictures[0]",
            ),
            (
                "pictures",
                serde_json::json!(["https://a/b", "not a url"]),
                "pictures[1]",
            ),
            ("weight_grams", serde_json::json!(0), "weight_grams"),
            ("weight_grams", serde_json::json!(-5), "weight_grams"),
            (
                "size_mm",
                serde_json::json!({"l": 1, "w": 0, "h": 1}),
                "size_mm.w",
            ),
            ("size_mm", serde_json::json!({"l": 1, "w": 1}), "size_mm.h"),
        ];
        for (key, value, field) in cases {
            let mut json = base.clone();
            json[*key] = value.clone();
            assert_eq!(
                field_of(input(json).validate(Uuid::nil()).expect_err("invalid")),
                *field
            );
        }
        for missing in ["name", "weight_grams", "size_mm"] {
            let mut json = base.clone();
            json.as_object_mut().expect("object").remove(missing);
            assert_eq!(
                field_of(input(json).validate(Uuid::nil()).expect_err("invalid")),
                missing
            );
        }
    }

    #[test]
    fn if_match_compares_strong_tags_and_refuses_what_is_not_a_tag() {
        let parse = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::IF_MATCH, HeaderValue::from_static(v));
            }
            if_match(&h)
        };
        let holds =
            |values: &[&'static str], version| parse(values).expect("parses").holds(version);
        assert!(holds(&[], 3), "no header: any version");
        assert!(holds(&["*"], 3));
        assert!(holds(&["\"3\""], 3));
        assert!(!holds(&["\"2\""], 3));
        assert!(holds(&["\"2\", \"3\""], 3));
        assert!(holds(&["\"1\"", "\"3\""], 3), "several header lines");
        assert!(!holds(&["W/\"3\""], 3), "a weak tag never matches strongly");
        assert!(!holds(&["\"abc\""], 3), "a tag that is no version of ours");
        for bad in ["3", "\"3", "W/3", "\"a\"b\""] {
            assert!(
                matches!(parse(&[bad]), Err(ApiError::BadRequest(_))),
                "{bad:?} is not an entity tag"
            );
        }
    }
}
