use std::net::SocketAddr;
use std::path::PathBuf;

/// The flags every service binary takes (flatten them into the service's own clap
/// `Config`). Every flag can also come from the environment, and every flag is
/// `global`: it may stand before or after the subcommand (`sales --data-dir d rebuild`
/// and `sales rebuild --data-dir d` mean the same).
#[derive(Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address to listen on.
    #[arg(long, global = true, env = "LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Database URL: `postgres://...`, `sqlite:PATH`, or a file path. Default:
    /// `<data-dir>/<service>.db`.
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for the SQLite file and other local state (mail).
    #[arg(long, global = true, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The public base URL of this service, used in every feed link (e.g. the
    /// gateway's `http://127.0.0.1:8080/sales`). Default: `http://<listen>`.
    #[arg(long, global = true, env = "BASE_URL")]
    pub base_url: Option<String>,
    /// Bearer token required on commands (POST/PUT/DELETE). Feeds and GETs stay public.
    #[arg(long, global = true, env = "RETAIL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Entries per sealed feed page (applies to pages not yet sealed).
    #[arg(long, global = true, env = "PAGE_SIZE")]
    pub page_size: Option<u64>,
    /// The page this service is shown under, e.g. the gateway's landing page
    /// `http://127.0.0.1:8080/`: every HTML page of the service links back to it.
    #[arg(long, global = true, env = "HOME_URL")]
    pub home_url: Option<String>,
}

/// Written by hand so that the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for ServiceArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceArgs")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("data_dir", &self.data_dir)
            .field("base_url", &self.base_url)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("page_size", &self.page_size)
            .field("home_url", &self.home_url)
            .finish()
    }
}

/// `url` without the password it may carry (`postgres://user:secret@host/db`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
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
            home_url: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token_and_database_passwords() {
        let mut args = ServiceArgs::new("data");
        args.api_token = Some("tok-3f9a".into());
        args.database_url = Some("postgres://app:pw-77c1@db:5432/sales".into());
        let shown = format!("{args:?}");
        assert!(
            !shown.contains("tok-3f9a") && !shown.contains("pw-77c1"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://app:redacted@db:5432/sales"),
            "{shown}"
        );
    }
}
