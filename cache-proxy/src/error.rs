//! Errors at the gateway's boundary, as RFC 9457 problem details.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Where a fault lies, so that the status class follows mechanically:
/// downstream (the client's request) is 4xx, upstream is 502/504, internal is 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed, timed out or sent something unusable.
    Upstream,
    /// A bug or resource problem in the gateway itself.
    Internal,
}

impl Fault {
    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

/// What went wrong while answering a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// 404: no route prefix matches the path.
    #[error("no route matches the path {0:?}")]
    NoRoute(String),
    /// 400: the request target is unusable (e.g. dot segments).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 414: the request target exceeds the configured limit.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(u64),
    /// 431: the header fields exceed the configured limit.
    #[error("the request header fields are larger than {0} bytes")]
    HeadersTooLarge(u64),
    /// 413: the request body exceeds the configured limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// 502: the upstream could not be reached or broke the exchange.
    #[error("the upstream failed: {0}")]
    Upstream(String),
    /// 504: the upstream did not answer in time.
    #[error("the upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    /// 504: the request said `Cache-Control: only-if-cached` and nothing usable
    /// is stored (RFC 9111 section 5.2.1.7).
    #[error("nothing usable is stored and the request said only-if-cached")]
    NotCached,
    /// 500: a fault of the gateway itself.
    #[error("internal error")]
    Internal(String),
}

impl ProxyError {
    /// The side at fault.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute(_)
            | ProxyError::BadRequest(_)
            | ProxyError::UriTooLong(_)
            | ProxyError::HeadersTooLarge(_)
            | ProxyError::PayloadTooLarge(_)
            | ProxyError::NotCached => Fault::Downstream,
            ProxyError::Upstream(_) | ProxyError::UpstreamTimeout(_) => Fault::Upstream,
            ProxyError::Internal(_) => Fault::Internal,
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn from_reqwest(err: &reqwest::Error, timeout: std::time::Duration) -> ProxyError {
        if err.is_timeout() {
            ProxyError::UpstreamTimeout(timeout.as_millis())
        } else {
            // The error chain names the cause (connection refused, reset, ...).
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            ProxyError::Upstream(msg)
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ProxyError::Internal(msg) => {
                tracing::error!(fault = self.fault().as_str(), %msg, "internal error");
                "the gateway failed; the incident is logged".to_owned()
            }
            other => {
                tracing::debug!(fault = other.fault().as_str(), error = %other, "request failed");
                other.to_string()
            }
        };
        problem(status, &detail)
    }
}

/// An `application/problem+json` response (RFC 9457) that no cache stores.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
