//! What the catalog does with the bucket's copy of its metadata (`bucket_meta.rs`): name
//! changes, which write their object inside the transaction that makes them; fsck's
//! comparison of the two, and its repair; and the rebuild of a lost database from the bucket.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::bucket_meta::{BucketMeta, IN_FLIGHT, Listed};
use crate::store::catalog::Catalog;
use crate::store::pg::PgCatalog;
use crate::store::pg::catalog::{id_array, record_of};
use crate::store::{JournalCheck, NameRecord};

/// The first key of a name's transaction lock (`pg_advisory_xact_lock(NAME_LOCK, hashtext(name))`).
const NAME_LOCK: i32 = 0x686f_6172;
/// Objects read and rows written per round trip while rebuilding or repairing.
const LOAD_BATCH: usize = 256;
/// `hoard_state` key of a rebuild from the bucket.
const REBUILD: &str = "rebuild";

/// How far a rebuild of the catalog from the bucket got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    /// Loading the metadata was started and did not finish: start again.
    Metadata,
    /// The metadata is in; the packs are still to be re-indexed (`fsck --repair`).
    Chunks,
}

/// What a rebuild loaded from the bucket.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loaded {
    /// Objects read and loaded.
    pub records: u64,
    /// Objects skipped because they are damaged (they do not hash or decode to their key).
    pub damaged: u64,
}

