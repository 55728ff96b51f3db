use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiError;

/// Requires `Authorization: Bearer <token>` on every method that changes state.
///
/// The token given and the token configured are compared as SHA-256 digests with a
/// constant-time comparison: comparing the raw bytes would end early at a length
/// mismatch (telling an attacker the token's length) and a plain `==` at the first
/// wrong byte. The token is never logged: the request trace records the method and
/// path only (see `Service::app`), and [`ApiError::Unauthorized`] does not repeat it.
pub(crate) async fn require_token(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if tokens_match(given, &token) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn tokens_match(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(tokens_match("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3cret", "s3cretX"] {
            assert!(!tokens_match(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
