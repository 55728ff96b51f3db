//! The threads that run served connections: one single-threaded tokio runtime per
//! core, shared by every server in the process.
//!
//! [`super::serve_with`] accepts on the caller's runtime and hands each connection
//! to one of these threads, in turn, for its whole life. A connection's reads, its
//! handler and its writes then stay on one thread, which nothing else wakes and no
//! other worker steals from; on a multi-threaded runtime the same requests keep
//! waking and stealing between workers, and that was most of the kernel time under
//! load (BENCHMARKS.md, P2). nginx's worker processes serve the same way.
//!
//! The threads live as long as the process, never shut down, so what a handler
//! opens on one of them (a pooled database connection, a change watcher, a pooled
//! upstream connection of the cache-proxy) stays usable from any runtime after the
//! server that opened it has stopped.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

struct Threads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static THREADS: OnceLock<Threads> = OnceLock::new();

/// The runtime of the thread the next connection goes to, or `None` if no serving
/// thread could be started (the connection is then served on the caller's runtime).
pub(super) fn next() -> Option<&'static Handle> {
    let threads = THREADS.get_or_init(start);
    if threads.handles.is_empty() {
        return None;
    }
    let i = threads.next.fetch_add(1, Ordering::Relaxed) % threads.handles.len();
    threads.handles.get(i)
}

/// As many threads as tokio's default runtime has workers: `TOKIO_WORKER_THREADS`,
/// or one per core.
fn count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn start() -> Threads {
    let mut handles = Vec::new();
    for i in 0..count() {
        match start_one(i) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a serving thread; serving on fewer");
                break;
            }
        }
    }
    Threads {
        handles,
        next: AtomicUsize::new(0),
    }
}

fn start_one(i: usize) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("serve-{i}"))
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
