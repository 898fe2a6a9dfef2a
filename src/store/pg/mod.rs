//! The catalog in PostgreSQL: every record a local store keeps in redb and sled, as tables
//! (see `schema.rs`), so that any number of processes on any machines share one store. This
//! file opens one (connection pool, migrations, the store's row) and turns the driver's errors
//! into the store's; `catalog.rs` is the [`Catalog`](crate::store::Catalog) itself.
//!
//! Every batch is one statement (the ids go as one array parameter), so a batch of any size
//! costs one round trip. Connections come from a pool (`deadpool-postgres`); a call that may
//! safely run again is retried, with a new connection, when the database went away during it.
//! A password in the index URL is used to connect and never shown: errors and messages name
//! the index as `postgres://USER@HOST:PORT/DB`.

mod catalog;
mod lease;
mod meta;
mod replica;
pub mod schema;
mod tls;

pub use meta::{Loaded, Rebuild};

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, config::Host};

use crate::config::{ChunkerParams, StoreConfig};
use crate::error::{Error, Result};
use crate::store::bucket_meta::BucketMeta;
use crate::store::engine::wait;

/// Connections one process keeps open at most.
const POOL_SIZE: usize = 16;
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a call that may run again, when the connection broke during it.
const ATTEMPTS: u32 = 3;

/// The catalog of a store whose index is a PostgreSQL database.
pub struct PgCatalog {
    pool: Pool,
    /// This process's lease, under which its pins are recorded (`lease.rs`).
    lease: lease::Lease,
    /// A server's replica of the chunk ids (`replica.rs`), once it keeps one.
    replica: std::sync::OnceLock<replica::Replica>,
    /// The index as `postgres://USER@HOST:PORT/DB`: for messages, never with a password.
    at: String,
    config: StoreConfig,
    /// The bucket's copy of the metadata, written ahead of every change to it.
    log: Option<BucketMeta>,
}

/// `postgres://USER@HOST:PORT/DB` for `cfg`, with no password.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or(""),
        cfg.get_dbname().unwrap_or("")
    )
}

/// True when `e` means the database did not answer (or went away), not that it refused.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code),
        None => true,
    }
}

/// The store's error for a failed call on the index at `at`, with what to do if it did not
/// answer.
fn engine_error(action: &'static str, at: &str, e: &tokio_postgres::Error) -> Error {
    let detail = detail(e);
    // A certificate this process does not trust is no outage: trying again will not help.
    let tls = detail.contains("TLS handshake");
    let unreachable = unreachable(e) && !tls;
    let hint = if tls {
        "; give the PEM file of the CA that signed the database's certificate as \
         sslrootcert=PATH in the index URL, and connect by a name the certificate holds"
    } else if unreachable {
        "; check the index URL and that PostgreSQL is up, then try again"
    } else {
        ""
    };
    Error::Engine {
        action,
        at: at.to_owned(),
        detail: format!("{detail}{hint}"),
        unreachable,
    }
}

/// The database's own words for `e` (the driver's `Display` says only "db error").
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => crate::error::chain(e),
    }
}

/// The error for a database whose schema is at version `found`, not this binary's.
fn other_schema(found: i32) -> Error {
    Error::Version {
        what: "the index database's schema",
        found: found as u32,
        expected: schema::VERSION as u32,
    }
}

/// Why [`PgCatalog::open`] does not use a database's schema.
enum Refusal {
    /// It is newer than this binary's.
    Newer(i32),
    /// It is older, and this many connections of hoard processes of other versions are open
    /// on it (the upgrade would pull the schema from under them).
    InUse(i32, i64),
}

