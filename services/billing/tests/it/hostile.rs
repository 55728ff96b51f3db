//! Hostile input to billing's command, in-process (`tower::ServiceExt::oneshot` on the
//! real app and a real SQLite file): arbitrary and mutated JSON and odd customer ids
//! never panic, never get a 5xx, always get problem+json when refused, and a refused
//! command never appends (see `kit::testing`).

use axum::http::Method;
use kit::testing::{self, check, hostile_body};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn app(dir: &tempfile::TempDir) -> axum::Router {
    let config = billing::Config::new(dir.path(), "http://sales.test/feed");
    billing::app(&config, "http://billing.test")
        .await
        .expect("app")
}

#[test]
fn setting_a_credit_limit_never_fails_with_a_5xx_or_appends_when_refused_whatever_it_is_sent() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let app = rt.block_on(app(&dir));
    let customer = prop_oneof![
        3 => Just("alice".to_owned()),
        2 => "[A-Za-z0-9._~%-]{0,80}",
    ];
    let seed = serde_json::json!({ "credit_limit_cents": 50_000 });
    let mut runner = TestRunner::new(testing::config());
    runner
        .run(&(hostile_body(seed), customer), |(body, customer)| {
            rt.block_on(check(
                &app,
                Method::PUT,
                &format!("/customers/{customer}"),
                &[],
                body,
            ));
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
        testing::assert_rejects_abuse(&app, Method::PUT, "/customers/alice").await;
    });
}
