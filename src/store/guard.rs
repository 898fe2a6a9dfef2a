//! What keeps gc from removing a chunk that someone is counting on: the gc lock, pins and
//! the grace filter. Every store owns one [`Guard`]; `gc.rs` holds the argument for why this
//! is enough, and is the only place that takes the lock for writing.
//!
//! - **The lock.** Looking chunks up and recording that the caller now counts on them (a pin,
//!   or a note in the grace filter) happen under one read lock; gc's final check-and-delete
//!   happens under the write lock. So a lookup either sees a chunk gc then spares, or runs
//!   after gc removed it and reports it missing (the caller stores it again).
//! - **Pins.** An import in progress, or an upload session being opened, holds a [`Pin`] on
//!   every chunk and manifest page it will reference, until its manifest (or session record)
//!   is stored. Sealed pages replace the ids they list, so a pin stays small (one hash per
//!   1024 chunks, plus the ids of the page being filled) whatever the file size.
//! - **The grace filter.** A chunk that a plain `missing` query reported present, or that an
//!   upload just stored, is noted in a Bloom filter; gc spares noted chunks for at least the
//!   grace period. A false positive only keeps garbage a little longer. Two filters rotate
//!   (the older one is dropped once the newer is a grace period old), so memory is fixed.
//! - **Shared stores.** A store that several processes open at once (its catalog in a
//!   database) has a [`Shared`] part too, and the lock and the filter, which only one process
//!   sees, no longer carry the argument: pins are rows under this process's lease, which
//!   lapses when the process dies; gc marks its candidates *condemned* before it reads the
//!   pins, spares the ones condemned less than a grace period ago, and deletes only rows still
//!   condemned; a lookup *revives* (un-condemns) what it asks about before it reads. A pin is
//!   written before the lookup or page write it protects. `gc.rs` has the argument.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::hash::Hash;

/// Bits per grace filter = 2^24 (2 MiB): at 2 million noted ids, about 2% false positives.
const FILTER_BITS: usize = 1 << 24;

/// The gc lock, the pins and the grace filter of one store (a cheap `Clone`).
#[derive(Clone, Default)]
pub struct Guard(Arc<Inner>, Option<Arc<dyn Shared>>);

/// What a pin holds, as the shared part records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinKind {
    /// A chunk id.
    Chunk,
    /// A manifest page hash (its chunks are pinned too).
    Page,
    /// A pack being written or committed: compaction leaves it alone.
    Pack,
}

impl PinKind {
    /// The code stored for this kind (pins and condemned rows).
    pub fn code(self) -> i16 {
        match self {
            PinKind::Chunk => 0,
            PinKind::Page => 1,
            PinKind::Pack => 2,
        }
    }
}

/// The part of the guard that every process opening the store sees (see the module notes).
/// A store whose catalog is a database implements it there; a store only one process opens
/// has none.
pub trait Shared: Send + Sync {
    /// Records that pin `pin` of this process holds `ids` (of `kind`). Fails if the lease the
    /// pin was first recorded under has lapsed: what it held may be gone.
    ///
    /// # Errors
    /// Catalog errors.
    fn pin(&self, pin: u64, kind: PinKind, ids: &[&[u8]]) -> Result<()>;

    /// Lets go of `ids` of pin `pin`, or (with `None`) of everything it holds; nothing to do
    /// (and no request) for a pin it holds no record of. Best effort: a record left behind
    /// only keeps garbage until this process ends.
    fn unpin(&self, pin: u64, ids: Option<&[&[u8]]>);

    /// Everything pinned by every process whose lease is alive.
    ///
    /// # Errors
    /// Catalog errors.
    fn pinned(&self) -> Result<PinnedSnapshot>;

    /// One gc or fsck at a time across every process: held until the returned value drops.
    /// With `wait`, waits for another holder; without, `None` while another process holds it.
    ///
    /// # Errors
    /// Catalog errors.
    fn exclusive(&self, wait: bool) -> Result<Option<Box<dyn Send>>>;

