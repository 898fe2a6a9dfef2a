//! Names: human labels with a history of file ids, and how `NAME|NAME@N|ID` is resolved.
//!
//! Resolution order: an exact name (its newest version); then `NAME@N`, the N-th version
//! (1 = oldest); then a file id or an unambiguous id prefix of at least [`MIN_PREFIX`] hex
//! characters. Names that could be read as `NAME@N` are refused, so the order never matters.
//!
//! Every name lives in a namespace (`namespace.rs`), and a caller sees through a [`View`]:
//! the names of one namespace, and by id either every file or only the files those names
//! refer to (another namespace's file then answers exactly as an unknown one).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::namespace::Namespace;
use crate::store::{ChunkStore, NameRecord, NameVersion};

/// Shortest id prefix accepted, in hex characters.
pub const MIN_PREFIX: usize = 8;
/// Longest name, in bytes.
pub const MAX_NAME: usize = 1024;

/// Checks that `name` can be stored: printable, a relative slash-separated path without `.`
/// or `..` components, not ending in `@<digits>`.
///
/// # Errors
/// [`Error::InvalidName`] saying why.
pub fn validate(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if name.chars().any(is_format_char) {
        return bad("it contains invisible format characters (such as bidi overrides)");
    }
    if name.contains('\\') {
        return bad("it contains a backslash; separate path components with /");
    }
    if looks_like_id(name) {
        return bad("it is 8 to 64 hex digits, which is how file ids and id prefixes are written");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("it must be a relative path without empty, `.` or `..` components");
    }
    if split_version(name).is_some() {
        return bad("it ends in @<number>, which is version syntax");
    }
    Ok(())
}

/// True for what reads as a file id or an id prefix: 8 to 64 hex digits.
pub fn looks_like_id(spec: &str) -> bool {
    (MIN_PREFIX..=64).contains(&spec.len()) && spec.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Unicode's format characters (general category Cf): invisible, and some reorder the text
/// around them (U+202E shows `exe.txt` for `txt.exe`), so a listing could lie about a name.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

fn split_version(spec: &str) -> Option<(&str, usize)> {
    let (name, v) = spec.rsplit_once('@')?;
    if name.is_empty() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, v.parse().ok()?))
}

/// What a caller sees of the store's names and files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Whose names.
    pub ns: Namespace,
    /// Every stored file by id (the store's owner, an admin, a server with one namespace);
    /// else only the files a name of `ns` refers to.
    pub every_file: bool,
}

impl View {
    /// The default namespace's names and every file: the command line's view, and a
    /// server's with one namespace.
    pub fn whole() -> Self {
        View {
            ns: Namespace::default_one(),
            every_file: true,
        }
    }

    /// The names of this view's namespace (names as given, not keys) with their records.
    ///
    /// # Errors
    /// Index errors.
    pub fn names(&self, store: &dyn ChunkStore) -> Result<Vec<(String, NameRecord)>> {
        Ok(store
            .names()?
            .into_iter()
            .filter_map(|(key, rec)| self.ns.name_of(&key).map(|n| (n.to_owned(), rec)))
            .collect())
    }

    /// The ids this view may reach by id: `None` for every file; else those a name of its
    /// namespace refers to.
    fn reachable(&self, store: &dyn ChunkStore) -> Result<Option<HashSet<Hash>>> {
        if self.every_file {
            return Ok(None);
        }
        let mut ids = HashSet::new();
        for (_, rec) in self.names(store)? {
            ids.extend(rec.versions.iter().map(|v| v.file_id));
        }
        Ok(Some(ids))
    }
}

/// A resolved file: its manifest and how the user named it.
pub struct Resolved {
    /// The file's manifest.
    pub manifest: Manifest,
    /// The name (with `@N` if a version was asked for), or the id.
    pub label: String,
}

