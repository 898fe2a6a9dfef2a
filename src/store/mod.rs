//! The store contract between the pipeline and the storage: chunks, manifests and names.
//!
//! [`ChunkStore`] is what `ingest` and `restore` talk to. Behind it, storage has two seams:
//! [`PackStorage`] (where encoded chunk bytes live: `packs.rs`) and [`Catalog`] (where chunk
//! locations, manifests, pages, names and upload records live: `catalog.rs`). A
//! [`PackedStore`] is one of each (`packed.rs`, with `compact.rs` and `check.rs`);
//! [`LocalStore`] is the one over a directory (`local/`). [`MemoryStore`] implements
//! [`ChunkStore`] directly with maps in memory: the reference behaviour. The contract tests in
//! `tests/` run the same assertions on both stores, and the seams' own contract on each seam.
//! Nothing here takes a process-wide lock the traits cannot express.

pub mod bucket;
pub mod bucket_meta;
mod cache;
pub mod catalog;
mod check;
mod compact;
mod engine;
mod guard;
pub mod local;
mod memory;
pub mod pack;
mod packed;
pub mod packs;
pub mod pg;
pub mod remote;

use serde::{Deserialize, Serialize};

use crate::store::pack::ChunkLoc;

/// How long a health check ([`ChunkStore::ping`]) waits for each engine.
pub(crate) const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub use catalog::{Catalog, Hold};
pub use guard::{Guard, Maintenance, Pin, PinKind, PinnedSnapshot, Shared};
pub use local::{LocalStore, journal};
pub use memory::MemoryStore;
pub use packed::PackedStore;
pub use packs::{PackSink, PackStorage, PackSync};
pub use remote::RemoteStore;

use crate::codec::Codec;
use crate::config::StoreConfig;
use crate::error::Result;
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::{Manifest, SealedPage};

/// A chunk as it is stored: encoded payload plus what is needed to decode and check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// The id the store filed it under.
    pub id: Hash,
    /// How `payload` is encoded.
    pub codec: Codec,
    /// Length of the decoded chunk.
    pub raw_len: u32,
    /// The encoded bytes (from a store behind a network, often a slice of the buffer one
    /// request filled: no copy).
    pub payload: bytes::Bytes,
}

/// One version of a name: the file it pointed at and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameVersion {
    /// The file.
    pub file_id: Hash,
    /// Its length, so listings need not load the manifest.
    pub size: u64,
    /// Seconds since the Unix epoch when this version was recorded.
    pub added: u64,
}

/// The history of one name, oldest first; the last entry is current.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// Every version, oldest first (`NAME@1` is the first).
    pub versions: Vec<NameVersion>,
}

/// Totals over the chunks a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChunkTotals {
    /// Distinct chunks.
    pub chunks: u64,
    /// Sum of their uncompressed lengths.
    pub raw_bytes: u64,
    /// Sum of their encoded lengths.
    pub encoded_bytes: u64,
    /// How many of them are stored as deltas (`delta.rs`).
    pub deltas: u64,
    /// Sum of the deltas' uncompressed lengths.
    pub delta_raw_bytes: u64,
    /// Sum of the deltas' encoded lengths.
    pub delta_encoded_bytes: u64,
}

/// What [`ChunkStore::compact`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Pack files rewritten with only their live entries.
    pub packs_rewritten: u64,
    /// Pack files deleted because nothing in them was live.
    pub packs_deleted: u64,
    /// Bytes of chunk data on disk before.
    pub bytes_before: u64,
    /// Bytes of chunk data on disk after.
    pub bytes_after: u64,
}

/// A stored chunk whose entry is damaged or gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadChunk {
    /// The chunk.
    pub id: Hash,
    /// What is wrong with it.
    pub detail: String,
    /// Where the index said it was (none for an in-memory store, or an unreadable record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc: Option<ChunkLoc>,
    /// For a sound delta that cannot be read because its base is damaged or gone: the base.
    /// Mending the base (a repair re-points it at an intact copy) mends the delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Hash>,
}

/// What [`ChunkStore::check_chunks`] found: every stored entry re-read and re-hashed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChunkCheck {
    /// Pack files read.
    pub packs: u64,
    /// Entries read.
    pub entries: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Stored chunks whose entry decoded and hashed to its id.
    pub chunks_ok: u64,
    /// Stored chunks whose entry is damaged or gone.
    pub bad: Vec<BadChunk>,
    /// Intact entries no index entry points at (left by a crash or gc; gc reclaims them).
    pub unreferenced: u64,
    /// Damaged entries no index entry points at.
    pub damaged_unreferenced: u64,
    /// Damage to pack files as such (a bad header, a cut-off tail).
    pub damaged_packs: Vec<String>,
    /// Intact copies that are not indexed: a repair can point the index at them.
    #[serde(skip_serializing)]
    pub spare: Vec<(Hash, ChunkLoc)>,
}

