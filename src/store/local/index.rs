//! The index: which chunks exist and where (redb), manifests, names and meta (sled).
//!
//! Keys are raw bytes; values are versioned bincode records (see `record.rs`):
//!
//! | where                    | key             | value                                   |
//! |--------------------------|-----------------|-----------------------------------------|
//! | `chunks.redb`, `chunks`  | chunk id (32 B) | [`ChunkLoc`] (pack, offset, lengths; a delta's base) |
//! | `chunks.redb`, `deltas`  | base id ‖ delta id (64 B) | nothing: which deltas name a base |
//! | `chunks.redb`, `features`| super-feature (u32) | first 4 bytes (u32, big-endian) of the id of the last plain chunk stored with it |
//! | sled tree `files`        | file id (32 B)  | [`Manifest`](crate::manifest::Manifest) header |
//! | sled tree `pages`        | page hash (32B) | encoded manifest page                   |
//! | sled tree `names`        | name (UTF-8)    | [`NameRecord`] (versions, oldest first) |
//! | sled tree `sessions`     | session id (16 B) | upload session record (see `upload/session/`)|
//! | sled tree `tus`          | upload id (16 B) | tus upload record (see `upload/tus/`)   |
//! | sled tree `tus_tails`    | upload id (16 B) | where its tail is in `tails/` (see `tails.rs`) |
//! | sled tree `meta`         | `"config"`, `"format"`, `"created"` | store-wide settings |
//!
//! Why the chunk table is not a sled tree: measured here, a sled 0.34.7 tree of 500 000 random
//! 32-byte keys grew the process to 1.9 GiB of RSS (with an 8 MiB cache) and answered lookups in
//! about 8 us; RSS grew with every chunk an import added (31 MiB after 1 GiB, 61 MiB after
//! 4 GiB). redb, with its cache capped, kept the same table in about 25 MiB. The chunk table is
//! the one that grows with the data; the sled trees grow with the number of files.
//! Both caches are capped (sled's default of 1 GiB alone would break the memory budget).

use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::record;
use crate::store::NameRecord;
use crate::store::pack::ChunkLoc;

/// Version of the store layout as a whole (meta key `format`).
pub const STORE_FORMAT: u8 = 1;
/// Version byte of `chunks`, `names` and `meta` records.
const RECORD_VERSION: u8 = 1;
/// Version byte of a `chunks` record of a delta (one that names its base) and of the
/// `config` of a store that may hold deltas; a build that does not know deltas refuses both.
const DELTA_RECORD_VERSION: u8 = 2;
/// sled page cache = 8 MiB.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// redb page cache for the chunk table = 16 MiB.
const CHUNK_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// The chunk table: id -> [`ChunkLoc`] record.
const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// Which recorded deltas name which base: base id ‖ delta id, kept with `chunks` in one
/// transaction (gc asks it whether a chunk it would free is some delta's base).
const DELTAS: TableDefinition<&[u8; 64], ()> = TableDefinition::new("deltas");
/// Resemblance lookup for delta chunks: super-feature -> the first 4 bytes of the id of the
/// last plain chunk stored with it, 8 bytes a record (the lookup finds the chunk by that
/// prefix in `chunks`; the first id with it is taken, which among millions of chunks is now
/// and then another one, and at worst gives a worse base: the delta stage keeps a delta only
/// when it is small). Advisory: an entry may name a chunk gc has freed since.
const FEATURES: TableDefinition<u32, u32> = TableDefinition::new("features");

/// The first 4 bytes of `id`, as the `features` table keeps them.
fn id_prefix(id: &Hash) -> u32 {
    u32::from_be_bytes(id.as_bytes()[..4].try_into().expect("4 bytes"))
}

/// The first and last possible ids with `prefix`.
fn prefix_range(prefix: u32) -> ([u8; 32], [u8; 32]) {
    let (mut from, mut to) = ([0u8; 32], [0xffu8; 32]);
    from[..4].copy_from_slice(&prefix.to_be_bytes());
    to[..4].copy_from_slice(&prefix.to_be_bytes());
    (from, to)
}

/// A chunk location as version 1 records it (no base).
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct LocV1 {
    pack: u64,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    codec: u8,
}

/// A delta's location (version 2): version 1's fields, then the base.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct LocV2 {
    pack: u64,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    codec: u8,
    base: Hash,
}

