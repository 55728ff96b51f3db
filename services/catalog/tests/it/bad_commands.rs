//! Every refused command answers problem+json and leaves the feed as it was.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Reply, TestCatalog, kettle};

fn assert_problem(r: &Reply, status: StatusCode, field: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{status}"
    );
    assert_eq!(r.body["status"], status.as_u16(), "{:?}", r.body);
    if let Some(field) = field {
        assert_eq!(r.body["field"], field, "{:?}", r.body);
    }
}

#[tokio::test]
async fn refused_commands_answer_problem_json_and_append_nothing() {
    let app = TestCatalog::start(None).await;
    let id = app.add(kettle()).await;
    let head = app.head_position().await;
    let token = None;

    let r = app
        .send_raw(Method::POST, "/products", Some("{\"name\": ".into()), token)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, None);

    let mut missing = kettle();
    missing.as_object_mut().expect("object").remove("name");
    let r = app.send(Method::POST, "/products", Some(missing)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("name"));

    let mut negative = kettle();
    negative["weight_grams"] = json!(-1);
    let r = app
        .send(Method::POST, "/products", Some(negative.clone()))
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("weight_grams"));
    let r = app
        .send(Method::PUT, &format!("/products/{id}"), Some(negative))
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("weight_grams"));

    let mut flat = kettle();
    flat["size_mm"]["h"] = json!(0);
    let r = app.send(Method::POST, "/products", Some(flat)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("size_mm.h"));

    let mut bad_picture = kettle();
    bad_picture["pictures"] = json!(["javascript:alert(1)"]);
    let r = app.send(Method::POST, "/products", Some(bad_picture)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("pictures[0]"));

    let unknown = uuid::Uuid::new_v4();
    let r = app
        .send(Method::PUT, &format!("/products/{unknown}"), Some(kettle()))
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    let r = app
        .send(Method::DELETE, &format!("/products/{unknown}"), None)
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    let r = app.send(Method::GET, "/products/not-a-uuid", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);

    // A method the resource does not have: problem+json that still names the others.
    let r = app
        .send(Method::PATCH, &format!("/products/{id}"), Some(kettle()))
        .await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, None);
    assert!(r.header("allow").contains("PUT"), "{:?}", r.headers);

    // JSON sent as something else is refused by media type, not parsed.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = app
            .client
            .post(format!("{}/products", app.base))
            .body(kettle().to_string());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("post");
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }

    let mut huge = kettle();
    huge["description"] = json!("x".repeat(100 * 1024));
    let r = app.send(Method::POST, "/products", Some(huge)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, None);

    assert_eq!(
        app.head_position().await,
        head,
        "a refused command appended an event"
    );
    let listed = app.send(Method::GET, "/products", None).await;
    assert_eq!(listed.body["products"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

#[tokio::test]
async fn commands_need_the_configured_bearer_token_but_reads_do_not() {
    let app = TestCatalog::start(Some("s3cret")).await;
    let body = Some(kettle().to_string());

    let r = app
        .send_raw(Method::POST, "/products", body.clone(), None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let r = app
        .send_raw(Method::POST, "/products", body.clone(), Some("wrong"))
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    assert_eq!(
        app.head_position().await,
        0,
        "an unauthorised command appended an event"
    );

    let id = app.add(kettle()).await;
    let r = app
        .send_raw(
            Method::DELETE,
            &format!("/products/{id}"),
            None,
            Some("S3CRET"),
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    let r = app
        .send_raw(Method::GET, &format!("/products/{id}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.head_position().await, 1);
    app.stop().await;
}
