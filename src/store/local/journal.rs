//! The metadata journal: every change to the store config, manifests, manifest pages and
//! names is appended to `STORE/journal.log` (and synced, where the index would be flushed)
//! before the sled index changes. With the packs, which name every chunk, it is enough to
//! rebuild a lost or damaged index (`hoard fsck --repair --rebuild-index`). Upload sessions
//! are not journaled: they are transient, and clients open them again.
//!
//! Format (version 1), all integers little-endian:
//!
//! ```text
//! file   = "HOARDJL" 0x01, then records back to back
//! record = "hJr1" | kind u8 | 3 zero bytes | len u32 | 4 zero bytes | BLAKE3(payload) [32] | payload
//! kind 1 config           payload = the `meta` `config` value (a versioned StoreConfig record)
//!      2 page             payload = the encoded page (its BLAKE3 is the page hash)
//!      3 manifest         payload = the encoded manifest
//!      4 name             payload = name length u32 | name (UTF-8) | the `names` value
//!      5 name removed     payload = name (UTF-8)
//!      6 manifest removed payload = file id [32]
//!      7 pages removed    payload = page hashes, 32 bytes each
//! ```
//!
//! Replay applies records in order, later ones winning. A record whose payload does not hash
//! to its header is skipped and counted; a damaged header or a torn tail (a crash mid-append)
//! ends the replay there. gc rewrites the journal as a snapshot of the index once it is more
//! than twice the size of what it describes.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;

/// First bytes of the journal file; the last byte is the format version.
const MAGIC: [u8; 8] = *b"HOARDJL\x01";
/// First bytes of every record.
const RECORD_MAGIC: [u8; 4] = *b"hJr1";
/// Bytes of a record header.
const HEADER_LEN: usize = 48;
/// Largest record payload believed = 64 MiB (a damaged length is not allocated).
const MAX_RECORD: u32 = 64 << 20;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The store config.
    Config = 1,
    /// A manifest page.
    Page = 2,
    /// A manifest.
    Manifest = 3,
    /// A name's whole history.
    Name = 4,
    /// A name removed.
    NameRemoved = 5,
    /// A manifest removed.
    ManifestRemoved = 6,
    /// Manifest pages removed.
    PagesRemoved = 7,
}

impl Kind {
    fn from_tag(t: u8) -> Option<Kind> {
        Some(match t {
            1 => Kind::Config,
            2 => Kind::Page,
            3 => Kind::Manifest,
            4 => Kind::Name,
            5 => Kind::NameRemoved,
            6 => Kind::ManifestRemoved,
            7 => Kind::PagesRemoved,
            _ => return None,
        })
    }
}

/// Encodes a name record's payload.
pub fn name_payload(name: &str, value: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len() + value.len());
    p.extend_from_slice(&(name.len() as u32).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(value);
    p
}

/// Splits a name record's payload into the name and the `names` value.
pub fn split_name_payload(p: &[u8]) -> Option<(&str, &[u8])> {
    let n = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(p.get(4..4 + n)?).ok()?;
    Some((name, &p[4 + n..]))
}

/// What a replay read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Records applied.
    pub records: u64,
    /// Records skipped because their payload does not match its hash.
    pub damaged: u64,
    /// Where reading stopped early, if it did (a torn tail or a damaged header).
    pub stopped: Option<String>,
}

/// True if the journal file at `path` holds anything past its header (a record, or damage).
pub fn has_records(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > MAGIC.len() as u64)
}

/// The open journal; appends go through [`Journal::lock`].
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    /// Why the journal was opened read-only, if it was: every write fails with it.
    read_only: Option<std::io::ErrorKind>,
}

/// The journal held for appending: hold it across the index change it records, so a
/// rewrite never misses a change.
pub struct Appender<'a> {
    path: &'a Path,
    file: MutexGuard<'a, File>,
    read_only: Option<std::io::ErrorKind>,
}

impl Appender<'_> {
    /// Appends a record (not yet synced).
    ///
    /// # Errors
    /// I/O errors (a full disk among them).
    pub fn append(&mut self, kind: Kind, payload: &[u8]) -> Result<()> {
        if let Some(why) = self.read_only {
            return Err(Error::io("cannot write journal", self.path)(why.into()));
        }
        let before = self
            .file
            .metadata()
            .map_err(Error::io("cannot stat", self.path))?
            .len();
        let written = self.file.write_all(&record(kind, payload));
        if written.is_err() {
            // A part written before the error (a full disk) would hide every later record
            // from a replay: cut it off again.
            let _ = self.file.set_len(before);
        }
        written.map_err(Error::io("cannot write journal", self.path))
    }

    /// Makes the records appended so far durable.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(Error::io("cannot sync journal", self.path))
    }
}

fn record(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER_LEN + payload.len());
    r.extend_from_slice(&RECORD_MAGIC);
    r.push(kind as u8);
    r.extend_from_slice(&[0; 3]);
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(blake3::hash(payload).as_bytes());
    r.extend_from_slice(payload);
    r
}

