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

/// What a journal record can do to a set of tables; the one match on [`Change`] is in
/// [`replay_into`], so the index (redo, rebuild) and fsck's comparison read a journal alike.
trait Tables {
    fn config(&mut self, value: &[u8]) -> Result<()>;
    fn page(&mut self, hash: Hash, bytes: &[u8]) -> Result<()>;
    fn manifest(&mut self, file_id: Hash, bytes: &[u8]) -> Result<()>;
    fn name(&mut self, name: &str, value: &[u8]) -> Result<()>;
    fn name_removed(&mut self, name: &str) -> Result<()>;
    fn manifest_removed(&mut self, file_id: Hash) -> Result<()>;
    fn page_removed(&mut self, hash: Hash) -> Result<()>;
}

/// Applies every record of the journal at `path` to `tables`, in order.
fn replay_into(path: &Path, tables: &mut dyn Tables) -> Result<journal::ReplayReport> {
    journal::replay_changes(path, |change| match change {
        Change::Config(c) => tables.config(c),
        Change::Page { hash, bytes } => tables.page(hash, bytes),
        Change::Manifest { file_id, bytes } => tables.manifest(file_id, bytes),
        Change::Name { name, value } => tables.name(name, value),
        Change::NameRemoved(name) => tables.name_removed(name),
        Change::ManifestRemoved(id) => tables.manifest_removed(id),
        Change::PagesRemoved(hashes) => hashes.into_iter().try_for_each(|h| tables.page_removed(h)),
    })
}

/// The sled trees a journal rebuilds.
struct Trees {
    meta: sled::Tree,
    pages: sled::Tree,
    files: sled::Tree,
    names: sled::Tree,
    config: bool,
}

impl Tables for Trees {
    fn config(&mut self, value: &[u8]) -> Result<()> {
        self.meta.insert("format", &[STORE_FORMAT])?;
        self.meta.insert("config", value)?;
        self.config = true;
        Ok(())
    }
    fn page(&mut self, hash: Hash, bytes: &[u8]) -> Result<()> {
        self.pages.insert(hash.as_bytes(), bytes)?;
        Ok(())
    }
    fn manifest(&mut self, file_id: Hash, bytes: &[u8]) -> Result<()> {
        self.files.insert(file_id.as_bytes(), bytes)?;
        Ok(())
    }
    fn name(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.names.insert(name, value)?;
        Ok(())
    }
    fn name_removed(&mut self, name: &str) -> Result<()> {
        self.names.remove(name)?;
        Ok(())
    }
    fn manifest_removed(&mut self, file_id: Hash) -> Result<()> {
        self.files.remove(file_id.as_bytes())?;
        Ok(())
    }
    fn page_removed(&mut self, hash: Hash) -> Result<()> {
        self.pages.remove(hash.as_bytes())?;
        Ok(())
    }
}

/// Applies every record of the journal at `journal_path` to `db`, in order; returns the
/// replay's report and whether a store config was among the records. Every record sets or
/// removes one key, so applying a journal to an index that already holds some of it leaves
/// exactly what the journal says for every key the journal names.
pub(super) fn apply(db: &sled::Db, journal_path: &Path) -> Result<(journal::ReplayReport, bool)> {
    let mut trees = Trees {
        meta: db.open_tree("meta")?,
        pages: db.open_tree("pages")?,
        files: db.open_tree("files")?,
        names: db.open_tree("names")?,
        config: false,
    };
    let report = replay_into(journal_path, &mut trees)?;
    Ok((report, trees.config))
}

/// What a journal says the index holds: names with their records, file ids, page hashes.
#[derive(Default)]
struct Said {
    names: HashMap<String, Vec<u8>>,
    files: HashSet<Hash>,
    pages: HashSet<Hash>,
}

impl Tables for Said {
    fn config(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn page(&mut self, hash: Hash, _: &[u8]) -> Result<()> {
        self.pages.insert(hash);
        Ok(())
    }
    fn manifest(&mut self, file_id: Hash, _: &[u8]) -> Result<()> {
        self.files.insert(file_id);
        Ok(())
    }
    fn name(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.names.insert(name.to_owned(), value.to_vec());
        Ok(())
    }
    fn name_removed(&mut self, name: &str) -> Result<()> {
        self.names.remove(name);
        Ok(())
    }
    fn manifest_removed(&mut self, file_id: Hash) -> Result<()> {
        self.files.remove(&file_id);
        Ok(())
    }
    fn page_removed(&mut self, hash: Hash) -> Result<()> {
        self.pages.remove(&hash);
        Ok(())
    }
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
    let mut said = Said::default();
    let replay = replay_into(path, &mut said)?;
    let Said {
        mut names,
        mut files,
        mut pages,
    } = said;
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
