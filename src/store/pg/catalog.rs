//! [`Catalog`] on PostgreSQL: each method one statement (or one short transaction), a batch of
//! ids one array parameter. Name changes are transactions under the name's lock (`meta.rs`),
//! so two writers never lose a version. With the bucket's copy of the metadata
//! (`bucket_meta.rs`), every page, manifest and name is written there first.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_postgres::Row;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::catalog::{Catalog, Hold};
use crate::store::engine::wait;
use crate::store::pack::ChunkLoc;
use crate::store::pg::PgCatalog;
use crate::store::pg::schema;
use crate::store::{
    ChunkTotals, JournalCheck, NameRecord, NameVersion, Shared, TailRun, UploadKind,
};

/// Ids sent in one statement at most (larger batches are split; each part one round trip).
pub(super) const BATCH: usize = 100_000;
/// Rows fetched per round trip when walking the chunk table.
const WALK: i32 = 10_000;

fn kind_code(kind: UploadKind) -> i16 {
    match kind {
        UploadKind::Session => 0,
        UploadKind::Tus => 1,
    }
}

/// `ids` as one `bytea[]` parameter.
pub(super) fn id_array<'a>(ids: impl IntoIterator<Item = &'a Hash>) -> Vec<&'a [u8]> {
    ids.into_iter().map(|h| &h.as_bytes()[..]).collect()
}

pub(super) fn hash_of(bytes: &[u8]) -> Result<Hash> {
    Hash::from_slice(bytes).ok_or_else(|| Error::Decode {
        what: format!("id of {} bytes in the index database", bytes.len()),
        source: bincode::error::DecodeError::Other("not 32 bytes"),
    })
}

/// The columns [`loc_of`] reads, in its order.
const LOC_COLUMNS: &str = "c.pack, c.pack_offset, c.stored_len, c.raw_len, c.codec, c.base";

/// A location from columns `at..at + 6` of `row`: pack, offset, stored_len, raw_len, codec,
/// base.
fn loc_of(row: &Row, at: usize) -> Result<ChunkLoc> {
    Ok(ChunkLoc {
        pack: row.get::<_, i64>(at) as u64,
        offset: row.get::<_, i64>(at + 1) as u64,
        stored_len: row.get::<_, i32>(at + 2) as u32,
        raw_len: row.get::<_, i32>(at + 3) as u32,
        codec: row.get::<_, i16>(at + 4) as u8,
        base: row
            .get::<_, Option<&[u8]>>(at + 5)
            .map(hash_of)
            .transpose()?,
    })
}

/// The five columns of locations, as arrays.
#[derive(Default)]
struct LocColumns {
    pack: Vec<i64>,
    offset: Vec<i64>,
    stored_len: Vec<i32>,
    raw_len: Vec<i32>,
    codec: Vec<i16>,
    base: Vec<Option<Vec<u8>>>,
}

impl LocColumns {
    fn push(&mut self, l: &ChunkLoc) {
        self.pack.push(l.pack as i64);
        self.offset.push(l.offset as i64);
        self.stored_len.push(l.stored_len as i32);
        self.raw_len.push(l.raw_len as i32);
        self.codec.push(i16::from(l.codec));
        self.base.push(l.base.map(|b| b.as_bytes().to_vec()));
    }
}

fn version_of(row: &Row, at: usize) -> Result<NameVersion> {
    Ok(NameVersion {
        file_id: hash_of(row.get(at))?,
        size: row.get::<_, i64>(at + 1) as u64,
        added: row.get::<_, i64>(at + 2) as u64,
    })
}

/// The history in `rows` (file_id, size, added; oldest first), or `None` for no rows.
pub(super) fn record_of(rows: &[Row]) -> Result<Option<NameRecord>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let versions = rows
        .iter()
        .map(|r| version_of(r, 0))
        .collect::<Result<_>>()?;
    Ok(Some(NameRecord { versions }))
}

/// Revives the chunks of `$1` (see `gc.rs`, "Many processes"); costs nothing while nothing
/// is condemned.
const REVIVE: &str = "DELETE FROM condemned WHERE kind = 0 AND id = ANY($1) \
                      AND EXISTS (SELECT 1 FROM condemned)";

