//! Seam (a), pack storage: where encoded chunk bytes live. A pack is a named run of
//! self-describing entries (see `pack.rs` for the format); a store appends to new packs, reads
//! ranges of them, lists them and deletes them, and asks for nothing else: a local directory
//! ([`LocalPacks`](crate::store::local::LocalPacks)) today, an object-store bucket next.
//!
//! The contract (tests in `tests/integration/seams.rs` run it on every implementation):
//! - A pack gets a name never used before, so a name always means the same bytes.
//! - An entry appended to a sink is readable at the location `append` returned once a sync
//!   that started after it has finished, and not necessarily before.
//! - Nothing the storage does takes a lock across packs: many sinks write at once.
//! - Errors name the pack and what failed (a full disk is reported as such, see
//!   [`Error::environment`](crate::Error::environment)).

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::pack::{ChunkLoc, ENTRY_HEADER_LEN, parse_entry_header};

/// Where encoded chunk bytes live.
pub trait PackStorage: Send + Sync {
    /// Returns once the storage answers a trivial request (a server's health check), within
    /// a couple of seconds; local files always do.
    ///
    /// # Errors
    /// The engine's error when it does not answer.
    fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// Starts a new pack under a name never used before.
    ///
    /// # Errors
    /// I/O errors of the storage.
    fn create(&self) -> Result<Box<dyn PackSink>>;

    /// Reads the bytes of `pack` from `offset` on into `bufs`, one after the other (an entry's
    /// header and payload in one request). `Ok(false)` if the pack ends before `bufs` are full.
    ///
    /// # Errors
    /// I/O errors, a pack that does not exist among them.
    fn read_at(&self, pack: u64, offset: u64, bufs: &mut [&mut [u8]]) -> Result<bool>;

    /// Reads several ranges, `reads[i] = (pack, offset, len)`; for each, its bytes, or `None`
    /// if the pack ends before (as [`PackStorage::read_at`]). A storage behind a network runs
    /// them at once and hands over the buffers its client filled.
    ///
    /// # Errors
    /// As [`PackStorage::read_at`].
    fn read_many(&self, reads: &[(u64, u64, u64)]) -> Result<Vec<Option<bytes::Bytes>>> {
        reads
            .iter()
            .map(|&(pack, offset, len)| {
                let mut buf = vec![0; len as usize];
                let whole = self.read_at(pack, offset, &mut [&mut buf])?;
                Ok(whole.then(|| buf.into()))
            })
            .collect()
    }

    /// True if every request costs a round trip (a bucket): a store then reads many entries
    /// at once with [`read_entries`] (adjacent ones in one request, several requests at once)
    /// rather than one read per entry.
    fn batches_reads(&self) -> bool {
        false
    }

    /// Reads a whole pack front to back (fsck), or `None` if it does not exist.
    ///
    /// # Errors
    /// I/O errors opening it.
    fn read_all(&self, pack: u64) -> Result<Option<Box<dyn std::io::Read + Send>>>;

    /// Every pack: `(name, length)`, in name order. Packs deleted while listing are left out.
    ///
    /// # Errors
    /// I/O errors.
    fn list(&self) -> Result<Vec<(u64, u64)>>;

    /// Deletes packs (one request for all of them where the storage allows it); a pack
    /// already gone is not an error.
    ///
    /// # Errors
    /// I/O errors.
    fn delete(&self, packs: &[u64]) -> Result<()>;

    /// Keeps a copy of what can still be read of a damaged entry where a repair leaves it
    /// (never deleted by hoard); returns where, or `None` if its pack is gone.
    ///
    /// # Errors
    /// I/O errors.
    fn quarantine(&self, id: &Hash, loc: &ChunkLoc) -> Result<Option<std::path::PathBuf>>;

    /// Bytes all packs take, with their headers.
    ///
    /// # Errors
    /// As [`PackStorage::list`].
    fn total_bytes(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|(_, len)| len).sum())
    }
}

/// Appends entries to one new pack.
pub trait PackSink: Send {
    /// The pack's name.
    fn pack(&self) -> u64;

    /// True when the next entry belongs in a new pack (this one is big enough, or, for storage
    /// whose packs are immutable once written, it was synced).
    fn full(&self) -> bool;

    /// Appends one entry; returns where it is.
    ///
    /// # Errors
    /// I/O errors (a full disk among them); the pack's later contents are then unknown.
    fn append(&mut self, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8])
    -> Result<ChunkLoc>;

    /// Starts making every entry appended so far durable; [`PackSync::wait`] finishes it,
    /// possibly on another thread while appends go on (where [`PackSink::full`] allows them).
    ///
    /// # Errors
    /// I/O errors.
    fn start_sync(&mut self) -> Result<Box<dyn PackSync>>;

    /// Makes every entry appended so far durable before returning.
    ///
    /// # Errors
    /// I/O errors.
    fn sync(&mut self) -> Result<()> {
        self.start_sync()?.wait()
    }

    /// Gives the pack up after a failed write: removes it, unless a sync was started (an
    /// index entry may then point into it; its tail is garbage for gc).
    fn abandon(self: Box<Self>);
}

