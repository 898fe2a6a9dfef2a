//! The shared part of gc's guard in PostgreSQL (see `guard.rs` and the argument in `gc.rs`):
//! this process's lease, its pins, gc's condemned marks, and one gc or fsck at a time.
//!
//! - **Lease**: a session advisory lock `(LEASE_SPACE, n)`, `n` from the `leases` sequence,
//!   held on a connection of its own. PostgreSQL lets go of it when that session ends: at once
//!   when the process dies (its socket closes), within about 25 s when its machine vanishes
//!   (TCP keepalives, set on both ends). Which leases are alive is read from `pg_locks`, so no
//!   clock decides it. If the connection breaks, the next pin takes a new lease; a pin first
//!   recorded under the old one then fails (what it held may have been collected).
//! - **Pins**: rows `(lease, pin, kind, id)`; gc reads those of live leases and deletes the
//!   others.
//! - **Condemned**: rows `(kind, id, since)`, `since` in ms by the database's clock.
//! - **One gc at a time**: `pg_advisory_lock(GC_LOCK)` on a connection taken out of the pool,
//!   closed (so released) when the gc ends or its process dies.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::catalog::Catalog;
use crate::store::engine::{spawn, wait};
use crate::store::pg::catalog::{BATCH, hash_of, id_array};
use crate::store::pg::{PgCatalog, engine_error};
use crate::store::{PinKind, PinnedSnapshot, Shared};

/// The first key of every lease's advisory lock ("hoar").
const LEASE_SPACE: i32 = 0x686f_6172;
/// The advisory lock gc and fsck hold for their run.
const GC_LOCK: i64 = 0x686f_6172_6400_0003;
/// Live leases of this database: advisory locks `(LEASE_SPACE, n)` granted now.
const LIVE: &str = "SELECT objid::int8 AS lease FROM pg_locks \
                    WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
                      AND classid::int8 = $1 \
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
/// Makes the statement's own transaction commit without waiting for its WAL to be flushed: a
/// pin is visible to other sessions at commit all the same, and one lost in a database crash
/// does not matter, since the crash ended every lease too (what the lease held is void).
const ASYNC: &str = "set_config('synchronous_commit', 'off', true)";
/// The database's clock in ms, as an expression.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// `hoard_state` key of when a gc last finished (ms, the database's clock, 8 bytes big-endian).
const GC_DONE: &str = "gc_done";

/// This process's lease, taken on first use and again after its connection broke.
pub(super) struct Lease {
    cfg: tokio_postgres::Config,
    /// TLS, when the index URL asks for it (`tls.rs`).
    tls: Option<MakeRustlsConnect>,
    held: Mutex<Option<Held>>,
    /// The lease each pin's records were first made under.
    pins: Mutex<HashMap<u64, i32>>,
}

struct Held {
    id: i32,
    /// Holds the lock; dropped (closing the session) with the lease.
    _client: tokio_postgres::Client,
    lost: Arc<AtomicBool>,
}

impl Lease {
    pub(super) fn new(cfg: &tokio_postgres::Config, tls: Option<MakeRustlsConnect>) -> Lease {
        let mut cfg = cfg.clone();
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        Lease {
            cfg,
            tls,
            held: Mutex::new(None),
            pins: Mutex::default(),
        }
    }

