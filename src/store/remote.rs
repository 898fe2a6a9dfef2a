//! A store that outlives one machine: a [`PackedStore`] of [`BucketPacks`] (pack objects in an
//! S3-compatible bucket) and a [`PgCatalog`] (the catalog in PostgreSQL). Everything above the
//! seams — the writer and its group commit, reads, compaction, the chunk check — is the same
//! code as a local store's.
//!
//! ```text
//! s3://BUCKET/PREFIX/hoard-store.json   what the store was made with (below)
//! s3://BUCKET/PREFIX/packs/{n:016x}.pack pack objects, immutable, under fresh random names
//! s3://BUCKET/PREFIX/meta/…              manifest pages, manifests, names (bucket_meta.rs)
//! postgres://…/DB                        the catalog (see pg/schema.rs)
//! ```
//!
//! The packs and `meta/` are enough to rebuild a lost catalog: [`RemoteStore::open_for_repair`]
//! loads the metadata, and fsck's repair re-indexes the packs (each entry names its chunk).
//!
//! `hoard-store.json` (version 1) is written once, when the store is made, and never replaced:
//! `{"hoard_store": 1, "min": …, "avg": …, "max": …, "level": …, "created": SECONDS}`, and
//! `"delta": true` for a store that keeps delta chunks (absent: false). Every
//! open reads it (one request, which also shows at once whether the endpoint answers and
//! takes the credentials) and checks it against the catalog, so an index is never used with
//! another store's bucket.

use serde::{Deserialize, Serialize};

use crate::config::{ChunkerParams, StoreConfig};
use crate::error::{Error, Result};
use crate::store::bucket::BucketPacks;
use crate::store::packed::PackedStore;
use crate::store::pg::{PgCatalog, Rebuild};

/// The object that says a prefix holds a hoard store.
pub const MARKER: &str = "hoard-store.json";
/// Format version of [`MARKER`].
const MARKER_VERSION: u32 = 1;

/// A store in a bucket, with its catalog in PostgreSQL.
pub type RemoteStore = PackedStore<BucketPacks, PgCatalog>;

/// The contents of [`MARKER`].
#[derive(Serialize, Deserialize)]
struct Marker {
    hoard_store: u32,
    min: u32,
    avg: u32,
    max: u32,
    level: i32,
    created: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    delta: bool,
}

impl Marker {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            chunker: ChunkerParams {
                min: self.min,
                avg: self.avg,
                max: self.max,
            },
            level: self.level,
            delta: self.delta,
        }
    }
}

impl PackedStore<BucketPacks, PgCatalog> {
    /// Opens the store whose packs are at `bucket` (`s3://BUCKET[/PREFIX]`) and whose catalog
    /// is the database at `index` (`postgres://…`). With `create`, a store that does not exist
    /// yet is made (with `requested`, or the default params). Returns the store and whether
    /// it was made just now.
    ///
    /// # Errors
    /// [`Error::Engine`] when the bucket or the database cannot be reached or refuses,
    /// [`Error::NoStore`] without `create`, [`Error::ParamsMismatch`], or an index and a bucket
    /// that belong to different stores.
    pub fn open(
        bucket: &str,
        index: &str,
        create: bool,
        requested: Option<StoreConfig>,
    ) -> Result<(Self, bool)> {
        let packs = BucketPacks::open(bucket)?;
        let marker = match packs.get(MARKER)? {
            Some(bytes) => Some(decode_marker(bucket, &bytes)?),
            None => None,
        };
        // A bucket that holds a store is never given a new, empty catalog: gc would take
        // every pack in it for garbage. Its lost catalog is rebuilt from the bucket instead.
        let (catalog, created) =
            match PgCatalog::open(index, packs.url(), create && marker.is_none(), requested) {
                Err(Error::NoStore(_)) if marker.is_some() => {
                    return Err(Error::IndexDamaged {
                        root: bucket.into(),
                        what: "index",
                        detail: "the index database holds no store, but the bucket does".into(),
                    });
                }
                other => other?,
            };
        let config = crate::store::Catalog::config(&catalog);
        match marker {
            Some(m) if m.config() != config => {
                return Err(Error::InvalidParams(format!(
                    "the bucket {bucket} holds a store made with {}, but the index {} says {config}: \
                     they belong to different stores",
                    m.config(),
                    catalog.at()
                )));
            }
            Some(_) => {
                if catalog.rebuild_state()?.is_some() {
                    return Err(Error::IndexDamaged {
                        root: bucket.into(),
                        what: "index",
                        detail: "a rebuild of the index from the bucket started and did not finish"
                            .into(),
                    });
                }
            }
            // A new store, or one whose marker write was cut short: write it now.
            None => {
                let m = Marker {
                    hoard_store: MARKER_VERSION,
                    min: config.chunker.min,
                    avg: config.chunker.avg,
                    max: config.chunker.max,
                    level: config.level,
                    created: crate::unix_now(),
                    delta: config.delta,
                };
                let bytes = serde_json::to_vec(&m).expect("a marker serializes");
                packs.put_new(MARKER, bytes)?;
            }
        }
        let mut catalog = catalog;
        catalog.write_ahead_to(packs.meta());
        Ok((PackedStore::new(packs, catalog), created))
    }

