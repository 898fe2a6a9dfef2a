//! The command line: clap structs, their validation into library config, and one function per
//! command. Errors get their context (which file, which store) here, with anyhow.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hoard::config::{DEFAULT_AVG, DEFAULT_DELTA, DEFAULT_LEVEL, DEFAULT_MAX, DEFAULT_MIN};
use hoard::store::{ChunkStore, LocalStore, RemoteStore};
use hoard::{ChunkerParams, StoreConfig, ingest, listing, names, restore};
use serde_json::json;

use crate::location::{self, Location};
use crate::output::emit;
use crate::{output, remote};
use hoard::args::{parse_share, parse_size};

/// Content-defined dedup store for large files that change a little between versions.
#[derive(Parser)]
#[command(name = "hoard", version, about)]
pub struct Cli {
    /// Store: a directory, or s3://BUCKET[/PREFIX] with --index [default: $HOARD_STORE, else
    /// the XDG data dir, e.g. ~/.local/share/hoard].
    #[arg(
        long,
        global = true,
        env = "HOARD_STORE",
        value_name = "DIR|s3://BUCKET[/PREFIX]"
    )]
    store: Option<PathBuf>,

    /// The PostgreSQL database that indexes a store in a bucket [default: $HOARD_INDEX].
    #[arg(long, global = true, value_name = "postgres://USER@HOST:PORT/DB")]
    index: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a store with chosen chunker params (otherwise the first import creates one).
    Init(InitArgs),
    /// Store a file (or `-` for stdin); prints its id and how much of it was new.
    Import(ImportArgs),
    /// Rebuild a stored file by NAME, NAME@N or id (prefix) into OUT (or `-` for stdout).
    Export(ExportArgs),
    /// List stored files and their versions.
    Ls(JsonArg),
    /// Show totals: files, chunks, logical and stored bytes, dedup ratio.
    Stats(JsonArg),
    /// Remove a NAME (with its history), one version NAME@N, or a file by id; `gc` then frees
    /// the chunks nothing else uses.
    Rm(RmArgs),
    /// Free the chunks no file refers to, and compact packs.
    Gc(GcArgs),
    /// Re-read and re-hash every chunk, check every file and name; `--repair` fixes what it can.
    Fsck(FsckArgs),
    /// Serve the store over HTTP (API v1).
    Serve(remote::ServeArgs),
    /// Send a file to a server; only chunks it lacks cross the wire.
    Push(remote::PushArgs),
    /// Fetch a file from a server, reusing chunks found locally.
    Pull(remote::PullArgs),
    /// Copy files with their names' history from one store to another (directory or
    /// bucket); only the chunks the target lacks cross, each verified.
    Copy(crate::copying::CopyArgs),
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl From<bool> for OnOff {
    fn from(on: bool) -> Self {
        if on { OnOff::On } else { OnOff::Off }
    }
}

#[derive(Args)]
struct InitArgs {
    /// Minimum chunk size in bytes (K and M suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MIN)]
    min: u32,
    /// Average chunk size in bytes.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_AVG)]
    avg: u32,
    /// Maximum chunk size in bytes.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX)]
    max: u32,
    /// zstd level for stored chunks, 1..=19.
    #[arg(long, default_value_t = DEFAULT_LEVEL, allow_negative_numbers = true)]
    level: i32,
    /// Store a new chunk as a delta against a similar stored chunk when that is much
    /// smaller (see the README, "Delta chunks").
    #[arg(long, value_enum, default_value_t = OnOff::from(DEFAULT_DELTA))]
    delta: OnOff,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// File to import, or `-` for stdin.
    file: PathBuf,
    /// Name to record it under [default: the file's name; none for stdin].
    #[arg(long)]
    name: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// NAME, NAME@N (N-th version, 1 = oldest), a file id or an id prefix of 8+ hex digits.
    file: String,
    /// Output path, or `-` for stdout.
    out: PathBuf,
}

