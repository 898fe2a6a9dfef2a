//! Which chunks a namespace may be told are stored, on a server that several namespaces share
//! (README "Sharing a server"): the chunks its own files reference and the chunks it sent
//! (their bytes checked against their ids: proof that it has them). The missing query, chunk
//! reads and session completion answer a namespace from this, never from what another
//! namespace stored; the store still keeps each chunk once.
//!
//! Kept in this server's memory, the first 16 bytes of each id, built from the namespace's
//! manifests the first time it is needed. A chunk another server received for the namespace
//! since is answered "missing" here, and costs one more upload.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::error::Result;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest};
use crate::names::View;
use crate::namespace::Namespace;
use crate::restore;
use crate::store::ChunkStore;

/// One namespace's chunks, once built.
type Set = Arc<RwLock<Option<HashSet<u128>>>>;

/// Every namespace's known chunks (see the module notes).
#[derive(Default)]
pub struct Known {
    sets: Mutex<HashMap<Namespace, Set>>,
}

/// What the set keeps of an id.
fn key(id: &Hash) -> u128 {
    u128::from_le_bytes(id.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// The chunks of `manifest`, each once.
///
/// # Errors
/// Index errors, missing or damaged pages.
pub fn refs_of(store: &dyn ChunkStore, manifest: &Manifest) -> Result<Vec<ChunkRef>> {
    let mut refs = Vec::with_capacity(manifest.chunk_count as usize);
    restore::for_each_page(store, manifest, |page| {
        refs.extend(page.chunks.iter().copied());
        Ok(())
    })?;
    refs.sort_unstable_by_key(|r| r.id);
    refs.dedup_by_key(|r| r.id);
    Ok(refs)
}

impl Known {
    /// `ns`'s set, built from its names' manifests if this is its first use.
    fn ready(&self, store: &dyn ChunkStore, ns: &Namespace) -> Result<Set> {
        let set = {
            let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
            sets.entry(ns.clone()).or_default().clone()
        };
        if set.read().unwrap_or_else(PoisonError::into_inner).is_some() {
            return Ok(set);
        }
        let mut slot = set.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let view = View {
                ns: ns.clone(),
                every_file: false,
            };
            let mut files: Vec<Hash> = view
                .names(store)?
                .iter()
                .flat_map(|(_, rec)| rec.versions.iter().map(|v| v.file_id))
                .collect();
            files.sort_unstable();
            files.dedup();
            let mut ids = HashSet::new();
            for file in files {
                if let Some(m) = store.get_manifest(&file)? {
                    restore::for_each_page(store, &m, |page| {
                        ids.extend(page.chunks.iter().map(|c| key(&c.id)));
                        Ok(())
                    })?;
                }
            }
            *slot = Some(ids);
        }
        drop(slot);
        Ok(set)
    }

    /// For each of `ids`, whether namespace `ns` may be told it is stored (it still has to be).
    ///
    /// # Errors
    /// Store errors building the set.
    pub fn knows(&self, store: &dyn ChunkStore, ns: &Namespace, ids: &[Hash]) -> Result<Vec<bool>> {
        let set = self.ready(store, ns)?;
        let set = set.read().unwrap_or_else(PoisonError::into_inner);
        let set = set.as_ref().expect("built");
        Ok(ids.iter().map(|id| set.contains(&key(id))).collect())
    }

    /// Notes that namespace `ns` sent (or its files reference) `ids`.
    ///
    /// # Errors
    /// Store errors building the set.
    pub fn add(&self, store: &dyn ChunkStore, ns: &Namespace, ids: &[Hash]) -> Result<()> {
        let set = self.ready(store, ns)?;
        let mut set = set.write().unwrap_or_else(PoisonError::into_inner);
        set.as_mut().expect("built").extend(ids.iter().map(key));
        Ok(())
    }
}
