//! The local catalog: the chunk table in redb, manifests, pages, names and upload records in
//! sled (see `index.rs`), every metadata change first in the journal (see `journal.rs`), and
//! tus tails in files (see `tails.rs`). It also holds the store directory's lock.
//!
//! The journal is the index's write-ahead log: a change is appended (and synced where the
//! index would be flushed) before the index changes, under the journal's lock, which also
//! makes each name's read-modify-write atomic. If an index write fails after its record, the
//! catalog is marked `behind` and the store is left marked open, so the next open applies the
//! journal again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::catalog::Catalog;
use crate::store::local::fs::environmental;
use crate::store::local::index::Index;
use crate::store::local::journal::{self, Appender, Journal, Kind};
use crate::store::local::replay;
use crate::store::local::tails::Tails;
use crate::store::pack::ChunkLoc;
use crate::store::{JournalCheck, NameRecord, NameVersion, TailRun, UploadKind};

/// The metadata journal, under the store directory.
pub(super) const JOURNAL_FILE: &str = "journal.log";

/// sled meta key present while a process has the store open (removed on a clean close).
pub(super) const OPEN_MARK: &str = "open";

/// Where an interrupted chunk check's progress is kept, under the store directory.
const CHECK_PROGRESS_FILE: &str = "fsck.state";

/// The catalog of a store directory.
pub struct LocalCatalog {
    /// Held (with an exclusive advisory lock, or a shared one when read-only) while the store
    /// is open: one writing process at a time.
    pub(super) _lock: std::fs::File,
    pub(super) root: PathBuf,
    pub(super) index: Index,
    pub(super) config: StoreConfig,
    pub(super) journal: Journal,
    /// tus tails: files under `tails/`.
    pub(super) tails: Tails,
    /// Set when an index change failed after its journal record was written: the index is
    /// behind the journal, so the store is left marked open and the next open replays it.
    /// (Set from the start for a store opened read-only: there is nothing to mark.)
    pub(super) behind: AtomicBool,
    /// Super-features given by [`Catalog::add_features`], written with the next
    /// [`Catalog::insert_locs`] in its transaction (one commit, one sync).
    pub(super) features: std::sync::Mutex<Vec<(SuperFeatures, Hash)>>,
}

impl Drop for LocalCatalog {
    fn drop(&mut self) {
        if !self.behind.load(Ordering::SeqCst) {
            let _ = self.index.meta.remove(OPEN_MARK);
            let _ = self.index.db.flush();
        }
    }
}

impl LocalCatalog {
    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `r`, noting on error that the index is now behind the journal (see `behind`).
    fn behind_on_error<T, E>(&self, r: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if r.is_err() {
            self.behind.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Makes one metadata change: `record` appends its journal records (under the journal's
    /// lock, held throughout), then, with `durable`, the journal is synced; `apply` changes the
    /// index with what `record` returned, and with `durable` the index is flushed.
    fn journaled<A, T>(
        &self,
        durable: bool,
        record: impl FnOnce(&mut Appender<'_>) -> Result<A>,
        apply: impl FnOnce(A) -> sled::Result<T>,
    ) -> Result<T> {
        let mut j = self.journal.lock();
        let a = record(&mut j)?;
        if durable {
            j.sync()?;
        }
        let out = self.behind_on_error(apply(a))?;
        drop(j);
        if durable {
            self.index.db.flush()?;
        }
        Ok(out)
    }
}

impl Catalog for LocalCatalog {
    fn config(&self) -> StoreConfig {
        self.config
    }

    fn missing(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.index.missing(ids)
    }

    fn locate(&self, ids: &[Hash]) -> Result<Vec<Option<ChunkLoc>>> {
        ids.iter().map(|id| self.index.loc(id)).collect()
    }

    fn loc(&self, id: &Hash) -> Result<Option<ChunkLoc>> {
        self.index.loc(id)
    }

    fn insert_locs(&self, locs: &[(Hash, ChunkLoc)]) -> Result<()> {
        let features = std::mem::take(&mut *crate::lock(&self.features));
        self.index.insert_locs(locs, &features)
    }

    fn similar(&self, features: &[SuperFeatures]) -> Result<Vec<Option<Hash>>> {
        self.index.similar(features)
    }

    fn add_features(&self, features: &[(SuperFeatures, Hash)]) -> Result<()> {
        crate::lock(&self.features).extend_from_slice(features);
        Ok(())
    }

    fn prune_features(&self) -> Result<u64> {
        self.index.prune_features()
    }

    fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.index.bases_in_use(ids)
    }

    fn remove_locs(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        self.index.remove_locs(ids)
    }

    fn relocate(&self, moves: &[(Hash, ChunkLoc, ChunkLoc)]) -> Result<u64> {
        self.index.relocate(moves)
    }

    fn for_each_loc(&self, f: &mut dyn FnMut(&Hash, Result<ChunkLoc>) -> Result<()>) -> Result<()> {
        self.index.for_each_record(f)
    }

    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        // Synced with the manifest (or upload record) that lists it.
        self.journaled(
            false,
            |j| j.append(Kind::Page, bytes),
            |()| self.index.pages.insert(hash.as_bytes(), bytes).map(drop),
        )
    }

    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self.index.pages.get(hash.as_bytes())?.map(|v| v.to_vec()))
    }

