//! Garbage collection: forget the chunks and manifest pages nothing refers to, then compact
//! the packs whose dead share passed a threshold.
//!
//! ## Why gc never removes a chunk from under someone (the argument)
//!
//! A chunk or page is *referenced* if a stored manifest lists it, an open upload session's
//! manifest lists it, an unfinished tus upload's record lists it, or a [`Pin`](crate::store::Pin) holds it (an import in progress, or a
//! session being opened). Someone *counts on* a chunk from the moment a lookup told them it is
//! present until their manifest or session record is stored.
//!
//! 1. **Mark** (no lock): `S` = the chunks stored now; `L` = everything referenced by open
//!    sessions, then by stored manifests. Candidates `C = S − L`.
//! 2. **Sweep** (under the guard's write lock): add to `L` what appeared since step 1: pins,
//!    open sessions, and manifests stored since; drop from `C` every chunk the grace filter
//!    noted (a `missing` answer said present, or an upload stored it, within the grace
//!    period). Delete what is left.
//!
//! Every path that comes to count on a chunk does its lookup *and* records that it counts
//! on it (a pin, or a grace note) under the read lock (`ChunkStore::missing_pinned`,
//! `ChunkStore::missing`). So that record is either made before the sweep, and the sweep sees
//! it and spares the chunk, or after, when the chunk is already gone and the lookup reports
//! it missing (the caller stores it again). A pin is dropped only after its manifest is
//! stored, and a session ends only after its manifest is; the sweep reads pins and sessions
//! before manifests, so a reference moving from one to the other is seen in at least one of
//! them. What gc deletes was unreferenced at mark time and stayed so: nothing adds a
//! reference to a chunk without one of those records.
//!
//! The grace period is for clients outside that protocol: a chunk a plain
//! `POST /v1/chunks/missing` reported present, or one uploaded before its session was opened,
//! stays at least that long. Within one process only: `hoard gc` from the CLI holds the store
//! alone, so no client can be between a lookup and a commit; open sessions are kept whatever
//! their age until they expire. (A shared store's CLI gc is one process among others: the
//! rules below hold for it too.)
//!
//! ## Many processes
//!
//! A store that several processes open (its catalog in PostgreSQL) cannot use one process's
//! lock and filter: another process's lookup does not take this process's read lock. Its
//! guard has a shared part (`guard.rs`, `store/pg/lease.rs`), and three rules replace the
//! lock:
//!
//! - **A pin is recorded before the lookup (or page write) it protects**, as a row under the
//!   process's lease. A lease is a PostgreSQL session lock, so it lapses the moment its
//!   process dies or its connection drops; gc reads only live leases' pins.
//! - **gc condemns before it reads the pins.** The sweep first marks every candidate condemned
//!   (stamped with the database's clock), then reads pins, sessions and manifests, and deletes
//!   only rows still condemned, in one statement that also removes their marks.
//! - **Every lookup revives before it reads**: it deletes the condemned marks of the ids it
//!   asks about, then (in a later statement, so a fresh snapshot) reads the chunk table.
//!   Storing a page revives the page the same way.
//!
//! Take a lookup whose caller counts on chunk `x` (pinned). If its pin row was written before
//! the sweep read the pins, the sweep spares `x`. If after, the lookup's revive came after
//! the condemning: either it removed the mark before the sweep's delete (which then skips `x`),
//! or it waited on the delete's row lock and the chunk read that follows sees `x` gone and
//! reports it missing (the caller stores it again). A plain `missing` answer (no pin) gets the
//! grace period instead of the filter: a chunk condemned less than `grace` ago is spared, and
//! a chunk is condemned only after every answer that said present (or revived it then).
//!
//! ## Many servers
//!
//! Servers behind a load balancer are such processes, and nothing above depends on which of
//! them a client's requests land on: a pin is a row under the lease of the server that
//! answered, a session's or tus upload's record is in the database (every change to it holds
//! it there first, `Catalog::lock_upload`), and the grace counts by the database's clock. One
//! gc at a time: `Guard::maintenance` takes an advisory lock on a connection of its own, so a
//! gc whose server dies lets go with its connection and the next gc starts over from the
//! mark (it deleted only rows still condemned, each statement whole). A periodic gc
//! ([`gc_periodic`]) does not queue behind another: it skips while one runs, and when one
//! finished within its interval (recorded in the database at the end of every gc), so servers
//! that all run gc every hour run about one an hour between them. A gc also checks, with its
//! lock held, that the schema is still this binary's: a server left running after another
//! version migrated the database would not know what the new schema keeps alive.
//!
//! ## Delta chunks
//!
//! A chunk stored as a delta (`delta.rs`) needs its base to be read. Its base is kept while
//! any recorded delta names it, whatever the manifests say: the sweep frees no chunk that
//! [`ChunkStore::bases_in_use`] reports, and asks again, after the first round, about the
//! bases it kept (their last deltas may have gone in that round). A writer that makes a new
//! delta pins its base and looks it up first (`missing_pinned`), as for any chunk it counts
//! on, and holds the pin until the delta is recorded; from then on the record keeps the
//! base. In a shared store the sweep's statement itself skips every chunk a delta names,
//! so a delta revived by another process's lookup after the sweep chose its victims still
//! has its base.
//!
//! ## Compaction
//! Afterwards packs with no live entry are deleted and packs whose dead share is at least
//! `min_dead` are rewritten: live entries are copied into a new pack, synced, the index is
//! pointed at the copies (each only if it still points at the old entry), then the old file
//! goes. A crash at any point leaves a pack nothing points at, which the next gc deletes.
//! Packs a writer may still append to are left alone.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{Manifest, Page};
use crate::store::{ChunkStore, PinKind};
use crate::upload;

