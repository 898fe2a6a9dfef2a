//! A server's replica of the committed chunk ids, so that its missing query answers from
//! memory instead of probing the index once per id (PostgreSQL alone answers about 0.07 M ids/s
//! at 10 million stored chunks on the machine the benchmarks ran on; see README,
//! "Performance").
//!
//! What it holds: every id of the chunk table, sorted, with a directory on the ids' first
//! bytes (ids are uniform, so a lookup is about one cache miss), plus the ids committed since
//! it was built. Where it comes from, and why it never says "present" for a chunk that is gone:
//!
//! - **Built** in the background from one scan of the chunk table, after reading the
//!   `chunk_removals` sequence; until it is ready (or whenever it is stale) the index answers.
//! - **Fed** from the commit sequence: every chunk row carries `seq` (from `chunk_seq`, given
//!   again when a chunk is stored again); a lookup that sees `chunk_seq` past what the replica
//!   read first reads the rows after it (minus [`SLACK`], for commits that became visible out
//!   of order). A commit later still than that is missed: the replica then says "missing" for
//!   it, the client sends the chunk again, and storing it again gives it a new `seq`. So it
//!   errs only toward "missing".
//! - **Never stale toward "present"**: every statement that deletes chunk rows (gc's sweep,
//!   a repair, a rebuild) takes a number from `chunk_removals` first. Each lookup reads that
//!   sequence after its revive (`gc.rs`, "Many processes") and answers from the replica only if
//!   it is the number the replica was built at; otherwise the index answers and a rebuild
//!   starts. A sweep that could remove an id of this lookup either finished before the revive
//!   (so its number is seen) or finds the id revived.
//!
//! Memory: 32 bytes per stored chunk (a store of 10 million chunks: 320 MB per server). Past
//! [`MAX_IDS`] the replica is not built and the index answers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::pg::PgCatalog;
use crate::store::pg::catalog::hash_of;

/// Commit numbers read again below the highest one seen, for commits that became visible out
/// of order.
const SLACK: i64 = 4096;
/// More ids than this = 16 Mi (512 MiB) and no replica is kept.
pub const MAX_IDS: usize = 16 << 20;
/// Rows per round trip when building.
const SCAN: i32 = 50_000;

/// Where the replica stands.
pub(super) struct Replica {
    /// The catalog it belongs to, for the build thread.
    catalog: Weak<PgCatalog>,
    state: RwLock<State>,
    /// One build at a time.
    building: AtomicBool,
    /// One feed at a time (others wait, then find it done).
    feeding: Mutex<()>,
}

#[derive(Default)]
struct State {
    ready: bool,
    /// Sorted.
    ids: Vec<Hash>,
    /// `dir[b]` = the first index in `ids` whose first `bits` bits are `b` or more.
    dir: Vec<u32>,
    bits: u32,
    /// Committed since the build.
    recent: HashSet<Hash>,
    /// The `chunk_removals` number the ids hold at.
    removals: i64,
    /// The highest commit number read.
    seq: i64,
}

impl State {
    fn top(&self, id: &Hash) -> usize {
        let b = u32::from_be_bytes(id.as_bytes()[..4].try_into().expect("4 bytes"));
        (b >> (32 - self.bits)) as usize
    }

    fn contains(&self, id: &Hash) -> bool {
        if self.recent.contains(id) {
            return true;
        }
        let t = self.top(id);
        let (lo, hi) = (self.dir[t] as usize, self.dir[t + 1] as usize);
        self.ids[lo..hi].binary_search(id).is_ok()
    }

    fn index(&mut self) {
        // About eight ids per slot.
        self.bits = (self.ids.len() / 8).max(256).ilog2().min(24);
        let slots = 1usize << self.bits;
        let mut dir = Vec::with_capacity(slots + 1);
        let mut at = 0;
        for slot in 0..slots {
            while at < self.ids.len() && self.top(&self.ids[at]) < slot {
                at += 1;
            }
            dir.push(at as u32);
        }
        dir.push(self.ids.len() as u32);
        self.dir = dir;
    }
}

/// The numbers a lookup checks the replica against.
struct Marks {
    removals: i64,
    seq: i64,
    condemned: bool,
}

/// A sequence's `last_value` is 1 both before and after its first `nextval`; adding
/// `is_called` makes the mark change with every number taken.
const MARKS: &str = "SELECT (SELECT last_value + is_called::int FROM chunk_removals), \
                            (SELECT last_value FROM chunk_seq), \
                            EXISTS (SELECT 1 FROM condemned WHERE kind = 0)";

impl PgCatalog {
    fn marks(&self) -> Result<Marks> {
        self.run(true, "cannot look chunks up in the index at", async |c| {
            let r = c.query_one(MARKS, &[]).await?;
            Ok(Marks {
                removals: r.get(0),
                seq: r.get(1),
                condemned: r.get(2),
            })
        })
    }

