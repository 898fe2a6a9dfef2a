//! The on-disk store: one directory holding the index (a redb chunk table, sled for the rest),
//! the metadata journal, the pack files and the tus tails.
//!
//! ```text
//! STORE/index/   sled database: manifests, names, meta (see index.rs)
//! STORE/chunks.redb  the chunk table: id -> pack location (see index.rs)
//! STORE/packs/   {n:016x}.pack, append-only chunk bodies (see pack.rs)
//! STORE/lock     held with an exclusive advisory lock while a process has the store open
//! ```
//!
//! Durability order (DESIGN.md, "Storage"): pack bytes are fsynced before the index entries
//! that point at them are inserted; a manifest is written (and the index flushed) only after
//! all its chunks are committed; a name moves only after its manifest is durable. A crash
//! leaves at worst pack bytes no index entry points at, which gc reclaims.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::codec::Codec;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::index::{Index, open_sled};
use crate::store::journal::{self, Change, Journal, Kind};
use crate::store::pack::{
    ChunkLoc, ENTRY_HEADER_LEN, PACK_MAGIC, PACK_TARGET_LEN, PackReader, PackWriter, pack_path,
};
use crate::store::tails::Tails;
use crate::store::{
    ChunkCheck, ChunkRepair, ChunkStore, ChunkTotals, ChunkWriter, CompactReport, Guard,
    JournalCheck, NameRecord, NameVersion, PendingCommit, StoredChunk, TailRun, UploadKind,
};

/// The metadata journal, under the store directory.
const JOURNAL_FILE: &str = "journal.log";

/// Present while a chunk table started afresh waits to be rebuilt from the packs.
const REINDEX_MARKER: &str = "reindex-needed";

/// sled meta key present while a process has the store open (removed on a clean close).
const OPEN_MARK: &str = "open";

/// A store in a local directory.
pub struct LocalStore {
    /// Held (with an exclusive advisory lock) while the store is open: one process at a time.
    _lock: std::fs::File,
    root: PathBuf,
    pub(super) index: Index,
    pub(super) packs: PackReader,
    config: StoreConfig,
    journal: Journal,
    /// tus tails: files under `tails/`.
    tails: Tails,
    guard: Guard,
    /// Packs a writer may still append to, or whose entries are not indexed yet: compaction
    /// leaves them alone.
    busy: Arc<Mutex<HashMap<u64, usize>>>,
    /// Set when an index change failed after its journal record was written: the index is
    /// behind the journal, so the store is left marked open and the next open replays it.
    behind: AtomicBool,
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        if !self.behind.load(Ordering::SeqCst) {
            let _ = self.index.meta.remove(OPEN_MARK);
            let _ = self.index.db.flush();
        }
    }
}

/// Marks a pack busy until dropped (counted: a writer and its commits in flight each hold one).
struct Busy {
    set: Arc<Mutex<HashMap<u64, usize>>>,
    pack: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut set = crate::lock(&self.set);
        if let Some(n) = set.get_mut(&self.pack) {
            *n -= 1;
            if *n == 0 {
                set.remove(&self.pack);
            }
        }
    }
}

