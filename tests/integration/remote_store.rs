//! The `hoard` commands on a store in a bucket with its index in PostgreSQL (real SeaweedFS and
//! PostgreSQL on loopback, from `.ci/remote.sh`): the same commands, output and exit codes as
//! on a directory store, and one clear line when the bucket or the index is wrong.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::support::{Scratch, fails, hoard, ok};

/// `hoard --store BUCKET --index INDEX …`.
pub fn remote(bucket: &str, index: &str) -> Command {
    let mut c = hoard(Path::new(bucket));
    c.arg("--index").arg(index);
    c
}

pub fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn remote_store_runs_every_command_as_a_directory_store_does() {
    let (Some(bucket), Some(index)) = (engines::bucket("remote_cli"), engines::index("remote_cli"))
    else {
        return;
    };
    let s = Scratch::new();
    let v1 = mixed(3 << 20, 11);
    let v2 = edit(&v1, 20, 12);
    let f1 = s.file("v1", &v1);
    let f2 = s.file("v2", &v2);
    let local = s.store();
    // The same steps on both stores, each answer compared.
    let both = |args: &[&str]| -> (String, String) {
        let on_local = ok(hoard(&local).args(args));
        let on_remote = ok(remote(&bucket, &index).args(args));
        (on_local, on_remote)
    };
    let (l, r) = both(&["init", "--json"]);
    assert_eq!(json(&l)["created"], true);
    assert_eq!(json(&r)["created"], true);
    assert_eq!(json(&r)["store"], bucket.as_str());
    assert_eq!(json(&l)["avg"], json(&r)["avg"]);
    for (f, name) in [(&f1, "img"), (&f2, "img")] {
        let path = f.to_str().unwrap();
        let (l, r) = both(&["import", path, "--name", name, "--json"]);
        let (l, r) = (json(&l), json(&r));
        for key in ["id", "size", "chunks", "new_chunks", "new_bytes", "version"] {
            assert_eq!(l[key], r[key], "{key} of import {path}");
        }
    }
    let (l, r) = both(&["ls", "--json"]);
    let strip = |v: Value| -> Vec<(Value, Value, usize)> {
        v["files"]
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
            .collect()
    };
    assert_eq!(strip(json(&l)), strip(json(&r)));
    for (spec, want) in [("img@1", &v1), ("img", &v2)] {
        let out = s.path(&format!("out-{spec}"));
        ok(remote(&bucket, &index).args(["export", spec]).arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "{spec} exports byte-identical"
        );
    }
    let (l, r) = both(&["stats", "--json"]);
    let (l, r) = (json(&l), json(&r));
    for key in ["files", "names", "chunks", "logical_bytes", "unique_bytes"] {
        assert_eq!(l[key], r[key], "stats {key}");
    }
    // The text output names the bucket where a local store names its directory.
    let text = ok(remote(&bucket, &index).arg("stats"));
    assert!(text.contains(&bucket), "{text}");
    // rm, gc and fsck as on a local store.
    both(&["rm", "img@1"]);
    let (l, r) = both(&["gc", "--grace", "0s", "--json"]);
    assert_eq!(json(&l)["chunks_freed"], json(&r)["chunks_freed"]);
    assert_eq!(json(&l)["chunks_spared"], json(&r)["chunks_spared"]);
    // img@1's own chunks went, or stay as the bases of img's deltas.
    let gone_or_kept = |g: &serde_json::Value| {
        g["chunks_freed"].as_u64().unwrap() + g["chunks_spared"].as_u64().unwrap()
    };
    assert!(gone_or_kept(&json(&r)) > 0, "{r}");
    let (l, r) = both(&["fsck", "--json"]);
    let (l, r) = (json(&l), json(&r));
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(l["chunks_ok"], r["chunks_ok"]);
    let out = s.path("after-gc");
    ok(remote(&bucket, &index).args(["export", "img"]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == v2);
    // A read of a file that is not there fails as on a local store.
    let l = fails(hoard(&local).args(["export", "nope", "-"]), 1);
    let r = fails(remote(&bucket, &index).args(["export", "nope", "-"]), 1);
    assert_eq!(l, r);
}

#[test]
fn remote_store_refuses_what_it_cannot_use_in_one_line() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_refusals"),
        engines::index("remote_refusals"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let one_line = |e: &str| {
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.starts_with("hoard: "), "{e}");
    };
    // A bucket with no index says what to add.
    let e = fails(
        hoard(Path::new(&bucket))
            .arg("ls")
            .env_remove("HOARD_INDEX"),
        1,
    );
    one_line(&e);
    assert!(
        e.contains("--index postgres://") && e.contains("HOARD_INDEX"),
        "{e}"
    );
    // Only s3:// URLs, and an index only for a bucket.
    let e = fails(hoard(Path::new("gs://b/x")).arg("ls"), 1);
    assert!(e.contains("not at gs:// URLs"), "{e}");
    let e = fails(hoard(&s.store()).args(["--index", &index, "ls"]), 1);
    assert!(e.contains("--index is for a store in a bucket"), "{e}");
    assert!(!s.store().exists(), "nothing created");
    // A read of a store that is not there creates nothing.
    let e = fails(remote(&bucket, &index).arg("ls"), 1);
    one_line(&e);
    assert!(
        e.contains("no hoard store at") && e.contains("hoard init"),
        "{e}"
    );
    ok(remote(&bucket, &index).arg("init"));
    // Wrong credentials: the bucket's refusal, in one line, without the secret.
    let secret = "not-the-secret-Zq81";
    let e = fails(
        remote(&bucket, &index)
            .arg("ls")
            .env("AWS_SECRET_ACCESS_KEY", secret),
        1,
    );
    one_line(&e);
    assert!(e.contains(&bucket), "{e}");
    assert!(!e.contains(secret), "{e}");
    // An endpoint that does not answer (a loopback port nothing listens on).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = fails(
        remote(&bucket, &index)
            .arg("ls")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        1,
    );
    one_line(&e);
    assert!(e.contains(&bucket), "{e}");
    // An index that does not answer; a password in the index URL is never shown.
    let pw = "hunter2-Kx7";
    let dead = format!("postgres://hoard:{pw}@127.0.0.1:{port}/db");
    let e = fails(remote(&bucket, &dead).arg("ls"), 1);
    one_line(&e);
    assert!(
        e.contains(&format!("postgres://hoard@127.0.0.1:{port}/db")),
        "{e}"
    );
    assert!(!e.contains(pw), "{e}");
    // The index of one store is not used with another bucket.
    let other = engines::bucket("remote_refusals_other").unwrap();
    let with_pw = index.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{pw}@"),
        1,
    );
    let e = fails(
        remote(&other, &with_pw)
            .arg("import")
            .arg(s.file("f", b"x")),
        1,
    );
    one_line(&e);
    assert!(e.contains("belongs to the store at"), "{e}");
    assert!(!e.contains(pw), "{e}");
}

