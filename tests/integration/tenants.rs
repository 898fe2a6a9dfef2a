//! One server, many teams, on a real server (127.0.0.1, port 0): namespaces keep names,
//! files, upload sessions and tus uploads apart (another namespace's answers exactly as an
//! unknown one); scopes (read, append, write, admin) are enforced on every route; a tokens
//! file read again on SIGHUP adds and removes tokens while uploads go on.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hoard::server::{Auth, Limits};
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::data;
use super::net::{Api, ChildServer, TestServer, push};
use super::server::manifest_of;
use super::support::{Scratch, b3, fails, hoard};

const TOKENS: &str = "\
# team a: an append-only token and a write token; team b: a write token
append a-add team-a
write a-rw team-a
read a-ro team-a
write b-rw team-b
admin root
read d-ro
";

fn tokens_file(s: &Scratch, text: &str) -> std::path::PathBuf {
    s.file("tokens", text.as_bytes())
}

fn two_teams(s: &Scratch) -> (TestServer, Api) {
    let auth = Auth::with_file(&[], &tokens_file(s, TOKENS), false).unwrap();
    let server = TestServer::start(&s.store(), None, Limits::default(), auth);
    let api = Api::new(&server);
    (server, api)
}

/// Sends `m path` with `token` (and `body`); returns status and body.
fn call(api: &Api, token: &str, m: M, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Vec<u8>) {
    let mut rb = api.req(m, path).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let (st, _, b) = api.call(rb);
    (st, b)
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// `GET path` with `token`.
fn get(api: &Api, token: &str, path: &str) -> (StatusCode, Vec<u8>) {
    call(api, token, M::GET, path, None)
}

/// The status of `m path` with `token`.
fn status(api: &Api, token: &str, m: M, path: &str) -> StatusCode {
    call(api, token, m, path, None).0
}

/// The names `token` lists.
fn names(api: &Api, token: &str) -> Vec<String> {
    let (st, b) = call(api, token, M::GET, "/v1/files", None);
    assert_eq!(st, StatusCode::OK);
    json_of(&b)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap_or("(unnamed)").to_owned())
        .collect()
}

/// Checks that each of `routes` (`{}` standing for an id) answers `token` about `theirs`
/// (another namespace's) with 404 and the same error as about `unknown` (nobody's).
fn answers_as_unknown(api: &Api, token: &str, routes: &[(M, &str)], theirs: &str, unknown: &str) {
    for (m, path) in routes {
        let a = call(api, token, m.clone(), &path.replace("{}", theirs), None);
        let b = call(api, token, m.clone(), &path.replace("{}", unknown), None);
        assert_eq!(a.0, StatusCode::NOT_FOUND, "{m} {path}");
        assert_eq!((a.0, code(&a.1)), (b.0, code(&b.1)), "{m} {path}");
    }
}

/// The error code of an answer.
fn code(b: &[u8]) -> String {
    json_of(b)["error"].as_str().unwrap_or("").to_owned()
}

