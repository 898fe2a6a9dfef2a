//! What a store holds, as the CLI (`ls`, `stats`) and the server (`GET /v1/files`,
//! `GET /v1/stats`) report it: one function each, so both say the same thing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::error::Result;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::names::View;
use crate::restore;
use crate::store::ChunkStore;

/// One stored file: a name and its versions, or a file stored without a name.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// The name, or `None` for a file reachable only by id.
    pub name: Option<String>,
    /// The current version's file id.
    pub id: Hash,
    /// The current version's size in bytes.
    pub size: u64,
    /// When the current version was recorded (RFC 3339), if it has a name.
    pub added: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<ListedVersion>,
}

/// One version of a name.
#[derive(Clone, Debug, Serialize)]
pub struct ListedVersion {
    /// 1 = oldest (`NAME@1`).
    pub version: usize,
    /// The file id.
    pub id: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// When it was recorded (RFC 3339).
    pub added: String,
}

/// Store-wide totals.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Distinct files (manifests).
    pub files: usize,
    /// Names.
    pub names: usize,
    /// Distinct chunks.
    pub chunks: u64,
    /// Sum of the sizes of all files.
    pub logical_bytes: u64,
    /// Sum of the uncompressed sizes of the distinct chunks.
    pub unique_bytes: u64,
    /// Bytes of chunk data on disk (pack files).
    pub stored_bytes: u64,
    /// `logical_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_bytes`.
    pub compression_ratio: f64,
    /// `logical_bytes / stored_bytes`.
    pub overall_ratio: f64,
    /// Chunks stored as deltas against similar chunks (`delta.rs`).
    pub delta_chunks: u64,
    /// Their uncompressed bytes.
    pub delta_bytes: u64,
    /// What they take in packs: `delta_bytes - delta_stored_bytes` is what storing them as
    /// deltas saved over storing them raw (plain zstd would have saved part of it).
    pub delta_stored_bytes: u64,
    /// Every file with the bytes only it holds, largest first.
    pub per_file: Vec<FileUsage>,
}

/// What one file holds alone.
#[derive(Clone, Debug, Serialize)]
pub struct FileUsage {
    /// The file id.
    pub id: Hash,
    /// Names with a version pointing at it (`NAME@N` for older versions).
    pub names: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Uncompressed bytes of the chunks no other file uses: what removing it (and gc) frees,
    /// before compression.
    pub unique_bytes: u64,
}

/// Formats Unix seconds as RFC 3339.
pub fn date(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Every name of the default namespace with its versions, then the files stored without a
/// name (see [`list_in`]).
///
/// # Errors
/// Index errors.
pub fn list(store: &dyn ChunkStore) -> Result<Vec<Listed>> {
    list_in(store, &View::whole())
}

/// Every name `view` sees with its versions, then, if it reaches every file, the files no
/// name of any namespace refers to.
///
/// # Errors
/// Index errors.
pub fn list_in(store: &dyn ChunkStore, view: &View) -> Result<Vec<Listed>> {
    let mut referenced = HashSet::new();
    let mut files = Vec::new();
    let all = store.names()?;
    for (_, rec) in &all {
        referenced.extend(rec.versions.iter().map(|v| v.file_id));
    }
    for (name, rec) in all
        .into_iter()
        .filter_map(|(key, rec)| view.ns.name_of(&key).map(|n| (n.to_owned(), rec)))
    {
        let versions: Vec<ListedVersion> = rec
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| ListedVersion {
                version: i + 1,
                id: v.file_id,
                size: v.size,
                added: date(v.added),
            })
            .collect();
        // A name is only ever written with a version, so `last` exists; skip it if not.
        let Some(cur) = versions.last().cloned() else {
            continue;
        };
        files.push(Listed {
            id: cur.id,
            size: cur.size,
            added: Some(cur.added),
            name: Some(name),
            versions,
        });
    }
    if !view.every_file {
        return Ok(files);
    }
    for m in store.manifests()? {
        if !referenced.contains(&m.file_id) {
            files.push(Listed {
                name: None,
                id: m.file_id,
                size: m.file_len,
                added: None,
                versions: vec![],
            });
        }
    }
    Ok(files)
}

/// Totals over the whole store.
///
/// # Errors
/// Index errors, I/O errors reading pack sizes.
pub fn stats(store: &dyn ChunkStore) -> Result<Stats> {
    stats_in(store, &View::whole())
}

