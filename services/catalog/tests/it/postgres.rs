//! The catalog on PostgreSQL (skipped, loudly, when the server binaries are not
//! installed): the same commands, events, preconditions and refusals as on SQLite,
//! and the products survive a restart.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestCatalog, kettle};

#[tokio::test]
async fn products_their_events_and_preconditions_work_the_same_on_postgresql() {
    let Some(pg) = feed::testing::PgCluster::start() else {
        return;
    };
    let url = pg.database("catalog");
    let app = TestCatalog::start_on(None, Some(url.clone())).await;
    let id = app.add(kettle()).await;
    let path = format!("/products/{id}");
    let mut renamed = kettle();
    renamed["name"] = json!("Electric kettle");
    let r = app.send(Method::PUT, &path, Some(renamed.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("etag"), "\"2\"");

    // A stale If-Match fails its precondition and changes nothing.
    let stale = app
        .client
        .delete(format!("{}{path}", app.base))
        .header("if-match", "\"1\"")
        .send()
        .await
        .expect("delete");
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let bad = app
        .send(Method::POST, "/products", Some(json!({"name": ""})))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.head_position().await, 2);

    let gone = app
        .client
        .delete(format!("{}{path}", app.base))
        .header("if-match", "\"2\"")
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let feed = app.feed().await;
    let summary: Vec<(u64, &str, u64)> = feed
        .entries
        .iter()
        .map(|e| (e.position, e.event_type.as_str(), e.stream_version))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "ProductAdded", 1),
            (2, "ProductUpdated", 2),
            (3, "ProductDeleted", 3)
        ]
    );
    assert_eq!(feed.entries[2].data["name"], "Electric kettle");
    let second = app.add(kettle()).await;
    app.stop().await;

    // Restarted on the same database: the product is there, the log goes on.
    let app = TestCatalog::start_on(None, Some(url)).await;
    let r = app
        .send(Method::GET, &format!("/products/{second}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 1);
    let r = app.send(Method::GET, &path, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.add(kettle()).await;
    assert_eq!(app.head_position().await, 5);
    app.stop().await;
}