impl LocalStore {
    /// The default store directory: `$XDG_DATA_HOME/hoard` (usually `~/.local/share/hoard`).
    pub fn default_path() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("hoard"))
    }

    /// Opens the store at `root`, creating it with `requested` (or the defaults) if it does not
    /// exist yet. Returns the store and whether it was created just now.
    ///
    /// # Errors
    /// I/O errors creating the directories, [`Error::Locked`] if another process has it open,
    /// [`Error::ParamsMismatch`] if `requested` differs from what the store was created with.
    pub fn open(root: &Path, requested: Option<StoreConfig>) -> Result<(Self, bool)> {
        let packs = root.join("packs");
        // A new store's directories are its owner's alone, whatever the umask.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&packs)
            .map_err(Error::io("cannot create store directory", &packs))
            .map_err(environmental(root, "directory"))?;
        let lock = lock_store(root).map_err(environmental(root, "lock file"))?;
        Self::open_locked(root, requested, lock, false)
    }

    /// Opens the store at `root` whose lock is `lock`. Unless `repairing`, a chunk table
    /// waiting to be re-indexed is refused: gc would take every pack for garbage.
    fn open_locked(
        root: &Path,
        requested: Option<StoreConfig>,
        lock: std::fs::File,
        repairing: bool,
    ) -> Result<(Self, bool)> {
        let packs = root.join("packs");
        let chunks = root.join("chunks.redb");
        let damaged = |what, detail: String| Error::IndexDamaged {
            root: root.to_owned(),
            what,
            detail,
        };
        if root.join("index").is_dir() && !chunks.exists() {
            return Err(damaged("chunk table", "chunks.redb is gone".into()));
        }
        if !repairing && root.join(REINDEX_MARKER).exists() {
            return Err(damaged(
                "chunk table",
                "a repair started re-indexing the packs and did not finish".into(),
            ));
        }
        if !root.join("index").is_dir() && root.join(JOURNAL_FILE).exists() {
            return Err(damaged("index", "the index directory is gone".into()));
        }
        let index = match Index::open(&root.join("index"), &chunks, root) {
            Ok(i) => i,
            Err(e @ Error::Locked(_)) => return Err(e),
            Err(e) => {
                return Err(match environmental(root, "index")(e) {
                    e @ Error::Environment { .. } => e,
                    e => damaged("index", e.to_string()),
                });
            }
        };
        let (journal, fresh) =
            Journal::open(&root.join(JOURNAL_FILE)).map_err(environmental(root, "journal"))?;
        let (config, created) = match (index.config()?, requested) {
            (Some(existing), Some(req)) if existing != req => {
                return Err(Error::ParamsMismatch {
                    existing: existing.to_string(),
                    requested: req.to_string(),
                });
            }
            (Some(existing), _) => (existing, false),
            // An index with no config is a new store only if the journal is new too: an
            // emptied index beside a journal that has records is damage, never a fresh start.
            (None, _) if !(fresh || journal.is_empty()) => {
                return Err(damaged(
                    "index",
                    "it is empty, but the metadata journal holds the store's records".into(),
                ));
            }
            (None, req) => {
                let config = req.unwrap_or_default();
                index.init(&config).map_err(environmental(root, "index"))?;
                (config, true)
            }
        };
        // A journal with no record (new, or cut off before its first snapshot was in place)
        // starts with what the index holds; a store made before the journal likewise.
        if fresh || journal.is_empty() {
            // A new store, or one made before the journal: start it with what the index holds.
            let mut held = journal.lock();
            journal.rewrite(&mut held, snapshot(&index))?;
        }
        // The journal is the index's write-ahead log. A store that was not closed cleanly
        // (kill -9, power loss, or an index change that failed after its journal record)
        // may lack what its last journal records say: apply the journal again (redo).
        if !created && index.meta.get(OPEN_MARK)?.is_some() {
            let (r, _) = apply_journal(&index.db, &root.join(JOURNAL_FILE))
                .map_err(environmental(root, "index"))?;
            tracing::info!(
                records = r.records,
                "store was not closed cleanly: journal applied to the index again"
            );
        }
        index
            .meta
            .insert(OPEN_MARK, &[1u8])
            .map_err(Error::from)
            .and_then(|_| Ok(index.db.flush()?))
            .map_err(environmental(root, "index"))?;
        let tails = Tails::open(root, &index.db).map_err(environmental(root, "tus tails"))?;
        let store = LocalStore {
            _lock: lock,
            root: root.to_owned(),
            index,
            packs: PackReader::new(packs),
            config,
            journal,
            tails,
            guard: Guard::default(),
            busy: Arc::default(),
            behind: AtomicBool::new(false),
        };
        Ok((store, created))
    }

    /// Opens the store at `root` for reading only, when it cannot be written here (`why`: a
    /// read-only file system, missing permissions): without its write lock (a shared lock if
    /// the lock file can be read, so a writer in another process is noticed), with the chunk
    /// table opened read-only and manifests, pages and names read from the journal into memory
    /// (sled cannot open read-only). `ls`, `export` and `stats` work; every write fails with
    /// `why`, reported as [`Error::Environment`].
    ///
    /// # Errors
    /// [`Error::NoStore`]; [`Error::Locked`] if a writer has it open; I/O errors.
    pub fn open_read_only(root: &Path, why: std::io::ErrorKind) -> Result<Self> {
        let journal_path = root.join(JOURNAL_FILE);
        if !journal_path.exists() {
            return Err(Error::NoStore(root.to_owned()));
        }
        let lock = std::fs::File::open(root.join("lock"))
            .map_err(Error::io("cannot open lock file", root.join("lock")))?;
        match lock.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(root.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock", root.join("lock"))(e));
            }
        }
        let chunks = root.join("chunks.redb");
        let index = Index::open_read_only(&chunks, root, why, |db| {
            apply_journal(db, &journal_path).map(|_| ())
        })?;
        let config = index.config()?.ok_or_else(|| Error::IndexDamaged {
            root: root.to_owned(),
            what: "journal",
            detail: "it records no store config".into(),
        })?;
        let journal = Journal::open_read_only(&journal_path, why)?;
        let tails = Tails::new(root, &index.db)?;
        Ok(LocalStore {
            _lock: lock,
            root: root.to_owned(),
            index,
            packs: PackReader::new(root.join("packs")),
            config,
            journal,
            tails,
            guard: Guard::default(),
            busy: Arc::default(),
            // Nothing to mark on close: the index is in memory.
            behind: AtomicBool::new(true),
        })
    }

    /// Opens the store at `root`, which must exist already.
    ///
    /// # Errors
    /// [`Error::NoStore`] if there is no store there; otherwise as [`LocalStore::open`].
    pub fn open_existing(root: &Path) -> Result<Self> {
        if !root.join("index").is_dir() && !root.join(JOURNAL_FILE).exists() {
            return Err(Error::NoStore(root.to_owned()));
        }
        Ok(Self::open(root, None)?.0)
    }

    /// Opens the store at `root` for `fsck --repair`. A chunk table that cannot be opened
    /// is moved aside (`chunks.redb.damaged-SECONDS`) and started afresh, to be re-indexed
    /// from the packs (see [`LocalStore::needs_reindex`]); a sled index that cannot be opened,
    /// or is gone, is moved aside likewise and rebuilt from the journal. With `rebuild`, both
    /// are rebuilt whatever their state. Returns notes on what was done, and whether the
    /// rebuilt index may lack files (the journal was damaged): a repair must then drop nothing.
    ///
    /// # Errors
    /// [`Error::Locked`], [`Error::NoStore`], I/O errors, or what still fails after that.
    pub fn open_for_repair(root: &Path, rebuild: bool) -> Result<(Self, Vec<String>, bool)> {
        let journal = root.join(JOURNAL_FILE);
        if !root.join("index").is_dir() && !journal.exists() {
            return Err(Error::NoStore(root.to_owned()));
        }
        if !rebuild {
            match Self::open_existing(root) {
                Ok(s) => return Ok((s, Vec::new(), false)),
                // Not damage: a full disk, a read-only file system, another process. Nothing
                // is moved aside or rebuilt for these.
                Err(e @ (Error::Locked(_) | Error::Environment { .. })) => return Err(e),
                Err(_) => {}
            }
        }
        let mut notes = Vec::new();
        let mut partial = false;
        let lock = lock_store(root)?;
        let secs = crate::unix_now();
        let chunks = root.join("chunks.redb");
        if !chunks.exists() {
            mark_reindex(root)?;
            notes.push("the chunk table is gone; re-indexing the packs".into());
        } else if rebuild || chunk_table_damaged(root, &chunks)? {
            let aside = root.join(format!("chunks.redb.damaged-{secs}"));
            mark_reindex(root)?;
            std::fs::rename(&chunks, &aside).map_err(Error::io("cannot move", &chunks))?;
            notes.push(format!(
                "moved the chunk table to {}; re-indexing the packs",
                aside.display()
            ));
        }
        if !chunks.exists() {
            // A fresh, empty table; the repair indexes the packs into it.
            Index::probe_chunks(&chunks).map_err(environmental(root, "chunk table"))?;
        }
        let index = root.join("index");
        if rebuild || index_damaged(root, &index, &journal)? {
            // Built beside the old index and swapped in only once complete: a rebuild that
            // fails (a full disk) leaves the old index where it was.
            need_space(root, journal_rebuild_bytes(&journal))?;
            let fresh = root.join("index.rebuilding");
            if fresh.exists() {
                std::fs::remove_dir_all(&fresh).map_err(Error::io("cannot remove", &fresh))?;
            }
            let r = match replay_journal(&fresh, &journal) {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&fresh);
                    return Err(environmental(root, "index")(e));
                }
            };
            if index.exists() {
                let aside = root.join(format!("index.damaged-{secs}"));
                std::fs::rename(&index, &aside).map_err(Error::io("cannot move", &index))?;
                notes.push(format!("moved the index to {}", aside.display()));
            }
            std::fs::rename(&fresh, &index).map_err(Error::io("cannot move", &fresh))?;
            sync_dir(root)?;
            if r.damaged > 0 || r.stopped.is_some() {
                partial = true;
                notes.push(
                    "the journal is damaged, so files may be missing from the rebuilt index: \
                     names are kept as they are, and the old index stays beside it; \
                     check `hoard ls` before running gc"
                        .into(),
                );
            }
            notes.push(format!(
                "rebuilt the index from the journal: {} records{}{}",
                r.records,
                if r.damaged > 0 {
                    format!(", {} damaged records skipped", r.damaged)
                } else {
                    String::new()
                },
                r.stopped
                    .map(|s| format!(", stopped at a {s}"))
                    .unwrap_or_default(),
            ));
        }
        let (store, _) = Self::open_locked(root, None, lock, true)?;
        Ok((store, notes, partial))
    }

    /// True if the chunk table was started afresh by [`LocalStore::open_for_repair`] and a
    /// repair has not yet re-indexed the packs.
    pub fn needs_reindex(root: &Path) -> bool {
        root.join(REINDEX_MARKER).exists()
    }

    /// Notes that the packs were re-indexed (clears [`LocalStore::needs_reindex`]).
    ///
    /// # Errors
    /// I/O errors.
    pub fn reindexed(&self) -> Result<()> {
        let marker = self.root.join(REINDEX_MARKER);
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &marker)(e))
            }
            _ => Ok(()),
        }
    }

    /// `r`, noting on error that the index is now behind the journal (see `behind`).
    fn behind_on_error<T, E>(&self, r: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if r.is_err() {
            self.behind.store(true, Ordering::SeqCst);
        }
        r
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// Where chunk `id` is stored, if indexed (for tools and tests that inspect packs).
    ///
    /// # Errors
    /// Index errors.
    pub fn locate(&self, id: &Hash) -> Result<Option<(PathBuf, ChunkLoc)>> {
        Ok(self
            .index
            .loc(id)?
            .map(|loc| (pack_path(&self.packs_dir(), loc.pack), loc)))
    }

    /// A new pack file, marked busy until the returned marker is dropped.
    fn new_pack(&self) -> Result<(PackWriter, Busy)> {
        loop {
            let id = self.index.db.generate_id()?;
            let busy = self.mark_busy(id);
            match PackWriter::create(&self.packs_dir(), id) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    continue;
                }
                other => return other.map(|w| (w, busy)),
            }
        }
    }

    fn mark_busy(&self, pack: u64) -> Busy {
        *crate::lock(&self.busy).entry(pack).or_default() += 1;
        Busy {
            set: self.busy.clone(),
            pack,
        }
    }

    pub(super) fn is_busy(&self, pack: u64) -> bool {
        crate::lock(&self.busy).contains_key(&pack)
    }

    /// Rewrites the journal as a snapshot of the index once it is over twice the size of one
    /// (and over 1 MiB): removals and replaced name records are what make it grow.
    fn compact_journal(&self) -> Result<()> {
        const HEADER: u64 = 48;
        let len = self.journal.len();
        if len < 1 << 20 {
            return Ok(());
        }
        let mut held = self.journal.lock();
        let mut live = 0u64;
        for r in snapshot(&self.index) {
            live += HEADER + r?.1.len() as u64;
        }
        if len > 2 * live {
            self.journal.rewrite(&mut held, snapshot(&self.index))?;
        }
        Ok(())
    }

    /// Copies the live entries of `pack` into new packs, points the index at the copies and
    /// deletes the old file. Returns false, leaving it all in place, if an entry cannot be
    /// read back (fsck's to judge: compaction never drops bytes it could not copy).
    fn rewrite_pack(&self, pack: u64, live: &mut [(Hash, ChunkLoc)]) -> Result<bool> {
        live.sort_unstable_by_key(|(_, loc)| loc.offset);
        let mut created = Vec::new();
        let copied = self.copy_entries(live, &mut created);
        let moves = match copied {
            Ok(Some(moves)) => moves,
            other => {
                // Nothing points at the copies yet: remove them (a full disk leaves no
                // half-written packs behind).
                for path in &created {
                    let _ = std::fs::remove_file(path);
                }
                return other.map(|_| false);
            }
        };
        // Durability order: the copies are synced; now the index points at them; only then
        // does the old file go. A crash in between leaves a pack nothing points at.
        self.index.relocate(&moves)?;
        self.packs.forget(pack);
        let path = pack_path(&self.packs_dir(), pack);
        std::fs::remove_file(&path).map_err(Error::io("cannot delete pack", &path))?;
        Ok(true)
    }

    /// Copies `live` into new packs (their paths pushed on `created`) and syncs them. Returns
    /// the moves to index, or None if an entry cannot be read back (fsck's to judge:
    /// compaction never drops bytes it could not copy).
    #[allow(clippy::type_complexity)]
    fn copy_entries(
        &self,
        live: &[(Hash, ChunkLoc)],
        created: &mut Vec<PathBuf>,
    ) -> Result<Option<Vec<(Hash, ChunkLoc, ChunkLoc)>>> {
        let mut out: Option<(PackWriter, Busy)> = None;
        let mut busy = Vec::new();
        let mut moves = Vec::with_capacity(live.len());
        let mut payload = Vec::new();
        for (id, loc) in live {
            if let Err(e) = self.packs.read_into(id, loc, &mut payload) {
                tracing::warn!(pack = loc.pack, chunk = %id, error = %e, "not compacting a pack with an unreadable entry; run `hoard fsck`");
                return Ok(None);
            }
            if out
                .as_ref()
                .is_some_and(|(w, _)| w.len() >= PACK_TARGET_LEN)
            {
                let (mut w, b) = out.take().expect("checked");
                w.sync()?;
                busy.push(b);
            }
            let (w, _) = match &mut out {
                Some(o) => o,
                None => {
                    let (w, b) = self.new_pack()?;
                    created.push(pack_path(&self.packs_dir(), w.id));
                    out.insert((w, b))
                }
            };
            let codec = Codec::from_tag(loc.codec).ok_or_else(|| Error::Corrupt {
                id: *id,
                detail: format!("unknown codec {}", loc.codec),
            })?;
            let new = w.append(id, codec, loc.raw_len, &payload)?;
            moves.push((*id, *loc, new));
        }
        if let Some((mut w, b)) = out {
            w.sync()?;
            busy.push(b);
        }
        Ok(Some(moves))
    }
}

