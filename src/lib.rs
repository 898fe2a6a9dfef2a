//! hoard: a content-defined dedup store for large files that change a little between versions.
//!
//! The pipeline is the architecture; each stage is a module:
//!
//! ```text
//! import:  file ─chunker─▶ Block of chunks ─hash─▶ ids ─store.missing─▶ codec::compress ─▶ pack append
//!                                                    └────────────────▶ ManifestBuilder ─▶ manifest ─▶ name
//! export:  name ─names::resolve─▶ Manifest ─▶ pages ─▶ store.read_chunk ─▶ codec::decode ─▶ Hash::of == id? ─▶ out
//! ```
//!
//! Over HTTP the same stages split between a client and a server: [`client`] scans a file
//! ([`scan`]), streams its manifest and sends only the chunks the server lacks ([`wire`]
//! encodings); [`server`] checks each chunk and tracks the upload ([`upload`]: sessions, tus,
//! the chunk sink).
//!
//! The core is synchronous and deterministic; parallelism is a bounded rayon fan-out inside
//! [`ingest`] and [`restore`], and async code lives only in [`server`] and [`client`]. Storage sits behind [`store::ChunkStore`], implemented by
//! [`store::LocalStore`] (redb chunk table, sled for manifests and names, pack files) and
//! [`store::MemoryStore`].

pub mod args;
pub mod chunker;
pub mod client;
pub mod codec;
pub mod config;
pub mod copy;
pub mod delta;
pub mod error;
pub mod features;
pub mod fsck;
pub mod gc;
pub mod hash;
pub mod import;
pub mod ingest;
pub mod listing;
pub mod manifest;
pub mod names;
pub mod namespace;
pub mod record;
pub mod restore;
pub mod scan;
pub mod server;
pub mod store;
pub mod upload;
pub mod wire;

pub use config::{ChunkerParams, StoreConfig};

/// Seconds since the Unix epoch (0 if the clock is before it): the time every record keeps.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Locks `m`, going on past a panic in another holder: every value hoard keeps behind a
/// mutex stays consistent between statements, so a poisoned lock holds nothing half-done.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// As [`lock`], to read behind an `RwLock`.
pub(crate) fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// As [`lock`], to write behind an `RwLock`.
pub(crate) fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub use error::{Error, Result};
pub use hash::Hash;
