//! The store in a local directory: a [`PackedStore`] of [`LocalPacks`] (pack files) and a
//! [`LocalCatalog`] (redb chunk table, sled for the rest, the metadata journal, tus tails).
//! This file opens one: creating, locking, redo after an unclean close, read-only, and the
//! repair open that rebuilds a damaged index.
//!
//! ```text
//! STORE/index/       sled database: manifests, pages, names, uploads, meta (see index.rs)
//! STORE/chunks.redb  the chunk table: id -> pack location (see index.rs)
//! STORE/journal.log  every metadata change, the index's write-ahead log (see journal.rs)
//! STORE/packs/       {n:016x}.pack, append-only chunk entries (see packs.rs, ../pack.rs)
//! STORE/tails/       tus tails (see tails.rs)
//! STORE/lock         held with an exclusive advisory lock while a process has the store open
//! ```

mod catalog;
mod fs;
mod index;
pub mod journal;
mod packs;
mod replay;
mod tails;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::catalog::Catalog;
use crate::store::local::catalog::{JOURNAL_FILE, OPEN_MARK};
use crate::store::pack::{ChunkLoc, pack_path};
use crate::store::packed::PackedStore;

use fs::{environmental, sync_dir};
use index::{Index, open_sled};
use journal::Journal;
use tails::Tails;

pub use catalog::LocalCatalog;
pub use packs::{LocalPacks, LocalSink, QUARANTINE_DIR};

/// Present while a chunk table started afresh waits to be rebuilt from the packs.
const REINDEX_MARKER: &str = "reindex-needed";

/// A store in a local directory.
pub type LocalStore = PackedStore<LocalPacks, LocalCatalog>;

/// Makes the store of `catalog`, with the packs under its directory.
fn compose(catalog: LocalCatalog) -> LocalStore {
    let root = catalog.root().to_owned();
    let ids = catalog.index.db.clone();
    let packs = LocalPacks::new(
        root.join("packs"),
        root.join(QUARANTINE_DIR),
        Box::new(move || Ok(ids.generate_id()?)),
    );
    PackedStore::new(packs, catalog)
}

impl PackedStore<LocalPacks, LocalCatalog> {
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
            journal.rewrite(&mut held, replay::snapshot(&index))?;
        }
        // The journal is the index's write-ahead log. A store that was not closed cleanly
        // (kill -9, power loss, or an index change that failed after its journal record)
        // may lack what its last journal records say: apply the journal again (redo).
        if !created && index.meta.get(OPEN_MARK)?.is_some() {
            let (r, _) = replay::apply(&index.db, &root.join(JOURNAL_FILE))
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
        let catalog = LocalCatalog {
            _lock: lock,
            root: root.to_owned(),
            index,
            config,
            journal,
            tails,
            behind: AtomicBool::new(false),
            features: std::sync::Mutex::default(),
        };
        Ok((compose(catalog), created))
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
            replay::apply(db, &journal_path).map(|_| ())
        })?;
        let config = index.config()?.ok_or_else(|| Error::IndexDamaged {
            root: root.to_owned(),
            what: "journal",
            detail: "it records no store config".into(),
        })?;
        let journal = Journal::open_read_only(&journal_path, why)?;
        let tails = Tails::new(root, &index.db)?;
        Ok(compose(LocalCatalog {
            _lock: lock,
            root: root.to_owned(),
            index,
            config,
            journal,
            tails,
            // Nothing to mark on close: the index is in memory.
            behind: AtomicBool::new(true),
            features: std::sync::Mutex::default(),
        }))
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
            let r = match replay::rebuild(&fresh, &journal) {
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
    pub fn reindexed(root: &Path) -> Result<()> {
        let marker = root.join(REINDEX_MARKER);
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &marker)(e))
            }
            _ => Ok(()),
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        self.catalog().root()
    }

    /// Where chunk `id` is stored, if indexed (for tools and tests that inspect packs).
    ///
    /// # Errors
    /// Index errors.
    pub fn locate(&self, id: &Hash) -> Result<Option<(PathBuf, ChunkLoc)>> {
        Ok(self
            .catalog()
            .loc(id)?
            .map(|loc| (pack_path(self.packs().dir(), loc.pack), loc)))
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