/// Writes chunks into a pack of its own; indexes them at commit.
struct LocalWriter<'a> {
    store: &'a LocalStore,
    pack: Option<(PackWriter, Busy)>,
    /// Full packs with entries not yet indexed: busy until the next commit is finished.
    retired: Vec<Busy>,
    pending: Vec<(Hash, ChunkLoc)>,
}

impl LocalWriter<'_> {
    fn try_append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        if self
            .pack
            .as_ref()
            .is_some_and(|(p, _)| p.len() >= PACK_TARGET_LEN)
        {
            // The full pack is synced now so the pending entries in it are durable at commit.
            let (mut full, busy) = self.pack.take().expect("checked");
            full.sync()?;
            self.retired.push(busy);
        }
        let (pack, _) = match &mut self.pack {
            Some(p) => p,
            None => self.pack.insert(self.store.new_pack()?),
        };
        let loc = pack.append(id, codec, raw_len, payload)?;
        self.pending.push((*id, loc));
        Ok(())
    }

    fn try_start_commit(&mut self) -> Result<Box<dyn PendingCommit>> {
        let mut busy = std::mem::take(&mut self.retired);
        let file = match (&mut self.pack, self.pending.is_empty()) {
            (Some((pack, _)), false) => {
                // The commit keeps the pack busy too: the writer may be dropped before the
                // entries are indexed.
                busy.push(self.store.mark_busy(pack.id));
                Some(pack.flush_and_share()?)
            }
            _ => None,
        };
        Ok(Box::new(LocalCommit {
            index: self.store.index.clone(),
            guard: self.store.guard.clone(),
            file,
            pending: std::mem::take(&mut self.pending),
            _busy: busy,
        }))
    }

    /// After any failure, nothing appended since the last commit can be trusted to be durable
    /// (a short write also leaves the pack's length unknown): forget it, and start the next
    /// append in a fresh pack. The abandoned bytes are unreferenced garbage for gc.
    fn on_error<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.pending.clear();
            if let Some((pack, _busy)) = self.pack.take() {
                pack.abandon();
            }
            self.retired.clear();
        }
        r
    }
}