#[test]
fn remote_store_serves_push_pull_tus_and_whole_file_uploads() {
    use std::sync::Arc;

    use hoard::server::{Auth, Limits, Options};
    use hoard::store::RemoteStore;
    use hoard::{ChunkerParams, StoreConfig};
    use reqwest::{Method as M, StatusCode};

    use crate::integration::net::{Api, TestServer, push_edit_and_pull};

    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_serve"),
        engines::index("remote_serve"),
    ) else {
        return;
    };
    let config = StoreConfig::new(ChunkerParams::new(4096, 16384, 65536).unwrap(), 1).unwrap();
    let (store, _) = RemoteStore::open(&bucket, &index, true, Some(config)).unwrap();
    let server = TestServer::serving(
        Arc::new(store),
        Limits::default(),
        Auth::default(),
        Options::default(),
    );
    let s = Scratch::new();
    let v1 = mixed(8 << 20, 21);
    let v2 = edit(&v1, 10, 22);
    // push v1, then the edited v2 sends only its changes.
    push_edit_and_pull(&server.client(), &s, &v1, &v2, 20);
    // A whole-file PUT, and a ranged download of it.
    let api = Api::new(&server);
    let small = mixed(300_000, 23);
    let (st, _, _) = api.call(api.req(M::PUT, "/v1/files/small.bin").body(small.clone()));
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, part) = api.call(
        api.req(M::GET, "/v1/files/small.bin")
            .header("Range", "bytes=1000-1999"),
    );
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert!(part == small[1000..2000]);
    // Ranges of the 8 MiB file, within a chunk and across several batches of chunks.
    for (from, to) in [
        (5, 6),
        (70_000, 4_500_000),
        (1, v2.len() - 1),
        (8_000_000, v2.len()),
    ] {
        let (st, h, part) = api.call(
            api.req(M::GET, "/v1/files/disk.img")
                .header("Range", format!("bytes={from}-{}", to - 1)),
        );
        assert_eq!(st, StatusCode::PARTIAL_CONTENT);
        assert_eq!(h["content-length"], (to - from).to_string().as_str());
        assert!(part == v2[from..to], "bytes {from}..{to}");
    }
    // A tus upload in three pieces; HEAD tells the durable offset between them.
    let tus = |m: M, path: &str| api.req(m, path).header("Tus-Resumable", "1.0.0");
    let (st, h, _) = api.call(
        tus(M::POST, "/v1/tus/")
            .header("Upload-Length", v1.len().to_string())
            .header("Upload-Metadata", "filename dHVzLmltZw=="),
    );
    assert_eq!(st, StatusCode::CREATED);
    let loc = h["location"].to_str().unwrap().to_owned();
    let cuts = [0, 77_777, 5_000_001, v1.len()];
    for w in cuts.windows(2) {
        let (st, h, _) = api.call(
            tus(M::PATCH, &loc)
                .header("Upload-Offset", w[0].to_string())
                .header("Content-Type", "application/offset+octet-stream")
                .body(v1[w[0]..w[1]].to_vec()),
        );
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(h["upload-offset"], w[1].to_string().as_str());
        let (_, h, _) = api.call(tus(M::HEAD, &loc));
        assert_eq!(h["upload-offset"], w[1].to_string().as_str());
    }
    let (st, _, got) = api.call(api.req(M::GET, "/v1/files/tus.img"));
    assert_eq!(st, StatusCode::OK);
    assert!(got == v1, "the tus upload downloads byte-identical");
    server.stop();
}

