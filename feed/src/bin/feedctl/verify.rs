//! `feedctl verify`: walks a whole feed and checks what subscribers rely on.

use std::process::ExitCode;

use anyhow::Context;
use feed::atom::{self, ParsedFeed};

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The feed's head URL.
    feed_url: String,
}

struct Page {
    /// Where the request ended up: the page after the newest sealed page redirects to
    /// the head.
    url: String,
    doc: ParsedFeed,
    body: bytes::Bytes,
    etag: Option<String>,
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Page> {
    let resp = client
        .get(url)
        .header("accept", atom::FEED_MEDIA_TYPE)
        .send()
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    let status = resp.status();
    let final_url = resp.url().to_string();
    if !status.is_success() {
        anyhow::bail!("{url} answered HTTP {status}");
    }
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("cannot read {url}"))?;
    let text = std::str::from_utf8(&body).with_context(|| format!("{url} is not UTF-8"))?;
    let doc = atom::parse_feed(text).with_context(|| url.to_owned())?;
    Ok(Page {
        url: final_url,
        doc,
        body,
        etag,
    })
}

pub(crate) async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = feed::subscriber::http_client();
    let head = get(&client, &a.feed_url).await?;
    let mut problems = Vec::new();
    let current = head
        .doc
        .links
        .current
        .clone()
        .unwrap_or_else(|| a.feed_url.clone());
    let first_url = head
        .doc
        .links
        .first
        .clone()
        .unwrap_or_else(|| current.clone());

    let mut expected = 1u64;
    let mut pages = 0usize;
    let mut prev_url: Option<String> = None;
    let mut url = first_url.clone();
    loop {
        let page = get(&client, &url).await?;
        url = page.url.clone();
        pages += 1;
        let d = &page.doc;
        if d.links.this.as_deref() != Some(url.as_str()) {
            problems.push(format!("{url}: self link is {:?}", d.links.this));
        }
        if d.links.current.as_deref() != Some(current.as_str()) {
            problems.push(format!(
                "{url}: current link is {:?}, expected {current}",
                d.links.current
            ));
        }
        if d.links.first.as_deref() != Some(first_url.as_str()) {
            problems.push(format!(
                "{url}: first link is {:?}, expected {first_url}",
                d.links.first
            ));
        }
        if d.links.prev_archive != prev_url {
            problems.push(format!(
                "{url}: prev-archive is {:?}, expected {prev_url:?}",
                d.links.prev_archive
            ));
        }
        for e in &d.entries {
            if e.position != expected {
                problems.push(format!(
                    "{url}: expected position {expected}, found {}",
                    e.position
                ));
                expected = e.position;
            }
            expected += 1;
        }
        if !d.archive {
            if url != current {
                problems.push(format!(
                    "{url}: not sealed, but not the head {current} either"
                ));
            }
            break;
        }
        // A sealed page must not change: a conditional request gets 304 and a second
        // download is byte-identical.
        if let Some(etag) = &page.etag {
            let r = client
                .get(&url)
                .header("accept", atom::FEED_MEDIA_TYPE)
                .header("if-none-match", etag)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::NOT_MODIFIED {
                problems.push(format!(
                    "{url}: sealed page answered {} to If-None-Match {etag}",
                    r.status()
                ));
            }
        } else {
            problems.push(format!("{url}: sealed page without an ETag"));
        }
        let again = get(&client, &url).await?;
        if again.body != page.body {
            problems.push(format!("{url}: sealed page changed between two downloads"));
        }
        let Some(next) = d.links.next_archive.clone() else {
            problems.push(format!("{url}: sealed page without next-archive"));
            break;
        };
        prev_url = Some(url);
        url = next;
        if pages > 10_000_000 {
            problems.push("more than ten million pages: giving up".into());
            break;
        }
    }
    let last = expected - 1;
    if let Some(h) = head.doc.head_position
        && h < last
    {
        problems.push(format!(
            "head says position {h}, but the walk reached {last}"
        ));
    }
    if problems.is_empty() {
        println!(
            "ok: {pages} documents, positions 1..={last} contiguous, links consistent, sealed pages stable"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("feedctl: problem: {p}");
        }
        eprintln!(
            "feedctl: error: {} problem(s) in {}",
            problems.len(),
            a.feed_url
        );
        Ok(ExitCode::FAILURE)
    }
}
