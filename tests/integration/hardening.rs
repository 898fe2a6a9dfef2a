//! What an adversarial probe of `hoard serve` and a client written from the README found,
//! each pinned by a test that failed before its fix: bounded metrics labels, names that
//! shadow ids, tokens files that grant write on garbage, and error answers that are not JSON.

use reqwest::Method;
use serde_json::Value;

use super::data;
use super::net::{Api, TestServer};
use super::support::{Scratch, fails, hoard, ok};

#[test]
fn made_up_methods_and_paths_add_no_metric_series() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let (_, _, before) = api.call(api.req(Method::GET, "/metrics"));
    for i in 0..200 {
        let method = Method::from_bytes(format!("X{i:04}{}", "M".repeat(2000)).as_bytes()).unwrap();
        for path in ["/healthz", "/", "/app.js", &format!("/no/such/route/{i}")] {
            let (status, _, body) = api.call_json(api.req(method.clone(), path));
            assert!(status.is_client_error(), "{method} {path}: {status}");
            assert!(body["error"].is_string(), "{path}: {body}");
        }
    }
    let (_, _, after) = api.call(api.req(Method::GET, "/metrics"));
    let after = String::from_utf8(after).unwrap();
    assert!(!after.contains("MMMM"), "a client's method became a label");
    assert!(
        !after.contains("/no/such/route"),
        "a client's path became a label"
    );
    assert!(after.contains("method=\"other\""), "{after}");
    // A handful of new series (other × a few routes × statuses), not 800.
    assert!(
        after.len() < before.len() + 4096,
        "{} -> {}",
        before.len(),
        after.len()
    );
}

#[test]
fn every_error_answer_is_the_json_error_body() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let cases: Vec<(Method, &str, u16)> = vec![
        (Method::GET, "/v2/nothing", 404),
        (Method::DELETE, "/healthz", 405),
        (Method::POST, "/v1/config", 405),
        (Method::GET, "/v1/chunks/zz", 400),
    ];
    for (m, path, want) in cases {
        let (status, headers, body) = api.call_json(api.req(m.clone(), path));
        assert_eq!(status.as_u16(), want, "{m} {path}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{m} {path}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{m} {path}: {body}"
        );
    }
}

#[test]
fn a_name_never_shadows_a_file_id() {
    let s = Scratch::new();
    let store = s.store();
    let a = data::random(300_000, 90);
    let b = data::random(300_000, 91);
    let id_a = super::support::b3(&a);
    ok(hoard(&store)
        .arg("import")
        .arg(s.file("a", &a))
        .args(["--name", "a"]));

    // A name spelled like a file id or an id prefix is refused, by the CLI and over HTTP.
    for name in [id_a.as_str(), &id_a[..8], &id_a[..20], "DEADBEEF"] {
        let err = fails(
            hoard(&store)
                .arg("import")
                .arg(s.file("b", &b))
                .args(["--name", name]),
            1,
        );
        assert!(err.contains("hex digits"), "{err}");
    }
    // Bidi overrides, other format characters and backslashes too.
    for name in ["evil\u{202e}txt.exe", "zero\u{200b}width", "dir\\file"] {
        fails(
            hoard(&store)
                .arg("import")
                .arg(s.file("b", &b))
                .args(["--name", name]),
            1,
        );
    }
    let server = TestServer::simple(&store, None);
    let api = Api::new(&server);
    let (status, _, body) = api.call_json(
        api.req(Method::PUT, &format!("/v1/files/{id_a}"))
            .body(b.clone()),
    );
    assert_eq!(status.as_u16(), 400, "{body}");
    let (status, _, got) = api.call(api.req(Method::GET, &format!("/v1/files/{}", &id_a[..8])));
    assert_eq!(status.as_u16(), 200);
    assert!(got == a);
    server.stop();

    // A name stored before the rule, spelled like A's id prefix and pointing at B, does not
    // change what the id prefix means.
    ok(hoard(&store)
        .arg("import")
        .arg(s.file("b", &b))
        .args(["--name", "b"]));
    {
        let st = hoard::store::LocalStore::open_existing(&store).unwrap();
        let rec = hoard::store::ChunkStore::get_name(&st, "b")
            .unwrap()
            .unwrap();
        hoard::store::ChunkStore::put_name(&st, &id_a[..8], &rec).unwrap();
    }
    let out = s.path("out");
    ok(hoard(&store).args(["export", &id_a[..8]]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == a);
}

#[test]
fn a_tokens_file_with_anything_but_scope_and_token_stops_the_server() {
    let s = Scratch::new();
    let store = s.store();
    ok(hoard(&store).arg("init"));
    let cases = [
        ("read\n", "line 1", "field"),
        ("# ok\nwrite\n", "line 2", "field"),
        ("write GOOD\nRead SECRETR\n", "line 2", "unknown scope"),
        ("readonly X\n", "line 1", "unknown scope"),
        ("read A\nwrite A\n", "line 2", "same token"),
        ("write a b\n", "line 1", "field"),
    ];
    for (text, line, why) in cases {
        let f = s.file("tokens", text.as_bytes());
        let err = fails(
            hoard(&store)
                .args(["serve", "--listen", "127.0.0.1:0", "--tokens-file"])
                .arg(&f),
            1,
        );
        assert!(err.contains(line) && err.contains(why), "{text:?}: {err}");
    }
    for bad in ["Read:SECRETR", "readonly:X", "write:"] {
        let err = fails(
            hoard(&store).args(["serve", "--listen", "127.0.0.1:0", "--token", bad]),
            1,
        );
        assert!(err.contains("--token"), "{bad}: {err}");
    }
    // Help shows no token taken from the environment.
    let help = ok(hoard(&store)
        .args(["serve", "--help"])
        .env("HOARD_TOKENS", "hunter2secret"));
    assert!(!help.contains("hunter2secret"), "{help}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let s = Scratch::new();
    let auth = hoard::server::Auth::new(&["w0rd".into()], false).unwrap();
    let server = TestServer::start(&s.store(), None, hoard::server::Limits::default(), auth);
    let api = Api::new(&server);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body): (_, Value) = {
            let (s, _, b) = api.call_json(
                api.req(Method::GET, "/v1/files")
                    .header("authorization", format!("{scheme} w0rd")),
            );
            (s, b)
        };
        assert_eq!(status.as_u16(), 200, "{scheme}: {body}");
    }
}

