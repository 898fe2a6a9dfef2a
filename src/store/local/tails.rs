//! tus tails in the local store: for each unfinished upload, an append-only file under
//! `tails/` with the bytes after its last cut point, and a small sled record saying where in
//! that file they are. A `PATCH` of one byte writes one byte to the file and a record of about
//! forty bytes: what it costs does not grow with the tail (which, kept as one sled value, was
//! rewritten whole by every request, and again by sled's page consolidation).
//!
//! Record (sled tree `tus_tails`, key: upload id, 16 B): version 1 ‖ generation (u32 LE) ‖
//! file offset (u64 LE) ‖ stream position (u64 LE) ‖ length (u64 LE) ‖ meta (the caller's,
//! opaque). File `tails/<id hex>.<generation>`: its bytes `[offset, offset + length)` are the
//! stream's bytes `[position, position + length)`. Bytes after them were never taken in by a
//! record (a crash came between the write and the record) and the next write overwrites them.
//!
//! Order: bytes go to the file and are synced before the record that covers them is written
//! and flushed, so a record never claims bytes that are not on disk. A write that continues the
//! run appends in place; one that starts a new run (the stream was cut past the run's end)
//! writes after the old run. When more than [`COMPACT_AT`] bytes of the file lie before what
//! is still needed, the needed bytes and the new ones go to the next generation's file, the
//! record moves to it, and the old file is removed: each byte is copied at most about once more.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::TailRun;
use crate::store::local::fs::sync_dir;
use crate::upload::id::SessionId;

/// Format version of tail records.
const VERSION: u8 = 1;
/// Bytes before the needed ones a file may hold before it is rewritten.
const COMPACT_AT: u64 = 1 << 20;
/// Length of a record before the meta.
const HEADER: usize = 29;

/// Where one upload's tail is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    generation: u32,
    offset: u64,
    position: u64,
    len: u64,
}

impl Record {
    fn end(&self) -> u64 {
        self.position + self.len
    }

    fn encode(&self, meta: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + meta.len());
        v.push(VERSION);
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.position.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(meta);
        v
    }

    fn decode(v: &[u8]) -> Option<(Record, &[u8])> {
        if v.len() < HEADER || v[0] != VERSION {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(v[at..at + 8].try_into().unwrap_or_default());
        let generation = u32::from_le_bytes(v[1..5].try_into().unwrap_or_default());
        let rec = Record {
            generation,
            offset: u64_at(5),
            position: u64_at(13),
            len: u64_at(21),
        };
        Some((rec, &v[HEADER..]))
    }
}

/// The tails of one store.
pub(super) struct Tails {
    dir: PathBuf,
    records: sled::Tree,
    /// Tails in the format before these files (one sled value each): left out, and removed
    /// with their upload (which then resumes at its last cut point).
    legacy: sled::Tree,
    db: sled::Db,
}

impl Tails {
    /// The tails of the store at `root`, whose index is `db`, as they are (a store opened
    /// read-only has none: its index is read from the journal).
    pub(super) fn new(root: &Path, db: &sled::Db) -> Result<Self> {
        Ok(Tails {
            dir: root.join("tails"),
            records: db.open_tree("tus_tails")?,
            legacy: db.open_tree("tus_tail")?,
            db: db.clone(),
        })
    }

