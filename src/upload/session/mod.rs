//! Upload sessions: an upload as a state machine, by content instead of by offset.
//!
//! ```text
//! open (manifest) ─▶ WAITING ─first missing chunk arrives─▶ UPLOADING ─complete─▶ COMPLETE
//!                        └──────────── idle past the TTL ─────────┴──────────────▶ EXPIRED
//! ```
//!
//! Opening stores the manifest's pages and answers which chunks the store lacks. Completing
//! checks that every chunk is present, hashes the whole file back out of the store (unless the
//! file is already stored, in which case it was checked when it was), records the manifest
//! and only then moves the name: a client never gets a file id that the bytes do not have.
//! Session records live in the index (`sessions`), so a session survives a restart. Until it
//! ends, a session's manifest is the list of chunks gc must keep (see [`crate::upload::held`]).
//!
//! Record (version byte 1, bincode): `{ id, name, manifest, state, created, touched,
//! missing_at_open, missing_bytes_at_open }`.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod missing;
mod verify;

use missing::Lacking;
pub use missing::Opening;
use verify::{Arrivals, Verifier};

use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{Manifest, ManifestBuilder};
use crate::names;
use crate::namespace::Namespace;
use crate::record;
use crate::restore;
use crate::store::{ChunkStore, UploadKind};
use crate::wire::FlatManifest;

pub use crate::upload::id::SessionId;

/// Format version of session records.
const SESSION_VERSION: u8 = 1;

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Opened; the missing chunks are known, none has arrived yet.
    Waiting,
    /// Some missing chunks have arrived.
    Uploading,
    /// Every chunk and the whole-file hash checked; the name points at the file.
    Complete,
    /// Idle past the TTL; nothing of it is visible and its chunks are no longer kept for it.
    Expired,
}

impl SessionState {
    /// The state's name as the API prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Waiting => "waiting",
            SessionState::Uploading => "uploading",
            SessionState::Complete => "complete",
            SessionState::Expired => "expired",
        }
    }

    /// Returns true if and only if the session has not ended.
    pub fn is_open(self) -> bool {
        matches!(self, SessionState::Waiting | SessionState::Uploading)
    }
}

/// Marks, among ids with their store-missing flags, those the caller may not be told are
/// stored (a namespace on a server shared by several: `server/known.rs`). A session opened,
/// queried or completed with one counts them missing: neither its answers nor its completion
/// tell of chunks another namespace stored.
pub type Hide = Arc<dyn Fn(&[Hash], &mut [bool]) -> Result<()> + Send + Sync>;

/// The persisted record of one session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The name the file gets on completion, if any.
    pub name: Option<String>,
    /// The file's manifest (pages are in the index).
    pub manifest: Manifest,
    /// Where it is.
    pub state: SessionState,
    /// Unix seconds when opened.
    pub created: u64,
    /// Unix seconds of the last request that used it.
    pub touched: u64,
    /// Distinct chunks missing when it was opened.
    pub missing_at_open: u64,
    /// Their bytes.
    pub missing_bytes_at_open: u64,
}

/// A session as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// Session id.
    pub id: String,
    /// `waiting`, `uploading`, `complete` or `expired`.
    pub state: &'static str,
    /// The name the file gets.
    pub name: Option<String>,
    /// The file id.
    pub file_id: Hash,
    /// The file's length.
    pub size: u64,
    /// Chunks in the manifest.
    pub chunks: u64,
    /// Distinct chunks still missing.
    pub missing_chunks: u64,
    /// Their bytes.
    pub missing_bytes: u64,
    /// Distinct chunks that were missing when the session opened.
    pub missing_at_open: u64,
    /// Their bytes: what the upload adds to the store.
    pub missing_bytes_at_open: u64,
    /// Unix seconds after which an idle session expires.
    pub expires: u64,
    /// Body bytes of the chunk uploads tagged with the session (for the hooks).
    #[serde(skip)]
    pub bytes_sent: u64,
}

