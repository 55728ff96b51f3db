#
# default.vcl: Varnish 7.x in front of the retail feed services (DESIGN.md section 7).
#
# Needs varnish-modules (Debian/Ubuntu: apt-get install varnish-modules) for
# vmod_header and vmod_vsthrottle; see "Poisoning" and "Freshness" below.
#
# Point it at the services
#   Set .host/.port of `backend default` below to the cache-proxy gateway (which
#   routes /catalog, /sales, ... to the services). The health probe asks
#   GET /healthz, which the gateway answers itself without asking any service.
#   If you point it at one service instead, set the probe's .url to "/" (every
#   service answers its index there) or remove the probe.
#
# Run it (no special parameters needed):
#   varnishd -F -n /tmp/varnish -a 127.0.0.1:6081 -T 127.0.0.1:6082 \
#       -f /path/to/default.vcl -s malloc,256m
#   varnishstat -n /tmp/varnish -1 -f MAIN.cache_hit -f MAIN.backend_req
#
# What it does, and why
# - Format: the services negotiate Atom or HTML on Accept. Browsers send dozens
#   of Accept spellings; they are reduced to two canonical values and hashed on,
#   so one copy per format is stored and a browser's HTML is never served to a
#   feed reader. The reduction follows the feed server's own negotiation
#   (feed/src/negotiate.rs): per format the q of the most specific media range
#   present counts (application/atom+xml > application/xml, text/xml >
#   application/* > */*; text/html, application/xhtml+xml > text/* > */*), and
#   HTML wins only with a strictly higher, non-zero q. (VCL reads the first
#   occurrence of each range; the feed server takes the highest.)
# - Compression: Accept-Encoding is reduced to "gzip" (gzip acceptable) or
#   nothing (identity) and hashed on, and a fill asks the backend for exactly
#   that coding (vcl_backend_fetch), so both copies are stored and each client
#   is served from memory without per-request work: no gunzip per hit for
#   identity clients, and the origin's strong ETag of each coding intact.
#   This replaces the former `-p http_gzip_support=off`, which the VCL could not
#   enforce: with Varnish's default (on), Varnish sends Accept-Encoding: gzip on
#   every fill and gunzips on delivery for clients without gzip; here the
#   identity fill unsets it again, so no object ever needs gunzipping, and the
#   parameter makes no difference any more. Measured on the 2-core build
#   machine (shared with other builds, load 10-13, so ranges of several runs):
#   wrk -t2 -c32 -d5s on a 250,047-byte page (gzip copy 1,421 bytes), Varnish
#   hits only, varnishd CPU time per request from /proc:
#     this VCL, default parameters:     identity 124-167 us (3,650-6,080 req/s),
#                                       gzip      61-72 us (13,280-20,570 req/s)
#     previous VCL + http_gzip_support=off:
#                                       identity 115-150 us (4,010-8,640 req/s),
#                                       gzip      54-66 us (14,190-19,940 req/s)
#     previous VCL, default parameters: identity 695 us (1,330 req/s): a gunzip
#                                       per hit, and a weakened ETag
#   (br/zstd are left out on purpose: two variants suffice for speed, and every
#   variant is one more origin fetch per head change.)
# - Credentials: requests with Authorization or Cookie fall through to the
#   built-in vcl_recv, which passes them: never served from, never stored in, the
#   cache. Responses with Set-Cookie, private, no-store or Vary: * are not
#   cached (built-in vcl_backend_response), nor those with a Vary on a field
#   outside the key (vcl_backend_response).
# - Poisoning: the cache key is URL + Host + normalised Accept + normalised
#   Accept-Encoding. A cache fill sends the backend nothing else: every other
#   request header (User-Agent, X-Forwarded-Host, Forwarded, X-Original-URL,
#   anything a careless backend might reflect into a page) is replaced by a
#   harmless `X-Unkeyed-Dropped: 1` line (vmod_header; VCL alone cannot drop
#   headers it does not name). X-Forwarded-For is reset to the real client
#   address. Passed requests (credentials, commands) keep their headers: their
#   responses are never stored. (If a TLS terminator in front sets
#   X-Forwarded-Proto, stop removing that one in vcl_recv and add it to the
#   whitelist.)
# - Request target: paths with a dot segment (., .., also as %2e) or a
#   backslash, and malformed percent-escapes, get a 400 problem: a backend may
#   resolve them to another resource than the URL names. Everything else is
#   keyed and forwarded verbatim, so what is stored under a URL is what the
#   backend answered for exactly that URL.
# - Commands: a successful (2xx/3xx) POST/PUT/PATCH/DELETE bans the stored
#   copies of its URL, and of its Location / Content-Location when they name the
#   same host (RFC 9111 section 4.4), so the next GET is a fresh fetch.
# - Long polls (`Prefer: wait=N` with If-None-Match): passed (never stored,
#   never on a waiting list behind ordinary requests) with a first-byte timeout
#   of 65 s. Varnish cannot share one backend long poll among many clients;
#   cache-proxy does. Any other Prefer is removed: it is not part of the key.
# - Freshness: max-age as sent. stale-while-revalidate: a stale copy is served
#   while one background fetch refreshes it. stale-if-error: the grace time is
#   the longer of the two windows; while the origin is healthy a copy older
#   than its stale-while-revalidate window is fetched anew (vcl_hit), with a
#   first-byte timeout of 5 s since a stale copy is at hand; when that fetch
#   fails (error status, timeout, refused) it is abandoned, so the old copy
#   survives, and served for its whole stale-if-error window. A failure is
#   remembered for a second per URL (vmod_vsthrottle), so the requests that
#   queued behind the failed fetch, and those that follow, take the stale copy
#   at once instead of each trying the backend in turn. While the probe says
#   the backend is sick, stale copies are served without trying.
#   must-revalidate / proxy-revalidate / s-maxage switch stale serving off.
# - Errors: a 5xx with no stale copy to fall back on is kept for 1 s (or made
#   a 1 s hit-for-miss when it says no-store / private), never the built-in
#   120 s hit-for-miss that would stop request coalescing for two minutes. A
#   backend that does not answer at all gives a 502 problem+json, kept 1 s.
# - 404: at most 1 s (a page that does not exist yet will exist soon).
# - keep: expired copies with an ETag are kept 1 h so Varnish revalidates them
#   with If-None-Match and a 304 costs the origin no body.
# - Request Cache-Control (no-cache, max-age=0) is ignored, as Varnish does by
#   default: clients cannot multiply origin traffic.
# - X-Cache: HIT or MISS on every response.