    /// The lease held now, taking one if there is none or the last was lost.
    fn current(&self, at: &str) -> Result<i32> {
        let mut held = crate::lock(&self.held);
        if let Some(h) = held.as_ref()
            && !h.lost.load(Ordering::Relaxed)
        {
            return Ok(h.id);
        }
        let fail =
            |e: tokio_postgres::Error| engine_error("cannot take a lease in the index at", at, &e);
        type Conn =
            std::pin::Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;
        let (client, conn): (_, Conn) = match &self.tls {
            Some(tls) => {
                let (client, conn) = wait(self.cfg.connect(tls.clone()))?.map_err(fail)?;
                (client, Box::pin(conn))
            }
            None => {
                let (client, conn) = wait(self.cfg.connect(NoTls))?.map_err(fail)?;
                (client, Box::pin(conn))
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        spawn(async move {
            let _ = conn.await;
            flag.store(true, Ordering::Relaxed);
        })?;
        let id: i32 = wait(async {
            // The server ends the session of a vanished client too (ignored on a Unix socket).
            client
                .batch_execute(
                    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                     SET tcp_keepalives_count = 3",
                )
                .await?;
            let id: i32 = client
                .query_one("SELECT nextval('leases')::int4", &[])
                .await?
                .get(0);
            client
                .execute("SELECT pg_advisory_lock($1, $2)", &[&LEASE_SPACE, &id])
                .await?;
            Ok(id)
        })?
        .map_err(fail)?;
        *held = Some(Held {
            id,
            _client: client,
            lost,
        });
        Ok(id)
    }
}

/// `bytes` as a pack number (pins of kind pack hold it big-endian).
fn pack_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl PgCatalog {
    /// The lease pin `pin`'s records are under: the current one for a new pin; an error for
    /// a pin whose lease has since been lost.
    fn lease_of(&self, pin: u64) -> Result<i32> {
        let now = self.lease.current(self.at())?;
        let first = *crate::lock(&self.lease.pins).entry(pin).or_insert(now);
        if first != now {
            return Err(Error::Engine {
                action: "lost the lease that held an upload's chunks in the index at",
                at: self.at().to_owned(),
                detail: "the connection that held it broke, so gc may have collected what it \
                         held; the operation was stopped, nothing of it is recorded: try again"
                    .into(),
                unreachable: true,
            });
        }
        Ok(now)
    }
}

impl Shared for PgCatalog {
    fn pin(&self, pin: u64, kind: PinKind, ids: &[&[u8]]) -> Result<()> {
        let lease = self.lease_of(pin)?;
        let key = pin as i64;
        for part in ids.chunks(BATCH) {
            self.run(true, "cannot pin chunks in the index at", async |c| {
                c.execute(
                    &format!(
                        "INSERT INTO pins (lease, pin, kind, id) \
                         SELECT $1, $2, $3, unnest($4::bytea[]) FROM (SELECT {ASYNC}) a"
                    ),
                    &[&lease, &key, &kind.code(), &part],
                )
                .await
            })?;
        }
        Ok(())
    }

    fn unpin(&self, pin: u64, ids: Option<&[&[u8]]>) {
        let lease = match ids {
            Some(_) => crate::lock(&self.lease.pins).get(&pin).copied(),
            None => crate::lock(&self.lease.pins).remove(&pin),
        };
        let Some(lease) = lease else { return };
        let key = pin as i64;
        let r = match ids {
            Some(ids) => self.run(true, "cannot unpin chunks in the index at", async |c| {
                c.execute(
                    &format!(
                        "DELETE FROM pins USING (SELECT {ASYNC}) a \
                         WHERE lease = $1 AND pin = $2 AND id = ANY($3)"
                    ),
                    &[&lease, &key, &ids],
                )
                .await
            }),
            None => self.run(true, "cannot unpin chunks in the index at", async |c| {
                c.execute(
                    &format!(
                        "DELETE FROM pins USING (SELECT {ASYNC}) a WHERE lease = $1 AND pin = $2"
                    ),
                    &[&lease, &key],
                )
                .await
            }),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "a pin stays in the index until this process ends");
        }
    }

    fn pinned(&self) -> Result<PinnedSnapshot> {
        let space = i64::from(LEASE_SPACE);
        let rows = self.run(true, "cannot read the pins in the index at", async |c| {
            // The pins of dead leases go; a live lease took its lock before writing any pin.
            c.query(
                &format!(
                    "WITH live AS ({LIVE}), \
                       gone AS (DELETE FROM pins WHERE lease NOT IN (SELECT lease FROM live)) \
                     SELECT kind, id FROM pins WHERE lease IN (SELECT lease FROM live)"
                ),
                &[&space],
            )
            .await
        })?;
        let mut out = PinnedSnapshot::default();
        for r in &rows {
            let bytes: &[u8] = r.get(1);
            match r.get::<_, i16>(0) {
                0 => out.ids.push(hash_of(bytes)?),
                1 => out.pages.push(hash_of(bytes)?),
                _ => out.packs.extend(pack_of(bytes)),
            }
        }
        Ok(out)
    }

    fn exclusive(&self, wait_for_it: bool) -> Result<Option<Box<dyn Send>>> {
        const ACTION: &str = "cannot take gc's lock in the index at";
        let limit = if wait_for_it {
            None
        } else {
            Some(Duration::ZERO)
        };
        let Some(client) = self.hold_lock(ACTION, &[&GC_LOCK], limit, || {
            tracing::info!("another process runs gc or fsck on this store: waiting for it")
        })?
        else {
            return Ok(None);
        };
        // A gc of this binary must not run on a schema another version has changed since
        // this process opened the store (it would not know what the change keeps alive).
        wait(self.same_schema(&client, ACTION))??;
        Ok(Some(Box::new(client)))
    }

    fn gc_finished_ago(&self) -> Result<Option<Duration>> {
        let ms: Option<i64> =
            self.run(true, "cannot read gc's state in the index at", async |c| {
                let r = c
                    .query_opt(
                        &format!(
                            "SELECT ({NOW_MS}) - ('x' || encode(value, 'hex'))::bit(64)::int8 \
                         FROM hoard_state WHERE key = $1 AND length(value) = 8"
                        ),
                        &[&GC_DONE],
                    )
                    .await?;
                Ok(r.map(|r| r.get(0)))
            })?;
        Ok(ms.map(|ms| Duration::from_millis(ms.max(0) as u64)))
    }

    fn gc_finished(&self) -> Result<()> {
        self.run(
            true,
            "cannot record gc's state in the index at",
            async |c| {
                c.execute(
                    &format!(
                        "INSERT INTO hoard_state (key, value) \
                     VALUES ($1, int8send(({NOW_MS}))) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                    ),
                    &[&GC_DONE],
                )
                .await
                .map(drop)
            },
        )
    }

    fn condemn(&self, kind: PinKind, ids: &[Hash], grace: Duration) -> Result<HashSet<Hash>> {
        let code = kind.code();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let rows = self.run(
            false,
            "cannot mark gc's candidates in the index at",
            async |c| {
                let mut c = c;
                let tx = c.transaction().await?;
                tx.batch_execute(
                    "CREATE TEMP TABLE gc_candidates (id bytea PRIMARY KEY) ON COMMIT DROP",
                )
                .await?;
                for part in ids.chunks(BATCH) {
                    tx.execute(
                    "INSERT INTO gc_candidates SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING",
                    &[&id_array(part)],
                )
                .await?;
                }
                let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
                // Marks of what is no longer a candidate go; new candidates are marked now.
                tx.execute(
                    "DELETE FROM condemned d WHERE kind = $1 \
                   AND NOT EXISTS (SELECT 1 FROM gc_candidates g WHERE g.id = d.id)",
                    &[&code],
                )
                .await?;
                tx.execute(
                    "INSERT INTO condemned (kind, id, since) SELECT $1, id, $2 FROM gc_candidates \
                 ON CONFLICT DO NOTHING",
                    &[&code, &now],
                )
                .await?;
                let young = tx
                    .query(
                        "SELECT id FROM condemned WHERE kind = $1 AND since > $2",
                        &[&code, &now.saturating_sub(grace_ms)],
                    )
                    .await?;
                tx.commit().await?;
                Ok(young)
            },
        )?;
        rows.iter().map(|r| hash_of(r.get(0))).collect()
    }

    fn sweep_chunks(&self, ids: &[Hash]) -> Result<(u64, u64)> {
        // One statement: a lookup's revive either removed a mark first (the chunk stays) or
        // waits for this and then finds the chunk gone. A chunk some recorded delta names as
        // its base stays (a writer that makes a new delta pins and revives the base first).
        self.delete_chunks(
            "WITH m AS (DELETE FROM condemned WHERE kind = 0 AND id = ANY($1) \
                          AND NOT EXISTS (SELECT 1 FROM chunks x WHERE x.base = condemned.id) \
                          RETURNING id), \
                  d AS (DELETE FROM chunks WHERE id IN (SELECT id FROM m) RETURNING stored_len) \
             SELECT count(*), coalesce(sum(stored_len::int8), 0)::int8 FROM d",
            ids,
        )
    }

    fn sweep_pages(&self, hashes: &[Hash]) -> Result<u64> {
        // The database first, then the bucket's copies of what went: a gc killed in between
        // leaves copies of garbage pages, which decide nothing (`fsck --repair` loads them
        // back for the next gc). Bucket first would leave pages the database holds without a
        // copy, which a rebuild would lack.
        let mut swept = Vec::new();
        for part in hashes.chunks(BATCH) {
            let arr = id_array(part);
            let rows = self.run(
                false,
                "cannot remove manifest pages from the index at",
                async |c| {
                    c.query(
                        "WITH m AS (DELETE FROM condemned WHERE kind = 1 AND id = ANY($1) \
                                    RETURNING id) \
                         DELETE FROM pages WHERE hash IN (SELECT id FROM m) RETURNING hash",
                        &[&arr],
                    )
                    .await
                },
            )?;
            for r in &rows {
                swept.push(hash_of(r.get(0))?);
            }
        }
        if let Some(log) = &self.log {
            log.delete_pages(&swept)?;
            // A writer that stored one of them again meanwhile (its copy first, then its row)
            // gets its copy back.
            for h in &swept {
                if let Some(bytes) = self.get_page(h)? {
                    log.put_page(h, &bytes)?;
                }
            }
        }
        Ok(swept.len() as u64)
    }
}
