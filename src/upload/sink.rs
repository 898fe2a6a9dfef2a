//! Chunks that arrive from outside (HTTP uploads): check each one, then store them with group
//! commits.
//!
//! [`verify`] runs on the request's worker: it decodes the payload (capped at the chunk's
//! length), hashes it and refuses a chunk whose bytes are not its id. A zstd payload that
//! checks out is stored as the client sent it; a raw one is compressed at the store's level.
//!
//! [`ChunkSink`] owns one long-lived pack writer on its own thread. Requests hand it verified
//! chunks; it takes everything queued, skips ids the store already has, appends the rest and
//! hands the round to a syncer thread, which makes it durable (fsync, then index) in one
//! commit and only then answers every request of the round, while the next round is being
//! appended. Many small uploads share one fsync; a 2xx always means durable.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::store::{ChunkStore, ChunkWriter, PendingCommit};
use crate::wire::Frame;

/// Rounds stop taking more requests past this many encoded bytes = 64 MiB.
const ROUND_BYTES: usize = 64 * 1024 * 1024;
/// Requests that may wait for the sink thread; more block their sender (backpressure).
const QUEUE: usize = 8;

/// A chunk whose payload was checked against its id.
#[derive(Clone, Debug)]
pub struct Verified {
    /// BLAKE3 of the chunk.
    pub id: Hash,
    /// How `payload` is encoded for the pack.
    pub codec: Codec,
    /// The chunk's length.
    pub raw_len: u32,
    /// What goes into the pack (often a slice of the request body: no copy).
    pub payload: Bytes,
    /// The chunk itself, decoded, when asked for (an upload session's background hash uses
    /// it); empty otherwise.
    pub raw: Bytes,
    /// Its super-features, to record with it (a store that keeps deltas, a plain chunk).
    pub features: Option<SuperFeatures>,
}

/// Checks that `frame` decodes to bytes that hash to its id, and readies it for the pack.
///
/// # Errors
/// [`Error::HashMismatch`] if the bytes are not the id's, [`Error::Malformed`] if a zstd
/// payload does not decode to exactly `raw_len` bytes.
/// `body` is the buffer `frame` borrows from: payloads kept as sent are slices of it. With
/// `keep_raw`, the decoded chunk is kept in [`Verified::raw`].
pub fn verify(frame: &Frame<'_>, body: &Bytes, level: i32, keep_raw: bool) -> Result<Verified> {
    let check = |data: &[u8]| {
        let actual = Hash::of(data);
        if actual == frame.id {
            Ok(())
        } else {
            Err(Error::HashMismatch {
                expected: frame.id,
                actual,
            })
        }
    };
    // (how it goes into the pack, the payload, the decoded chunk)
    let (codec, payload, raw) = match frame.codec {
        Codec::Raw => {
            check(frame.payload)?;
            let raw = body.slice_ref(frame.payload);
            match codec::compress(frame.payload, level) {
                Some(z) => (Codec::Zstd, Bytes::from(z), raw),
                None => (Codec::Raw, raw.clone(), raw),
            }
        }
        Codec::Delta => {
            return Err(Error::Malformed {
                what: "chunk frame",
                detail: format!(
                    "chunk {} is sent as a delta, which only a store keeps",
                    frame.id
                ),
            });
        }
        Codec::Zstd => {
            let raw = codec::decode(
                &frame.id,
                Codec::Zstd,
                frame.payload,
                frame.raw_len as usize,
            )
            .map_err(|e| Error::Malformed {
                what: "zstd chunk payload",
                detail: e.to_string(),
            })?;
            check(&raw)?;
            // The client's frame decodes to the chunk: keep it, unless raw is smaller.
            let raw = Bytes::from(raw);
            if frame.payload.len() < raw.len() {
                (Codec::Zstd, body.slice_ref(frame.payload), raw)
            } else {
                (Codec::Raw, raw.clone(), raw)
            }
        }
    };
    Ok(Verified {
        id: frame.id,
        codec,
        raw_len: frame.raw_len,
        payload,
        raw: if keep_raw { raw } else { Bytes::new() },
        features: None,
    })
}

