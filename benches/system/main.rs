//! Whole-system benchmarks: `cargo bench --bench system [-- FLAGS]`.
//!
//! Every measure runs against its baseline in the same run, on this machine, and
//! the results are printed as one markdown table (to stdout and to
//! `target/bench-report.md`). BENCHMARKS.md explains each measure, what bounds it
//! and the history of the numbers.
//!
//! The servers under test run as child processes of this binary (it re-executes
//! itself with `BENCH_ROLE` set, see [`roles`]), so each has its own process, as in
//! production, and its memory can be read from `/proc`. Load comes from `wrk` where
//! it can express the load, and from this program where it cannot (subscribers,
//! pollers, long polls). Nothing is installed: a missing `wrk`, `nginx`, `varnishd`
//! or PostgreSQL is reported in the table.
//!
//! Layout:
//! - [`roles`]: the child processes (feed origin, cache-proxy, blob origin)
//! - [`tools`]: wrk, nginx and varnishd, and finding them
//! - [`measures`]: P1 to P7
//! - [`report`]: the table

mod measures;
mod report;
mod roles;
mod tools;

use std::path::PathBuf;

use clap::Parser;

/// Sizes and durations of the run. Every flag has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "system",
    about = "Whole-system benchmarks with same-run baselines."
)]
pub(crate) struct Options {
    /// Events replayed in P1.
    #[arg(long, env = "BENCH_EVENTS", default_value_t = 100_000)]
    pub(crate) events: u64,
    /// Replay 1,000,000 events in P1 (overrides --events).
    #[arg(long)]
    pub(crate) million: bool,
    /// Entries per sealed page of the replayed feed (default: the feed's default).
    #[arg(long, env = "BENCH_PAGE_SIZE", default_value_t = feed::DEFAULT_PAGE_SIZE)]
    pub(crate) page_size: u64,
    /// Rounds of P1, each with its own copy, origin and cache-proxy; the table shows
    /// the medians and their range (its rates move by 10-20 % from run to run).
    #[arg(long, env = "BENCH_P1_ROUNDS", default_value_t = 3)]
    pub(crate) p1_rounds: usize,
    /// Seconds of each wrk run.
    #[arg(long, env = "BENCH_WRK_SECONDS", default_value_t = 5)]
    pub(crate) wrk_seconds: u64,
    /// Concurrent connections of each wrk run (2 threads).
    #[arg(long, env = "BENCH_WRK_CONNECTIONS", default_value_t = 32)]
    pub(crate) wrk_connections: u32,
    /// Appends whose delivery latency P4 measures.
    #[arg(long, env = "BENCH_LATENCY_SAMPLES", default_value_t = 1000)]
    pub(crate) latency_samples: usize,
    /// Concurrent pollers (and long-pollers) of P5.
    #[arg(long, env = "BENCH_POLLERS", default_value_t = 1000)]
    pub(crate) pollers: usize,
    /// Seconds each P5 load runs.
    #[arg(long, env = "BENCH_POLL_SECONDS", default_value_t = 10)]
    pub(crate) poll_seconds: u64,
    /// Events appended per P6 run with 16 writers (a quarter of it with one).
    #[arg(long, env = "BENCH_PG_EVENTS", default_value_t = 20_000)]
    pub(crate) pg_events: u64,
    /// Cache capacity of the cache-proxy in P7, MiB.
    #[arg(long, env = "BENCH_CAPACITY_MIB", default_value_t = 64)]
    pub(crate) capacity_mib: u64,
    /// Run only these measures, e.g. `--only P1,P3`.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Where the report goes.
    #[arg(long, env = "BENCH_REPORT", default_value = "target/bench-report.md")]
    pub(crate) report: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
}

impl Options {
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o.eq_ignore_ascii_case(id))
    }
}

fn main() -> anyhow::Result<()> {
    if let Ok(role) = std::env::var(roles::ROLE_VAR) {
        return roles::run(&role);
    }
    let mut options = Options::parse();
    if options.million {
        options.events = 1_000_000;
    }
    feed::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(measures::run_all(&options))?;
    let table = report::markdown(&options, &rows);
    println!("{table}");
    if let Some(dir) = options.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.report, &table)?;
    eprintln!("report written to {}", options.report.display());
    Ok(())
}
