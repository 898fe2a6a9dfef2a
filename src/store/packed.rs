//! A [`ChunkStore`] made of one pack storage and one catalog (the two seams): the writer and
//! its commits, reads, and the calls the pipeline makes, each passed to the seam it belongs
//! to. Compaction is in `compact.rs`, the chunk check in `check.rs`. [`LocalStore`] is one of
//! these over a directory; a bucket + database store will be another.
//!
//! Durability order (DESIGN.md, "Storage"): pack bytes are synced before the catalog records
//! locations that point at them; a manifest is written only after all its chunks are
//! committed; a name moves only after its manifest is durable. A crash leaves at worst pack
//! bytes nothing points at, which gc reclaims.
//!
//! [`LocalStore`]: crate::store::LocalStore

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::codec::{self, Codec};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::cache::{CACHE_BYTES, EntryCache};
use crate::store::catalog::Catalog;
use crate::store::pack::ChunkLoc;
use crate::store::packs::{PackSink, PackStorage, PackSync, read_entries, read_entry};
use crate::store::{
    ChunkCheck, ChunkRepair, ChunkStore, ChunkTotals, ChunkWriter, CompactReport, Guard, Hold,
    JournalCheck, NameRecord, NameVersion, PendingCommit, Pin, StoredChunk, TailRun, UploadKind,
};

/// Pack storage `P` and catalog `C` as one store.
pub struct PackedStore<P, C> {
    pub(super) packs: P,
    pub(super) catalog: Arc<C>,
    guard: Guard,
    /// Packs a writer may still append to, or whose entries are not recorded yet: compaction
    /// leaves them alone, and a check reads them only as far as the catalog knows them. In a
    /// shared store each also holds a pin, so that other processes' compactions see it.
    busy: BusySet,
    /// Recently read entries, where every read is a request (`cache.rs`).
    cache: Option<EntryCache>,
}

/// Busy packs: how many markers each has, and (in a shared store) the pin that shows it to
/// other processes.
type BusySet = Arc<Mutex<HashMap<u64, (usize, Option<Pin>)>>>;

/// Marks a pack busy until dropped (counted: a writer and its commits in flight each hold one).
pub(super) struct Busy {
    set: BusySet,
    pack: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let released = {
            let mut set = crate::lock(&self.set);
            match set.get_mut(&self.pack) {
                Some((n, _)) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => set.remove(&self.pack),
                None => None,
            }
        };
        // The shared pin (if any) lets go here, outside the lock.
        drop(released);
    }
}

impl<P: PackStorage, C: Catalog> PackedStore<P, C> {
    /// The store made of `packs` and `catalog`.
    pub fn new(packs: P, catalog: C) -> Self {
        let cache = packs.batches_reads().then(|| EntryCache::new(CACHE_BYTES));
        let catalog = Arc::new(catalog);
        let guard = catalog
            .clone()
            .shared()
            .map_or_else(Guard::default, Guard::shared);
        PackedStore {
            cache,
            packs,
            catalog,
            guard,
            busy: Arc::default(),
        }
    }

    /// The pack storage.
    pub fn packs(&self) -> &P {
        &self.packs
    }

    /// The catalog.
    pub fn catalog(&self) -> &C {
        &self.catalog
    }

    /// A new pack, marked busy until the returned marker is dropped.
    pub(super) fn new_pack(&self) -> Result<(Box<dyn PackSink>, Busy)> {
        let sink = self.packs.create()?;
        let busy = self.mark_busy(sink.pack())?;
        Ok((sink, busy))
    }

    /// Marks `pack` busy; the first marker of a pack in a shared store pins it there too,
    /// before any of its bytes can be in storage.
    fn mark_busy(&self, pack: u64) -> Result<Busy> {
        let mut set = crate::lock(&self.busy);
        match set.get_mut(&pack) {
            Some((n, _)) => *n += 1,
            None => {
                let pin = match self.guard.shared_part() {
                    Some(_) => {
                        let pin = self.guard.pin();
                        pin.add_pack(pack)?;
                        Some(pin)
                    }
                    None => None,
                };
                set.insert(pack, (1, pin));
            }
        }
        Ok(Busy {
            set: self.busy.clone(),
            pack,
        })
    }