    /// Opens the store for `fsck --repair`. An index database that holds no store (it was
    /// lost, or is new), one whose rebuild did not finish, or any with `rebuild`, is emptied
    /// and loaded from the bucket's copy of the metadata; the packs are then to be
    /// re-indexed ([`RemoteStore::needs_reindex`]). Returns notes on what was done, and
    /// whether the rebuilt index may lack files (damaged metadata objects were skipped): a
    /// repair must then drop nothing.
    ///
    /// # Errors
    /// As [`RemoteStore::open`]; [`Error::NoStore`] for a bucket that holds no store.
    pub fn open_for_repair(
        bucket: &str,
        index: &str,
        rebuild: bool,
    ) -> Result<(Self, Vec<String>, bool)> {
        let packs = BucketPacks::open(bucket)?;
        let Some(marker) = packs.get(MARKER)? else {
            return Err(Error::NoStore(bucket.into()));
        };
        let config = decode_marker(bucket, &marker)?.config();
        let (mut catalog, created) = PgCatalog::open(index, packs.url(), true, Some(config))?;
        let mut notes = Vec::new();
        let mut partial = false;
        if rebuild || created || catalog.rebuild_state()? == Some(Rebuild::Metadata) {
            catalog.begin_rebuild()?;
            let loaded = catalog.load_from(&packs.meta())?;
            catalog.set_rebuild_state(Some(Rebuild::Chunks))?;
            notes.push(format!(
                "rebuilt the index {} from the bucket: {} records{}; re-indexing the packs",
                catalog.at(),
                loaded.records,
                if loaded.damaged > 0 {
                    format!(", {} damaged objects skipped", loaded.damaged)
                } else {
                    String::new()
                }
            ));
            if loaded.damaged > 0 {
                partial = true;
                notes.push(
                    "the bucket's metadata is damaged, so files may be missing from the rebuilt \
                     index: names are kept as they are; check `hoard ls` before running gc"
                        .into(),
                );
            }
        }
        catalog.write_ahead_to(packs.meta());
        Ok((PackedStore::new(packs, catalog), notes, partial))
    }

    /// True if the catalog was rebuilt from the bucket and a repair has not yet re-indexed
    /// the packs.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn needs_reindex(&self) -> Result<bool> {
        Ok(self.catalog().rebuild_state()? == Some(Rebuild::Chunks))
    }

    /// Notes that the packs were re-indexed (clears [`RemoteStore::needs_reindex`]).
    ///
    /// # Errors
    /// Catalog errors.
    pub fn reindexed(&self) -> Result<()> {
        self.catalog().set_rebuild_state(None)
    }
}

fn decode_marker(bucket: &str, bytes: &[u8]) -> Result<Marker> {
    let m: Marker = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        what: "store marker",
        detail: format!("{bucket}/{MARKER}: {e}"),
    })?;
    if m.hoard_store != MARKER_VERSION {
        return Err(Error::Version {
            what: "the bucket's store marker",
            found: m.hoard_store,
            expected: MARKER_VERSION,
        });
    }
    Ok(m)
}