/// What storing one request's chunks did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Chunks this request added to the store.
    pub new_chunks: u64,
    /// Their uncompressed bytes.
    pub new_bytes: u64,
}

/// Called once with the outcome of a request's chunks.
pub type Done = Box<dyn FnOnce(Result<SinkReport>) + Send>;

struct Request {
    chunks: Vec<Verified>,
    done: Done,
}

/// The thread that appends verified chunks and commits them in rounds.
pub struct ChunkSink {
    tx: Option<mpsc::SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl ChunkSink {
    /// Starts the sink thread for `store`.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(store: Arc<dyn ChunkStore>) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("hoard-sink".into())
            .spawn(move || run(&*store, &rx))
            .map_err(|e| Error::Stream("cannot start the chunk sink thread", e))?;
        Ok(ChunkSink {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `chunks`; `done` is called once they are durable (or failed). Blocks while the
    /// queue is full.
    pub fn submit(&self, chunks: Vec<Verified>, done: Done) {
        let req = Request { chunks, done };
        let sent = self.tx.as_ref().map(|tx| tx.send(req));
        if let Some(Err(mpsc::SendError(req))) = sent {
            (req.done)(Err(Error::stage_stopped("chunk sink stopped")));
        }
    }
}

impl Drop for ChunkSink {
    /// Stops taking requests, lets the thread finish what is queued, and waits for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A round appended and waiting for its fsync and index commit on the syncer thread.
struct Appended {
    round: Vec<Request>,
    reports: Vec<SinkReport>,
    commit: Option<Box<dyn PendingCommit>>,
    /// The writer this round went to. A round may skip chunks an earlier round of the same
    /// writer holds; if any commit of that writer fails, none of its later rounds may succeed.
    generation: u64,
}

/// Appends rounds on this thread while the syncer thread makes the previous round durable
/// (fsync, then index) and answers its requests: appends and fsyncs overlap, as in `ingest`.
fn run(store: &dyn ChunkStore, rx: &mpsc::Receiver<Request>) {
    std::thread::scope(|s| {
        let (sync_tx, sync_rx) = mpsc::sync_channel::<Appended>(1);
        let (ack_tx, ack_rx) = mpsc::channel::<bool>();
        s.spawn(move || {
            // The writer generation whose commit failed, and how.
            let mut failed: Option<(u64, Error)> = None;
            for a in sync_rx {
                let done = match &failed {
                    Some((g, e)) if *g == a.generation => Err(again(
                        e,
                        "an earlier commit of the chunk writer failed; send the chunks again",
                    )),
                    _ => a.commit.map_or(Ok(()), |c| c.finish()),
                };
                if let Err(e) = &done {
                    failed = Some((a.generation, again(e, "cannot store chunks")));
                }
                let ok = done.is_ok();
                match done {
                    Ok(()) => {
                        for (req, rep) in a.round.into_iter().zip(a.reports) {
                            (req.done)(Ok(rep));
                        }
                    }
                    Err(e) => fail(a.round, e),
                }
                let _ = ack_tx.send(ok);
            }
        });
        let mut writer: Option<Box<dyn ChunkWriter + '_>> = None;
        let mut generation = 0u64;
        // Ids of rounds appended but not yet indexed (`missing` cannot see them yet), with the
        // writer generation they went to; one entry per round, in the syncer's order.
        let mut unindexed: VecDeque<(u64, HashSet<Hash>)> = VecDeque::new();
        while let Ok(first) = rx.recv() {
            let mut round = vec![first];
            let mut bytes: usize = round[0].chunks.iter().map(|c| c.payload.len()).sum();
            while bytes < ROUND_BYTES {
                let Ok(more) = rx.try_recv() else { break };
                bytes += more.chunks.iter().map(|c| c.payload.len()).sum::<usize>();
                round.push(more);
            }
            while let Ok(ok) = ack_rx.try_recv() {
                unindexed.pop_front();
                if !ok {
                    // A failed commit leaves the pack in doubt, and rounds that counted on it
                    // fail with it (the syncer sees to that): start a new writer.
                    writer = None;
                    generation += 1;
                }
            }
            let pending: Vec<&HashSet<Hash>> = unindexed
                .iter()
                .filter(|(g, _)| *g == generation)
                .map(|(_, ids)| ids)
                .collect();
            match append_round(store, &mut writer, &round, &pending) {
                Ok((reports, ids, commit)) => {
                    unindexed.push_back((generation, ids));
                    let a = Appended {
                        round,
                        reports,
                        commit,
                        generation,
                    };
                    if let Err(mpsc::SendError(a)) = sync_tx.send(a) {
                        fail(a.round, Error::stage_stopped("chunk syncer stopped"));
                    }
                }
                Err(e) => {
                    // The writer forgets what it had not committed; start a fresh one, whose
                    // rounds do not count on the old one's.
                    writer = None;
                    generation += 1;
                    fail(round, e);
                }
            }
        }
    });
}

/// Answers every request of `round` with `e` (the first gets `e` itself).
fn fail(round: Vec<Request>, e: Error) {
    let mut requests = round.into_iter();
    let Some(first) = requests.next() else {
        return;
    };
    for req in requests {
        (req.done)(Err(again(&e, "cannot store chunks")));
    }
    (first.done)(Err(e));
}

/// `e` once more, for another request that fails with it (`Error` is not `Clone`): a bucket
/// or database that did not answer stays that (a server answers 503, try again), a full disk
/// stays one (507); anything else is its text under `stage`.
fn again(e: &Error, stage: &'static str) -> Error {
    match e {
        Error::Engine {
            action,
            at,
            detail,
            unreachable,
        } => Error::Engine {
            action,
            at: at.clone(),
            detail: detail.clone(),
            unreachable: *unreachable,
        },
        _ => {
            let kind = if e.is_no_space() {
                std::io::ErrorKind::StorageFull
            } else {
                std::io::ErrorKind::Other
            };
            Error::Stream(stage, std::io::Error::new(kind, format!("{e:#}")))
        }
    }
}

/// Appends the chunks of `round` the store lacks (and no earlier round still being indexed
/// holds); returns each request's report, the ids appended and the commit to finish.
#[allow(clippy::type_complexity)]
fn append_round<'s>(
    store: &'s dyn ChunkStore,
    writer: &mut Option<Box<dyn ChunkWriter + 's>>,
    round: &[Request],
    unindexed: &[&HashSet<Hash>],
) -> Result<(
    Vec<SinkReport>,
    HashSet<Hash>,
    Option<Box<dyn PendingCommit>>,
)> {
    let ids: Vec<Hash> = round
        .iter()
        .flat_map(|r| r.chunks.iter().map(|c| c.id))
        .collect();
    let missing = store.missing(&ids)?;
    let mut missing = missing.into_iter();
    let mut seen = HashSet::new();
    let w = match writer {
        Some(w) => w,
        None => writer.insert(store.writer()?),
    };
    let mut reports = Vec::with_capacity(round.len());
    for req in round {
        let mut rep = SinkReport::default();
        for c in &req.chunks {
            let is_missing = missing.next().unwrap_or(false);
            if is_missing && !unindexed.iter().any(|u| u.contains(&c.id)) && seen.insert(c.id) {
                w.append(&c.id, c.codec, c.raw_len, &c.payload)?;
                if let Some(f) = &c.features {
                    w.note_features(&c.id, f);
                }
                rep.new_chunks += 1;
                rep.new_bytes += u64::from(c.raw_len);
            }
        }
        reports.push(rep);
    }
    let commit = if seen.is_empty() {
        None
    } else {
        Some(w.start_commit()?)
    };
    Ok((reports, seen, commit))
}