#[derive(Args)]
struct RmArgs {
    /// NAME, NAME@N, a file id or an id prefix of 8+ hex digits.
    file: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GcArgs {
    /// Keep chunks stored within this long (a server keeps its own; see `serve --gc-grace`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    grace: std::time::Duration,
    /// Rewrite a pack once this share of it (0.0..=1.0) is dead.
    #[arg(long, value_parser = parse_share, default_value_t = hoard::gc::DEFAULT_MIN_DEAD)]
    min_dead: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FsckArgs {
    /// Quarantine bad chunks (or point at an intact copy), drop index entries that point at
    /// nothing, drop name versions whose file is gone.
    #[arg(long)]
    repair: bool,
    /// With --repair: index every intact chunk in the packs that the chunk table lacks (after
    /// the table was lost or damaged).
    #[arg(long, requires = "repair")]
    reindex: bool,
    /// With --repair: rebuild the whole index, manifests and names from the journal and the
    /// chunk table from the packs, even if it opens (the old one is kept beside it).
    #[arg(long, requires = "repair")]
    rebuild_index: bool,
    /// Start over instead of going on from an interrupted check.
    #[arg(long)]
    from_scratch: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct JsonArg {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    // Everything hoard creates in a store is for its owner alone: files 0600, directories
    // 0700, whatever umask the shell has (sled and redb create files of their own as they
    // go). push and pull write no store, and a pulled file takes the shell's umask.
    if !matches!(cli.command, Command::Push(_) | Command::Pull(_)) {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
    let place = || Location::new(cli.store.as_deref(), cli.index.as_deref(), "--store");
    match cli.command {
        Command::Init(a) => init(&place()?, &a),
        Command::Import(a) => import(&*place()?.open(true)?, &a),
        Command::Export(a) => export(&*place()?.open_to_read()?, &a),
        Command::Ls(a) => ls(&*place()?.open_to_read()?, a.json),
        Command::Stats(a) => {
            let at = place()?;
            stats(&*at.open_to_read()?, &at, a.json)
        }
        Command::Rm(a) => rm(&*place()?.open(false)?, &a),
        Command::Gc(a) => {
            let at = place()?;
            gc(&*at.open(false)?, &at, &a)
        }
        Command::Fsck(a) => fsck(&place()?, &a),
        Command::Serve(a) => {
            remote::limit_malloc_arenas();
            let at = place()?;
            let store = at.open(true)?;
            store.for_server();
            remote::serve(store, &at, &a)
        }
        // push and pull talk to a server; pull may reuse chunks of a local directory store.
        Command::Push(a) => {
            remote::limit_malloc_arenas();
            remote::push(&a)
        }
        Command::Pull(a) => {
            remote::limit_malloc_arenas();
            let local = cli.store.as_deref().filter(|p| !location::is_url(p));
            remote::pull(local, &a)
        }
        Command::Copy(a) => crate::copying::copy(&a),
    }
}

fn init(at: &Location, a: &InitArgs) -> Result<()> {
    let config = StoreConfig::new(ChunkerParams::new(a.min, a.avg, a.max)?, a.level)?
        .with_delta(a.delta == OnOff::On);
    let (store, created) = at.open_with(true, Some(config))?;
    if a.json {
        let c = config.chunker;
        emit(&format!(
            "{}\n",
            json!({ "store": at.to_string(), "created": created, "min": c.min, "avg": c.avg,
                    "max": c.max, "level": config.level, "delta": config.delta })
        ))
    } else {
        let verb = if created {
            "created"
        } else {
            "already initialised:"
        };
        emit(&format!("{verb} store {at} ({})\n", store.config()))
    }
}

fn import(store: &dyn ChunkStore, a: &ImportArgs) -> Result<()> {
    let stdin = a.file.as_os_str() == "-";
    let name = match (&a.name, stdin) {
        (Some(n), _) => Some(n.clone()),
        (None, true) => None,
        (None, false) => a.file.file_name().map(|n| n.to_string_lossy().into_owned()),
    };
    if let Some(n) = &name {
        names::validate(n).context("choose another name with --name")?;
    }
    let (reader, total): (Box<dyn Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let what = if stdin {
        "stdin".to_owned()
    } else {
        a.file.display().to_string()
    };
    let pb = output::bar(total, "importing");
    let (manifest, report) = ingest::ingest(store, reader, &|n| pb.inc(n))
        .with_context(|| format!("cannot import {what}"))?;
    pb.finish_and_clear();
    let version = match &name {
        Some(n) => Some(
            names::record(store, n, &manifest)
                .with_context(|| {
                    format!(
                        "{what} is stored as {}, but the name {n} could not be recorded; \
                         importing again records it without sending the data again",
                        manifest.file_id
                    )
                })?
                .versions
                .len(),
        ),
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["name"] = json!(name);
        v["version"] = json!(version);
        return emit(&format!("{v}\n"));
    }
    let known = if report.size == 0 {
        100.0
    } else {
        (report.size - report.new_bytes) as f64 * 100.0 / report.size as f64
    };
    emit(&format!(
        "{}  {}\n{}, {} chunks, {} new ({known:.1}% already stored)\n",
        report.id,
        name.as_deref().unwrap_or("-"),
        output::bytes(report.size),
        output::count(report.chunks),
        output::bytes(report.new_bytes),
    ))
}

fn export(store: &dyn ChunkStore, a: &ExportArgs) -> Result<()> {
    let found = names::resolve(store, &a.file)?;
    let m = &found.manifest;
    let pb = output::bar(Some(m.file_len), "exporting");
    let progress = |n| pb.inc(n);
    let context = || {
        format!(
            "cannot export {} ({}) to {}",
            found.label,
            m.file_id,
            a.out.display()
        )
    };
    let special = std::fs::metadata(&a.out).is_ok_and(|md| !md.is_file());
    if a.out.as_os_str() == "-" {
        let out = BufWriter::with_capacity(1 << 20, output::Stdout(std::io::stdout()));
        restore::restore(store, m, out, &progress).with_context(context)?;
    } else if special {
        // A device or a FIFO (`/dev/null`, a pipe): write into it, never rename over it.
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(&a.out)
            .with_context(context)?;
        restore::restore(store, m, BufWriter::with_capacity(1 << 20, out), &progress)
            .with_context(context)?;
    } else {
        // Written beside the target and renamed into place only once verified, so a failed
        // export never leaves a file with wrong bytes under the requested name. Like cp and
        // casync, no fsync: the store still holds the data if the machine crashes.
        let dir = match a.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".hoard-export-")
            .permissions(std::fs::Permissions::from_mode(0o666)) // then the umask applies
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        restore::restore(store, m, out, &progress).with_context(context)?;
        tmp.persist(&a.out).with_context(context)?;
    }
    pb.finish_and_clear();
    Ok(())
}

fn ls(store: &dyn ChunkStore, as_json: bool) -> Result<()> {
    let files = listing::list(store)?;
    if as_json {
        return emit(&format!("{}\n", json!({ "files": files })));
    }
    if files.is_empty() {
        eprintln!("no files stored yet; add one with `hoard import FILE`");
        return Ok(());
    }
    let mut text = format!(
        "{:<16}  {:>10}  {:>3}  {:<20}  NAME\n",
        "ID", "SIZE", "VER", "ADDED"
    );
    for f in &files {
        text += &format!(
            "{:<16}  {:>10}  {:>3}  {:<20}  {}\n",
            &f.id.to_hex()[..16],
            output::bytes(f.size),
            f.versions.len(),
            f.added.as_deref().unwrap_or("-"),
            f.name.as_deref().unwrap_or("-"),
        );
    }
    emit(&text)
}

fn rm(store: &dyn ChunkStore, a: &RmArgs) -> Result<()> {
    let removed =
        names::remove(store, &a.file).with_context(|| format!("cannot remove {}", a.file))?;
    if a.json {
        return emit(&format!("{}\n", serde_json::to_value(&removed)?));
    }
    let mut text = String::new();
    for n in &removed.names {
        text += &format!("removed name {n}\n");
    }
    if removed.versions > 0 {
        text += &format!("removed {} version(s)\n", removed.versions);
    }
    for f in &removed.files {
        text += &format!("removed file {f}\n");
    }
    text += "run `hoard gc` to free the space of chunks nothing else uses\n";
    emit(&text)
}

fn gc(store: &dyn ChunkStore, at: &Location, a: &GcArgs) -> Result<()> {
    let opts = hoard::gc::GcOptions {
        grace: a.grace,
        min_dead: a.min_dead,
    };
    let r = hoard::gc::gc(store, &opts).with_context(|| format!("gc of {at} failed"))?;
    if a.json {
        return emit(&format!("{}\n", serde_json::to_value(&r)?));
    }
    emit(&format!(
        "freed {} chunks ({} stored), {} on disk; {} packs rewritten, {} deleted; \
         {} chunks live, {} kept for now\n",
        output::count(r.chunks_freed),
        output::bytes(r.chunk_bytes_freed),
        output::bytes(r.bytes_freed),
        r.packs_rewritten,
        r.packs_deleted,
        output::count(r.chunks_live),
        output::count(r.chunks_spared),
    ))
}

/// Runs fsck on `store` as `a` asks (`keep_names`, `reindex`: what the repair open found);
/// returns the report and whether the packs were re-indexed.
fn check(
    store: &dyn ChunkStore,
    at: &Location,
    a: &FsckArgs,
    keep_names: bool,
    reindex: bool,
) -> Result<(hoard::fsck::FsckReport, bool)> {
    let opts = hoard::fsck::FsckOptions {
        repair: a.repair,
        resume: !a.from_scratch,
        reindex: a.reindex || reindex,
        keep_names,
    };
    let pb = output::bar(Some(store.check_bytes()?), "checking");
    let r = hoard::fsck::fsck(store, &opts, &|n| pb.inc(n))
        .with_context(|| format!("fsck of {at} failed"))?;
    pb.finish_and_clear();
    Ok((r, opts.repair && opts.reindex))
}

fn fsck(at: &Location, a: &FsckArgs) -> Result<()> {
    let note = |reset: &[String]| reset.iter().for_each(|n| eprintln!("hoard: {n}"));
    // A repair open rebuilds what does not open first (a directory's index from its
    // journal, a bucket's index database from the bucket); a repair that re-indexed the
    // packs then clears the store's mark that it must.
    let r = match at {
        Location::Dir(root) if a.repair => {
            let (store, reset, partial) = LocalStore::open_for_repair(root, a.rebuild_index)
                .with_context(|| format!("cannot open store {at}"))?;
            note(&reset);
            let (r, reindexed) = check(&store, at, a, partial, LocalStore::needs_reindex(root))?;
            if reindexed {
                LocalStore::reindexed(root)?;
            }
            r
        }
        Location::Remote { bucket, index } if a.repair => {
            let (store, reset, partial) =
                RemoteStore::open_for_repair(bucket, index, a.rebuild_index)
                    .with_context(|| format!("cannot open store {at}"))?;
            note(&reset);
            let (r, reindexed) = check(&store, at, a, partial, store.needs_reindex()?)?;
            if reindexed {
                store.reindexed()?;
            }
            r
        }
        _ => check(&*at.open(false)?, at, a, false, false)?.0,
    };
    if a.json {
        emit(&format!("{}\n", serde_json::to_value(&r)?))?;
    } else {
        let mut text = format!(
            "checked {} packs, {} entries ({}): {} chunks ok, {} bad; {} unreferenced entries (gc reclaims them)\n\
             {} files checked, {} damaged; {} name versions broken\n",
            r.packs,
            output::count(r.entries),
            output::bytes(r.bytes),
            output::count(r.chunks_ok),
            output::count(r.bad_chunks),
            output::count(r.unreferenced_entries),
            output::count(r.files),
            output::count(r.damaged_files),
            output::count(r.broken_names),
        );
        for d in &r.damaged_packs {
            text += &format!("note: {d}\n");
        }
        // A directory store's log of metadata is its journal; a bucket store's, the bucket's
        // copy of it.
        let (log, rebuild_from) = match at {
            Location::Dir(_) => ("journal", "the journal"),
            Location::Remote { .. } => ("bucket metadata", "the bucket"),
        };
        if let Some(j) = &r.journal {
            if j.repaired > 0 {
                text += &format!(
                    "{log}: {} differences with the index settled (each side given what only the other held)\n",
                    j.repaired
                );
            } else if j.agrees() {
                text += &format!("{log}: {} records, agrees with the index\n", j.records);
            } else if j.index_behind() {
                text += &format!(
                    "the index lacks {} files and {} names the {log} records: \
                     `hoard fsck --repair --rebuild-index` rebuilds the index from {rebuild_from} \
                     (gc deletes nothing until then)\n",
                    j.index_lacks_files, j.index_lacks_names,
                );
            } else {
                text += &format!(
                    "note: the {log} disagrees with the index ({} damaged records{}, {} names, {} files, {} pages differ); \
                     `hoard fsck --repair` settles it from the index (or, if the index is the damaged side, \
                     `--repair --rebuild-index` rebuilds the index from {rebuild_from})\n",
                    j.damaged,
                    j.stopped
                        .as_ref()
                        .map(|s| format!(", stopped at a {s}"))
                        .unwrap_or_default(),
                    j.names_differ,
                    j.files_differ,
                    j.pages_differ,
                );
            }
            if let Some(old) = &j.rewritten {
                text += &format!(
                    "journal written anew from the index; the old one is {}\n",
                    old.display()
                );
            }
        }
        for p in &r.problems {
            text += &format!("{} {}: {}\n", p.kind, p.subject, p.detail);
            for f in &p.files {
                text += &format!("    affects {f}\n");
            }
        }
        if let Some(rep) = &r.repair {
            text += &format!(
                "repaired: {} chunks re-pointed at intact copies, {} quarantined{}, {} index entries dropped, {} chunks re-indexed, {} name versions dropped\n",
                rep.chunks.repointed,
                rep.chunks.quarantined,
                rep.chunks
                    .quarantine
                    .as_ref()
                    .map(|q| format!(" (in {})", q.display()))
                    .unwrap_or_default(),
                rep.chunks.dropped,
                rep.chunks.reindexed,
                rep.versions_dropped,
            );
        }
        emit(&text)?;
    }
    if let Some(j) = r.journal.as_ref().filter(|j| j.index_behind()) {
        return Err(hoard::Error::IndexBehindJournal {
            root: at.to_string().into(),
            files: j.index_lacks_files,
            names: j.index_lacks_names,
        }
        .into());
    }
    if !r.clean {
        let fix = if a.repair {
            "import or push the damaged files' originals again to heal them"
        } else {
            "run `hoard fsck --repair`, then import or push the damaged files' originals again"
        };
        anyhow::bail!(
            "{} damaged file(s), {} bad chunk(s), {} broken name version(s): {fix}",
            r.damaged_files,
            r.bad_chunks,
            r.broken_names
        );
    }
    if !a.json {
        eprintln!("store is consistent");
    }
    Ok(())
}

fn stats(store: &dyn ChunkStore, at: &Location, as_json: bool) -> Result<()> {
    let st = listing::stats(store)?;
    if as_json {
        return emit(&format!("{}\n", serde_json::to_value(&st)?));
    }
    let count = |n: usize| output::count(n as u64);
    emit(&format!(
        "store     {}\nparams    {}\nfiles     {} ({} names)\nchunks    {}\nlogical   {}\n\
         unique    {} (dedup {:.2}x)\nstored    {} (compression {:.2}x, overall {:.2}x)\n",
        at,
        store.config(),
        count(st.files),
        count(st.names),
        output::count(st.chunks),
        output::bytes(st.logical_bytes),
        output::bytes(st.unique_bytes),
        st.dedup_ratio,
        output::bytes(st.stored_bytes),
        st.compression_ratio,
        st.overall_ratio,
    ))?;
    if st.delta_chunks > 0 {
        emit(&format!(
            "deltas    {} chunks, {} stored in {}\n",
            output::count(st.delta_chunks),
            output::bytes(st.delta_bytes),
            output::bytes(st.delta_stored_bytes),
        ))?;
    }
    if st.per_file.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "\n{:<16}  {:>10}  {:>12}  NAMES\n",
        "ID", "SIZE", "ONLY IN IT"
    );
    for f in &st.per_file {
        text += &format!(
            "{:<16}  {:>10}  {:>12}  {}\n",
            &f.id.to_hex()[..16],
            output::bytes(f.size),
            output::bytes(f.unique_bytes),
            if f.names.is_empty() {
                "-".to_owned()
            } else {
                f.names.join(", ")
            },
        );
    }
    emit(&text)
}
