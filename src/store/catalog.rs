//! Seam (b), the catalog: where chunk locations, manifests and their pages, names with their
//! history, upload records and tus tails live — redb + sled + the metadata journal in a local
//! store ([`LocalCatalog`](crate::store::local::LocalCatalog)), a database next.
//!
//! The contract (tests in `tests/integration/seams.rs` run it on every implementation):
//! - Every call that takes ids takes a batch, so a remote catalog answers in one round trip.
//! - A write is durable when it returns, except [`Catalog::put_page`], which is durable with the
//!   next [`Catalog::put_manifest`] or [`Catalog::put_upload`] (pages come before the record
//!   that lists them).
//! - Name changes are atomic: two [`Catalog::push_name`] calls on one name never lose a version.
//! - Nothing here takes a lock the trait does not show; the pins that keep gc from removing
//!   what an upload counts on live beside it, in [`Guard`](crate::store::Guard), or, for a
//!   catalog several processes share, in its [`Shared`] part.
//! - A shared catalog's [`Catalog::missing`] revives (un-condemns) the ids it is asked about
//!   before it reads them, and [`Catalog::put_page`] the page it stores (see `gc.rs`).
//!
//! The metadata methods mean what the [`ChunkStore`](crate::store::ChunkStore) methods of
//! the same name mean; a store built of a pack storage and a catalog passes them through.

use std::sync::Arc;

use crate::config::StoreConfig;
use crate::error::Result;
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::pack::ChunkLoc;
use crate::store::{JournalCheck, NameRecord, NameVersion, Shared, TailRun, UploadKind};

/// What [`Catalog::lock_upload`] (and
/// [`ChunkStore::lock_upload`](crate::store::ChunkStore::lock_upload)) got.
pub enum Hold {
    /// Held against every other process until this is dropped (`None`: nothing to hold,
    /// only this process opens the store).
    Held(Option<Box<dyn Send>>),
    /// Another process held it for the whole wait.
    Busy,
}

