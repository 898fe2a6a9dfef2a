//! Upload state on the server side: everything that lives between a client's first request
//! and its file's manifest.
//!
//! - [`session`]: upload sessions by content (open a manifest, send the missing chunks,
//!   complete): WAITING → UPLOADING → COMPLETE.
//! - [`tus`]: tus 1.0 uploads by offset, cut into chunks as the bytes arrive.
//! - [`sink`]: chunks that arrive from outside, verified and stored with group commits.
//!
//! gc asks this module one question, [`held`]: which pages and chunks do unfinished uploads
//! hold? Only the two state machines know their record formats.

pub mod id;
pub mod session;
pub mod sink;
pub mod tus;

use crate::error::Result;
use crate::hash::Hash;
use crate::store::{ChunkStore, UploadKind};

/// What the unfinished uploads of a store hold, for gc to keep.
#[derive(Debug, Default)]
pub struct Held {
    /// Manifest pages, each with the file it belongs to (for an upload whose file id is not
    /// known yet, all zeros), so a page that cannot be read can be reported with its owner.
    pub pages: Vec<(Hash, Hash)>,
    /// Chunks listed outside any stored page.
    pub chunks: Vec<Hash>,
}

/// Every page and chunk an open upload session or an unfinished tus upload holds. Records
/// that do not decode are left out: no request can resume them (the sweeps drop them).
///
/// # Errors
/// Store errors.
pub fn held(store: &dyn ChunkStore) -> Result<Held> {
    let mut out = Held::default();
    for m in session::open_manifests(store)? {
        out.pages
            .extend(m.pages.iter().map(|p| (p.hash, m.file_id)));
    }
    let unknown = Hash::from_bytes([0u8; 32]);
    for up in tus::open_uploads(store)? {
        out.pages.extend(up.pages.iter().map(|p| (p.hash, unknown)));
        out.chunks.extend(up.refs.iter().map(|r| r.id));
    }
    Ok(out)
}

/// How many uploads of `kind` are unfinished (the server's `--max-uploads`).
///
/// # Errors
/// Store errors.
pub fn open_count(store: &dyn ChunkStore, kind: UploadKind) -> Result<usize> {
    Ok(match kind {
        UploadKind::Tus => tus::open_uploads(store)?.len(),
        UploadKind::Session => session::open_manifests(store)?.len(),
    })
}
