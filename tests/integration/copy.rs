//! `hoard copy`: files with their names' history between two stores — directory to directory
//! here, directory → bucket → directory on the real engines (`.ci/remote.sh`), cut short by
//! kill -9 and resumed. Only chunks the target lacks cross; exports are byte-identical.

use std::path::Path;
use std::process::Command;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use crate::integration::crash::kill_after;
use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::remote_store::{json, remote};
use crate::integration::support::{Scratch, fails, hoard, ok};

/// `hoard copy --from FROM --to TO` with each bucket side's index.
fn copy(from: &str, from_index: Option<&str>, to: &str, to_index: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
    c.env_remove("HOARD_STORE")
        .env_remove("HOARD_INDEX")
        .args(["copy", "--from", from, "--to", to]);
    if let Some(i) = from_index {
        c.args(["--from-index", i]);
    }
    if let Some(i) = to_index {
        c.args(["--to-index", i]);
    }
    c
}

/// Every name with its versions (file id, size, time added), as `ls --json` gives them.
fn names(mut ls: Command) -> Vec<Value> {
    let v = json(&ok(ls.args(["ls", "--json"])));
    let mut files: Vec<Value> = v["files"].as_array().unwrap().clone();
    files.sort_by_key(|f| format!("{}{}", f["name"], f["id"]));
    files
}

/// A store with history: img@1..3 (small edits apart), other, and a file with no name.
fn history(s: &Scratch, store: &Path) -> Vec<(String, Vec<u8>)> {
    let v1 = mixed(6 << 20, 61);
    let v2 = edit(&v1, 8, 62);
    let v3 = edit(&v2, 8, 63);
    let other = mixed(1 << 20, 64);
    let files = vec![
        ("img@1".to_owned(), v1),
        ("img@2".to_owned(), v2),
        ("img".to_owned(), v3),
        ("other".to_owned(), other),
    ];
    for (spec, data) in &files {
        let name = spec.split('@').next().unwrap();
        ok(hoard(store)
            .arg("import")
            .arg(s.file(&format!("in-{spec}"), data))
            .args(["--name", name]));
    }
    files
}

fn exports_match(mut export: impl FnMut() -> Command, s: &Scratch, files: &[(String, Vec<u8>)]) {
    for (spec, data) in files {
        let dest = s.path(&format!("out-{spec}-{}", rand::random::<u32>()));
        ok(export().args(["export", spec]).arg(&dest));
        assert!(
            std::fs::read(&dest).unwrap() == *data,
            "{spec} byte-identical"
        );
    }
}

#[test]
fn copy_between_directories_keeps_history_and_sends_only_what_is_missing() {
    let s = Scratch::new();
    let a = s.store();
    let files = history(&s, &a);
    let b = s.path("b");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = json(&ok(copy(a_s, None, b_s, None).arg("--json")));
    let stats = json(&ok(hoard(&a).args(["stats", "--json"])));
    assert_eq!(r["files"], 4);
    assert_eq!(r["chunks"], stats["chunks"], "{r} vs {stats}");
    assert_eq!(r["versions"], 4);
    assert_eq!(r["names"], 2);
    assert_eq!(
        names(hoard(&b)),
        names(hoard(&a)),
        "names, versions and times as they were"
    );
    exports_match(|| hoard(&b), &s, &files);
    let r = json(&ok(hoard(&b).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true);

    // Again: everything is there, nothing crosses.
    let r = json(&ok(copy(a_s, None, b_s, None).arg("--json")));
    assert_eq!(
        (r["files"].as_u64(), r["files_present"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(
        (r["chunks"].as_u64(), r["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["versions"], 0);

    // A new version at the source: only its new chunks cross, and it becomes img@4.
    let v4 = edit(&files[2].1, 3, 65);
    ok(hoard(&a)
        .arg("import")
        .arg(s.file("v4", &v4))
        .args(["--name", "img"]));
    let r = json(&ok(copy(a_s, None, b_s, None).args(["img", "--json"])));
    assert_eq!(r["files"], 1);
    assert!(
        r["chunks"].as_u64().unwrap() <= 8,
        "a few edited chunks: {r}"
    );
    assert_eq!(r["versions"], 1);
    exports_match(|| hoard(&b), &s, &[("img@4".into(), v4)]);

    // Bad input changes nothing: an unknown name, the same store twice, other params.
    let c = s.path("c");
    let e = fails(copy(a_s, None, c.to_str().unwrap(), None).arg("nope"), 1);
    assert!(e.contains("nope"), "{e}");
    assert!(!c.exists(), "no store made for a copy that cannot start");
    let e = fails(&mut copy(a_s, None, a_s, None), 1);
    assert!(e.contains("same store"), "{e}");
    let d = s.path("d");
    ok(hoard(&d).args(["init", "--avg", "32K", "--min", "8K", "--max", "128K"]));
    let e = fails(&mut copy(a_s, None, d.to_str().unwrap(), None), 1);
    assert!(e.contains("params"), "{e}");
    let r = json(&ok(hoard(&d).args(["ls", "--json"])));
    assert_eq!(r["files"].as_array().map(Vec::len), Some(0));
}

#[test]
fn remote_copy_moves_a_store_up_and_home_again_resuming_after_kills() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_copy"),
        engines::index("remote_copy"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let a = s.store();
    let files = history(&s, &a);
    let a_s = a.to_str().unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    // Up, killed at random moments, then run to the end.
    // (A whole copy takes about half a second here, and at times under 300 ms: kills come
    // within the first 100 ms, so the first always lands.)
    let mut kills = 0;
    for _ in 0..6 {
        if kill_after(copy(a_s, None, &bucket, Some(&index)), &mut rng, 100) {
            break;
        }
        kills += 1;
    }
    assert!(kills > 0, "the copy was cut short at least once");
    let last = json(&ok(copy(a_s, None, &bucket, Some(&index)).arg("--json")));
    assert_eq!(
        last["files"].as_u64().unwrap() + last["files_present"].as_u64().unwrap(),
        4,
        "{last}"
    );
    eprintln!("copy up: {kills} kills, then {last}");
    let r = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(names(remote(&bucket, &index)), names(hoard(&a)));
    exports_match(|| remote(&bucket, &index), &s, &files);
    // Every chunk is in the bucket once, whatever the kills left behind.
    let local = json(&ok(hoard(&a).args(["stats", "--json"])));
    let up = json(&ok(remote(&bucket, &index).args(["stats", "--json"])));
    assert!(up["stored_bytes"].as_u64() >= local["stored_bytes"].as_u64());
    assert_eq!(up["chunks"], local["chunks"]);

    // Home again, into a new directory: the same chunks, the same stored bytes, as a copy
    // from the first directory to another reports.
    let home = s.path("home");
    let r = json(&ok(copy(
        &bucket,
        Some(&index),
        home.to_str().unwrap(),
        None,
    )
    .arg("--json")));
    let side = s.path("side");
    let direct = json(&ok(
        copy(a_s, None, side.to_str().unwrap(), None).arg("--json")
    ));
    assert_eq!(r["files"], 4);
    assert_eq!(r["chunks"], local["chunks"]);
    assert_eq!(r["bytes"], direct["bytes"], "{r} vs {direct}");
    assert!(
        r["bytes"].as_u64() <= local["stored_bytes"].as_u64(),
        "{r} vs {local}"
    );
    assert_eq!(names(hoard(&home)), names(hoard(&a)));
    exports_match(|| hoard(&home), &s, &files);
    let r = json(&ok(hoard(&home).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true, "{r}");
}
