//! Origin outages behind the cache-proxy.
