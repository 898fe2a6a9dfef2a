//! The bucket alone rebuilds a store's lost index database: manifest pages, manifests and
//! names are written to the bucket before the database, and `hoard fsck --repair
//! [--rebuild-index]` loads them and re-indexes the packs (real SeaweedFS + PostgreSQL, from
//! `.ci/remote.sh`).

use serde_json::Value;

use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::remote_store::{json, remote, tamper};
use crate::integration::support::{Scratch, fails, ok};

/// Every file's id, name and number of versions, as `ls --json` lists them.
fn listing(bucket: &str, index: &str) -> Vec<(Value, Value, usize)> {
    let v = json(&ok(remote(bucket, index).args(["ls", "--json"])));
    let mut out: Vec<_> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].clone(),
                f["name"].clone(),
                f["versions"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    out.sort_by_key(|f| f.0.to_string());
    out
}

/// The database loses every table, as a dropped or replaced database would.
fn lose_the_database(index: &str) {
    engines::sql(index, "DROP SCHEMA public CASCADE; CREATE SCHEMA public");
}

#[test]
fn remote_index_is_rebuilt_from_the_bucket_alone() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_rebuild"),
        engines::index("remote_rebuild"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let v1 = mixed(3 << 20, 41);
    let v2 = edit(&v1, 10, 42);
    let other = mixed(1 << 20, 43);
    let gone = mixed(1 << 20, 44);
    for (name, data) in [
        ("img", &v1),
        ("img", &v2),
        ("other", &other),
        ("gone", &gone),
    ] {
        ok(remote(&bucket, &index)
            .arg("import")
            .arg(s.file(name, data))
            .args(["--name", name]));
    }
    ok(remote(&bucket, &index).args(["rm", "gone"]));
    ok(remote(&bucket, &index).arg("gc"));
    let before = listing(&bucket, &index);
    let stats = json(&ok(remote(&bucket, &index).args(["stats", "--json"])));
    let out = ok(remote(&bucket, &index).arg("fsck"));
    assert!(
        out.contains("bucket metadata:") && out.contains("agrees with the index"),
        "{out}"
    );

    lose_the_database(&index);
    let e = fails(remote(&bucket, &index).arg("ls"), 1);
    assert!(
        e.contains("fsck --repair"),
        "a lost index says what rebuilds it: {e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let out = remote(&bucket, &index)
        .args(["fsck", "--repair", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rebuilt the index"), "{err}");
    let r = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(r["clean"], true, "{r}");

    assert_eq!(
        listing(&bucket, &index),
        before,
        "every file, name and version is back"
    );
    let after = json(&ok(remote(&bucket, &index).args(["stats", "--json"])));
    assert_eq!(after["chunks"], stats["chunks"], "{after} vs {stats}");
    for (spec, want) in [("img@1", &v1), ("img", &v2), ("other", &other)] {
        let dest = s.path(&format!("out-{spec}"));
        ok(remote(&bucket, &index).args(["export", spec]).arg(&dest));
        assert!(
            std::fs::read(&dest).unwrap() == *want,
            "{spec} byte-identical"
        );
    }
    fails(
        remote(&bucket, &index)
            .args(["export", "gone"])
            .arg(s.path("g")),
        1,
    );

    // gc on the rebuilt index takes nothing a file needs.
    ok(remote(&bucket, &index).arg("gc"));
    let r = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true, "{r}");

    // Name changes after a rebuild continue the bucket's generations: a third version, and
    // the index lost again, come back as three versions.
    let v3 = edit(&v2, 5, 45);
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(s.file("v3", &v3))
        .args(["--name", "img"]));
    let before = listing(&bucket, &index);
    ok(remote(&bucket, &index).args(["fsck", "--repair", "--rebuild-index"]));
    assert_eq!(
        listing(&bucket, &index),
        before,
        "--rebuild-index on a sound index"
    );
    lose_the_database(&index);
    ok(remote(&bucket, &index).args(["fsck", "--repair"]));
    assert_eq!(listing(&bucket, &index), before);
    let dest = s.path("out-v3");
    ok(remote(&bucket, &index).args(["export", "img@3"]).arg(&dest));
    assert!(std::fs::read(&dest).unwrap() == v3);
}

#[test]
fn remote_metadata_differences_are_reported_and_settled() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_meta_diff"),
        engines::index("remote_meta_diff"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let data = mixed(1 << 20, 51);
    let id = json(&ok(remote(&bucket, &index)
        .arg("import")
        .arg(s.file("a", &data))
        .args(["--name", "a", "--json"])))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The bucket loses the file's manifest object (as an operator's mistake would).
    let prefix = bucket
        .trim_start_matches("s3://")
        .split_once('/')
        .unwrap()
        .1;
    tamper(&bucket, &format!("{prefix}/meta/files/{id}.manifest"), None);
    let r = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(r["journal"]["files_differ"], 1, "{r}");
    let out = ok(remote(&bucket, &index).arg("fsck"));
    assert!(out.contains("bucket metadata disagrees"), "{out}");
    let e = fails(remote(&bucket, &index).arg("gc"), 1);
    assert!(
        e.contains("disagree"),
        "gc waits for fsck to settle it: {e}"
    );
    let out = ok(remote(&bucket, &index).args(["fsck", "--repair"]));
    assert!(out.contains("settled"), "{out}");
    let out = ok(remote(&bucket, &index).arg("fsck"));
    assert!(out.contains("agrees with the index"), "{out}");
    // The settled copy is enough for a rebuild.
    lose_the_database(&index);
    ok(remote(&bucket, &index).args(["fsck", "--repair"]));
    let dest = s.path("out");
    ok(remote(&bucket, &index).args(["export", "a"]).arg(&dest));
    assert!(std::fs::read(&dest).unwrap() == data);
}