/// Replaces (`Some`) or deletes (`None`) object `key` of the test bucket, as damage would:
/// with the test's own client, not hoard's.
pub fn tamper(bucket_url: &str, key: &str, bytes: Option<Vec<u8>>) {
    use object_store::ObjectStore;
    let bucket = bucket_url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    let key = object_store::path::Path::from(key);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match bytes {
            Some(b) => s3.put(&key, b.into()).await.map(drop),
            None => s3.delete(&key).await,
        }
    })
    .unwrap();
}

/// The object key and bytes of the pack that holds the first chunk of `name`.
fn first_pack_of(bucket: &str, index: &str, name: &str) -> (String, u64, Vec<u8>) {
    use hoard::store::{Catalog, RemoteStore};
    let (store, _) = RemoteStore::open(bucket, index, false, None).unwrap();
    let m = hoard::names::resolve(&store, name).unwrap().manifest;
    let mut first = None;
    hoard::restore::for_each_page(&store, &m, |page| {
        first.get_or_insert(page.chunks[0].id);
        Ok(())
    })
    .unwrap();
    let loc = store.catalog().loc(&first.unwrap()).unwrap().unwrap();
    let prefix = bucket
        .trim_start_matches("s3://")
        .split_once('/')
        .unwrap()
        .1;
    let key = format!("{prefix}/packs/{:016x}.pack", loc.pack);
    let bytes = store
        .packs()
        .get(&format!("packs/{:016x}.pack", loc.pack))
        .unwrap()
        .unwrap();
    (key, loc.offset, bytes.to_vec())
}

