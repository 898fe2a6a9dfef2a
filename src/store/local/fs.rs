//! Two helpers every part of a store directory uses: syncing a directory after its entries
//! change, and telling errors the machine causes (a full disk, a read-only file system,
//! permissions) from damage.

use std::path::Path;

use crate::error::{Error, Result};

/// Turns an error whose cause is the machine (a full disk, a read-only file system,
/// permissions: see [`Error::environment`]) into an [`Error::Environment`] of the store's
/// `what`; any other error passes unchanged.
pub(super) fn environmental<'a>(
    root: &'a Path,
    what: &'static str,
) -> impl FnOnce(Error) -> Error + 'a {
    move |e| match e.environment() {
        Some(hint) => Error::Environment {
            root: root.to_owned(),
            what,
            hint,
            source: Box::new(e),
        },
        None => e,
    }
}

/// Syncs directory `dir`, so that files created, renamed or removed in it stay so after a crash.
///
/// # Errors
/// I/O errors.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync directory", dir))
}
