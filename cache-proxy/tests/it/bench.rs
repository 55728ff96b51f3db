//! A benchmark, not a test (ignored by default): cache-proxy hits against
//! Varnish hits on the same ~250 KB page in the same run (wrk), and the origin
//! load of 1,000 concurrent head pollers through each front.
//!
//! ```text
//! cargo build --release -p cache-proxy
//! CACHE_PROXY_BIN=target/release/cache-proxy \
//!     cargo test -p cache-proxy --test it -- --ignored --nocapture bench
//! ```
//!
//! Without `CACHE_PROXY_BIN` the debug binary is measured, which says little.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT_ENCODING, ETAG, IF_NONE_MATCH};

use crate::harness::{client, spawn_varnish};
use crate::origin::{Origin, OriginConfig};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wrk(url: &str, gzip: bool) -> String {
    let mut command = Command::new("wrk");
    command.args(["-t2", "-c32", "-d5s"]);
    if gzip {
        command.args(["-H", "Accept-Encoding: gzip"]);
    }
    let output = command
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("wrk runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| format!("no result: {report}"))
}

async fn pollers(origin: &Origin, url: &str, count: usize, run: Duration) -> (u64, u64) {
    let before = origin.counts("/feed").requests;
    let sent = Arc::new(AtomicU64::new(0));
    let client = client();
    let stop = Instant::now() + run;
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, url, sent) = (client.clone(), url.to_owned(), sent.clone());
            tokio::spawn(async move {
                let mut etag: Option<String> = None;
                while Instant::now() < stop {
                    let mut request = client.get(&url);
                    if let Some(etag) = &etag {
                        request = request.header(IF_NONE_MATCH, etag);
                    }
                    if let Ok(response) = request.send().await {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Some(e) = response.headers().get(ETAG).and_then(|v| v.to_str().ok())
                        {
                            etag = Some(e.to_owned());
                        }
                        let _ = response.bytes().await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let appender = async {
        while Instant::now() < stop {
            origin.append(1);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (_, _) = tokio::join!(futures::future::join_all(tasks), appender);
    (
        sent.load(Ordering::Relaxed),
        origin.counts("/feed").requests - before,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, not a test: see the module doc"]
async fn bench_cache_proxy_against_varnish() {
    let origin = Origin::start(OriginConfig {
        page_bytes: 250_000,
        ..Default::default()
    })
    .await;
    let bin = std::env::var("CACHE_PROXY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cache-proxy").to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _proxy = Killed(
        Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--route", &format!("/svc={}", origin.url())])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start cache-proxy"),
    );
    let Some(varnish) = spawn_varnish(&origin, "bench").await else {
        return;
    };
    let fronts = [
        ("cache-proxy", format!("http://127.0.0.1:{port}/svc")),
        ("varnish", format!("http://{}", varnish.addr())),
    ];
    let c = client();
    for (_, base) in &fronts {
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.get(format!("{base}/feed")).send().await.is_err() {
            assert!(Instant::now() < deadline, "{base} starts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let page = "/feed/archive/1-10";
    println!("binary: {bin}");
    println!(
        "page size: {} bytes identity",
        c.get(format!("{}{page}", fronts[0].1))
            .send()
            .await
            .expect("page")
            .bytes()
            .await
            .expect("body")
            .len()
    );
    for gzip in [true, false] {
        for (name, base) in &fronts {
            let url = format!("{base}{page}");
            let mut warm = c.get(&url);
            if gzip {
                warm = warm.header(ACCEPT_ENCODING, "gzip");
            }
            warm.send()
                .await
                .expect("warm")
                .bytes()
                .await
                .expect("body");
            let rate = tokio::task::spawn_blocking(move || wrk(&url, gzip))
                .await
                .expect("wrk");
            println!(
                "wrk -t2 -c32 -d5s {:<9} {name:<12} {rate} req/s",
                if gzip { "gzip" } else { "identity" }
            );
        }
    }
    for (name, base) in &fronts {
        let (sent, upstream) = pollers(
            &origin,
            &format!("{base}/feed"),
            1_000,
            Duration::from_secs(10),
        )
        .await;
        println!(
            "1000 head pollers, 10 s, {name:<12}: {sent} client requests, {upstream} origin requests, ratio {:.5}",
            upstream as f64 / sent.max(1) as f64
        );
    }
}