/// How gc runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Chunks noted as present or stored within this long are kept.
    pub grace: Duration,
    /// Rewrite a pack once this share of its bytes (0.0..=1.0) is dead.
    pub min_dead: f64,
}

/// Default share of dead bytes that makes compaction rewrite a pack = 20%.
pub const DEFAULT_MIN_DEAD: f64 = 0.2;

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::ZERO,
            min_dead: DEFAULT_MIN_DEAD,
        }
    }
}

/// What one gc did (`hoard gc --json`, `POST /v1/gc`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Chunks forgotten.
    pub chunks_freed: u64,
    /// Their stored (encoded) bytes.
    pub chunk_bytes_freed: u64,
    /// Chunks kept because a pin, an open session or the grace period held them.
    pub chunks_spared: u64,
    /// Chunks still referenced.
    pub chunks_live: u64,
    /// Manifest pages forgotten.
    pub pages_freed: u64,
    /// Bytes of pack files on disk before minus after.
    pub bytes_freed: u64,
    /// Pack files rewritten with only their live entries.
    pub packs_rewritten: u64,
    /// Pack files deleted (nothing live in them).
    pub packs_deleted: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The chunks and pages that manifests reference.
#[derive(Default)]
struct Live {
    ids: Vec<Hash>,
    pages: HashSet<Hash>,
    files: HashSet<Hash>,
}

impl Live {
    fn add_page(&mut self, store: &dyn ChunkStore, hash: Hash, owner: &Hash) -> Result<()> {
        if !self.pages.insert(hash) {
            return Ok(());
        }
        // A page that cannot be read hides which chunks are live: stop rather than guess.
        let bytes = store.get_page(&hash)?.ok_or(Error::PageNotFound {
            file: *owner,
            page: hash,
        })?;
        self.ids
            .extend(Page::decode(&bytes)?.chunks.iter().map(|c| c.id));
        Ok(())
    }

    fn add_manifest(&mut self, store: &dyn ChunkStore, m: &Manifest) -> Result<()> {
        for p in &m.pages {
            self.add_page(store, p.hash, &m.file_id)?;
        }
        self.files.insert(m.file_id);
        Ok(())
    }

    /// What unfinished uploads hold.
    fn add_uploads(&mut self, store: &dyn ChunkStore) -> Result<()> {
        let held = upload::held(store)?;
        for (page, owner) in held.pages {
            self.add_page(store, page, &owner)?;
        }
        self.ids.extend(held.chunks);
        Ok(())
    }
}

/// Runs one gc over `store` (see the module notes). One gc or fsck runs at a time.
///
/// # Errors
/// Store errors; [`Error::PageNotFound`] when a live manifest cannot be read (run fsck). Either
/// way nothing referenced was removed.
pub fn gc(store: &dyn ChunkStore, opts: &GcOptions) -> Result<GcReport> {
    let guard = store.guard();
    let _one_at_a_time = guard.maintenance()?;
    collect(store, opts)
}

/// A server's periodic gc: runs one as [`gc`] does unless a gc or fsck is running (in any
/// process) or, on a store several processes share, one finished less than `every` ago
/// (by the catalog's clock). So servers that all run gc every hour run about one an hour
/// between them, whoever's timer comes first, and never queue behind one another. `None`:
/// skipped.
///
/// # Errors
/// As [`gc`].
pub fn gc_periodic(
    store: &dyn ChunkStore,
    opts: &GcOptions,
    every: Duration,
) -> Result<Option<GcReport>> {
    let guard = store.guard();
    let Some(_one_at_a_time) = guard.try_maintenance()? else {
        return Ok(None);
    };
    if let Some(s) = guard.shared_part()
        && s.gc_finished_ago()?.is_some_and(|ago| ago < every)
    {
        return Ok(None);
    }
    collect(store, opts).map(Some)
}