    /// The tails of the store at `root`, whose index is `db`; removes files no record names
    /// (left by a crash during a rewrite, or by an index rebuilt from the journal).
    pub(super) fn open(root: &Path, db: &sled::Db) -> Result<Self> {
        let tails = Self::new(root, db)?;
        let Ok(entries) = std::fs::read_dir(&tails.dir) else {
            return Ok(tails);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let named =
                name.to_str()
                    .and_then(|n| n.split_once('.'))
                    .and_then(|(id, generation)| {
                        Some((id.parse::<SessionId>().ok()?, generation.parse().ok()?))
                    });
            let wanted = match named {
                Some((id, generation)) => {
                    tails.record(&id.0)?.map(|(r, _)| r.generation) == Some(generation)
                }
                None => false,
            };
            if !wanted {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(tails)
    }

    fn path(&self, id: &[u8; 16], generation: u32) -> PathBuf {
        self.dir.join(format!("{}.{generation}", SessionId(*id)))
    }

    /// `len` bytes at `offset` of upload `id`'s file of `generation`.
    fn read_at(&self, id: &[u8; 16], generation: u32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(id, generation);
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        std::fs::File::open(&path)
            .and_then(|f| f.read_exact_at(&mut bytes, offset))
            .map_err(Error::io("cannot read tus tail", &path))?;
        Ok(bytes)
    }

    fn record(&self, id: &[u8; 16]) -> Result<Option<(Record, Vec<u8>)>> {
        let Some(v) = self.records.get(id)? else {
            return Ok(None);
        };
        Ok(Record::decode(&v).map(|(r, meta)| (r, meta.to_vec())))
    }

    /// The tail of upload `id`, if it has one.
    pub(super) fn read(&self, id: &[u8; 16]) -> Result<Option<TailRun>> {
        let Some((rec, meta)) = self.record(id)? else {
            return Ok(None);
        };
        Ok(Some(TailRun {
            position: rec.position,
            bytes: self.read_at(id, rec.generation, rec.offset, rec.len)?,
            meta,
        }))
    }

    /// Writes `bytes` at stream `position` (see [`crate::store::ChunkStore::write_tail`]).
    pub(super) fn write(
        &self,
        id: &[u8; 16],
        keep_from: u64,
        position: u64,
        bytes: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        let old = self.record(id)?.map(|(r, _)| r);
        let n = bytes.len() as u64;
        // Where the new bytes go in the old file: after its run (what follows is unreferenced).
        let at = old.map_or(0, |r| r.offset + r.len);
        // The run after this write: the old one continued, or a new one at `position`.
        let mut rec = match old {
            Some(r) if r.end() == position => Record {
                len: r.len + n,
                ..r
            },
            _ => Record {
                generation: old.map_or(0, |r| r.generation),
                offset: at,
                position,
                len: n,
            },
        };
        // Leave out what is no longer needed.
        let dead = keep_from.clamp(rec.position, rec.end()) - rec.position;
        rec.offset += dead;
        rec.position += dead;
        rec.len -= dead;
        if old.is_none() || rec.offset > COMPACT_AT {
            // The needed bytes the old file holds, then the new ones, into a new file.
            let mut all = match old {
                Some(r) if rec.position < position => {
                    self.read_at(id, r.generation, rec.offset, position - rec.position)?
                }
                _ => Vec::new(),
            };
            let take = (rec.len as usize)
                .saturating_sub(all.len())
                .min(bytes.len());
            all.extend_from_slice(&bytes[bytes.len() - take..]);
            rec = Record {
                generation: old.map_or(0, |r| r.generation.wrapping_add(1)),
                offset: 0,
                position: rec.position,
                len: all.len() as u64,
            };
            self.create(id, rec.generation, &all)?;
        } else {
            let path = self.path(id, rec.generation);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.write_all_at(bytes, at)?;
                    f.sync_data()
                })
                .map_err(Error::io("cannot write tus tail", &path))?;
        }
        self.records.insert(id, rec.encode(meta))?;
        self.db.flush()?;
        if let Some(r) = old
            && r.generation != rec.generation
        {
            let _ = std::fs::remove_file(self.path(id, r.generation));
        }
        Ok(())
    }

    /// Writes a new tail file, durably (the file's name too).
    fn create(&self, id: &[u8; 16], generation: u32, bytes: &[u8]) -> Result<()> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&self.dir)
            .map_err(Error::io("cannot create directory", &self.dir))?;
        let path = self.path(id, generation);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, bytes)?;
                f.sync_all()
            })
            .map_err(Error::io("cannot write tus tail", &path))?;
        sync_dir(&self.dir)
    }

    /// Forgets upload `id`'s tail: its record, then its files.
    pub(super) fn forget(&self, id: &[u8; 16]) -> Result<()> {
        let old = self.record(id)?;
        self.records.remove(id)?;
        self.legacy.remove(id)?;
        self.db.flush()?;
        if let Some((r, _)) = old {
            let _ = std::fs::remove_file(self.path(id, r.generation));
        }
        Ok(())
    }
}
