//! fsck of a packed store's chunks: walk every pack entry by entry, re-hash each one, compare
//! with the catalog's chunk locations; and the repairs (re-point, quarantine, drop, re-index).
//!
//! The walk reads each pack front to back and decodes and hashes
//! 8 MiB batches on all cores. An entry is judged against the index by its offset: the index
//! entry at that offset must name the same chunk, codec and lengths, and the payload must
//! decode to bytes that hash to the id. A damaged entry header stops the walk of that pack
//! (lengths after it cannot be trusted); indexed entries after it are then read one by one at
//! the offsets the index gives, so one flipped byte costs one chunk, not the rest of the pack.
//!
//! Progress survives an interruption: after each pack, the findings so far go to the catalog
//! (a local store keeps them in `STORE/fsck.state`; JSON, `version` 1), and a later check
//! started with `resume` skips the packs listed there. They are dropped when a check finishes.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::catalog::Catalog;
use crate::store::pack::{ChunkLoc, ENTRY_HEADER_LEN, MAX_ENTRY, PACK_MAGIC, parse_entry_header};
use crate::store::packed::{PackedStore, base_fault};
use crate::store::packs::{PackStorage, read_entry};
use crate::store::{BadChunk, ChunkCheck, ChunkRepair};

/// Version of the saved progress.
const STATE_VERSION: u32 = 1;
/// Payload bytes decoded and hashed per parallel batch = 8 MiB.
const BATCH_BYTES: usize = 8 << 20;

/// An interrupted check: the packs done and what they showed.
#[derive(Default, Serialize, Deserialize)]
struct State {
    version: u32,
    done: Vec<u64>,
    check: ChunkCheck,
    spare: Vec<(Hash, ChunkLoc)>,
    /// Unreferenced deltas whose base the catalog lacks, judged at the end against the
    /// intact unreferenced entries (a chunk table being rebuilt from the packs knows none).
    #[serde(default)]
    deferred: Vec<(Hash, ChunkLoc)>,
}

/// One entry read from a pack.
struct Entry {
    offset: u64,
    id: Hash,
    tag: u8,
    raw_len: u32,
    payload: Vec<u8>,
}

impl Entry {
    fn loc(&self, pack: u64) -> ChunkLoc {
        ChunkLoc {
            pack,
            offset: self.offset,
            stored_len: self.payload.len() as u32,
            raw_len: self.raw_len,
            codec: self.tag,
            base: delta_base(self.tag, &self.payload),
        }
    }
}

/// The base a delta entry's payload names, if it is a delta and names one.
fn delta_base(tag: u8, payload: &[u8]) -> Option<Hash> {
    (tag == Codec::Delta as u8)
        .then(|| payload.first_chunk().map(|b| Hash::from_bytes(*b)))
        .flatten()
}

/// Decoded bases of the deltas being checked, each read once (and checked against its id):
/// the bytes, or why the base is unusable.
pub(super) type Bases = HashMap<Hash, std::result::Result<Vec<u8>, String>>;

/// What is wrong with an entry.
pub(super) struct Fault {
    /// The reason.
    pub(super) why: String,
    /// Set when the entry is a sound delta whose base is damaged or gone: mending the base
    /// mends it.
    pub(super) base: Option<Hash>,
}

/// Decodes and hashes one payload (a delta against its base from `bases`); `None` if it is
/// the chunk `id`, else what is wrong.
pub(super) fn verify(
    id: &Hash,
    tag: u8,
    raw_len: u32,
    payload: &[u8],
    bases: &Bases,
) -> Option<Fault> {
    let fault = |why: String| Some(Fault { why, base: None });
    let Some(codec) = Codec::from_tag(tag) else {
        return fault(format!("unknown codec tag {tag}"));
    };
    if raw_len == 0 || raw_len > MAX_ENTRY {
        return fault(format!("implausible length {raw_len}"));
    }
    let mut raw = vec![0; raw_len as usize];
    let decoded = match codec {
        Codec::Delta => match codec::split_delta(id, payload) {
            Err(e) => Err(e),
            Ok((base, frame)) => match bases.get(&base) {
                Some(Ok(b)) => codec::decode_against_into(id, frame, b, &mut raw),
                Some(Err(why)) => {
                    return Some(Fault {
                        why: why.clone(),
                        base: Some(base),
                    });
                }
                None => {
                    return Some(Fault {
                        why: format!("its base {base} was not read"),
                        base: Some(base),
                    });
                }
            },
        },
        _ => codec::decode_into(id, codec, payload, &mut raw),
    };
    if let Err(e) = decoded {
        return fault(e.to_string());
    }
    let actual = Hash::of(&raw);
    (actual != *id).then(|| Fault {
        why: format!("content hashes to {actual}"),
        base: None,
    })
}

