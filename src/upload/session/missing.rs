//! What a session lacks: the opening's lookups, page by page as the manifest arrives, and the
//! cached answer a progress query reuses.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, ManifestBuilder};
use crate::restore;
use crate::store::{ChunkStore, Pin};
use crate::upload::session::verify::Verifier;
use crate::upload::session::{Hide, Progress, Session, SessionId, SessionState, Sessions, now};

/// Refs of missing chunks all sessions together may keep in memory (36 bytes each: 36 MiB);
/// a session that lacks more keeps only its counts.
pub(super) const MAX_LACKING_REFS: usize = 1 << 20;

/// An answer that took at least this long is reused for ten times as long; a cheaper one is
/// computed anew every time (so a small session's progress is always current).
pub(super) const REUSE_FROM: Duration = Duration::from_millis(20);

/// What one session lacked when last looked at, and what looking cost.
pub(super) struct Lacking {
    /// The refs still missing, if few enough to keep: only these are looked up again (no
    /// manifest page is read). `None`: the whole manifest is read again.
    refs: Option<Vec<ChunkRef>>,
    chunks: u64,
    bytes: u64,
    at: Instant,
    cost: Duration,
    /// Counted with a [`Hide`]: reused only for a query that hides too.
    hidden: bool,
}

impl Sessions {
    /// The distinct chunks of `s` the store lacks, with their bytes.
    /// With `hide`, also those it hides (see [`Hide`]).
    pub(super) fn still_missing(
        &self,
        s: &Session,
        hide: Option<&Hide>,
    ) -> Result<(Vec<ChunkRef>, u64)> {
        // (A file stored whole lacks nothing, unless what the store holds is hidden.)
        if hide.is_none() && self.store.get_manifest(&s.manifest.file_id)?.is_some() {
            return Ok((Vec::new(), 0));
        }
        // Page by page, keeping only what is missing (not every ref of a huge manifest).
        let mut lacking = Vec::new();
        restore::for_each_page(&*self.store, &s.manifest, |page| {
            keep_missing(&*self.store, hide, &page.chunks, &mut lacking)
        })?;
        Ok(distinct(&lacking))
    }

    /// How many distinct chunks open session `s` still lacks, and their bytes, for a progress
    /// query. Cheap whatever the manifest's size: the refs still missing are kept (up to
    /// [`MAX_LACKING_REFS`] for all sessions) and only they are looked up again, and an answer
    /// that took at least [`REUSE_FROM`] is reused while younger than ten times that, so
    /// polling a huge upload spends at most about a tenth of a core on it.
    /// With `hide`, also those it hides (see [`Hide`]).
    pub(super) fn lacking(&self, s: &Session, hide: Option<&Hide>) -> Result<(u64, u64)> {
        let hidden = hide.is_some();
        let last = {
            let mut lacking = crate::lock(&self.lacking);
            if let Some(l) = lacking.get(&s.id)
                && l.hidden == hidden
                && l.cost >= REUSE_FROM
                && l.at.elapsed() < l.cost * 10
            {
                return Ok((l.chunks, l.bytes));
            }
            lacking.remove(&s.id).filter(|l| l.hidden == hidden)
        };
        let started = Instant::now();
        let (refs, bytes) = match last.and_then(|l| l.refs) {
            // Distinct already (kept from a full look or the opening): look them up again.
            Some(refs) if hidden || self.store.get_manifest(&s.manifest.file_id)?.is_none() => {
                let mut still = Vec::new();
                keep_missing(&*self.store, hide, &refs, &mut still)?;
                let bytes = still.iter().map(|r| u64::from(r.len)).sum();
                (still, bytes)
            }
            Some(_) => (Vec::new(), 0),
            None => self.still_missing(s, hide)?,
        };
        let chunks = refs.len() as u64;
        self.remember_lacking(s.id, refs, bytes, started.elapsed(), hidden);
        Ok((chunks, bytes))
    }

