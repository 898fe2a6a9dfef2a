//! The `hoard` binary: every command, its output, and every error path a user can hit.

use std::io::{Read, Seek, SeekFrom, Write};

use hoard::store::LocalStore;
use hoard::{names, restore};

use super::data;
use super::support::{Scratch, b3, fails, hoard, is_root, ok};

#[test]
fn import_prints_id_size_and_new_share() {
    let t = Scratch::new();
    let data = data::mixed(2 << 20, 1);
    let f = t.file("disk.img", &data);
    let out = ok(hoard(&t.store()).arg("import").arg(&f));
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), format!("{}  disk.img", b3(&data)));
    let summary = lines.next().unwrap();
    assert!(summary.starts_with("2.00 MiB, "), "{summary}");
    assert!(
        summary.ends_with("2.00 MiB new (0.0% already stored)"),
        "{summary}"
    );
    let again = ok(hoard(&t.store()).arg("import").arg(&f));
    assert!(again.contains("0 B new (100.0% already stored)"), "{again}");
}

#[test]
fn json_outputs_have_the_documented_fields() {
    let t = Scratch::new();
    let data = data::mixed(1 << 20, 2);
    let f = t.file("a.bin", &data);
    let v: serde_json::Value =
        serde_json::from_str(&ok(hoard(&t.store()).arg("import").arg(&f).arg("--json"))).unwrap();
    for key in [
        "id",
        "name",
        "size",
        "chunks",
        "new_chunks",
        "new_bytes",
        "stored_bytes",
        "version",
    ] {
        assert!(!v[key].is_null(), "import --json lacks {key}: {v}");
    }
    assert_eq!(v["id"], b3(&data));
    assert_eq!(v["name"], "a.bin");
    assert_eq!(v["new_bytes"], data.len());
    assert_eq!(v["chunks"], v["new_chunks"]);

    let s: serde_json::Value =
        serde_json::from_str(&ok(hoard(&t.store()).args(["stats", "--json"]))).unwrap();
    assert_eq!(s["files"], 1);
    assert_eq!(s["logical_bytes"], data.len());
    assert_eq!(s["chunks"], v["chunks"]);
    assert!(s["stored_bytes"].as_u64().unwrap() > 0);
    assert!(s["dedup_ratio"].as_f64().unwrap() >= 1.0);

    let l: serde_json::Value =
        serde_json::from_str(&ok(hoard(&t.store()).args(["ls", "--json"]))).unwrap();
    assert_eq!(l["files"][0]["name"], "a.bin");
    assert_eq!(l["files"][0]["id"], b3(&data));
    assert_eq!(l["files"][0]["versions"].as_array().unwrap().len(), 1);
}

#[test]
fn names_keep_history_and_ids_resolve() {
    let t = Scratch::new();
    let (v1, v2) = (data::mixed(700_000, 3), data::mixed(800_000, 4));
    let f = t.file("v.bin", &v1);
    ok(hoard(&t.store())
        .arg("import")
        .arg(&f)
        .args(["--name", "vm/base.img"]));
    std::fs::write(&f, &v2).unwrap();
    ok(hoard(&t.store())
        .arg("import")
        .arg(&f)
        .args(["--name", "vm/base.img"]));

    let ls = ok(hoard(&t.store()).arg("ls"));
    assert!(ls.contains("vm/base.img") && ls.contains("  2  "), "{ls}");
    let get = |spec: &str| {
        let out = t.path("out");
        ok(hoard(&t.store()).arg("export").arg(spec).arg(&out));
        std::fs::read(&out).unwrap()
    };
    assert!(get("vm/base.img") == v2);
    assert!(get("vm/base.img@2") == v2);
    assert!(get("vm/base.img@1") == v1);
    assert!(get(&b3(&v1)) == v1);
    assert!(get(&b3(&v1)[..8]) == v1);
    assert!(get(&b3(&v2)[..12].to_uppercase()) == v2);

    let err = fails(hoard(&t.store()).args(["export", "vm/base.img@3", "-"]), 1);
    assert!(err.contains("vm/base.img has 2 version(s), not 3"), "{err}");
}

