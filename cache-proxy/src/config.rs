//! Configuration: one clap struct, every field a flag and an environment variable,
//! and optionally a TOML file (`--config FILE`) holding the same settings.
//!
//! Precedence: a flag or environment variable wins over the file, the file wins
//! over the built-in default. Routes are taken as a whole: `--route` (or
//! `CACHE_PROXY_ROUTES`) replaces the file's `[routes]` table, it is not merged
//! with it, so the effective route list is always one of the two as written.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use url::Url;

/// Settings of the gateway. The binary reads them with [`Config::load`]; an
/// embedding program builds one with [`Config::new`] or flattens it into its
/// own clap struct.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "cache-proxy",
    version,
    about = "A caching reverse proxy for Atom feeds (RFC 9111)."
)]
pub struct Config {
    /// A TOML file with any of the settings below (keys as the flags without
    /// `--`, routes as a `[routes]` table of `"/prefix" = "http://upstream"`);
    /// flags and environment variables override it.
    #[arg(long = "config", env = "CACHE_PROXY_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "CACHE_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A route `PREFIX=UPSTREAM`, e.g. `/catalog=http://127.0.0.1:8081`; repeat it,
    /// or separate routes with commas in the environment variable. The longest
    /// matching prefix wins; the rest of the path and the query are forwarded.
    /// Required unless the config file has routes.
    #[arg(long = "route", env = "CACHE_PROXY_ROUTES", value_delimiter = ',')]
    pub routes: Vec<Route>,

    /// Cache capacity in bytes (bodies plus headers), e.g. `256MiB`.
    #[arg(long, env = "CACHE_PROXY_CAPACITY", default_value = "256MiB")]
    pub capacity: ByteSize,

    /// Largest response body that is stored; larger ones are streamed through.
    #[arg(long, env = "CACHE_PROXY_MAX_OBJECT_SIZE", default_value = "16MiB")]
    pub max_object_size: ByteSize,

    /// Bytes of response bodies buffered at once for cache fills, long polls and
    /// error responses (outside the cache capacity); once it is used up, further
    /// responses stream through without being stored.
    #[arg(long, env = "CACHE_PROXY_MAX_IN_FLIGHT", default_value = "64MiB")]
    pub max_in_flight: ByteSize,

    /// How long to wait for a TCP connection to an upstream, e.g. `2s`.
    #[arg(long, env = "CACHE_PROXY_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long an upstream may take to answer (whole response for cache fills,
    /// response head for streamed responses); a timeout is a 504.
    #[arg(long, env = "CACHE_PROXY_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// How long a request waits for a revalidation when the stored copy may be
    /// served on error (stale-if-error); after that the stale copy is served and
    /// the revalidation carries on in the background up to --upstream-timeout.
    #[arg(long, env = "CACHE_PROXY_STALE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub stale_timeout: Duration,

    /// Extra time given to a long poll (`Prefer: wait=N`) on top of N.
    #[arg(long, env = "CACHE_PROXY_LONG_POLL_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub long_poll_grace: Duration,

    /// Largest `wait` honoured for a long poll; longer waits are cut to this,
    /// also in the `Prefer` sent upstream.
    #[arg(long, env = "CACHE_PROXY_MAX_LONG_POLL", default_value = "60s", value_parser = parse_duration)]
    pub max_long_poll: Duration,

    /// How long an expired entry with an ETag is kept for a cheap If-None-Match
    /// revalidation (Varnish's "keep").
    #[arg(long, env = "CACHE_PROXY_KEEP", default_value = "10m", value_parser = parse_duration)]
    pub keep: Duration,

    /// Longest request target (path and query) accepted; longer ones get 414.
    #[arg(long, env = "CACHE_PROXY_MAX_URI_BYTES", default_value = "8KiB")]
    pub max_uri_bytes: ByteSize,

    /// Largest total size of request header fields; larger requests get 431.
    #[arg(long, env = "CACHE_PROXY_MAX_HEADER_BYTES", default_value = "32KiB")]
    pub max_header_bytes: ByteSize,

    /// Largest request body passed through (POST, PUT, ...); larger ones get 413.
    #[arg(long, env = "CACHE_PROXY_MAX_BODY_SIZE", default_value = "16MiB")]
    pub max_body_size: ByteSize,
}

/// A configuration that cannot be used; the binary prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line is wrong, or asked for `--help` / `--version`
    /// (`clap::Error::exit` prints either properly).
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// The config file cannot be read.
    #[error("cannot read the config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML or holds an unknown or malformed setting.
    #[error("config file {0}: {1}")]
    File(PathBuf, String),
    /// A route in the config file is malformed.
    #[error("config file {0}: {1}")]
    FileRoute(PathBuf, RouteError),
    /// Neither the command line nor the file names a route.
    #[error("no route: give --route PREFIX=UPSTREAM or a [routes] table in --config")]
    NoRoutes,
}

