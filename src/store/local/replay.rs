//! The journal read back into the index: applied again after an unclean close (redo), replayed
//! into a fresh index (`fsck --repair --rebuild-index`), compared with the index (fsck), and
//! the snapshot of the index a journal is rewritten from.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::JournalCheck;
use crate::store::local::index::{Index, STORE_FORMAT, open_sled};
use crate::store::local::journal::{self, Change, Kind};

/// Builds a fresh sled index at `path` from the journal at `journal_path`.
pub(super) fn rebuild(path: &Path, journal_path: &Path) -> Result<journal::ReplayReport> {
    let db = open_sled(path, 8 << 20)?;
    let (report, config) = apply(&db, journal_path)?;
    if !config {
        return Err(Error::InvalidParams(format!(
            "the journal {} holds no store config: the index cannot be rebuilt from it",
            journal_path.display()
        )));
    }
    db.flush()?;
    Ok(report)
}

/// Applies every record of the journal at `journal_path` to `db`, in order; returns the
/// replay's report and whether a store config was among the records. Every record sets or
/// removes one key, so applying a journal to an index that already holds some of it leaves
/// exactly what the journal says for every key the journal names.
pub(super) fn apply(db: &sled::Db, journal_path: &Path) -> Result<(journal::ReplayReport, bool)> {
    let meta = db.open_tree("meta")?;
    let pages = db.open_tree("pages")?;
    let files = db.open_tree("files")?;
    let names = db.open_tree("names")?;
    let mut config = false;
    let report = journal::replay_changes(journal_path, |change| {
        match change {
            Change::Config(c) => {
                meta.insert("format", &[STORE_FORMAT])?;
                meta.insert("config", c)?;
                config = true;
            }
            Change::Page { hash, bytes } => {
                pages.insert(hash.as_bytes(), bytes)?;
            }
            Change::Manifest { file_id, bytes } => {
                files.insert(file_id.as_bytes(), bytes)?;
            }
            Change::Name { name, value } => {
                names.insert(name, value)?;
            }
            Change::NameRemoved(name) => {
                names.remove(name)?;
            }
            Change::ManifestRemoved(id) => {
                files.remove(id.as_bytes())?;
            }
            Change::PagesRemoved(hashes) => {
                for h in hashes {
                    pages.remove(h.as_bytes())?;
                }
            }
        }
        Ok(())
    })?;
    Ok((report, config))
}

/// Journal records that rebuild what `index` holds: config, pages, manifests, names (read
/// lazily: a large store's pages are never all in memory).
pub(super) fn snapshot(index: &Index) -> impl Iterator<Item = Result<(Kind, Vec<u8>)>> + use<> {
    let config = index
        .meta
        .get("config")
        .map_err(Error::from)
        .transpose()
        .map(|c| c.map(|c| (Kind::Config, c.to_vec())));
    let pages = index
        .pages
        .iter()
        .values()
        .map(|v| Ok((Kind::Page, v?.to_vec())));
    let files = index
        .files
        .iter()
        .values()
        .map(|v| Ok((Kind::Manifest, v?.to_vec())));
    let names = index.names.iter().map(|kv| {
        let (k, v) = kv?;
        let name = String::from_utf8_lossy(&k);
        Ok((Kind::Name, journal::name_payload(&name, &v)))
    });
    config.into_iter().chain(pages).chain(files).chain(names)
}

/// Compares the journal at `path` with `index` (the caller holds the journal's lock).
pub(super) fn compare(index: &Index, path: &Path) -> Result<JournalCheck> {
    let mut names: HashMap<String, Vec<u8>> = HashMap::new();
    let mut files: HashSet<Hash> = HashSet::new();
    let mut pages: HashSet<Hash> = HashSet::new();
    let replay = journal::replay_changes(path, |change| {
        match change {
            Change::Config(_) => {}
            Change::Page { hash, .. } => {
                pages.insert(hash);
            }
            Change::Manifest { file_id, .. } => {
                files.insert(file_id);
            }
            Change::Name { name, value } => {
                names.insert(name.to_owned(), value.to_vec());
            }
            Change::NameRemoved(name) => {
                names.remove(name);
            }
            Change::ManifestRemoved(id) => {
                files.remove(&id);
            }
            Change::PagesRemoved(hashes) => {
                for h in hashes {
                    pages.remove(&h);
                }
            }
        }
        Ok(())
    })?;
    let mut out = JournalCheck {
        records: replay.records,
        damaged: replay.damaged,
        stopped: replay.stopped,
        ..JournalCheck::default()
    };
    for kv in index.names.iter() {
        let (k, v) = kv?;
        let name = String::from_utf8_lossy(&k).into_owned();
        match names.remove(&name) {
            Some(j) if j == *v => {}
            Some(j) => {
                out.names_differ += 1;
                // The journal is ahead if it records a version the index lacks.
                let held = Index::decode_name(&v)
                    .map(|r| r.versions)
                    .unwrap_or_default();
                let recorded = Index::decode_name(&j)
                    .map(|r| r.versions)
                    .unwrap_or_default();
                if recorded.iter().any(|r| !held.contains(r)) {
                    out.index_lacks_names += 1;
                }
            }
            None => out.names_differ += 1,
        }
    }
    out.names_differ += names.len() as u64;
    out.index_lacks_names += names.len() as u64;
    // Counts keys of `tree` the journal lacks and takes them out of `set`, which is left
    // with what the index lacks.
    let differ = |tree: &sled::Tree, set: &mut HashSet<Hash>| -> Result<u64> {
        let mut n = 0;
        for k in tree.iter().keys() {
            let k = k?;
            if !Hash::from_slice(&k).is_some_and(|h| set.remove(&h)) {
                n += 1;
            }
        }
        Ok(n)
    };
    out.files_differ = differ(&index.files, &mut files)? + files.len() as u64;
    out.index_lacks_files = files.len() as u64;
    out.pages_differ = differ(&index.pages, &mut pages)? + pages.len() as u64;
    Ok(out)
}
