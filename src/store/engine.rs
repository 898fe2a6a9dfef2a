//! The clients of the remote engines (the bucket, the index database) are async, the store is
//! synchronous: one small runtime drives every engine client of the process, and [`wait`] is
//! the one way the store's callers wait on them.
//!
//! [`wait`] polls the future on the calling thread, with the runtime entered so that what the
//! future starts (connections, timers) lives on the runtime's threads. So it works from any
//! thread, including a server's async worker (where a `Runtime::block_on` would panic), and
//! the runtime's own threads stay free to drive the connections.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The engine clients' runtime: two threads, started on first use.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hoard-engines")
        .enable_all()
        .build()
        .map_err(Error::io("cannot start the engine clients'", "runtime"))?;
    Ok(RT.get_or_init(|| rt))
}

/// Runs `f` to completion on this thread, its I/O driven by the engines' runtime.
///
/// Must not be called from inside another `wait` (the store never nests them: a callback
/// runs between waits, not inside one).
///
/// # Errors
/// The runtime could not be started.
pub fn wait<F: Future>(f: F) -> Result<F::Output> {
    let _entered = runtime()?.enter();
    Ok(futures_executor::block_on(f))
}

/// Starts `f` on the engines' runtime, to be waited on later (with [`wait`]).
///
/// # Errors
/// The runtime could not be started.
pub fn spawn<F>(f: F) -> Result<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(f))
}
