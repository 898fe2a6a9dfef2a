//! The HTTP API on a real server (127.0.0.1, port 0): curl-style whole files, ranges, upload
//! sessions, and every kind of bad input with its status, leaving the store unchanged.

use std::io::{Read, Write};
use std::time::Duration;

use hoard::server::{Auth, Limits, OPENAPI};
use hoard::wire::{self, FlatManifest};
use hoard::{Hash, codec};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::data;
use super::net::{Api, TestServer};
use super::support::{Scratch, b3};

use reqwest::Method as M;

#[test]
fn curl_put_streams_a_file_in_and_get_gives_it_back_with_ranges() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let v = data::mixed(5 << 20, 3);
    let (st, _, body) = api.call(api.req(M::PUT, "/v1/files/dir/a.bin").body(v.clone()));
    assert_eq!(
        st,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let put: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(put["id"], json!(b3(&v)));
    assert_eq!(put["new_bytes"], json!(v.len()));
    // The same bytes again under another name store nothing new.
    let (_, _, body) = api.call(api.req(M::PUT, "/v1/files/b.bin").body(v.clone()));
    let again: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(again["new_chunks"], json!(0));

    let (st, h, got) = api.call(api.req(M::GET, "/v1/files/dir/a.bin"));
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got, v);
    let etag = format!("\"{}\"", b3(&v));
    assert_eq!(h["etag"], etag.as_str());
    assert_eq!(h["content-length"], v.len().to_string().as_str());
    // By id, and by id prefix.
    let (_, _, got) = api.call(api.req(M::GET, &format!("/v1/files/{}", &b3(&v)[..12])));
    assert_eq!(got, v);

    for (range, from, to) in [
        ("bytes=0-0", 0, 1),
        ("bytes=100-70000", 100, 70001),
        ("bytes=4000000-", 4_000_000, v.len()),
        ("bytes=-10", v.len() - 10, v.len()),
    ] {
        let (st, h, got) = api.call(api.req(M::GET, "/v1/files/b.bin").header("range", range));
        assert_eq!(st, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(got, &v[from..to], "{range}");
        let cr = format!("bytes {from}-{}/{}", to - 1, v.len());
        assert_eq!(h["content-range"], cr.as_str());
    }
    let (st, h, got) = api.call(api.req(M::HEAD, "/v1/files/b.bin"));
    assert_eq!(st, StatusCode::OK);
    assert!(got.is_empty());
    assert_eq!(h["content-length"], v.len().to_string().as_str());
    let (st, _, _) = api.call(
        api.req(M::GET, "/v1/files/b.bin")
            .header("if-none-match", etag),
    );
    assert_eq!(st, StatusCode::NOT_MODIFIED);

    let (st, list) = api.json(M::GET, "/v1/files");
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["files"].as_array().unwrap().len(), 2);
    let (st, removed) = api.json(M::DELETE, "/v1/files/b.bin");
    assert_eq!(st, StatusCode::OK);
    assert_eq!(removed["names"], serde_json::json!(["b.bin"]));
    let (st, _) = api.json(M::GET, "/v1/files/b.bin");
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Opens a session for `data` cut with the store's default params.
/// The manifest of `data` at the default chunker params.
pub(super) fn manifest_of(data: &[u8]) -> FlatManifest {
    let scan = hoard::scan::scan(data, hoard::ChunkerParams::DEFAULT, &|_| {}).unwrap();
    FlatManifest {
        id: scan.id,
        size: scan.size,
        chunker: None,
        chunks: scan.chunks,
    }
}

