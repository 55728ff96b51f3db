//! Hostile input to every product command, in-process (`tower::ServiceExt::oneshot`
//! on the real app and a real SQLite file): arbitrary and mutated JSON, odd paths and
//! `If-Match` values never panic, never get a 5xx, always get problem+json when
//! refused, and a refused command never appends (see `kit::testing`).

use axum::http::{Method, StatusCode};
use kit::testing::{self, check, hostile_body};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::kettle;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn app(dir: &tempfile::TempDir) -> axum::Router {
    catalog::app(&catalog::Config::new(dir.path()), "http://catalog.test")
        .await
        .expect("the catalog app")
}

/// What a client may put in `If-Match`: nothing, `*`, tags of this and other
/// versions, weak tags, and things that are no tag at all.
fn if_match() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("*".to_owned())),
        (0u64..5).prop_map(|v| Some(format!("\"{v}\""))),
        (0u64..5).prop_map(|v| Some(format!("W/\"{v}\""))),
        "[ -~]{0,20}".prop_map(Some),
    ]
}

/// A path id: mostly the existing product, sometimes anything URL-shaped.
fn product_path(existing: String) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(existing),
        1 => "[A-Za-z0-9._~%-]{0,40}",
        1 => Just(uuid::Uuid::nil().to_string()),
    ]
}

#[test]
fn no_product_command_fails_with_a_5xx_or_appends_when_it_refuses_whatever_it_is_sent() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let app = rt.block_on(app(&dir));
    let created = rt.block_on(check(
        &app,
        Method::POST,
        "/products",
        &[],
        kettle().to_string().into_bytes(),
    ));
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = serde_json::from_str::<serde_json::Value>(&created.body).expect("json")["product_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut runner = TestRunner::new(testing::config());
    let strategy = (
        hostile_body(kettle()),
        product_path(id),
        if_match(),
        prop::sample::select(vec![Method::POST, Method::PUT, Method::DELETE]),
    );
    runner
        .run(&strategy, |(body, id, if_match, method)| {
            let headers: Vec<(&str, &str)> =
                if_match.iter().map(|v| ("if-match", v.as_str())).collect();
            let uri = if method == Method::POST {
                "/products".to_owned()
            } else {
                format!("/products/{id}")
            };
            rt.block_on(check(&app, method, &uri, &headers, body));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deep_huge_and_oversized_requests_are_refused_with_problems() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let app = app(&dir).await;
        testing::assert_rejects_abuse(&app, Method::POST, "/products").await;
        let id = uuid::Uuid::nil();
        testing::assert_rejects_abuse(&app, Method::PUT, &format!("/products/{id}")).await;
    });
}