    /// Packs busy now: this process's, and in a shared store every live process's.
    pub(super) fn busy_now(&self) -> Result<HashSet<u64>> {
        let mut busy: HashSet<u64> = crate::lock(&self.busy).keys().copied().collect();
        if self.guard.shared_part().is_some() {
            busy.extend(self.guard.pinned()?.packs);
        }
        Ok(busy)
    }

    pub(super) fn is_busy(&self, pack: u64) -> bool {
        crate::lock(&self.busy).contains_key(&pack)
    }

    /// Reads the entry of chunk `id` as it is stored (a delta stays a delta).
    fn read_stored_into(&self, id: &Hash, payload: &mut Vec<u8>) -> Result<(Codec, u32)> {
        let loc = self.catalog.loc(id)?.ok_or(Error::ChunkNotFound(*id))?;
        if let Some((codec, bytes)) = self.cache.as_ref().and_then(|c| c.get(id, &loc)) {
            payload.clear();
            payload.extend_from_slice(&bytes);
            return Ok((codec, loc.raw_len));
        }
        match read_entry(&self.packs, id, &loc, payload) {
            Ok(codec) => {
                if let Some(c) = &self.cache {
                    c.put(id, &loc, codec, payload);
                }
                Ok((codec, loc.raw_len))
            }
            Err(e) => {
                // Compaction may have moved the chunk between the lookup and the read: look
                // again, and read once more only if it did.
                match self.catalog.loc(id)? {
                    Some(now) if now != loc => {
                        let codec = read_entry(&self.packs, id, &now, payload)?;
                        Ok((codec, now.raw_len))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// A batch of entries as stored (deltas stay deltas, except those read again one by
    /// one after a failed batch, which come resolved), in few requests to the pack storage.
    fn read_stored_batch(&self, ids: &[Hash]) -> Result<Vec<StoredChunk>> {
        // One catalog call, then few requests: see `read_entries`.
        let wanted = ids
            .iter()
            .zip(self.catalog.locate(ids)?)
            .map(|(id, loc)| loc.map(|l| (*id, l)).ok_or(Error::ChunkNotFound(*id)))
            .collect::<Result<Vec<_>>>()?;
        // Cached entries are served from memory; the rest are read.
        let cached: Vec<Option<(Codec, bytes::Bytes)>> = wanted
            .iter()
            .map(|(id, loc)| self.cache.as_ref().and_then(|c| c.get(id, loc)))
            .collect();
        let to_read: Vec<(Hash, ChunkLoc)> = wanted
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(w, _)| *w)
            .collect();
        let read = match read_entries(&self.packs, &to_read) {
            Ok(got) => got,
            // Compaction may have deleted a pack after the lookup: each chunk on its own
            // looks again.
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                return ids.iter().map(|id| self.read_chunk(id)).collect();
            }
            Err(e) => return Err(e),
        };
        let mut read = read.into_iter();
        wanted
            .iter()
            .zip(cached)
            .map(|((id, loc), cached)| {
                let (codec, payload) = match cached {
                    Some((codec, bytes)) => (codec, bytes),
                    // Not kept: a batch is read once (an export, a session's hash), and
                    // filling the cache from batches cost a server 20-40 MB of peak RSS.
                    None => match read.next().expect("one result per entry read") {
                        Ok((codec, payload)) => (codec, payload),
                        // A damaged entry, or one compaction moved: the one-chunk read
                        // looks again.
                        Err(_) => return self.read_chunk(id),
                    },
                };
                Ok(StoredChunk {
                    id: *id,
                    codec,
                    raw_len: loc.raw_len,
                    payload,
                })
            })
            .collect()
    }

    /// Turns the deltas among `chunks` into their chunks' bytes: each base read once for
    /// the batch, and each delta decoded against it (the caller checks the bytes).
    fn resolve_deltas(&self, chunks: &mut [StoredChunk]) -> Result<()> {
        let mut bases: Vec<Hash> = Vec::new();
        for c in chunks.iter().filter(|c| c.codec == Codec::Delta) {
            bases.push(codec::split_delta(&c.id, &c.payload)?.0);
        }
        if bases.is_empty() {
            return Ok(());
        }
        bases.sort_unstable();
        bases.dedup();
        let stored = match self.read_stored_batch(&bases) {
            Ok(stored) => stored,
            // A base that cannot be had: each delta on its own says which and why.
            Err(_) => {
                for c in chunks.iter_mut().filter(|c| c.codec == Codec::Delta) {
                    *c = self.read_chunk(&c.id)?;
                }
                return Ok(());
            }
        };
        // Not checked against their ids: see `read_chunk_into`. (A base stored as a delta
        // does not decode on its own.)
        let decoded: HashMap<Hash, Result<Vec<u8>>> = stored
            .into_iter()
            .map(|b| {
                let raw = codec::decode(&b.id, b.codec, &b.payload, b.raw_len as usize);
                (b.id, raw)
            })
            .collect();
        for c in chunks.iter_mut().filter(|c| c.codec == Codec::Delta) {
            let (base, frame) = codec::split_delta(&c.id, &c.payload)?;
            let base_raw = match decoded.get(&base) {
                Some(Ok(raw)) => raw,
                Some(Err(_)) | None => {
                    let e = self
                        .base_bytes(&base)
                        .err()
                        .unwrap_or(Error::ChunkNotFound(base));
                    return Err(base_error(&c.id, &base, e));
                }
            };
            let mut raw = vec![0u8; c.raw_len as usize];
            self.decode_delta(&c.id, &base, frame, base_raw, &mut raw)?;
            c.codec = Codec::Raw;
            c.payload = raw.into();
        }
        Ok(())
    }

    /// The bytes of `base` as [`PackedStore::base_bytes`] reads them, not checked against its
    /// id: the read path's, where the delta's own bytes are checked against the delta's id
    /// (a damaged base cannot give them), and the base is checked only to explain a failure.
    ///
    /// # Errors
    /// As [`PackedStore::base_bytes`], except a damaged base that still decodes.
    fn base_bytes_unchecked(&self, base: &Hash) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        let (codec, raw_len) = self.read_stored_into(base, &mut payload)?;
        // A base stored as a delta does not decode on its own (one level only).
        codec::decode(base, codec, &payload, raw_len as usize)
    }

    /// Decodes delta `id` (its `frame`, against `base`'s bytes `base_raw`) into `out`; when
    /// that fails, the error says whether the base is why.
    fn decode_delta(
        &self,
        id: &Hash,
        base: &Hash,
        frame: &[u8],
        base_raw: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        codec::decode_against_into(id, frame, base_raw, out).map_err(|e| {
            match self.base_bytes(base) {
                Err(why) => base_error(id, base, why),
                Ok(_) => e,
            }
        })
    }

    /// The bytes of `base`, a chunk some delta is stored against: read, decoded and checked
    /// against its id. A base is never a delta itself.
    ///
    /// # Errors
    /// [`Error::ChunkNotFound`] if it is not stored, [`Error::Corrupt`] if it is damaged (or
    /// recorded as a delta), read errors.
    pub(super) fn base_bytes(&self, base: &Hash) -> Result<Vec<u8>> {
        let raw = self.base_bytes_unchecked(base)?;
        crate::restore::check_hash(base, &raw)?;
        Ok(raw)
    }
}

/// Writes chunks into a pack of its own; records them in the catalog at commit.
struct PackedWriter<'a, P, C> {
    store: &'a PackedStore<P, C>,
    sink: Option<(Box<dyn PackSink>, Busy)>,
    /// Full packs with entries not yet recorded: busy until the next commit is finished.
    retired: Vec<Busy>,
    pending: Vec<(Hash, ChunkLoc)>,
    /// Super-features of pending plain chunks.
    features: Vec<(SuperFeatures, Hash)>,
}

impl<P: PackStorage, C: Catalog> PackedWriter<'_, P, C> {
    fn try_append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        if self.sink.as_ref().is_some_and(|(s, _)| s.full()) {
            // The full pack is synced now so the pending entries in it are durable at commit.
            let (mut full, busy) = self.sink.take().expect("checked");
            full.sync()?;
            self.retired.push(busy);
        }
        let (sink, _) = match &mut self.sink {
            Some(s) => s,
            None => self.sink.insert(self.store.new_pack()?),
        };
        let loc = sink.append(id, codec, raw_len, payload)?;
        self.pending.push((*id, loc));
        Ok(())
    }

    fn try_start_commit(&mut self) -> Result<Box<dyn PendingCommit>> {
        let mut busy = std::mem::take(&mut self.retired);
        let sync = match (&mut self.sink, self.pending.is_empty()) {
            (Some((sink, _)), false) => {
                // The commit keeps the pack busy too: the writer may be dropped before the
                // entries are recorded.
                busy.push(self.store.mark_busy(sink.pack())?);
                Some(sink.start_sync()?)
            }
            _ => None,
        };
        if self.sink.as_ref().is_some_and(|(s, _)| s.full()) {
            // A pack that takes nothing more (a bucket's object is written at its sync) is
            // let go once this commit is done, not when the next append starts another: a
            // server's writer may sit idle for long, and gc must be able to compact it.
            let (_, held) = self.sink.take().expect("checked");
            busy.push(held);
        }
        Ok(Box::new(PackedCommit {
            catalog: self.store.catalog.clone(),
            guard: self.store.guard.clone(),
            sync,
            pending: std::mem::take(&mut self.pending),
            features: std::mem::take(&mut self.features),
            _busy: busy,
        }))
    }

    /// After any failure, nothing appended since the last commit can be trusted to be durable
    /// (a short write also leaves the pack's length unknown): forget it, and start the next
    /// append in a fresh pack. The abandoned bytes are unreferenced garbage for gc.
    fn on_error<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.pending.clear();
            self.features.clear();
            if let Some((sink, _busy)) = self.sink.take() {
                sink.abandon();
            }
            self.retired.clear();
        }
        r
    }
}

