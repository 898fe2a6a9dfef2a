//! An upload session's background hash: while chunks arrive, a thread per session (at most
//! [`MAX_VERIFIERS`]) hashes the file back out of the store in order, so `complete` need not
//! read it all at the end; chunks the upload just decoded are handed over instead of read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::error::Result;
use crate::hash::Hash;
use crate::restore;
use crate::upload::session::{SessionId, Sessions};

/// Most sessions hashed in the background at once; later ones are hashed when they complete.
/// Two keep both cores of a small server busy; each holds a 4 MiB step of decoded bytes.
pub(super) const MAX_VERIFIERS: usize = 2;

/// Wakes the background hashers when chunks land in the store.
#[derive(Default)]
pub(super) struct Arrivals {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Arrivals {
    pub(super) fn notify(&self) {
        *crate::lock(&self.count) += 1;
        self.cv.notify_all();
    }

    /// Waits until the count differs from `*seen` (at once if it already does, which covers
    /// arrivals since the caller last looked), at most 100 ms (other writers do not notify);
    /// updates `*seen`.
    pub(super) fn wait(&self, seen: &mut u64) {
        let guard = crate::lock(&self.count);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, Duration::from_millis(100), |c| *c == *seen)
            .unwrap_or_else(PoisonError::into_inner);
        *seen = *guard;
    }
}

/// A session's file being hashed out of the store while its chunks arrive.
pub(super) struct Verifier {
    cancel: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Hash>>,
    cache: Arc<UploadCache>,
}

/// Chunks of a session just uploaded, decoded, until its background hash takes them.
pub(super) struct UploadCache {
    chunks: Mutex<HashMap<Hash, bytes::Bytes>>,
    /// What every session's cache holds together (the server's, shared).
    total: Arc<AtomicUsize>,
}

/// Decoded bytes the background hashes' caches may hold together = 16 MiB: a few batches
/// ahead of them, however many sessions upload at once (per session, eight concurrent
/// pushes took the server past 250 MiB).
pub(super) const CACHE_BYTES: usize = 16 << 20;

impl UploadCache {
    fn new(total: Arc<AtomicUsize>) -> Self {
        UploadCache {
            chunks: Mutex::default(),
            total,
        }
    }

    pub(super) fn offer(&self, id: Hash, raw: bytes::Bytes) {
        let n = raw.len();
        if self.total.fetch_add(n, Ordering::Relaxed) + n > CACHE_BYTES {
            self.total.fetch_sub(n, Ordering::Relaxed);
            return; // the hash reads this one from the store instead
        }
        let mut chunks = crate::lock(&self.chunks);
        if chunks.insert(id, raw).is_some() {
            self.total.fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub(super) fn take(&self, id: &Hash) -> Option<bytes::Bytes> {
        let b = crate::lock(&self.chunks).remove(id)?;
        self.total.fetch_sub(b.len(), Ordering::Relaxed);
        Some(b)
    }
}

impl Drop for UploadCache {
    fn drop(&mut self) {
        let left: usize = crate::lock(&self.chunks).values().map(|b| b.len()).sum();
        self.total.fetch_sub(left, Ordering::Relaxed);
    }
}

impl Sessions {
    /// Returns true if and only if `sid`'s background hash runs and has room for decoded
    /// chunks (so an upload should keep them).
    pub fn wants_chunks(&self, sid: SessionId) -> bool {
        let verifiers = crate::lock(&self.verifiers);
        verifiers.contains_key(&sid) && self.cached.load(Ordering::Relaxed) < CACHE_BYTES
    }

    /// Tells the background hashers that chunks were stored; `session`'s hash may take the
    /// decoded bytes of `chunks` instead of decoding them again.
    pub fn chunks_arrived(&self, session: Option<SessionId>, chunks: &[(Hash, bytes::Bytes)]) {
        if let Some(sid) = session {
            let verifiers = crate::lock(&self.verifiers);
            if let Some(v) = verifiers.get(&sid) {
                for (id, raw) in chunks {
                    // A copy: `raw` may be a slice of a whole request body, which a cached
                    // slice would keep alive (measured: 79 MB of bodies held by a 512 MiB
                    // push to a bucket store, whose hash runs behind the upload).
                    v.cache.offer(*id, bytes::Bytes::copy_from_slice(raw));
                }
            }
        }
        self.arrivals.notify();
    }

    /// Starts a background hash fed by the returned sender, if a slot is free.
    pub(super) fn start_verifier(&self) -> Option<(mpsc::Sender<Hash>, Verifier)> {
        if self.running.fetch_add(1, Ordering::SeqCst) >= MAX_VERIFIERS {
            self.running.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let (tx, rx) = mpsc::channel::<Hash>();
        let cancel = Arc::new(AtomicBool::new(false));
        let cache = Arc::new(UploadCache::new(self.cached.clone()));
        let (store, arrivals, stop, c) = (
            self.store.clone(),
            self.arrivals.clone(),
            cancel.clone(),
            cache.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("hoard-verify".into())
            .spawn(move || {
                let mut seen = 0;
                restore::hash_arriving(&*store, &rx, &|id| c.take(id), |starved| {
                    if starved {
                        arrivals.wait(&mut seen);
                    }
                    !stop.load(Ordering::Relaxed)
                })
            });
        match spawned {
            Ok(thread) => Some((
                tx,
                Verifier {
                    cancel,
                    thread,
                    cache,
                },
            )),
            Err(_) => {
                self.running.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// Cancels a background hash and waits for its thread.
    pub(super) fn stop(&self, v: Verifier) {
        v.cancel.store(true, Ordering::Relaxed);
        self.arrivals.notify();
        let _ = v.thread.join();
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stops and forgets the background hasher of `id`; returns its result if it finished.
    pub(super) fn take_verifier(&self, id: SessionId, cancel: bool) -> Option<Result<Hash>> {
        let v = crate::lock(&self.verifiers).remove(&id)?;
        if cancel {
            v.cancel.store(true, Ordering::Relaxed);
        }
        self.arrivals.notify();
        let r = v.thread.join().ok();
        self.running.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Stops every background hasher (server shutdown), so nothing holds the store.
    pub fn stop_verifiers(&self) {
        let ids: Vec<SessionId> = crate::lock(&self.verifiers).keys().copied().collect();
        for id in ids {
            self.take_verifier(id, true);
        }
    }
}