fn read_state(catalog: &dyn Catalog) -> Option<State> {
    let bytes = catalog.check_progress()?;
    serde_json::from_slice::<State>(&bytes)
        .ok()
        .filter(|s| s.version == STATE_VERSION)
}

fn write_state(catalog: &dyn Catalog, st: &State) -> Result<()> {
    let bytes = serde_json::to_vec(st).map_err(|e| Error::Stream("fsck progress", e.into()))?;
    catalog.save_check_progress(Some(&bytes))
}

/// The walk of one pack: its indexed entries by offset, and which were judged.
struct PackWalk<'a> {
    pack: u64,
    at: HashMap<u64, (Hash, ChunkLoc)>,
    judged: HashSet<u64>,
    st: &'a mut State,
}

impl PackWalk<'_> {
    /// Hashes a batch on all cores, then sorts each entry into good, bad or unreferenced.
    fn judge(&mut self, batch: &mut Vec<Entry>, bases: &Bases) {
        let verdicts: Vec<Option<Fault>> = batch
            .par_iter()
            .map(|e| verify(&e.id, e.tag, e.raw_len, &e.payload, bases))
            .collect();
        for (e, verdict) in batch.drain(..).zip(verdicts) {
            let c = &mut self.st.check;
            c.entries += 1;
            c.bytes += (ENTRY_HEADER_LEN + e.payload.len()) as u64;
            let loc = e.loc(self.pack);
            match self.at.get(&e.offset) {
                Some((id, indexed)) if *id == e.id && *indexed == loc => {
                    self.judged.insert(e.offset);
                    match verdict {
                        None => c.chunks_ok += 1,
                        Some(f) => c.bad.push(BadChunk {
                            id: e.id,
                            detail: format!(
                                "entry at pack {:016x} offset {}: {}",
                                self.pack, e.offset, f.why
                            ),
                            loc: Some(loc),
                            base: f.base,
                        }),
                    }
                }
                _ if verdict.is_none() => {
                    c.unreferenced += 1;
                    self.st.spare.push((e.id, loc));
                }
                _ if verdict.as_ref().is_some_and(|f| f.base.is_some()) => {
                    self.st.deferred.push((e.id, loc));
                }
                _ => c.damaged_unreferenced += 1,
            }
        }
    }
}

impl<P: PackStorage, C: Catalog> PackedStore<P, C> {
    /// The bases the deltas of `batch` name, each read once.
    fn bases_of(&self, batch: &[Entry]) -> Bases {
        self.read_bases(batch.iter().filter_map(|e| delta_base(e.tag, &e.payload)))
    }

    /// Reads and checks each of `ids` as a base.
    fn read_bases(&self, ids: impl IntoIterator<Item = Hash>) -> Bases {
        self.read_bases_with(ids, &HashMap::new())
    }

    /// Reads and checks each of `ids` as a base: where the catalog says it is, or else from
    /// the intact copy `spare` names (a chunk table being rebuilt knows no base yet).
    fn read_bases_with(
        &self,
        ids: impl IntoIterator<Item = Hash>,
        spare: &HashMap<Hash, ChunkLoc>,
    ) -> Bases {
        let mut bases = Bases::new();
        for id in ids {
            bases.entry(id).or_insert_with(|| {
                let read = match (self.base_bytes(&id), spare.get(&id)) {
                    (Err(Error::ChunkNotFound(_)), Some(loc)) => self.spare_base(&id, loc),
                    (r, _) => r,
                };
                read.map_err(|e| {
                    base_fault(&id, &e)
                        .unwrap_or_else(|| format!("its base {id} cannot be read: {e}"))
                })
            });
        }
        bases
    }

    /// The bytes of the plain entry at `loc`, checked against `id`.
    fn spare_base(&self, id: &Hash, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        let codec = read_entry(&self.packs, id, loc, &mut payload)?;
        // A base stored as a delta does not decode on its own (one level only).
        let raw = codec::decode(id, codec, &payload, loc.raw_len as usize)?;
        crate::restore::check_hash(id, &raw)?;
        Ok(raw)
    }