impl Journal {
    /// Opens (or creates) the journal at `path`; true if it was created just now.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(path: &Path) -> Result<(Self, bool)> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(Error::io("cannot open journal", path))?;
        if file
            .metadata()
            .map_err(Error::io("cannot stat", path))?
            .len()
            == 0
        {
            file.write_all(&MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(Error::io("cannot write journal", path))?;
        }
        Ok((
            Journal {
                path: path.to_owned(),
                file: Mutex::new(file),
                read_only: None,
            },
            created,
        ))
    }

    /// Opens the journal at `path` for reading only (`why` the store cannot be written):
    /// appends and rewrites fail with `why`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open_read_only(path: &Path, why: std::io::ErrorKind) -> Result<Self> {
        let file = File::open(path).map_err(Error::io("cannot open journal", path))?;
        Ok(Journal {
            path: path.to_owned(),
            file: Mutex::new(file),
            read_only: Some(why),
        })
    }

    /// Takes the journal for appending.
    pub fn lock(&self) -> Appender<'_> {
        Appender {
            path: &self.path,
            file: crate::lock(&self.file),
            read_only: self.read_only,
        }
    }

    /// Bytes in the journal file.
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// True if the journal holds no record.
    pub fn is_empty(&self) -> bool {
        !has_records(&self.path)
    }

    /// Replaces the journal with `records` (a snapshot of the index), atomically: written
    /// beside it, synced, renamed over it. The caller holds `held` (from [`Journal::lock`])
    /// so that nothing is appended meanwhile; it is pointed at the new file.
    ///
    /// # Errors
    /// I/O errors; the old journal is then left as it was.
    pub fn rewrite(
        &self,
        held: &mut Appender<'_>,
        records: impl IntoIterator<Item = Result<(Kind, Vec<u8>)>>,
    ) -> Result<()> {
        if let Some(why) = self.read_only {
            return Err(Error::io("cannot write journal", &self.path)(why.into()));
        }
        let tmp = self.path.with_extension("new");
        let io = |what| Error::io(what, &tmp);
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io("cannot create"))?);
        out.write_all(&MAGIC).map_err(io("cannot write"))?;
        for r in records {
            let (kind, payload) = r?;
            out.write_all(&record(kind, &payload))
                .map_err(io("cannot write"))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| io("cannot write")(e.into_error()))?;
        file.sync_all().map_err(io("cannot sync"))?;
        // Open the new file before it replaces the old one, so appends never go to an
        // unlinked file whatever fails after the rename.
        let reopened = OpenOptions::new()
            .append(true)
            .open(&tmp)
            .map_err(io("cannot open"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("cannot rename"))?;
        *held.file = reopened;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Error::io("cannot sync directory", dir))?;
        }
        Ok(())
    }
}

/// Reads the journal at `path`, calling `apply` with each intact record in order. After a
/// damaged record (bad header, bad hash, cut off), reading goes on at the next offset where an
/// intact record starts, so one damaged spot costs that record, not the rest.
///
/// # Errors
/// I/O errors opening or reading it, or `apply`'s errors (damage is counted, not returned).
pub fn replay(
    path: &Path,
    mut apply: impl FnMut(Kind, &[u8]) -> Result<()>,
) -> Result<ReplayReport> {
    let file = File::open(path).map_err(Error::io("cannot open journal", path))?;
    let total = file
        .metadata()
        .map_err(Error::io("cannot stat", path))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut report = ReplayReport::default();
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || magic != MAGIC {
        report.stopped = Some("the journal's file header is damaged".into());
        return Ok(report);
    }
    let mut pos = MAGIC.len() as u64;
    while pos < total {
        match next_record(&mut r, total - pos) {
            Some((kind, payload)) => {
                pos += (HEADER_LEN + payload.len()) as u64;
                apply(kind, &payload)?;
                report.records += 1;
            }
            None => {
                // Damage: read the rest and look for the next intact record.
                let mut rest = Vec::new();
                let mut f = File::open(path).map_err(Error::io("cannot open journal", path))?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(pos))
                    .and_then(|_| f.read_to_end(&mut rest))
                    .map_err(Error::io("cannot read journal", path))?;
                report.damaged += 1;
                match (1..rest.len()).find(|&i| parse_at(&rest[i..]).is_some()) {
                    Some(skip) => {
                        pos += skip as u64;
                        r = BufReader::with_capacity(1 << 20, f);
                        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(pos))
                            .map_err(Error::io("cannot read journal", path))?;
                    }
                    None => {
                        report.stopped = Some(format!("damaged or cut-off record at offset {pos}"));
                        return Ok(report);
                    }
                }
            }
        }
    }
    Ok(report)
}