    fn page_hashes(&self) -> Result<Vec<Hash>> {
        self.index
            .pages
            .iter()
            .keys()
            .filter_map(|k| match k {
                Ok(k) => Hash::from_slice(&k).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    fn remove_pages(&self, hashes: &[Hash]) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for h in hashes {
            b.remove(h.as_bytes());
        }
        self.journaled(
            true,
            |j| {
                // One record per 100 000 pages keeps each under the journal's record limit.
                for part in hashes.chunks(100_000) {
                    let payload: Vec<u8> = part.iter().flat_map(|h| *h.as_bytes()).collect();
                    j.append(Kind::PagesRemoved, &payload)?;
                }
                Ok(())
            },
            |()| self.index.pages.apply_batch(b),
        )
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        let bytes = manifest.encode();
        self.journaled(
            true,
            |j| j.append(Kind::Manifest, &bytes),
            |()| {
                let key = manifest.file_id.as_bytes();
                self.index.files.insert(key, bytes.as_slice()).map(drop)
            },
        )
    }

    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>> {
        self.index
            .files
            .get(file_id.as_bytes())?
            .map(|v| Manifest::decode(&v))
            .transpose()
    }

    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>> {
        self.index
            .files
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k?;
                Hash::from_slice(&k).ok_or_else(|| Error::Decode {
                    what: format!("file id key of {} bytes", k.len()),
                    source: bincode::error::DecodeError::Other("not 32 bytes"),
                })
            })
            .collect()
    }

    fn manifests(&self) -> Result<Vec<Manifest>> {
        self.index
            .files
            .iter()
            .values()
            .map(|v| Manifest::decode(&v?))
            .collect()
    }

    fn remove_manifest(&self, file_id: &Hash) -> Result<bool> {
        self.journaled(
            true,
            |j| j.append(Kind::ManifestRemoved, file_id.as_bytes()),
            |()| {
                self.index
                    .files
                    .remove(file_id.as_bytes())
                    .map(|old| old.is_some())
            },
        )
    }

    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord> {
        // The read happens under the journal's lock, which every name change holds: no other
        // lock is needed for the read-modify-write.
        self.journaled(
            true,
            |j| {
                let mut rec = match self.index.names.get(name)? {
                    Some(v) => Index::decode_name(&v)?,
                    None => NameRecord::default(),
                };
                rec.versions.push(version);
                let value = Index::encode_name(&rec);
                j.append(Kind::Name, &journal::name_payload(name, &value))?;
                Ok((rec, value))
            },
            |(rec, value)| self.index.names.insert(name, value).map(|_| rec),
        )
    }