impl ChunkWriter for LocalWriter<'_> {
    fn append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        let r = self.try_append(id, codec, raw_len, payload);
        self.on_error(r)
    }

    fn start_commit(&mut self) -> Result<Box<dyn PendingCommit>> {
        let r = self.try_start_commit();
        self.on_error(r)
    }
}

/// Pack bytes to sync, then the index entries that point at them.
struct LocalCommit {
    index: Index,
    guard: Guard,
    file: Option<(std::fs::File, PathBuf)>,
    pending: Vec<(Hash, ChunkLoc)>,
    /// Busy markers of the packs this commit indexes, released when it is done.
    _busy: Vec<Busy>,
}

impl PendingCommit for LocalCommit {
    fn finish(self: Box<Self>) -> Result<()> {
        if let Some((file, path)) = &self.file {
            // Durability order: the bytes first, then the index entries that point at them.
            file.sync_data()
                .map_err(Error::io("cannot sync pack", path))?;
        }
        if !self.pending.is_empty() {
            self.guard
                .note_stored(self.pending.iter().map(|(id, _)| *id));
            self.index.insert_locs(&self.pending)?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter<'_> {
    fn drop(&mut self) {
        // A pack that never received an entry is just noise in the directory.
        if let Some((p, _)) = &self.pack
            && p.is_empty()
        {
            let _ = std::fs::remove_file(pack_path(&self.store.packs_dir(), p.id));
        }
    }
}

impl ChunkStore for LocalStore {
    fn config(&self) -> StoreConfig {
        self.config
    }

    fn guard(&self) -> &Guard {
        &self.guard
    }

    fn lookup(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        self.index.missing(ids)
    }

    fn writer(&self) -> Result<Box<dyn ChunkWriter + '_>> {
        Ok(Box::new(LocalWriter {
            store: self,
            pack: None,
            retired: Vec::new(),
            pending: Vec::new(),
        }))
    }

    fn read_chunk_into(&self, id: &Hash, payload: &mut Vec<u8>) -> Result<(Codec, u32)> {
        let loc = self.index.loc(id)?.ok_or(Error::ChunkNotFound(*id))?;
        match self.packs.read_into(id, &loc, payload) {
            Ok(codec) => Ok((codec, loc.raw_len)),
            Err(e) => {
                // Compaction may have moved the chunk between the lookup and the read: look
                // again, and read once more only if it did.
                match self.index.loc(id)? {
                    Some(now) if now != loc => {
                        let codec = self.packs.read_into(id, &now, payload)?;
                        Ok((codec, now.raw_len))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    fn read_chunk(&self, id: &Hash) -> Result<StoredChunk> {
        let mut payload = Vec::new();
        let (codec, raw_len) = self.read_chunk_into(id, &mut payload)?;
        Ok(StoredChunk {
            id: *id,
            codec,
            raw_len,
            payload,
        })
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&Hash) -> Result<()>) -> Result<()> {
        self.index.for_each_loc(|id, _| f(id))
    }

    fn remove_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        self.index.remove_locs(ids)
    }

    fn compact(&self, min_dead: f64) -> Result<CompactReport> {
        // Order matters: list the files, then note which are busy, then read the index. A
        // pack not busy by then has had all its entries indexed (a commit lets go of a pack
        // only after indexing), so the index read sees them; a pack busy then is skipped
        // even if it is done by the time the loop reaches it.
        let files = self.packs.list()?;
        let busy_before: HashSet<u64> = crate::lock(&self.busy).keys().copied().collect();
        let bytes_before = files.iter().map(|(_, len)| len).sum();
        let mut live: HashMap<u64, u64> = HashMap::new();
        self.index.for_each_loc(|_, loc| {
            *live.entry(loc.pack).or_default() +=
                ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len);
            Ok(())
        })?;
        let mut report = CompactReport {
            bytes_before,
            ..CompactReport::default()
        };
        let mut rewrite = HashSet::new();
        for &(pack, len) in &files {
            if busy_before.contains(&pack) || self.is_busy(pack) {
                continue;
            }
            let used = live.get(&pack).copied().unwrap_or(0);
            if used == 0 {
                self.packs.forget(pack);
                let path = pack_path(&self.packs_dir(), pack);
                std::fs::remove_file(&path).map_err(Error::io("cannot delete pack", &path))?;
                report.packs_deleted += 1;
            } else {
                let dead = len.saturating_sub(PACK_MAGIC.len() as u64 + used);
                if dead as f64 >= min_dead * len as f64 && dead > 0 {
                    rewrite.insert(pack);
                }
            }
        }
        if !rewrite.is_empty() {
            let mut entries: HashMap<u64, Vec<(Hash, ChunkLoc)>> = HashMap::new();
            self.index.for_each_loc(|id, loc| {
                if rewrite.contains(&loc.pack) {
                    entries.entry(loc.pack).or_default().push((*id, loc));
                }
                Ok(())
            })?;
            let mut order: Vec<_> = entries.into_iter().collect();
            order.sort_unstable_by_key(|(p, _)| *p);
            for (pack, mut live) in order {
                if self.rewrite_pack(pack, &mut live)? {
                    report.packs_rewritten += 1;
                }
            }
        }
        if report.packs_deleted + report.packs_rewritten > 0 {
            sync_dir(&self.packs_dir())?;
        }
        report.bytes_after = self.packs.total_bytes()?;
        self.compact_journal()?;
        Ok(report)
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
        // Held throughout: nothing is appended while the two are compared.
        let mut held = self.journal.lock();
        let path = self.root.join(JOURNAL_FILE);
        let mut names: HashMap<String, Vec<u8>> = HashMap::new();
        let mut files: HashSet<Hash> = HashSet::new();
        let mut pages: HashSet<Hash> = HashSet::new();
        let replay = journal::replay_changes(&path, |change| {
            match change {
                Change::Config(_) => {}
                Change::Page { hash, .. } => {
                    pages.insert(hash);
                }
                Change::Manifest { file_id, .. } => {
                    files.insert(file_id);
                }
                Change::Name { name, value } => {
                    names.insert(name.to_owned(), value.to_vec());
                }
                Change::NameRemoved(name) => {
                    names.remove(name);
                }
                Change::ManifestRemoved(id) => {
                    files.remove(&id);
                }
                Change::PagesRemoved(hashes) => {
                    for h in hashes {
                        pages.remove(&h);
                    }
                }
            }
            Ok(())
        })?;
        let mut out = JournalCheck {
            records: replay.records,
            damaged: replay.damaged,
            stopped: replay.stopped,
            ..JournalCheck::default()
        };
        for kv in self.index.names.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match names.remove(&name) {
                Some(j) if j == *v => {}
                Some(j) => {
                    out.names_differ += 1;
                    // The journal is ahead if it records a version the index lacks.
                    let held = Index::decode_name(&v)
                        .map(|r| r.versions)
                        .unwrap_or_default();
                    let recorded = Index::decode_name(&j)
                        .map(|r| r.versions)
                        .unwrap_or_default();
                    if recorded.iter().any(|r| !held.contains(r)) {
                        out.index_lacks_names += 1;
                    }
                }
                None => out.names_differ += 1,
            }
        }
        out.names_differ += names.len() as u64;
        out.index_lacks_names += names.len() as u64;
        // Counts keys of `tree` the journal lacks and takes them out of `set`, which is left
        // with what the index lacks.
        let differ = |tree: &sled::Tree, set: &mut HashSet<Hash>| -> Result<u64> {
            let mut n = 0;
            for k in tree.iter().keys() {
                let k = k?;
                if !Hash::from_slice(&k).is_some_and(|h| set.remove(&h)) {
                    n += 1;
                }
            }
            Ok(n)
        };
        out.files_differ = differ(&self.index.files, &mut files)? + files.len() as u64;
        out.index_lacks_files = files.len() as u64;
        out.pages_differ = differ(&self.index.pages, &mut pages)? + pages.len() as u64;
        if repair && out.index_lacks_files + out.index_lacks_names > 0 {
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
            self.journal.rewrite(&mut held, snapshot(&self.index))?;
            out.rewritten = Some(old);
        }
        Ok(Some(out))
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
        let mut j = self.journal.lock();
        // One record per 100 000 pages keeps each under the journal's record limit.
        for part in hashes.chunks(100_000) {
            let payload: Vec<u8> = part.iter().flat_map(|h| *h.as_bytes()).collect();
            j.append(Kind::PagesRemoved, &payload)?;
        }
        j.sync()?;
        self.behind_on_error(self.index.pages.apply_batch(b))?;
        drop(j);
        self.index.db.flush()?;
        Ok(())
    }

    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        // Synced with the manifest that lists it (pages are stored before their manifest).
        let mut j = self.journal.lock();
        j.append(Kind::Page, bytes)?;
        self.behind_on_error(self.index.pages.insert(hash.as_bytes(), bytes))?;
        Ok(())
    }

    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self.index.pages.get(hash.as_bytes())?.map(|v| v.to_vec()))
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        let bytes = manifest.encode();
        let mut j = self.journal.lock();
        j.append(Kind::Manifest, &bytes)?;
        j.sync()?;
        self.behind_on_error(self.index.files.insert(manifest.file_id.as_bytes(), bytes))?;
        drop(j);
        self.index.db.flush()?;
        Ok(())
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

    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord> {
        // Every name change holds the journal, so a read-modify-write needs no other lock.
        let mut j = self.journal.lock();
        let mut rec = match self.index.names.get(name)? {
            Some(v) => Index::decode_name(&v)?,
            None => NameRecord::default(),
        };
        rec.versions.push(version);
        let value = Index::encode_name(&rec);
        j.append(Kind::Name, &journal::name_payload(name, &value))?;
        j.sync()?;
        self.behind_on_error(self.index.names.insert(name, value))?;
        drop(j);
        self.index.db.flush()?;
        Ok(rec)
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

    fn chunk_totals(&self) -> Result<ChunkTotals> {
        let mut t = ChunkTotals::default();
        self.index.for_each_loc(|_, loc| {
            t.chunks += 1;
            t.raw_bytes += u64::from(loc.raw_len);
            t.encoded_bytes += u64::from(loc.stored_len);
            Ok(())
        })?;
        Ok(t)
    }

    fn chunk_data_bytes(&self) -> Result<u64> {
        self.packs.total_bytes()
    }

    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>> {
        let mut j = self.journal.lock();
        j.append(Kind::NameRemoved, name.as_bytes())?;
        j.sync()?;
        let old = self.behind_on_error(self.index.names.remove(name))?;
        drop(j);
        self.index.db.flush()?;
        old.map(|v| Index::decode_name(&v)).transpose()
    }

    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()> {
        let value = Index::encode_name(record);
        let mut j = self.journal.lock();
        j.append(Kind::Name, &journal::name_payload(name, &value))?;
        j.sync()?;
        self.behind_on_error(self.index.names.insert(name, value))?;
        drop(j);
        self.index.db.flush()?;
        Ok(())
    }

    fn remove_manifest(&self, file_id: &Hash) -> Result<bool> {
        let mut j = self.journal.lock();
        j.append(Kind::ManifestRemoved, file_id.as_bytes())?;
        j.sync()?;
        let old = self.behind_on_error(self.index.files.remove(file_id.as_bytes()))?;
        drop(j);
        self.index.db.flush()?;
        Ok(old.is_some())
    }

    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()> {
        // An upload record may list pages whose journal records are not synced yet (they
        // are synced with a manifest, which an unfinished upload does not have yet).
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
}

/// Takes the store's advisory lock (held while the returned file is open).
fn lock_store(root: &Path) -> Result<std::fs::File> {
    let lock_path = root.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(Error::io("cannot open lock file", &lock_path))?;
    // A lock just released can look held for a moment: a child process forked elsewhere in
    // this process holds a copy of every descriptor until it execs. Try for up to 2 s.
    let mut tries = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(root.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock", &lock_path)(e));
            }
        }
    }
}

