//! Integration tests: cache-proxy and Varnish (with `varnish/default.vcl`) in
//! front of a real origin over real sockets.
//!
//! Each scenario in `scenarios` runs against both fronts; `proxy` holds the
//! cache-proxy-only ones (memory bound, metrics, limits, problem+json).
//! `TEST_LOG=1` shows varnishd's output and the proxy's tracing.

mod bench;
mod feed_server;
mod harness;
mod origin;
mod proxy;
mod scenarios;

/// One `#[tokio::test]` per front for each scenario; the Varnish one skips
/// loudly when varnishd is not installed.
macro_rules! both_fronts {
    ($($scenario:ident: $config:expr;)*) => {
        mod through_cache_proxy {
            use crate::origin::OriginConfig;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    crate::init_tracing();
                    let origin = crate::origin::Origin::start($config).await;
                    let front = crate::harness::spawn_proxy(&origin).await;
                    crate::scenarios::$scenario(&origin, &front).await;
                }
            )*
        }
        mod through_varnish {
            use crate::origin::OriginConfig;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let origin = crate::origin::Origin::start($config).await;
                    let Some(front) = crate::harness::spawn_varnish(&origin, stringify!($scenario)).await else {
                        return;
                    };
                    crate::scenarios::$scenario(&origin, &front).await;
                }
            )*
        }
    };
}

both_fronts! {
    two_hundred_concurrent_misses_make_exactly_one_upstream_request: OriginConfig::default();
    a_sealed_page_is_served_after_the_origin_stops_and_the_head_goes_stale_then_fails: OriginConfig {
        head_cache_control: "max-age=1, stale-if-error=3",
        ..OriginConfig::default()
    };
    an_append_is_visible_through_the_cache_within_max_age_plus_one_second: OriginConfig::default();
    a_client_if_none_match_is_answered_304_from_the_cache: OriginConfig::default();
    an_expired_entry_is_revalidated_with_if_none_match_without_a_new_download: OriginConfig {
        head_cache_control: "max-age=1",
        ..OriginConfig::default()
    };
    atom_html_gzip_and_identity_representations_never_get_mixed_up: OriginConfig::default();
    a_request_with_authorization_neither_reads_nor_fills_the_cache_unless_the_response_allows_it:
        OriginConfig::default();
    poisoning_attempts_never_change_what_other_clients_get: OriginConfig::default();
    a_long_poll_is_forwarded_and_does_not_hold_up_ordinary_requests: OriginConfig::default();
    a_missing_page_is_cached_for_at_most_a_second: OriginConfig::default();
    a_successful_command_invalidates_the_stored_target_and_its_location: OriginConfig::default();
    responses_that_must_not_be_shared_are_never_stored: OriginConfig::default();
    a_304_that_adds_set_cookie_is_not_kept: OriginConfig::default();
    age_counts_the_upstreams_age_and_the_time_stored: OriginConfig::default();
    a_stale_copy_is_served_when_the_origin_answers_5xx: OriginConfig::default();
    a_stale_copy_is_served_when_the_origin_is_too_slow: OriginConfig::default();
    a_failed_background_refresh_keeps_the_stale_copy: OriginConfig::default();
    an_origin_error_is_kept_a_second_at_most_and_coalescing_resumes: OriginConfig::default();
    no_spelling_of_a_target_fills_an_entry_another_target_is_served_from: OriginConfig::default();
    a_404_is_kept_a_second_at_most_whatever_it_says: OriginConfig::default();
}

/// `TEST_LOG=1` prints the gateway's logs.
pub(crate) fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("cache_proxy=debug,tower_http=debug")
            .with_test_writer()
            .try_init();
    }
}