/// The open sessions of one store, and the rules they follow.
pub struct Sessions {
    store: Arc<dyn ChunkStore>,
    ttl: Duration,
    /// Per-session locks, so two `complete` calls on one session cannot both record it.
    locks: Mutex<HashMap<SessionId, Arc<Mutex<()>>>>,
    /// Last use of each session seen by this process, kept in memory between persisted touches.
    /// With the chunk body bytes received for it, and whose it is.
    activity: Mutex<HashMap<SessionId, (u64, u64, Namespace)>>,
    arrivals: Arc<Arrivals>,
    verifiers: Mutex<HashMap<SessionId, Verifier>>,
    /// Background hashes running, opened sessions and openings alike.
    running: AtomicUsize,
    /// Decoded bytes every background hash's cache holds together (see `verify.rs`).
    cached: Arc<AtomicUsize>,
    /// Held by a completion while it hashes its whole file out of the store: one at a time
    /// (each holds some 25 MB of batches read ahead; eight at once took a server past
    /// 250 MiB).
    verifying: Mutex<()>,
    /// What each open session lacked when last looked at (see [`Sessions::lacking`]).
    lacking: Mutex<HashMap<SessionId, Lacking>>,
}

fn now() -> u64 {
    crate::unix_now()
}

impl Sessions {
    /// Sessions of `store` that expire after `ttl` without use.
    pub fn new(store: Arc<dyn ChunkStore>, ttl: Duration) -> Self {
        Sessions {
            store,
            ttl,
            locks: Mutex::default(),
            activity: Mutex::default(),
            arrivals: Arc::default(),
            verifiers: Mutex::default(),
            running: AtomicUsize::new(0),
            cached: Arc::default(),
            verifying: Mutex::default(),
            lacking: Mutex::default(),
        }
    }

    fn lock_of(&self, id: SessionId) -> Arc<Mutex<()>> {
        let mut locks = crate::lock(&self.locks);
        locks.entry(id).or_default().clone()
    }

    fn load(&self, id: SessionId) -> Result<Session> {
        let bytes = self
            .store
            .get_upload(UploadKind::Session, &id.0)?
            .ok_or(Error::NoSession(id))?;
        record::decode("upload session", SESSION_VERSION, &bytes)
    }

    /// Loads session `id` if it is namespace `ns`'s: another namespace's session answers
    /// exactly as an unknown one.
    fn load_in(&self, id: SessionId, ns: &Namespace) -> Result<Session> {
        let s = self.load(id)?;
        if owner(&s) != *ns {
            return Err(Error::NoSession(id));
        }
        Ok(s)
    }

    fn save(&self, s: &Session) -> Result<()> {
        self.store.put_upload(
            UploadKind::Session,
            &s.id.0,
            &record::encode(SESSION_VERSION, s),
        )
    }

    fn last_use(&self, s: &Session) -> u64 {
        let activity = crate::lock(&self.activity);
        activity.get(&s.id).map_or(0, |a| a.0).max(s.touched)
    }

    /// Notes that a request used session `id` (a chunk upload tagged with it) and sent
    /// `bytes` of body. Only an open session is remembered: an id no session has costs no
    /// memory and is an error, as is one that ended.
    ///
    /// # Errors
    /// [`Error::NoSession`] for an unknown id, [`Error::SessionEnded`] for a completed or
    /// expired one; store errors.
    pub fn touch(&self, id: SessionId, ns: &Namespace, bytes: u64) -> Result<()> {
        let seen = crate::lock(&self.activity).get(&id).map(|a| a.2.clone());
        match seen {
            // Seen by this process already: whose it is is known.
            Some(owner) if owner != *ns => return Err(Error::NoSession(id)),
            Some(_) => {}
            // Opened before a restart, or on another server, or not at all: look.
            None => {
                let s = self.load_in(id, ns)?;
                if !s.state.is_open() {
                    return Err(Error::SessionEnded {
                        id,
                        state: s.state.as_str(),
                    });
                }
            }
        }
        {
            let mut activity = crate::lock(&self.activity);
            let a = activity.entry(id).or_insert_with(|| (0, 0, ns.clone()));
            a.0 = now();
            a.1 += bytes;
        }
        // Where every server sees it, if the store keeps such counts (a server other than
        // this one may complete the session and report them).
        if bytes > 0 {
            self.store.add_session_bytes(&id.0, bytes)?;
        }
        Ok(())
    }

