//! Fronts under test: cache-proxy in-process, and a real varnishd with our VCL.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cache_proxy::{Config, Proxy, Route};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::origin::Origin;

/// The route prefix under which cache-proxy serves the origin.
pub(crate) const PREFIX: &str = "/svc";

pub(crate) enum Front {
    Proxy(ProxyFront),
    Varnish(Varnish),
}

impl Front {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Front::Proxy(_) => "cache-proxy",
            Front::Varnish(_) => "varnish",
        }
    }

    /// The URL of an origin path through this front.
    pub(crate) fn url(&self, origin_path: &str) -> String {
        match self {
            Front::Proxy(p) => format!("http://{}{PREFIX}{origin_path}", p.addr),
            Front::Varnish(v) => format!("http://{}{origin_path}", v.addr),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Front::Proxy(p) => p.addr,
            Front::Varnish(v) => v.addr,
        }
    }

    /// The request target of an origin path through this front.
    pub(crate) fn target(&self, origin_path: &str) -> String {
        match self {
            Front::Proxy(_) => format!("{PREFIX}{origin_path}"),
            Front::Varnish(_) => origin_path.to_owned(),
        }
    }

    /// Whether the front says it answered from its cache.
    pub(crate) fn was_hit(&self, response: &reqwest::Response) -> bool {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        match self {
            Front::Proxy(_) => header("cache-status").contains("; hit"),
            Front::Varnish(_) => header("x-cache") == "HIT",
        }
    }

    /// Whether a fresh response to a credentialed request may be reused for
    /// others when it says `public` (cache-proxy: yes, RFC 9111 3.5; the VCL
    /// keeps Varnish's built-in pass, which never stores them).
    pub(crate) fn stores_public_credentialed(&self) -> bool {
        matches!(self, Front::Proxy(_))
    }
}

pub(crate) struct ProxyFront {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ProxyFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn proxy_config(origin: &Origin) -> Config {
    let route = Route::new(PREFIX, &origin.url()).expect("valid route");
    let mut config = Config::new(vec![route]);
    config.upstream_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(1);
    config
}

pub(crate) async fn spawn_proxy_with(config: Config) -> Front {
    let proxy = Proxy::new(config).expect("proxy builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        cache_proxy::serve(listener, proxy, async move {
            let _ = stopped.await;
        })
        .await
        .expect("proxy serves");
    });
    Front::Proxy(ProxyFront {
        addr,
        stop: Some(stop),
    })
}

pub(crate) async fn spawn_proxy(origin: &Origin) -> Front {
    spawn_proxy_with(proxy_config(origin)).await
}

/// A varnishd started for one test, killed when dropped.
pub(crate) struct Varnish {
    pub(crate) addr: SocketAddr,
    child: Child,
    /// `varnishlog` when TEST_LOG is set.
    log: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Varnish {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(log.id().to_string())
                .status();
            let _ = log.wait();
        }
        // SIGTERM lets the manager stop its worker; SIGKILL only if it hangs.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts varnishd with `varnish/default.vcl` pointed at `origin`, or returns
/// `None` (after saying so loudly) when varnishd or varnish-modules is not
/// installed.
pub(crate) async fn spawn_varnish(origin: &Origin, test: &str) -> Option<Front> {
    spawn_varnish_at(origin.addr(), test).await
}

/// [`spawn_varnish`] for any backend address.
pub(crate) async fn spawn_varnish_at(backend: SocketAddr, test: &str) -> Option<Front> {
    use std::os::unix::fs::PermissionsExt;
    let Some(varnishd) = feed::testing::installed("varnishd") else {
        eprintln!(
            "\n!!!!! SKIPPED {test}: varnishd is not installed (apt-get install varnish) !!!!!\n"
        );
        return None;
    };
    let mut attempt = 0;
    let (mut varnish, port, workdir, stderr_path) = 'start: loop {
        attempt += 1;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let vcl =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/varnish/default.vcl"))
                .expect("read default.vcl");
        let vcl = vcl
            .replace(
                ".host = \"127.0.0.1\";",
                &format!(".host = \"{}\";", backend.ip()),
            )
            .replace(
                ".port = \"8080\";",
                &format!(".port = \"{}\";", backend.port()),
            );
        let vcl_path = dir.path().join("default.vcl");
        std::fs::write(&vcl_path, vcl).expect("write vcl");
        std::fs::set_permissions(&vcl_path, std::fs::Permissions::from_mode(0o644))
            .expect("chmod vcl");
        let port = free_port();
        let admin = free_port();
        let workdir = dir.path().join("varnish");
        let stderr_path = dir.path().join("varnishd.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("varnishd stderr file");
        let child =
            feed::testing::varnishd_command(&varnishd, &workdir, port, admin, &vcl_path, 64)
                .stderr(stderr)
                .spawn()
                .expect("start varnishd");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut varnish = Varnish {
            addr,
            child,
            log: None,
            _dir: dir,
        };
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(format!("http://{addr}/")).send().await.is_ok() {
                break 'start (varnish, port, workdir, stderr_path);
            }
            if let Ok(Some(status)) = varnish.child.try_wait() {
                let output = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                if output.contains("Could not find VMOD") || output.contains("Could not open VMOD")
                {
                    eprintln!(
                        "\n!!!!! SKIPPED {test}: varnish-modules is not installed (apt-get install varnish-modules) !!!!!\n"
                    );
                    return None;
                }
                // Another socket of this test run took the port between
                // `free_port` and varnishd's bind: start again on new ports.
                if output.contains("Address already in use") && attempt < 3 {
                    continue 'start;
                }
                panic!("varnishd exited with {status}:\n{output}");
            }
            assert!(
                Instant::now() < deadline,
                "varnishd did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let addr = varnish.addr;
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("varnishd's own output goes to {}", stderr_path.display());
        let file = std::env::temp_dir().join(format!("varnishlog-{port}.txt"));
        eprintln!("varnishlog of {addr} goes to {}", file.display());
        varnish.log = Command::new("varnishlog")
            .arg("-n")
            .arg(&workdir)
            .arg("-g")
            .arg("request")
            .arg("-A")
            .arg("-w")
            .arg(&file)
            .spawn()
            .ok();
    }
    Some(Front::Varnish(varnish))
}

/// A client that shows bodies as sent (no transparent gunzip) and ignores proxies.
pub(crate) fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_idle_timeout(feed::server::ServeLimits::default().idle_client_timeout())
        .no_gzip()
        .no_zstd()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub(crate) fn gunzip(bytes: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("valid gzip");
    out
}

/// The body as text, gunzipped when the response says gzip.
pub(crate) async fn text(response: reqwest::Response) -> String {
    let gzipped = response
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let bytes = response.bytes().await.expect("body");
    if gzipped {
        gunzip(&bytes)
    } else {
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }
}

/// Sends a raw HTTP/1.1 request and returns the raw response head and body.
pub(crate) async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}
