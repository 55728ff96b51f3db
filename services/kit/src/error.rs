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
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Database errors: constraint violations are conflicts (matched on SQLSTATE class 23
/// / SQLite's constraint codes, never on message text); a database that cannot be
/// reached or is locked is a 503; the rest is a bug.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                Self::Conflict("the change conflicts with the current state".into())
            }
            sqlx::Error::Database(db)
                if matches!(
                    db.code().as_deref(),
                    Some("5" | "6" | "261" | "517" | "262")
                ) =>
            {
                Self::Unavailable(e.into())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
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
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
        });
        match &self {
            Self::Unavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "database unavailable")
            }
            Self::Internal(e) => tracing::error!(error = %format!("{e:#}"), "internal error"),
            _ => {}
        }
        body["detail"] = self.to_string().into();
        if let Self::Invalid { field, .. } = &self {
            body["field"] = field.clone().into();
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
}

/// `axum::Json`, but every rejection is a problem+json: 400 for syntax, 422 for a
/// missing or mistyped field (named), 413 for a body over the limit, 415 as 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
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
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::TooLarge)
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}