/// A sync in flight.
pub trait PackSync: Send {
    /// Returns once the entries the sync covers are durable.
    ///
    /// # Errors
    /// I/O errors; the entries are then not durable.
    fn wait(self: Box<Self>) -> Result<()>;
}

/// Entries closer than this in one pack are read in one request (the bytes between them are
/// read and dropped) = 256 KiB.
const COALESCE_GAP: u64 = 256 << 10;
/// One request covers at most this much = 8 MiB: fewer, larger requests cost a bucket less
/// per byte (an export of 512 MiB from SeaweedFS took 9% less time than with 2 MiB), and an
/// export keeps one batch's requests in flight while it decodes the last.
const COALESCE_MAX: u64 = 8 << 20;

/// One entry as [`read_entries`] read it: its codec and payload, or why not.
pub type EntryRead = Result<(Codec, bytes::Bytes)>;

/// Reads the entries at `wanted` from `packs` as [`read_entry`] does, but with few requests:
/// entries are sorted by place, neighbours in one pack are read as one range, and the ranges
/// go to [`PackStorage::read_many`] together. Each entry's outcome is its own (one damaged
/// entry does not fail the others).
///
/// # Errors
/// The storage's errors for the whole batch (a pack that does not exist among them).
pub fn read_entries(
    packs: &dyn PackStorage,
    wanted: &[(Hash, ChunkLoc)],
) -> Result<Vec<EntryRead>> {
    let end = |l: &ChunkLoc| l.offset + ENTRY_HEADER_LEN as u64 + u64::from(l.stored_len);
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_unstable_by_key(|&i| (wanted[i].1.pack, wanted[i].1.offset));
    // Spans: (pack, start, end, members).
    let mut spans: Vec<(u64, u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let l = &wanted[i].1;
        match spans.last_mut() {
            Some((pack, start, stop, members))
                if *pack == l.pack
                    && l.offset <= *stop + COALESCE_GAP
                    && end(l).max(*stop) - *start <= COALESCE_MAX =>
            {
                *stop = end(l).max(*stop);
                members.push(i);
            }
            _ => spans.push((l.pack, l.offset, end(l), vec![i])),
        }
    }
    let reads: Vec<(u64, u64, u64)> = spans
        .iter()
        .map(|(pack, start, stop, _)| (*pack, *start, stop - start))
        .collect();
    let got = packs.read_many(&reads)?;
    let mut out: Vec<Option<EntryRead>> = (0..wanted.len()).map(|_| None).collect();
    for ((_, start, _, members), buf) in spans.iter().zip(&got) {
        for &i in members {
            let (id, loc) = &wanted[i];
            out[i] = Some(if let Some(buf) = buf {
                let at = (loc.offset - start) as usize;
                let header: &[u8; ENTRY_HEADER_LEN] = buf[at..at + ENTRY_HEADER_LEN]
                    .try_into()
                    .expect("a header's length");
                check_header(id, loc, header).map(|codec| {
                    let from = at + ENTRY_HEADER_LEN;
                    (codec, buf.slice(from..from + loc.stored_len as usize))
                })
            } else {
                // The pack ends within the span: each entry on its own says which are cut.
                let mut payload = Vec::new();
                read_entry(packs, id, loc, &mut payload).map(|codec| (codec, payload.into()))
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every entry is in a span"))
        .collect())
}

/// The codec of the entry whose header is `header`, if it agrees with `id` and `loc`.
fn check_header(id: &Hash, loc: &ChunkLoc, header: &[u8; ENTRY_HEADER_LEN]) -> Result<Codec> {
    match parse_entry_header(header) {
        Some((hid, tag, raw, stored))
            if hid == *id && tag == loc.codec && raw == loc.raw_len && stored == loc.stored_len =>
        {
            Codec::from_tag(tag)
        }
        _ => None,
    }
    .ok_or_else(|| Error::Corrupt {
        id: *id,
        detail: format!(
            "entry header at pack {:016x} offset {} does not match the index",
            loc.pack, loc.offset
        ),
    })
}

/// Reads the entry at `loc` from `packs` into `payload` (resized to it) and checks its header
/// against `loc`: the payload comes back only if magic, id, codec and lengths all agree. One
/// range read covers header and payload.
///
/// # Errors
/// [`Error::Corrupt`] for a header that disagrees or a pack that ends too soon; the storage's
/// errors otherwise.
pub fn read_entry(
    packs: &dyn PackStorage,
    id: &Hash,
    loc: &ChunkLoc,
    payload: &mut Vec<u8>,
) -> Result<Codec> {
    let corrupt = |detail: String| Error::Corrupt { id: *id, detail };
    let mut header = [0u8; ENTRY_HEADER_LEN];
    payload.resize(loc.stored_len as usize, 0);
    if !packs.read_at(loc.pack, loc.offset, &mut [&mut header, payload])? {
        return Err(corrupt(format!("pack {:016x} is truncated", loc.pack)));
    }
    check_header(id, loc, &header)
}