    /// For each id, whether it is missing, from the replica; `None` when the replica cannot
    /// answer (not built, or stale: the index must), in which case a build is started.
    pub(super) fn missing_from_replica(&self, ids: &[Hash]) -> Result<Option<Vec<bool>>> {
        let Some(replica) = self.replica.get() else {
            return Ok(None);
        };
        let mut marks = self.marks()?;
        if marks.condemned {
            // Revive first, then read the marks again (a sweep that ran meanwhile shows).
            self.revive(ids)?;
            marks = self.marks()?;
        }
        let current = {
            let s = crate::read(&replica.state);
            s.ready && s.removals == marks.removals
        };
        if !current {
            self.start_build(replica);
            return Ok(None);
        }
        if crate::read(&replica.state).seq < marks.seq {
            self.feed(replica)?;
        }
        let s = crate::read(&replica.state);
        if s.removals != marks.removals || !s.ready {
            return Ok(None);
        }
        Ok(Some(ids.iter().map(|id| !s.contains(id)).collect()))
    }

    /// Reads the rows committed since the replica last read.
    fn feed(&self, replica: &Replica) -> Result<()> {
        let _one = crate::lock(&replica.feeding);
        let from = crate::read(&replica.state).seq;
        let rows = self.run(true, "cannot look chunks up in the index at", async |c| {
            c.query(
                "SELECT id, seq FROM chunks WHERE seq > $1",
                &[&from.saturating_sub(SLACK)],
            )
            .await
        })?;
        let mut s = crate::write(&replica.state);
        for r in &rows {
            let id = hash_of(r.get(0))?;
            if !s.contains(&id) {
                s.recent.insert(id);
            }
            s.seq = s.seq.max(r.get(1));
        }
        if s.recent.len() > s.ids.len() / 8 + 100_000 {
            // Fold the recent ids in (one merge), so lookups stay one search.
            let mut all: Vec<Hash> = std::mem::take(&mut s.ids);
            all.extend(s.recent.drain());
            all.sort_unstable();
            all.dedup();
            s.ids = all;
            s.index();
        }
        Ok(())
    }

    /// Starts building the replica on a thread of its own, unless a build is running.
    fn start_build(&self, replica: &Replica) {
        if replica.building.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = replica.catalog.upgrade() else {
            replica.building.store(false, Ordering::Release);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("hoard-id-replica".into())
            .spawn(move || {
                if let Some(replica) = me.replica.get() {
                    if let Err(e) = me.build(replica) {
                        tracing::warn!(error = %e, "cannot build the chunk id replica; the index answers lookups");
                    }
                    replica.building.store(false, Ordering::Release);
                }
            });
        if spawned.is_err() {
            replica.building.store(false, Ordering::Release);
        }
    }

    fn build(&self, replica: &Replica) -> Result<()> {
        *crate::write(&replica.state) = State::default();
        let marks = self.marks()?;
        let ids = self.scan_ids()?;
        let Some(mut ids) = ids else {
            tracing::info!(
                max = MAX_IDS,
                "more stored chunks than the id replica keeps; the index answers lookups"
            );
            return Ok(());
        };
        ids.sort_unstable();
        let mut s = State {
            ready: true,
            ids,
            removals: marks.removals,
            seq: marks.seq,
            ..State::default()
        };
        s.index();
        tracing::info!(ids = s.ids.len(), "chunk id replica built");
        *crate::write(&replica.state) = s;
        // Rows committed while the table was read.
        self.feed(replica)
    }

    /// Every id of the chunk table, or `None` past [`MAX_IDS`].
    fn scan_ids(&self) -> Result<Option<Vec<Hash>>> {
        let mut ids = Vec::new();
        let mut over = false;
        let walked = self.walk(
            "cannot read the chunk ids of the index at",
            "SELECT id FROM chunks",
            SCAN,
            &mut |r| {
                if ids.len() == MAX_IDS {
                    // Stops the walk; told apart from a failure by `over`.
                    over = true;
                    return Err(Error::InvalidParams(
                        "more ids than the replica keeps".into(),
                    ));
                }
                ids.push(hash_of(r.get(0))?);
                Ok(())
            },
        );
        if over {
            return Ok(None);
        }
        walked.map(|()| Some(ids))
    }

    /// Keeps the replica from now on (a server's catalog does), starting its build.
    pub(super) fn keep_replica(self: &Arc<Self>) {
        let replica = Replica {
            catalog: Arc::downgrade(self),
            state: RwLock::default(),
            building: AtomicBool::new(false),
            feeding: Mutex::new(()),
        };
        if self.replica.set(replica).is_ok()
            && let Some(r) = self.replica.get()
        {
            self.start_build(r);
        }
    }

    /// How many ids the replica holds, once it is built.
    pub(super) fn replica_len(&self) -> Option<usize> {
        let s = crate::read(&self.replica.get()?.state);
        s.ready.then(|| s.ids.len() + s.recent.len())
    }
}