impl PgCatalog {
    /// Changes `name`'s history to what `f` makes of it (`None`: no change) in one
    /// transaction under the name's lock; the bucket's object for the new history is written
    /// inside it, before the commit. Removing a name that is not there changes nothing.
    /// Returns the history before and after.
    pub(super) fn change_name(
        &self,
        name: &str,
        again: bool,
        f: impl Fn(NameRecord) -> Option<NameRecord>,
    ) -> Result<(Option<NameRecord>, Option<NameRecord>)> {
        let log = self.log.as_ref();
        self.run(again, "cannot record a name in the index at", async |c| {
            let mut c = c;
            let tx = c.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&NAME_LOCK, &name],
            )
            .await?;
            let rows = tx
                .query(
                    "SELECT file_id, size, added FROM name_versions WHERE name = $1 ORDER BY version",
                    &[&name],
                )
                .await?;
            let old = match record_of(&rows) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let new = match f(old.clone().unwrap_or_default()) {
                Some(n) if !(old.is_none() && n.versions.is_empty()) => n,
                _ => return Ok(Ok((old, None))),
            };
            if let Some(log) = log {
                let generation: i64 = tx.query_one("SELECT nextval('name_gen')", &[]).await?.get(0);
                if let Err(e) = log.put_name(name, generation as u64, &new).await {
                    return Ok(Err(e));
                }
            }
            tx.execute("DELETE FROM name_versions WHERE name = $1", &[&name])
                .await?;
            let numbers: Vec<i32> = (1..=new.versions.len() as i32).collect();
            let ids = id_array(new.versions.iter().map(|v| &v.file_id));
            let sizes: Vec<i64> = new.versions.iter().map(|v| v.size as i64).collect();
            let added: Vec<i64> = new.versions.iter().map(|v| v.added as i64).collect();
            tx.execute(
                "INSERT INTO name_versions (name, version, file_id, size, added) \
                 SELECT $1, * FROM unnest($2::int4[], $3::bytea[], $4::int8[], $5::int8[])",
                &[&name, &numbers, &ids, &sizes, &added],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok((old, Some(new))))
        })?
    }

    /// How far an unfinished rebuild from the bucket got, if one is under way.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn rebuild_state(&self) -> Result<Option<Rebuild>> {
        let v: Option<Vec<u8>> = self.run(true, "cannot read the index at", async |c| {
            let row = c
                .query_opt("SELECT value FROM hoard_state WHERE key = $1", &[&REBUILD])
                .await?;
            Ok(row.map(|r| r.get(0)))
        })?;
        Ok(v.map(|v| match &v[..] {
            b"chunks" => Rebuild::Chunks,
            _ => Rebuild::Metadata,
        }))
    }

    /// Notes how far a rebuild got (`None`: it is finished).
    ///
    /// # Errors
    /// Catalog errors.
    pub fn set_rebuild_state(&self, state: Option<Rebuild>) -> Result<()> {
        let value: Option<&[u8]> = state.map(|s| match s {
            Rebuild::Metadata => &b"metadata"[..],
            Rebuild::Chunks => &b"chunks"[..],
        });
        self.run(
            true,
            "cannot write to the index at",
            async |c| match value {
                Some(v) => {
                    c.execute(
                        "INSERT INTO hoard_state (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&REBUILD, &v],
                    )
                    .await
                }
                None => {
                    c.execute("DELETE FROM hoard_state WHERE key = $1", &[&REBUILD])
                        .await
                }
            },
        )
        .map(drop)
    }

    /// Empties every table but the store's row, in one transaction that also marks the
    /// rebuild as started: a rebuild interrupted after this is started again, never used.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn begin_rebuild(&self) -> Result<()> {
        self.run(true, "cannot empty the index at", async |c| {
            let mut c = c;
            let tx = c.transaction().await?;
            tx.batch_execute(
                "SELECT nextval('chunk_removals'); \
                 TRUNCATE chunks, pages, files, name_versions, uploads, tus_tails, hoard_state, \
                          condemned",
            )
            .await?;
            tx.execute(
                "INSERT INTO hoard_state (key, value) VALUES ($1, 'metadata')",
                &[&REBUILD],
            )
            .await?;
            tx.commit().await
        })
    }

    /// Loads every manifest page, manifest and name the bucket's copy holds into the (empty)
    /// catalog, in batches; an object that does not hash or decode to its key is skipped and
    /// counted. Name generations continue after the newest found.
    ///
    /// # Errors
    /// Bucket or catalog errors.
    pub fn load_from(&self, meta: &BucketMeta) -> Result<Loaded> {
        let listing = meta.list()?;
        let mut out = Loaded::default();
        for part in listing.pages.chunks(LOAD_BATCH) {
            let refs: Vec<&Listed> = part.iter().collect();
            let pages = checked_pages(meta, &refs, &mut out)?;
            self.insert_pages(&pages)?;
        }
        for part in listing.files.chunks(LOAD_BATCH) {
            let refs: Vec<&Listed> = part.iter().collect();
            for m in checked_manifests(meta, &refs, &mut out)? {
                self.insert_manifest(&m.file_id, &m.encode())?;
            }
        }
        let (newest, _) = listing.newest_names();
        for part in newest.chunks(LOAD_BATCH) {
            for (l, bytes) in part.iter().zip(meta.read(part)?) {
                let Some(bytes) = bytes else { continue };
                match meta.decode_name(l, &bytes) {
                    Ok((name, rec)) => {
                        out.records += 1;
                        if !rec.versions.is_empty() {
                            self.change_name(&name, true, |_| Some(rec.clone()))?;
                        }
                    }
                    Err(_) => out.damaged += 1,
                }
            }
        }
        let top = listing
            .names
            .iter()
            .map(|l| l.generation)
            .max()
            .unwrap_or(0);
        if top > 0 {
            self.run(true, "cannot write to the index at", async |c| {
                c.execute("SELECT setval('name_gen', $1)", &[&(top as i64)])
                    .await
            })?;
        }
        Ok(out)
    }

    fn insert_pages(&self, pages: &[(Hash, bytes::Bytes)]) -> Result<()> {
        let hashes = id_array(pages.iter().map(|(h, _)| h));
        let bytes: Vec<&[u8]> = pages.iter().map(|(_, b)| &b[..]).collect();
        self.run(
            true,
            "cannot store manifest pages in the index at",
            async |c| {
                c.execute(
                "INSERT INTO pages (hash, bytes) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (hash) DO NOTHING",
                &[&hashes, &bytes],
            )
            .await
            },
        )
        .map(drop)
    }

    /// Records a manifest in the database only (the bucket has it).
    fn insert_manifest(&self, file_id: &Hash, bytes: &[u8]) -> Result<()> {
        let id = &file_id.as_bytes()[..];
        self.run(true, "cannot store a manifest in the index at", async |c| {
            c.execute(
                "INSERT INTO files (file_id, manifest) VALUES ($1, $2) ON CONFLICT (file_id) DO NOTHING",
                &[&id, &bytes],
            )
            .await
        })
        .map(drop)
    }

    /// Compares the bucket's copy of the metadata with the catalog both ways: pages and
    /// manifests in one and not the other, and each name's newest object against its
    /// history here. Differences younger than [`IN_FLIGHT`] are writes in flight and not
    /// counted. With `repair`, what only the bucket holds of pages and manifests is loaded
    /// here (it was written ahead of a commit that did not happen, and loses nothing), what
    /// only the catalog holds is written to the bucket, and a name whose bucket object
    /// differs gets a new one from the catalog — unless the bucket holds versions the catalog
    /// lacks: then the catalog is the side that may be behind, and only
    /// `--rebuild-index` settles it.
    ///
    /// A file or name written or removed while the check runs (between its listing of the
    /// bucket and its reads of the catalog) shows on one side only: without `repair`, when
    /// files or names differ, the check looks once more and counts only what differed both
    /// times (gc would otherwise refuse to run beside busy writers).
    pub(super) fn check_bucket(&self, meta: &BucketMeta, repair: bool) -> Result<JournalCheck> {
        let (first, seen) = self.check_bucket_once(meta, repair)?;
        if repair || seen.is_empty() {
            return Ok(first);
        }
        let (mut c, again) = self.check_bucket_once(meta, false)?;
        let both = |want: fn(&Differ) -> bool| {
            again
                .iter()
                .filter(|(k, d)| want(d) && seen.get(*k).is_some_and(want))
                .count() as u64
        };
        c.files_differ = both(|d| matches!(d, Differ::File { .. }));
        c.index_lacks_files = both(|d| {
            matches!(
                d,
                Differ::File {
                    catalog_lacks: true
                }
            )
        });
        c.names_differ = both(|d| matches!(d, Differ::Name { .. }));
        c.index_lacks_names = again
            .iter()
            .filter(|(k, _)| seen.contains_key(*k))
            .map(|(_, d)| match d {
                Differ::Name { lacks } => *lacks,
                Differ::File { .. } => 0,
            })
            .sum();
        Ok(c)
    }

    /// One look of [`PgCatalog::check_bucket`]; also returns each file and name that differed.
    fn check_bucket_once(
        &self,
        meta: &BucketMeta,
        repair: bool,
    ) -> Result<(JournalCheck, Differences)> {
        let mut differ = Differences::new();
        let now = crate::unix_now();
        let settled = |l: &&Listed| l.modified + IN_FLIGHT < now;
        let listing = meta.list()?;
        let mut c = JournalCheck::default();

        let db_pages: HashSet<Hash> = self.page_hashes()?.into_iter().collect();
        let in_bucket: HashSet<Hash> = listing.pages.iter().map(|l| l.id).collect();
        let bucket_only: Vec<&Listed> = listing
            .pages
            .iter()
            .filter(settled)
            .filter(|l| !db_pages.contains(&l.id))
            .collect();
        let db_only: Vec<Hash> = db_pages.difference(&in_bucket).copied().collect();
        c.pages_differ = (bucket_only.len() + db_only.len()) as u64;
        c.records += listing.pages.len() as u64;
        if repair {
            let mut loaded = Default::default();
            for part in bucket_only.chunks(LOAD_BATCH) {
                let pages = checked_pages(meta, part, &mut loaded)?;
                self.insert_pages(&pages)?;
            }
            c.damaged += loaded.damaged;
            for h in &db_only {
                if let Some(bytes) = self.get_page(h)? {
                    meta.put_page(h, &bytes)?;
                }
            }
        }

        let db_files: HashSet<Hash> = self.file_ids_with_prefix(&[])?.into_iter().collect();
        let in_bucket: HashSet<Hash> = listing.files.iter().map(|l| l.id).collect();
        let bucket_only: Vec<&Listed> = listing
            .files
            .iter()
            .filter(settled)
            .filter(|l| !db_files.contains(&l.id))
            .collect();
        let db_only: Vec<Hash> = db_files.difference(&in_bucket).copied().collect();
        c.files_differ = (bucket_only.len() + db_only.len()) as u64;
        for l in &bucket_only {
            differ.insert(
                (false, l.id),
                Differ::File {
                    catalog_lacks: true,
                },
            );
        }
        for id in &db_only {
            differ.insert(
                (false, *id),
                Differ::File {
                    catalog_lacks: false,
                },
            );
        }
        c.records += listing.files.len() as u64;
        if repair {
            let mut loaded = Default::default();
            for part in bucket_only.chunks(LOAD_BATCH) {
                for m in checked_manifests(meta, part, &mut loaded)? {
                    self.insert_manifest(&m.file_id, &m.encode())?;
                }
            }
            c.damaged += loaded.damaged;
            for id in &db_only {
                if let Some(m) = self.get_manifest(id)? {
                    meta.put_manifest(id, &m.encode())?;
                }
            }
        } else {
            c.index_lacks_files = bucket_only.len() as u64;
        }

        let db_names: HashMap<String, NameRecord> = self.names()?.into_iter().collect();
        let (newest, _) = listing.newest_names();
        let mut seen: HashSet<Hash> = HashSet::new();
        let mut rewrite: Vec<String> = Vec::new();
        for part in newest.chunks(LOAD_BATCH) {
            for (l, bytes) in part.iter().zip(meta.read(part)?) {
                seen.insert(l.id);
                let Some(bytes) = bytes else { continue };
                c.records += 1;
                let (name, rec) = match meta.decode_name(l, &bytes) {
                    Ok(n) => n,
                    Err(_) => {
                        c.damaged += 1;
                        continue;
                    }
                };
                let here = db_names.get(&name).cloned().unwrap_or_default();
                if here == rec || !settled(l) {
                    continue;
                }
                c.names_differ += 1;
                let lacks = rec
                    .versions
                    .iter()
                    .filter(|v| !here.versions.contains(v))
                    .count() as u64;
                differ.insert((true, l.id), Differ::Name { lacks });
                if lacks > 0 {
                    c.index_lacks_names += lacks;
                } else {
                    rewrite.push(name);
                }
            }
        }
        for name in db_names.keys() {
            let h = Hash::of(name.as_bytes());
            if !seen.contains(&h) {
                c.names_differ += 1;
                differ.insert((true, h), Differ::Name { lacks: 0 });
                rewrite.push(name.clone());
            }
        }
        if repair {
            for name in &rewrite {
                // The catalog's history, written anew (a new generation).
                self.change_name(name, true, Some)?;
            }
            if c.index_lacks_names == 0 {
                c.repaired = c.pages_differ + c.files_differ + c.names_differ;
            }
        }
        Ok((c, differ))
    }
}