#[test]
fn upload_session_goes_waiting_uploading_complete_and_checks_every_chunk() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let v = data::mixed(2 << 20, 4);
    let m = manifest_of(&v);
    let mut body = serde_json::to_value(&m).unwrap();
    body["name"] = json!("s/one.bin");
    let (st, h, b) = api.call(api.req(M::POST, "/v1/uploads").json(&body));
    assert_eq!(st, StatusCode::CREATED);
    let open: Value = serde_json::from_slice(&b).unwrap();
    let sid = open["id"].as_str().unwrap().to_owned();
    assert_eq!(h["location"], format!("/v1/uploads/{sid}").as_str());
    assert_eq!(open["state"], "waiting");
    let missing: Vec<Hash> = serde_json::from_value(open["missing"].clone()).unwrap();
    let distinct: std::collections::HashSet<_> = m.chunks.iter().map(|r| r.id).collect();
    assert_eq!(missing.len(), distinct.len());

    // Completing now: 409 with exactly the missing ids.
    let (st, inc) = api.json(M::POST, &format!("/v1/uploads/{sid}/complete"));
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(inc["error"], "incomplete");
    assert_eq!(inc["missing"].as_array().unwrap().len(), missing.len());

    // One chunk by PUT (zstd on the wire), the rest in one framed batch.
    let mut at = 0usize;
    let mut spans = std::collections::HashMap::new();
    for r in &m.chunks {
        spans.entry(r.id).or_insert(at..at + r.len as usize);
        at += r.len as usize;
    }
    let first = missing[0];
    let z = zstd::bulk::compress(&v[spans[&first].clone()], 3).unwrap();
    let (st, _, _) = api.call(
        api.req(M::PUT, &format!("/v1/chunks/{first}?session={sid}"))
            .header("content-encoding", "zstd")
            .body(z),
    );
    assert_eq!(st, StatusCode::CREATED);
    let (st, p) = api.json(M::GET, &format!("/v1/uploads/{sid}"));
    assert_eq!(st, StatusCode::OK);
    assert_eq!(p["state"], "uploading");
    assert_eq!(p["missing_chunks"], json!(missing.len() - 1));
    let mut batch = Vec::new();
    for id in &missing[1..] {
        let raw = &v[spans[id].clone()];
        match codec::compress(raw, 1) {
            Some(z) => wire::put_frame(&mut batch, id, codec::Codec::Zstd, raw.len() as u32, &z),
            None => wire::put_frame(&mut batch, id, codec::Codec::Raw, raw.len() as u32, raw),
        }
    }
    let (st, _, b) = api.call(api.req(M::POST, "/v1/chunks").body(batch));
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (st, done) = api.json(M::POST, &format!("/v1/uploads/{sid}/complete"));
    assert_eq!(st, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "complete");
    let (st, again) = api.json(M::POST, &format!("/v1/uploads/{sid}/complete"));
    assert_eq!((st, &again["state"]), (StatusCode::OK, &json!("complete")));
    let (_, _, got) = api.call(api.req(M::GET, "/v1/files/s/one.bin"));
    assert_eq!(got, v);
    let (st, _, _) = api.call(api.req(M::DELETE, &format!("/v1/uploads/{sid}")));
    assert_eq!(st, StatusCode::NO_CONTENT);
}

#[test]
fn a_manifest_that_lies_about_the_file_id_is_refused_and_names_nothing() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let v = data::mixed(1 << 20, 8);
    let (st, _, _) = api.call(api.req(M::PUT, "/v1/files/real.bin").body(v.clone()));
    assert_eq!(st, StatusCode::CREATED);
    let mut m = manifest_of(&v);
    m.id = Hash::of(b"some other file");
    let mut body = serde_json::to_value(&m).unwrap();
    body["name"] = json!("fake.bin");
    let (_, open) = {
        let (s, _, b) = api.call(api.req(M::POST, "/v1/uploads").json(&body));
        (s, serde_json::from_slice::<Value>(&b).unwrap())
    };
    assert_eq!(open["missing"].as_array().unwrap().len(), 0);
    let sid = open["id"].as_str().unwrap();
    let (st, e) = api.json(M::POST, &format!("/v1/uploads/{sid}/complete"));
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (st, _) = api.json(M::GET, "/v1/files/fake.bin");
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Stored chunks with lengths that are not theirs (sizes still adding up): 400, not 500.
    let mut m2 = manifest_of(&v);
    m2.id = Hash::of(b"a file not stored yet");
    m2.chunks[0].len -= 1;
    m2.chunks[1].len += 1;
    let (_, _, b) = api.call(api.req(M::POST, "/v1/uploads").json(&m2));
    let sid2 = serde_json::from_slice::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, e) = api.json(M::POST, &format!("/v1/uploads/{sid2}/complete"));
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let (st, _) = api.json(M::GET, &format!("/v1/manifests/{}", m.id));
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[test]
fn sessions_survive_a_restart_and_expire_when_idle() {
    let s = Scratch::new();
    let v = data::mixed(1 << 20, 12);
    let m = manifest_of(&v);
    let limits = Limits {
        session_ttl: Duration::from_secs(2),
        ..Limits::default()
    };
    let server = TestServer::start(&s.store(), None, limits.clone(), Auth::default());
    let api = Api::new(&server);
    let (_, _, b) = api.call(api.req(M::POST, "/v1/uploads").json(&m));
    let sid = serde_json::from_slice::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.stop();

    let server = TestServer::start(&s.store(), None, limits, Auth::default());
    let api = Api::new(&server);
    let (st, p) = api.json(M::GET, &format!("/v1/uploads/{sid}"));
    assert_eq!((st, &p["state"]), (StatusCode::OK, &json!("waiting")));
    // Idle past the TTL (the sweeper runs every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (_, p) = api.json(M::GET, &format!("/v1/uploads/{sid}"));
        if p["state"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session never expired: {p}"
        );
    }
    let (st, e) = api.json(M::POST, &format!("/v1/uploads/{sid}/complete"));
    assert_eq!(
        (st, &e["error"]),
        (StatusCode::GONE, &json!("session_ended"))
    );
}