impl PgCatalog {
    /// Calls `f` with every row of `sql`, from one consistent view: one repeatable-read
    /// transaction, whose rows come `page` per round trip; `f` runs between the waits (it
    /// may use the store itself).
    pub(super) fn walk(
        &self,
        action: &'static str,
        sql: &str,
        page: i32,
        f: &mut dyn FnMut(&Row) -> Result<()>,
    ) -> Result<()> {
        let err = |e: tokio_postgres::Error| self.error(action, &e);
        let mut client = wait(self.pool.get())?.map_err(|e| self.pool_error(action, e))?;
        let tx = wait(
            client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start(),
        )?
        .map_err(err)?;
        let portal = wait(tx.bind(sql, &[]))?.map_err(err)?;
        loop {
            let rows = wait(tx.query_portal(&portal, page))?.map_err(err)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                f(r)?;
            }
        }
        wait(tx.commit())?.map_err(err)
    }

    /// Revives the chunks of `ids`.
    pub(super) fn revive(&self, ids: &[Hash]) -> Result<()> {
        for part in ids.chunks(BATCH) {
            let arr = id_array(part);
            self.run(true, "cannot look chunks up in the index at", async |c| {
                c.execute(REVIVE, &[&arr]).await
            })?;
        }
        Ok(())
    }

    /// Runs `sql` (a delete of chunk rows whose ids are in `$1` that answers how many went
    /// and their stored bytes) over `ids` in batches. Each batch first takes a number from
    /// `chunk_removals`, so that no server's id replica answers from before it
    /// (`replica.rs`).
    pub(super) fn delete_chunks(&self, sql: &str, ids: &[Hash]) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for part in ids.chunks(BATCH) {
            let arr = id_array(part);
            let (pn, pb) =
                self.run(false, "cannot remove chunks from the index at", async |c| {
                    c.execute("SELECT nextval('chunk_removals')", &[]).await?;
                    let r = c.query_one(sql, &[&arr]).await?;
                    Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
                })?;
            n += pn;
            bytes += pb;
        }
        Ok((n, bytes))
    }
}

/// The first key of an upload's lock (`pg_advisory_lock(UPLOAD_SPACE, first 4 bytes of its
/// id)`): two uploads that share those bytes only wait for each other.
const UPLOAD_SPACE: i32 = 0x6870_7570;

impl Catalog for PgCatalog {
    fn lock_upload(&self, id: &[u8; 16], limit: Option<std::time::Duration>) -> Result<Hold> {
        let key = i32::from_le_bytes([id[0], id[1], id[2], id[3]]);
        let held = self.hold_lock(
            "cannot lock an upload in the index at",
            &[&UPLOAD_SPACE, &key],
            limit,
            || {},
        )?;
        Ok(match held {
            Some(client) => Hold::Held(Some(Box::new(client))),
            None => Hold::Busy,
        })
    }

    fn ping(&self) -> Result<()> {
        const ACTION: &str = "cannot reach the index at";
        let limit = crate::store::PING_TIMEOUT;
        let asked = async {
            let c = self
                .pool
                .get()
                .await
                .map_err(|e| self.pool_error(ACTION, e))?;
            self.same_schema(&c, ACTION).await
        };
        wait(tokio::time::timeout(limit, asked))?
            .unwrap_or_else(|_| Err(Error::no_answer(ACTION, self.at.clone(), limit)))
    }

    fn config(&self) -> StoreConfig {
        self.config
    }

    fn shared(self: Arc<Self>) -> Option<Arc<dyn Shared>> {
        Some(self)
    }

    fn for_server(self: Arc<Self>) {
        self.keep_replica();
    }

    fn id_replica_len(&self) -> Option<usize> {
        self.replica_len()
    }

