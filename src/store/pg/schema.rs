//! The catalog's tables in PostgreSQL and their versioned migrations.
//!
//! `hoard_schema` holds one row, the schema version; [`MIGRATIONS`]`[v]` takes a database from
//! version `v` to `v + 1`. Opening a store applies what is missing in one transaction under an
//! advisory lock (two processes opening a new database at once do not both migrate it), and
//! refuses a database whose version is newer than this binary's.
//!
//! Version 1:
//!
//! ```text
//! hoard_store    one row: the bucket it belongs to, chunker params, zstd level, created
//! chunks         id bytea PK -> pack int8, pack_offset int8, stored_len int4, raw_len int4,
//!                codec int2 (u64/u32 values kept bit for bit in the signed columns)
//! pages          hash bytea PK -> bytes (a sealed manifest page, see manifest.rs)
//! files          file_id bytea PK -> manifest bytea (Manifest::encode, versioned itself)
//! name_versions  (name text COLLATE "C", version int4) PK -> file_id, size, added:
//!                version 1..n of each name, n the current one
//! uploads        (kind int2: 0 session, 1 tus, id bytea) PK -> record bytea (the upload's own,
//!                versioned format)
//! tus_tails      id bytea PK -> position int8, bytes bytea, meta bytea: stream bytes from
//!                `position` on
//! hoard_state    key text PK -> value bytea: "fsck" = a chunk check's saved progress,
//!                "rebuild" = how far a rebuild from the bucket got ("meta": loading the
//!                metadata; "chunks": the packs are still to be re-indexed)
//! ```
//!
//! Version 2 adds `name_gen`, a sequence: the generation of each name object written to the
//! bucket (`bucket_meta.rs`), taken under the name's lock in the transaction that changes it.
//!
//! Version 3 adds what keeps gc from removing what another process counts on (`lease.rs`,
//! and the argument in `gc.rs`):
//!
//! ```text
//! leases     a sequence: each process's lease number n, held as advisory lock (LEASE_SPACE, n)
//! pins       (lease int4, pin int8, kind int2: 0 chunk, 1 page, 2 pack, id bytea): what the
//!            process holding lease `lease` pins (a pack as its number, 8 bytes big-endian)
//! condemned  (kind int2: 0 chunk, 1 page, id bytea) PK -> since int8 (ms, the database's
//!            clock): gc's candidates; a lookup or page write deletes the row (revives)
//! ```
//!
//! Version 4 feeds the servers' id replicas (`replica.rs`): `chunks.seq int8` (indexed), each
//! row's commit number from the `chunk_seq` sequence (a new one when a chunk is stored
//! again), and the `chunk_removals` sequence, from which every statement that deletes chunk
//! rows takes a number first.
//!
//! Version 5 keeps the chunk totals as the table changes, so `/metrics` and `stats` read them
//! without a scan: `chunk_totals (chunks, raw_bytes, stored_bytes)` rows whose sum is the
//! count and byte sums of `chunks`. Statement triggers on `chunks` (insert, delete, update,
//! truncate) append each statement's change as a row (insert-only: writers on many servers
//! never wait for one another on it); a reader folds the rows into one when there are many.
//! It also adds `uploads.sent int8`: the chunk-upload body bytes an upload session received,
//! added to by whichever server received them (a hook reports the sum).
//!
//! Version 6 is for delta chunks (`delta.rs`): `hoard_store.delta bool` (the store keeps
//! them), `chunks.base bytea` (a delta's base; NULL for every other chunk, with a partial
//! index so gc finds whether a chunk is some delta's base), and
//! `features (sf int4 PK -> id_prefix int4)`: the first 4 bytes (big-endian) of the id of the
//! last plain chunk stored with each super-feature; the lookup finds the chunk by that prefix
//! (`int4send`) in `chunks` (advisory: gc prunes entries whose chunk is gone).

/// The schema version this binary writes and understands.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// The `application_name` of this binary's connections (unless the URL sets one): a
/// migration counts the connections of hoard processes of other versions by it.
pub fn application_name() -> String {
    format!("{APPLICATION_PREFIX}{VERSION}")
}

