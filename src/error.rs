//! The library's one error type: typed, matchable, and never repeating its source in its message.
//!
//! Policy: a variant names the offending value (a chunk id, a name, a path) and says what failed;
//! the underlying cause travels as `source` so `{:#}` prints the whole chain once. The binary maps
//! these to exit codes in `cli.rs` (and later the server to HTTP statuses in one place).

use std::path::PathBuf;

use crate::hash::Hash;
use crate::upload::id::{NotAnId, SessionId};

/// Everything that can go wrong in hoard's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation on a stream between the stages of a pipeline failed.
    #[error("{0}")]
    Stream(&'static str, #[source] std::io::Error),
    /// Reading the caller's input failed: a file or stdin, or, on the server, a request body
    /// that stopped before its end (the client went away, or sent too slowly).
    #[error("cannot read input")]
    Input(#[source] std::io::Error),
    /// Writing the caller's output failed: a file or stdout, or, on the server, a response the
    /// client stopped reading.
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
    /// The sled index failed.
    #[error("index operation failed")]
    Index(#[from] sled::Error),
    /// The chunk index (redb) failed.
    #[error("chunk index operation failed")]
    ChunkIndex(#[from] redb::Error),
    /// Another process has the store open.
    #[error(
        "store {} is in use by another hoard process; wait for it to finish",
        .0.display()
    )]
    Locked(PathBuf),
    /// A command that only reads found no store.
    #[error(
        "no hoard store at {}; create one with `hoard init` or `hoard import FILE`",
        .0.display()
    )]
    NoStore(PathBuf),
    /// Part of a store's index is missing or does not open.
    #[error(
        "the {what} of store {} is missing or damaged ({detail}); run `hoard fsck --repair` to rebuild it",
        .root.display()
    )]
    IndexDamaged {
        /// The store.
        root: PathBuf,
        /// Which part: "chunk table" or "index".
        what: &'static str,
        /// What went wrong opening it.
        detail: String,
    },
    /// The store could not be opened or changed for a reason outside it (see
    /// [`Error::environment`]): reported as what it is, never as damage.
    #[error("cannot use the {what} of store {}: {hint}", .root.display())]
    Environment {
        /// The store directory.
        root: PathBuf,
        /// Which part of it: "index", "journal", "chunk table", "packs".
        what: &'static str,
        /// What stands in the way, and what to do.
        hint: &'static str,
        /// The error as it came.
        #[source]
        source: Box<Error>,
    },
    /// The index knows fewer files or names than the metadata journal: the journal must not
    /// be rewritten from it, and gc must not trust it.
    #[error(
        "the index of store {} lacks {files} file(s) and {names} name(s) that the metadata journal records; rebuild the index from the journal with `hoard fsck --repair --rebuild-index`",
        .root.display()
    )]
    IndexBehindJournal {
        /// The store directory.
        root: PathBuf,
        /// Files the journal records and the index lacks.
        files: u64,
        /// Names (or versions of names) the journal records and the index lacks.
        names: u64,
    },
    /// One frame of a chunk batch was refused; the frames before it were stored.
    #[error(
        "chunk frame {index} of the batch was refused; the {kept} frame(s) before it were stored"
    )]
    BadFrame {
        /// Its place in the batch, from 0.
        index: usize,
        /// Frames before it, all stored.
        kept: usize,
        /// Why it was refused (it decides the status).
        #[source]
        source: Box<Error>,
    },
    /// gc found a reason not to delete anything.
    #[error(
        "gc deleted nothing: {reason}; run `hoard fsck` to see why, then `hoard fsck --repair`"
    )]
    GcRefused {
        /// Why, in words.
        reason: String,
    },
    /// A zstd context could not be created (out of memory).
    #[error("cannot create a zstd context")]
    Zstd(#[source] std::io::Error),
    /// Chunker parameters or a compression level are out of range.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// The store was created with other parameters than the ones given.
    #[error(
        "store was created with {existing}, not {requested}; chunker params are fixed per store"
    )]
    ParamsMismatch {
        /// What the store records.
        existing: String,
        /// What the caller asked for.
        requested: String,
    },
    /// The store's on-disk format is newer (or other) than this binary understands.
    #[error("{what} has format version {found}, this hoard understands {expected}; upgrade hoard")]
    Version {
        /// Which record.
        what: &'static str,
        /// Version found on disk.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The index database's schema is older than this binary's, and hoard processes of
    /// another version still use it: upgrading it now would change it under them.
    #[error(
        "the index {at} has schema version {found} and this hoard writes {expected}, but {others} \
         connection(s) of hoard processes of another version are open on it: stop every hoard \
         server and command on this store, then start this version (a schema upgrade is not a \
         rolling restart)"
    )]
    UpgradeBlocked {
        /// The index, as `postgres://USER@HOST:PORT/DB`.
        at: String,
        /// Its schema version.
        found: u32,
        /// This binary's.
        expected: u32,
        /// Connections of other versions open on it.
        others: u64,
    },
    /// A record in the index could not be decoded.
    #[error("index record {what} is damaged")]
    Decode {
        /// Which record.
        what: String,
        /// The decoder's complaint.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A chunk id is not in the store.
    #[error("chunk {0} is not in the store")]
    ChunkNotFound(Hash),
    /// A stored chunk failed verification: its bytes are not what its id says.
    #[error("chunk {id} is corrupt ({detail})")]
    Corrupt {
        /// The chunk that failed.
        id: Hash,
        /// What was wrong: hash mismatch, bad header, undecodable payload.
        detail: String,
    },
    /// A manifest gives a stored chunk another length than the store has for it: a damaged
    /// manifest or index (or, for an upload, a client's mistake).
    #[error("chunk {id} is {stored} bytes in the store, but the manifest says {claimed}")]
    LengthMismatch {
        /// The chunk.
        id: Hash,
        /// Its length in the store.
        stored: u32,
        /// The length the manifest gives.
        claimed: u32,
    },
    /// A rebuilt file did not hash to its id.
    #[error("file {expected} rebuilt to the wrong content (hashes to {actual})")]
    FileMismatch {
        /// The id the manifest promised.
        expected: Hash,
        /// What the bytes hashed to.
        actual: Hash,
    },
    /// No name, version or id matched.
    #[error("no file named or with id {0:?}; `hoard ls` lists what is stored")]
    NotFound(String),
    /// An id prefix matched several files.
    #[error("id prefix {prefix:?} is ambiguous: it matches {count} files; give more hex digits")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// How many files matched.
        count: usize,
    },
    /// A name is not acceptable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A name has fewer versions than asked for.
    #[error("{name} has {count} version(s), not {n}; `hoard ls` lists them")]
    NoSuchVersion {
        /// The name.
        name: String,
        /// The version asked for (1 = oldest).
        n: usize,
        /// How many it has.
        count: usize,
    },
    /// A manifest references a page that is not in the index.
    #[error("manifest page {page} of file {file} is missing; import the file again to restore it")]
    PageNotFound {
        /// The file whose manifest names the page.
        file: Hash,
        /// The missing page.
        page: Hash,
    },
    /// A manifest or page does not add up (lengths, counts, hashes).
    #[error("manifest of file {0} is damaged; import the file again to restore it")]
    BadManifest(Hash),
    /// Bytes received from outside (a request, a response) do not parse.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed, e.g. "chunk frame".
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Something received is over a configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size (or count).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A chunk sent by a client does not hash to the id it was sent under.
    #[error("chunk sent as {expected} hashes to {actual}; nothing was stored")]
    HashMismatch {
        /// The id it was sent under.
        expected: Hash,
        /// What its bytes hash to.
        actual: Hash,
    },
    /// An upload's chunks do not make the file its manifest claims ([`Error::FileMismatch`])
    /// or have other lengths than it gives ([`Error::LengthMismatch`]): the client's claim is
    /// wrong, and nothing was recorded.
    #[error("the upload does not make the file its manifest claims; nothing was recorded: {0}")]
    Rejected(#[source] Box<Error>),
    /// An upload session cannot complete yet: chunks are missing.
    #[error("{} chunk(s) of the upload are still missing; upload them and complete again", .missing.len())]
    Incomplete {
        /// The ids still missing.
        missing: Vec<Hash>,
    },
    /// An HTTP request did not get an answer (connection refused, reset, timed out).
    #[error(
        "cannot reach the server for {what} (check that it is up and reachable, then try again; \
         what it acknowledged is kept)"
    )]
    Transport {
        /// What was being asked, e.g. "the missing query".
        what: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("server refused {what} ({status} {code}): {message}")]
    Remote {
        /// What was being asked.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// No upload has this id.
    #[error("no upload session {0}")]
    NoSession(SessionId),
    /// Text that is not an upload id (32 hex digits), so no upload has it.
    #[error("no upload session {0:?}")]
    NotAnUploadId(String),
    /// The upload session has ended (completed, expired or aborted).
    #[error("upload session {id} is {state}; open a new one")]
    SessionEnded {
        /// The session id.
        id: SessionId,
        /// Its final state.
        state: &'static str,
    },
    /// A tus `PATCH` does not start where the upload stands.
    #[error("the upload stands at offset {expected}, not {got}; ask with HEAD and send from there")]
    OffsetMismatch {
        /// Where the upload stands.
        expected: u64,
        /// The `Upload-Offset` the request gave.
        got: u64,
    },
    /// A tus `PATCH` body does not have the checksum its `Upload-Checksum` gave.
    #[error("the body's {algorithm} checksum is not the one given; nothing of it was kept")]
    ChecksumMismatch {
        /// `sha1` or `blake3`.
        algorithm: &'static str,
    },
    /// Another request is writing to this upload.
    #[error("upload {0} is busy with another request; try again shortly")]
    UploadBusy(SessionId),
    /// A remote engine of the store (the index database, the bucket) refused a request or
    /// could not be reached. `at` never holds a password or a key.
    #[error("{action} {at}: {detail}")]
    Engine {
        /// What was being done, e.g. "cannot query the index at".
        action: &'static str,
        /// The engine, as a URL with no credentials in it.
        at: String,
        /// The engine's own words.
        detail: String,
        /// True when the engine did not answer at all (the server says 503: try again).
        unreachable: bool,
    },
}