#[test]
fn ranges_and_conditional_requests_follow_rfc_9110() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let body = data::random(100_000, 92);
    let id = super::support::b3(&body);
    let (st, _, _) = api.call(api.req(Method::PUT, "/v1/files/r.bin").body(body.clone()));
    assert!(st.is_success());
    let get = |h: &[(&str, String)]| {
        let mut rb = api.req(Method::GET, "/v1/files/r.bin");
        for (k, v) in h {
            rb = rb.header(*k, v);
        }
        api.call(rb)
    };
    let (st, _, got) = get(&[("range", "bytes=10-5".into())]);
    assert_eq!(st.as_u16(), 200);
    assert!(got == body);
    let (st, h, got) = get(&[("range", "bytes=-999999".into())]);
    assert_eq!(st.as_u16(), 206);
    assert_eq!(h["content-range"], "bytes 0-99999/100000");
    assert!(got == body);
    let (st, _, got) = get(&[("range", "bytes=99990-200000".into())]);
    assert_eq!(st.as_u16(), 206);
    assert!(got == body[99_990..]);
    let (st, _, _) = get(&[("range", "bytes=100000-".into())]);
    assert_eq!(st.as_u16(), 416);
    for inm in [
        format!("W/\"{id}\""),
        "*".into(),
        format!("\"nope\", \"{id}\""),
    ] {
        let (st, _, _) = get(&[("if-none-match", inm.clone())]);
        assert_eq!(st.as_u16(), 304, "{inm}");
    }
    let (st, _, _) = get(&[("if-none-match", "\"nope\"".into())]);
    assert_eq!(st.as_u16(), 200);
}

#[test]
fn a_store_url_this_build_cannot_use_is_refused() {
    let s = Scratch::new();
    for cmd in [&["import", "x"][..], &["ls"], &["init"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
            .current_dir(s.dir.path())
            .args(["--store", "s3://bucket/x"])
            .args(cmd)
            .env_remove("HOARD_STORE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("s3://"), "{err}");
    }
    assert!(!s.path("s3:").exists(), "a directory named s3: was created");
}

#[test]
fn fsck_over_http_returns_no_server_paths() {
    let s = Scratch::new();
    let store = s.store();
    let body = data::random(2 << 20, 93);
    ok(hoard(&store).arg("import").arg(s.file("f", &body)));
    // Flip a byte in the middle of the pack: one chunk goes bad, repair quarantines it.
    let pack = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    let server = TestServer::simple(&store, None);
    let api = Api::new(&server);
    let (st, _, text) = api.call(api.req(Method::POST, "/v1/fsck?repair=true"));
    assert_eq!(st.as_u16(), 200);
    let text = String::from_utf8(text).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    assert!(r["repair"]["quarantined"].as_u64().unwrap() >= 1, "{r}");
    assert!(!text.contains(&*s.dir.path().to_string_lossy()), "{text}");
}