impl Config {
    /// The defaults of the command line, with the given routes.
    pub fn new(routes: Vec<Route>) -> Config {
        Config {
            config_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            routes,
            capacity: ByteSize(256 << 20),
            max_object_size: ByteSize(16 << 20),
            max_in_flight: ByteSize(64 << 20),
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(15),
            stale_timeout: Duration::from_secs(2),
            long_poll_grace: Duration::from_secs(5),
            max_long_poll: Duration::from_secs(60),
            keep: Duration::from_secs(600),
            max_uri_bytes: ByteSize(8 << 10),
            max_header_bytes: ByteSize(32 << 10),
            max_body_size: ByteSize(16 << 20),
        }
    }

    /// How the proxy's server reads requests: the feed server's default limits,
    /// with room for the request line and header section this config allows, so
    /// a client over them gets the proxy's own problem+json 414 or 431.
    pub fn serve_limits(&self) -> feed::server::ServeLimits {
        let allowed = self.max_header_bytes.0.saturating_add(self.max_uri_bytes.0);
        feed::server::ServeLimits {
            max_header_bytes: usize::try_from(allowed).unwrap_or(usize::MAX / 4),
            ..feed::server::ServeLimits::default()
        }
    }

    /// Reads the process's command line, environment and `--config` file.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// Like [`Config::load`], for the given command line (first item: the
    /// program name).
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        if let Some(path) = config.config_file.clone() {
            let text =
                std::fs::read_to_string(&path).map_err(|e| ConfigError::Read(path.clone(), e))?;
            let file: FileConfig = toml::from_str(&text)
                .map_err(|e| ConfigError::File(path.clone(), one_line(&e.to_string())))?;
            config
                .apply(file, &matches)
                .map_err(|e| ConfigError::FileRoute(path, e))?;
        }
        if config.routes.is_empty() {
            return Err(ConfigError::NoRoutes);
        }
        Ok(config)
    }

    /// Takes every setting of `file` that the command line left at its default.
    fn apply(&mut self, file: FileConfig, matches: &ArgMatches) -> Result<(), RouteError> {
        let unset = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        macro_rules! take {
            ($($field:ident),*) => {$(
                if let Some(value) = file.$field
                    && unset(stringify!($field))
                {
                    self.$field = value.into();
                }
            )*};
        }
        take!(
            listen,
            capacity,
            max_object_size,
            max_in_flight,
            connect_timeout,
            upstream_timeout,
            stale_timeout,
            long_poll_grace,
            max_long_poll,
            keep,
            max_uri_bytes,
            max_header_bytes,
            max_body_size
        );
        if let Some(routes) = file.routes
            && unset("routes")
        {
            self.routes = routes
                .iter()
                .map(|(prefix, upstream)| Route::new(prefix, upstream))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

/// toml's messages span several lines (with a source excerpt); a CLI error is one.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The settings a `--config` file may hold: the flags' names, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    routes: Option<BTreeMap<String, String>>,
    capacity: Option<ByteSize>,
    max_object_size: Option<ByteSize>,
    max_in_flight: Option<ByteSize>,
    connect_timeout: Option<FileDuration>,
    upstream_timeout: Option<FileDuration>,
    stale_timeout: Option<FileDuration>,
    long_poll_grace: Option<FileDuration>,
    max_long_poll: Option<FileDuration>,
    keep: Option<FileDuration>,
    max_uri_bytes: Option<ByteSize>,
    max_header_bytes: Option<ByteSize>,
    max_body_size: Option<ByteSize>,
}

/// A duration in the file, written as on the command line (`"5s"`, `"250ms"`)
/// or as a number of seconds.
#[derive(Debug, Clone, Copy)]
struct FileDuration(Duration);

impl From<FileDuration> for Duration {
    fn from(d: FileDuration) -> Duration {
        d.0
    }
}

impl<'de> serde::Deserialize<'de> for FileDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(secs) => Ok(FileDuration(Duration::from_secs(secs))),
            NumberOrText::Text(s) => parse_duration(&s)
                .map(FileDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(bytes) => Ok(ByteSize(bytes)),
            NumberOrText::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// One route: requests whose path starts with `prefix` (at a segment boundary)
/// go to `upstream`, with the prefix removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, `/` or `/name` without a trailing slash.
    pub prefix: String,
    /// Base URL of the upstream; the rest of the path is appended to its path.
    pub upstream: Url,
}

/// A `--route` argument that is not `PREFIX=http(s)://...`.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The argument lacks the `=` between prefix and upstream.
    #[error("a route is PREFIX=UPSTREAM, e.g. /catalog=http://127.0.0.1:8081; got {0:?}")]
    Syntax(String),
    /// The prefix does not start with `/` or contains `?`, `#` or `..`.
    #[error("route prefix {0:?} must start with / and hold no query, fragment or dot segment")]
    Prefix(String),
    /// The upstream is not an absolute http or https URL without query.
    #[error("route upstream {0:?} must be an http:// or https:// URL without query or fragment")]
    Upstream(String),
}