impl<P: PackStorage, C: Catalog> ChunkWriter for PackedWriter<'_, P, C> {
    fn append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        let r = self.try_append(id, codec, raw_len, payload);
        self.on_error(r)
    }

    fn start_commit(&mut self) -> Result<Box<dyn PendingCommit>> {
        let r = self.try_start_commit();
        self.on_error(r)
    }

    fn note_features(&mut self, id: &Hash, features: &SuperFeatures) {
        if self.store.catalog.config().delta {
            self.features.push((*features, *id));
        }
    }
}

/// Pack bytes to sync, then the locations that point at them.
struct PackedCommit<C> {
    catalog: Arc<C>,
    guard: Guard,
    sync: Option<Box<dyn PackSync>>,
    pending: Vec<(Hash, ChunkLoc)>,
    features: Vec<(SuperFeatures, Hash)>,
    /// Busy markers of the packs this commit records, released when it is done.
    _busy: Vec<Busy>,
}

impl<C: Catalog> PendingCommit for PackedCommit<C> {
    fn finish(self: Box<Self>) -> Result<()> {
        if let Some(sync) = self.sync {
            // Durability order: the bytes first, then the locations that point at them.
            sync.wait()?;
        }
        if !self.pending.is_empty() {
            self.guard
                .note_stored(self.pending.iter().map(|(id, _)| *id));
            // Features first: one that names a chunk not recorded yet finds nothing. They
            // are advisory: failing to record them costs later chunks a delta, not this
            // commit.
            if !self.features.is_empty()
                && let Err(e) = self.catalog.add_features(&self.features)
            {
                tracing::warn!(error = %e, "cannot record super-features; later chunks may be stored plain");
            }
            self.catalog.insert_locs(&self.pending)?;
        }
        Ok(())
    }
}