/// One change a journal record describes, decoded.
pub enum Change<'a> {
    /// The store config record.
    Config(&'a [u8]),
    /// A manifest page and its hash.
    Page {
        /// BLAKE3 of `bytes`.
        hash: Hash,
        /// The encoded page.
        bytes: &'a [u8],
    },
    /// A manifest and its file id.
    Manifest {
        /// The file.
        file_id: Hash,
        /// The encoded manifest.
        bytes: &'a [u8],
    },
    /// A name's whole history (its `names` value).
    Name {
        /// The name.
        name: &'a str,
        /// The encoded name record.
        value: &'a [u8],
    },
    /// A name removed.
    NameRemoved(&'a str),
    /// A manifest removed.
    ManifestRemoved(Hash),
    /// Manifest pages removed.
    PagesRemoved(Vec<Hash>),
}

fn decode_change(kind: Kind, p: &[u8]) -> Option<Change<'_>> {
    Some(match kind {
        Kind::Config => Change::Config(p),
        Kind::Page => Change::Page {
            hash: Hash::of(p),
            bytes: p,
        },
        Kind::Manifest => Change::Manifest {
            file_id: crate::manifest::Manifest::decode(p).ok()?.file_id,
            bytes: p,
        },
        Kind::Name => {
            let (name, value) = split_name_payload(p)?;
            Change::Name { name, value }
        }
        Kind::NameRemoved => Change::NameRemoved(std::str::from_utf8(p).ok()?),
        Kind::ManifestRemoved => Change::ManifestRemoved(Hash::from_slice(p)?),
        Kind::PagesRemoved => {
            if !p.len().is_multiple_of(32) {
                return None;
            }
            Change::PagesRemoved(p.chunks_exact(32).filter_map(Hash::from_slice).collect())
        }
    })
}

/// As [`replay`], with each record decoded into the change it describes. An intact record
/// whose payload does not decode counts as damaged.
///
/// # Errors
/// As [`replay`].
pub fn replay_changes(
    path: &Path,
    mut apply: impl FnMut(Change<'_>) -> Result<()>,
) -> Result<ReplayReport> {
    let mut undecodable = 0;
    let mut report = replay(path, |kind, p| match decode_change(kind, p) {
        Some(c) => apply(c),
        None => {
            undecodable += 1;
            Ok(())
        }
    })?;
    report.records -= undecodable;
    report.damaged += undecodable;
    Ok(report)
}

/// Reads one intact record of at most `left` bytes, or `None` (the reader is then somewhere
/// inside the damage).
fn next_record(r: &mut impl Read, left: u64) -> Option<(Kind, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    if left < HEADER_LEN as u64 {
        return None;
    }
    r.read_exact(&mut h).ok()?;
    let (kind, len) = parse_header(&h)?;
    if u64::from(len) > left - HEADER_LEN as u64 {
        return None;
    }
    let mut payload = vec![0; len as usize];
    r.read_exact(&mut payload).ok()?;
    (Hash::of(&payload).as_bytes() == &h[16..48]).then_some((kind, payload))
}

fn parse_header(h: &[u8]) -> Option<(Kind, u32)> {
    if h[0..4] != RECORD_MAGIC || h[5..8] != [0; 3] || h[12..16] != [0; 4] {
        return None;
    }
    let len = u32::from_le_bytes(h[8..12].try_into().ok()?);
    (len <= MAX_RECORD).then_some(())?;
    Some((Kind::from_tag(h[4])?, len))
}

/// An intact record at the start of `buf`, if there is one.
fn parse_at(buf: &[u8]) -> Option<()> {
    let h = buf.get(..HEADER_LEN)?;
    let (_, len) = parse_header(h)?;
    let payload = buf.get(HEADER_LEN..HEADER_LEN + len as usize)?;
    (Hash::of(payload).as_bytes() == &h[16..48]).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_in_order_and_damage_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (j, created) = Journal::open(&path).unwrap();
        assert!(created);
        {
            let mut a = j.lock();
            a.append(Kind::Page, b"one").unwrap();
            a.append(Kind::NameRemoved, b"two").unwrap();
            a.append(Kind::Manifest, b"three").unwrap();
            a.sync().unwrap();
        }
        let mut seen = Vec::new();
        let rep = replay(&path, |k, p| {
            seen.push((k, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(rep.records, 3);
        assert_eq!(seen[1], (Kind::NameRemoved, b"two".to_vec()));
        // Flip a payload byte of the second record and cut the third short.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = 8 + HEADER_LEN + 3 + HEADER_LEN;
        bytes[second] ^= 1;
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).unwrap();
        let rep = replay(&path, |_, _| Ok(())).unwrap();
        assert_eq!(rep.records, 1);
        assert_eq!(rep.damaged, 1);
        assert!(rep.stopped.unwrap().contains("cut-off"));
    }

    #[test]
    fn replay_finds_the_next_intact_record_after_a_damaged_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (j, _) = Journal::open(&path).unwrap();
        {
            let mut a = j.lock();
            for p in [&b"one"[..], b"two", b"three"] {
                a.append(Kind::Page, p).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 + 8] = 0xff; // the first record's length now runs past the end
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let rep = replay(&path, |_, p| {
            seen.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![b"two".to_vec(), b"three".to_vec()]);
        assert_eq!((rep.damaged, rep.stopped), (1, None));
    }
}
