//! The outside programs: wrk (load), nginx (P2's baseline) and varnishd (P3's).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use feed::testing::installed;

use crate::roles::{free_port, wait_until_up};

/// What a wrk run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkResult {
    pub(crate) requests_per_sec: f64,
    /// Responses that were not 2xx/3xx, plus socket errors.
    pub(crate) errors: u64,
}

/// Runs wrk against `url` with 2 threads and the given connections and headers.
pub(crate) fn wrk(
    url: &str,
    seconds: u64,
    connections: u32,
    headers: &[&str],
) -> anyhow::Result<WrkResult> {
    let wrk = installed("wrk").context("wrk is not installed (apt-get install wrk)")?;
    let mut command = Command::new(wrk);
    command.args([
        "-t2".to_owned(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
    ]);
    for h in headers {
        command.args(["-H", h]);
    }
    let output = command.arg(url).stderr(Stdio::inherit()).output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    let field = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
    };
    let requests_per_sec = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("wrk gave no result for {url}: {report}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkResult {
        requests_per_sec,
        errors: non_2xx + socket,
    })
}

/// A process stopped when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a master process (nginx, varnishd's manager) stops its
        // workers on it, where SIGKILL would leave them running without it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder every user can read: nginx workers and varnish's `vcache` user read
/// files in it.
fn open_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn write_readable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// nginx serving `files` (name, identity bytes, gzip bytes) from one folder with
/// `gzip_static on`, so gzip clients get the stored `.gz` file as it is.
pub(crate) async fn nginx(
    client: &reqwest::Client,
    files: &[(&str, &[u8], &[u8])],
) -> anyhow::Result<Daemon> {
    let nginx =
        installed("nginx").context("nginx is not installed (apt-get install nginx-light)")?;
    let dir = open_dir()?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    for (name, identity, gzip) in files {
        write_readable(&root.join(name), identity)?;
        write_readable(&root.join(format!("{name}.gz")), gzip)?;
    }
    let port = free_port()?;
    let prefix = dir.path().display().to_string();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes auto;\nuser root;\n\
         error_log {prefix}/error.log;\npid {prefix}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           default_type application/atom+xml;\n\
           client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
           fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    gzip_static on;\n    etag on;\n  }}\n}}\n",
        root = root.display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start nginx")?;
    let daemon = Daemon {
        child,
        _dir: dir,
        port,
    };
    wait_until_up(client, &format!("http://127.0.0.1:{port}/")).await?;
    Ok(daemon)
}

/// Removes the `.probe = { ... };` block of a backend: the benchmark's origin has
/// no health URL of its own, and a probe-less backend is always healthy.
fn without_probe(vcl: &str) -> String {
    let Some(start) = vcl.find(".probe = {") else {
        return vcl.to_owned();
    };
    let mut depth = 0usize;
    for (i, c) in vcl[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let mut end = start + i + 1;
                    if vcl[end..].starts_with(';') {
                        end += 1;
                    }
                    return format!("{}{}", &vcl[..start], &vcl[end..]);
                }
            }
            _ => {}
        }
    }
    vcl.to_owned()
}

/// Points the first `.host` / `.port` of the VCL at the origin.
fn pointed_at(vcl: &str, origin_port: u16) -> anyhow::Result<String> {
    let mut out = String::with_capacity(vcl.len());
    let (mut host_done, mut port_done) = (false, false);
    for line in vcl.lines() {
        let t = line.trim_start();
        if !host_done && t.starts_with(".host") {
            out.push_str("    .host = \"127.0.0.1\";\n");
            host_done = true;
        } else if !port_done && t.starts_with(".port") {
            out.push_str(&format!("    .port = \"{origin_port}\";\n"));
            port_done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !(host_done && port_done) {
        bail!("the VCL has no backend .host/.port to point at the origin");
    }
    Ok(out)
}

/// varnishd with `vcl` (its backend pointed at `origin_port`) and extra `-p`
/// parameters.
pub(crate) async fn varnish(
    client: &reqwest::Client,
    vcl: &str,
    origin_port: u16,
    params: &[&str],
) -> anyhow::Result<Daemon> {
    let varnishd =
        installed("varnishd").context("varnishd is not installed (apt-get install varnish)")?;
    let dir = open_dir()?;
    let vcl_path = dir.path().join("bench.vcl");
    write_readable(
        &vcl_path,
        pointed_at(&without_probe(vcl), origin_port)?.as_bytes(),
    )?;
    let port = free_port()?;
    let admin = free_port()?;
    let mut command = feed::testing::varnishd_command(
        &varnishd,
        &dir.path().join("varnish"),
        port,
        admin,
        &vcl_path,
        256,
    );
    for p in params {
        command.arg("-p").arg(p);
    }
    let child = command
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start varnishd")?;
    let daemon = Daemon {
        child,
        _dir: dir,
        port,
    };
    wait_until_up(client, &format!("http://127.0.0.1:{port}/")).await?;
    Ok(daemon)
}

/// The VCL a user gets with a stock Varnish: only a backend (the built-in VCL does
/// the rest, storing gzip and gunzipping for identity clients).
pub(crate) const STOCK_VCL: &str =
    "vcl 4.1;\nbackend default {\n    .host = \"127.0.0.1\";\n    .port = \"80\";\n}\n";