/// Where the store's records live.
pub trait Catalog: Send + Sync + 'static {
    /// The params the store was created with.
    fn config(&self) -> StoreConfig;

    /// Returns once the catalog answers a trivial request (a server's health check), within
    /// a couple of seconds; a catalog in this process's files always does.
    ///
    /// # Errors
    /// The engine's error when it does not answer.
    fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// Holds upload `id` (a session or tus record) against every other process, for a
    /// change that reads, then writes its record: waits for it (at most `wait`, if given).
    /// A catalog only this process opens holds nothing (its own locks suffice).
    ///
    /// # Errors
    /// The engine's error.
    fn lock_upload(&self, _id: &[u8; 16], _wait: Option<std::time::Duration>) -> Result<Hold> {
        Ok(Hold::Held(None))
    }

    /// Adds `n` to the bytes upload session `id` received, where every process sees them
    /// (a catalog only this process opens keeps no such count: its memory has them).
    ///
    /// # Errors
    /// The engine's error.
    fn add_session_bytes(&self, _id: &[u8; 16], _n: u64) -> Result<()> {
        Ok(())
    }

    /// The bytes [`Catalog::add_session_bytes`] counted for session `id`, if it keeps them.
    ///
    /// # Errors
    /// The engine's error.
    fn session_bytes(&self, _id: &[u8; 16]) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The part of gc's guard that other processes see, for a catalog several processes
    /// open at once (`guard.rs`); none for one only this process opens.
    fn shared(self: Arc<Self>) -> Option<Arc<dyn Shared>> {
        None
    }

    /// The catalog serves a server from now on: it may keep what makes a server's lookups
    /// fast (a database catalog keeps a replica of the chunk ids). Nothing for others.
    fn for_server(self: Arc<Self>) {}

    /// Ids in the replica [`Catalog::for_server`] keeps, once it is built.
    fn id_replica_len(&self) -> Option<usize> {
        None
    }

    /// For each id, true if and only if no location is recorded for it.
    ///
    /// # Errors
    /// Catalog errors.
    fn missing(&self, ids: &[Hash]) -> Result<Vec<bool>>;

    /// For each id, where its entry is, if recorded.
    ///
    /// # Errors
    /// Catalog errors, or a damaged record.
    fn locate(&self, ids: &[Hash]) -> Result<Vec<Option<ChunkLoc>>>;

    /// Where one chunk's entry is (the read path's call; a catalog may answer it faster than
    /// a batch of one).
    ///
    /// # Errors
    /// As [`Catalog::locate`].
    fn loc(&self, id: &Hash) -> Result<Option<ChunkLoc>> {
        Ok(self.locate(std::slice::from_ref(id))?.pop().flatten())
    }

    /// Records where chunks are; their pack bytes must be durable already. Durable on return.
    /// A chunk recorded plain is never replaced by a delta (deltas may name it as their
    /// base; a base is never a delta); any other record is replaced.
    ///
    /// # Errors
    /// Catalog errors.
    fn insert_locs(&self, locs: &[(Hash, ChunkLoc)]) -> Result<()>;

    /// Forgets chunks; returns how many were recorded and the sum of their stored lengths.
    ///
    /// # Errors
    /// Catalog errors.
    fn remove_locs(&self, ids: &[Hash]) -> Result<(u64, u64)>;

    /// Points chunks at new entries, each only if it still points at the old one (compare and
    /// set, so a concurrent change wins). Returns how many moved.
    ///
    /// # Errors
    /// Catalog errors.
    fn relocate(&self, moves: &[(Hash, ChunkLoc, ChunkLoc)]) -> Result<u64>;

    /// Calls `f` with every recorded chunk, in id order, from one consistent view; a damaged
    /// record comes as its decode error instead of stopping the walk.
    ///
    /// # Errors
    /// Catalog errors, or `f`'s.
    fn for_each_loc(&self, f: &mut dyn FnMut(&Hash, Result<ChunkLoc>) -> Result<()>) -> Result<()>;

    /// The chunk count and byte sums if the catalog keeps them as it changes, so that reading
    /// them is cheap; `None` (the default): [`Catalog::for_each_loc`] counts them.
    ///
    /// # Errors
    /// Catalog errors.
    fn totals(&self) -> Result<Option<crate::store::ChunkTotals>> {
        Ok(None)
    }

    /// For each set of super-features, a stored chunk that is not a delta and shares one of
    /// them, if the catalog knows one (see [`Catalog::add_features`]); `None` for every one
    /// by default (a catalog that keeps no features).
    ///
    /// # Errors
    /// Catalog errors.
    fn similar(&self, features: &[SuperFeatures]) -> Result<Vec<Option<Hash>>> {
        Ok(vec![None; features.len()])
    }

    /// Records the super-features of stored plain chunks, for [`Catalog::similar`]. Advisory:
    /// what a crash loses only loses chances to store a delta.
    ///
    /// # Errors
    /// Catalog errors.
    fn add_features(&self, features: &[(SuperFeatures, Hash)]) -> Result<()> {
        let _ = features;
        Ok(())
    }

    /// Forgets super-features of chunks no longer recorded; returns how many.
    ///
    /// # Errors
    /// Catalog errors.
    fn prune_features(&self) -> Result<u64> {
        Ok(0)
    }

    /// For each id, whether a recorded delta names it as its base (gc keeps those).
    ///
    /// # Errors
    /// Catalog errors.
    fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>>;

    /// See [`ChunkStore::put_page`](crate::store::ChunkStore::put_page).
    ///
    /// # Errors
    /// Catalog errors.
    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()>;
    /// See [`ChunkStore::get_page`](crate::store::ChunkStore::get_page).
    ///
    /// # Errors
    /// Catalog errors.
    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>>;
    /// See [`ChunkStore::page_hashes`](crate::store::ChunkStore::page_hashes).
    ///
    /// # Errors
    /// Catalog errors.
    fn page_hashes(&self) -> Result<Vec<Hash>>;
    /// See [`ChunkStore::remove_pages`](crate::store::ChunkStore::remove_pages).
    ///
    /// # Errors
    /// Catalog errors.
    fn remove_pages(&self, hashes: &[Hash]) -> Result<()>;

    /// See [`ChunkStore::put_manifest`](crate::store::ChunkStore::put_manifest).
    ///
    /// # Errors
    /// Catalog errors.
    fn put_manifest(&self, manifest: &Manifest) -> Result<()>;
    /// See [`ChunkStore::get_manifest`](crate::store::ChunkStore::get_manifest).
    ///
    /// # Errors
    /// Catalog errors.
    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>>;
    /// See [`ChunkStore::file_ids_with_prefix`](crate::store::ChunkStore::file_ids_with_prefix).
    ///
    /// # Errors
    /// Catalog errors.
    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>>;
    /// See [`ChunkStore::manifests`](crate::store::ChunkStore::manifests).
    ///
    /// # Errors
    /// Catalog errors.
    fn manifests(&self) -> Result<Vec<Manifest>>;
    /// See [`ChunkStore::remove_manifest`](crate::store::ChunkStore::remove_manifest).
    ///
    /// # Errors
    /// Catalog errors.
    fn remove_manifest(&self, file_id: &Hash) -> Result<bool>;

    /// See [`ChunkStore::push_name`](crate::store::ChunkStore::push_name).
    ///
    /// # Errors
    /// Catalog errors.
    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord>;
    /// See [`ChunkStore::get_name`](crate::store::ChunkStore::get_name).
    ///
    /// # Errors
    /// Catalog errors.
    fn get_name(&self, name: &str) -> Result<Option<NameRecord>>;
    /// See [`ChunkStore::names`](crate::store::ChunkStore::names).
    ///
    /// # Errors
    /// Catalog errors.
    fn names(&self) -> Result<Vec<(String, NameRecord)>>;
    /// See [`ChunkStore::remove_name`](crate::store::ChunkStore::remove_name).
    ///
    /// # Errors
    /// Catalog errors.
    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>>;
    /// See [`ChunkStore::put_name`](crate::store::ChunkStore::put_name).
    ///
    /// # Errors
    /// Catalog errors.
    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()>;

    /// See [`ChunkStore::put_upload`](crate::store::ChunkStore::put_upload).
    ///
    /// # Errors
    /// Catalog errors.
    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()>;
    /// See [`ChunkStore::get_upload`](crate::store::ChunkStore::get_upload).
    ///
    /// # Errors
    /// Catalog errors.
    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>>;
    /// See [`ChunkStore::uploads`](crate::store::ChunkStore::uploads).
    ///
    /// # Errors
    /// Catalog errors.
    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>>;
    /// See [`ChunkStore::delete_upload`](crate::store::ChunkStore::delete_upload).
    ///
    /// # Errors
    /// Catalog errors.
    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()>;

    /// See [`ChunkStore::tail`](crate::store::ChunkStore::tail).
    ///
    /// # Errors
    /// Catalog errors.
    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>>;
    /// See [`ChunkStore::write_tail`](crate::store::ChunkStore::write_tail).
    ///
    /// # Errors
    /// Catalog errors.
    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()>;
    /// See [`ChunkStore::forget_tail`](crate::store::ChunkStore::forget_tail).
    ///
    /// # Errors
    /// Catalog errors.
    fn forget_tail(&self, id: &[u8; 16]) -> Result<()>;

    /// Compares the catalog's log of metadata changes (a local store's journal) with what the
    /// catalog holds; see [`ChunkStore::check_journal`](crate::store::ChunkStore::check_journal).
    /// A catalog with no such log answers `None`.
    ///
    /// # Errors
    /// Catalog errors.
    fn check_log(&self, repair: bool) -> Result<Option<JournalCheck>> {
        let _ = repair;
        Ok(None)
    }

    /// Tidies the catalog after gc removed records (a local store rewrites its journal once
    /// removals make up most of it).
    ///
    /// # Errors
    /// Catalog errors.
    fn compact_log(&self) -> Result<()> {
        Ok(())
    }

    /// What an interrupted chunk check saved with [`Catalog::save_check_progress`], if any.
    fn check_progress(&self) -> Option<Vec<u8>>;

    /// Saves (or, with `None`, forgets) a chunk check's progress so that an interrupted
    /// check can resume.
    ///
    /// # Errors
    /// Catalog errors.
    fn save_check_progress(&self, progress: Option<&[u8]>) -> Result<()>;
}