/// Resolves `NAME`, `NAME@N`, an id or an id prefix, as [`View::whole`] sees them.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Ambiguous`], or store errors.
pub fn resolve(store: &dyn ChunkStore, spec: &str) -> Result<Resolved> {
    resolve_in(store, &View::whole(), spec)
}

/// Resolves `NAME`, `NAME@N`, an id or an id prefix, as `view` sees them.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Ambiguous`], or store errors.
pub fn resolve_in(store: &dyn ChunkStore, view: &View, spec: &str) -> Result<Resolved> {
    let by_id = |id: Hash, label: String| -> Result<Resolved> {
        let manifest = store
            .get_manifest(&id)?
            .ok_or_else(|| Error::NotFound(spec.to_owned()))?;
        Ok(Resolved { manifest, label })
    };
    // What reads as an id is an id: a name never shadows one (such names are refused; one
    // stored before that rule is still found, but only when no file id matches).
    if looks_like_id(spec) {
        match resolve_id(store, view, spec, &by_id) {
            Err(Error::NotFound(_)) => {}
            other => return other,
        }
    }
    if let Some(rec) = store.get_name(&view.ns.key(spec))?
        && let Some(v) = rec.versions.last()
    {
        return by_id(v.file_id, spec.to_owned());
    }
    if let Some((name, n)) = split_version(spec)
        && let Some(rec) = store.get_name(&view.ns.key(name))?
    {
        let v = n
            .checked_sub(1)
            .and_then(|i| rec.versions.get(i))
            .ok_or_else(|| Error::NoSuchVersion {
                name: name.to_owned(),
                n,
                count: rec.versions.len(),
            })?;
        return by_id(v.file_id, spec.to_owned());
    }
    Err(Error::NotFound(spec.to_owned()))
}

/// Resolves a file id or an unambiguous id prefix (`spec` is 8–64 hex digits). The file
/// found has an id that starts with `spec`, whatever names exist, among the files `view`
/// reaches (so neither an answer nor an ambiguity tells of a file it does not).
fn resolve_id(
    store: &dyn ChunkStore,
    view: &View,
    spec: &str,
    by_id: &dyn Fn(Hash, String) -> Result<Resolved>,
) -> Result<Resolved> {
    let reachable = view.reachable(store)?;
    let hex = spec.to_ascii_lowercase();
    let even = &hex[..hex.len() / 2 * 2];
    let raw: Vec<u8> = (0..even.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&even[i..i + 2], 16).expect("checked hex"))
        .collect();
    let matches: Vec<Hash> = store
        .file_ids_with_prefix(&raw)?
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&hex))
        .filter(|id| reachable.as_ref().is_none_or(|r| r.contains(id)))
        .collect();
    match matches.as_slice() {
        [id] => by_id(*id, id.to_hex()),
        [] => Err(Error::NotFound(spec.to_owned())),
        many => Err(Error::Ambiguous {
            prefix: spec.to_owned(),
            count: many.len(),
        }),
    }
}

/// Points `name` (of the default namespace) at `manifest`'s file as its newest version
/// (unless it already is).
///
/// # Errors
/// As [`record_in`].
pub fn record(store: &dyn ChunkStore, name: &str, manifest: &Manifest) -> Result<NameRecord> {
    record_in(store, &Namespace::default_one(), name, manifest)
}

/// Points `name` of namespace `ns` at `manifest`'s file as its newest version (unless it
/// already is).
///
/// # Errors
/// [`Error::InvalidName`]; [`Error::NotFound`] if the file is not stored (removed meanwhile);
/// store errors.
pub fn record_in(
    store: &dyn ChunkStore,
    ns: &Namespace,
    name: &str,
    manifest: &Manifest,
) -> Result<NameRecord> {
    validate(name)?;
    let name = &*ns.key(name);
    let _one_at_a_time = store.guard().naming();
    // A concurrent `rm` of this file may have won: then the name must not point at it.
    if store.get_manifest(&manifest.file_id)?.is_none() {
        return Err(Error::NotFound(manifest.file_id.to_string()));
    }
    if let Some(rec) = store.get_name(name)?
        && rec
            .versions
            .last()
            .is_some_and(|v| v.file_id == manifest.file_id)
    {
        return Ok(rec);
    }
    let added = crate::unix_now();
    store.push_name(
        name,
        NameVersion {
            file_id: manifest.file_id,
            size: manifest.file_len,
            added,
        },
    )
}