    /// Keeps what session `id` lacks for [`Sessions::lacking`]: the refs if they fit.
    pub(super) fn remember_lacking(
        &self,
        id: SessionId,
        refs: Vec<ChunkRef>,
        bytes: u64,
        cost: Duration,
        hidden: bool,
    ) {
        let mut lacking = crate::lock(&self.lacking);
        let kept: usize = lacking
            .values()
            .filter_map(|l| l.refs.as_ref().map(Vec::len))
            .sum();
        let chunks = refs.len() as u64;
        lacking.insert(
            id,
            Lacking {
                refs: (kept + refs.len() <= MAX_LACKING_REFS).then_some(refs),
                chunks,
                bytes,
                at: Instant::now(),
                cost,
                hidden,
            },
        );
    }
}

/// Appends to `out` the refs among `refs` whose chunks the store lacks (or `hide` hides), in
/// order.
pub(super) fn keep_missing(
    store: &dyn ChunkStore,
    hide: Option<&Hide>,
    refs: &[ChunkRef],
    out: &mut Vec<ChunkRef>,
) -> Result<()> {
    let ids: Vec<Hash> = refs.iter().map(|r| r.id).collect();
    let mut flags = store.missing(&ids)?;
    if let Some(hide) = hide {
        hide(&ids, &mut flags)?;
    }
    out.extend(refs.iter().zip(flags).filter(|(_, m)| *m).map(|(r, _)| *r));
    Ok(())
}

/// The first ref of each id in `refs`, in file order. Sorting positions takes 8 bytes a ref
/// where a hash set took about a hundred (a 1.86 M-ref manifest spent ~180 MB on one).
pub(super) fn first_of_each(refs: &[ChunkRef]) -> impl Iterator<Item = &ChunkRef> {
    let mut order: Vec<usize> = (0..refs.len()).collect();
    order.sort_unstable_by(|&a, &b| refs[a].id.cmp(&refs[b].id).then(a.cmp(&b)));
    order.dedup_by(|later, first| refs[*later].id == refs[*first].id);
    order.sort_unstable();
    order.into_iter().map(move |i| &refs[i])
}

/// The first ref of each id in `refs`, in file order, and their bytes.
pub(super) fn distinct(refs: &[ChunkRef]) -> (Vec<ChunkRef>, u64) {
    let unique: Vec<ChunkRef> = first_of_each(refs).copied().collect();
    let bytes = unique.iter().map(|r| u64::from(r.len)).sum();
    (unique, bytes)
}

/// A session being opened: its manifest arriving in pieces.
pub struct Opening<'a> {
    pub(super) sessions: &'a Sessions,
    pub(super) name: Option<String>,
    pub(super) chunker: ChunkerParams,
    pub(super) max_chunk: u32,
    pub(super) builder: ManifestBuilder,
    /// Refs since the last stored page: looked up once their page is stored (and pinned).
    pub(super) unpaged: Vec<ChunkRef>,
    /// Refs looked up and found missing, in file order (an id may come twice).
    pub(super) missing: Vec<ChunkRef>,
    pub(super) total: u64,
    /// Stored pages' hashes for the background hash, if it runs.
    pub(super) feed: Option<mpsc::Sender<Hash>>,
    pub(super) verifier: Option<Verifier>,
    /// Keeps gc off the pages and chunks until the session record holds them.
    pub(super) pin: Pin,
    /// What the opener may not be told is stored (see [`Hide`]).
    pub(super) hide: Option<Hide>,
}