#[test]
fn remote_store_damage_is_found_named_and_kept_from_exports() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_damage"),
        engines::index("remote_damage"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a", mixed(2 << 20, 31)),
        ("b", mixed(2 << 20, 32)),
        ("c", mixed(2 << 20, 33)),
    ];
    for (name, data) in &files {
        // One import each: each file's chunks in a pack object of their own.
        ok(remote(&bucket, &index)
            .arg("import")
            .arg(s.file(name, data)));
    }
    ok(remote(&bucket, &index).arg("fsck"));
    // A byte flipped in a payload of a's pack; b's pack object gone.
    let (key_a, at, mut bytes) = first_pack_of(&bucket, &index, "a");
    bytes[at as usize + 48 + 7] ^= 0x40;
    tamper(&bucket, &key_a, Some(bytes));
    let (key_b, _, _) = first_pack_of(&bucket, &index, "b");
    tamper(&bucket, &key_b, None);
    let out = remote(&bucket, &index)
        .args(["fsck", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "fsck fails on damage");
    let r = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(r["clean"], false);
    let affected: std::collections::HashSet<String> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["files"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let names: std::collections::HashSet<&str> = affected
        .iter()
        .filter_map(|f| f.rsplit_once(" (").map(|(_, n)| n.trim_end_matches(')')))
        .collect();
    assert_eq!(names, ["a", "b"].into(), "{r}");
    // The damaged files fail loudly; the other exports byte-identical.
    for (name, data) in &files {
        let dest = s.path(&format!("out-{name}"));
        let out = remote(&bucket, &index)
            .args(["export", name])
            .arg(&dest)
            .output()
            .unwrap();
        if *name == "c" {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(std::fs::read(&dest).unwrap() == *data);
        } else {
            assert_eq!(out.status.code(), Some(1), "export of damaged {name}");
            let e = String::from_utf8_lossy(&out.stderr);
            assert!(e.contains(&format!("cannot export {name}")), "{e}");
            assert!(!dest.exists(), "no wrong bytes under {name}'s name");
        }
    }
}

#[test]
fn remote_store_index_over_tls_verifies_the_server() {
    let (Some(bucket), Some(index), Ok(ca), Ok(other_ca)) = (
        engines::bucket("remote_tls"),
        engines::index("remote_tls"),
        std::env::var("HOARD_TEST_PG_CA"),
        std::env::var("HOARD_TEST_PG_OTHER_CA"),
    ) else {
        eprintln!("HOARD_TEST_PG_CA not set: skipping remote_tls (.ci/remote.sh runs it)");
        return;
    };
    // The role hoard_tls may connect over TLS only (.ci/engines.sh).
    let tls_only = index.replacen("postgres@", "hoard_tls@", 1);
    let s = Scratch::new();
    let data = mixed(3 << 20, 91);
    let f = s.file("f", &data);
    let one_line = |e: &str| assert_eq!(e.lines().count(), 1, "one line: {e}");
    // Plain TCP is turned away by the server.
    let e = fails(remote(&bucket, &tls_only).arg("init"), 1);
    one_line(&e);
    assert!(e.contains("no encryption"), "{e}");
    // With the CA that signed its certificate, every command works, over TLS.
    let verified = format!("{tls_only}?sslmode=verify-full&sslrootcert={ca}");
    ok(remote(&bucket, &verified).arg("init"));
    ok(remote(&bucket, &verified)
        .arg("import")
        .arg(&f)
        .args(["--name", "f"]));
    let out = s.path("out");
    ok(remote(&bucket, &verified).args(["export", "f"]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == data, "exported over TLS");
    ok(remote(&bucket, &verified).arg("fsck"));
    // A server whose certificate this process cannot trust is refused, with what to do:
    // no CA given (the system's roots do not hold the test CA), another CA, another name.
    let by_name = tls_only.replacen("@127.0.0.1:", "@localhost:", 1);
    for index in [
        format!("{tls_only}?sslmode=require"),
        format!("{tls_only}?sslmode=verify-full&sslrootcert={other_ca}"),
        format!("{by_name}?sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let e = fails(remote(&bucket, &index).arg("ls"), 1);
        one_line(&e);
        assert!(
            e.contains("TLS handshake") && e.contains("sslrootcert=PATH"),
            "{index}: {e}"
        );
    }
    // Options it cannot use are refused before connecting.
    let e = fails(
        remote(&bucket, &format!("{tls_only}?sslmode=sometimes")).arg("ls"),
        1,
    );
    assert!(e.contains("sslmode=sometimes is not one of"), "{e}");
    let e = fails(
        remote(
            &bucket,
            &format!("{tls_only}?sslmode=require&sslrootcert=/no/such.pem"),
        )
        .arg("ls"),
        1,
    );
    assert!(e.contains("/no/such.pem"), "{e}");
}

#[test]
fn remote_store_import_writes_one_object_per_commit() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_objects"),
        engines::index("remote_objects"),
    ) else {
        return;
    };
    let s = Scratch::new();
    // 72 MiB that zstd cannot shrink: one commit at 64 MiB, one at the end. Each commit's
    // pack is one object; none is left as a sliver beside a full one.
    let f = s.file("f", &crate::integration::data::random(72 << 20, 93));
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(&f)
        .args(["--name", "f"]));
    let r = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["packs"], 2, "{r}");
}