/// Turns an error whose cause is the machine (a full disk, a read-only file system,
/// permissions: see [`Error::environment`]) into an [`Error::Environment`] of the store's
/// `what`; any other error passes unchanged.
fn environmental<'a>(root: &'a Path, what: &'static str) -> impl FnOnce(Error) -> Error + 'a {
    move |e| match e.environment() {
        Some(hint) => Error::Environment {
            root: root.to_owned(),
            what,
            hint,
            source: Box::new(e),
        },
        None => e,
    }
}

/// `Ok(true)` for an error that shows damage; the error itself if the machine is the cause.
fn damage_or_environment(root: &Path, what: &'static str, e: Error) -> Result<bool> {
    match environmental(root, what)(e) {
        e @ Error::Environment { .. } => Err(e),
        _ => Ok(true),
    }
}

/// Notes that the chunk table must be re-indexed from the packs before the store is used.
fn mark_reindex(root: &Path) -> Result<()> {
    let marker = root.join(REINDEX_MARKER);
    std::fs::write(&marker, b"").map_err(Error::io("cannot write", &marker))?;
    sync_dir(root)
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync directory", dir))
}

/// True if the chunk table is shown damaged: it does not open for a reason other than the
/// machine's (which is returned as the error instead).
fn chunk_table_damaged(root: &Path, chunks: &Path) -> Result<bool> {
    match Index::probe_chunks(chunks) {
        Ok(()) => Ok(false),
        Err(e) => damage_or_environment(root, "chunk table", e),
    }
}