/// `e` and each of its causes, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

impl Error {
    /// Returns true if and only if the error comes from a full disk or an exhausted quota
    /// (ENOSPC, EDQUOT), anywhere in its chain: the server answers 507 for it.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        )
    }

    /// What stands in the way when the cause is the machine, not the store: a full disk, an
    /// exhausted quota, a read-only file system, or permissions. Such an error is never damage,
    /// and nothing may be moved aside or rebuilt because of it.
    pub fn environment(&self) -> Option<&'static str> {
        use std::io::ErrorKind as K;
        Some(match self.io_kind()? {
            K::StorageFull => "its disk is full: free some space and try again",
            K::QuotaExceeded => "its disk quota is exhausted: free some space and try again",
            K::ReadOnlyFilesystem => {
                "its file system is read-only: remount it read-write to change the store"
            }
            K::PermissionDenied => {
                "permission denied: run hoard as a user who owns the store's files"
            }
            _ => return None,
        })
    }

    /// The kind of the first I/O error in the chain, also where sled and redb keep one
    /// without exposing it as a source.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
                return Some(io.kind());
            }
            if let Some(redb::Error::Io(io)) = e.downcast_ref::<redb::Error>() {
                return Some(io.kind());
            }
            cur = e.source();
        }
        None
    }

    /// An engine at `at` that did not answer `action` within `limit` (a health check).
    pub(crate) fn no_answer(action: &'static str, at: String, limit: std::time::Duration) -> Error {
        Error::Engine {
            action,
            at,
            detail: format!("no answer within {} s", limit.as_secs()),
            unreachable: true,
        }
    }

    pub(crate) fn stage_stopped(stage: &'static str) -> Error {
        Error::Stream(stage, std::io::ErrorKind::BrokenPipe.into())
    }

    /// Wraps an I/O error with the action and path it belongs to.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// Lets `?` turn each of redb's error types into [`Error::ChunkIndex`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::ChunkIndex(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// `Result` with hoard's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<NotAnId> for Error {
    fn from(e: NotAnId) -> Self {
        Error::NotAnUploadId(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    /// Each machine error, also inside sled's and redb's errors, gets its own advice; other
    /// errors get none. (A full disk and a read-only file system are also tested for real in
    /// `tests/integration/diskfull.rs`, missing permissions as another user; quotas cannot be
    /// set up on this kernel, so EDQUOT is tested here only.)
    #[test]
    fn machine_errors_are_told_apart_wherever_they_sit() {
        let os = |code| std::io::Error::from_raw_os_error(code);
        let cases = [
            (28, "disk is full"),        // ENOSPC
            (122, "quota is exhausted"), // EDQUOT
            (30, "read-only"),           // EROFS
            (13, "permission denied"),   // EACCES
        ];
        for (code, says) in cases {
            let direct = Error::io("cannot write pack", "/x")(os(code));
            let in_sled = Error::Index(sled::Error::Io(os(code)));
            let in_redb = Error::ChunkIndex(redb::Error::Io(os(code)));
            for e in [direct, in_sled, in_redb] {
                let hint = e.environment().unwrap_or_else(|| panic!("{code}: {e}"));
                assert!(hint.contains(says), "{code}: {hint}");
            }
        }
        assert_eq!(Error::io("cannot read", "/x")(os(5)).environment(), None); // EIO
        let quota = Error::io("cannot write pack", "/x")(os(122));
        assert!(quota.is_no_space(), "EDQUOT answers 507 like ENOSPC");
    }
}
