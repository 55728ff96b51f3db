//! What a service must never give away: the bearer token (in logs), and SQL, table
//! names or file paths (in error bodies). In-process, with every log line captured.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sqlx::Connection as _;
use tower::ServiceExt as _;

use crate::support::kettle;

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write_all(&mut *self.0.lock().expect("log buffer"), buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(b) => request
            .header("content-type", "application/json")
            .body(Body::from(b)),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[test]
fn the_bearer_token_never_reaches_the_logs_even_at_trace_level() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let token = "tok-9e1d4c77-secret";
    let dir = tempfile::tempdir().expect("dir");
    tracing::subscriber::with_default(subscriber, || {
        runtime().block_on(async {
            let mut config = catalog::Config::new(dir.path());
            config.args.api_token = Some(token.into());
            tracing::info!(?config, "starting");
            let app = catalog::app(&config, "http://catalog.test")
                .await
                .expect("app");
            let (status, _, _) = send(
                &app,
                "POST",
                "/products",
                Some(token),
                Some(kettle().to_string()),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
            let near_miss = format!("{token}x");
            let (status, _, body) = send(
                &app,
                "POST",
                "/products",
                Some(&near_miss),
                Some(kettle().to_string()),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(!body.contains(token), "{body}");
            let (status, _, _) = send(&app, "GET", "/products", Some(token), None).await;
            assert_eq!(status, StatusCode::OK);
        });
    });
    let text = logs.text();
    assert!(
        text.contains("/products"),
        "the requests were traced: {text}"
    );
    assert!(
        !text.contains("tok-9e1d4c77"),
        "the token was logged:\n{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("bearer"),
        "an Authorization header was logged:\n{text}"
    );
}

#[test]
fn a_broken_or_locked_database_answers_without_sql_tables_or_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let rt = runtime();
    rt.block_on(async {
        let app = catalog::app(&catalog::Config::new(dir.path()), "http://catalog.test")
            .await
            .expect("app");
        let file = dir.path().join("catalog.db");
        let url = format!("sqlite:{}", file.display());
        let leaks = |body: &str| {
            let lower = body.to_ascii_lowercase();
            [
                "catalog_products",
                "insert",
                "select",
                "sqlite",
                "no such table",
                "table",
            ]
            .iter()
            .any(|w| lower.contains(w))
                || body.contains(&dir.path().display().to_string())
        };

        // Locked by another process: 503, retry later.
        let mut locker = sqlx::SqliteConnection::connect(&url).await.expect("open");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut locker)
            .await
            .expect("lock");
        let (status, headers, body) =
            send(&app, "POST", "/products", None, Some(kettle().to_string())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(!leaks(&body), "{body}");
        sqlx::query("ROLLBACK")
            .execute(&mut locker)
            .await
            .expect("unlock");

        // Broken (its table gone): 500, and nothing about why.
        sqlx::query("DROP TABLE catalog_products")
            .execute(&mut locker)
            .await
            .expect("break");
        locker.close().await.expect("close");
        for (method, uri, body) in [
            ("POST", "/products".to_owned(), Some(kettle().to_string())),
            ("GET", "/products".to_owned(), None),
            ("GET", format!("/products/{}", uuid::Uuid::nil()), None),
        ] {
            let (status, headers, text) = send(&app, method, &uri, None, body).await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {uri}: {text}"
            );
            assert_eq!(headers["content-type"], "application/problem+json");
            let problem: serde_json::Value = serde_json::from_str(&text).expect("problem json");
            assert_eq!(problem["detail"], "internal error", "{text}");
            assert!(!leaks(&text), "{method} {uri}: {text}");
        }
    });
}