#[test]
fn store_comes_from_flag_env_or_is_created() {
    let t = Scratch::new();
    let f = t.file("x", b"hello");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"));
    c.env("HOARD_STORE", t.store()).arg("import").arg(&f);
    ok(&mut c);
    assert!(t.store().join("index").is_dir() && t.store().join("packs").is_dir());
    let ls = ok(hoard(&t.store()).arg("ls"));
    assert!(ls.contains(" x\n") || ls.ends_with(" x\n"), "{ls}");
}

#[test]
fn init_sets_params_and_refuses_bad_or_changed_ones() {
    let t = Scratch::new();
    let out = ok(hoard(&t.store()).args([
        "init", "--min", "4K", "--avg", "16K", "--max", "64K", "--level", "3",
    ]));
    assert!(
        out.contains("created store")
            && out.contains("4096/16384/65536")
            && out.contains("level 3"),
        "{out}"
    );
    let again = ok(hoard(&t.store()).args([
        "init", "--min", "4096", "--avg", "16384", "--max", "65536", "--level", "3",
    ]));
    assert!(again.contains("already initialised"), "{again}");
    let err = fails(hoard(&t.store()).args(["init"]), 1);
    assert!(err.contains("fixed per store"), "{err}");

    let fresh = Scratch::new();
    for (args, needle) in [
        (
            &["--min", "32", "--avg", "4096", "--max", "65536"][..],
            "min chunk size 32",
        ),
        (
            &["--min", "8192", "--avg", "4096", "--max", "65536"][..],
            "min < avg < max",
        ),
        (&["--avg", "8M"][..], "avg chunk size"),
        (&["--max", "64M"][..], "max chunk size"),
        (&["--level", "0"][..], "zstd level 0"),
        (&["--level", "-3"][..], "zstd level -3"),
    ] {
        let err = fails(hoard(&fresh.store()).arg("init").args(args), 1);
        assert!(
            err.starts_with("hoard: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !fresh.store().exists(),
        "refused params must not create a store"
    );
    let err = fails(hoard(&fresh.store()).args(["init", "--min", "lots"]), 2);
    assert!(err.contains("not a size"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let t = Scratch::new();
    fails(hoard(&t.store()).arg("frobnicate"), 2);
    fails(hoard(&t.store()).arg("import"), 2);
    fails(hoard(&t.store()).args(["export", "only-one-arg"]), 2);
}

#[test]
fn missing_input_and_unknown_names_fail_clearly() {
    let t = Scratch::new();
    let err = fails(
        hoard(&t.store()).args(["import", "/nonexistent/file.img"]),
        1,
    );
    assert!(err.contains("cannot open /nonexistent/file.img"), "{err}");
    let err = fails(hoard(&t.store()).args(["export", "ghost", "-"]), 1);
    assert!(
        err.contains("\"ghost\"") && err.contains("hoard ls"),
        "{err}"
    );
    let err = fails(hoard(&t.store()).args(["export", "abcdef0123", "-"]), 1);
    assert!(err.contains("abcdef0123"), "{err}");
    let f = t.file("ok.bin", b"data");
    let err = fails(
        hoard(&t.store())
            .arg("import")
            .arg(&f)
            .args(["--name", "../escape"]),
        1,
    );
    assert!(
        err.contains("invalid name") && err.contains("--name"),
        "{err}"
    );
    let err = fails(
        hoard(&t.store())
            .arg("import")
            .arg(&f)
            .args(["--name", "x@2"]),
        1,
    );
    assert!(err.contains("version syntax"), "{err}");
    // Nothing was stored by the refused imports.
    let s: serde_json::Value =
        serde_json::from_str(&ok(hoard(&t.store()).args(["stats", "--json"]))).unwrap();
    assert_eq!(s["files"], 0);
}

#[test]
fn unwritable_store_is_a_clear_error() {
    let t = Scratch::new();
    let blocker = t.file("not-a-dir", b"a file where the store's parent should be");
    let f = t.file("in.bin", b"payload");
    let err = fails(hoard(&blocker.join("store")).arg("import").arg(&f), 1);
    assert!(
        err.contains("cannot create store directory") && err.contains("not-a-dir"),
        "{err}"
    );

    // Permission bits do not stop root, so this half runs only for other users.
    #[cfg(unix)]
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let ro = t.path("readonly");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = fails(hoard(&ro.join("store")).arg("import").arg(&f), 1);
        assert!(err.contains("cannot create store directory"), "{err}");
    }
}

#[test]
fn corrupted_pack_byte_fails_export_and_names_the_chunk() {
    let t = Scratch::new();
    let data = data::mixed(3 << 20, 9);
    let f = t.file("precious.db", &data);
    ok(hoard(&t.store()).arg("import").arg(&f));

    // Flip one byte in the middle of the payload of the file's third chunk.
    let victim = {
        let (store, _) = LocalStore::open(&t.store(), None).unwrap();
        let m = names::resolve(&store, "precious.db").unwrap().manifest;
        let mut refs = Vec::new();
        restore::for_each_page(&store, &m, |p| {
            refs.extend(p.chunks);
            Ok(())
        })
        .unwrap();
        let victim = refs[2].id;
        let (pack, loc) = store.locate(&victim).unwrap().expect("indexed");
        let mut fh = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pack)
            .unwrap();
        let at = loc.offset
            + hoard::store::pack::ENTRY_HEADER_LEN as u64
            + u64::from(loc.stored_len) / 2;
        let mut byte = [0u8];
        fh.seek(SeekFrom::Start(at)).unwrap();
        fh.read_exact(&mut byte).unwrap();
        fh.seek(SeekFrom::Start(at)).unwrap();
        fh.write_all(&[byte[0] ^ 0x5a]).unwrap();
        victim
    };

    let out = t.path("restored.db");
    let err = fails(
        hoard(&t.store()).arg("export").arg("precious.db").arg(&out),
        1,
    );
    assert!(
        err.contains(&victim.to_hex()),
        "error must name the chunk: {err}"
    );
    assert!(
        err.contains("precious.db"),
        "error must name the file: {err}"
    );
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !out.exists(),
        "no file with wrong bytes may be left under the requested name"
    );
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".hoard-export-")
        })
        .collect();
    assert!(leftovers.is_empty(), "temp file left behind");
    // To stdout: a non-zero exit and the same message.
    let res = hoard(&t.store())
        .args(["export", "precious.db", "-"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains(&victim.to_hex()));
}