/// What [`ChunkStore::repair_chunks`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChunkRepair {
    /// Bad chunks pointed at an intact copy found elsewhere in the packs.
    pub repointed: u64,
    /// Bad chunks copied to the quarantine directory and dropped from the index.
    pub quarantined: u64,
    /// Index entries that pointed at nothing, dropped.
    pub dropped: u64,
    /// Chunks indexed from the packs (when rebuilding the chunk table).
    pub reindexed: u64,
    /// Where quarantined entries went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<std::path::PathBuf>,
}

/// How the metadata journal compares with the index (fsck).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JournalCheck {
    /// Intact records read.
    pub records: u64,
    /// Records skipped as damaged.
    pub damaged: u64,
    /// Where reading stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Names whose history differs between the journal and the index.
    pub names_differ: u64,
    /// Files (manifests) in one and not the other.
    pub files_differ: u64,
    /// Manifest pages in one and not the other.
    pub pages_differ: u64,
    /// Files the journal records and the index lacks: the index is behind, so the journal
    /// must not be rewritten from it and gc must not trust it.
    pub index_lacks_files: u64,
    /// Names, or versions of names, the journal records and the index lacks.
    pub index_lacks_names: u64,
    /// With repair: the journal was rewritten from the index; the old one is kept here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<std::path::PathBuf>,
    /// With repair, on a store in a bucket: differences settled, each side given what only
    /// the other held (the bucket's copy is not rewritten wholesale).
    #[serde(skip_serializing_if = "is_zero")]
    pub repaired: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl JournalCheck {
    /// True if the index lacks something the journal records.
    pub fn index_behind(&self) -> bool {
        self.index_lacks_files + self.index_lacks_names > 0
    }

    /// True if gc may mark from the index: it holds every file and name the journal records
    /// and nothing was unreadable. Pages may differ: one the index lacks stops gc when a file
    /// needs it, and one only the index or only the journal holds decides nothing gc does
    /// (a killed gc leaves such pages; `fsck --repair` settles them).
    pub fn gc_may_run(&self) -> bool {
        self.damaged == 0 && self.stopped.is_none() && self.names_differ + self.files_differ == 0
    }

    /// True if the journal would rebuild exactly the index.
    pub fn agrees(&self) -> bool {
        self.damaged == 0
            && self.stopped.is_none()
            && self.names_differ + self.files_differ + self.pages_differ == 0
    }
}

/// A tus upload's tail as stored: stream bytes from `position` on, and the caller's meta.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailRun {
    /// Stream position of `bytes[0]`.
    pub position: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// What the last write passed as its meta.
    pub meta: Vec<u8>,
}

/// The two kinds of upload the index keeps records of, each in its own table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UploadKind {
    /// Upload sessions by content (`upload/session/`): sled tree `sessions`.
    Session,
    /// tus uploads by offset (`upload/tus/`): sled tree `tus`.
    Tus,
}

/// The second half of a commit: make the chunks durable, then visible. It owns what it needs,
/// so it can run on another thread while the writer goes on appending.
pub trait PendingCommit: Send {
    /// Syncs the appended bytes, then indexes them.
    ///
    /// # Errors
    /// I/O or index errors; the chunks of this commit are then not stored.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Appends chunks; they become durable and visible to [`ChunkStore::missing`] and
/// [`ChunkStore::read_chunk`] only when their commit finishes.
pub trait ChunkWriter: Send {
    /// Adds one encoded chunk.
    ///
    /// # Errors
    /// I/O errors of the backing storage.
    fn append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()>;

    /// Hands over everything appended since the last commit, to be made durable and visible
    /// by [`PendingCommit::finish`], possibly on another thread while appends continue.
    ///
    /// # Errors
    /// I/O errors; the chunks appended since the last commit are then not stored, whatever
    /// later calls do (an append error has the same effect).
    fn start_commit(&mut self) -> Result<Box<dyn PendingCommit>>;

    /// Notes the super-features of a plain chunk appended (or about to be), recorded with
    /// the commit that records the chunk, so later chunks can be stored as deltas against
    /// it. A store that keeps no deltas ignores them.
    fn note_features(&mut self, id: &Hash, features: &SuperFeatures) {
        let _ = (id, features);
    }