    /// See [`ChunkStore::check_chunks`](crate::store::ChunkStore::check_chunks).
    pub(super) fn check_packs(
        &self,
        resume: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ChunkCheck> {
        let catalog: &dyn Catalog = &*self.catalog;
        let mut st = resume
            .then(|| read_state(catalog))
            .flatten()
            .unwrap_or_default();
        st.version = STATE_VERSION;
        // Order matters when other processes write to the store meanwhile (as in
        // compaction): list the packs, then note which are busy, then read the catalog. A
        // listed pack not busy by then has had all its entries recorded (a commit lets go of
        // a pack only after recording them), so none of them is taken for unreferenced; a
        // busy one is checked only as far as the catalog knew it.
        let files = self.packs.list()?;
        let busy = self.busy_now()?;
        let mut by_pack: HashMap<u64, Vec<(Hash, ChunkLoc)>> = HashMap::new();
        let mut unreadable = Vec::new();
        catalog.for_each_loc(&mut |id, loc| {
            match loc {
                Ok(l) => by_pack.entry(l.pack).or_default().push((*id, l)),
                Err(e) => unreadable.push(BadChunk {
                    id: *id,
                    detail: format!("its index record is damaged: {e}"),
                    loc: None,
                    base: None,
                }),
            }
            Ok(())
        })?;
        // A pack checked before the interruption that is gone now was compacted since: the
        // findings no longer describe the store, so start over.
        if st.done.iter().any(|d| !files.iter().any(|(p, _)| p == d)) {
            st = State {
                version: STATE_VERSION,
                ..State::default()
            };
        }
        let done: HashSet<u64> = st.done.iter().copied().collect();
        for (pack, len) in files {
            let indexed = by_pack.remove(&pack).unwrap_or_default();
            if done.contains(&pack) {
                progress(len);
                continue;
            }
            let busy = busy.contains(&pack);
            self.check_pack(pack, len, busy, indexed, &mut st, progress)?;
            st.done.push(pack);
            // Progress is a convenience: a full disk must not stop the check itself.
            if let Err(e) = write_state(catalog, &st) {
                tracing::warn!(error = %e, "cannot save fsck progress; an interrupted check will start over");
            }
        }
        // Deferred deltas, against the intact copies the walk found.
        let spare: HashMap<Hash, ChunkLoc> = st.spare.iter().copied().collect();
        let mut payload = Vec::new();
        for (id, loc) in std::mem::take(&mut st.deferred) {
            let intact = read_entry(&self.packs, &id, &loc, &mut payload).is_ok_and(|_| {
                let bases = self.read_bases_with(delta_base(loc.codec, &payload), &spare);
                verify(&id, loc.codec, loc.raw_len, &payload, &bases).is_none()
            });
            if intact {
                st.check.unreferenced += 1;
                st.spare.push((id, loc));
            } else {
                st.check.damaged_unreferenced += 1;
            }
        }
        let mut check = std::mem::take(&mut st.check);
        if !by_pack.is_empty() {
            // Entries in packs the listing did not show: a pack written and recorded since
            // the listing is there now (it is checked next time); any other is missing.
            let now: HashSet<u64> = self.packs.list()?.into_iter().map(|(p, _)| p).collect();
            by_pack.retain(|pack, _| !now.contains(pack));
        }
        for (pack, entries) in by_pack {
            for (id, loc) in entries {
                check.bad.push(BadChunk {
                    id,
                    detail: format!("its pack {pack:016x} does not exist"),
                    loc: Some(loc),
                    base: None,
                });
            }
        }
        check.bad.extend(unreadable);
        check.spare = std::mem::take(&mut st.spare);
        if let Err(e) = catalog.save_check_progress(None) {
            tracing::warn!(error = %e, "cannot drop the saved fsck progress");
        }
        Ok(check)
    }

    fn check_pack(
        &self,
        pack: u64,
        len: u64,
        busy: bool,
        indexed: Vec<(Hash, ChunkLoc)>,
        st: &mut State,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let entry_end = |l: &ChunkLoc| {
            l.offset
                .saturating_add(ENTRY_HEADER_LEN as u64 + u64::from(l.stored_len))
        };
        // A pack still being written is checked only as far as the index knew it.
        let end = if busy || self.is_busy(pack) {
            indexed
                .iter()
                .map(|(_, l)| entry_end(l))
                .max()
                .unwrap_or(0)
                .min(len)
        } else {
            len
        };
        st.check.packs += 1;
        let Some(r) = self.packs.read_all(pack)? else {
            for (id, loc) in indexed {
                st.check.bad.push(BadChunk {
                    id,
                    detail: format!("its pack {pack:016x} does not exist"),
                    loc: Some(loc),
                    base: None,
                });
            }
            return Ok(());
        };
        let mut walk = PackWalk {
            pack,
            at: indexed
                .into_iter()
                .map(|(id, l)| (l.offset, (id, l)))
                .collect(),
            judged: HashSet::new(),
            st,
        };
        // A pack that ends early is damage to report; the storage failing to read it (an
        // object store that stopped answering, a disk error) is not: the check stops with it.
        let mut r = Watched { r, failed: None };
        let damaged = |what: String| format!("pack {pack:016x}: {what}");
        let mut magic = [0u8; PACK_MAGIC.len()];
        let mut pos = PACK_MAGIC.len() as u64;
        let walking = r.read_exact(&mut magic).is_ok() && magic == PACK_MAGIC;
        if !walking && end > 0 {
            walk.st
                .check
                .damaged_packs
                .push(damaged("its file header is damaged".into()));
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while walking && pos < end {
            let mut h = [0u8; ENTRY_HEADER_LEN];
            let parsed = if end - pos < ENTRY_HEADER_LEN as u64 {
                None
            } else {
                r.read_exact(&mut h)
                    .ok()
                    .and_then(|()| parse_entry_header(&h))
            };
            let Some((id, tag, raw_len, stored)) = parsed else {
                walk.st.check.damaged_packs.push(damaged(format!(
                    "no entry header at offset {pos} (damaged or cut off)"
                )));
                break;
            };
            let entry_len = ENTRY_HEADER_LEN as u64 + u64::from(stored);
            if stored > MAX_ENTRY || raw_len > MAX_ENTRY || pos + entry_len > end {
                walk.st.check.damaged_packs.push(damaged(format!(
                    "the entry at offset {pos} runs past the end (damaged or cut off)"
                )));
                break;
            }
            let mut payload = vec![0; stored as usize];
            if r.read_exact(&mut payload).is_err() {
                walk.st
                    .check
                    .damaged_packs
                    .push(damaged(format!("cut off inside the entry at offset {pos}")));
                break;
            }
            batch.push(Entry {
                offset: pos,
                id,
                tag,
                raw_len,
                payload,
            });
            batch_bytes += stored as usize;
            pos += entry_len;
            progress(entry_len);
            if batch_bytes >= BATCH_BYTES {
                let bases = self.bases_of(&batch);
                walk.judge(&mut batch, &bases);
                batch_bytes = 0;
            }
        }
        if let Some(e) = r.failed {
            // The storage's own error when it made one (the object store's), else the I/O
            // error as it came.
            return Err(if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                *e.into_inner()
                    .and_then(|inner| inner.downcast::<Error>().ok())
                    .expect("checked")
            } else {
                Error::io("cannot read pack", format!("{pack:016x}"))(e)
            });
        }
        let bases = self.bases_of(&batch);
        walk.judge(&mut batch, &bases);
        progress(len.saturating_sub(pos));
        // Indexed entries the walk did not reach (or found no match for): read each where
        // the index says it is.
        let mut rest: Vec<(Hash, ChunkLoc)> = walk
            .at
            .iter()
            .filter(|(off, _)| !walk.judged.contains(off))
            .map(|(_, v)| *v)
            .collect();
        rest.sort_unstable_by_key(|(_, l)| l.offset);
        let mut payload = Vec::new();
        for (id, loc) in rest {
            let c = &mut walk.st.check;
            let read = loc.stored_len <= MAX_ENTRY
                && read_entry(&self.packs, &id, &loc, &mut payload).is_ok();
            let fault = if read {
                let bases = self.read_bases(delta_base(loc.codec, &payload));
                verify(&id, loc.codec, loc.raw_len, &payload, &bases)
            } else {
                Some(Fault {
                    why: "no matching entry there (damaged or cut off)".to_owned(),
                    base: None,
                })
            };
            match fault {
                None => c.chunks_ok += 1,
                Some(f) => c.bad.push(BadChunk {
                    id,
                    detail: format!("entry at pack {pack:016x} offset {}: {}", loc.offset, f.why),
                    loc: Some(loc),
                    base: f.base,
                }),
            }
        }
        Ok(())
    }

    /// See [`ChunkStore::repair_chunks`](crate::store::ChunkStore::repair_chunks).
    pub(super) fn repair(
        &self,
        check: &ChunkCheck,
        wanted: Option<&HashSet<Hash>>,
    ) -> Result<ChunkRepair> {
        // Copies are read again before the index is pointed at them: packs may have been
        // compacted since the check found them.
        let mut spare: HashMap<Hash, ChunkLoc> = HashMap::new();
        let mut payload = Vec::new();
        // Where a delta's base is, if the catalog does not know: its intact copies (checked
        // again as it is read).
        let copies: HashMap<Hash, ChunkLoc> = check.spare.iter().copied().collect();
        for (id, loc) in &check.spare {
            if spare.contains_key(id) {
                continue;
            }
            let intact = read_entry(&self.packs, id, loc, &mut payload).is_ok_and(|_| {
                let bases = self.read_bases_with(delta_base(loc.codec, &payload), &copies);
                verify(id, loc.codec, loc.raw_len, &payload, &bases).is_none()
            });
            if intact {
                spare.insert(*id, *loc);
            }
        }
        let mut out = ChunkRepair::default();
        let mut moves = Vec::new();
        let mut drops = Vec::new();
        let mut inserts = Vec::new();
        // A sound delta whose base is bad is mended by mending the base: kept when the base
        // has an intact copy to point at, else dropped like any unreadable chunk.
        let mut bases_wanted = HashSet::new();
        for b in &check.bad {
            if let Some(base) = b.base {
                if spare.contains_key(&base) {
                    bases_wanted.insert(base);
                    out.repointed += 1;
                } else {
                    drops.push(b.id);
                    out.dropped += 1;
                }
                continue;
            }
            match (b.loc, spare.get(&b.id)) {
                (Some(old), Some(alt)) => {
                    moves.push((b.id, old, *alt));
                    out.repointed += 1;
                }
                (None, Some(alt)) => {
                    drops.push(b.id);
                    inserts.push((b.id, *alt));
                    out.repointed += 1;
                }
                (Some(loc), None) => {
                    drops.push(b.id);
                    if let Some(kept) = self.packs.quarantine(&b.id, &loc)? {
                        out.quarantined += 1;
                        out.quarantine = Some(kept);
                    } else {
                        out.dropped += 1;
                    }
                }
                (None, None) => {
                    drops.push(b.id);
                    out.dropped += 1;
                }
            }
        }
        self.catalog.relocate(&moves)?;
        self.catalog.remove_locs(&drops)?;
        self.catalog.insert_locs(&inserts)?;
        {
            let mut ids: Vec<Hash> = spare
                .keys()
                .filter(|id| wanted.is_none_or(|w| w.contains(id)) || bases_wanted.contains(id))
                .copied()
                .collect();
            // A delta indexed again needs its base: that too, if a copy is at hand (twice
            // listed is once after the dedup).
            let bases: Vec<Hash> = ids
                .iter()
                .filter_map(|id| spare[id].base)
                .filter(|b| spare.contains_key(b))
                .collect();
            ids.extend(bases);
            ids.sort_unstable();
            ids.dedup();
            let absent = self.catalog.missing(&ids)?;
            let add: Vec<(Hash, ChunkLoc)> = ids
                .iter()
                .zip(absent)
                .filter(|(_, a)| *a)
                .map(|(id, _)| (*id, spare[id]))
                .collect();
            out.reindexed = add.len() as u64;
            for part in add.chunks(10_000) {
                self.catalog.insert_locs(part)?;
            }
        }
        Ok(out)
    }
}

/// A pack's reader that keeps aside its first failure other than ending early.
struct Watched {
    r: Box<dyn Read + Send>,
    failed: Option<std::io::Error>,
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.r.read(buf) {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::Interrupted
                ) =>
            {
                let kind = e.kind();
                self.failed.get_or_insert(e);
                Err(std::io::Error::new(kind, "the pack could not be read"))
            }
            other => other,
        }
    }
}