vcl 4.1;

import std;
import header;
import vsthrottle;

backend default {
    .host = "127.0.0.1";
    .port = "8080";
    .connect_timeout = 2s;
    .first_byte_timeout = 15s;
    .between_bytes_timeout = 15s;
    .probe = {
        .url = "/healthz";
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
        # Internal markers (see vcl_hit); never accepted from a client.
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

    if (req.url ~ "\\") {
        return (synth(400, "the path contains a backslash"));
    }
    if (req.url ~ "(?i)^[^?]*/(\.|%2e)(\.|%2e)?(/|\?|$)") {
        return (synth(400, "the path contains a dot segment (. or ..)"));
    }
    if (req.url ~ "%([^0-9A-Fa-f]|[0-9A-Fa-f]([^0-9A-Fa-f]|$)|$)") {
        return (synth(400, "the request target contains a malformed percent-escape"));
    }

    if (req.http.Prefer ~ "(?i)(^|,)\s*wait\s*=" && req.http.If-None-Match) {
        return (pass);
    }
    unset req.http.Prefer;

    call normalise_accept;

    # X-Want-Gzip tells vcl_backend_fetch which coding the key holds.
    unset req.http.X-Want-Gzip;
    std.collect(req.http.Accept-Encoding);
    if (req.http.Accept-Encoding ~ "(?i)(^|,)\s*(x-)?gzip\s*(,|$|;\s*q\s*=\s*(1(\.0*)?|0?\.[0-9]*[1-9][0-9]*)\s*(,|;|$))"
        || (req.http.Accept-Encoding ~ "(?i)(^|,)\s*\*\s*(,|$|;\s*q\s*=\s*(1(\.0*)?|0?\.[0-9]*[1-9][0-9]*)\s*(,|;|$))"
            && req.http.Accept-Encoding !~ "(?i)(^|,)\s*(x-)?gzip\s*(;|,|$)")) {
        set req.http.Accept-Encoding = "gzip";
        set req.http.X-Want-Gzip = "1";
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

# Sets Accept to the canonical value of the format the feed server would choose.
sub normalise_accept {
    std.collect(req.http.Accept);
    # X-Qa: q of the most specific Atom-capable range present, -1 if none.
    if (req.http.Accept ~ "(?i)(^|,)\s*application/atom\+xml\s*(;|,|$)") {
        set req.http.X-Qa = "1";
        if (req.http.Accept ~ "(?i)(^|,)\s*application/atom\+xml\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qa = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*application/atom\+xml\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\3");
        }
    } elsif (req.http.Accept ~ "(?i)(^|,)\s*(application|text)/xml\s*(;|,|$)") {
        set req.http.X-Qa = "1";
        if (req.http.Accept ~ "(?i)(^|,)\s*(application|text)/xml\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qa = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*(application|text)/xml\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\4");
        }
    } elsif (req.http.Accept ~ "(?i)(^|,)\s*application/\*\s*(;|,|$)") {
        set req.http.X-Qa = "1";
        if (req.http.Accept ~ "(?i)(^|,)\s*application/\*\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qa = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*application/\*\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\3");
        }
    } elsif (req.http.Accept ~ "(^|,)\s*\*/\*\s*(;|,|$)") {
        set req.http.X-Qa = "1";
        if (req.http.Accept ~ "(^|,)\s*\*/\*\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qa = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*\*/\*\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\3");
        }
    } else {
        set req.http.X-Qa = "-1";
    }
    # X-Qh: the same for HTML.
    if (req.http.Accept ~ "(?i)(^|,)\s*(text/html|application/xhtml\+xml)\s*(;|,|$)") {
        set req.http.X-Qh = "1";
        if (req.http.Accept ~ "(?i)(^|,)\s*(text/html|application/xhtml\+xml)\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qh = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*(text/html|application/xhtml\+xml)\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\4");
        }
    } elsif (req.http.Accept ~ "(?i)(^|,)\s*text/\*\s*(;|,|$)") {
        set req.http.X-Qh = "1";
        if (req.http.Accept ~ "(?i)(^|,)\s*text/\*\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qh = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*text/\*\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\3");
        }
    } elsif (req.http.Accept ~ "(^|,)\s*\*/\*\s*(;|,|$)") {
        set req.http.X-Qh = "1";
        if (req.http.Accept ~ "(^|,)\s*\*/\*\s*;([^,]*;)?\s*q\s*=") {
            set req.http.X-Qh = regsub(req.http.Accept,
                "(?i)^(.*,)?\s*\*/\*\s*;([^,]*;)?\s*q\s*=\s*([0-9.]*).*$", "\3");
        }
    } else {
        set req.http.X-Qh = "-1";
    }
    # A malformed q (captured empty) or one outside 0..1 counts as 0, as in the
    # feed server; "-1" (no matching range) parses as -1.
    if (std.real(req.http.X-Qa, 0) > 1) {
        set req.http.X-Qa = "0";
    }
    if (std.real(req.http.X-Qh, 0) > 1) {
        set req.http.X-Qh = "0";
    }
    if (std.real(req.http.X-Qh, 0) > std.real(req.http.X-Qa, 0)
        && std.real(req.http.X-Qh, 0) > 0) {
        set req.http.Accept = "text/html, application/xhtml+xml;q=0.9, */*;q=0.8";
    } else {
        set req.http.Accept = "application/atom+xml, application/xml;q=0.9, */*;q=0.8";
    }
    unset req.http.X-Qa;
    unset req.http.X-Qh;
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
    # Stale. The origin is down, or a fetch for this URL just failed: serve
    # within grace (= stale-if-error).
    if (!std.healthy(req.backend_hint) || req.http.X-Stale-Ok
        || vsthrottle.remaining("failed " + req.http.Host + " " + req.url, 1, 1s) == 0) {
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

sub vcl_miss {
    # Queued behind a fetch for a stale copy that failed meanwhile: take the
    # stale copy rather than trying the backend again.
    if (req.http.X-Fetch-Now && !req.http.X-Stale-Ok
        && vsthrottle.remaining("failed " + req.http.Host + " " + req.url, 1, 1s) == 0) {
        set req.http.X-Stale-Ok = "1";
        return (restart);
    }
}

sub vcl_backend_fetch {
    # A refresh of a stale copy that failed within the last second is not
    # tried again yet: the stale copy is served meanwhile (see vcl_hit). This
    # also stops the background fetch Varnish starts whenever it serves a
    # stale copy.
    if ((bereq.is_bgfetch || bereq.http.X-Fetch-Now)
        && vsthrottle.remaining("failed " + bereq.http.Host + " " + bereq.url, 1, 1s) == 0) {
        return (abandon);
    }
    unset bereq.http.X-Stale-Ok;
    # The coding the key asked for, even though Varnish (http_gzip_support, on
    # by default) has just set Accept-Encoding: gzip on every fill.
    if (bereq.http.X-Want-Gzip) {
        set bereq.http.Accept-Encoding = "gzip";
    } else {
        unset bereq.http.Accept-Encoding;
    }
    unset bereq.http.X-Want-Gzip;
    if (bereq.http.Prefer ~ "(?i)(^|,)\s*wait\s*=") {
        set bereq.first_byte_timeout = 65s;
    } elsif (bereq.http.X-Fetch-Now) {
        # A stale copy is at hand: do not keep its clients waiting long.
        set bereq.first_byte_timeout = 5s;
    }
    if (!bereq.uncacheable) {
        # A fill may be stored for everybody: it carries the keyed fields and
        # the fields Varnish itself adds for revalidation, nothing a client sent
        # besides.
        header.regsub(bereq,
            "^(?i)(?!(host|accept|accept-encoding|if-none-match|if-modified-since|x-forwarded-for|x-varnish|x-fetch-now)\s*:).*$",
            "X-Unkeyed-Dropped: 1");
    }
}

sub vcl_backend_response {
    # RFC 9111 section 4.4: a successful unsafe request invalidates its target.
    if (bereq.method !~ "^(GET|HEAD|OPTIONS|TRACE)$" && beresp.status >= 200 && beresp.status < 400) {
        set beresp.http.X-Ban-Path = bereq.url;
        call ban_path;
        set beresp.http.X-Ban-Path = beresp.http.Location;
        call ban_same_host;
        set beresp.http.X-Ban-Path = beresp.http.Content-Location;
        call ban_same_host;
        unset beresp.http.X-Ban-Path;
    }
    # A failed refresh of a stale copy keeps that copy (stale-if-error): a
    # background fetch, or the fetch vcl_hit asked for (X-Fetch-Now, which the
    # backend sees and may ignore).
    if (beresp.status >= 500 && (bereq.is_bgfetch || bereq.http.X-Fetch-Now)) {
        call remember_failure;
        return (abandon);
    }
    if (beresp.status >= 500) {
        # Nothing stale to fall back on: keep the error a second, so the
        # requests waiting for this fetch share it and the next second's
        # requests are coalesced again; never the built-in 120 s hit-for-miss.
        set beresp.ttl = 1s;
        set beresp.grace = 0s;
        set beresp.keep = 0s;
        if (beresp.http.Cache-Control ~ "(?i)no-store|private" || beresp.http.Set-Cookie) {
            set beresp.uncacheable = true;
        }
        return (deliver);
    }
    # A Vary on a field outside the key cannot be honoured: a fill never sends
    # such a field, so the variant stored would be the one for "absent" and
    # match no client that sends it. Not stored (like cache-proxy), as a
    # hit-for-miss so that requests do not queue for it.
    if (beresp.http.Vary ~ "(?i)(^|,)\s*(?!(accept|accept-encoding|prefer)\s*(,|$))[^,\s]") {
        set beresp.ttl = 120s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    # Which stored copies a later command bans.
    set beresp.http.X-Url = bereq.url;
    set beresp.http.X-Host = bereq.http.Host;
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

# Bans every stored copy of the path in X-Ban-Path on this host. (Ban
# arguments are unquoted words: a URL and a Host hold no white space.)
sub ban_path {
    if (bereq.http.Host) {
        if (!std.ban("obj.http.X-Url == " + beresp.http.X-Ban-Path
                + " && obj.http.X-Host == " + bereq.http.Host)) {
            std.log("ban failed: " + std.ban_error());
        }
    } elsif (!std.ban("obj.http.X-Url == " + beresp.http.X-Ban-Path)) {
        std.log("ban failed: " + std.ban_error());
    }
}

# Bans X-Ban-Path (a Location or Content-Location) if it names this host.
sub ban_same_host {
    if (beresp.http.X-Ban-Path ~ "^https?://") {
        if (regsub(beresp.http.X-Ban-Path, "^https?://([^/?#]+).*$", "\1") == bereq.http.Host) {
            set beresp.http.X-Ban-Path = regsub(beresp.http.X-Ban-Path, "^https?://[^/?#]+", "");
            if (beresp.http.X-Ban-Path == "") {
                set beresp.http.X-Ban-Path = "/";
            }
            call ban_path;
        }
    } elsif (beresp.http.X-Ban-Path ~ "^/") {
        call ban_path;
    }
}

sub remember_failure {
    if (vsthrottle.is_denied("failed " + bereq.http.Host + " " + bereq.url, 1, 1s)) {
        std.log("failure already remembered");
    }
}

sub vcl_backend_error {
    if (bereq.is_bgfetch || bereq.http.X-Fetch-Now) {
        # Never store an error object over a stale copy that stale-if-error
        # still allows: the client side turns this into a restart (stale copy).
        call remember_failure;
        return (abandon);
    }
    # Nothing stale: a 502 problem that the requests waiting for this fetch
    # share, kept one second.
    set beresp.status = 502;
    set beresp.reason = "Bad Gateway";
    set beresp.http.Content-Type = "application/problem+json";
    set beresp.http.Cache-Control = "no-store";
    set beresp.ttl = 1s;
    set beresp.grace = 0s;
    set beresp.keep = 0s;
    synthetic({"{"type":"about:blank","title":"Bad Gateway","status":502,"detail":"the upstream did not answer" }"});
    return (deliver);
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
    if (resp.status == 400) {
        set resp.http.Content-Type = "application/problem+json";
        set resp.http.Cache-Control = "no-store";
        set resp.body = {"{"type":"about:blank","title":"Bad Request","status":400,"detail":""} + resp.reason + {"" }"};
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
    unset resp.http.X-Url;
    unset resp.http.X-Host;
}