#[test]
fn bad_requests_get_their_status_and_change_nothing() {
    let s = Scratch::new();
    let limits = Limits {
        max_chunk: 300 << 10,
        max_ids: 1000,
        ..Limits::default()
    };
    let server = TestServer::start(&s.store(), None, limits, Auth::default());
    let api = Api::new(&server);
    let v = data::mixed(1 << 20, 21);
    api.call(api.req(M::PUT, "/v1/files/keep.bin").body(v.clone()));
    let before = api.stats();

    let chunk = data::random(10_000, 1);
    let id = Hash::of(&chunk);
    let other = Hash::of(b"other");
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            api.req(M::PUT, &format!("/v1/chunks/{other}"))
                .body(chunk.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "hash_mismatch",
        ),
        (
            api.req(M::PUT, &format!("/v1/chunks/{id}"))
                .body(vec![7u8; 400 << 10]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            api.req(M::PUT, "/v1/chunks/nothex").body(chunk.clone()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::PUT, &format!("/v1/chunks/{id}"))
                .header("content-encoding", "zstd")
                .body(b"not zstd".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/chunks")
                .body([vec![0u8; 32], vec![9u8], vec![1u8; 8]].concat()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/chunks").body(vec![1u8; 50]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            api.req(M::POST, "/v1/chunks/missing").body("[\"zz\"]"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/chunks/missing")
                .header("content-type", wire::BINARY)
                .body(vec![0u8; 33]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/chunks/missing")
                .header("content-type", wire::BINARY)
                .body(vec![0u8; 32 * 1001]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            api.req(M::POST, "/v1/uploads")
                .json(&json!({"id": id, "size": 5, "chunks": [{"id": id, "len": 4}]})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/uploads").json(&json!({"size": 5})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/uploads")
                .header("content-type", wire::BINARY)
                .body(b"HMF1short".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::POST, "/v1/uploads")
                .json(&json!({"name": "a\u{7}b", "id": id, "size": 0, "chunks": []})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::PUT, "/v1/files/bell%07name").body(chunk.clone()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            api.req(M::GET, "/v1/files/nope.bin"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::GET, &format!("/v1/files/{other}")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::GET, &format!("/v1/manifests/{other}")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::GET, &format!("/v1/chunks/{other}")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::GET, "/v1/uploads/00112233445566778899aabbccddeeff"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::DELETE, "/v1/files/nope.bin"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.req(M::GET, "/v1/files/keep.bin")
                .header("range", "bytes=2000000-"),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
        ),
    ];
    for (rb, want, code) in cases {
        let req = rb.build().unwrap();
        let what = format!("{} {}", req.method(), req.url().path());
        let (st, _, body) = api.call(
            api.http
                .request(req.method().clone(), req.url().clone())
                .headers(req.headers().clone())
                .body(
                    req.body()
                        .and_then(|b| b.as_bytes())
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default(),
                ),
        );
        assert_eq!(st, want, "{what}: {}", String::from_utf8_lossy(&body));
        let e: Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{what}: body is not JSON"));
        assert_eq!(e["error"], code, "{what}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // `..` in a name: sent raw, since HTTP clients normalise it away.
    let raw = raw_request(
        &server.url,
        "PUT /v1/files/a/../b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(api.stats(), before, "a refused request changed the store");
}

/// Sends `request` as-is over TCP and returns the response head.
fn raw_request(url: &str, request: &str) -> String {
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = request.replacen(
        "\r\n",
        &format!("\r\nHost: {addr}\r\nConnection: close\r\n"),
        1,
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn tokens_gate_reads_and_writes() {
    let s = Scratch::new();
    let auth = Auth::new(&["read:r0".into(), "write:w0".into()], false).unwrap();
    let server = TestServer::start(&s.store(), None, Limits::default(), auth);
    let api = Api::new(&server);
    let body = b"hello".to_vec();
    let put = |t: Option<&str>| {
        let rb = api.req(M::PUT, "/v1/files/t.txt").body(body.clone());
        api.call(match t {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        })
        .0
    };
    assert_eq!(put(None), StatusCode::UNAUTHORIZED);
    assert_eq!(put(Some("nope")), StatusCode::UNAUTHORIZED);
    assert_eq!(put(Some("r0")), StatusCode::FORBIDDEN);
    assert_eq!(put(Some("w0")), StatusCode::CREATED);
    let (st, _, _) = api.call(api.req(M::GET, "/v1/files/t.txt"));
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, got) = api.call(api.req(M::GET, "/v1/files/t.txt").bearer_auth("r0"));
    assert_eq!((st, got), (StatusCode::OK, body));
    let (st, _, _) = api.call(
        api.req(M::POST, "/v1/chunks/missing")
            .bearer_auth("r0")
            .json(&json!([])),
    );
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = api.call(api.req(M::GET, "/healthz"));
    assert_eq!(st, StatusCode::OK);
    assert!(
        hoard::server::check_exposure("0.0.0.0:8080".parse().unwrap(), &Auth::default(), false)
            .is_err()
    );
    assert!(
        hoard::server::check_exposure("127.0.0.1:8080".parse().unwrap(), &Auth::default(), false)
            .is_ok()
    );
}

#[test]
fn missing_query_answers_in_both_encodings_and_openapi_lists_every_route() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let v = data::mixed(1 << 20, 30);
    api.call(api.req(M::PUT, "/v1/files/x.bin").body(v.clone()));
    let m = manifest_of(&v);
    let stored = m.chunks[0].id;
    let absent: Vec<Hash> = (0..100_000u32)
        .map(|i| Hash::of(&i.to_le_bytes()))
        .collect();
    let mut ids = vec![stored];
    ids.extend(&absent);
    let (st, _, b) = api.call(
        api.req(M::POST, "/v1/chunks/missing")
            .header("content-type", wire::BINARY)
            .body(wire::pack_ids(&ids)),
    );
    assert_eq!(st, StatusCode::OK);
    assert_eq!(wire::unpack_ids(&b, usize::MAX).unwrap(), absent);
    let (st, _, b) = api.call(api.req(M::POST, "/v1/chunks/missing").json(&ids[..3]));
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Vec<Hash>>(&b).unwrap(),
        &absent[..2]
    );

    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let (st, served) = api.json(M::GET, "/v1/openapi.json");
    assert_eq!((st, &served), (StatusCode::OK, &doc));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/chunks/missing",
        "/v1/chunks",
        "/v1/chunks/{id}",
        "/v1/chunks/fetch",
        "/v1/uploads",
        "/v1/uploads/{sid}",
        "/v1/uploads/{sid}/complete",
        "/v1/files",
        "/v1/files/{name}",
        "/v1/manifests/{name}",
        "/v1/stats",
        "/v1/config",
        "/v1/gc",
        "/v1/tus/",
        "/v1/tus/{id}",
        "/",
        "/v1/fsck",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
    let (_, _, metrics) = api.call(api.req(M::GET, "/metrics"));
    let text = String::from_utf8(metrics).unwrap();
    assert!(text.contains("hoard_http_requests_total{"), "{text}");
    assert!(text.contains("hoard_store_chunks"), "{text}");
}
