//! `hoard copy --from STORE --to STORE [NAME…]`: the command line of `hoard::copy` — which
//! stores, made how, and what is printed.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use hoard::store::ChunkStore;

use crate::location::Location;
use crate::output::{self, emit};

#[derive(Args)]
pub struct CopyArgs {
    /// The store to copy from: a directory, or s3://BUCKET[/PREFIX].
    #[arg(long, value_name = "STORE")]
    from: PathBuf,
    /// The store to copy to; made with the source's params if it does not exist yet.
    #[arg(long, value_name = "STORE")]
    to: PathBuf,
    /// The source's index database, for a bucket [default: $HOARD_INDEX].
    #[arg(long, value_name = "URL")]
    from_index: Option<String>,
    /// The target's index database, for a bucket [default: $HOARD_INDEX].
    #[arg(long, value_name = "URL")]
    to_index: Option<String>,
    /// Names to copy, each with its whole history [default: every name, and every file no
    /// name points at].
    names: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn copy(a: &CopyArgs) -> Result<()> {
    let from_at = Location::new(Some(&a.from), a.from_index.as_deref(), "--from")?;
    let to_at = Location::new(Some(&a.to), a.to_index.as_deref(), "--to")?;
    if from_at.to_string() == to_at.to_string() {
        bail!("--from and --to are the same store ({from_at}): nothing to copy");
    }
    let from = from_at.open_to_read()?;
    let plan = hoard::copy::plan(&*from, &a.names)
        .with_context(|| format!("nothing copied from {from_at}"))?;
    let to = open_target(&to_at, &*from)?;
    let pb = output::bar(None, "copying");
    let r = hoard::copy::copy(&*from, &*to, &plan, &|n| pb.inc(n)).with_context(|| {
        format!("copy from {from_at} to {to_at} stopped; run it again to go on")
    })?;
    pb.finish_and_clear();
    if r.skipped_versions > 0 {
        eprintln!(
            "hoard: warning: {} name versions not copied: {from_at} lacks their files (`hoard fsck` on it names them)",
            r.skipped_versions
        );
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["from"] = json!(from_at.to_string());
        v["to"] = json!(to_at.to_string());
        emit(&format!("{v}\n"))
    } else {
        emit(&format!(
            "copied {} files to {to_at} ({} there already): {} chunks, {} stored ({} of data); \
             {} chunks there already; {} versions added to {} names\n",
            output::count(r.files),
            output::count(r.files_present),
            output::count(r.chunks),
            output::bytes(r.bytes),
            output::bytes(r.raw_bytes),
            output::count(r.chunks_present),
            output::count(r.versions),
            output::count(r.names),
        ))
    }
}

/// The target store, made with `from`'s params if it does not exist yet.
fn open_target(at: &Location, from: &dyn ChunkStore) -> Result<Box<dyn ChunkStore>> {
    match at.open(false) {
        Ok(store) => Ok(store),
        Err(e) if matches!(e.downcast_ref(), Some(hoard::Error::NoStore(_))) => {
            Ok(at.open_with(true, Some(from.config()))?.0)
        }
        Err(e) => Err(e),
    }
}
