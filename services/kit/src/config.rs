use std::net::SocketAddr;
use std::path::PathBuf;

/// The flags every service binary takes (flatten them into the service's own clap
/// `Config`). Every flag can also come from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Database URL: `postgres://...`, `sqlite:PATH`, or a file path. Default:
    /// `<data-dir>/<service>.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for the SQLite file and other local state (mail).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The public base URL of this service, used in every feed link (e.g. the
    /// gateway's `http://127.0.0.1:8080/sales`). Default: `http://<listen>`.
    #[arg(long, env = "BASE_URL")]
    pub base_url: Option<String>,
    /// Bearer token required on commands (POST/PUT/DELETE). Feeds and GETs stay public.
    #[arg(long, env = "RETAIL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Entries per sealed feed page (applies to pages not yet sealed).
    #[arg(long, env = "PAGE_SIZE")]
    pub page_size: Option<u64>,
}

impl ServiceArgs {
    /// Arguments for tests and the all-in-one binary: SQLite under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: None,
            data_dir: data_dir.into(),
            base_url: None,
            api_token: None,
            page_size: None,
        }
    }

    /// The public base URL: `--base-url`, or the address `listener` is bound to.
    pub fn public_base_url(&self, listener: &tokio::net::TcpListener) -> std::io::Result<String> {
        match &self.base_url {
            Some(url) => Ok(url.trim_end_matches('/').to_owned()),
            None => Ok(format!("http://{}", listener.local_addr()?)),
        }
    }

    /// The database URL for service `name`.
    pub fn database_url_for(&self, name: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            self.data_dir
                .join(format!("{name}.db"))
                .display()
                .to_string()
        })
    }
}