    /// How long ago (by the catalog's clock) a gc last finished in any process; `None` if
    /// none is recorded.
    ///
    /// # Errors
    /// Catalog errors.
    fn gc_finished_ago(&self) -> Result<Option<Duration>>;

    /// Records that a gc finished now (by the catalog's clock).
    ///
    /// # Errors
    /// Catalog errors.
    fn gc_finished(&self) -> Result<()>;

    /// Marks `ids` (chunks or pages, gc's candidates) condemned, and clears the marks of those
    /// of `kind` that are no longer candidates. Returns the ids condemned less than `grace`
    /// ago (by the catalog's clock): gc spares them.
    ///
    /// # Errors
    /// Catalog errors.
    fn condemn(&self, kind: PinKind, ids: &[Hash], grace: Duration) -> Result<HashSet<Hash>>;

    /// Forgets the chunks of `ids` that are still condemned (a lookup since revived the
    /// others), in one step against lookups. Returns how many went and their stored bytes.
    ///
    /// # Errors
    /// Catalog errors.
    fn sweep_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)>;

    /// Forgets the manifest pages of `hashes` that are still condemned. Returns how many went.
    ///
    /// # Errors
    /// Catalog errors.
    fn sweep_pages(&self, hashes: &[Hash]) -> Result<u64>;
}

/// Held by gc and fsck for their whole run (see [`Guard::maintenance`]).
pub struct Maintenance<'a> {
    _here: std::sync::MutexGuard<'a, ()>,
    _everywhere: Option<Box<dyn Send>>,
}

#[derive(Default)]
struct Inner {
    lock: RwLock<()>,
    pins: Mutex<HashMap<u64, Arc<Mutex<Pinned>>>>,
    next_pin: AtomicU64,
    recent: Mutex<Recent>,
    /// One gc (or fsck) at a time.
    maintenance: Mutex<()>,
    /// One change to names at a time (each reads, checks and writes).
    naming: Mutex<()>,
}

/// What one pin holds.
#[derive(Default)]
struct Pinned {
    pages: Vec<Hash>,
    ids: VecDeque<Hash>,
}

/// Everything pinned, as gc sees it under the write lock.
#[derive(Default)]
pub struct PinnedSnapshot {
    /// Manifest pages: their chunks are pinned too.
    pub pages: Vec<Hash>,
    /// Chunk ids.
    pub ids: Vec<Hash>,
    /// Packs being written (a shared store's; in one process the store knows its own).
    pub packs: Vec<u64>,
}

impl Guard {
    /// The guard of a store that other processes open too.
    pub fn shared(shared: Arc<dyn Shared>) -> Guard {
        Guard(Arc::default(), Some(shared))
    }

    /// The part other processes see, for a store that has one.
    pub fn shared_part(&self) -> Option<&dyn Shared> {
        self.1.as_deref()
    }

    /// Held while looking chunks up and pinning or noting them.
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.0.lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by gc while it decides what to delete and deletes it. Only `gc.rs` calls this.
    pub fn write(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.lock.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by gc and fsck for their whole run: they do not overlap (in a shared store, in
    /// any process).
    ///
    /// # Errors
    /// Catalog errors, taking the shared part's lock.
    pub fn maintenance(&self) -> Result<Maintenance<'_>> {
        let here = crate::lock(&self.0.maintenance);
        let everywhere = match &self.1 {
            Some(s) => s.exclusive(true)?,
            None => None,
        };
        Ok(Maintenance {
            _here: here,
            _everywhere: everywhere,
        })
    }

    /// As [`Guard::maintenance`], without waiting: `None` while a gc or fsck runs (here or in
    /// another process).
    ///
    /// # Errors
    /// Catalog errors, taking the shared part's lock.
    pub fn try_maintenance(&self) -> Result<Option<Maintenance<'_>>> {
        let here = match self.0.maintenance.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        let everywhere = match &self.1 {
            Some(s) => match s.exclusive(false)? {
                Some(held) => Some(held),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(Maintenance {
            _here: here,
            _everywhere: everywhere,
        }))
    }

    /// Held while names change (`names::record`, `names::remove`, fsck's name repair): a name
    /// is only pointed at a file that is stored, and no change overwrites another.
    pub fn naming(&self) -> std::sync::MutexGuard<'_, ()> {
        crate::lock(&self.0.naming)
    }

