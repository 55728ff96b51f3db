//! Test support (feature `testing`): a throwaway PostgreSQL cluster, the varnishd
//! command line ([`varnishd_command`]), waiting for things to happen
//! ([`eventually`]) and reading a whole feed ([`feed_events`]).
//!
//! `initdb` refuses to run as root, so when the tests run as root the cluster is
//! created and started as the `postgres` user (through `runuser`). The cluster listens
//! on 127.0.0.1 on a free port, lives in a temporary folder, runs with `fsync=off`
//! and is stopped when the handle is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod feeds;

pub use feeds::{PATIENCE, Ready, eventually, feed_document, feed_events, of_type};

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_user: Option<&'static str>,
}

/// Where the PostgreSQL server binaries are, if installed.
pub fn pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// Starts a cluster, or returns None (after saying so loudly on stderr) when the
    /// PostgreSQL binaries are not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = pg_bin() else {
            eprintln!(
                "\n*** SKIPPED: PostgreSQL server binaries not found (apt-get install postgresql) ***\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let as_user = is_root().then_some("postgres");
        if as_user.is_some() {
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status();
        }
        let port = free_port();
        let data = dir.path().join("data");
        let cluster = Self {
            dir,
            bin,
            port,
            as_user,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            cluster.port,
            cluster.dir.path().display()
        );
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &cluster.dir.path().join("log").display().to_string(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        );
        Some(cluster)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for a fresh database `name` on this cluster (created on first call).
    pub fn database(&self, name: &str) -> String {
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-q",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ],
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server (fast shutdown); it can be started again with [`Self::restart`].
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cluster's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            let exe = self.bin.join("pg_ctl");
            let data = self.data();
            let mut cmd = match self.as_user {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.arg("-u").arg(user).arg("--").arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            let _ = cmd
                .args(["-D", &data.display().to_string(), "-m", "immediate", "stop"])
                .output();
        });
    }
}

/// A port the OS considers free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Where `program` (varnishd, wrk, nginx...) is installed, on the `PATH` or in an
/// `sbin` folder, if it is.
pub fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The varnishd command line the tests and the benchmarks share: `varnishd` in the
/// foreground, its state in `workdir`, serving on 127.0.0.1:`port` with its
/// management interface on 127.0.0.1:`admin`, running the VCL file `vcl` with
/// `storage_mib` MiB of memory storage, its stdin and stdout closed. The caller adds
/// what else it needs (`-p` parameters, where stderr goes) and spawns it.
pub fn varnishd_command(
    varnishd: &Path,
    workdir: &Path,
    port: u16,
    admin: u16,
    vcl: &Path,
    storage_mib: u32,
) -> Command {
    let mut command = Command::new(varnishd);
    command
        .arg("-F")
        .arg("-n")
        .arg(workdir)
        .arg("-a")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-T")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("-f")
        .arg(vcl)
        .arg("-s")
        .arg(format!("malloc,{storage_mib}m"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}