/// The files (`false`, file id) and names (`true`, BLAKE3 of the name) that differed.
type Differences = HashMap<(bool, Hash), Differ>;

/// How a file or name differed between the bucket's copy and the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Differ {
    /// On one side only: the catalog's lacking it is the side that may be behind.
    File { catalog_lacks: bool },
    /// Its newest object and the catalog's history differ; `lacks`: versions the catalog
    /// does not have.
    Name { lacks: u64 },
}

/// The pages of `listed` that hash to their keys (the others counted as damaged).
fn checked_pages(
    meta: &BucketMeta,
    listed: &[&Listed],
    out: &mut Loaded,
) -> Result<Vec<(Hash, bytes::Bytes)>> {
    let mut pages = Vec::with_capacity(listed.len());
    for (l, bytes) in listed.iter().zip(meta.read(listed)?) {
        let Some(bytes) = bytes else { continue };
        if Hash::of(&bytes) == l.id {
            out.records += 1;
            pages.push((l.id, bytes));
        } else {
            out.damaged += 1;
        }
    }
    Ok(pages)
}

/// The manifests of `listed` that decode and carry the file id of their keys.
fn checked_manifests(
    meta: &BucketMeta,
    listed: &[&Listed],
    out: &mut Loaded,
) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::with_capacity(listed.len());
    for (l, bytes) in listed.iter().zip(meta.read(listed)?) {
        let Some(bytes) = bytes else { continue };
        match Manifest::decode(&bytes) {
            Ok(m) if m.file_id == l.id => {
                out.records += 1;
                manifests.push(m);
            }
            _ => out.damaged += 1,
        }
    }
    Ok(manifests)
}