    /// Makes everything appended so far durable, then visible, before returning.
    ///
    /// # Errors
    /// As [`ChunkWriter::start_commit`] and [`PendingCommit::finish`].
    fn commit(&mut self) -> Result<()> {
        self.start_commit()?.finish()
    }
}

/// What the pipeline needs from a store.
pub trait ChunkStore: Send + Sync {
    /// The params the store was created with.
    fn config(&self) -> StoreConfig;

    /// Returns once every engine the store lives on answers (a server's `/healthz`): the
    /// object store and the index database of a store in a bucket, within a couple of
    /// seconds each.
    ///
    /// # Errors
    /// The first engine's error that did not answer.
    fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// Holds upload `id` (a session or tus record) against every other process that has the
    /// store open: the store's side of a read, then write of the record (this process's
    /// own locks keep its threads apart). Waits for it, at most `wait` if given.
    ///
    /// # Errors
    /// The engine's error.
    fn lock_upload(&self, _id: &[u8; 16], _wait: Option<std::time::Duration>) -> Result<Hold> {
        Ok(Hold::Held(None))
    }

    /// See [`Catalog::add_session_bytes`].
    ///
    /// # Errors
    /// The engine's error.
    fn add_session_bytes(&self, _id: &[u8; 16], _n: u64) -> Result<()> {
        Ok(())
    }

    /// See [`Catalog::session_bytes`].
    ///
    /// # Errors
    /// The engine's error.
    fn session_bytes(&self, _id: &[u8; 16]) -> Result<Option<u64>> {
        Ok(None)
    }

    /// What keeps gc from removing chunks callers count on (see `guard.rs` and `gc.rs`).
    fn guard(&self) -> &Guard;

    /// The store serves a server from now on (see [`Catalog::for_server`]).
    fn for_server(&self) {}

    /// Ids in the server's replica of the chunk ids, once built (see
    /// [`Catalog::id_replica_len`]).
    fn id_replica_len(&self) -> Option<usize> {
        None
    }

    /// For each id in `ids`, true if and only if the store lacks that chunk, with no promise
    /// about later: callers use [`ChunkStore::missing`] or [`ChunkStore::missing_pinned`].
    ///
    /// # Errors
    /// Index errors.
    fn lookup(&self, ids: &[Hash]) -> Result<Vec<bool>>;

    /// For each id in `ids`, true if and only if the store lacks that chunk. One call asks
    /// about many ids, so a remote store answers in one round trip. A chunk reported present
    /// stays for at least gc's grace period.
    ///
    /// # Errors
    /// Index errors.
    fn missing(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        let guard = self.guard();
        let _held = guard.read();
        let missing = self.lookup(ids)?;
        guard.note_present(ids, &missing);
        Ok(missing)
    }

    /// As [`ChunkStore::missing`], and pins every id in `ids` (present or not) until `pin` is
    /// dropped: gc never removes them from under the caller.
    ///
    /// # Errors
    /// Index errors.
    fn missing_pinned(&self, ids: &[Hash], pin: &Pin) -> Result<Vec<bool>> {
        let _held = self.guard().read();
        // The pin first: another process's gc sees it, or condemned the chunks before it and
        // then this lookup revives them (see `guard.rs`).
        pin.add(ids)?;
        self.lookup(ids)
    }

    /// Stores a sealed manifest page and pins it until `pin` is dropped, as one step under
    /// gc's read lock: a sweep either sees the pin or ran before the page existed (an
    /// identical unreferenced page could have been a candidate).
    ///
    /// # Errors
    /// Index errors.
    fn put_page_pinned(&self, page: &SealedPage, pin: &Pin) -> Result<()> {
        let _held = self.guard().read();
        pin.add_page(page.pref.hash)?;
        self.put_page(&page.pref.hash, &page.bytes)
    }

    /// Calls `f` with every stored chunk's id, in id order, from one consistent view.
    ///
    /// # Errors
    /// Index errors, or `f`'s.
    fn for_each_chunk(&self, f: &mut dyn FnMut(&Hash) -> Result<()>) -> Result<()>;

    /// Forgets chunks (gc, under the guard's write lock): they are no longer found. Returns
    /// how many were stored, and the sum of their encoded lengths.
    ///
    /// # Errors
    /// Index errors.
    fn remove_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)>;