impl Opening<'_> {
    /// Takes the next refs of the manifest, in file order.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an empty chunk or one over the manifest's max,
    /// [`Error::TooLarge`] for one over the server's limit; store errors.
    pub fn push(&mut self, refs: &[ChunkRef]) -> Result<()> {
        for r in refs {
            if r.len == 0 || r.len > self.chunker.max {
                return Err(Error::Malformed {
                    what: "manifest",
                    detail: format!(
                        "chunk {} has length {}, outside 1..={} (the manifest's max)",
                        r.id, r.len, self.chunker.max
                    ),
                });
            }
            if r.len > self.max_chunk {
                return Err(Error::TooLarge {
                    what: "chunk in manifest",
                    size: r.len.into(),
                    limit: self.max_chunk.into(),
                });
            }
            self.total += u64::from(r.len);
            self.unpaged.push(*r);
            if let Some(p) = self.builder.push(*r) {
                self.sessions.store.put_page_pinned(&p, &self.pin)?;
                self.look_up_unpaged()?;
                self.feed_page(p.pref.hash);
            }
        }
        Ok(())
    }

    /// Hands a stored page to the background hash, if it runs.
    fn feed_page(&mut self, page: Hash) {
        if let Some(feed) = &self.feed
            && feed.send(page).is_err()
        {
            self.feed = None;
        }
    }

    /// Looks up the refs whose page was just stored, keeping those the store lacks. Their page
    /// is pinned, so what is present stays so: no id needs pinning (a 1.86 M-ref manifest
    /// looked up whole at the end held every ref, every id and its pin, ~200 MB, at once).
    fn look_up_unpaged(&mut self) -> Result<()> {
        if self.unpaged.is_empty() {
            return Ok(());
        }
        keep_missing(
            &*self.sessions.store,
            self.hide.as_ref(),
            &self.unpaged,
            &mut self.missing,
        )?;
        self.unpaged.clear();
        Ok(())
    }

    /// Ends the manifest with the file's id and size; stores the session and answers which
    /// chunks the store lacks.
    ///
    /// # Errors
    /// [`Error::Malformed`] if the chunk lengths do not add up to `size`; store errors.
    pub fn finish(mut self, file_id: Hash, size: u64) -> Result<(Progress, Vec<Hash>)> {
        if self.total != size {
            return Err(Error::Malformed {
                what: "manifest",
                detail: format!(
                    "chunk lengths add up to {}, not the size {size}",
                    self.total
                ),
            });
        }
        let sessions = self.sessions;
        let store = &sessions.store;
        let builder = std::mem::take(&mut self.builder);
        let (manifest, last) = builder.finish(file_id, self.chunker);
        if let Some(p) = last {
            store.put_page_pinned(&p, &self.pin)?;
            self.feed_page(p.pref.hash);
        }
        self.look_up_unpaged()?;
        // A file the store holds already needs no chunk, whatever boundaries this client cut
        // (unless what the store holds is hidden from the opener: see `Hide`).
        let stored = self.hide.is_none() && store.get_manifest(&file_id)?.is_some();
        let (missing, missing_bytes) = if stored {
            (Vec::new(), 0)
        } else {
            distinct(&self.missing)
        };
        self.missing = Vec::new();
        let t = now();
        let s = Session {
            id: sessions.new_id(&file_id),
            name: self.name.take(),
            manifest,
            state: SessionState::Waiting,
            created: t,
            touched: t,
            missing_at_open: missing.len() as u64,
            missing_bytes_at_open: missing_bytes,
        };
        sessions.save(&s)?;
        // The refs are complete: the background hash can finish once the chunks are in. A file
        // already stored needs no hash at all.
        drop(self.feed.take());
        if let Some(v) = self.verifier.take() {
            if !stored {
                crate::lock(&sessions.verifiers).insert(s.id, v);
            } else {
                sessions.stop(v);
            }
        }
        let p = sessions.report(&s, missing.len() as u64, missing_bytes);
        let ids = missing.iter().map(|r| r.id).collect();
        // The first progress query looks up only these (a new session lacks at most them).
        let hidden = self.hide.is_some();
        sessions.remember_lacking(s.id, missing, missing_bytes, Duration::ZERO, hidden);
        Ok((p, ids))
    }
}

impl Drop for Opening<'_> {
    /// An opening that failed or was abandoned stops its background hash.
    fn drop(&mut self) {
        drop(self.feed.take());
        if let Some(v) = self.verifier.take() {
            self.sessions.stop(v);
        }
    }
}