    fn missing(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        if let Some(answer) = self.missing_from_replica(ids)? {
            return Ok(answer);
        }
        // Probed in id order, neighbouring probes share index pages: measured at 10 million
        // chunks, 0.015 ms a probe against 0.030 in the order given.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        let sorted: Vec<Hash> = order.iter().map(|&i| ids[i]).collect();
        let mut out = vec![false; ids.len()];
        for (p, part) in sorted.chunks(BATCH).enumerate() {
            let arr = id_array(part);
            let got: Vec<bool> =
                self.run(true, "cannot look chunks up in the index at", async |c| {
                    // Revive, then read: two statements in one round trip, the read with a
                    // snapshot taken after the revive (see `gc.rs`, "Many processes").
                    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&arr];
                    let revive = c.execute(REVIVE, params);
                    let read = c.query_one(
                        "SELECT coalesce(array_agg(c.id IS NULL ORDER BY q.n), '{}') \
                         FROM unnest($1::bytea[]) WITH ORDINALITY AS q(id, n) \
                         LEFT JOIN chunks c ON c.id = q.id",
                        params,
                    );
                    let (_, row) = tokio::try_join!(revive, read)?;
                    Ok(row.get(0))
                })?;
            for (k, m) in got.into_iter().enumerate() {
                out[order[p * BATCH + k]] = m;
            }
        }
        Ok(out)
    }

    fn locate(&self, ids: &[Hash]) -> Result<Vec<Option<ChunkLoc>>> {
        let mut out = vec![None; ids.len()];
        for (p, part) in ids.chunks(BATCH).enumerate() {
            let arr = id_array(part);
            let rows = self.run(true, "cannot look chunks up in the index at", async |c| {
                c.query(
                    &format!(
                        "SELECT q.n, {LOC_COLUMNS} \
                         FROM unnest($1::bytea[]) WITH ORDINALITY AS q(id, n) \
                         JOIN chunks c ON c.id = q.id"
                    ),
                    &[&arr],
                )
                .await
            })?;
            for r in &rows {
                let n = r.get::<_, i64>(0) as usize - 1;
                out[p * BATCH + n] = Some(loc_of(r, 1)?);
            }
        }
        Ok(out)
    }

    fn insert_locs(&self, locs: &[(Hash, ChunkLoc)]) -> Result<()> {
        // One statement may not change a row twice: of an id given twice, the last wins.
        // A chunk recorded plain is not replaced by a delta: two servers may store one chunk
        // at once, one as a delta, and others' deltas may name the plain one as their base
        // already (a base is never a delta).
        let mut seen = HashSet::with_capacity(locs.len());
        let mut last: Vec<&(Hash, ChunkLoc)> = locs
            .iter()
            .rev()
            .filter(|(id, _)| seen.insert(*id))
            .collect();
        last.reverse();
        for part in last.chunks(BATCH) {
            let ids = id_array(part.iter().map(|(h, _)| h));
            let mut cols = LocColumns::default();
            part.iter().for_each(|(_, l)| cols.push(l));
            self.run(true, "cannot record chunks in the index at", async |c| {
                c.execute(
                    "INSERT INTO chunks (id, pack, pack_offset, stored_len, raw_len, codec, base) \
                     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int4[], \
                                          $5::int4[], $6::int2[], $7::bytea[]) \
                     ON CONFLICT (id) DO UPDATE SET pack = excluded.pack, \
                       pack_offset = excluded.pack_offset, stored_len = excluded.stored_len, \
                       raw_len = excluded.raw_len, codec = excluded.codec, base = excluded.base, \
                       seq = excluded.seq \
                     WHERE chunks.base IS NOT NULL OR excluded.base IS NULL",
                    &[
                        &ids,
                        &cols.pack,
                        &cols.offset,
                        &cols.stored_len,
                        &cols.raw_len,
                        &cols.codec,
                        &cols.base,
                    ],
                )
                .await
            })?;
        }
        Ok(())
    }

    fn similar(&self, features: &[SuperFeatures]) -> Result<Vec<Option<Hash>>> {
        const K: usize = crate::features::SUPER_FEATURES;
        let mut out = vec![None; features.len()];
        for (p, part) in features.chunks(BATCH / K).enumerate() {
            // Bit for bit in the signed column.
            let sfs: Vec<i32> = part.iter().flat_map(|f| f.0.map(|v| v as i32)).collect();
            let rows = self.run(true, "cannot look features up in the index at", async |c| {
                c.query(schema::SIMILAR, &[&sfs]).await
            })?;
            for r in &rows {
                let n = r.get::<_, i64>(0) as usize - 1;
                let slot = &mut out[p * (BATCH / K) + n / K];
                if slot.is_none() {
                    *slot = Some(hash_of(r.get(1))?);
                }
            }
        }
        Ok(out)
    }

    fn add_features(&self, features: &[(SuperFeatures, Hash)]) -> Result<()> {
        // One statement may not change a row twice: of a feature given twice, the last wins.
        // Values bit for bit in the signed columns; the prefix big-endian (`int4send` gives
        // its bytes back in the lookup).
        let mut by_sf = std::collections::HashMap::new();
        for (f, id) in features {
            let prefix = i32::from_be_bytes(id.as_bytes()[..4].try_into().expect("4 bytes"));
            for sf in f.0 {
                by_sf.insert(sf as i32, prefix);
            }
        }
        // In key order, so that servers recording at once take the rows' locks in one order
        // (in any order, two upserts deadlock: seen with three servers).
        let mut all: Vec<(i32, i32)> = by_sf.into_iter().collect();
        all.sort_unstable();
        for part in all.chunks(BATCH) {
            let sfs: Vec<i32> = part.iter().map(|(sf, _)| *sf).collect();
            let prefixes: Vec<i32> = part.iter().map(|(_, p)| *p).collect();
            self.run(true, "cannot record features in the index at", async |c| {
                c.execute(
                    "INSERT INTO features (sf, id_prefix) \
                     SELECT * FROM unnest($1::int4[], $2::int4[]) \
                     ON CONFLICT (sf) DO UPDATE SET id_prefix = excluded.id_prefix",
                    &[&sfs, &prefixes],
                )
                .await
            })?;
        }
        Ok(())
    }

    fn prune_features(&self) -> Result<u64> {
        self.run(true, "cannot prune features in the index at", async |c| {
            c.execute(schema::PRUNE_FEATURES, &[]).await
        })
    }

    fn bases_in_use(&self, ids: &[Hash]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(BATCH) {
            let arr = id_array(part);
            let got: Vec<bool> = self.run(true, "cannot look bases up in the index at", async |c| {
                let row = c
                    .query_one(
                        "SELECT coalesce(array_agg(EXISTS (SELECT 1 FROM chunks c \
                                                           WHERE c.base = q.id) ORDER BY q.n), '{}') \
                         FROM unnest($1::bytea[]) WITH ORDINALITY AS q(id, n)",
                        &[&arr],
                    )
                    .await?;
                Ok(row.get(0))
            })?;
            out.extend(got);
        }
        Ok(out)
    }

    fn remove_locs(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        self.delete_chunks(
            "WITH d AS (DELETE FROM chunks WHERE id = ANY($1) RETURNING stored_len) \
             SELECT count(*), coalesce(sum(stored_len::int8), 0)::int8 FROM d",
            ids,
        )
    }

    fn relocate(&self, moves: &[(Hash, ChunkLoc, ChunkLoc)]) -> Result<u64> {
        let mut n = 0;
        for part in moves.chunks(BATCH) {
            let ids = id_array(part.iter().map(|(h, _, _)| h));
            let (mut old, mut new) = (LocColumns::default(), LocColumns::default());
            for (_, o, w) in part {
                old.push(o);
                new.push(w);
            }
            n += self.run(false, "cannot move chunks in the index at", async |c| {
                c.execute(
                    "UPDATE chunks c SET pack = m.np, pack_offset = m.no, stored_len = m.ns, \
                       raw_len = m.nr, codec = m.nc \
                     FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int4[], $5::int4[], \
                                 $6::int2[], $7::int8[], $8::int8[], $9::int4[], $10::int4[], \
                                 $11::int2[]) \
                       AS m(id, op, oo, os, orl, oc, np, no, ns, nr, nc) \
                     WHERE c.id = m.id AND c.pack = m.op AND c.pack_offset = m.oo \
                       AND c.stored_len = m.os AND c.raw_len = m.orl AND c.codec = m.oc",
                    &[
                        &ids,
                        &old.pack,
                        &old.offset,
                        &old.stored_len,
                        &old.raw_len,
                        &old.codec,
                        &new.pack,
                        &new.offset,
                        &new.stored_len,
                        &new.raw_len,
                        &new.codec,
                    ],
                )
                .await
            })?;
        }
        Ok(n)
    }

    fn for_each_loc(&self, f: &mut dyn FnMut(&Hash, Result<ChunkLoc>) -> Result<()>) -> Result<()> {
        self.walk(
            "cannot walk the chunk table of the index at",
            &format!("SELECT c.id, {LOC_COLUMNS} FROM chunks c ORDER BY c.id"),
            WALK,
            &mut |r| f(&hash_of(r.get(0))?, loc_of(r, 1)),
        )
    }

    fn totals(&self) -> Result<Option<ChunkTotals>> {
        let ((chunks, raw, stored), (deltas, delta_raw, delta_stored)) = self.run(
            true,
            "cannot read the chunk totals in the index at",
            async |c| {
                let r = c.query_one(schema::READ_TOTALS, &[]).await?;
                if r.get::<_, i64>(3) > schema::FOLD_PAST {
                    c.execute(schema::FOLD_TOTALS, &[]).await?;
                }
                // Deltas are few; the partial index on `base` finds them without a scan.
                let d = c.query_one(schema::READ_DELTA_TOTALS, &[]).await?;
                Ok((
                    (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
                    (d.get::<_, i64>(0), d.get::<_, i64>(1), d.get::<_, i64>(2)),
                ))
            },
        )?;
        Ok(Some(ChunkTotals {
            chunks: chunks.max(0) as u64,
            raw_bytes: raw.max(0) as u64,
            encoded_bytes: stored.max(0) as u64,
            deltas: deltas.max(0) as u64,
            delta_raw_bytes: delta_raw.max(0) as u64,
            delta_encoded_bytes: delta_stored.max(0) as u64,
        }))
    }

    fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        if let Some(log) = &self.log {
            log.put_page(hash, bytes)?;
        }
        self.run(
            true,
            "cannot store a manifest page in the index at",
            async |c| {
                // Revive the page first (see `gc.rs`): a sweep then either spares it or has
                // removed it before this insert runs.
                let key = &hash.as_bytes()[..];
                let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&key, &bytes];
                let revive = c.execute(
                    "DELETE FROM condemned WHERE kind = 1 AND id = $1",
                    &params[..1],
                );
                let insert = c.execute(
                    "INSERT INTO pages (hash, bytes) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                    params,
                );
                tokio::try_join!(revive, insert).map(drop)
            },
        )
    }

    fn get_page(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        self.run(
            true,
            "cannot read a manifest page from the index at",
            async |c| {
                let row = c
                    .query_opt(
                        "SELECT bytes FROM pages WHERE hash = $1",
                        &[&&hash.as_bytes()[..]],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            },
        )
    }

    fn page_hashes(&self) -> Result<Vec<Hash>> {
        let rows = self.run(
            true,
            "cannot list manifest pages in the index at",
            async |c| c.query("SELECT hash FROM pages ORDER BY hash", &[]).await,
        )?;
        rows.iter().map(|r| hash_of(r.get(0))).collect()
    }

    fn remove_pages(&self, hashes: &[Hash]) -> Result<()> {
        if let Some(log) = &self.log {
            log.delete_pages(hashes)?;
        }
        for part in hashes.chunks(BATCH) {
            let arr = id_array(part);
            self.run(
                true,
                "cannot remove manifest pages from the index at",
                async |c| {
                    c.execute("DELETE FROM pages WHERE hash = ANY($1)", &[&arr])
                        .await
                },
            )?;
        }
        Ok(())
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        let bytes = manifest.encode();
        if let Some(log) = &self.log {
            log.put_manifest(&manifest.file_id, &bytes)?;
        }
        let id = &manifest.file_id.as_bytes()[..];
        self.run(true, "cannot store a manifest in the index at", async |c| {
            c.execute(
                "INSERT INTO files (file_id, manifest) VALUES ($1, $2) \
                 ON CONFLICT (file_id) DO UPDATE SET manifest = excluded.manifest",
                &[&id, &bytes],
            )
            .await
        })
        .map(drop)
    }

    fn get_manifest(&self, file_id: &Hash) -> Result<Option<Manifest>> {
        let id = &file_id.as_bytes()[..];
        let bytes: Option<Vec<u8>> = self.run(
            true,
            "cannot read a manifest from the index at",
            async |c| {
                let row = c
                    .query_opt("SELECT manifest FROM files WHERE file_id = $1", &[&id])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            },
        )?;
        bytes.map(|b| Manifest::decode(&b)).transpose()
    }

    fn file_ids_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Hash>> {
        let rows = self.run(true, "cannot list files in the index at", async |c| {
            c.query(
                "SELECT file_id FROM files \
                 WHERE substring(file_id FROM 1 FOR length($1::bytea)) = $1 ORDER BY file_id",
                &[&prefix],
            )
            .await
        })?;
        rows.iter().map(|r| hash_of(r.get(0))).collect()
    }

    fn manifests(&self) -> Result<Vec<Manifest>> {
        let rows = self.run(true, "cannot list files in the index at", async |c| {
            c.query("SELECT manifest FROM files ORDER BY file_id", &[])
                .await
        })?;
        rows.iter().map(|r| Manifest::decode(r.get(0))).collect()
    }

    fn remove_manifest(&self, file_id: &Hash) -> Result<bool> {
        if let Some(log) = &self.log {
            log.delete_manifest(file_id)?;
        }
        let id = &file_id.as_bytes()[..];
        let n = self.run(
            false,
            "cannot remove a manifest from the index at",
            async |c| {
                c.execute("DELETE FROM files WHERE file_id = $1", &[&id])
                    .await
            },
        )?;
        Ok(n > 0)
    }

    fn push_name(&self, name: &str, version: NameVersion) -> Result<NameRecord> {
        let (_, new) = self.change_name(name, false, |mut rec| {
            rec.versions.push(version.clone());
            Some(rec)
        })?;
        Ok(new.unwrap_or_default())
    }

    fn get_name(&self, name: &str) -> Result<Option<NameRecord>> {
        let rows = self.run(true, "cannot read a name from the index at", async |c| {
            c.query(
                "SELECT file_id, size, added FROM name_versions WHERE name = $1 ORDER BY version",
                &[&name],
            )
            .await
        })?;
        record_of(&rows)
    }

    fn names(&self) -> Result<Vec<(String, NameRecord)>> {
        let rows = self.run(true, "cannot list names in the index at", async |c| {
            c.query(
                "SELECT name, file_id, size, added FROM name_versions ORDER BY name, version",
                &[],
            )
            .await
        })?;
        let mut out: Vec<(String, NameRecord)> = Vec::new();
        for r in &rows {
            let name: &str = r.get(0);
            let v = version_of(r, 1)?;
            match out.last_mut() {
                Some((last, rec)) if last == name => rec.versions.push(v),
                _ => out.push((name.to_owned(), NameRecord { versions: vec![v] })),
            }
        }
        Ok(out)
    }

    fn remove_name(&self, name: &str) -> Result<Option<NameRecord>> {
        let (old, _) = self.change_name(name, false, |_| Some(NameRecord::default()))?;
        Ok(old)
    }

    fn put_name(&self, name: &str, record: &NameRecord) -> Result<()> {
        self.change_name(name, true, |_| Some(record.clone()))
            .map(drop)
    }

    fn put_upload(&self, kind: UploadKind, id: &[u8; 16], record: &[u8]) -> Result<()> {
        self.run(true, "cannot record an upload in the index at", async |c| {
            c.execute(
                "INSERT INTO uploads (kind, id, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, id) DO UPDATE SET record = excluded.record",
                &[&kind_code(kind), &&id[..], &record],
            )
            .await
        })
        .map(drop)
    }

    fn add_session_bytes(&self, id: &[u8; 16], n: u64) -> Result<()> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // Not run twice on a broken connection: a count may be lost, never doubled.
        self.run(
            false,
            "cannot count an upload's bytes in the index at",
            async |c| {
                c.execute(
                    "UPDATE uploads SET sent = sent + $3 WHERE kind = $1 AND id = $2",
                    &[&kind_code(UploadKind::Session), &&id[..], &n],
                )
                .await
                .map(drop)
            },
        )
    }

    fn session_bytes(&self, id: &[u8; 16]) -> Result<Option<u64>> {
        let sent: Option<i64> =
            self.run(true, "cannot read an upload from the index at", async |c| {
                let row = c
                    .query_opt(
                        "SELECT sent FROM uploads WHERE kind = $1 AND id = $2",
                        &[&kind_code(UploadKind::Session), &&id[..]],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })?;
        Ok(Some(sent.unwrap_or(0).max(0) as u64))
    }

    fn get_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
        self.run(true, "cannot read an upload from the index at", async |c| {
            let row = c
                .query_opt(
                    "SELECT record FROM uploads WHERE kind = $1 AND id = $2",
                    &[&kind_code(kind), &&id[..]],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn uploads(&self, kind: UploadKind) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        let rows = self.run(true, "cannot list uploads in the index at", async |c| {
            c.query(
                "SELECT id, record FROM uploads WHERE kind = $1 ORDER BY id",
                &[&kind_code(kind)],
            )
            .await
        })?;
        // Ids are 16 bytes; anything else is not an upload record.
        Ok(rows
            .iter()
            .filter_map(|r| Some((<[u8; 16]>::try_from(r.get::<_, &[u8]>(0)).ok()?, r.get(1))))
            .collect())
    }

    fn delete_upload(&self, kind: UploadKind, id: &[u8; 16]) -> Result<()> {
        self.run(
            true,
            "cannot remove an upload from the index at",
            async |c| {
                c.execute(
                    "DELETE FROM uploads WHERE kind = $1 AND id = $2",
                    &[&kind_code(kind), &&id[..]],
                )
                .await
            },
        )
        .map(drop)
    }

    fn tail(&self, id: &[u8; 16]) -> Result<Option<TailRun>> {
        self.run(
            true,
            "cannot read a tus tail from the index at",
            async |c| {
                let row = c
                    .query_opt(
                        "SELECT position, bytes, meta FROM tus_tails WHERE id = $1",
                        &[&&id[..]],
                    )
                    .await?;
                Ok(row.map(|r| TailRun {
                    position: r.get::<_, i64>(0) as u64,
                    bytes: r.get(1),
                    meta: r.get(2),
                }))
            },
        )
    }

    fn write_tail(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        let (keep, pos) = (keep_from as i64, position as i64);
        // Continue the run if it ends at `position`, else start a new one there; then drop
        // what lies before `keep_from` (never past the run's end). The bytes already stored
        // stay in the database: only the new ones cross.
        self.run(
            false,
            "cannot write a tus tail to the index at",
            async |c| {
                c.execute(
                    "INSERT INTO tus_tails AS t (id, position, bytes, meta) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET \
                   bytes = CASE WHEN t.position + length(t.bytes) = $2 \
                           THEN t.bytes || excluded.bytes ELSE excluded.bytes END, \
                   position = CASE WHEN t.position + length(t.bytes) = $2 \
                              THEN t.position ELSE $2 END, \
                   meta = excluded.meta",
                    &[&&id[..], &pos, &bytes, &meta],
                )
                .await?;
                c.execute(
                    "UPDATE tus_tails SET \
                   bytes = substring(bytes FROM (least($2, position + length(bytes)) \
                                                 - position + 1)::int4), \
                   position = least($2, position + length(bytes)) \
                 WHERE id = $1 AND $2 > position",
                    &[&&id[..], &keep],
                )
                .await
            },
        )
        .map(drop)
    }

    fn forget_tail(&self, id: &[u8; 16]) -> Result<()> {
        self.run(
            true,
            "cannot remove a tus tail from the index at",
            async |c| {
                c.execute("DELETE FROM tus_tails WHERE id = $1", &[&&id[..]])
                    .await
            },
        )
        .map(drop)
    }

    fn check_progress(&self) -> Option<Vec<u8>> {
        self.run(
            true,
            "cannot read the chunk check's progress from the index at",
            async |c| {
                let row = c
                    .query_opt("SELECT value FROM hoard_state WHERE key = 'fsck'", &[])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            },
        )
        .ok()
        .flatten()
    }

    fn check_log(&self, repair: bool) -> Result<Option<JournalCheck>> {
        match &self.log {
            Some(log) => self.check_bucket(log, repair).map(Some),
            None => Ok(None),
        }
    }

    fn compact_log(&self) -> Result<()> {
        if let Some(log) = &self.log {
            log.tidy_names()?;
        }
        Ok(())
    }

    fn save_check_progress(&self, progress: Option<&[u8]>) -> Result<()> {
        self.run(
            true,
            "cannot save the chunk check's progress in the index at",
            async |c| match progress {
                Some(v) => {
                    c.execute(
                        "INSERT INTO hoard_state (key, value) VALUES ('fsck', $1) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&v],
                    )
                    .await
                }
                None => {
                    c.execute("DELETE FROM hoard_state WHERE key = 'fsck'", &[])
                        .await
                }
            },
        )
        .map(drop)
    }
}
