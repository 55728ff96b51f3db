//! A tiny W3C WebDriver client over reqwest, driving Debian's chromium through
//! chromedriver: just what the browser tests need, every call bounded by a timeout.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; chromedriver and the browser end when it is dropped.
pub(crate) struct Browser {
    http: reqwest::Client,
    driver_url: String,
    session: String,
    /// Declared before the profile, so the processes end before it is deleted.
    driver: DriverProcess,
    _profile: tempfile::TempDir,
}

/// chromedriver in its own process group (with the browser it starts): killed as a
/// group, by its id, on drop.
struct DriverProcess {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Ask chromedriver to quit the browser gracefully first (blocking, bounded).
            let _ = delete_session_blocking(self.port, &session);
        }
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delete_session_blocking(port: u16, session: &str) -> std::io::Result<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf)?;
    Ok(())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, or returns None (loudly) when
    /// they are not installed.
    pub(crate) async fn start() -> Option<Self> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            eprintln!(
                "\n*** SKIPPED: the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver) ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn chromedriver")
        };
        let mut driver = DriverProcess {
            child,
            port,
            session: None,
        };
        let profile = tempfile::tempdir().expect("profile dir");
        feed::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let driver_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{driver_url}/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let r = json_of(
            http.post(format!("{driver_url}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .await
                .expect("new session"),
        )
        .await;
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        driver.session = Some(session.clone());
        Some(Self {
            http,
            driver_url,
            session,
            driver,
            _profile: profile,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let r = json_of(req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))).await;
        if let Some(err) = r["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    /// Navigates and waits for the load.
    pub(crate) async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub(crate) async fn back(&self) {
        self.call(reqwest::Method::POST, "/back", Some(json!({})))
            .await;
    }

    pub(crate) async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; use `return`) in the page.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The text of the first element matching `css` (empty when none).
    pub(crate) async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        );
        self.eval(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub(crate) async fn count(&self, css: &str) -> u64 {
        let script = format!("return document.querySelectorAll({}).length;", json!(css));
        self.eval(&script).await.as_u64().unwrap_or(0)
    }

    /// The WebDriver id of the first element matching `css`.
    async fn find(&self, css: &str) -> String {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        el[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned()
    }

    /// Clicks the first element matching `css`, as a user would, and waits for the
    /// navigation it starts to leave the current page.
    pub(crate) async fn click(&self, css: &str) {
        let from = self.current_url().await;
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
        self.wait_to_leave(&from, css).await;
    }

    /// Focuses the first element matching `css` and presses Enter on it, as a
    /// keyboard user would, and waits for the navigation it starts.
    pub(crate) async fn press_enter_on(&self, css: &str) {
        let from = self.current_url().await;
        let id = self.find(css).await;
        let script = format!(
            "const e = document.querySelector({}); e.focus(); return document.activeElement === e;",
            json!(css)
        );
        assert_eq!(self.eval(&script).await, true, "{css} takes the focus");
        // U+E007 is WebDriver's Enter key.
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": "\u{E007}" })),
        )
        .await;
        self.wait_to_leave(&from, css).await;
    }

    async fn wait_to_leave(&self, from: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.current_url().await == from {
            assert!(Instant::now() < deadline, "{what} went nowhere");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_for(
            "return document.readyState === 'complete';",
            Duration::from_secs(10),
        )
        .await;
    }

    /// Polls `script` until it returns something truthy.
    pub(crate) async fn wait_for(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {script}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Emulates a screen `width` CSS pixels wide (None: back to the window).
    pub(crate) async fn emulate_width(&self, width: Option<u32>) {
        let (cmd, params) = match width {
            Some(w) => (
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": w, "height": 800, "deviceScaleFactor": 2, "mobile": true }),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await;
    }

    /// Saves a full-page PNG screenshot (through the DevTools protocol).
    pub(crate) async fn screenshot(&self, path: &Path) {
        let size = self
            .eval("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];")
            .await;
        let (w, h) = (
            size[0].as_f64().unwrap_or(1280.0),
            size[1].as_f64().unwrap_or(900.0),
        );
        let shot = self
            .call(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                Some(json!({ "cmd": "Page.captureScreenshot", "params": {
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": w, "height": h, "scale": 1 },
                }})),
            )
            .await;
        let data = shot["data"].as_str().expect("screenshot data");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, base64_decode(data)).expect("write screenshot");
    }

    /// Ends the session and the processes now (dropping does the same, blocking).
    pub(crate) async fn quit(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.http
                .delete(format!("{}/session/{}", self.driver_url, self.session))
                .send(),
        )
        .await;
        self.driver.session = None;
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    let bytes = r.bytes().await.expect("WebDriver response");
    serde_json::from_slice(&bytes).expect("WebDriver JSON")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let produced = chunk.len() * 6 / 8;
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes_padded_and_unpadded_input() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