impl<P: PackStorage, C: Catalog> ChunkStore for PackedStore<P, C> {
    fn config(&self) -> StoreConfig {
        self.catalog.config()
    }

    fn guard(&self) -> &Guard {
        &self.guard
    }

    fn for_server(&self) {
        self.catalog.clone().for_server();
    }

    fn id_replica_len(&self) -> Option<usize> {
        self.catalog.id_replica_len()
    }

    fn lookup(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.catalog.missing(ids)
    }

    fn writer(&self) -> Result<Box<dyn ChunkWriter + '_>> {
        Ok(Box::new(PackedWriter {
            store: self,
            sink: None,
            retired: Vec::new(),
            pending: Vec::new(),
            features: Vec::new(),
        }))
    }

    fn read_chunk_into(&self, id: &Hash, payload: &mut Vec<u8>) -> Result<(Codec, u32)> {
        let (codec, raw_len) = self.read_stored_into(id, payload)?;
        if codec != Codec::Delta {
            return Ok((codec, raw_len));
        }
        // The caller checks the chunk's bytes against its id, as for every chunk: a damaged
        // base cannot pass that, so the base itself is checked only to explain a failure.
        let (base, frame) = codec::split_delta(id, payload)?;
        let base_raw = self
            .base_bytes_unchecked(&base)
            .map_err(|e| base_error(id, &base, e))?;
        let mut raw = vec![0u8; raw_len as usize];
        self.decode_delta(id, &base, frame, &base_raw, &mut raw)?;
        *payload = raw;
        Ok((Codec::Raw, raw_len))
    }

    fn read_decoded_into(&self, id: &Hash, payload: &mut Vec<u8>, out: &mut [u8]) -> Result<()> {
        let (codec, raw_len) = self.read_stored_into(id, payload)?;
        codec::check_len(id, raw_len, out.len())?;
        if codec != Codec::Delta {
            return codec::decode_into(id, codec, payload, out);
        }
        // Decoded straight into `out`; the base as in `read_chunk_into`.
        let (base, frame) = codec::split_delta(id, payload)?;
        let base_raw = self
            .base_bytes_unchecked(&base)
            .map_err(|e| base_error(id, &base, e))?;
        self.decode_delta(id, &base, frame, &base_raw, out)
    }

    fn read_chunk(&self, id: &Hash) -> Result<StoredChunk> {
        let mut payload = Vec::new();
        let (codec, raw_len) = self.read_chunk_into(id, &mut payload)?;
        Ok(StoredChunk {
            id: *id,
            codec,
            raw_len,
            payload: payload.into(),
        })
    }

    fn read_chunks(&self, ids: &[Hash]) -> Result<Vec<StoredChunk>> {
        if !self.packs.batches_reads() {
            return ids.iter().map(|id| self.read_chunk(id)).collect();
        }
        let mut got = self.read_stored_batch(ids)?;
        self.resolve_deltas(&mut got)?;
        Ok(got)
    }

    fn batches_reads(&self) -> bool {
        self.packs.batches_reads()
    }

    fn ping(&self) -> Result<()> {
        self.packs.ping()?;
        self.catalog.ping()
    }

    fn lock_upload(&self, id: &[u8; 16], wait: Option<std::time::Duration>) -> Result<Hold> {
        self.catalog.lock_upload(id, wait)
    }

    fn add_session_bytes(&self, id: &[u8; 16], n: u64) -> Result<()> {
        self.catalog.add_session_bytes(id, n)
    }

    fn session_bytes(&self, id: &[u8; 16]) -> Result<Option<u64>> {
        self.catalog.session_bytes(id)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&Hash) -> Result<()>) -> Result<()> {
        self.catalog.for_each_loc(&mut |id, loc| {
            loc?;
            f(id)
        })
    }

    fn remove_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        self.catalog.remove_locs(ids)
    }

    fn similar(&self, features: &[SuperFeatures]) -> Result<Vec<Option<Hash>>> {
        self.catalog.similar(features)
    }

    fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.catalog.bases_in_use(ids)
    }

    fn prune_features(&self) -> Result<u64> {
        self.catalog.prune_features()
    }

    fn compact(&self, min_dead: f64) -> Result<CompactReport> {
        self.compact_packs(min_dead)
    }

    fn check_chunks(&self, resume: bool, progress: &(dyn Fn(u64) + Sync)) -> Result<ChunkCheck> {
        self.check_packs(resume, progress)
    }

    fn repair_chunks(
        &self,
        check: &ChunkCheck,
        wanted: Option<&HashSet<Hash>>,
    ) -> Result<ChunkRepair> {
        self.repair(check, wanted)
    }

    fn check_journal(&self, repair: bool) -> Result<Option<JournalCheck>> {
        self.catalog.check_log(repair)
    }

    fn chunk_totals(&self) -> Result<ChunkTotals> {
        if let Some(t) = self.catalog.totals()? {
            return Ok(t);
        }
        let mut t = ChunkTotals::default();
        self.catalog.for_each_loc(&mut |_, loc| {
            let loc = loc?;
            t.chunks += 1;
            t.raw_bytes += u64::from(loc.raw_len);
            t.encoded_bytes += u64::from(loc.stored_len);
            if loc.base.is_some() {
                t.deltas += 1;
                t.delta_raw_bytes += u64::from(loc.raw_len);
                t.delta_encoded_bytes += u64::from(loc.stored_len);
            }
            Ok(())
        })?;
        Ok(t)
    }

    fn chunk_data_bytes(&self) -> Result<u64> {
        self.packs.total_bytes()
    }

    // The rest is the catalog's.

    fn page_hashes(&self) -> Result<Vec<Hash>> {
        self.catalog.page_hashes()
    }
    fn remove_pages(&self, hashes: &[Hash]) -> Result<()> {
        self.catalog.remove_pages(hashes)
    }
    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        self.catalog.put_page(hash, bytes)
    }
    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        self.catalog.get_page(hash)
    }
    fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.catalog.put_manifest(manifest)
    }
    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>> {
        self.catalog.get_manifest(file_id)
    }
    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>> {
        self.catalog.file_ids_with_prefix(prefix)
    }
    fn manifests(&self) -> Result<Vec<Manifest>> {
        self.catalog.manifests()
    }
    fn remove_manifest(&self, file_id: &Hash) -> Result<bool> {
        self.catalog.remove_manifest(file_id)
    }
    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord> {
        self.catalog.push_name(name, version)
    }
    fn get_name(&self, name: &str) -> Result<Option<NameRecord>> {
        self.catalog.get_name(name)
    }
    fn names(&self) -> Result<Vec<(String, NameRecord)>> {
        self.catalog.names()
    }
    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>> {
        self.catalog.remove_name(name)
    }
    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()> {
        self.catalog.put_name(name, record)
    }
    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()> {
        self.catalog.put_upload(kind, id, record)
    }
    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
        self.catalog.get_upload(kind, id)
    }
    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        self.catalog.uploads(kind)
    }
    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()> {
        self.catalog.delete_upload(kind, id)
    }
    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>> {
        self.catalog.tail(id)
    }
    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        self.catalog
            .write_tail(id, keep_from, position, bytes, meta)
    }
    fn forget_tail(&self, id: &[u8; 16]) -> Result<()> {
        self.catalog.forget_tail(id)
    }
}

/// A delta's read error when its base could not be used: damage to the delta, naming the
/// base (so that fsck and the reader say where to look), or the read error as it came.
fn base_error(id: &Hash, base: &Hash, e: Error) -> Error {
    match base_fault(base, &e) {
        Some(detail) => Error::Corrupt { id: *id, detail },
        None => e,
    }
}

/// What a delta's reader says when reading its `base` failed with `e`: that it is not
/// stored, or damaged and how; `None` for a failure that is not the base's (a read error).
pub(super) fn base_fault(base: &Hash, e: &Error) -> Option<String> {
    match e {
        Error::ChunkNotFound(_) => Some(format!("its base {base} is not stored")),
        Error::Corrupt { detail, .. } => Some(format!("its base {base} is damaged: {detail}")),
        _ => None,
    }
}