/// gc's work, the maintenance lock held.
fn collect(store: &dyn ChunkStore, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let guard = store.guard();
    // The index is what gc marks from: while its files or names disagree with the journal,
    // it may lack files whose chunks would look like garbage. Nothing is deleted until fsck
    // has settled which side is right. (Pages alone decide nothing: see `gc_may_run`.)
    if let Some(j) = store.check_journal(false)?
        && !j.gc_may_run()
    {
        return Err(Error::GcRefused {
            reason: if j.index_behind() {
                format!(
                    "the index lacks {} files and {} names that the metadata journal records",
                    j.index_lacks_files, j.index_lacks_names
                )
            } else {
                "the index and the metadata journal disagree".to_owned()
            },
        });
    }

    // 1. Mark: sessions first, then manifests (see the argument above).
    let mut live = Live::default();
    live.add_uploads(store)?;
    for m in store.manifests()? {
        live.add_manifest(store, &m)?;
    }
    live.ids.sort_unstable();
    live.ids.dedup();
    let mut candidates = Vec::new();
    store.for_each_chunk(&mut |id| {
        if live.ids.binary_search(id).is_err() {
            candidates.push(*id);
        }
        Ok(())
    })?;
    let mut report = GcReport {
        chunks_live: live.ids.len() as u64,
        ..GcReport::default()
    };
    let page_candidates: Vec<Hash> = store
        .page_hashes()?
        .into_iter()
        .filter(|h| !live.pages.contains(h))
        .collect();

    // 2. Sweep, under the write lock: what appeared since the mark is live too. A shared
    //    store condemns the candidates first, so that every lookup from now on revives what
    //    it asks about (see "Many processes" above).
    {
        let _exclusive = guard.write();
        guard.rotate(opts.grace);
        let shared = guard.shared_part();
        let young = match shared {
            Some(s) => Some((
                s.condemn(PinKind::Chunk, &candidates, opts.grace)?,
                s.condemn(PinKind::Page, &page_candidates, opts.grace)?,
            )),
            None => None,
        };
        let mut late = Live::default();
        let pinned = guard.pinned()?;
        late.ids.extend(pinned.ids);
        for p in pinned.pages {
            if let Some(bytes) = store.get_page(&p)? {
                late.pages.insert(p);
                late.ids
                    .extend(Page::decode(&bytes)?.chunks.iter().map(|c| c.id));
            }
        }
        late.add_uploads(store)?;
        for id in store.file_ids_with_prefix(&[])? {
            if !live.files.contains(&id)
                && let Some(m) = store.get_manifest(&id)?
            {
                late.add_manifest(store, &m)?;
            }
        }
        let late_ids: HashSet<Hash> = late.ids.into_iter().collect();
        let spared = |id: &Hash| match &young {
            Some((chunks, _)) => chunks.contains(id),
            None => guard.recently_noted(id),
        };
        let doomed: Vec<Hash> = candidates
            .iter()
            .filter(|id| !late_ids.contains(id) && !spared(id))
            .copied()
            .collect();
        let free = |ids: &[Hash]| match shared {
            Some(s) => s.sweep_chunks(ids),
            None => store.remove_chunks(ids),
        };
        // A base stays while a recorded delta names it (see "Delta chunks" above): first
        // what no delta needs, then the bases whose last deltas went just now.
        let in_use = store.bases_in_use(&doomed)?;
        let (mut bases, mut first) = (Vec::new(), Vec::new());
        for (id, base) in doomed.into_iter().zip(in_use) {
            if base { &mut bases } else { &mut first }.push(id);
        }
        let (mut n, mut bytes) = free(&first)?;
        if !bases.is_empty() {
            let still = store.bases_in_use(&bases)?;
            let unused: Vec<Hash> = bases
                .into_iter()
                .zip(still)
                .filter(|(_, s)| !s)
                .map(|(id, _)| id)
                .collect();
            let (n2, bytes2) = free(&unused)?;
            n += n2;
            bytes += bytes2;
        }
        report.chunks_freed = n;
        report.chunk_bytes_freed = bytes;
        report.chunks_spared = (candidates.len() as u64).saturating_sub(n);
        let pages: Vec<Hash> = page_candidates
            .into_iter()
            .filter(|h| {
                !late.pages.contains(h) && young.as_ref().is_none_or(|(_, p)| !p.contains(h))
            })
            .collect();
        report.pages_freed = match shared {
            Some(s) => s.sweep_pages(&pages)?,
            None => {
                store.remove_pages(&pages)?;
                pages.len() as u64
            }
        };
    }

    // Super-features that name freed chunks find nothing any more.
    if report.chunks_freed > 0 {
        store.prune_features()?;
    }

    // 3. Compact.
    let c = store.compact(opts.min_dead)?;
    report.bytes_freed = c.bytes_before.saturating_sub(c.bytes_after);
    report.packs_rewritten = c.packs_rewritten;
    report.packs_deleted = c.packs_deleted;
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(s) = guard.shared_part() {
        s.gc_finished()?;
    }
    Ok(report)
}
