//! Where a command's store is — a directory, or a bucket with its index database — and
//! opening it: only commands that write may create a store, and a command that only reads
//! opens a directory it may not write read-only.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use hoard::store::{ChunkStore, LocalStore, RemoteStore};
use hoard::{Error, StoreConfig};

/// Where the index of a store in a bucket is, when `--index` is not given.
pub const INDEX_VAR: &str = "HOARD_INDEX";

/// A store's place.
pub enum Location {
    /// A local directory (the default).
    Dir(PathBuf),
    /// Packs in a bucket (`s3://BUCKET[/PREFIX]`), the catalog in PostgreSQL.
    Remote {
        /// `s3://BUCKET[/PREFIX]`.
        bucket: String,
        /// `postgres://…`, possibly with a password: never printed.
        index: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "{}", p.display()),
            Location::Remote { bucket, .. } => f.write_str(bucket),
        }
    }
}

impl Location {
    /// The store `store` names (a directory or `s3://…`; none: the default directory) with
    /// the index `index` names (none: `$HOARD_INDEX`). `what` is how the user gave them, for
    /// messages (`--store`, `--from`).
    ///
    /// # Errors
    /// A URL hoard does not store at, a bucket with no index, or an index given for a
    /// directory.
    pub fn new(store: Option<&Path>, index: Option<&str>, what: &str) -> Result<Self> {
        let root = match store {
            Some(p) => p.to_owned(),
            None => LocalStore::default_path()
                .ok_or_else(|| anyhow!("no store directory: pass {what} DIR or set HOARD_STORE"))?,
        };
        let Some(url) = root.to_str().filter(|r| scheme(r).is_some()) else {
            if index.is_some() {
                bail!(
                    "--index is for a store in a bucket ({what} s3://BUCKET[/PREFIX]); a directory store keeps its index inside it"
                );
            }
            return Ok(Location::Dir(root));
        };
        // `s3://bucket/x` is a URL, not a directory: never create `./s3:` for it.
        if scheme(url) != Some("s3") {
            bail!(
                "{what} {url}: hoard stores in a local directory or an S3-compatible bucket (s3://BUCKET[/PREFIX]), not at {}:// URLs",
                scheme(url).unwrap_or_default()
            );
        }
        let index = match index {
            Some(i) => i.to_owned(),
            None => std::env::var(INDEX_VAR).map_err(|_| {
                anyhow!(
                    "{what} {url}: a store in a bucket keeps its index in PostgreSQL; add --index postgres://USER@HOST:PORT/DB (or set {INDEX_VAR})"
                )
            })?,
        };
        Ok(Location::Remote {
            bucket: url.trim_end_matches('/').to_owned(),
            index,
        })
    }

    /// Opens the store; with `create`, makes it (with `config`, or the defaults) if it does
    /// not exist yet. Returns the store and whether it was made just now.
    ///
    /// # Errors
    /// The store cannot be opened (named in the message).
    pub fn open_with(
        &self,
        create: bool,
        config: Option<StoreConfig>,
    ) -> Result<(Box<dyn ChunkStore>, bool)> {
        let verb = if config.is_some() {
            "initialise"
        } else {
            "open"
        };
        let opened = match self {
            Location::Dir(root) if create => LocalStore::open(root, config)
                .map(|(s, created)| (Box::new(s) as Box<dyn ChunkStore>, created)),
            Location::Dir(root) => {
                LocalStore::open_existing(root).map(|s| (Box::new(s) as Box<dyn ChunkStore>, false))
            }
            Location::Remote { bucket, index } => RemoteStore::open(bucket, index, create, config)
                .map(|(s, created)| (Box::new(s) as Box<dyn ChunkStore>, created)),
        };
        opened.with_context(|| format!("cannot {verb} store {self}"))
    }

    /// Opens the store for a command that writes; only `create` makes a new one, so a
    /// mistyped `--store` on a command that changes nothing new is an error, not a new store.
    ///
    /// # Errors
    /// As [`Location::open_with`].
    pub fn open(&self, create: bool) -> Result<Box<dyn ChunkStore>> {
        Ok(self.open_with(create, None)?.0)
    }

    /// Opens the store for a command that only reads it: as [`Location::open`], and if a
    /// directory store cannot be written here (a read-only file system, files the user may
    /// not write), read-only instead.
    ///
    /// # Errors
    /// As [`Location::open_with`].
    pub fn open_to_read(&self) -> Result<Box<dyn ChunkStore>> {
        let Location::Dir(root) = self else {
            return self.open(false);
        };
        let why = match LocalStore::open_existing(root) {
            Ok(store) => return Ok(Box::new(store)),
            Err(e) => match e.io_kind() {
                Some(k @ (ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied))
                    if matches!(e, Error::Environment { .. }) =>
                {
                    k
                }
                _ => return Err(e).with_context(|| format!("cannot open store {self}")),
            },
        };
        let store = LocalStore::open_read_only(root, why)
            .with_context(|| format!("cannot open store {self} read-only"))?;
        eprintln!(
            "hoard: store {self} cannot be written here ({}): opened read-only",
            if why == ErrorKind::ReadOnlyFilesystem {
                "read-only file system"
            } else {
                "permission denied"
            }
        );
        Ok(Box::new(store))
    }
}

/// True if `p` is spelled like a URL (`scheme://…`), not a directory.
pub fn is_url(p: &Path) -> bool {
    p.to_str().and_then(scheme).is_some()
}

/// The scheme of `s` if it is spelled like a URL (`scheme://…`).
fn scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
    .then_some(scheme)
}
