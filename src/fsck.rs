//! fsck: prove a store's health, and repair what can be repaired.
//!
//! 1. Every stored chunk is re-read and re-hashed (`ChunkStore::check_chunks`: for a local
//!    store, every entry of every pack file).
//! 2. With `repair`, bad chunks are re-pointed at an intact copy or quarantined, and index
//!    entries that point at nothing are dropped (`ChunkStore::repair_chunks`).
//! 3. Every manifest: its pages are stored and consistent, and every chunk it lists is stored
//!    and was not found bad. A file with a problem is *damaged*: exporting it fails, and
//!    importing or pushing the original again stores what is missing and heals it.
//! 4. Every name: each version's file is stored. With `repair`, versions whose file is gone
//!    are dropped (a name left with none goes).
//!
//! 5. The metadata journal: every record intact, and replaying it gives the index's names,
//!    manifests and pages. With `repair`, one that does not is kept aside and written anew.
//!
//! Each problem names the files it affects. Intact entries nothing points at (left by a
//! crash, or freed by gc and not yet compacted) are counted, not reported: gc reclaims them.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::listing;
use crate::manifest::{Manifest, Page};
use crate::store::{ChunkRepair, ChunkStore, JournalCheck};

/// How fsck runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsckOptions {
    /// Repair what can be repaired (see the module notes).
    pub repair: bool,
    /// Go on from an interrupted earlier check.
    pub resume: bool,
    /// Index every intact chunk the packs hold that the chunk table lacks (rebuilding it).
    pub reindex: bool,
    /// With `repair`: drop no name version, even one whose file is gone (after a rebuild
    /// from a damaged journal, the file may come back by other means).
    pub keep_names: bool,
}

/// One problem and the files it affects.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `bad_chunk`, `missing_chunk`, `missing_page`, `bad_manifest` or `broken_name`.
    pub kind: &'static str,
    /// The chunk, page, file or name concerned.
    pub subject: String,
    /// What is wrong.
    pub detail: String,
    /// Files affected, as `ID (name, name@2…)`.
    pub files: Vec<String>,
}

/// What fsck found (and did).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Pack files read.
    pub packs: u64,
    /// Pack entries read.
    pub entries: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Stored chunks that decoded and hashed to their id.
    pub chunks_ok: u64,
    /// Stored chunks found damaged or gone.
    pub bad_chunks: u64,
    /// Intact entries nothing points at (gc reclaims them).
    pub unreferenced_entries: u64,
    /// Damaged entries nothing points at.
    pub damaged_unreferenced_entries: u64,
    /// Damage to pack files as such (torn tails after a crash show here).
    pub damaged_packs: Vec<String>,
    /// Files (manifests) checked.
    pub files: u64,
    /// Files that cannot be exported whole.
    pub damaged_files: u64,
    /// Chunks files list that the store lacks (after any repair).
    pub missing_chunks: u64,
    /// Manifest pages files list that the store lacks or cannot decode.
    pub missing_pages: u64,
    /// Name versions whose file is not stored.
    pub broken_names: u64,
    /// Each problem, with the files it affects.
    pub problems: Vec<Problem>,
    /// How the metadata journal compares with the index. Part of `clean` only where the index
    /// lacks what the journal records (gc would take those files' chunks for garbage); other
    /// differences leave every file exporting whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalCheck>,
    /// What a repair did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
    /// True if and only if every stored file can be exported whole and every name resolves.
    pub clean: bool,
}

/// What `--repair` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Repair {
    /// Chunk repairs.
    #[serde(flatten)]
    pub chunks: ChunkRepair,
    /// Name versions dropped because their file is gone.
    pub versions_dropped: u64,
}