    /// A new, empty pin; it lets go when dropped.
    pub fn pin(&self) -> Pin {
        let key = self.0.next_pin.fetch_add(1, Ordering::Relaxed);
        let set = Arc::new(Mutex::new(Pinned::default()));
        crate::lock(&self.0.pins).insert(key, set.clone());
        Pin {
            guard: self.clone(),
            key,
            set,
        }
    }

    /// Everything pinned right now (gc calls this under the write lock): in a shared store,
    /// by every live process.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn pinned(&self) -> Result<PinnedSnapshot> {
        if let Some(s) = &self.1 {
            return s.pinned();
        }
        let mut out = PinnedSnapshot::default();
        for set in crate::lock(&self.0.pins).values() {
            let p = crate::lock(set);
            out.pages.extend_from_slice(&p.pages);
            out.ids.extend(p.ids.iter().copied());
        }
        Ok(out)
    }

    /// Notes the ids whose flag in `missing` is false (reported present): gc spares them for
    /// the grace period. Call under [`Guard::read`].
    pub fn note_present(&self, ids: &[Hash], missing: &[bool]) {
        let mut r = crate::lock(&self.0.recent);
        for (id, m) in ids.iter().zip(missing) {
            if !m {
                r.note(id);
            }
        }
    }

    /// Notes ids just stored: gc spares them for the grace period.
    pub fn note_stored(&self, ids: impl IntoIterator<Item = Hash>) {
        let mut r = crate::lock(&self.0.recent);
        for id in ids {
            r.note(&id);
        }
    }

    /// True if `id` may have been noted within the grace period (gc calls this under the
    /// write lock, after [`Guard::rotate`]).
    pub fn recently_noted(&self, id: &Hash) -> bool {
        crate::lock(&self.0.recent).contains(id)
    }

    /// Drops the notes older than `grace` (whole filters: a note is kept between one and two
    /// grace periods).
    pub fn rotate(&self, grace: Duration) {
        crate::lock(&self.0.recent).rotate(grace);
    }
}

/// Keeps chunks and pages from gc until dropped (see the module notes).
pub struct Pin {
    guard: Guard,
    key: u64,
    set: Arc<Mutex<Pinned>>,
}

impl Pin {
    fn with<T>(&self, f: impl FnOnce(&mut Pinned) -> T) -> T {
        f(&mut crate::lock(&self.set))
    }

    /// Records `ids` in the shared part, if the store has one (before the local note: the
    /// record is what other processes go by).
    fn record(&self, kind: PinKind, ids: &[&[u8]]) -> Result<()> {
        if let Some(s) = &self.guard.1 {
            s.pin(self.key, kind, ids)?;
        }
        Ok(())
    }

    /// Pins chunk ids, in file order. Call before (or, under [`Guard::read`], together
    /// with) the lookup that decides whether the caller may count on them
    /// (`ChunkStore::missing_pinned` does both).
    ///
    /// # Errors
    /// The shared part's errors (the ids are then not pinned).
    pub fn add(&self, ids: &[Hash]) -> Result<()> {
        self.record(
            PinKind::Chunk,
            &ids.iter().map(|h| &h.as_bytes()[..]).collect::<Vec<_>>(),
        )?;
        self.with(|p| p.ids.extend(ids.iter().copied()));
        Ok(())
    }

    /// Pins a manifest page (and so the chunks it lists): call before storing it.
    ///
    /// # Errors
    /// The shared part's errors.
    pub fn add_page(&self, page: Hash) -> Result<()> {
        self.record(PinKind::Page, &[&page.as_bytes()[..]])?;
        self.with(|p| p.pages.push(page));
        Ok(())
    }

