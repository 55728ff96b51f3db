//! RFC 9111 section 4.4: a cache MUST invalidate the target URI when it sees a
//! non-error response (2xx, 3xx) to an unsafe request, and MAY invalidate the
//! URIs in Location and Content-Location, but only if they have the same origin.
//!
//! Every stored variant (each format and coding) of the request target goes.
//! Location / Content-Location count when, resolved against the request, they
//! name a resource behind the same route: either as the gateway's clients see
//! it (same host and port as the request's Host), or as the upstream names
//! itself (same host and port as the route's upstream, below its base path).
//! The scheme is not compared, because a TLS terminator in front changes it;
//! invalidating too much only costs a refetch. A fill that was on its way when
//! its target was invalidated serves its waiters but is not stored, so the old
//! representation does not come back.

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};
use url::Url;

use super::Proxy;
use crate::config::Route;
use crate::key::{CacheKey, Coding, Format};
use crate::target;

/// Invalidation times are kept this long after the upstream timeout, by which
/// every fill that started before them has ended.
const REMEMBER_EXTRA: std::time::Duration = std::time::Duration::from_secs(5);

impl Proxy {
    /// Invalidates the target of a successful unsafe request and the same-route
    /// targets its response names in Location / Content-Location.
    pub(super) async fn invalidate_after(
        &self,
        parts: &Parts,
        route_name: &Arc<str>,
        route: &Route,
        path_and_query: &str,
        response: &HeaderMap,
    ) {
        let mut targets = vec![path_and_query.to_owned()];
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let request_url = host.and_then(|host| {
            let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            Url::parse(&format!("http://{host}{pq}")).ok()
        });
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            for value in response.get_all(name) {
                if let Some(target) = same_route_target(value, request_url.as_ref(), route) {
                    targets.push(target);
                }
            }
        }
        targets.sort();
        targets.dedup();
        let now = Instant::now();
        {
            let mut invalidated = self
                .inner
                .invalidated
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let horizon = self.inner.config.upstream_timeout + REMEMBER_EXTRA;
            if invalidated.len() > 1024 {
                invalidated.retain(|_, at| now.duration_since(*at) < horizon);
            }
            for target in &targets {
                invalidated.insert((route_name.clone(), target.clone()), now);
            }
        }
        for target in targets {
            self.inner.metrics.invalidations.inc();
            for format in Format::ALL {
                for coding in Coding::ALL {
                    let key = CacheKey {
                        route: route_name.clone(),
                        path_and_query: target.clone(),
                        format,
                        coding,
                    };
                    self.inner.cache.invalidate(&key).await;
                }
            }
        }
    }

    /// Whether the target of `key` was invalidated after `since`.
    pub(super) fn invalidated_since(&self, key: &CacheKey, since: Instant) -> bool {
        let invalidated = self
            .inner
            .invalidated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        invalidated
            .get(&(key.route.clone(), key.path_and_query.clone()))
            .is_some_and(|at| *at >= since)
    }
}

fn same_authority(a: &Url, b: &Url) -> bool {
    a.host_str() == b.host_str() && a.port() == b.port()
}

/// The route-relative, normalised path and query a Location or
/// Content-Location names, if it is behind `route` (see the module doc).
fn same_route_target(value: &HeaderValue, request: Option<&Url>, route: &Route) -> Option<String> {
    let value = value.to_str().ok()?;
    let rest_and_query = |rest: &str, query: Option<&str>| {
        let t = target::normalise(rest, query).ok()?;
        Some(match t.query {
            Some(q) => format!("{}?{q}", t.path),
            None => t.path,
        })
    };
    if let Some(request) = request
        && let Ok(url) = request.join(value)
        && same_authority(&url, request)
    {
        let rest = route.strip(url.path())?;
        return rest_and_query(rest, url.query());
    }
    let url = Url::parse(value).ok()?;
    if !same_authority(&url, &route.upstream) {
        return None;
    }
    let base = route.upstream.path().trim_end_matches('/');
    let rest = url.path().strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(())?;
    rest_and_query(rest, url.query())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_only_when_they_are_behind_the_same_route() {
        let route = Route::new("/catalog", "http://10.0.0.5:8081/base").expect("route");
        let request = Url::parse("http://gw.example:8080/catalog/products").expect("url");
        let table: &[(&str, Option<&str>)] = &[
            ("/catalog/products/7", Some("/products/7")),
            (
                "http://gw.example:8080/catalog/products/7?v=1",
                Some("/products/7?v=1"),
            ),
            (
                "https://gw.example:8080/catalog/products/7",
                Some("/products/7"),
            ),
            ("products/7", Some("/products/7")),
            ("/sales/orders/1", None),
            ("http://elsewhere.example:8080/catalog/products/7", None),
            ("http://gw.example:9999/catalog/products/7", None),
            (
                "http://10.0.0.5:8081/base/products/%37",
                Some("/products/7"),
            ),
            ("http://10.0.0.5:8081/other/products/7", None),
            ("http://10.0.0.5:8081/basement", None),
        ];
        for (location, expected) in table {
            let value = HeaderValue::from_str(location).expect("ascii");
            assert_eq!(
                same_route_target(&value, Some(&request), &route).as_deref(),
                *expected,
                "{location}"
            );
        }
    }
}