/// Runs fsck over `store` (see the module notes); `progress` gets bytes read. One gc or
/// fsck runs at a time.
///
/// # Errors
/// I/O and index errors that stop the check itself (damage is reported, not returned).
pub fn fsck(
    store: &dyn ChunkStore,
    opts: &FsckOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FsckReport> {
    let _one_at_a_time = store.guard().maintenance()?;
    let check = store.check_chunks(opts.resume, progress)?;
    let mut r = FsckReport {
        packs: check.packs,
        entries: check.entries,
        bytes: check.bytes,
        chunks_ok: check.chunks_ok,
        bad_chunks: check.bad.len() as u64,
        unreferenced_entries: check.unreferenced,
        damaged_unreferenced_entries: check.damaged_unreferenced,
        damaged_packs: check.damaged_packs.clone(),
        ..FsckReport::default()
    };
    if opts.repair {
        // Chunks files need that the index lacks, but of which the packs hold an intact copy
        // (a lost or damaged chunk table), are indexed again.
        let wanted = if opts.reindex {
            None
        } else {
            Some(absent_chunks(store)?)
        };
        r.repair = Some(Repair {
            chunks: store.repair_chunks(&check, wanted.as_ref())?,
            versions_dropped: 0,
        });
    }
    let bad: HashMap<Hash, &str> = check
        .bad
        .iter()
        .map(|b| (b.id, b.detail.as_str()))
        .collect();

    let labels = listing::file_labels(store)?;
    let label = |id: &Hash| match labels.get(id) {
        Some(names) => format!("{id} ({})", names.join(", ")),
        None => id.to_string(),
    };
    // Chunks: which files each bad or missing chunk affects.
    let mut affected: HashMap<Hash, (&'static str, String, Vec<String>)> = HashMap::new();
    let mut damaged: HashSet<Hash> = HashSet::new();
    let manifests = store.manifests()?;
    r.files = manifests.len() as u64;
    for m in &manifests {
        let file_problems =
            check_manifest(store, m, &bad, &mut r, &mut affected, &label(&m.file_id))?;
        if file_problems {
            damaged.insert(m.file_id);
        }
    }
    for b in &check.bad {
        // Bad chunks no file uses still count: report them once, with no files.
        affected
            .entry(b.id)
            .or_insert_with(|| ("bad_chunk", b.detail.clone(), Vec::new()));
    }
    // A damaged base also breaks every file behind the deltas stored against it: its report
    // names those files too.
    for b in &check.bad {
        let Some(base) = b.base else { continue };
        let through: Vec<String> = affected
            .get(&b.id)
            .map(|(_, _, files)| files.clone())
            .unwrap_or_default();
        if let Some((_, _, files)) = affected.get_mut(&base) {
            for f in through {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
    }
    let mut chunk_problems: Vec<Problem> = affected
        .into_iter()
        .map(|(id, (kind, detail, files))| Problem {
            kind,
            subject: id.to_string(),
            detail,
            files,
        })
        .collect();
    chunk_problems.sort_by(|a, b| a.subject.cmp(&b.subject));
    r.missing_chunks = chunk_problems
        .iter()
        .filter(|p| p.kind == "missing_chunk")
        .count() as u64;
    r.problems.extend(chunk_problems);
    r.damaged_files = damaged.len() as u64;

    // Names.
    let _names_held = store.guard().naming();
    for (name, mut rec) in store.names()? {
        let before = rec.versions.len();
        let mut broken = Vec::new();
        // A name of another namespace than the default one shows as `NAMESPACE:NAME`.
        let shown = crate::listing::display_key(&name);
        for (i, v) in rec.versions.iter().enumerate() {
            if store.get_manifest(&v.file_id)?.is_none() {
                broken.push(format!("{shown}@{} -> {}", i + 1, v.file_id));
            }
        }
        if broken.is_empty() {
            continue;
        }
        r.broken_names += broken.len() as u64;
        for b in broken {
            r.problems.push(Problem {
                kind: "broken_name",
                subject: shown.clone(),
                detail: format!("{b}: that file is not stored"),
                files: Vec::new(),
            });
        }
        if let Some(rep) = r.repair.as_mut().filter(|_| !opts.keep_names) {
            let mut kept = Vec::new();
            for v in rec.versions {
                if store.get_manifest(&v.file_id)?.is_some() {
                    kept.push(v);
                }
            }
            rec.versions = kept;
            rep.versions_dropped += (before - rec.versions.len()) as u64;
            if rec.versions.is_empty() {
                store.remove_name(&name)?;
            } else {
                store.put_name(&name, &rec)?;
            }
        }
    }
    drop(_names_held);
    r.journal = store.check_journal(opts.repair)?;
    r.clean = r.bad_chunks == 0
        && r.missing_chunks == 0
        && r.missing_pages == 0
        && r.broken_names == 0
        && r.damaged_files == 0
        && !r.journal.as_ref().is_some_and(JournalCheck::index_behind);
    Ok(r)
}

/// Chunks some manifest lists that the index lacks.
fn absent_chunks(store: &dyn ChunkStore) -> Result<HashSet<Hash>> {
    let mut out = HashSet::new();
    for m in store.manifests()? {
        for pref in &m.pages {
            let Some(page) = store.get_page(&pref.hash)? else {
                continue;
            };
            let Ok(page) = Page::decode(&page) else {
                continue;
            };
            let ids: Vec<Hash> = page.chunks.iter().map(|c| c.id).collect();
            for (id, absent) in ids.iter().zip(store.lookup(&ids)?) {
                if absent {
                    out.insert(*id);
                }
            }
        }
    }
    Ok(out)
}

/// Checks one manifest's pages and chunks; true if the file is damaged.
fn check_manifest(
    store: &dyn ChunkStore,
    m: &Manifest,
    bad: &HashMap<Hash, &str>,
    r: &mut FsckReport,
    affected: &mut HashMap<Hash, (&'static str, String, Vec<String>)>,
    label: &str,
) -> Result<bool> {
    let mut damaged = false;
    for pref in &m.pages {
        let page = store
            .get_page(&pref.hash)?
            .ok_or_else(|| "not stored".to_owned())
            .and_then(|b| Page::decode(&b).map_err(|e| e.to_string()))
            .and_then(|p| {
                m.check_page(pref, &p)
                    .map(|()| p)
                    .map_err(|e: Error| e.to_string())
            });
        let page = match page {
            Ok(p) => p,
            Err(why) => {
                r.missing_pages += 1;
                r.problems.push(Problem {
                    kind: "missing_page",
                    subject: pref.hash.to_string(),
                    detail: format!("manifest page {why}"),
                    files: vec![label.to_owned()],
                });
                damaged = true;
                continue;
            }
        };
        let ids: Vec<Hash> = page.chunks.iter().map(|c| c.id).collect();
        let absent = store.lookup(&ids)?;
        let mut seen = HashSet::new();
        for (id, absent) in ids.iter().zip(absent) {
            let problem = match bad.get(id) {
                Some(detail) if absent => Some(("missing_chunk", format!("quarantined: {detail}"))),
                Some(detail) => Some(("bad_chunk", (*detail).to_owned())),
                None if absent => Some(("missing_chunk", "not stored".to_owned())),
                None => None,
            };
            if let Some((kind, detail)) = problem {
                damaged = true;
                if seen.insert(*id) {
                    affected
                        .entry(*id)
                        .or_insert_with(|| (kind, detail, Vec::new()))
                        .2
                        .push(label.to_owned());
                }
            }
        }
    }
    Ok(damaged)
}
