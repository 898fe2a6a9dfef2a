//! The sled index: which chunks exist and where, manifests, names, and the store's meta.
//!
//! Trees (keys are raw bytes, values are versioned bincode records, see `record.rs`):
//!
//! | tree     | key             | value                                  |
//! |----------|-----------------|----------------------------------------|
//! | `chunks` | chunk id (32 B) | [`ChunkLoc`] (pack, offset, lengths)   |
//! | `files`  | file id (32 B)  | [`Manifest`] header                    |
//! | `pages`  | page hash (32B) | encoded manifest page                  |
//! | `names`  | name (UTF-8)    | [`NameRecord`] (versions, oldest first)|
//! | `meta`   | `"config"`, `"format"`, `"created"` | store-wide settings  |
//!
//! sled's page cache is capped (its default of 1 GiB alone would break the memory budget).

use std::path::Path;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::record;
use crate::store::NameRecord;
use crate::store::pack::ChunkLoc;

/// Version of the store layout as a whole (meta key `format`).
pub const STORE_FORMAT: u8 = 1;
/// Version byte of `chunks`, `names` and `meta` records.
const RECORD_VERSION: u8 = 1;
/// sled page cache = 8 MiB.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Handles to the sled database and its trees (all cheap `Clone`s).
#[derive(Clone)]
pub struct Index {
    pub(crate) db: sled::Db,
    pub(crate) chunks: sled::Tree,
    pub(crate) files: sled::Tree,
    pub(crate) pages: sled::Tree,
    pub(crate) names: sled::Tree,
    pub(crate) meta: sled::Tree,
}

impl Index {
    /// Opens (or creates) the index at `path`.
    ///
    /// # Errors
    /// [`Error::Locked`] if another process holds it; sled errors otherwise.
    pub fn open(path: &Path, store_root: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    Error::Locked(store_root.to_owned())
                }
                sled::Error::Io(io) => Error::io("cannot open index", path)(io),
                other => Error::Index(other),
            })?;
        Ok(Index {
            chunks: db.open_tree("chunks")?,
            files: db.open_tree("files")?,
            pages: db.open_tree("pages")?,
            names: db.open_tree("names")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The stored config, if the store was initialised.
    ///
    /// # Errors
    /// Index errors, or a format this build does not know.
    pub fn config(&self) -> Result<Option<StoreConfig>> {
        if let Some(v) = self.meta.get("format")? {
            let found = v.first().copied().unwrap_or(0);
            if found != STORE_FORMAT {
                return Err(Error::Version {
                    what: "store",
                    found: found.into(),
                    expected: STORE_FORMAT.into(),
                });
            }
        }
        self.meta
            .get("config")?
            .map(|v| record::decode("store config", RECORD_VERSION, &v))
            .transpose()
    }

    /// Records the config at creation; durable on return.
    ///
    /// # Errors
    /// Index errors.
    pub fn init(&self, config: &StoreConfig) -> Result<()> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut b = sled::Batch::default();
        b.insert("format", &[STORE_FORMAT]);
        b.insert("config", record::encode(RECORD_VERSION, config));
        b.insert("created", record::encode(RECORD_VERSION, &created));
        self.meta.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// Decodes a `chunks` value.
    ///
    /// # Errors
    /// On damage.
    pub fn decode_loc(bytes: &[u8]) -> Result<ChunkLoc> {
        record::decode("chunk location", RECORD_VERSION, bytes)
    }

    /// Encodes a `chunks` value.
    pub fn encode_loc(loc: &ChunkLoc) -> Vec<u8> {
        record::encode(RECORD_VERSION, loc)
    }

    /// Where chunk `id` is, if indexed.
    ///
    /// # Errors
    /// Index errors or a damaged record.
    pub fn loc(&self, id: &Hash) -> Result<Option<ChunkLoc>> {
        self.chunks
            .get(id.as_bytes())?
            .map(|v| Self::decode_loc(&v))
            .transpose()
    }

    /// Decodes a `names` value.
    ///
    /// # Errors
    /// On damage.
    pub fn decode_name(bytes: &[u8]) -> Result<NameRecord> {
        record::decode("name record", RECORD_VERSION, bytes)
    }

    /// Encodes a `names` value.
    pub fn encode_name(rec: &NameRecord) -> Vec<u8> {
        record::encode(RECORD_VERSION, rec)
    }
}
