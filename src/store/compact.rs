//! Compaction of a packed store: packs with nothing live in them are deleted, packs whose dead
//! share passes a threshold have their live entries copied into new packs, the catalog is
//! pointed at the copies, and only then are the old packs deleted.

use std::collections::{HashMap, HashSet};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::CompactReport;
use crate::store::catalog::Catalog;
use crate::store::pack::{ChunkLoc, ENTRY_HEADER_LEN, PACK_MAGIC};
use crate::store::packed::{Busy, PackedStore};
use crate::store::packs::{PackSink, PackStorage, read_entry};

impl<P: PackStorage, C: Catalog> PackedStore<P, C> {
    /// See [`ChunkStore::compact`](crate::store::ChunkStore::compact).
    pub(super) fn compact_packs(&self, min_dead: f64) -> Result<CompactReport> {
        // Order matters: list the packs, then note which are busy, then read the catalog. A
        // pack not busy by then has had all its entries recorded (a commit lets go of a pack
        // only after recording them), so the catalog read sees them; a pack busy then is
        // skipped even if it is done by the time the loop reaches it.
        let packs = self.packs.list()?;
        let busy_before = self.busy_now()?;
        let bytes_before = packs.iter().map(|(_, len)| len).sum();
        let mut live: HashMap<u64, u64> = HashMap::new();
        self.catalog.for_each_loc(&mut |_, loc| {
            let loc = loc?;
            *live.entry(loc.pack).or_default() +=
                ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len);
            Ok(())
        })?;
        let mut report = CompactReport {
            bytes_before,
            ..CompactReport::default()
        };
        let mut dead_packs = Vec::new();
        let mut rewrite = HashSet::new();
        for &(pack, len) in &packs {
            if busy_before.contains(&pack) || self.is_busy(pack) {
                continue;
            }
            let used = live.get(&pack).copied().unwrap_or(0);
            if used == 0 {
                dead_packs.push(pack);
            } else {
                let dead = len.saturating_sub(PACK_MAGIC.len() as u64 + used);
                if dead as f64 >= min_dead * len as f64 && dead > 0 {
                    rewrite.insert(pack);
                }
            }
        }
        self.packs.delete(&dead_packs)?;
        report.packs_deleted = dead_packs.len() as u64;
        if !rewrite.is_empty() {
            let mut entries: HashMap<u64, Vec<(Hash, ChunkLoc)>> = HashMap::new();
            self.catalog.for_each_loc(&mut |id, loc| {
                let loc = loc?;
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
        report.bytes_after = self.packs.total_bytes()?;
        self.catalog.compact_log()?;
        Ok(report)
    }

    /// Copies the live entries of `pack` into new packs, points the catalog at the copies and
    /// deletes the old pack. Returns false, leaving it all in place, if an entry cannot be
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
                let _ = self.packs.delete(&created);
                return other.map(|_| false);
            }
        };
        // Durability order: the copies are synced; now the catalog points at them; only then
        // does the old pack go. A crash in between leaves a pack nothing points at.
        self.catalog.relocate(&moves)?;
        self.packs.delete(&[pack])?;
        Ok(true)
    }

    /// Copies `live` into new packs (their names pushed on `created`) and syncs them. Returns
    /// the moves to record, or None if an entry cannot be read back.
    #[allow(clippy::type_complexity)]
    fn copy_entries(
        &self,
        live: &[(Hash, ChunkLoc)],
        created: &mut Vec<u64>,
    ) -> Result<Option<Vec<(Hash, ChunkLoc, ChunkLoc)>>> {
        let mut out: Option<(Box<dyn PackSink>, Busy)> = None;
        let mut busy = Vec::new();
        let mut moves = Vec::with_capacity(live.len());
        let mut payload = Vec::new();
        for (id, loc) in live {
            if let Err(e) = read_entry(&self.packs, id, loc, &mut payload) {
                tracing::warn!(pack = loc.pack, chunk = %id, error = %e, "not compacting a pack with an unreadable entry; run `hoard fsck`");
                return Ok(None);
            }
            if out.as_ref().is_some_and(|(w, _)| w.full()) {
                let (mut w, b) = out.take().expect("checked");
                w.sync()?;
                busy.push(b);
            }
            let (w, _) = match &mut out {
                Some(o) => o,
                None => {
                    let (w, b) = self.new_pack()?;
                    created.push(w.pack());
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