/// Totals as `view` sees them: for a view that reaches every file, the whole store's (every
/// name, a name of another namespace labelled `NAMESPACE:NAME`); else `files`, `names`,
/// `logical_bytes` and `per_file` count only the files its namespace names, each file's
/// unique bytes counted among those files only (so they tell nothing of other namespaces'
/// files), while the chunk and byte totals stay the store's.
///
/// # Errors
/// Index errors, I/O errors reading pack sizes.
pub fn stats_in(store: &dyn ChunkStore, view: &View) -> Result<Stats> {
    let (manifests, names, labels) = if view.every_file {
        let all = store.names()?;
        (store.manifests()?, all.len(), labels_of(all, display_key))
    } else {
        let mine = view.names(store)?;
        let mut ids: Vec<Hash> = mine
            .iter()
            .flat_map(|(_, rec)| rec.versions.iter().map(|v| v.file_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut manifests = Vec::with_capacity(ids.len());
        for id in ids {
            manifests.extend(store.get_manifest(&id)?);
        }
        (manifests, mine.len(), labels_of(mine, str::to_owned))
    };
    let logical: u64 = manifests.iter().map(|m| m.file_len).sum();
    let per_file = usage(store, &manifests, labels)?;
    let totals = store.chunk_totals()?;
    let stored = store.chunk_data_bytes()?;
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Ok(Stats {
        files: manifests.len(),
        names,
        chunks: totals.chunks,
        logical_bytes: logical,
        unique_bytes: totals.raw_bytes,
        stored_bytes: stored,
        dedup_ratio: ratio(logical, totals.raw_bytes),
        compression_ratio: ratio(totals.raw_bytes, stored),
        overall_ratio: ratio(logical, stored),
        delta_chunks: totals.deltas,
        delta_bytes: totals.delta_raw_bytes,
        delta_stored_bytes: totals.delta_encoded_bytes,
        per_file,
    })
}

/// Who uses a chunk: the only file so far, or several.
#[derive(Clone, Copy)]
enum Owner {
    One(usize),
    Shared,
}

/// Bytes only each file holds (one pass over every manifest page).
///
/// # Errors
/// Index errors, damaged or missing pages.
fn usage(
    store: &dyn ChunkStore,
    manifests: &[Manifest],
    mut names: HashMap<Hash, Vec<String>>,
) -> Result<Vec<FileUsage>> {
    let mut owner: HashMap<Hash, (Owner, u32)> = HashMap::new();
    for (i, m) in manifests.iter().enumerate() {
        restore::for_each_page(store, m, |page| {
            for c in &page.chunks {
                owner
                    .entry(c.id)
                    .and_modify(|(o, _)| {
                        if !matches!(o, Owner::One(j) if *j == i) {
                            *o = Owner::Shared;
                        }
                    })
                    .or_insert((Owner::One(i), c.len));
            }
            Ok(())
        })?;
    }
    let mut unique = vec![0u64; manifests.len()];
    for (o, len) in owner.values() {
        if let Owner::One(i) = o {
            unique[*i] += u64::from(*len);
        }
    }
    let mut out: Vec<FileUsage> = manifests
        .iter()
        .zip(unique)
        .map(|(m, unique_bytes)| FileUsage {
            id: m.file_id,
            names: names.remove(&m.file_id).unwrap_or_default(),
            size: m.file_len,
            unique_bytes,
        })
        .collect();
    out.sort_by(|a, b| b.unique_bytes.cmp(&a.unique_bytes).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Each file's names: `NAME` for a current version, `NAME@N` for an older one.
///
/// # Errors
/// Index errors.
pub fn file_labels(store: &dyn ChunkStore) -> Result<HashMap<Hash, Vec<String>>> {
    Ok(labels_of(store.names()?, display_key))
}

/// How a stored name key is shown where every namespace's names are: `NAME` for the
/// default namespace, `NAMESPACE:NAME` for another.
pub fn display_key(key: &str) -> String {
    match crate::namespace::split_key(key) {
        (None, name) => name.to_owned(),
        (Some(ns), name) => format!("{ns}:{name}"),
    }
}

/// The labels of `names` (keys or names, shown through `show`) by file.
fn labels_of(
    names: Vec<(String, crate::store::NameRecord)>,
    show: impl Fn(&str) -> String,
) -> HashMap<Hash, Vec<String>> {
    let mut out: HashMap<Hash, Vec<String>> = HashMap::new();
    for (key, rec) in names {
        let name = show(&key);
        let last = rec.versions.len();
        for (i, v) in rec.versions.iter().enumerate() {
            let label = if i + 1 == last {
                name.clone()
            } else {
                format!("{name}@{}", i + 1)
            };
            out.entry(v.file_id).or_default().push(label);
        }
    }
    out
}