/// The store config as version 1 records it (before delta chunks).
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct ConfigV1 {
    chunker: crate::config::ChunkerParams,
    level: i32,
}

/// The `deltas` key of `delta` stored against `base`.
fn delta_key(base: &Hash, delta: &Hash) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(base.as_bytes());
    k[32..].copy_from_slice(delta.as_bytes());
    k
}

/// Opens sled at `path`. sled locks its file and lets go only when its background flusher
/// notices the database was dropped: reopening in the same process right after a close can
/// find it still locked for a moment, so that case is retried for up to 2 s. (Other processes
/// are kept out by the store's own lock before this is reached.)
///
/// # Errors
/// I/O and sled errors.
pub fn open_sled(path: &Path, cache: u64) -> Result<sled::Db> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(path).cache_capacity(cache).open() {
            Ok(db) => return Ok(db),
            // sled reports its lock as `Other` with this text.
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock") && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Io(io)) => return Err(Error::io("cannot open index", path)(io)),
            Err(other) => return Err(Error::Index(other)),
        }
    }
}

/// Handles to the sled database and its trees (all cheap `Clone`s).
#[derive(Clone)]
pub struct Index {
    pub(super) db: sled::Db,
    chunks: Arc<ChunkTable>,
    pub(super) files: sled::Tree,
    pub(super) pages: sled::Tree,
    pub(super) names: sled::Tree,
    pub(super) sessions: sled::Tree,
    pub(super) tus: sled::Tree,
    pub(super) meta: sled::Tree,
}

impl Index {
    /// The tree that keeps upload records of `kind`.
    pub(super) fn uploads(&self, kind: crate::store::UploadKind) -> &sled::Tree {
        match kind {
            crate::store::UploadKind::Session => &self.sessions,
            crate::store::UploadKind::Tus => &self.tus,
        }
    }

    /// Opens (or creates) the index at `path`.
    ///
    /// # Errors
    /// [`Error::Locked`] if another process holds it; sled errors otherwise.
    pub fn open(path: &Path, chunks_path: &Path, store_root: &Path) -> Result<Self> {
        let db = open_sled(path, CACHE_BYTES)?;
        let chunks = ChunkTable::open(chunks_path, store_root)?;
        chunks.write(|tx| {
            tx.open_table(CHUNKS)?;
            tx.open_table(DELTAS)?;
            tx.open_table(FEATURES)?;
            Ok(())
        })?;
        Self::from_parts(db, chunks)
    }