    /// Body bytes of the chunk uploads tagged with session `id`: every server's, if the store
    /// counts them, else those this process received.
    fn bytes_sent(&self, id: SessionId) -> u64 {
        let here = || crate::lock(&self.activity).get(&id).map_or(0, |a| a.1);
        match self.store.session_bytes(&id.0) {
            Ok(Some(n)) => n,
            Ok(None) => here(),
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot read the bytes a session received");
                here()
            }
        }
    }

    /// Opens a session for `flat`, to be recorded under `name`.
    ///
    /// # Errors
    /// As [`Sessions::begin`], [`Opening::push`] and [`Opening::finish`].
    pub fn open(
        &self,
        name: Option<&str>,
        flat: &FlatManifest,
        max_chunk: u32,
    ) -> Result<(Progress, Vec<Hash>)> {
        self.open_in(&Namespace::default_one(), None, name, flat, max_chunk)
    }

    /// As [`Sessions::open`], for namespace `ns` (see [`Sessions::begin`]).
    ///
    /// # Errors
    /// As [`Sessions::open`].
    pub fn open_in(
        &self,
        ns: &Namespace,
        hide: Option<Hide>,
        name: Option<&str>,
        flat: &FlatManifest,
        max_chunk: u32,
    ) -> Result<(Progress, Vec<Hash>)> {
        let mut o = self.begin_hiding(ns, hide, name, flat.chunker, max_chunk)?;
        o.push(&flat.chunks)?;
        o.finish(flat.id, flat.size)
    }

    /// Starts opening a session whose manifest arrives in pieces (a streamed upload): the
    /// background hash of the file starts on the first refs.
    ///
    /// The session is namespace `ns`'s: only requests of `ns` see it, and its file is named
    /// in `ns` (its record keeps the name's key, which says the namespace).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Malformed`] for params out of range; [`Error::Malformed`]
    /// for an unnamed session outside the default namespace (nobody there could reach it).
    pub fn begin(
        &self,
        ns: &Namespace,
        name: Option<&str>,
        chunker: Option<ChunkerParams>,
        max_chunk: u32,
    ) -> Result<Opening<'_>> {
        self.begin_hiding(ns, None, name, chunker, max_chunk)
    }

    /// As [`Sessions::begin`], counting missing what `hide` hides (see [`Hide`]).
    ///
    /// # Errors
    /// As [`Sessions::begin`].
    pub fn begin_hiding(
        &self,
        ns: &Namespace,
        hide: Option<Hide>,
        name: Option<&str>,
        chunker: Option<ChunkerParams>,
        max_chunk: u32,
    ) -> Result<Opening<'_>> {
        if let Some(n) = name {
            names::validate(n)?;
        } else if !ns.is_default() {
            return Err(unnamed(ns));
        }
        let chunker = match chunker {
            Some(c) => ChunkerParams::new(c.min, c.avg, c.max).map_err(|e| Error::Malformed {
                what: "manifest",
                detail: e.to_string(),
            })?,
            None => self.store.config().chunker,
        };
        let (feed, verifier) = match self.start_verifier() {
            Some((tx, v)) => (Some(tx), Some(v)),
            None => (None, None),
        };
        Ok(Opening {
            sessions: self,
            name: name.map(|n| ns.key(n).into_owned()),
            chunker,
            max_chunk,
            builder: ManifestBuilder::default(),
            unpaged: Vec::new(),
            missing: Vec::new(),
            total: 0,
            feed,
            verifier,
            pin: self.store.guard().pin(),
            hide,
        })
    }

    fn new_id(&self, file_id: &Hash) -> SessionId {
        SessionId::generate(file_id.as_bytes())
    }

    fn report(&self, s: &Session, missing_chunks: u64, missing_bytes: u64) -> Progress {
        Progress {
            id: s.id.to_string(),
            state: s.state.as_str(),
            name: s.name.as_deref().map(|k| Namespace::of_key(k).1.to_owned()),
            file_id: s.manifest.file_id,
            size: s.manifest.file_len,
            chunks: s.manifest.chunk_count,
            missing_chunks,
            missing_bytes,
            missing_at_open: s.missing_at_open,
            missing_bytes_at_open: s.missing_bytes_at_open,
            expires: self.last_use(s) + self.ttl.as_secs(),
            bytes_sent: self.bytes_sent(s.id),
        }
    }

    /// True if `s` is open and sat idle past the TTL: expiring it is due.
    fn idle(&self, s: &Session) -> bool {
        s.state.is_open() && self.last_use(s) + self.ttl.as_secs() < now()
    }

    /// True if `s` ended more than one more TTL ago: its record may go.
    fn stale(&self, s: &Session) -> bool {
        !s.state.is_open() && s.touched + 2 * self.ttl.as_secs() < now()
    }

    /// Expires `s` if it sat idle past the TTL; returns true if and only if it did.
    fn expire_if_idle(&self, s: &mut Session) -> Result<bool> {
        if self.idle(s) {
            self.take_verifier(s.id, true);
            s.state = SessionState::Expired;
            crate::lock(&self.lacking).remove(&s.id);
            self.save(s)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Where session `id` stands: its state and what is still missing.
    ///
    /// # Errors
    /// [`Error::NoSession`] for an unknown id; store errors.
    pub fn progress(&self, id: SessionId, ns: &Namespace) -> Result<Progress> {
        self.progress_hiding(id, ns, None)
    }

    /// As [`Sessions::progress`], counting missing what `hide` hides (see [`Hide`]).
    ///
    /// # Errors
    /// As [`Sessions::progress`].
    pub fn progress_hiding(
        &self,
        id: SessionId,
        ns: &Namespace,
        hide: Option<&Hide>,
    ) -> Result<Progress> {
        let lock = self.lock_of(id);
        let _held = crate::lock(&lock);
        let _shared = self.store.lock_upload(&id.0, None)?;
        let mut s = self.load_in(id, ns)?;
        self.expire_if_idle(&mut s)?;
        if s.state == SessionState::Complete {
            return Ok(self.report(&s, 0, 0));
        }
        if s.state == SessionState::Expired {
            // Nothing is kept for it any more, but what is missing is still what the store
            // lacks of its file (all of it, once gc has taken its manifest pages too).
            let (n, bytes) = match self.still_missing(&s, hide) {
                Ok((missing, bytes)) => (missing.len() as u64, bytes),
                Err(_) => (s.manifest.chunk_count, s.manifest.file_len),
            };
            return Ok(self.report(&s, n, bytes));
        }
        let (missing, bytes) = self.lacking(&s, hide)?;
        if s.state == SessionState::Waiting && missing < s.missing_at_open {
            s.state = SessionState::Uploading;
        }
        // Looking does not count as use: only opening, uploading and completing keep a session.
        s.touched = self.last_use(&s);
        self.save(&s)?;
        Ok(self.report(&s, missing, bytes))
    }

    /// Completes session `id`: checks every chunk and the whole file, records the manifest,
    /// then the name. Completing a completed session again answers the same; the flag says
    /// whether this call was the one that completed it.
    ///
    /// # Errors
    /// [`Error::Incomplete`] with the missing ids; [`Error::Rejected`] if the chunks do
    /// not make the file the manifest claims; [`Error::SessionEnded`] for an expired session;
    /// [`Error::NoSession`]; store errors.
    pub fn complete(&self, id: SessionId, ns: &Namespace) -> Result<(Progress, bool)> {
        self.complete_hiding(id, ns, None)
    }

    /// As [`Sessions::complete`], counting missing what `hide` hides (see [`Hide`]): another
    /// namespace's chunks complete no file of the caller's until it sent them.
    ///
    /// # Errors
    /// As [`Sessions::complete`].
    pub fn complete_hiding(
        &self,
        id: SessionId,
        ns: &Namespace,
        hide: Option<&Hide>,
    ) -> Result<(Progress, bool)> {
        let lock = self.lock_of(id);
        let _held = crate::lock(&lock);
        let _shared = self.store.lock_upload(&id.0, None)?;
        let mut s = self.load_in(id, ns)?;
        self.expire_if_idle(&mut s)?;
        match s.state {
            SessionState::Complete => return Ok((self.report(&s, 0, 0), false)),
            SessionState::Expired => {
                return Err(Error::SessionEnded {
                    id,
                    state: s.state.as_str(),
                });
            }
            SessionState::Waiting | SessionState::Uploading => {}
        }
        let (missing, _) = self.still_missing(&s, hide)?;
        if !missing.is_empty() {
            s.touched = now();
            self.save(&s)?;
            let missing = missing.iter().map(|r| r.id).collect();
            return Err(Error::Incomplete { missing });
        }
        // A file already stored was checked when it was; otherwise hash it out of the store
        // (most of it already hashed in the background while the chunks arrived).
        let background = self.take_verifier(id, false);
        if self.store.get_manifest(&s.manifest.file_id)?.is_none() {
            let checked = match background {
                Some(Ok(actual)) if actual == s.manifest.file_id => Ok(()),
                _ => {
                    let _turn = crate::lock(&self.verifying);
                    restore::verify_file(&*self.store, &s.manifest)
                }
            };
            match checked {
                Ok(()) => {}
                // The client's manifest claimed what its chunks are not.
                Err(e @ (Error::FileMismatch { .. } | Error::LengthMismatch { .. })) => {
                    return Err(Error::Rejected(Box::new(e)));
                }
                Err(e) => return Err(e),
            }
            self.store.put_manifest(&s.manifest)?;
        }
        if let Some(key) = &s.name {
            let (ns, name) = Namespace::of_key(key);
            names::record_in(&*self.store, &ns, name, &s.manifest)?;
        }
        s.state = SessionState::Complete;
        crate::lock(&self.lacking).remove(&s.id);
        s.touched = now();
        self.save(&s)?;
        Ok((self.report(&s, 0, 0), true))
    }

    /// Aborts session `id` and forgets it. The chunks it brought stay until gc.
    ///
    /// # Errors
    /// [`Error::NoSession`]; store errors.
    pub fn abort(&self, id: SessionId, ns: &Namespace) -> Result<()> {
        let lock = self.lock_of(id);
        let _held = crate::lock(&lock);
        let _shared = self.store.lock_upload(&id.0, None)?;
        self.load_in(id, ns)?;
        self.take_verifier(id, true);
        self.store.delete_upload(UploadKind::Session, &id.0)?;
        self.forget(id);
        Ok(())
    }

    fn forget(&self, id: SessionId) {
        crate::lock(&self.locks).remove(&id);
        crate::lock(&self.activity).remove(&id);
        crate::lock(&self.lacking).remove(&id);
    }

    /// Expires idle sessions and forgets ended ones older than one more TTL. Returns the
    /// sessions it expired.
    ///
    /// # Errors
    /// Store errors.
    pub fn sweep(&self) -> Result<Vec<Progress>> {
        let mut expired = Vec::new();
        for (key, bytes) in self.store.uploads(UploadKind::Session)? {
            let s: Session = match record::decode("upload session", SESSION_VERSION, &bytes) {
                Ok(s) => s,
                Err(e) => {
                    // No request can use it; its chunks go with the next gc. One damaged
                    // record must not stop every sweep (and gc) from then on.
                    let id = SessionId(key);
                    tracing::warn!(session = %id, error = %e, "damaged upload session record dropped");
                    self.store.delete_upload(UploadKind::Session, &key)?;
                    self.forget(id);
                    continue;
                }
            };
            // Only a record the sweep will change is held against other servers.
            if !self.idle(&s) && !self.stale(&s) {
                continue;
            }
            let lock = self.lock_of(s.id);
            let _held = crate::lock(&lock);
            let _shared = self.store.lock_upload(&s.id.0, None)?;
            let Ok(mut s) = self.load(s.id) else { continue };
            if self.expire_if_idle(&mut s)? {
                expired.push(self.report(&s, 0, 0));
            } else if self.stale(&s) {
                self.store.delete_upload(UploadKind::Session, &s.id.0)?;
                drop(_held);
                self.forget(s.id);
            }
        }
        Ok(expired)
    }
}

/// The namespace session `s` belongs to: its name's (the default one for an unnamed session).
fn owner(s: &Session) -> Namespace {
    Namespace::of_upload(s.name.as_deref())
}

/// The refusal of an unnamed upload in namespace `ns`.
pub fn unnamed(ns: &Namespace) -> Error {
    Error::Malformed {
        what: "upload",
        detail: format!(
            "an upload in namespace {ns} needs a name: a file without one would be reachable \
             by nobody in it"
        ),
    }
}

/// Every open session's manifest in `store`: chunks gc must keep. A session past its TTL
/// that no sweep has expired yet counts as open; a record that does not decode is left out
/// (no request can use it; the sweep drops it).
///
/// # Errors
/// Store errors.
pub fn open_manifests(store: &dyn ChunkStore) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (_, bytes) in store.uploads(UploadKind::Session)? {
        if let Ok(s) = record::decode::<Session>("upload session", SESSION_VERSION, &bytes)
            && s.state.is_open()
        {
            out.push(s.manifest);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_damaged_session_record_is_dropped_and_stops_neither_sweep_nor_gc() {
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(crate::StoreConfig::default()));
        let sessions = Sessions::new(store.clone(), Duration::from_secs(3600));
        let good = sessions
            .begin(&Namespace::default_one(), Some("f"), None, 1 << 20)
            .unwrap();
        let (opened, _) = good.finish(Hash::of(b""), 0).unwrap();
        let damaged = [0xfbu8; 16];
        store
            .put_upload(UploadKind::Session, &damaged, b"\x01 not a record")
            .unwrap();
        // Before: `?` on the damaged record failed both, every time.
        let manifests = open_manifests(&*store).unwrap();
        assert_eq!(manifests.len(), 1);
        sessions.sweep().unwrap();
        assert_eq!(
            store.get_upload(UploadKind::Session, &damaged).unwrap(),
            None
        );
        let id: SessionId = opened.id.parse().unwrap();
        assert!(
            store
                .get_upload(UploadKind::Session, &id.0)
                .unwrap()
                .is_some()
        );
    }
}
