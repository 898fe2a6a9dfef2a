//! The bucket's copy of the catalog's metadata — manifest pages, manifests and names — as
//! immutable objects beside the packs, so that the bucket alone is enough to rebuild a lost
//! index database (`hoard fsck --repair --rebuild-index`), as a directory store's journal is.
//! Upload records and tus tails are not copied: they are transient, and clients open them
//! again.
//!
//! ```text
//! PREFIX/meta/pages/{hash}.page                     an encoded manifest page; BLAKE3 = hash
//! PREFIX/meta/files/{file_id}.manifest              an encoded manifest (versioned itself)
//! PREFIX/meta/names/{BLAKE3(name)}/{gen:016x}.name  a name's whole history after a change
//! ```
//!
//! A name object is JSON, version 1: `{"hoard_name": 1, "name": "…", "versions": [{"file_id":
//! "HEX", "size": N, "added": SECONDS}, …]}`, oldest version first; no versions means the
//! name was removed. `gen` comes from the database's `name_gen` sequence, taken under the
//! name's lock inside the transaction that changes the name, so a name's newest object holds
//! its last change. gc deletes the older generations ([`BucketMeta::tidy_names`]).
//!
//! Order, which makes the copy safe to rebuild from: an object is written before the catalog
//! records what it holds, and deleted before the catalog forgets it. A crash therefore leaves
//! at most the writes that were in flight out of step, and fsck counts a difference younger
//! than [`IN_FLIGHT`] as such a write rather than as damage. Page and manifest keys are
//! content addresses (the same key always holds the same bytes); a name object's key is used
//! once.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::bucket::{CONCURRENT_READS, Inner};
use crate::store::engine::wait;
use crate::store::{NameRecord, NameVersion};

/// A difference between the bucket and the catalog younger than this (seconds) may be a
/// write in flight, and is not counted.
pub const IN_FLIGHT: u64 = 600;
/// Format version of a name object.
const NAME_VERSION: u32 = 1;

/// The metadata objects of one store.
pub struct BucketMeta {
    inner: Arc<Inner>,
}

/// One listed object: what it is named for, and when it was written (Unix seconds).
#[derive(Clone, Debug)]
pub struct Listed {
    /// The page hash, file id, or BLAKE3 of the name.
    pub id: Hash,
    /// A name object's generation (0 for pages and manifests).
    pub generation: u64,
    /// When the object was written.
    pub modified: u64,
    key: Key,
}

/// Every metadata object in the bucket.
#[derive(Debug, Default)]
pub struct Listing {
    /// Manifest pages, by hash.
    pub pages: Vec<Listed>,
    /// Manifests, by file id.
    pub files: Vec<Listed>,
    /// Name objects, every generation.
    pub names: Vec<Listed>,
}

impl Listing {
    /// The newest object of each name, and the older generations (which gc deletes).
    pub fn newest_names(&self) -> (Vec<&Listed>, Vec<&Listed>) {
        let mut newest: HashMap<Hash, &Listed> = HashMap::new();
        let mut older = Vec::new();
        for l in &self.names {
            match newest.get(&l.id) {
                Some(n) if n.generation >= l.generation => older.push(l),
                Some(n) => {
                    older.push(n);
                    newest.insert(l.id, l);
                }
                None => {
                    newest.insert(l.id, l);
                }
            }
        }
        let mut newest: Vec<&Listed> = newest.into_values().collect();
        newest.sort_by_key(|l| l.id);
        (newest, older)
    }
}

#[derive(Serialize, Deserialize)]
struct NameObject {
    hoard_name: u32,
    name: String,
    versions: Vec<NameVersion>,
}