    /// Opens the index of a store that cannot be written here (`why`: a read-only file system,
    /// missing permissions): the chunk table read-only, and the other tables in memory,
    /// filled by `fill` (from the journal). Every write to the chunk table fails with `why`.
    ///
    /// # Errors
    /// [`Error::Locked`] if a writer has the chunk table open; redb or sled errors otherwise.
    pub fn open_read_only(
        chunks_path: &Path,
        store_root: &Path,
        why: std::io::ErrorKind,
        fill: impl FnOnce(&sled::Db) -> Result<()>,
    ) -> Result<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        fill(&db)?;
        let chunks = ChunkTable::open_read_only(chunks_path, store_root, why)?;
        Self::from_parts(db, chunks)
    }

    fn from_parts(db: sled::Db, chunks: ChunkTable) -> Result<Self> {
        Ok(Index {
            chunks: Arc::new(chunks),
            files: db.open_tree("files")?,
            pages: db.open_tree("pages")?,
            names: db.open_tree("names")?,
            sessions: db.open_tree("sessions")?,
            tus: db.open_tree("tus")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Opens the chunk table alone and closes it again: does it open?
    ///
    /// # Errors
    /// The error opening it.
    pub fn probe_chunks(chunks_path: &Path) -> Result<()> {
        let db = redb::Database::builder()
            .set_cache_size(1 << 20)
            .create(chunks_path)?;
        let tx = db.begin_read()?;
        match tx.open_table(CHUNKS) {
            Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored config, if the store was initialised.
    ///
    /// # Errors
    /// Index errors, or a format this build does not know.
    pub fn config(&self) -> Result<Option<StoreConfig>> {
        if let Some(v) = self.meta.get("format")? {
            let found = v.first().copied().unwrap_or(0);
            if found != STORE_FORMAT {
                return Err(Error::Version {
                    what: "store",
                    found: found.into(),
                    expected: STORE_FORMAT.into(),
                });
            }
        }
        self.meta
            .get("config")?
            .map(|v| Self::decode_config(&v))
            .transpose()
    }

    /// Decodes a `config` value: version 1 (no delta chunks) or 2.
    ///
    /// # Errors
    /// On damage, or a version this build does not know.
    pub fn decode_config(bytes: &[u8]) -> Result<StoreConfig> {
        if bytes.first() == Some(&DELTA_RECORD_VERSION) {
            return record::decode("store config", DELTA_RECORD_VERSION, bytes);
        }
        let v1: ConfigV1 = record::decode("store config", RECORD_VERSION, bytes)?;
        Ok(StoreConfig {
            chunker: v1.chunker,
            level: v1.level,
            delta: false,
        })
    }

    /// Encodes a `config` value: as version 1 unless the store keeps delta chunks, so that
    /// a build from before delta chunks still opens a store without them.
    pub fn encode_config(config: &StoreConfig) -> Vec<u8> {
        if config.delta {
            record::encode(DELTA_RECORD_VERSION, config)
        } else {
            record::encode(
                RECORD_VERSION,
                &ConfigV1 {
                    chunker: config.chunker,
                    level: config.level,
                },
            )
        }
    }

    /// Records the config at creation; durable on return.
    ///
    /// # Errors
    /// Index errors.
    pub fn init(&self, config: &StoreConfig) -> Result<()> {
        let created = crate::unix_now();
        let mut b = sled::Batch::default();
        b.insert("format", &[STORE_FORMAT]);
        b.insert("config", Self::encode_config(config));
        b.insert("created", record::encode(RECORD_VERSION, &created));
        self.meta.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// Decodes a `chunks` value.
    ///
    /// # Errors
    /// On damage.
    pub fn decode_loc(bytes: &[u8]) -> Result<ChunkLoc> {
        if bytes.first() == Some(&DELTA_RECORD_VERSION) {
            let v: LocV2 = record::decode("chunk location", DELTA_RECORD_VERSION, bytes)?;
            return Ok(ChunkLoc {
                pack: v.pack,
                offset: v.offset,
                stored_len: v.stored_len,
                raw_len: v.raw_len,
                codec: v.codec,
                base: Some(v.base),
            });
        }
        let v: LocV1 = record::decode("chunk location", RECORD_VERSION, bytes)?;
        Ok(ChunkLoc {
            pack: v.pack,
            offset: v.offset,
            stored_len: v.stored_len,
            raw_len: v.raw_len,
            codec: v.codec,
            base: None,
        })
    }

    /// Encodes a `chunks` value (version 1 unless it names a base).
    pub fn encode_loc(loc: &ChunkLoc) -> Vec<u8> {
        match loc.base {
            None => record::encode(
                RECORD_VERSION,
                &LocV1 {
                    pack: loc.pack,
                    offset: loc.offset,
                    stored_len: loc.stored_len,
                    raw_len: loc.raw_len,
                    codec: loc.codec,
                },
            ),
            Some(base) => record::encode(
                DELTA_RECORD_VERSION,
                &LocV2 {
                    pack: loc.pack,
                    offset: loc.offset,
                    stored_len: loc.stored_len,
                    raw_len: loc.raw_len,
                    codec: loc.codec,
                    base,
                },
            ),
        }
    }

    /// Where chunk `id` is, if indexed.
    ///
    /// # Errors
    /// Index errors or a damaged record.
    pub fn loc(&self, id: &Hash) -> Result<Option<ChunkLoc>> {
        self.chunks.read(|tx| {
            let table = tx.open_table(CHUNKS)?;
            let v = table.get(id.as_bytes())?;
            v.map(|v| Self::decode_loc(v.value())).transpose()
        })
    }

    /// For each id, true if and only if it is not indexed. Looks ids up in key order (one read
    /// transaction), so a large batch walks the B-tree once instead of jumping around it.
    ///
    /// # Errors
    /// Index errors.
    pub fn missing(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.chunks.read(|tx| {
            let table = tx.open_table(CHUNKS)?;
            let mut order: Vec<usize> = (0..ids.len()).collect();
            order.sort_unstable_by_key(|&i| ids[i]);
            let mut out = vec![false; ids.len()];
            for i in order {
                out[i] = table.get(ids[i].as_bytes())?.is_none();
            }
            Ok(out)
        })
    }

    /// Indexes chunks whose pack bytes are already durable, and records `features` (of plain
    /// chunks, for the delta stage's lookup), in one transaction; durable on return. A chunk
    /// recorded plain is not replaced by a delta (see the loop).
    ///
    /// # Errors
    /// Index errors.
    pub fn insert_locs(
        &self,
        locs: &[(Hash, ChunkLoc)],
        features: &[(crate::features::SuperFeatures, Hash)],
    ) -> Result<()> {
        self.chunks.write(|tx| {
            if !features.is_empty() {
                let mut table = tx.open_table(FEATURES)?;
                for (f, id) in features {
                    for sf in f.0 {
                        table.insert(sf, id_prefix(id))?;
                    }
                }
            }
            let mut table = tx.open_table(CHUNKS)?;
            let mut deltas = tx.open_table(DELTAS)?;
            for (id, loc) in locs {
                let old = table
                    .get(id.as_bytes())?
                    .map(|o| Self::decode_loc(o.value()));
                // A plain chunk stays plain: deltas may be stored against it already (two
                // writers that stored one chunk at once, one as a delta), and a base is
                // never a delta.
                if loc.base.is_some() && matches!(old, Some(Ok(ChunkLoc { base: None, .. }))) {
                    continue;
                }
                let v = Self::encode_loc(loc);
                table.insert(id.as_bytes(), v.as_slice())?;
                if let Some(Ok(ChunkLoc {
                    base: Some(base), ..
                })) = old
                {
                    deltas.remove(&delta_key(&base, id))?;
                }
                if let Some(base) = &loc.base {
                    deltas.insert(&delta_key(base, id), ())?;
                }
            }
            Ok(())
        })
    }

    /// For each id, whether a recorded delta names it as its base.
    ///
    /// # Errors
    /// Index errors.
    pub fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.chunks.read(|tx| {
            let deltas = tx.open_table(DELTAS)?;
            ids.iter()
                .map(|id| {
                    let from = delta_key(id, &Hash::from_bytes([0; 32]));
                    let to = delta_key(id, &Hash::from_bytes([0xff; 32]));
                    Ok(deltas.range::<&[u8; 64]>(&from..=&to)?.next().is_some())
                })
                .collect()
        })
    }

    /// For each set of super-features, a stored chunk that is not a delta and shares one of
    /// them (the first super-feature that names one wins).
    ///
    /// # Errors
    /// Index errors.
    pub fn similar(
        &self,
        features: &[crate::features::SuperFeatures],
    ) -> Result<Vec<Option<Hash>>> {
        self.chunks.read(|tx| {
            let table = tx.open_table(FEATURES)?;
            let chunks = tx.open_table(CHUNKS)?;
            let mut out = Vec::with_capacity(features.len());
            for f in features {
                let mut found = None;
                for sf in f.0 {
                    let Some(prefix) = table.get(sf)?.map(|v| v.value()) else {
                        continue;
                    };
                    let (from, to) = prefix_range(prefix);
                    let Some(kv) = chunks.range::<&[u8; 32]>(&from..=&to)?.next() else {
                        continue;
                    };
                    let (k, v) = kv?;
                    if Self::decode_loc(v.value()).is_ok_and(|l| l.base.is_none()) {
                        found = Some(Hash::from_bytes(*k.value()));
                        break;
                    }
                }
                out.push(found);
            }
            Ok(out)
        })
    }

    /// Forgets super-features that name chunks no longer stored (gc's tidy-up); returns how
    /// many went.
    ///
    /// # Errors
    /// Index errors.
    pub fn prune_features(&self) -> Result<u64> {
        self.chunks.write_lazily(|tx| {
            let mut table = tx.open_table(FEATURES)?;
            let chunks = tx.open_table(CHUNKS)?;
            let mut stale = Vec::new();
            for kv in table.iter()? {
                let (k, v) = kv?;
                let (from, to) = prefix_range(v.value());
                if chunks.range::<&[u8; 32]>(&from..=&to)?.next().is_none() {
                    stale.push(k.value());
                }
            }
            for k in &stale {
                table.remove(k)?;
            }
            Ok(stale.len() as u64)
        })
    }

    /// Removes chunks from the table; returns how many were there and their encoded bytes.
    ///
    /// # Errors
    /// Index errors.
    pub fn remove_locs(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        self.chunks.write(|tx| {
            let (mut n, mut bytes) = (0, 0);
            let mut table = tx.open_table(CHUNKS)?;
            let mut deltas = tx.open_table(DELTAS)?;
            for id in ids {
                if let Some(v) = table.remove(id.as_bytes())? {
                    n += 1;
                    let loc = Self::decode_loc(v.value());
                    bytes += loc.as_ref().map_or(0, |l| u64::from(l.stored_len));
                    if let Ok(ChunkLoc {
                        base: Some(base), ..
                    }) = loc
                    {
                        deltas.remove(&delta_key(&base, id))?;
                    }
                }
            }
            Ok((n, bytes))
        })
    }

    /// Points chunks at their new entries, each only if it still points at the old one;
    /// durable on return. Returns how many moved.
    ///
    /// # Errors
    /// Index errors.
    pub fn relocate(&self, moves: &[(Hash, ChunkLoc, ChunkLoc)]) -> Result<u64> {
        self.chunks.write(|tx| {
            let mut n = 0;
            let mut table = tx.open_table(CHUNKS)?;
            for (id, old, new) in moves {
                let current = table
                    .get(id.as_bytes())?
                    .map(|v| Self::decode_loc(v.value()))
                    .transpose()?;
                if current == Some(*old) {
                    let v = Self::encode_loc(new);
                    table.insert(id.as_bytes(), v.as_slice())?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Calls `f` with every indexed chunk location, in id order; a damaged record comes as
    /// its error instead of stopping the walk.
    ///
    /// # Errors
    /// Index errors, or `f`'s error.
    pub fn for_each_record(
        &self,
        mut f: impl FnMut(&Hash, Result<ChunkLoc>) -> Result<()>,
    ) -> Result<()> {
        self.chunks.read(|tx| {
            let table = tx.open_table(CHUNKS)?;
            for kv in table.iter()? {
                let (k, v) = kv?;
                f(&Hash::from_bytes(*k.value()), Self::decode_loc(v.value()))?;
            }
            Ok(())
        })
    }

    /// Decodes a `names` value.
    ///
    /// # Errors
    /// On damage.
    pub fn decode_name(bytes: &[u8]) -> Result<NameRecord> {
        record::decode("name record", RECORD_VERSION, bytes)
    }

    /// Encodes a `names` value.
    pub fn encode_name(rec: &NameRecord) -> Vec<u8> {
        record::encode(RECORD_VERSION, rec)
    }
}

/// The redb chunk table. After an I/O error (a full disk) redb refuses all further work with
/// "previous I/O error" until the database is opened again; this reopens it, so that a server
/// works again once space is freed instead of failing every write until it is restarted.
struct ChunkTable {
    path: std::path::PathBuf,
    store_root: std::path::PathBuf,
    db: std::sync::Mutex<Option<Arc<ChunkDb>>>,
    /// Why the table was opened read-only, if it was.
    read_only: Option<std::io::ErrorKind>,
}

/// The chunk table's database, as it was opened.
enum ChunkDb {
    Write(redb::Database),
    Read(redb::ReadOnlyDatabase),
}

impl ChunkTable {
    fn open(path: &Path, store_root: &Path) -> Result<Self> {
        let db = Self::open_db(path, store_root)?;
        Ok(ChunkTable {
            path: path.to_owned(),
            store_root: store_root.to_owned(),
            db: std::sync::Mutex::new(Some(Arc::new(ChunkDb::Write(db)))),
            read_only: None,
        })
    }

    fn open_read_only(path: &Path, store_root: &Path, why: std::io::ErrorKind) -> Result<Self> {
        let db = Self::open_read_only_db(path, store_root)?;
        Ok(ChunkTable {
            path: path.to_owned(),
            store_root: store_root.to_owned(),
            db: std::sync::Mutex::new(Some(Arc::new(ChunkDb::Read(db)))),
            read_only: Some(why),
        })
    }

    fn open_read_only_db(path: &Path, store_root: &Path) -> Result<redb::ReadOnlyDatabase> {
        match redb::Database::builder()
            .set_cache_size(CHUNK_CACHE_BYTES)
            .open_read_only(path)
        {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                Err(Error::Locked(store_root.to_owned()))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// As with sled's lock (see `open_sled`): retries for up to 2 s a lock that a forked
    /// child, or a transaction on the handle being replaced, may still hold.
    fn open_db(path: &Path, store_root: &Path) -> Result<redb::Database> {
        let mut tries = 0;
        loop {
            match redb::Database::builder()
                .set_cache_size(CHUNK_CACHE_BYTES)
                .create(path)
            {
                Ok(c) => return Ok(c),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(Error::Locked(store_root.to_owned()));
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// The open database, opened anew if an I/O error closed it.
    fn get(&self) -> Result<Arc<ChunkDb>> {
        let mut slot = crate::lock(&self.db);
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        let db = Arc::new(match self.read_only {
            Some(_) => ChunkDb::Read(Self::open_read_only_db(&self.path, &self.store_root)?),
            None => ChunkDb::Write(Self::open_db(&self.path, &self.store_root)?),
        });
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `f` on `db`'s result; an I/O error closes `db` so that the next call reopens it.
    fn after<T>(&self, db: Arc<ChunkDb>, r: Result<T>) -> Result<T> {
        if let Err(Error::ChunkIndex(redb::Error::Io(_) | redb::Error::PreviousIo)) = &r {
            let mut slot = crate::lock(&self.db);
            if slot.as_ref().is_some_and(|d| Arc::ptr_eq(d, &db)) {
                *slot = None;
            }
        }
        r
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let db = self.get()?;
        let tx = match &*db {
            ChunkDb::Write(d) => d.begin_read(),
            ChunkDb::Read(d) => d.begin_read(),
        };
        let r = tx.map_err(Error::from).and_then(|tx| f(&tx));
        self.after(db, r)
    }

    /// Runs `f` in a write transaction and commits it (durable on return).
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Runs `f` in a write transaction committed without forcing it to disk: durable with the
    /// next [`ChunkTable::write`] (for what may be lost in a crash).
    fn write_lazily<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(redb::Durability::None, f)
    }

    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let db = self.get()?;
        let ChunkDb::Write(d) = &*db else {
            let why = self
                .read_only
                .unwrap_or(std::io::ErrorKind::ReadOnlyFilesystem);
            return Err(Error::io("cannot write chunk table", &self.path)(
                why.into(),
            ));
        };
        let r = d.begin_write().map_err(Error::from).and_then(|mut tx| {
            tx.set_durability(durability)
                .map_err(|e| Error::ChunkIndex(redb::Error::from(e)))?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        });
        self.after(db, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_locations_keep_version_1_and_deltas_are_version_2() {
        let plain = ChunkLoc {
            pack: 3,
            offset: 1 << 40,
            stored_len: 1000,
            raw_len: 65536,
            codec: 1,
            base: None,
        };
        let bytes = Index::encode_loc(&plain);
        assert_eq!(bytes[0], RECORD_VERSION);
        // Exactly what a build from before delta chunks wrote for the same location.
        let old = record::encode(
            RECORD_VERSION,
            &LocV1 {
                pack: 3,
                offset: 1 << 40,
                stored_len: 1000,
                raw_len: 65536,
                codec: 1,
            },
        );
        assert_eq!(bytes, old);
        assert_eq!(Index::decode_loc(&bytes).unwrap(), plain);
        let delta = ChunkLoc {
            codec: 2,
            base: Some(Hash::of(b"base")),
            ..plain
        };
        let bytes = Index::encode_loc(&delta);
        assert_eq!(bytes[0], DELTA_RECORD_VERSION);
        assert_eq!(Index::decode_loc(&bytes).unwrap(), delta);
        assert!(Index::decode_loc(&[9, 1, 2]).is_err());
    }

    #[test]
    fn a_config_without_deltas_is_written_as_before() {
        let off = StoreConfig::default().with_delta(false);
        let bytes = Index::encode_config(&off);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(Index::decode_config(&bytes).unwrap(), off);
        let on = off.with_delta(true);
        let bytes = Index::encode_config(&on);
        assert_eq!(bytes[0], DELTA_RECORD_VERSION);
        assert_eq!(Index::decode_config(&bytes).unwrap(), on);
    }
}