#[test]
fn each_namespace_sees_only_its_own_names_and_files() {
    let s = Scratch::new();
    let (_server, api) = two_teams(&s);
    let (va, vb) = (data::mixed(600_000, 1), data::mixed(500_000, 2));
    // One name in both namespaces, each its own file.
    let put = |t: &str, v: &[u8]| call(&api, t, M::PUT, "/v1/files/r/report.bin", Some(v.to_vec()));
    assert_eq!(put("a-rw", &va).0, StatusCode::CREATED);
    assert_eq!(put("b-rw", &vb).0, StatusCode::CREATED);
    assert_eq!(
        get(&api, "a-ro", "/v1/files/r/report.bin"),
        (StatusCode::OK, va.clone())
    );
    assert_eq!(
        get(&api, "b-rw", "/v1/files/r/report.bin"),
        (StatusCode::OK, vb.clone())
    );
    assert_eq!(names(&api, "a-ro"), vec!["r/report.bin"]);
    assert_eq!(names(&api, "b-rw"), vec!["r/report.bin"]);
    // The default namespace has no names of its own, and does not see the teams'.
    assert!(names(&api, "d-ro").is_empty());

    // Team b reaches team a's file by no id, prefix, manifest or delete: each answers as an
    // id nobody stored does.
    let (ida, idb) = (b3(&va), b3(&vb));
    let unknown = "ab".repeat(32);
    let routes = [
        (M::GET, "/v1/files/{}"),
        (M::HEAD, "/v1/files/{}"),
        (M::GET, "/v1/manifests/{}"),
        (M::DELETE, "/v1/files/{}"),
    ];
    answers_as_unknown(&api, "b-rw", &routes, &ida, &unknown);
    let (st, _) = call(
        &api,
        "b-rw",
        M::GET,
        &format!("/v1/files/{}", &ida[..12]),
        None,
    );
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Its own file by id and prefix it reaches; the admin reaches both.
    assert_eq!(get(&api, "b-rw", &format!("/v1/files/{idb}")).1, vb);
    assert_eq!(
        call(
            &api,
            "b-rw",
            M::GET,
            &format!("/v1/files/{}", &idb[..12]),
            None
        )
        .1,
        vb
    );
    assert_eq!(get(&api, "root", &format!("/v1/files/{ida}")).1, va);

    // Stats count a namespace's own files; an admin's name every namespace's.
    let stats = |t: &str| json_of(&get(&api, t, "/v1/stats").1);
    let b = stats("b-rw");
    assert_eq!((&b["files"], &b["names"]), (&json!(1), &json!(1)));
    assert_eq!(b["logical_bytes"], json!(vb.len()));
    assert_eq!(b["per_file"][0]["id"], json!(idb));
    assert_eq!(b["per_file"][0]["names"], json!(["r/report.bin"]));
    assert_eq!(b["per_file"].as_array().unwrap().len(), 1);
    let all = stats("root");
    assert_eq!(all["files"], json!(2));
    let mut labels: Vec<String> = all["per_file"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["names"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    labels.sort();
    assert_eq!(labels, ["team-a:r/report.bin", "team-b:r/report.bin"]);

    // Removing team a's name leaves team b's name and file as they were; team a's file goes.
    let (st, b) = call(&api, "a-rw", M::DELETE, "/v1/files/r/report.bin", None);
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["files"], json!([ida]));
    assert_eq!(
        get(&api, "b-rw", "/v1/files/r/report.bin"),
        (StatusCode::OK, vb)
    );
    assert_eq!(
        status(&api, "root", M::GET, &format!("/v1/files/{ida}")),
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_file_both_namespaces_hold_goes_only_when_the_last_name_does() {
    let s = Scratch::new();
    let (_server, api) = two_teams(&s);
    let v = data::mixed(300_000, 3);
    for t in ["a-rw", "b-rw"] {
        assert_eq!(
            call(&api, t, M::PUT, "/v1/files/same.bin", Some(v.clone())).0,
            StatusCode::CREATED
        );
    }
    let id = b3(&v);
    // Removing it by id in team a drops team a's name only; team b still reads it.
    let (st, b) = call(&api, "a-rw", M::DELETE, &format!("/v1/files/{id}"), None);
    assert_eq!(st, StatusCode::OK);
    assert_eq!(json_of(&b)["names"], json!(["same.bin"]));
    assert_eq!(json_of(&b)["files"], json!([]));
    assert!(names(&api, "a-ro").is_empty());
    assert_eq!(get(&api, "b-rw", "/v1/files/same.bin"), (StatusCode::OK, v));
    assert_eq!(
        status(&api, "a-ro", M::GET, &format!("/v1/files/{id}")),
        StatusCode::NOT_FOUND
    );
}

#[test]
fn append_tokens_add_versions_but_remove_nothing_and_only_admins_run_gc() {
    let s = Scratch::new();
    let (_server, api) = two_teams(&s);
    let (v1, v2) = (data::mixed(200_000, 4), data::mixed(200_000, 5));
    let put = |v: &[u8]| call(&api, "a-add", M::PUT, "/v1/files/log.bin", Some(v.to_vec()));
    assert_eq!(put(&v1).0, StatusCode::CREATED);
    let (st, b) = put(&v2);
    assert_eq!(
        (st, &json_of(&b)["version"]),
        (StatusCode::CREATED, &json!(2))
    );
    let listing = || get(&api, "a-ro", "/v1/files").1;
    let before = listing();
    for (m, path) in [
        (M::DELETE, "/v1/files/log.bin".to_owned()),
        (M::DELETE, "/v1/files/log.bin@1".to_owned()),
        (M::DELETE, format!("/v1/files/{}", b3(&v1))),
        (M::POST, "/v1/gc".to_owned()),
        (M::POST, "/v1/fsck".to_owned()),
    ] {
        let (st, b) = call(&api, "a-add", m.clone(), &path, None);
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "{m} {path}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    // A read token may not add either.
    assert_eq!(
        call(&api, "a-ro", M::PUT, "/v1/files/x", Some(vec![1])).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(listing(), before, "a refused request changed something");
    // Write removes, but gc and fsck are the admin's.
    assert_eq!(
        call(&api, "a-rw", M::POST, "/v1/gc", None).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&api, "a-rw", M::DELETE, "/v1/files/log.bin@1", None).0,
        StatusCode::OK
    );
    assert_eq!(
        call(&api, "root", M::POST, "/v1/gc", None).0,
        StatusCode::OK
    );
    assert_eq!(get(&api, "a-ro", "/v1/files/log.bin"), (StatusCode::OK, v2));
}

#[test]
fn sessions_and_tus_uploads_are_their_namespaces_own() {
    let s = Scratch::new();
    let (_server, api) = two_teams(&s);
    let v = data::mixed(400_000, 6);
    let mut open = serde_json::to_value(manifest_of(&v)).unwrap();
    open["name"] = json!("s.bin");
    let (st, _, b) = api.call(
        api.req(M::POST, "/v1/uploads")
            .bearer_auth("a-add")
            .json(&open),
    );
    assert_eq!(st, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let sid = json_of(&b)["id"].as_str().unwrap().to_owned();
    let missing: Vec<String> = serde_json::from_value(json_of(&b)["missing"].clone()).unwrap();
    // Team b can neither see, feed, complete nor abort it; each answers as for no session.
    let nobody = "0".repeat(32);
    let routes = [
        (M::GET, "/v1/uploads/{}"),
        (M::POST, "/v1/uploads/{}/complete"),
        (M::DELETE, "/v1/uploads/{}"),
    ];
    answers_as_unknown(&api, "b-rw", &routes, &sid, &nobody);
    let chunk = manifest_of(&v).chunks[0];
    let first = &v[..chunk.len as usize];
    let tagged = format!("/v1/chunks/{}?session={sid}", chunk.id);
    assert_eq!(
        call(&api, "b-rw", M::PUT, &tagged, Some(first.to_vec())).0,
        StatusCode::NOT_FOUND
    );
    // Its own namespace completes it, after sending what was missing.
    assert!(!missing.is_empty());
    let (st, b) = call(&api, "a-add", M::PUT, "/v1/files/s.bin", Some(v.clone()));
    assert_eq!(st, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let (st, b) = call(
        &api,
        "a-add",
        M::POST,
        &format!("/v1/uploads/{sid}/complete"),
        None,
    );
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["name"], "s.bin");
    assert!(names(&api, "b-rw").is_empty());

    // tus: created by team a, unknown to team b on every method.
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode("t.bin")
    );
    let tus = |t: &str, m: M, path: &str| {
        api.req(m, path)
            .bearer_auth(t)
            .header("tus-resumable", "1.0.0")
    };
    let (st, h, _) = api.call(
        tus("a-add", M::POST, "/v1/tus/")
            .header("upload-length", v.len().to_string())
            .header("upload-metadata", meta),
    );
    assert_eq!(st, StatusCode::CREATED);
    let loc = h["location"].to_str().unwrap().to_owned();
    let half = v.len() / 2;
    let patch = |t: &str, at: usize, body: &[u8]| {
        api.call(
            tus(t, M::PATCH, &loc)
                .header("upload-offset", at.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(body.to_vec()),
        )
        .0
    };
    assert_eq!(patch("a-add", 0, &v[..half]), StatusCode::NO_CONTENT);
    for m in [M::HEAD, M::GET, M::DELETE] {
        let (st, _, _) = api.call(tus("b-rw", m.clone(), &loc));
        assert_eq!(st, StatusCode::NOT_FOUND, "{m}");
    }
    assert_eq!(patch("b-rw", half, &v[half..]), StatusCode::NOT_FOUND);
    // Team a's upload went on undisturbed.
    assert_eq!(patch("a-add", half, &v[half..]), StatusCode::NO_CONTENT);
    assert_eq!(get(&api, "a-ro", "/v1/files/t.bin"), (StatusCode::OK, v));
    // Where files are reachable only through names, an upload must be named.
    let (st, _, b) = api.call(tus("a-add", M::POST, "/v1/tus/").header("upload-length", "10"));
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(String::from_utf8_lossy(&b).contains("needs a name"));
}

/// Sends SIGHUP to the server process.
fn hangup(server: &ChildServer) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()));
}

/// Waits (at most 10 s) until `token`'s listing answers `want`.
fn wait_for(api: &Api, token: &str, want: StatusCode) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = call(api, token, M::GET, "/v1/files", None);
        if st == want {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{token}: still {st}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reads_the_tokens_again_while_an_upload_goes_on() {
    let s = Scratch::new();
    let file = tokens_file(&s, "write old team-a\nwrite keep team-a\n");
    let mut cmd = hoard(&s.store());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--tokens-file"])
        .arg(&file);
    let server = ChildServer::start_command(cmd);
    let api = Api::from_url(&server.url);
    wait_for(&api, "old", StatusCode::OK);
    wait_for(&api, "new", StatusCode::UNAUTHORIZED);
    // A tus upload half sent with the token that stays.
    let v = data::mixed(300_000, 7);
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode("u.bin")
    );
    let tus = |m: M, path: &str| {
        api.req(m, path)
            .bearer_auth("keep")
            .header("tus-resumable", "1.0.0")
    };
    let (st, h, _) = api.call(
        tus(M::POST, "/v1/tus/")
            .header("upload-length", v.len().to_string())
            .header("upload-metadata", meta),
    );
    assert_eq!(st, StatusCode::CREATED);
    let loc = h["location"].to_str().unwrap().to_owned();
    let half = v.len() / 2;
    let patch = |at: usize, body: &[u8]| {
        api.call(
            tus(M::PATCH, &loc)
                .header("upload-offset", at.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(body.to_vec()),
        )
        .0
    };
    assert_eq!(patch(0, &v[..half]), StatusCode::NO_CONTENT);

    // One token out, one in.
    std::fs::write(&file, "write new team-a\nwrite keep team-a\n").unwrap();
    hangup(&server);
    wait_for(&api, "new", StatusCode::OK);
    wait_for(&api, "old", StatusCode::UNAUTHORIZED);
    assert_eq!(patch(half, &v[half..]), StatusCode::NO_CONTENT);
    assert_eq!(get(&api, "new", "/v1/files/u.bin"), (StatusCode::OK, v));

    // A file that does not read keeps the tokens in force.
    std::fs::write(&file, "owner nobody\n").unwrap();
    hangup(&server);
    std::thread::sleep(Duration::from_millis(300));
    wait_for(&api, "new", StatusCode::OK);
    assert!(server.terminate());
}

#[test]
fn a_tokens_file_with_a_bad_line_stops_the_server_naming_it() {
    let s = Scratch::new();
    let file = tokens_file(&s, "read r\nappend a Team-A\n");
    let err = fails(
        hoard(Path::new(&s.store()))
            .args(["serve", "--listen", "127.0.0.1:0", "--tokens-file"])
            .arg(&file),
        1,
    );
    assert!(
        err.contains("line 2") && err.contains("not a namespace name"),
        "{err}"
    );
    // Quotas are read but not enforced yet: refused, so that nobody counts on them.
    std::fs::write(&file, "read r\nquota team-a 10G\n").unwrap();
    let err = fails(
        hoard(Path::new(&s.store()))
            .args(["serve", "--listen", "127.0.0.1:0", "--tokens-file"])
            .arg(&file),
        1,
    );
    assert!(err.contains("quotas are not enforced"), "{err}");
}

#[test]
fn a_namespace_learns_nothing_of_another_s_chunks_and_proves_what_it_adds() {
    let s = Scratch::new();
    let (_server, api) = two_teams(&s);
    let v = data::mixed(3 << 20, 8);
    let m = manifest_of(&v);
    let mut ids: Vec<String> = m.chunks.iter().map(|r| r.id.to_string()).collect();
    ids.sort();
    ids.dedup();
    let missing_of = |t: &str, ids: &[String]| -> Vec<String> {
        let (st, _, b) = api.call(
            api.req(M::POST, "/v1/chunks/missing")
                .bearer_auth(t)
                .json(&json!(ids)),
        );
        assert_eq!(st, StatusCode::OK);
        let mut got: Vec<String> = serde_json::from_slice(&b).unwrap();
        got.sort();
        got
    };
    // Before and after team a stores the file, team b gets the same answers.
    let before = missing_of("b-rw", &ids);
    let sample = format!("/v1/chunks/{}", ids[0]);
    let head_before = status(&api, "b-rw", M::HEAD, &sample);
    assert_eq!(
        call(&api, "a-rw", M::PUT, "/v1/files/big.bin", Some(v.clone())).0,
        StatusCode::CREATED
    );
    let stored_once = json_of(&get(&api, "root", "/v1/stats").1)["stored_bytes"].clone();
    assert!(
        missing_of("a-ro", &ids).is_empty(),
        "team a references them"
    );
    assert_eq!(missing_of("b-rw", &ids), before);
    assert_eq!(before, ids);
    assert_eq!(status(&api, "b-rw", M::HEAD, &sample), head_before);
    assert_eq!(status(&api, "b-rw", M::GET, &sample), StatusCode::NOT_FOUND);
    let (st, _, _) = api.call(
        api.req(M::POST, "/v1/chunks/fetch")
            .bearer_auth("b-rw")
            .json(&json!([ids[0]])),
    );
    assert_eq!(st, StatusCode::NOT_FOUND);

    // A session of team b for the same file lists every chunk missing, and does not complete
    // until team b sent them: another namespace's chunks make no file of its own.
    let mut open = serde_json::to_value(&m).unwrap();
    open["name"] = json!("mine.bin");
    let (st, _, b) = api.call(
        api.req(M::POST, "/v1/uploads")
            .bearer_auth("b-rw")
            .json(&open),
    );
    assert_eq!(st, StatusCode::CREATED);
    let sid = json_of(&b)["id"].as_str().unwrap().to_owned();
    let mut listed: Vec<String> = serde_json::from_value(json_of(&b)["missing"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, ids);
    // Its progress counts against what team b referenced or sent too, not the store.
    let (st, b) = get(&api, "b-rw", &format!("/v1/uploads/{sid}"));
    assert_eq!(st, StatusCode::OK);
    let p = json_of(&b);
    assert_eq!(p["state"], "waiting", "{p}");
    assert_eq!(p["missing_chunks"], json!(ids.len()), "{p}");
    assert_eq!(p["missing_at_open"], json!(ids.len()), "{p}");
    let done = format!("/v1/uploads/{sid}/complete");
    let (st, b) = call(&api, "b-rw", M::POST, &done, None);
    assert_eq!(st, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["missing"].as_array().unwrap().len(), ids.len());
    // Team b sends them (its proof of possession): stored once at rest all the same.
    let mut at = 0usize;
    let mut batch = Vec::new();
    let mut sent = std::collections::HashSet::new();
    for r in &m.chunks {
        let raw = &v[at..at + r.len as usize];
        at += r.len as usize;
        if sent.insert(r.id) {
            hoard::wire::put_frame(&mut batch, &r.id, hoard::codec::Codec::Raw, r.len, raw);
        }
    }
    let path = format!("/v1/chunks?session={sid}");
    let (st, b) = call(&api, "b-rw", M::POST, &path, Some(batch));
    assert_eq!(st, StatusCode::OK);
    // Reported new: new to team b (new to the store would tell it of team a's copy).
    assert_eq!(json_of(&b)["new_chunks"], json!(ids.len()));
    let (st, b) = call(&api, "b-rw", M::POST, &done, None);
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(get(&api, "b-rw", "/v1/files/mine.bin"), (StatusCode::OK, v));
    assert!(missing_of("b-rw", &ids).is_empty());
    let stats = json_of(&get(&api, "root", "/v1/stats").1);
    assert_eq!(stats["stored_bytes"], stored_once, "a chunk stored twice");
    // Nor does a whole-file upload tell: what it reports new is new to the namespace.
    let w = data::mixed(1 << 20, 11);
    let put = |t: &str| call(&api, t, M::PUT, "/v1/files/w.bin", Some(w.clone()));
    assert_eq!(put("a-rw").0, StatusCode::CREATED);
    let stored = json_of(&get(&api, "root", "/v1/stats").1)["stored_bytes"].clone();
    let (st, b) = put("b-rw");
    assert_eq!(st, StatusCode::CREATED);
    let r = json_of(&b);
    assert_eq!(
        (&r["new_bytes"], &r["stored_bytes"]),
        (&json!(w.len()), &json!(0)),
        "{r}"
    );
    assert_eq!(
        json_of(&get(&api, "root", "/v1/stats").1)["stored_bytes"],
        stored
    );
}

#[test]
fn pushes_of_two_namespaces_each_send_their_first_version_whole_and_store_it_once() {
    let s = Scratch::new();
    let (server, api) = two_teams(&s);
    let v1 = data::mixed(8 << 20, 9);
    let v2 = data::edit(&v1, 5, 10);
    let (p1, p2) = (s.file("v1", &v1), s.file("v2", &v2));
    let client = |t: &str| hoard::client::Client::new(&server.url, Some(t.to_owned())).unwrap();
    let (a, b) = (client("a-rw"), client("b-rw"));
    let stored = || {
        json_of(&get(&api, "root", "/v1/stats").1)["stored_bytes"]
            .as_u64()
            .unwrap()
    };
    let a1 = push(&a, &p1, "disk.img").unwrap();
    let a2 = push(&a, &p2, "disk.img").unwrap();
    let after_a = stored();
    let b1 = push(&b, &p1, "disk.img").unwrap();
    let b2 = push(&b, &p2, "disk.img").unwrap();
    // Team b proves every chunk of its first version by sending it, as team a did; its second
    // version moves only what changed, as team a's did. Nothing is stored twice.
    // New to team b, as its pushes report it (new to the store would tell it of team a's).
    assert_eq!((b1.new_chunks, b1.new_bytes), (a1.new_chunks, a1.new_bytes));
    assert!(
        b1.bytes_sent * 10 >= a1.bytes_sent * 9,
        "{} vs {}",
        b1.bytes_sent,
        a1.bytes_sent
    );
    assert!(
        b2.bytes_sent * 10 <= a2.bytes_sent * 11 + 65_536,
        "{} vs {}",
        b2.bytes_sent,
        a2.bytes_sent
    );
    assert!(
        b2.bytes_sent * 4 < b1.bytes_sent,
        "{} vs {}",
        b2.bytes_sent,
        b1.bytes_sent
    );
    assert_eq!(stored(), after_a, "a chunk stored twice");
    eprintln!(
        "two namespaces, 8 MiB + 5 edits: team a sent {} + {} bytes, team b {} + {}",
        a1.bytes_sent, a2.bytes_sent, b1.bytes_sent, b2.bytes_sent
    );
    assert_eq!(
        get(&api, "b-rw", "/v1/files/disk.img"),
        (StatusCode::OK, v2)
    );
}
