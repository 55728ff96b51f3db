//! Test support (feature `testing`): hostile input for a service's commands, driven
//! in-process through `tower::ServiceExt::oneshot`.
//!
//! [`hostile_body`] generates request bodies around a valid `seed` command: arbitrary
//! JSON, the seed with one field replaced, removed or added, the seed's bytes cut or
//! spliced, and plain garbage. [`check`] sends one and asserts what every command
//! owes its callers whatever the input: no panic (a panic would fail the test), no
//! 5xx, every refusal an `application/problem+json` body, and nothing appended to the
//! service's log by a refused command. [`assert_rejects_abuse`] covers the inputs no
//! generator finds by chance: JSON nested 10,000 deep, bodies over the size limit
//! (declared and chunked), and header sections over hyper's limit (431, on a real
//! socket).
//!
//! The case count is `PROPTEST_CASES` when set, [`DEFAULT_CASES`] otherwise.
//!
//! [`Producer`] and [`Running`] run an upstream feed and the service under test on
//! real sockets, for the tests of the services that follow other services.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt as _;

mod running;

pub use running::{Producer, Running, client, init_log};

/// Cases per command when `PROPTEST_CASES` is not set: enough to hit every field with
/// every kind of value, fast enough (in-process, SQLite) for every `cargo test`.
pub const DEFAULT_CASES: u32 = 512;

/// The proptest configuration for command fuzzing.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Failures are reproduced from the printed seed; no files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with the awkward corners: huge and negative
/// numbers, floats, empty and control-character strings, non-ASCII text.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(i64::MAX)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from("00000000-0000-0000-0000-000000000000")),
        Just(Value::from("\u{0}\u{7}\n<script>")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path to a value inside `v` (object keys and array indexes).
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// The value at `path` in `v`.
fn at_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k.as_str()),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    Add(String, Value),
    Truncate(usize),
    Splice(usize, Vec<u8>),
    Whole(Value),
    Garbage(Vec<u8>),
}

fn apply(seed: &Value, mutation: Mutation) -> Vec<u8> {
    let mut all = Vec::new();
    paths(seed, &mut Vec::new(), &mut all);
    let mut v = seed.clone();
    let pick = |i: usize| all.get(i % all.len().max(1)).cloned();
    match mutation {
        Mutation::Replace(i, value) => {
            if let Some(p) = pick(i)
                && let Some(slot) = at_mut(&mut v, &p)
            {
                *slot = value;
            }
            v.to_string().into_bytes()
        }
        Mutation::Remove(i) => {
            if let Some(p) = pick(i)
                && let Some((last, parent)) = p.split_last()
                && let Some(holder) = at_mut(&mut v, parent)
            {
                match (last, holder) {
                    (PathStep::Key(k), Value::Object(map)) => {
                        map.remove(k);
                    }
                    (PathStep::Index(i), Value::Array(items)) if *i < items.len() => {
                        items.remove(*i);
                    }
                    _ => {}
                }
            }
            v.to_string().into_bytes()
        }
        Mutation::Add(key, value) => {
            if let Value::Object(map) = &mut v {
                map.insert(key, value);
            }
            v.to_string().into_bytes()
        }
        Mutation::Truncate(at) => {
            let bytes = seed.to_string().into_bytes();
            bytes[..at % bytes.len().max(1)].to_vec()
        }
        Mutation::Splice(at, junk) => {
            let mut bytes = seed.to_string().into_bytes();
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, junk);
            bytes
        }
        Mutation::Whole(value) => value.to_string().into_bytes(),
        Mutation::Garbage(bytes) => bytes,
    }
}

/// Request bodies around the valid command `seed` (see the module docs).
pub fn hostile_body(seed: Value) -> impl Strategy<Value = Vec<u8>> {
    let mutation = prop_oneof![
        4 => (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => (".{0,12}", any_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, junk)| Mutation::Splice(at, junk)),
        1 => any_json().prop_map(Mutation::Whole),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Garbage),
        // The seed itself, now and then, so accepted commands are exercised too.
        1 => Just(Mutation::Whole(seed.clone())),
    ];
    mutation.prop_map(move |m| apply(&seed, m))
}

/// The head position the service's index reports.
pub async fn head(app: &Router) -> u64 {
    let response = app
        .clone()
        .oneshot(
            Request::get("/index.json")
                .body(Body::empty())
                .expect("a valid request"),
        )
        .await
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::OK, "GET /index.json");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("index body");
    let index: Value = serde_json::from_slice(&bytes).expect("the index is JSON");
    index["publishes"]["head_position"]
        .as_u64()
        .expect("head_position")
}

/// One request's outcome: status and body.
#[derive(Debug)]
pub struct Outcome {
    /// The status.
    pub status: StatusCode,
    /// The body, as text (lossy).
    pub body: String,
}

/// Sends `body` to `method uri` (with `headers`) and asserts the invariants of the
/// module docs; returns what came back.
pub async fn check(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Outcome {
    let before = head(app).await;
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::from(body.clone()))
        .expect("a valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("response body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    assert!(
        !status.is_server_error(),
        "{method} {uri} with {shown:?} answered {status}: {text}"
    );
    if status.is_client_error() {
        assert_eq!(
            content_type, "application/problem+json",
            "{method} {uri} with {shown:?} answered {status} without problem+json: {text}"
        );
        assert_eq!(
            head(app).await,
            before,
            "{method} {uri} with {shown:?} was refused ({status}) but appended"
        );
    }
    Outcome { status, body: text }
}

/// The abuse no generator finds by chance (module docs): deep nesting and oversized
/// bodies in-process, an oversized header section over a real socket.
pub async fn assert_rejects_abuse(app: &Router, method: Method, uri: &str) {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = check(app, method.clone(), uri, &[], deep.into_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "deep JSON: {}", r.body);

    let huge = serde_json::json!({ "name": "x".repeat(200 * 1024) }).to_string();
    let r = check(app, method.clone(), uri, &[], huge.clone().into_bytes()).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "huge body: {}",
        r.body
    );

    // The same without a Content-Length: the limit applies while streaming.
    let before = head(app).await;
    let chunks = futures_chunks(huge.into_bytes());
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(chunks))
                .expect("a valid request"),
        )
        .await
        .expect("the router is infallible");
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "chunked huge body"
    );
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(head(app).await, before, "a huge chunked body appended");

    assert_header_limit(app.clone(), method, uri).await;
}

/// `body` as a stream of 4 KiB chunks (a body of unknown length).
fn futures_chunks(
    body: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(chunks)
}

/// Serves `app` on a port-0 socket and sends a request whose header section is 1 MiB:
/// hyper refuses it with 431 before any handler runs.
async fn assert_header_limit(app: Router, method: Method, uri: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::serve(listener, app, stop.clone().cancelled_owned()));
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {uri} HTTP/1.1\r\nHost: {addr}\r\nX-Filler: {}\r\nContent-Length: 2\r\n\r\n{{}}",
            "a".repeat(1024 * 1024)
        );
        // The server may answer and close before it has read everything.
        let _ = socket.write_all(request.as_bytes()).await;
        let mut answer = vec![0u8; 64];
        let n = socket.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the server answers an oversized header section");
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 1 MiB header section got {answer:?}"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