/// What every hoard connection's `application_name` starts with; the schema version follows.
/// (Processes of hoard 0.1 said just `hoard`.)
pub const APPLICATION_PREFIX: &str = "hoard/schema";

/// Counts the connections to this database, other than the asking one, of hoard processes
/// whose schema version is not `$1` (`application_name` `hoard` or `hoard/schemaN`).
pub const OTHER_VERSIONS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
     AND (application_name = 'hoard' \
          OR (application_name LIKE 'hoard/schema%' AND application_name <> $1))";

/// Reads the schema version.
pub const READ_VERSION: &str = "SELECT version FROM hoard_schema";

/// Any key the migrating transaction holds as `pg_advisory_xact_lock`.
pub const MIGRATION_LOCK: i64 = 0x686f_6172_6400_0001;

/// Creates the version table if it is not there yet (version 0: nothing else exists).
pub const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS hoard_schema (version int4 NOT NULL)";

/// Step `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hoard_store (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    bucket text NOT NULL,
    chunk_min int4 NOT NULL,
    chunk_avg int4 NOT NULL,
    chunk_max int4 NOT NULL,
    zstd_level int4 NOT NULL,
    created int8 NOT NULL
);
CREATE TABLE chunks (
    id bytea PRIMARY KEY,
    pack int8 NOT NULL,
    pack_offset int8 NOT NULL,
    stored_len int4 NOT NULL,
    raw_len int4 NOT NULL,
    codec int2 NOT NULL
);
CREATE TABLE pages (hash bytea PRIMARY KEY, bytes bytea NOT NULL);
CREATE TABLE files (file_id bytea PRIMARY KEY, manifest bytea NOT NULL);
CREATE TABLE name_versions (
    name text COLLATE "C" NOT NULL,
    version int4 NOT NULL,
    file_id bytea NOT NULL,
    size int8 NOT NULL,
    added int8 NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE uploads (
    kind int2 NOT NULL,
    id bytea NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE tus_tails (
    id bytea PRIMARY KEY,
    position int8 NOT NULL,
    bytes bytea NOT NULL,
    meta bytea NOT NULL
);
CREATE TABLE hoard_state (key text PRIMARY KEY, value bytea NOT NULL);
"#,
    "CREATE SEQUENCE name_gen AS int8 MINVALUE 1",
    r#"
CREATE SEQUENCE leases AS int4 MINVALUE 1 CYCLE;
CREATE TABLE pins (
    lease int4 NOT NULL,
    pin int8 NOT NULL,
    kind int2 NOT NULL,
    id bytea NOT NULL
);
CREATE INDEX pins_of ON pins (lease, pin);
CREATE TABLE condemned (
    kind int2 NOT NULL,
    id bytea NOT NULL,
    since int8 NOT NULL,
    PRIMARY KEY (kind, id)
);
"#,
    r#"
CREATE SEQUENCE chunk_seq AS int8;
CREATE SEQUENCE chunk_removals AS int8;
ALTER TABLE chunks ADD COLUMN seq int8;
UPDATE chunks SET seq = nextval('chunk_seq');
ALTER TABLE chunks ALTER COLUMN seq SET DEFAULT nextval('chunk_seq'),
                   ALTER COLUMN seq SET NOT NULL;
CREATE INDEX chunks_by_seq ON chunks (seq);
"#,
    r#"
CREATE TABLE chunk_totals (
    chunks int8 NOT NULL,
    raw_bytes int8 NOT NULL,
    stored_bytes int8 NOT NULL
);
INSERT INTO chunk_totals
    SELECT count(*), coalesce(sum(raw_len::int8), 0), coalesce(sum(stored_len::int8), 0)
    FROM chunks;
CREATE FUNCTION hoard_chunks_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_totals
        SELECT count(*), coalesce(sum(raw_len::int8), 0), coalesce(sum(stored_len::int8), 0)
        FROM added HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE FUNCTION hoard_chunks_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_totals
        SELECT -count(*), -coalesce(sum(raw_len::int8), 0), -coalesce(sum(stored_len::int8), 0)
        FROM removed HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE FUNCTION hoard_chunks_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_totals
        SELECT 0, n.r - o.r, n.s - o.s
        FROM (SELECT coalesce(sum(raw_len::int8), 0) r, coalesce(sum(stored_len::int8), 0) s
              FROM old_rows) o,
             (SELECT coalesce(sum(raw_len::int8), 0) r, coalesce(sum(stored_len::int8), 0) s
              FROM new_rows) n
        WHERE n.r <> o.r OR n.s <> o.s;
    RETURN NULL;
END $$;
CREATE FUNCTION hoard_chunks_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM chunk_totals;
    INSERT INTO chunk_totals VALUES (0, 0, 0);
    RETURN NULL;
END $$;
CREATE TRIGGER chunks_added AFTER INSERT ON chunks REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION hoard_chunks_added();
CREATE TRIGGER chunks_removed AFTER DELETE ON chunks REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION hoard_chunks_removed();
CREATE TRIGGER chunks_changed AFTER UPDATE ON chunks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hoard_chunks_changed();
CREATE TRIGGER chunks_emptied AFTER TRUNCATE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION hoard_chunks_emptied();
ALTER TABLE uploads ADD COLUMN sent int8 NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE hoard_store ADD COLUMN delta bool NOT NULL DEFAULT false;
ALTER TABLE chunks ADD COLUMN base bytea;
CREATE INDEX chunks_by_base ON chunks (base) WHERE base IS NOT NULL;
CREATE TABLE features (sf int4 PRIMARY KEY, id_prefix int4 NOT NULL);
"#,
];

/// The chunk totals: the sum of `chunk_totals`' rows, and how many rows there are.
pub const READ_TOTALS: &str = "SELECT coalesce(sum(chunks), 0)::int8, \
     coalesce(sum(raw_bytes), 0)::int8, coalesce(sum(stored_bytes), 0)::int8, count(*) \
     FROM chunk_totals";

/// The ids that start with the 4 bytes of `int4` column or value `P`: a `WHERE` condition
/// on `c.id`, through the primary key.
macro_rules! with_prefix {
    ($p:literal) => {
        concat!(
            "c.id >= int4send(",
            $p,
            ") AND c.id <= int4send(",
            $p,
            ") || '\\xffffffffffffffffffffffffffffffffffffffffffffffffffffffff'::bytea"
        )
    };
}

/// For each super-feature of `$1` (with its place), a stored plain chunk with it.
pub const SIMILAR: &str = concat!(
    "SELECT q.n, c.id FROM unnest($1::int4[]) WITH ORDINALITY AS q(sf, n) \
     JOIN features f ON f.sf = q.sf \
     CROSS JOIN LATERAL (SELECT c.id, c.base FROM chunks c WHERE ",
    with_prefix!("f.id_prefix"),
    " ORDER BY c.id LIMIT 1) c WHERE c.base IS NULL ORDER BY q.n"
);

/// Forgets super-features whose chunk is gone.
pub const PRUNE_FEATURES: &str = concat!(
    "DELETE FROM features f WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE ",
    with_prefix!("f.id_prefix"),
    ")"
);

/// Count and byte sums of the deltas (through the partial index on `chunks.base`).
pub const READ_DELTA_TOTALS: &str = "SELECT count(*), coalesce(sum(raw_len::int8), 0)::int8, \
     coalesce(sum(stored_len::int8), 0)::int8 FROM chunks WHERE base IS NOT NULL";

/// Folds `chunk_totals`' rows into one. Two at once fold disjoint rows (a row the other
/// deleted is skipped), so the sum stays right.
pub const FOLD_TOTALS: &str = "WITH gone AS (DELETE FROM chunk_totals RETURNING *) \
     INSERT INTO chunk_totals SELECT coalesce(sum(chunks), 0), coalesce(sum(raw_bytes), 0), \
     coalesce(sum(stored_bytes), 0) FROM gone";

/// Rows past which a reading of the totals folds them.
pub const FOLD_PAST: i64 = 256;
