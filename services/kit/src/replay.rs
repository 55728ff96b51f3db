//! Replaying a followed feed until caught up, with a progress bar: the second half of
//! every service's `rebuild`, after its replica and checkpoint were dropped.

use std::time::Duration;

use feed::db::Database;
use feed::subscriber::{Handler, Progress, Subscriber, SubscriberConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Transient failures (producer unreachable) tolerated in a row before giving up.
const MAX_FAILURES: u32 = 5;

/// Applies `feed_url`'s events from the checkpoint `name` on until the head, showing
/// position / head. Returns the last position applied.
pub async fn replay<H: Handler>(
    db: &Database,
    name: &str,
    feed_url: &str,
    handler: H,
) -> anyhow::Result<u64> {
    let mut config = SubscriberConfig::new(name, feed_url);
    // At the head, ask once and stop instead of holding a long poll.
    config.long_poll = Duration::ZERO;
    let mut subscriber = Subscriber::new(config, db.clone(), handler);
    let status = subscriber.status();
    let bar = ProgressBar::new(head_position(feed_url).await.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:40}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    let mut failures = 0;
    loop {
        match subscriber.poll_once().await {
            Ok(Progress::Applied { position, .. }) => {
                failures = 0;
                bar.set_length(bar.length().unwrap_or(0).max(status.head()).max(position));
                bar.set_position(position);
            }
            Ok(Progress::CaughtUp { position, .. }) => {
                bar.set_length(bar.length().unwrap_or(0).max(position));
                bar.set_position(position);
                bar.finish_with_message("caught up");
                return Ok(position);
            }
            Err(e) if e.is_fatal() || failures >= MAX_FAILURES => {
                bar.abandon_with_message("failed");
                return Err(e.into());
            }
            Err(e) => {
                failures += 1;
                bar.set_message(format!("retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(failures)).await;
            }
        }
    }
}

/// The producer's head position, for the progress bar's length.
async fn head_position(feed_url: &str) -> Option<u64> {
    let response = feed::subscriber::http_client()
        .get(feed_url)
        .header(reqwest::header::ACCEPT, feed::atom::FEED_MEDIA_TYPE)
        .send()
        .await
        .ok()?;
    let text = response.error_for_status().ok()?.text().await.ok()?;
    feed::atom::parse_feed(&text).ok()?.head_position
}
