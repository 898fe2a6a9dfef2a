//! An in-memory store: the reference behaviour of the [`ChunkStore`] contract, and a fast
//! backend for tests of the pipeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec::Codec;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::{
    BadChunk, ChunkCheck, ChunkRepair, ChunkStore, ChunkTotals, ChunkWriter, CompactReport, Guard,
    NameRecord, NameVersion, PendingCommit, StoredChunk, TailRun, UploadKind,
};

#[derive(Default)]
struct Inner {
    chunks: HashMap<Hash, StoredChunk>,
    pages: HashMap<Hash, Vec<u8>>,
    files: BTreeMap<Hash, Manifest>,
    names: BTreeMap<String, NameRecord>,
    uploads: BTreeMap<(UploadKind, [u8; 16]), Vec<u8>>,
    /// tus tails by upload id.
    tails: BTreeMap<[u8; 16], TailRun>,
    /// Chunks a repair took out of service.
    quarantine: Vec<StoredChunk>,
}

/// Everything in maps behind one mutex.
#[derive(Default)]
pub struct MemoryStore {
    config: StoreConfig,
    inner: Arc<Mutex<Inner>>,
    guard: Guard,
}

impl MemoryStore {
    /// An empty store with `config`.
    pub fn new(config: StoreConfig) -> Self {
        MemoryStore {
            config,
            inner: Arc::default(),
            guard: Guard::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// Replaces a stored chunk's payload (tests of corruption handling).
    pub fn tamper(&self, id: &Hash, payload: Vec<u8>) {
        if let Some(c) = self.lock().chunks.get_mut(id) {
            c.payload = payload.into();
        }
    }
}

struct MemoryWriter<'a> {
    store: &'a MemoryStore,
    pending: Vec<StoredChunk>,
}

impl ChunkWriter for MemoryWriter<'_> {
    fn append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        self.pending.push(StoredChunk {
            id: *id,
            codec,
            raw_len,
            payload: bytes::Bytes::copy_from_slice(payload),
        });
        Ok(())
    }

    fn start_commit(&mut self) -> Result<Box<dyn PendingCommit>> {
        Ok(Box::new(MemoryCommit {
            inner: self.store.inner.clone(),
            guard: self.store.guard.clone(),
            pending: std::mem::take(&mut self.pending),
        }))
    }
}

struct MemoryCommit {
    inner: Arc<Mutex<Inner>>,
    guard: Guard,
    pending: Vec<StoredChunk>,
}

impl PendingCommit for MemoryCommit {
    fn finish(self: Box<Self>) -> Result<()> {
        self.guard.note_stored(self.pending.iter().map(|c| c.id));
        let mut inner = crate::lock(&self.inner);
        for c in self.pending {
            inner.chunks.entry(c.id).or_insert(c);
        }
        Ok(())
    }
}

impl ChunkStore for MemoryStore {
    fn config(&self) -> StoreConfig {
        self.config
    }

    fn guard(&self) -> &Guard {
        &self.guard
    }

