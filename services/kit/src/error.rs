use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use feed::store::{AppendError, StoreError};
use serde::de::DeserializeOwned;

/// The errors of a service's HTTP API, each an RFC 9457 problem+json response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422: a field has an unacceptable value.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The JSON field (dotted path, e.g. `lines[0].quantity`).
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// 400: the body is not JSON of the expected shape.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 409: someone else changed it first.
    #[error("{0}")]
    Conflict(String),
    /// 412: an `If-Match` precondition names no current version (RFC 9110 13.1.1).
    #[error("{0}")]
    PreconditionFailed(String),
    /// 415: the body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 401: a command without the right bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 413: the body is too big.
    #[error("the request body is too large")]
    TooLarge,
    /// 503: the database is unavailable; retry.
    #[error("the service's database is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500: a bug; logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Whether a database error code means "the database is not available right now"
/// rather than "this request or this code is wrong": SQLite's busy and locked codes
/// (another connection holds the lock past the busy timeout), and PostgreSQL's
/// connection exceptions (class 08), shutdowns and restarts (57P01-57P03), too many
/// connections (53300) and the transient transaction failures a retry resolves
/// (40001 serialization, 40P01 deadlock).
fn is_unavailable_code(code: &str) -> bool {
    matches!(
        code,
        "5" | "6"
            | "261"
            | "517"
            | "262"
            | "57P01"
            | "57P02"
            | "57P03"
            | "53300"
            | "40001"
            | "40P01"
    ) || code.starts_with("08")
}

/// Database errors: constraint violations are conflicts (matched on SQLSTATE class 23
/// / SQLite's constraint codes, never on message text); a database that cannot be
/// reached, is restarting or is locked is a 503; the rest is a bug.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                Self::Conflict("the change conflicts with the current state".into())
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_code(&c)) => {
                Self::Unavailable(e.into())
            }
            // A server that went away mid-conversation shows up as an I/O error or as
            // a broken protocol exchange (an unexpected end of the stream).
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => Self::Unavailable(e.into()),
            _ => Self::Internal(e.into()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { .. } => Self::Conflict(e.to_string()),
            AppendError::Invalid(detail) => Self::BadRequest(detail),
            AppendError::Db(db) => db.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(db) => db.into(),
            other => Self::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "database unavailable")
            }
            Self::Internal(e) => tracing::error!(error = %format!("{e:#}"), "internal error"),
            _ => {}
        }
        let field = match &self {
            Self::Invalid { field, .. } => Some(field.as_str()),
            _ => None,
        };
        problem(self.status(), &self.to_string(), field)
    }
}

/// An RFC 9457 problem+json response: `status`, its reason as the title, `detail`,
/// and the offending `field` when there is one. Never cached.
pub(crate) fn problem(status: StatusCode, detail: &str, field: Option<&str>) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(field) = field {
        body["field"] = field.into();
    }
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// `axum::Json`, but every rejection is a problem+json: 400 for syntax (also for JSON
/// nested deeper than serde_json's recursion limit of 128) and for a body that is not
/// a JSON object, 422 for a missing or mistyped field (named), 413 for a body over the
/// limit, 415 for a body that is not `application/json`.
///
/// The body is read as a `serde_json::Value` first: that enforces the recursion limit
/// on the whole document (a typed parse stops at the first mismatch and would call
/// 10,000 nested arrays a mistyped field) and lets a command refuse a top-level array,
/// which serde would otherwise accept for a struct (`[5000]` as `{"limit": 5000}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

/// Whether `content_type` is JSON: `application/json` or `application/<x>+json`,
/// with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".into(),
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::TooLarge);
            }
            Err(e) => return Err(ApiError::BadRequest(e.body_text())),
        };
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(e) => return Err(ApiError::BadRequest(format!("the body is not JSON: {e}"))),
            Ok(v) if !v.is_object() => {
                return Err(ApiError::BadRequest(
                    "the body must be a JSON object".into(),
                ));
            }
            Ok(_) => {}
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                // serde's message names the field path after axum's prefix, e.g.
                // "...target type: lines[0].quantity: invalid type: string".
                let detail = e.body_text();
                let inner = detail
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&detail);
                let field = inner
                    .split_once(": ")
                    .map(|(f, _)| f.trim().to_owned())
                    .filter(|f| !f.is_empty() && !f.contains(' '))
                    .unwrap_or_else(|| "body".to_owned());
                Err(ApiError::Invalid { field, detail })
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised_with_parameters_and_suffixes() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for not in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(not), "{not}");
        }
    }

    #[test]
    fn unavailable_databases_are_told_apart_from_bugs_by_code() {
        for code in [
            "5", "6", "517", "08006", "08001", "57P01", "57P03", "53300", "40001",
        ] {
            assert!(is_unavailable_code(code), "{code}");
        }
        for code in ["1", "19", "23505", "42P01", "22P02"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }
}