/// True if the sled index is shown damaged: gone, not opening for a reason other than the
/// machine's, or empty beside a journal that has records.
fn index_damaged(root: &Path, index: &Path, journal: &Path) -> Result<bool> {
    if !index.is_dir() {
        return Ok(true);
    }
    match open_sled(index, 1 << 20) {
        Ok(db) => {
            let empty = db.open_tree("meta")?.get("config")?.is_none();
            Ok(empty && journal::has_records(journal))
        }
        Err(e) => damage_or_environment(root, "index", e),
    }
}

/// About what rebuilding the index from `journal` writes: sled keeps roughly twice the
/// records' bytes while it settles, plus its own files.
fn journal_rebuild_bytes(journal: &Path) -> u64 {
    let len = std::fs::metadata(journal).map(|m| m.len()).unwrap_or(0);
    2 * len + (4 << 20)
}

/// Refuses, before anything is changed, a step that needs `bytes` the disk of `root` does not
/// have.
fn need_space(root: &Path, bytes: u64) -> Result<()> {
    let Ok(st) = rustix::fs::statvfs(root) else {
        return Ok(()); // no figure to go by: the step itself reports a full disk
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < bytes {
        let short = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("the rebuild needs about {bytes} bytes, {free} are free"),
        );
        return Err(environmental(root, "index")(Error::io(
            "not enough space in",
            root,
        )(short)));
    }
    Ok(())
}