#[test]
fn export_to_a_reader_that_stops_early_ends_quietly() {
    use std::io::Read;
    let t = Scratch::new();
    let f = t.file("a.bin", &data::mixed(8 << 20, 14));
    ok(hoard(&t.store()).arg("import").arg(&f));
    // `hoard export a.bin - | head -c 1`: the reader goes away, which is no error.
    let mut child = hoard(&t.store())
        .args(["export", "a.bin", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut one = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut one).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ls_and_stats_on_an_empty_store() {
    let t = Scratch::new();
    // Reading commands never create a store: a mistyped --store is an error.
    for cmd in [&["ls"][..], &["stats"], &["export", "x", "-"]] {
        let err = fails(hoard(&t.store()).args(cmd), 1);
        assert!(
            err.contains("no hoard store at") && err.contains("hoard init"),
            "{err}"
        );
    }
    assert!(!t.store().exists());
    ok(hoard(&t.store()).arg("init"));
    let l: serde_json::Value =
        serde_json::from_str(&ok(hoard(&t.store()).args(["ls", "--json"]))).unwrap();
    assert_eq!(l["files"].as_array().unwrap().len(), 0);
    let s = ok(hoard(&t.store()).arg("stats"));
    assert!(s.contains("files     0"), "{s}");
}

#[test]
fn a_store_in_use_is_refused_with_a_clear_message() {
    let t = Scratch::new();
    let (held, _) = LocalStore::open(&t.store(), None).unwrap();
    let err = fails(hoard(&t.store()).arg("ls"), 1);
    assert!(err.contains("in use by another hoard process"), "{err}");
    drop(held);
    ok(hoard(&t.store()).arg("ls"));
}

#[test]
fn export_into_a_device_writes_into_it_instead_of_replacing_it() {
    use std::os::unix::fs::FileTypeExt;
    let t = Scratch::new();
    let f = t.file("a.bin", &data::mixed(300_000, 12));
    ok(hoard(&t.store()).arg("import").arg(&f));
    ok(hoard(&t.store()).args(["export", "a.bin", "/dev/null"]));
    let md = std::fs::metadata("/dev/null").unwrap();
    assert!(
        md.file_type().is_char_device(),
        "/dev/null must still be the device"
    );
}

mod remote {
    //! `hoard serve`, `push` and `pull` as a user runs them.

    use super::super::net::ChildServer;
    use super::super::support::{Scratch, b3, fails, hoard, ok};

    #[test]
    fn push_and_pull_through_the_binary_with_json() {
        let s = Scratch::new();
        let server = ChildServer::start(&s.store());
        let data = super::super::data::mixed(3 << 20, 40);
        let f = s.file("a.img", &data);
        let client_store = s.path("unused-store");
        let out = ok(hoard(&client_store).args([
            "push",
            f.to_str().unwrap(),
            "--server",
            &server.url,
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["id"], b3(&data).as_str());
        assert_eq!(v["name"], "a.img");
        assert_eq!(v["size"], data.len());
        assert!(v["bytes_sent"].as_u64().unwrap() > 0);
        let back = s.path("b.img");
        let out = ok(hoard(&client_store).args([
            "pull",
            "a.img",
            back.to_str().unwrap(),
            "--server",
            &server.url,
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["id"], b3(&data).as_str());
        assert_eq!(std::fs::read(&back).unwrap(), data);
        assert!(!client_store.exists(), "push/pull created a local store");

        // Unknown file: exit 1, a message naming it, nothing written.
        let missing = s.path("nope.img");
        let err = fails(
            hoard(&client_store).args([
                "pull",
                "nope.img",
                missing.to_str().unwrap(),
                "--server",
                &server.url,
            ]),
            1,
        );
        assert!(err.contains("nope.img") && err.contains("404"), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn unreachable_server_and_exposed_listen_fail_clearly() {
        let s = Scratch::new();
        let f = s.file("a.img", b"hello");
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = fails(
            hoard(&s.store()).args(["push", f.to_str().unwrap(), "--server", &url]),
            1,
        );
        assert!(err.contains("cannot reach the server"), "{err}");
        let err = fails(
            hoard(&s.store()).args(["serve", "--listen", "0.0.0.0:0"]),
            1,
        );
        assert!(err.contains("--insecure-no-auth"), "{err}");
        let err = fails(
            hoard(&s.store()).args(["push", f.to_str().unwrap(), "--server", "ftp://x"]),
            1,
        );
        assert!(err.contains("http://"), "{err}");
    }
}

mod remote_store_in_use {
    use super::super::net::ChildServer;
    use super::super::support::{Scratch, hoard, ok};

    /// `HOARD_STORE` often names the store a local `hoard serve` holds: pull goes on without it.
    #[test]
    fn pull_skips_a_local_store_that_is_in_use() {
        let s = Scratch::new();
        let server = ChildServer::start(&s.store());
        let f = s.file("a.bin", b"some bytes to pull back");
        ok(hoard(&s.store()).args(["push", f.to_str().unwrap(), "--server", &server.url]));
        let out = s.path("back.bin");
        let o = hoard(&s.store())
            .args([
                "pull",
                "a.bin",
                out.to_str().unwrap(),
                "--server",
                &server.url,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));
        assert_eq!(std::fs::read(&out).unwrap(), b"some bytes to pull back");
    }
}