    fn get_name(&self, name: &str) -> Result<Option<NameRecord>> {
        self.index
            .names
            .get(name)?
            .map(|v| Index::decode_name(&v))
            .transpose()
    }

    fn names(&self) -> Result<Vec<(String, NameRecord)>> {
        self.index
            .names
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    Index::decode_name(&v)?,
                ))
            })
            .collect()
    }

    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>> {
        let old = self.journaled(
            true,
            |j| j.append(Kind::NameRemoved, name.as_bytes()),
            |()| self.index.names.remove(name),
        )?;
        old.map(|v| Index::decode_name(&v)).transpose()
    }

    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()> {
        let value = Index::encode_name(record);
        self.journaled(
            true,
            |j| j.append(Kind::Name, &journal::name_payload(name, &value)),
            |()| self.index.names.insert(name, value.as_slice()).map(drop),
        )
    }

    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()> {
        // Not journaled (uploads are transient), but an upload record may list pages whose
        // journal records are not synced yet (they are synced with a manifest, which an
        // unfinished upload does not have yet).
        self.journal.lock().sync()?;
        self.index.uploads(kind).insert(id, record)?;
        self.index.db.flush()?;
        Ok(())
    }

    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
        Ok(self.index.uploads(kind).get(id)?.map(|v| v.to_vec()))
    }

    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.index.uploads(kind).iter() {
            let (key, value) = kv?;
            // Keys are 16-byte ids; anything else is not an upload record.
            if let Ok(id) = <[u8; 16]>::try_from(key.as_ref()) {
                out.push((id, value.to_vec()));
            }
        }
        Ok(out)
    }

    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()> {
        self.index.uploads(kind).remove(id)?;
        self.index.db.flush()?;
        Ok(())
    }

    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>> {
        self.tails.read(id)
    }

    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        self.tails
            .write(id, keep_from, position, bytes, meta)
            .map_err(environmental(&self.root, "tus tail"))
    }

    fn forget_tail(&self, id: &[u8; 16]) -> Result<()> {
        self.tails.forget(id)
    }

    fn check_log(&self, repair: bool) -> Result<Option<JournalCheck>> {
        // Held throughout: nothing is appended while the two are compared.
        let mut held = self.journal.lock();
        let path = self.root.join(JOURNAL_FILE);
        let mut out = replay::compare(&self.index, &path)?;
        if repair && out.index_behind() {
            // Rewriting the journal from this index would forget what only the journal knows.
            return Err(Error::IndexBehindJournal {
                root: self.root.clone(),
                files: out.index_lacks_files,
                names: out.index_lacks_names,
            });
        }
        if repair && !out.agrees() {
            let secs = crate::unix_now();
            let old = self.root.join(format!("{JOURNAL_FILE}.old-{secs}"));
            std::fs::copy(&path, &old).map_err(Error::io("cannot copy", &path))?;
            self.journal
                .rewrite(&mut held, replay::snapshot(&self.index))?;
            out.rewritten = Some(old);
        }
        Ok(Some(out))
    }

    /// Rewrites the journal as a snapshot of the index once it is over twice the size of one
    /// (and over 1 MiB): removals and replaced name records are what make it grow.
    fn compact_log(&self) -> Result<()> {
        const HEADER: u64 = 48;
        let len = self.journal.len();
        if len < 1 << 20 {
            return Ok(());
        }
        let mut held = self.journal.lock();
        let mut live = 0u64;
        for r in replay::snapshot(&self.index) {
            live += HEADER + r?.1.len() as u64;
        }
        if len > 2 * live {
            self.journal
                .rewrite(&mut held, replay::snapshot(&self.index))?;
        }
        Ok(())
    }

    fn check_progress(&self) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(CHECK_PROGRESS_FILE)).ok()
    }

    fn save_check_progress(&self, progress: Option<&[u8]>) -> Result<()> {
        let path = self.root.join(CHECK_PROGRESS_FILE);
        let Some(bytes) = progress else {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(Error::io("cannot write", &path))
    }
}