/// Builds a fresh sled index at `path` from the journal at `journal_path`.
fn replay_journal(path: &Path, journal_path: &Path) -> Result<journal::ReplayReport> {
    let db = open_sled(path, 8 << 20)?;
    let (report, config) = apply_journal(&db, journal_path)?;
    if !config {
        return Err(Error::InvalidParams(format!(
            "the journal {} holds no store config: the index cannot be rebuilt from it",
            journal_path.display()
        )));
    }
    db.flush()?;
    Ok(report)
}

/// Applies every record of the journal at `journal_path` to `db`, in order; returns the
/// replay's report and whether a store config was among the records. Every record sets or
/// removes one key, so applying a journal to an index that already holds some of it leaves
/// exactly what the journal says for every key the journal names.
fn apply_journal(db: &sled::Db, journal_path: &Path) -> Result<(journal::ReplayReport, bool)> {
    let meta = db.open_tree("meta")?;
    let pages = db.open_tree("pages")?;
    let files = db.open_tree("files")?;
    let names = db.open_tree("names")?;
    let mut config = false;
    let report = journal::replay_changes(journal_path, |change| {
        match change {
            Change::Config(c) => {
                meta.insert("format", &[crate::store::index::STORE_FORMAT])?;
                meta.insert("config", c)?;
                config = true;
            }
            Change::Page { hash, bytes } => {
                pages.insert(hash.as_bytes(), bytes)?;
            }
            Change::Manifest { file_id, bytes } => {
                files.insert(file_id.as_bytes(), bytes)?;
            }
            Change::Name { name, value } => {
                names.insert(name, value)?;
            }
            Change::NameRemoved(name) => {
                names.remove(name)?;
            }
            Change::ManifestRemoved(id) => {
                files.remove(id.as_bytes())?;
            }
            Change::PagesRemoved(hashes) => {
                for h in hashes {
                    pages.remove(h.as_bytes())?;
                }
            }
        }
        Ok(())
    })?;
    Ok((report, config))
}

/// Journal records that rebuild what `index` holds: config, pages, manifests, names (read
/// lazily: a large store's pages are never all in memory).
fn snapshot(index: &Index) -> impl Iterator<Item = Result<(Kind, Vec<u8>)>> + use<> {
    let config = index
        .meta
        .get("config")
        .map_err(Error::from)
        .transpose()
        .map(|c| c.map(|c| (Kind::Config, c.to_vec())));
    let pages = index
        .pages
        .iter()
        .values()
        .map(|v| Ok((Kind::Page, v?.to_vec())));
    let files = index
        .files
        .iter()
        .values()
        .map(|v| Ok((Kind::Manifest, v?.to_vec())));
    let names = index.names.iter().map(|kv| {
        let (k, v) = kv?;
        let name = String::from_utf8_lossy(&k);
        Ok((Kind::Name, journal::name_payload(&name, &v)))
    });
    config.into_iter().chain(pages).chain(files).chain(names)
}
