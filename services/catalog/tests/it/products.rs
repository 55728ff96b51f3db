use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestCatalog, kettle};

#[tokio::test]
async fn adding_updating_and_deleting_a_product_is_served_and_published_in_order() {
    let app = TestCatalog::start(None).await;

    let created = app.send(Method::POST, "/products", Some(kettle())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["product_id"].as_str().expect("id").to_owned();
    assert_eq!(
        created.header("location"),
        format!("{}/products/{id}", app.base)
    );
    assert_eq!(created.header("etag"), "\"1\"");
    assert_eq!(created.body["name"], "Kettle");

    let fetched = app
        .send(Method::GET, &format!("/products/{id}"), None)
        .await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(
        fetched.body["size_mm"],
        json!({ "l": 200, "w": 150, "h": 250 })
    );
    assert_eq!(fetched.body["version"], 1);

    let mut renamed = kettle();
    renamed["name"] = json!("Electric kettle");
    renamed["pictures"] = json!([]);
    let updated = app
        .send(Method::PUT, &format!("/products/{id}"), Some(renamed))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert_eq!(updated.body["version"], 2);
    let fetched = app
        .send(Method::GET, &format!("/products/{id}"), None)
        .await;
    assert_eq!(fetched.body["name"], "Electric kettle");
    assert_eq!(fetched.body["pictures"], json!([]));

    let listed = app.send(Method::GET, "/products", None).await;
    assert_eq!(listed.body["products"].as_array().map(Vec::len), Some(1));

    let deleted = app
        .send(Method::DELETE, &format!("/products/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = app
        .send(Method::GET, &format!("/products/{id}"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.header("content-type"), "application/problem+json");
    let listed = app.send(Method::GET, "/products", None).await;
    assert_eq!(listed.body["products"], json!([]));

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
    for e in &feed.entries {
        assert_eq!(e.stream.as_str(), format!("product-{id}"));
        assert_eq!(e.data["product_id"], id.as_str());
    }
    assert_eq!(feed.entries[0].data["name"], "Kettle");
    assert_eq!(feed.entries[0].data["weight_grams"], 1200);
    assert_eq!(
        feed.entries[0].data["pictures"],
        json!(["https://img.example.com/kettle.jpg"])
    );
    assert_eq!(feed.entries[1].data["name"], "Electric kettle");
    // The deletion carries the product as it was when deleted.
    assert_eq!(feed.entries[2].data, feed.entries[1].data);
    app.stop().await;
}

#[tokio::test]
async fn an_update_whose_if_match_names_a_stale_version_fails_its_precondition_and_changes_nothing()
{
    let app = TestCatalog::start(None).await;
    let id = app.add(kettle()).await;
    let path = format!("/products/{id}");
    let mut first = kettle();
    first["name"] = json!("First writer");
    let r = app.send(Method::PUT, &path, Some(first)).await;
    assert_eq!(r.status, StatusCode::OK);

    // A second writer still holding version 1.
    let mut req = app.client.put(format!("{}{path}", app.base));
    req = req
        .header("if-match", "\"1\"")
        .header("content-type", "application/json");
    let mut second = kettle();
    second["name"] = json!("Second writer");
    let resp = req.body(second.to_string()).send().await.expect("put");
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // If-Match that is no entity tag at all is a bad request; a delete with a stale
    // tag fails like the update.
    for (method, if_match, status) in [
        (Method::PUT, "1", StatusCode::BAD_REQUEST),
        (Method::PUT, "W/\"2\"", StatusCode::PRECONDITION_FAILED),
        (Method::DELETE, "\"1\"", StatusCode::PRECONDITION_FAILED),
        (Method::DELETE, "version-2", StatusCode::BAD_REQUEST),
    ] {
        let resp = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .header("if-match", if_match)
            .header("content-type", "application/json")
            .body(kettle().to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), status, "{method} If-Match: {if_match}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }

    let current = app.send(Method::GET, &path, None).await;
    assert_eq!(current.body["name"], "First writer");
    assert_eq!(app.head_position().await, 2);

    // With the current version it goes through.
    let resp = app
        .client
        .put(format!("{}{path}", app.base))
        .header("if-match", current.header("etag"))
        .header("content-type", "application/json")
        .body(kettle().to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.head_position().await, 3);
    app.stop().await;
}

#[tokio::test]
async fn products_survive_a_restart_on_the_same_database() {
    let dir = tempfile::tempdir().expect("dir");
    let start = |dir: std::path::PathBuf| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(catalog::run(
            catalog::Config::new(dir),
            listener,
            shutdown.clone(),
        ));
        (base, shutdown, task)
    };
    feed::install_crypto();
    let client = reqwest::Client::new();
    let (base, shutdown, task) = start(dir.path().to_owned()).await;
    let created = client
        .post(format!("{base}/products"))
        .header("content-type", "application/json")
        .body(kettle().to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    shutdown.cancel();
    task.await.expect("join").expect("clean stop");

    let (base, shutdown, task) = start(dir.path().to_owned()).await;
    let path = location
        .rsplit_once("/products/")
        .map(|(_, id)| id)
        .expect("id");
    let again = client
        .get(format!("{base}/products/{path}"))
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), StatusCode::OK);
    shutdown.cancel();
    task.await.expect("join").expect("clean stop");
}