    /// For each set of super-features, a stored plain chunk similar to the chunk they came
    /// from, if the store knows one (`delta.rs`); a store that keeps no deltas knows none.
    ///
    /// # Errors
    /// Index errors.
    fn similar(&self, features: &[SuperFeatures]) -> Result<Vec<Option<Hash>>> {
        Ok(vec![None; features.len()])
    }

    /// For each id, whether a stored delta names it as its base: gc keeps those.
    ///
    /// # Errors
    /// Index errors.
    fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        Ok(vec![false; ids.len()])
    }

    /// Forgets the super-features of chunks no longer stored (gc's tidy-up); returns how many.
    ///
    /// # Errors
    /// Index errors.
    fn prune_features(&self) -> Result<u64> {
        Ok(0)
    }

    /// Rewrites or deletes pack files whose share of bytes no chunk uses is at least
    /// `min_dead` (0.0..=1.0); files with nothing live in them always go.
    ///
    /// # Errors
    /// I/O and index errors; what was done before the error stays done and consistent.
    fn compact(&self, min_dead: f64) -> Result<CompactReport>;

    /// Re-reads and re-hashes every stored chunk. With `resume`, skips what an interrupted
    /// earlier check finished (its findings are kept). `progress` gets bytes read.
    ///
    /// # Errors
    /// I/O and index errors (damage is reported in the result, not as an error).
    fn check_chunks(&self, resume: bool, progress: &(dyn Fn(u64) + Sync)) -> Result<ChunkCheck>;

    /// Repairs what `check` found: bad chunks are pointed at an intact copy if the packs hold
    /// one, else copied to a quarantine directory and dropped from the index (never deleted);
    /// index entries that point at nothing are dropped. Intact copies of chunks the index
    /// lacks are indexed: those in `wanted`, or all of them if `wanted` is `None` (rebuilding
    /// a lost chunk table).
    ///
    /// # Errors
    /// I/O and index errors.
    fn repair_chunks(
        &self,
        check: &ChunkCheck,
        wanted: Option<&std::collections::HashSet<Hash>>,
    ) -> Result<ChunkRepair>;

    /// Compares the metadata journal with the index (stores without one answer `None`).
    /// With `repair`, a journal that is damaged or disagrees is kept aside and written anew
    /// from the index.
    ///
    /// # Errors
    /// I/O and index errors.
    fn check_journal(&self, repair: bool) -> Result<Option<JournalCheck>> {
        let _ = repair;
        Ok(None)
    }

    /// Bytes a chunk check reads (for progress).
    ///
    /// # Errors
    /// I/O errors.
    fn check_bytes(&self) -> Result<u64> {
        self.chunk_data_bytes()
    }

    /// Every stored manifest page's hash.
    ///
    /// # Errors
    /// Index errors.
    fn page_hashes(&self) -> Result<Vec<Hash>>;

    /// Forgets manifest pages (gc).
    ///
    /// # Errors
    /// Index errors.
    fn remove_pages(&self, hashes: &[Hash]) -> Result<()>;

    /// Starts appending chunks.
    ///
    /// # Errors
    /// When the storage cannot be opened for writing.
    fn writer(&self) -> Result<Box<dyn ChunkWriter + '_>>;

    /// Reads a chunk's stored form, not yet decoded or verified (see `restore::read_verified`).
    ///
    /// # Errors
    /// [`Error::ChunkNotFound`](crate::Error::ChunkNotFound), I/O errors, or
    /// [`Error::Corrupt`](crate::Error::Corrupt) when the stored entry does not match the index.
    fn read_chunk(&self, id: &Hash) -> Result<StoredChunk>;

    /// As [`ChunkStore::read_chunk`], with the payload put in `payload` (reused by hot loops);
    /// returns the codec and the decoded length.
    ///
    /// # Errors
    /// As [`ChunkStore::read_chunk`].
    fn read_chunk_into(&self, id: &Hash, payload: &mut Vec<u8>) -> Result<(Codec, u32)> {
        let c = self.read_chunk(id)?;
        *payload = c.payload.into();
        Ok((c.codec, c.raw_len))
    }

    /// Reads chunk `id` and decodes it into `out`, which must be exactly its length, with
    /// `payload` as room for its stored form (reused by hot loops). Not checked against the id.
    ///
    /// # Errors
    /// As [`ChunkStore::read_chunk`]; [`Error::LengthMismatch`](crate::Error::LengthMismatch)
    /// when the chunk is not `out.len()` bytes long.
    fn read_decoded_into(&self, id: &Hash, payload: &mut Vec<u8>, out: &mut [u8]) -> Result<()> {
        let (codec, raw_len) = self.read_chunk_into(id, payload)?;
        crate::codec::check_len(id, raw_len, out.len())?;
        crate::codec::decode_into(id, codec, payload, out)
    }

    /// Reads many chunks, in the order of `ids`, as [`ChunkStore::read_chunk`] would.
    ///
    /// # Errors
    /// As [`ChunkStore::read_chunk`], for any of them.
    fn read_chunks(&self, ids: &[Hash]) -> Result<Vec<StoredChunk>> {
        ids.iter().map(|id| self.read_chunk(id)).collect()
    }

    /// True if [`ChunkStore::read_chunks`] is much cheaper than reading the chunks one by one
    /// (every request costs a round trip): readers of many chunks then batch them.
    fn batches_reads(&self) -> bool {
        false
    }

    /// Stores an encoded manifest page under its hash (idempotent).
    ///
    /// # Errors
    /// Index errors.
    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()>;

    /// Reads an encoded manifest page, if stored.
    ///
    /// # Errors
    /// Index errors.
    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>>;

    /// Records a manifest; durable on return. Its pages and chunks must already be stored.
    ///
    /// # Errors
    /// Index errors.
    fn put_manifest(&self, manifest: &Manifest) -> Result<()>;

    /// The manifest of a file, if stored.
    ///
    /// # Errors
    /// Index or decode errors.
    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>>;

    /// Ids of stored files whose raw id starts with `prefix`.
    ///
    /// # Errors
    /// Index errors.
    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>>;

    /// Every stored manifest, in id order.
    ///
    /// # Errors
    /// Index or decode errors.
    fn manifests(&self) -> Result<Vec<Manifest>>;

    /// Appends a version to `name` (creating it); durable on return. Returns the new record.
    ///
    /// # Errors
    /// Index errors.
    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord>;

    /// The history of `name`, if it exists.
    ///
    /// # Errors
    /// Index or decode errors.
    fn get_name(&self, name: &str) -> Result<Option<NameRecord>>;

    /// Every name with its history, in name order.
    ///
    /// # Errors
    /// Index or decode errors.
    fn names(&self) -> Result<Vec<(String, NameRecord)>>;

    /// Counts and sizes of the stored chunks.
    ///
    /// # Errors
    /// Index or decode errors.
    fn chunk_totals(&self) -> Result<ChunkTotals>;

    /// Bytes the chunk data takes on disk (pack files, with their headers).
    ///
    /// # Errors
    /// I/O errors.
    fn chunk_data_bytes(&self) -> Result<u64>;

    /// Removes a name and its history; returns what it held. The files stay stored.
    ///
    /// # Errors
    /// Index errors.
    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>>;

    /// Replaces a name's history (`rm` of a file id drops that file's versions from names).
    ///
    /// # Errors
    /// Index errors.
    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()>;

    /// Forgets a file's manifest; its chunks stay until gc finds nothing else uses them.
    /// Returns whether it was stored.
    ///
    /// # Errors
    /// Index errors.
    fn remove_manifest(&self, file_id: &Hash) -> Result<bool>;

    /// Writes the record of an upload of `kind` under its id; durable on return.
    ///
    /// # Errors
    /// Index errors.
    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()>;

    /// The record of an upload of `kind`, if there is one.
    ///
    /// # Errors
    /// Index errors.
    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>>;

    /// Every record of uploads of `kind` (open and ended), with its id.
    ///
    /// # Errors
    /// Index errors.
    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>>;

    /// Forgets an upload of `kind`.
    ///
    /// # Errors
    /// Index errors.
    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()>;

    /// The tail of tus upload `id`: the bytes after its last cut point, as the last
    /// [`ChunkStore::write_tail`] left them (the run may begin before the bytes still needed).
    ///
    /// # Errors
    /// Index or I/O errors.
    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>>;

    /// Writes `bytes` at stream `position` of upload `id`'s tail, with the caller's `meta`;
    /// durable on return. If the tail ends at `position` the bytes continue it, else they start
    /// a new run there. Bytes before `keep_from` are no longer needed and may be dropped.
    ///
    /// # Errors
    /// Index or I/O errors (a full disk as [`Error::Environment`](crate::Error)).
    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()>;

    /// Forgets upload `id`'s tail.
    ///
    /// # Errors
    /// Index or I/O errors.
    fn forget_tail(&self, id: &[u8; 16]) -> Result<()>;
}