impl BucketMeta {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        BucketMeta { inner }
    }

    fn page_key(&self, hash: &Hash) -> Key {
        self.inner.key(&format!("meta/pages/{hash}.page"))
    }

    fn file_key(&self, file_id: &Hash) -> Key {
        self.inner.key(&format!("meta/files/{file_id}.manifest"))
    }

    fn name_key(&self, name: &str, generation: u64) -> Key {
        let h = Hash::of(name.as_bytes());
        self.inner
            .key(&format!("meta/names/{h}/{generation:016x}.name"))
    }

    async fn put(&self, key: Key, bytes: Vec<u8>) -> Result<()> {
        let i = &self.inner;
        i.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| i.error("cannot write", &key, e))
    }

    /// Writes a manifest page's object.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn put_page(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        wait(self.put(self.page_key(hash), bytes.to_vec()))?
    }

    /// Writes a manifest's object.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn put_manifest(&self, file_id: &Hash, bytes: &[u8]) -> Result<()> {
        wait(self.put(self.file_key(file_id), bytes.to_vec()))?
    }

    /// Writes generation `generation` of `name`'s history (empty: the name was removed).
    ///
    /// # Errors
    /// The bucket's errors.
    pub async fn put_name(&self, name: &str, generation: u64, record: &NameRecord) -> Result<()> {
        let body = NameObject {
            hoard_name: NAME_VERSION,
            name: name.to_owned(),
            versions: record.versions.clone(),
        };
        let bytes = serde_json::to_vec(&body).expect("a name object serializes");
        self.put(self.name_key(name, generation), bytes).await
    }

    /// Deletes manifest pages' objects.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn delete_pages(&self, hashes: &[Hash]) -> Result<()> {
        self.delete(hashes.iter().map(|h| self.page_key(h)).collect())
    }

    /// Deletes a manifest's object.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn delete_manifest(&self, file_id: &Hash) -> Result<()> {
        self.delete(vec![self.file_key(file_id)])
    }

    /// Deletes listed objects (older name generations).
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn delete_listed(&self, listed: &[&Listed]) -> Result<()> {
        self.delete(listed.iter().map(|l| l.key.clone()).collect())
    }

    fn delete(&self, keys: Vec<Key>) -> Result<()> {
        self.inner.delete(keys)
    }

    /// Every metadata object, sorted by id (and generation).
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn list(&self) -> Result<Listing> {
        let i = &self.inner;
        let prefix = i.key("meta");
        let metas: Vec<object_store::ObjectMeta> = wait(i.store.list(Some(&prefix)).try_collect())?
            .map_err(|e| i.error("cannot list", &prefix, e))?;
        let mut out = Listing::default();
        for m in metas {
            let parts: Vec<_> = m.location.parts().collect();
            let n = parts.len();
            let modified = m.last_modified.timestamp().max(0) as u64;
            let listed = |id: &str, generation| {
                Some(Listed {
                    id: id.parse().ok()?,
                    generation,
                    modified,
                    key: m.location.clone(),
                })
            };
            // Keys of another shape (nothing hoard wrote) are left alone.
            let tail = |k: usize| parts.get(n.wrapping_sub(k)).map(AsRef::as_ref);
            let found = match (tail(4), tail(3), tail(2), tail(1)) {
                (Some("meta"), Some("names"), Some(id), Some(file)) => file_generation(file)
                    .and_then(|g| listed(id, g))
                    .map(|l| (&mut out.names, l)),
                (_, Some("meta"), Some("pages"), Some(file)) => file
                    .strip_suffix(".page")
                    .and_then(|h| listed(h, 0))
                    .map(|l| (&mut out.pages, l)),
                (_, Some("meta"), Some("files"), Some(file)) => file
                    .strip_suffix(".manifest")
                    .and_then(|h| listed(h, 0))
                    .map(|l| (&mut out.files, l)),
                _ => None,
            };
            if let Some((list, l)) = found {
                list.push(l);
            }
        }
        out.pages.sort_by_key(|l| l.id);
        out.files.sort_by_key(|l| l.id);
        out.names.sort_by_key(|l| (l.id, l.generation));
        Ok(out)
    }

    /// The bytes of listed objects, in order (`None` for one gone since it was listed).
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn read(&self, listed: &[&Listed]) -> Result<Vec<Option<bytes::Bytes>>> {
        let i = &self.inner;
        let gets = listed.iter().map(|l| async move {
            match i.store.get(&l.key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
            .map_err(|e| i.error("cannot read", &l.key, e))
        });
        wait(
            futures_util::stream::iter(gets)
                .buffered(CONCURRENT_READS)
                .try_collect(),
        )?
    }

    /// Decodes a name object read for `listed`: the name and its history.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an object hoard did not write, or of another name.
    pub fn decode_name(&self, listed: &Listed, bytes: &[u8]) -> Result<(String, NameRecord)> {
        let bad = |detail: String| Error::Malformed {
            what: "name object",
            detail: format!("{}: {detail}", self.inner.where_(&listed.key).display()),
        };
        let o: NameObject = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if o.hoard_name != NAME_VERSION {
            return Err(bad(format!("format version {}", o.hoard_name)));
        }
        if Hash::of(o.name.as_bytes()) != listed.id {
            return Err(bad(format!(
                "holds the name {:?}, not the one its key names",
                o.name
            )));
        }
        Ok((
            o.name,
            NameRecord {
                versions: o.versions,
            },
        ))
    }

    /// Deletes every name generation older than its name's newest, and the newest too where
    /// it only records a removal older than [`IN_FLIGHT`] (nothing older is left for it to
    /// overrule). Returns how many objects were deleted.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn tidy_names(&self) -> Result<u64> {
        let listing = self.list()?;
        let (newest, mut doomed) = listing.newest_names();
        let now = crate::unix_now();
        let old_newest: Vec<&Listed> = newest
            .into_iter()
            .filter(|l| l.modified + IN_FLIGHT < now)
            .collect();
        let bytes = self.read(&old_newest)?;
        for (l, b) in old_newest.iter().zip(bytes) {
            let removed = b.is_some_and(|b| {
                self.decode_name(l, &b)
                    .is_ok_and(|(_, r)| r.versions.is_empty())
            });
            if removed
                && !listing
                    .names
                    .iter()
                    .any(|o| o.id == l.id && o.generation < l.generation)
            {
                doomed.push(l);
            }
        }
        self.delete_listed(&doomed)?;
        Ok(doomed.len() as u64)
    }
}

/// The generation a name object's file name holds.
fn file_generation(file: &str) -> Option<u64> {
    let hex = file.strip_suffix(".name").filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}