impl Route {
    /// Builds a route from a prefix and an upstream base URL.
    pub fn new(prefix: &str, upstream: &str) -> Result<Route, RouteError> {
        let trimmed = prefix.trim_end_matches('/');
        let prefix_ok = prefix.starts_with('/')
            && !prefix.contains(['?', '#'])
            && !prefix.split('/').any(|s| s == ".." || s == ".");
        if !prefix_ok {
            return Err(RouteError::Prefix(prefix.to_owned()));
        }
        let url = Url::parse(upstream).map_err(|_| RouteError::Upstream(upstream.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(RouteError::Upstream(upstream.to_owned()));
        }
        let prefix = if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        };
        Ok(Route {
            prefix,
            upstream: url,
        })
    }

    /// The part of `path` after this route's prefix (`Some("")` for an exact
    /// match), or `None` if the route does not match at a segment boundary.
    pub(crate) fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

impl FromStr for Route {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, upstream) = s
            .split_once('=')
            .ok_or_else(|| RouteError::Syntax(s.to_owned()))?;
        Route::new(prefix.trim(), upstream.trim())
    }
}

/// A size in bytes, parsed from `1048576`, `512KiB`, `256MiB`, `1GiB` (also `k`,
/// `KB`, `m`, `MB`, ...: all units are binary, 1 KB = 1024 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 256MiB"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s"))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_match_at_segment_boundaries() {
        let r: Route = "/catalog=http://127.0.0.1:8081"
            .parse()
            .expect("valid route");
        assert_eq!(r.strip("/catalog"), Some(""));
        assert_eq!(r.strip("/catalog/feed"), Some("/feed"));
        assert_eq!(r.strip("/catalogue"), None);
        let root: Route = "/=http://127.0.0.1:1".parse().expect("valid route");
        assert_eq!(root.strip("/x"), Some("/x"));
        for bad in [
            "catalog=http://x",
            "/a",
            "/a=ftp://x",
            "/a=http://x/?q",
            "/../a=http://x",
        ] {
            assert!(bad.parse::<Route>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!("256MiB".parse::<ByteSize>(), Ok(ByteSize(256 << 20)));
        assert_eq!("64m".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_command_line_accepts_repeated_routes() {
        let c = Config::load_from([
            "cache-proxy",
            "--route",
            "/catalog=http://127.0.0.1:8081",
            "--route",
            "/sales=http://127.0.0.1:8082",
            "--capacity",
            "64MiB",
        ])
        .expect("valid command line");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.capacity, ByteSize(64 << 20));
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn a_config_file_supplies_routes_and_settings_and_flags_override_it() {
        let file = write(
            r#"
listen = "127.0.0.1:9000"
capacity = "8MiB"
max-object-size = 65536
upstream-timeout = "3s"
stale-timeout = 1

[routes]
"/catalog" = "http://127.0.0.1:8081"
"/sales" = "http://127.0.0.1:8082"
"#,
        );
        let path = file.path().to_str().expect("utf-8 path");
        let c = Config::load_from(["cache-proxy", "--config", path]).expect("valid file");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.capacity, ByteSize(8 << 20));
        assert_eq!(c.max_object_size, ByteSize(65536));
        assert_eq!(c.upstream_timeout, Duration::from_secs(3));
        assert_eq!(c.stale_timeout, Duration::from_secs(1));
        assert_eq!(
            c.keep,
            Duration::from_secs(600),
            "default where the file is silent"
        );
        let prefixes: Vec<&str> = c.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["/catalog", "/sales"]);

        let c = Config::load_from([
            "cache-proxy",
            "--config",
            path,
            "--capacity",
            "1MiB",
            "--route",
            "/only=http://127.0.0.1:1",
        ])
        .expect("valid");
        assert_eq!(c.capacity, ByteSize(1 << 20), "the flag wins");
        assert_eq!(
            c.upstream_timeout,
            Duration::from_secs(3),
            "the file still counts"
        );
        assert_eq!(c.routes.len(), 1, "--route replaces the file's routes");
        assert_eq!(c.routes[0].prefix, "/only");
    }

    #[test]
    fn a_bad_config_file_is_a_one_line_error_naming_the_file() {
        for (text, needle) in [
            (
                "capacity = \"lots\"\n[routes]\n\"/a\" = \"http://h\"",
                "lots",
            ),
            ("colour = \"blue\"", "colour"),
            ("[routes]\n\"/a\" = \"ftp://h\"", "ftp://h"),
            ("listen = [", ""),
        ] {
            let file = write(text);
            let path = file.path().to_str().expect("utf-8 path");
            let err = Config::load_from(["cache-proxy", "--config", path])
                .expect_err(text)
                .to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains(path), "{err}");
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
        let missing = Config::load_from(["cache-proxy", "--config", "/nonexistent/cp.toml"])
            .expect_err("missing file")
            .to_string();
        assert!(missing.contains("/nonexistent/cp.toml"), "{missing}");
        assert!(matches!(
            Config::load_from(["cache-proxy"]),
            Err(ConfigError::NoRoutes)
        ));
    }
}