    /// Pins a pack being written (only a shared store records it: in one process the store
    /// knows its own busy packs).
    ///
    /// # Errors
    /// The shared part's errors.
    pub fn add_pack(&self, pack: u64) -> Result<()> {
        self.record(PinKind::Pack, &[&pack.to_be_bytes()[..]])
    }

    /// The first `n` pinned ids are listed by pages this pin holds: lets them go, so a long
    /// import's pin holds only the refs of its unfinished page. Only for a pin whose ids were
    /// added in file order from the file's first chunk on.
    pub fn release_paged(&self, n: usize) {
        let gone: Vec<Hash> = self.with(|p| {
            let n = n.min(p.ids.len());
            p.ids.drain(..n).collect()
        });
        if let Some(s) = &self.guard.1
            && !gone.is_empty()
        {
            s.unpin(
                self.key,
                Some(&gone.iter().map(|h| &h.as_bytes()[..]).collect::<Vec<_>>()),
            );
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        crate::lock(&self.guard.0.pins).remove(&self.key);
        // A pin the shared part holds no record of costs it nothing to let go.
        if let Some(s) = &self.guard.1 {
            s.unpin(self.key, None);
        }
    }
}

/// Two Bloom filters over chunk ids, the newer one taking notes.
struct Recent {
    current: Vec<u64>,
    previous: Vec<u64>,
    since: Instant,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            current: Vec::new(),
            previous: Vec::new(),
            since: Instant::now(),
        }
    }
}

/// The filter's bit positions for `id`. Ids are BLAKE3 outputs, uniformly distributed, so
/// four 64-bit words of the id serve directly as the filter's four hash functions.
fn bits(id: &Hash) -> impl Iterator<Item = usize> + '_ {
    id.as_bytes().chunks_exact(8).map(|w| {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        (v as usize) & (FILTER_BITS - 1)
    })
}

impl Recent {
    fn note(&mut self, id: &Hash) {
        if self.current.is_empty() {
            // Allocated on first use (zeroed pages cost nothing until written).
            self.current = vec![0; FILTER_BITS / 64];
        }
        for b in bits(id) {
            self.current[b / 64] |= 1 << (b % 64);
        }
    }

    fn contains(&self, id: &Hash) -> bool {
        let has = |f: &[u64]| !f.is_empty() && bits(id).all(|b| f[b / 64] & (1 << (b % 64)) != 0);
        has(&self.current) || has(&self.previous)
    }

    fn rotate(&mut self, grace: Duration) {
        if self.since.elapsed() >= grace {
            self.previous = std::mem::take(&mut self.current);
            self.since = Instant::now();
            if grace.is_zero() {
                self.previous.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_shrink_to_pages_and_go_when_dropped() {
        let g = Guard::default();
        let ids: Vec<Hash> = (0u32..5).map(|i| Hash::of(&i.to_le_bytes())).collect();
        let pin = g.pin();
        pin.add(&ids).unwrap();
        pin.add_page(Hash::of(b"page")).unwrap();
        pin.release_paged(3);
        let snap = g.pinned().unwrap();
        assert_eq!(snap.pages, vec![Hash::of(b"page")]);
        assert_eq!(snap.ids, ids[3..]);
        drop(pin);
        let snap = g.pinned().unwrap();
        assert!(snap.pages.is_empty() && snap.ids.is_empty());
    }

    #[test]
    fn grace_filter_keeps_notes_for_a_grace_period() {
        let g = Guard::default();
        let a = Hash::of(b"a");
        let b = Hash::of(b"b");
        assert!(!g.recently_noted(&a));
        g.note_present(&[a, b], &[false, true]);
        assert!(g.recently_noted(&a));
        assert!(!g.recently_noted(&b));
        g.rotate(Duration::from_secs(3600)); // too young to drop
        assert!(g.recently_noted(&a));
        g.rotate(Duration::ZERO); // now it is moved to the older filter, and with no grace dropped
        assert!(!g.recently_noted(&a));
    }
}