impl PgCatalog {
    /// Opens the catalog at `url` of the store whose packs are at `bucket`, migrating its
    /// schema to this binary's version. With `create`, a database with no store in it gets one
    /// (with `requested`, or the default params); without, it is [`Error::NoStore`]. Returns the
    /// catalog and whether the store was created just now.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for a URL that is not PostgreSQL's, [`Error::Engine`] if the
    /// database cannot be reached or refuses, [`Error::Version`] for a newer schema,
    /// [`Error::ParamsMismatch`], or a store of another bucket in this database.
    pub fn open(
        url: &str,
        bucket: &str,
        create: bool,
        requested: Option<StoreConfig>,
    ) -> Result<(Self, bool)> {
        let (url, tls) = tls::split(url)?;
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::InvalidParams(format!(
                "the index is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB): {e}"
            ))
        })?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name(schema::application_name());
        }
        let at = describe(&cfg);
        let lease = lease::Lease::new(&cfg, tls.clone());
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(cfg, tls, recycling()),
            None => Manager::from_config(cfg, NoTls, recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::InvalidParams(format!("cannot use the index {at}: {e}")))?;
        let mut catalog = PgCatalog {
            pool,
            lease,
            replica: std::sync::OnceLock::new(),
            at,
            config: StoreConfig::default(),
            log: None,
        };
        let created = catalog.start(bucket, create, requested)?;
        Ok((catalog, created))
    }

    /// Migrates the schema and reads (or, with `create`, makes) the store's row.
    fn start(
        &mut self,
        bucket: &str,
        create: bool,
        requested: Option<StoreConfig>,
    ) -> Result<bool> {
        let (found, created) = self.run(true, "cannot open the index at", async |c| {
            let mut c = c;
            let tx = c.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::MIGRATION_LOCK],
            )
            .await?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('hoard_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            match (exists, create) {
                (false, false) => return Ok((None, false)),
                (false, true) => tx.batch_execute(schema::VERSION_TABLE).await?,
                (true, _) => {}
            }
            let version: i32 = tx
                .query_opt(schema::READ_VERSION, &[])
                .await?
                .map_or(0, |r| r.get(0));
            if version > schema::VERSION {
                return Ok((Some(Err(Refusal::Newer(version))), false));
            }
            // A server of the older version would go on writing as that version did (and
            // its gc would not know the new tables): an upgrade of the schema waits until
            // every process of another version has let go of the database.
            if version < schema::VERSION && exists {
                let me = schema::application_name();
                let others: i64 = tx.query_one(schema::OTHER_VERSIONS, &[&me]).await?.get(0);
                if others > 0 {
                    return Ok((Some(Err(Refusal::InUse(version, others))), false));
                }
            }
            for step in &schema::MIGRATIONS[version as usize..] {
                tx.batch_execute(step).await?;
            }
            if version < schema::VERSION {
                tx.execute("DELETE FROM hoard_schema", &[]).await?;
                tx.execute(
                    "INSERT INTO hoard_schema (version) VALUES ($1)",
                    &[&schema::VERSION],
                )
                .await?;
            }
            const READ: &str = "SELECT bucket, chunk_min, chunk_avg, chunk_max, zstd_level, \
                                delta FROM hoard_store";
            let mut row = tx.query_opt(READ, &[]).await?;
            let mut created = false;
            if row.is_none() && create {
                let c = requested.unwrap_or_default();
                tx.execute(
                    "INSERT INTO hoard_store \
                     (bucket, chunk_min, chunk_avg, chunk_max, zstd_level, created, delta) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &bucket,
                        &(c.chunker.min as i32),
                        &(c.chunker.avg as i32),
                        &(c.chunker.max as i32),
                        &c.level,
                        &(crate::unix_now() as i64),
                        &c.delta,
                    ],
                )
                .await?;
                row = tx.query_opt(READ, &[]).await?;
                created = true;
            }
            tx.commit().await?;
            Ok((
                row.map(|r| {
                    Ok((
                        r.get::<_, String>(0),
                        ChunkerParams {
                            min: r.get::<_, i32>(1) as u32,
                            avg: r.get::<_, i32>(2) as u32,
                            max: r.get::<_, i32>(3) as u32,
                        },
                        r.get::<_, i32>(4),
                        r.get::<_, bool>(5),
                    ))
                }),
                created,
            ))
        })?;
        let (owner, chunker, level, delta) = match found {
            None => return Err(Error::NoStore(PathBuf::from(bucket))),
            Some(Err(Refusal::Newer(found))) => return Err(other_schema(found)),
            Some(Err(Refusal::InUse(found, others))) => {
                return Err(Error::UpgradeBlocked {
                    at: self.at.clone(),
                    found: found as u32,
                    expected: schema::VERSION as u32,
                    others: others as u64,
                });
            }
            Some(Ok(row)) => row,
        };
        if owner != bucket {
            return Err(Error::InvalidParams(format!(
                "the index {} belongs to the store at {owner}, not {bucket}: give each store its own index database",
                self.at
            )));
        }
        let existing = StoreConfig {
            chunker,
            level,
            delta,
        };
        if let Some(req) = requested
            && req != existing
        {
            return Err(Error::ParamsMismatch {
                existing: existing.to_string(),
                requested: req.to_string(),
            });
        }
        self.config = existing;
        Ok(created)
    }

    /// Writes every change to manifest pages, manifests and names to `meta` before the
    /// database (a remote store's catalog does; the bucket can then rebuild the database).
    pub fn write_ahead_to(&mut self, meta: BucketMeta) {
        self.log = Some(meta);
    }

    /// The index, as `postgres://USER@HOST:PORT/DB`.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The store's error for a failed call.
    fn error(&self, action: &'static str, e: &tokio_postgres::Error) -> Error {
        engine_error(action, &self.at, e)
    }

    /// Runs `f` on a pooled connection and waits for it. With `again` (the call may safely
    /// run twice), a call whose connection broke is run again on a new one, up to
    /// [`ATTEMPTS`] times in all.
    fn run<T>(
        &self,
        again: bool,
        action: &'static str,
        f: impl AsyncFn(deadpool_postgres::Object) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        wait(async {
            let mut attempt = 1;
            loop {
                let outcome = match self.pool.get().await {
                    Ok(client) => f(client).await.map_err(|e| self.error(action, &e)),
                    Err(e) => Err(self.pool_error(action, e)),
                };
                match outcome {
                    Err(Error::Engine {
                        unreachable: true, ..
                    }) if again && attempt < ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })?
    }

    /// A connection out of the pool holding the advisory lock of `key` (one `bigint`, or two
    /// `int4`s): closing it (dropping it) is what lets go of the lock, also when this process
    /// dies holding it; the pool makes another connection when it needs one. Tried at once;
    /// then, with no `limit`, waited for (after calling `waiting`), else tried again every
    /// 50 ms until `limit` has passed (`None`: another process held it all that time).
    fn hold_lock(
        &self,
        action: &'static str,
        key: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        limit: Option<Duration>,
        waiting: impl FnOnce(),
    ) -> Result<Option<deadpool_postgres::ClientWrapper>> {
        let args = if key.len() == 1 { "$1" } else { "$1, $2" };
        let obj = wait(self.pool.get())?.map_err(|e| self.pool_error(action, e))?;
        let client = deadpool_postgres::Object::take(obj);
        let fail = |e: tokio_postgres::Error| self.error(action, &e);
        let try_lock = format!("SELECT pg_try_advisory_lock({args})");
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        loop {
            let got: bool = wait(client.query_one(&try_lock, key))?
                .map_err(fail)?
                .get(0);
            if got {
                return Ok(Some(client));
            }
            let Some(deadline) = deadline else {
                waiting();
                let lock = format!("SELECT pg_advisory_lock({args})");
                wait(client.execute(&lock, key))?.map_err(fail)?;
                return Ok(Some(client));
            };
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Checks on `c` that the schema is still this binary's version: [`Error::Version`] if
    /// another version has changed it since this process opened the store.
    async fn same_schema(&self, c: &tokio_postgres::Client, action: &'static str) -> Result<()> {
        let found: i32 = c
            .query_one(schema::READ_VERSION, &[])
            .await
            .map_err(|e| self.error(action, &e))?
            .get(0);
        if found != schema::VERSION {
            return Err(other_schema(found));
        }
        Ok(())
    }

    /// The store's error for a connection the pool could not give.
    fn pool_error(&self, action: &'static str, e: deadpool_postgres::PoolError) -> Error {
        match e {
            deadpool_postgres::PoolError::Backend(e) => self.error(action, &e),
            other => Error::Engine {
                action,
                at: self.at.clone(),
                detail: other.to_string(),
                unreachable: true,
            },
        }
    }
}