    fn lookup(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .map(|id| !inner.chunks.contains_key(id))
            .collect())
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&Hash) -> Result<()>) -> Result<()> {
        let mut ids: Vec<Hash> = self.lock().chunks.keys().copied().collect();
        ids.sort_unstable();
        ids.iter().try_for_each(f)
    }

    fn remove_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        let mut inner = self.lock();
        let (mut n, mut bytes) = (0, 0);
        for id in ids {
            if let Some(c) = inner.chunks.remove(id) {
                n += 1;
                bytes += c.payload.len() as u64;
            }
        }
        Ok((n, bytes))
    }

    fn compact(&self, _min_dead: f64) -> Result<CompactReport> {
        // Removed chunks free their memory at once: nothing to rewrite.
        let bytes = self.chunk_data_bytes()?;
        Ok(CompactReport {
            bytes_before: bytes,
            bytes_after: bytes,
            ..CompactReport::default()
        })
    }

    fn check_chunks(&self, _resume: bool, progress: &(dyn Fn(u64) + Sync)) -> Result<ChunkCheck> {
        let chunks: Vec<StoredChunk> = self.lock().chunks.values().cloned().collect();
        let mut check = ChunkCheck::default();
        for c in chunks {
            check.entries += 1;
            check.bytes += c.payload.len() as u64;
            progress(c.payload.len() as u64);
            // This store keeps no deltas, so no bases.
            let no_bases = super::check::Bases::new();
            match super::check::verify(&c.id, c.codec as u8, c.raw_len, &c.payload, &no_bases) {
                None => check.chunks_ok += 1,
                Some(f) => check.bad.push(BadChunk {
                    id: c.id,
                    detail: f.why,
                    loc: None,
                    base: None,
                }),
            }
        }
        Ok(check)
    }

    fn repair_chunks(
        &self,
        check: &ChunkCheck,
        _wanted: Option<&std::collections::HashSet<Hash>>,
    ) -> Result<ChunkRepair> {
        let mut inner = self.lock();
        let mut out = ChunkRepair::default();
        for b in &check.bad {
            if let Some(c) = inner.chunks.remove(&b.id) {
                inner.quarantine.push(c);
                out.quarantined += 1;
            }
        }
        Ok(out)
    }

    fn page_hashes(&self) -> Result<Vec<Hash>> {
        Ok(self.lock().pages.keys().copied().collect())
    }

    fn remove_pages(&self, hashes: &[Hash]) -> Result<()> {
        let mut inner = self.lock();
        for h in hashes {
            inner.pages.remove(h);
        }
        Ok(())
    }

    fn writer(&self) -> Result<Box<dyn ChunkWriter + '_>> {
        Ok(Box::new(MemoryWriter {
            store: self,
            pending: Vec::new(),
        }))
    }

    fn read_chunk(&self, id: &Hash) -> Result<StoredChunk> {
        self.lock()
            .chunks
            .get(id)
            .cloned()
            .ok_or(Error::ChunkNotFound(*id))
    }

    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        self.lock().pages.insert(*hash, bytes.to_vec());
        Ok(())
    }

    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().pages.get(hash).cloned())
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.lock().files.insert(manifest.file_id, manifest.clone());
        Ok(())
    }

    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>> {
        Ok(self.lock().files.get(file_id).cloned())
    }

    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>> {
        Ok(self
            .lock()
            .files
            .keys()
            .filter(|k| k.as_bytes().starts_with(prefix))
            .copied()
            .collect())
    }

    fn manifests(&self) -> Result<Vec<Manifest>> {
        Ok(self.lock().files.values().cloned().collect())
    }

    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord> {
        let mut inner = self.lock();
        let rec = inner.names.entry(name.to_owned()).or_default();
        rec.versions.push(version);
        Ok(rec.clone())
    }

    fn get_name(&self, name: &str) -> Result<Option<NameRecord>> {
        Ok(self.lock().names.get(name).cloned())
    }

    fn names(&self) -> Result<Vec<(String, NameRecord)>> {
        Ok(self
            .lock()
            .names
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn chunk_totals(&self) -> Result<ChunkTotals> {
        let inner = self.lock();
        Ok(inner
            .chunks
            .values()
            .fold(ChunkTotals::default(), |mut t, c| {
                t.chunks += 1;
                t.raw_bytes += u64::from(c.raw_len);
                t.encoded_bytes += c.payload.len() as u64;
                t
            }))
    }

    fn chunk_data_bytes(&self) -> Result<u64> {
        Ok(self.chunk_totals()?.encoded_bytes)
    }

    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>> {
        Ok(self.lock().names.remove(name))
    }

    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()> {
        self.lock().names.insert(name.to_owned(), record.clone());
        Ok(())
    }

    fn remove_manifest(&self, file_id: &Hash) -> Result<bool> {
        Ok(self.lock().files.remove(file_id).is_some())
    }

    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()> {
        self.lock().uploads.insert((kind, *id), record.to_vec());
        Ok(())
    }

    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().uploads.get(&(kind, *id)).cloned())
    }

    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        let inner = self.lock();
        let of_kind = inner.uploads.iter().filter(|((k, _), _)| *k == kind);
        Ok(of_kind.map(|((_, id), v)| (*id, v.clone())).collect())
    }

    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()> {
        self.lock().uploads.remove(&(kind, *id));
        Ok(())
    }

    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>> {
        Ok(self.lock().tails.get(id).cloned())
    }

    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        let mut inner = self.lock();
        let run = inner.tails.entry(*id).or_default();
        if run.position + run.bytes.len() as u64 != position {
            run.position = position;
            run.bytes.clear();
        }
        run.bytes.extend_from_slice(bytes);
        let dead = keep_from.clamp(run.position, position + bytes.len() as u64) - run.position;
        run.bytes.drain(..dead as usize);
        run.position += dead;
        run.meta = meta.to_vec();
        Ok(())
    }

    fn forget_tail(&self, id: &[u8; 16]) -> Result<()> {
        self.lock().tails.remove(id);
        Ok(())
    }
}