/// What [`remove`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Names removed with their whole history.
    pub names: Vec<String>,
    /// Versions dropped from names that remain (`NAME@N`, or `rm ID` of a file a name had).
    pub versions: u64,
    /// Files whose manifest was removed: no name refers to them any more.
    pub files: Vec<Hash>,
}

/// Removes what `spec` names as [`View::whole`] sees it (see [`remove_in`]).
///
/// # Errors
/// As [`remove_in`].
pub fn remove(store: &dyn ChunkStore, spec: &str) -> Result<Removed> {
    remove_in(store, &View::whole(), spec)
}

/// Removes what `spec` names as `view` sees it; the chunks stay until gc finds nothing else
/// uses them.
///
/// - `NAME`: the name and its history; the files of its versions that no other name refers to.
/// - `NAME@N`: that version (later versions move down one); its file if nothing else refers to it.
/// - an id or id prefix: every version of every name of the view's namespace that points at
///   the file (a name left with no version goes), and the file if no name of any namespace
///   still points at it. A name never points at a removed file.
///
/// # Errors
/// [`Error::NotFound`], [`Error::NoSuchVersion`], [`Error::Ambiguous`], or store errors.
pub fn remove_in(store: &dyn ChunkStore, view: &View, spec: &str) -> Result<Removed> {
    let _one_at_a_time = store.guard().naming();
    let mut out = Removed::default();
    let mut dropped: Vec<Hash> = Vec::new();
    let key = |name: &str| view.ns.key(name).into_owned();
    if let Some(rec) = store.get_name(&key(spec))? {
        store.remove_name(&key(spec))?;
        out.names.push(spec.to_owned());
        dropped.extend(rec.versions.iter().map(|v| v.file_id));
    } else if let Some((name, n)) = split_version(spec)
        && let Some(mut rec) = store.get_name(&key(name))?
    {
        if n == 0 || n > rec.versions.len() {
            return Err(Error::NoSuchVersion {
                name: name.to_owned(),
                n,
                count: rec.versions.len(),
            });
        }
        dropped.push(rec.versions.remove(n - 1).file_id);
        if rec.versions.is_empty() {
            store.remove_name(&key(name))?;
            out.names.push(name.to_owned());
        } else {
            store.put_name(&key(name), &rec)?;
            out.versions += 1;
        }
    } else {
        let id = resolve_in(store, view, spec)?.manifest.file_id;
        for (name, mut rec) in view.names(store)? {
            let before = rec.versions.len();
            rec.versions.retain(|v| v.file_id != id);
            if rec.versions.is_empty() {
                store.remove_name(&key(&name))?;
                out.names.push(name);
            } else if rec.versions.len() < before {
                store.put_name(&key(&name), &rec)?;
                out.versions += (before - rec.versions.len()) as u64;
            }
        }
        dropped.push(id);
    }
    // A file goes once no name of any namespace refers to it (files stored without a name
    // go only by id).
    let mut still: HashSet<Hash> = HashSet::new();
    for (_, rec) in store.names()? {
        still.extend(rec.versions.iter().map(|v| v.file_id));
    }
    dropped.sort_unstable();
    dropped.dedup();
    for id in dropped {
        if !still.contains(&id) && store.remove_manifest(&id)? {
            out.files.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "vm/base.qcow2", "user@host.img", "a@b1", "日本.bin"] {
            validate(ok).unwrap();
        }
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a//b",
            "a/",
            "x@2",
            "tab\there",
            "nul\0",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
