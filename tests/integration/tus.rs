//! tus 1.0 at `/v1/tus/` on a real server (127.0.0.1, port 0): uploads in pieces with the cut
//! points of a local import, dedup of a second version, resume at the exact offset after a
//! cut-off body and after kill -9, checksums, every refusal the protocol defines, expiry, gc
//! during an upload, CORS, and the webhooks of every kind of upload.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hoard::chunker::Cutter;
use hoard::server::{Auth, HookConfig, Limits, Options};
use hoard::{ChunkerParams, StoreConfig};
use reqwest::Method as M;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::data;
use super::net::{Api, ChildServer, HookReceiver, TestServer};
use super::support::{Scratch, b3};

fn small_chunks() -> StoreConfig {
    StoreConfig::new(ChunkerParams::new(4096, 16384, 65536).unwrap(), 1).unwrap()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn tus(api: &Api, m: M, path: &str) -> reqwest::RequestBuilder {
    api.req(m, path).header("Tus-Resumable", "1.0.0")
}

/// Creates an upload of `len` bytes named `name`; returns its path.
fn create(api: &Api, len: usize, name: &str) -> String {
    let (s, h, b) = api.call(
        tus(api, M::POST, "/v1/tus/")
            .header("Upload-Length", len.to_string())
            .header(
                "Upload-Metadata",
                format!("filename {},filetype ", b64(name)),
            ),
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["upload-offset"], "0");
    assert!(h.contains_key("upload-expires"));
    h["location"].to_str().unwrap().to_owned()
}

/// A `PATCH` of `body` at `offset`, ready to send (add headers to it).
fn patch_req(api: &Api, loc: &str, offset: usize, body: &[u8]) -> reqwest::RequestBuilder {
    tus(api, M::PATCH, loc)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body.to_vec())
}

fn patch(api: &Api, loc: &str, offset: usize, body: &[u8]) -> (StatusCode, HeaderMap, Value) {
    api.call_json(patch_req(api, loc, offset, body))
}

/// A `PATCH` with `Upload-Checksum: checksum`.
fn patch_checked(
    api: &Api,
    loc: &str,
    offset: usize,
    body: &[u8],
    checksum: &str,
) -> (StatusCode, HeaderMap, Value) {
    api.call_json(patch_req(api, loc, offset, body).header("Upload-Checksum", checksum))
}

fn offset(api: &Api, loc: &str) -> u64 {
    let (s, h, _) = api.call(tus(api, M::HEAD, loc));
    assert_eq!(s, StatusCode::OK);
    h["upload-offset"].to_str().unwrap().parse().unwrap()
}

fn download(api: &Api, spec: &str) -> Vec<u8> {
    let (s, _, b) = api.call(api.req(M::GET, &format!("/v1/files/{spec}")));
    assert_eq!(s, StatusCode::OK);
    b
}

fn stored_bytes(api: &Api) -> u64 {
    api.stats()["stored_bytes"].as_u64().unwrap()
}

#[test]
fn pieces_make_the_file_with_import_cut_points_and_a_second_version_stores_little() {
    let s = Scratch::new();
    let config = small_chunks();
    let server = TestServer::start(&s.store(), Some(config), Limits::default(), Auth::default());
    let api = Api::new(&server);
    let v1 = data::mixed(6 << 20, 3);

    // Options: what a client discovers first.
    let (st, h, _) = api.call(api.req(M::OPTIONS, "/v1/tus/"));
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(h["tus-version"], "1.0.0");
    assert!(
        h["tus-extension"]
            .to_str()
            .unwrap()
            .contains("creation-with-upload")
    );
    assert_eq!(h["tus-max-size"], (1u64 << 40).to_string().as_str());
    assert_eq!(h["tus-checksum-algorithm"], "sha1,blake3");

    let loc = create(&api, v1.len(), "disk.img");
    // Uneven pieces, none on a cut point.
    let cuts = [0, 1, 70_001, 3_333_333, v1.len()];
    for w in cuts.windows(2) {
        let (st, h, _) = patch(&api, &loc, w[0], &v1[w[0]..w[1]]);
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(h["upload-offset"], w[1].to_string().as_str());
        assert_eq!(h["tus-resumable"], "1.0.0");
    }
    assert_eq!(offset(&api, &loc), v1.len() as u64);
    assert_eq!(download(&api, "disk.img"), v1);
    let listed = api.json(M::GET, "/v1/files").1;
    assert_eq!(listed["files"][0]["id"], b3(&v1));

    // The manifest has exactly the chunks an import cuts.
    let (_, _, m) = api.call(api.req(M::GET, "/v1/manifests/disk.img"));
    let m: Value = serde_json::from_slice(&m).unwrap();
    let lens: Vec<u64> = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["len"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = Cutter::new(config.chunker)
        .lengths(&v1)
        .into_iter()
        .map(|l| l as u64)
        .collect();
    assert_eq!(lens, expected);

    // A second version, sent whole with creation-with-upload: only its edits are stored.
    let v2 = data::edit(&v1, 20, 4);
    let before = stored_bytes(&api);
    let (st, h, b) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Upload-Length", v2.len().to_string())
            .header("Upload-Metadata", format!("filename {}", b64("disk.img")))
            .header("Content-Type", "application/offset+octet-stream")
            .body(v2.clone()),
    );
    assert_eq!(st, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["upload-offset"], v2.len().to_string().as_str());
    assert_eq!(h["hoard-file-id"], b3(&v2).as_str());
    let added = stored_bytes(&api) - before;
    assert!(
        added * 10 < v2.len() as u64,
        "second version stored {added} bytes of {}",
        v2.len()
    );
    assert_eq!(download(&api, "disk.img@2"), v2);
    assert_eq!(download(&api, "disk.img@1"), v1);
}

#[test]
fn refusals_follow_the_protocol_and_change_nothing() {
    let s = Scratch::new();
    let limits = Limits {
        tus_max_size: 1 << 20,
        ..Limits::default()
    };
    let server = TestServer::start(&s.store(), None, limits, Auth::default());
    let api = Api::new(&server);
    let data = data::mixed(300_000, 5);
    let loc = create(&api, data.len(), "a.bin");
    patch(&api, &loc, 0, &data[..1000]);

    // No Tus-Resumable: 412 with the version spoken.
    let (st, h, _) = api.call(api.req(M::HEAD, &loc));
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    assert_eq!(h["tus-version"], "1.0.0");
    // Wrong offset: 409; wrong media type: 415.
    let (st, _, v) = patch(&api, &loc, 5, &data[5..10]);
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(v["error"], "offset_mismatch");
    let (st, _, _) = api.call(
        tus(&api, M::PATCH, &loc)
            .header("Upload-Offset", "1000")
            .header("Content-Type", "application/octet-stream")
            .body(data[1000..2000].to_vec()),
    );
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Past the length (declared): 413 before anything is read.
    let (st, _, _) = patch(&api, &loc, 1000, &vec![7u8; data.len()]);
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    // Checksum that does not match: 460, nothing kept; unknown algorithm: 400.
    let wrong = format!("sha1 {}", b64("not the digest of it"));
    let (st, _, v) = patch_checked(&api, &loc, 1000, &data[1000..50_000], &wrong);
    assert_eq!(st.as_u16(), 460, "{v}");
    assert_eq!(v["error"], "checksum_mismatch");
    let (st, _, _) = patch_checked(&api, &loc, 1000, &data[1000..2000], "md5 AAAA");
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(offset(&api, &loc), 1000);
    // The right checksums are taken (sha1, then blake3).
    let piece = &data[1000..50_000];
    let sha1 = {
        use sha1::Digest as _;
        b64(sha1::Sha1::digest(piece))
    };
    let (st, _, _) = patch_checked(&api, &loc, 1000, piece, &format!("sha1 {sha1}"));
    assert_eq!(st, StatusCode::NO_CONTENT);
    let rest = &data[50_000..];
    let blake3 = format!("blake3 {}", b64(blake3::hash(rest).as_bytes()));
    let (st, _, _) = patch_checked(&api, &loc, 50_000, rest, &blake3);
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(download(&api, "a.bin"), data);

    // Creation past Tus-Max-Size: 413; bad metadata and names: 400; no length: 400.
    for (len, meta, want) in [
        ((2u64 << 20).to_string(), String::new(), 413),
        ("10".into(), "filename !!!".into(), 400),
        (
            "10".into(),
            format!("filename {}", b64("../etc/passwd")),
            400,
        ),
        ("ten".into(), String::new(), 400),
    ] {
        let (st, _, _) = api.call(
            tus(&api, M::POST, "/v1/tus/")
                .header("Upload-Length", len.clone())
                .header("Upload-Metadata", meta.clone()),
        );
        assert_eq!(st.as_u16(), want, "length {len}, metadata {meta:?}");
    }
    // Concatenation is not offered; creation-with-upload that fails its checksum still says
    // where the upload is, so the client can resume it.
    let (st, _, _) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Upload-Length", "10")
            .header("Upload-Concat", "partial"),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, h, _) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Upload-Length", "10")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", &wrong)
            .body(b"0123456789".to_vec()),
    );
    assert_eq!(st.as_u16(), 460);
    let created = h["location"].to_str().unwrap().to_owned();
    assert_eq!(offset(&api, &created), 0);
    let (st, _, _) = patch(&api, &created, 0, b"0123456789");
    assert_eq!(st, StatusCode::NO_CONTENT);

    // Terminated: 204, then gone for every method.
    let loc2 = create(&api, 10, "b.bin");
    let (st, _, _) = api.call(tus(&api, M::DELETE, &loc2));
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = api.call(tus(&api, M::HEAD, &loc2));
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = patch(&api, &loc2, 0, b"0123456789");
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = api.call(tus(&api, M::HEAD, "/v1/tus/not-an-upload"));
    assert_eq!(st, StatusCode::NOT_FOUND);
    // An empty file completes at creation.
    let (st, h, _) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Upload-Length", "0")
            .header("Upload-Metadata", format!("filename {}", b64("empty"))),
    );
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(h["hoard-file-id"], b3(b"").as_str());
    assert_eq!(download(&api, "empty"), b"");
    // The completed upload answers HEAD with its full offset; one more byte is too many.
    let (st, _, _) = patch(&api, &loc, data.len(), b"x");
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(offset(&api, &loc), data.len() as u64);
}

/// Sends a PATCH whose body stops after `sent` of `declared` bytes, then drops the
/// connection (or keeps it open, for the kill -9 test).
fn partial_patch(url: &str, loc: &str, offset: usize, declared: usize, part: &[u8]) -> TcpStream {
    let addr = url.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    )
    .unwrap();
    c.write_all(part).unwrap();
    c.flush().unwrap();
    c
}

#[test]
fn a_cut_off_patch_keeps_every_byte_and_resumes_exactly_after_kill_9() {
    let s = Scratch::new();
    let data = data::mixed(40 << 20, 8);
    let server = ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    let loc = create(&api, data.len(), "big.img");

    // A body that stalls mid-way (the connection stays open, as when a laptop sleeps): a HEAD
    // from the returning client stops the stalled request at once, long before the idle
    // timeout, and every byte that arrived is kept, even those after the last cut point.
    let sent = 5_000_123;
    let stalled = partial_patch(&server.url, &loc, 0, data.len(), &data[..sent]);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert_eq!(offset(&api, &loc), sent as u64);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    drop(stalled);

    // kill -9, restart: the same offset.
    server.kill();
    let server = ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    assert_eq!(offset(&api, &loc), sent as u64);

    // kill -9 while a PATCH streams: the offset after the restart is where the last
    // checkpoint was (never past what arrived), and the rest completes the file.
    let more = 30 << 20;
    let c = partial_patch(
        &server.url,
        &loc,
        sent,
        data.len() - sent,
        &data[sent..sent + more],
    );
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    drop(c);
    let server = ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    let at = offset(&api, &loc) as usize;
    assert!(
        (sent..=sent + more).contains(&at),
        "offset {at} after the kill"
    );
    let (st, h, v) = patch(&api, &loc, at, &data[at..]);
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    // The file id was hashed back out of the store (this process never saw the start).
    assert_eq!(h["hoard-file-id"], b3(&data).as_str());
    assert_eq!(download(&api, "big.img"), data);
    let (st, v) = api.json(M::POST, "/v1/fsck");
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["clean"], true, "{v}");
}

#[test]
fn gc_keeps_an_unfinished_uploads_chunks_and_expiry_forgets_it() {
    let s = Scratch::new();
    let hooks = HookReceiver::start();
    let limits = Limits {
        session_ttl: Duration::from_secs(2),
        gc_interval: Duration::ZERO,
        gc: hoard::gc::GcOptions {
            grace: Duration::ZERO,
            min_dead: 0.0,
        },
        ..Limits::default()
    };
    let options = Options {
        hooks: HookConfig {
            urls: vec![hooks.url.parse().unwrap()],
            ..HookConfig::default()
        },
        ..Options::default()
    };
    let server = TestServer::start_with(
        &s.store(),
        Some(small_chunks()),
        limits,
        Auth::default(),
        options,
    );
    let api = Api::new(&server);
    let data = data::mixed(3 << 20, 9);
    let loc = create(&api, data.len(), "keep.bin");
    let half = data.len() / 2;
    patch(&api, &loc, 0, &data[..half]);
    let (_, v) = api.json(M::POST, "/v1/gc");
    assert_eq!(v["chunks_freed"], 0, "{v}");
    let (st, _, v) = patch(&api, &loc, half, &data[half..]);
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(download(&api, "keep.bin"), data);

    // An upload left idle expires: gone, an expiry event, and gc takes its chunks.
    let other = data::mixed(1 << 20, 10);
    let loc = create(&api, other.len(), "left.bin");
    patch(&api, &loc, 0, &other[..600_000]);
    let ev = hooks.wait_for(|e| e["event"] == "upload.expiry", Duration::from_secs(20));
    assert_eq!(ev["source"], "tus");
    assert_eq!(ev["name"], "left.bin");
    assert_eq!(ev["bytes_sent"], 600_000);
    let (st, _, _) = api.call(tus(&api, M::HEAD, &loc));
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, v) = api.json(M::POST, "/v1/gc");
    assert!(v["chunks_freed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(download(&api, "keep.bin"), data);
}

#[test]
fn hooks_report_every_kind_of_upload_and_a_dead_hook_blocks_nothing() {
    let s = Scratch::new();
    let hooks = HookReceiver::start();
    // A hook that accepts connections and never answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = Options {
        hooks: HookConfig {
            urls: vec![
                format!("http://{}/never", dead.local_addr().unwrap())
                    .parse()
                    .unwrap(),
                hooks.url.parse().unwrap(),
            ],
            timeout: Duration::from_secs(2),
            retries: 1,
        },
        ..Options::default()
    };
    let server = TestServer::start_with(
        &s.store(),
        Some(small_chunks()),
        Limits::default(),
        Auth::default(),
        options,
    );
    let api = Api::new(&server);
    let data = data::mixed(2 << 20, 11);

    // tus: start, complete; a terminated one: failure.
    let started = Instant::now();
    let loc = create(&api, data.len(), "t.bin");
    patch(&api, &loc, 0, &data);
    let loc2 = create(&api, 5, "gone.bin");
    api.call(tus(&api, M::DELETE, &loc2));
    // A push (an upload session): start, complete.
    let path = s.file("p.bin", &data::edit(&data, 3, 12));
    super::net::push(&server.client(), &path, "p.bin").unwrap();
    // curl -T: start, complete.
    api.call(api.req(M::PUT, "/v1/files/c.bin").body(data.clone()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "uploads waited for the dead hook: {:?}",
        started.elapsed()
    );

    // tus 2 + 2, session 2, put 2.
    let all = hooks.wait_until(|evs| evs.len() >= 8, Duration::from_secs(20));
    let find = |source: &str, event: &str| {
        all.iter()
            .find(|e| e["source"] == source && e["event"] == event)
            .unwrap_or_else(|| panic!("no {event} from {source} in {all:#?}"))
            .clone()
    };
    let done = find("tus", "upload.complete");
    assert_eq!(done["name"], "t.bin");
    assert_eq!(done["file_id"], b3(&data).as_str());
    assert_eq!(done["size"], data.len());
    assert_eq!(done["bytes_sent"], data.len());
    assert_eq!(done["new_bytes"], data.len());
    assert_eq!(done["state"], "complete");
    assert_eq!(find("tus", "upload.start")["state"], "uploading");
    assert_eq!(find("tus", "upload.failure")["state"], "terminated");
    let pushed = find("session", "upload.complete");
    assert_eq!(pushed["name"], "p.bin");
    let sent = pushed["bytes_sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < data.len() as u64 / 2, "push sent {sent}");
    assert_eq!(find("session", "upload.start")["state"], "waiting");
    let put = find("put", "upload.complete");
    assert_eq!(put["file_id"], b3(&data).as_str());
    assert_eq!(put["new_bytes"], 0);
    assert_eq!(put["bytes_sent"], data.len());
}

#[test]
fn cors_lets_listed_origins_in_on_every_answer_and_no_one_else() {
    let s = Scratch::new();
    let auth = Auth::new(&["w".into()], false).unwrap();
    let options = Options {
        cors_origins: vec!["https://app.example.test".into()],
        ..Options::default()
    };
    let server = TestServer::start_with(&s.store(), None, Limits::default(), auth, options);
    let api = Api::new(&server);
    let origin = "https://app.example.test";

    // A preflight for a tus PATCH, as browsers send it.
    let (st, h, _) = api.call(
        api.req(M::OPTIONS, "/v1/tus/0123")
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PATCH")
            .header(
                "Access-Control-Request-Headers",
                "authorization,tus-resumable,upload-offset,content-type",
            ),
    );
    assert!(st.is_success(), "{st}");
    assert_eq!(h["access-control-allow-origin"], origin);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("upload-offset") && allowed.contains("tus-resumable"));

    // An error (no token) still carries the headers, and tus's are exposed.
    let (st, h, _) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Origin", origin)
            .header("Upload-Length", "10"),
    );
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(h["access-control-allow-origin"], origin);
    assert_eq!(h["tus-resumable"], "1.0.0");
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    for name in [
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    // A created upload with the token: Location readable from the other origin.
    let (st, h, _) = api.call(
        tus(&api, M::POST, "/v1/tus/")
            .header("Origin", origin)
            .header("Authorization", "Bearer w")
            .header("Upload-Length", "10"),
    );
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(h["access-control-allow-origin"], origin);
    assert!(h.contains_key("location"));

    // Any other origin gets no CORS headers at all.
    let (_, h, _) = api.call(
        api.req(M::OPTIONS, "/v1/tus/")
            .header("Origin", "https://evil.example.test")
            .header("Access-Control-Request-Method", "POST"),
    );
    assert!(!h.contains_key("access-control-allow-origin"));
    // The page itself needs no token; the API behind it does.
    let (st, h, b) = api.call(api.req(M::GET, "/"));
    assert_eq!(st, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&b).contains("<html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let (st, h, _) = api.call(api.req(M::GET, "/app.js"));
    assert_eq!(st, StatusCode::OK);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let (st, _, _) = api.call(api.req(M::GET, "/v1/files"));
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[test]
fn many_tiny_patches_write_little_and_resume_exactly_after_kill_9() {
    // Before tails were kept in pieces, each of these one-byte PATCHes rewrote the whole tail
    // (the ~220 KB after the last cut point) and the record: 1 500 of them grew `index/` by
    // about 330 MB. Now each appends its byte to the tail's file and writes a small record.
    let s = Scratch::new();
    let data = data::mixed(600_000, 21);
    // A chunk is cut once `max` bytes follow its start: start the one-byte PATCHes 700 bytes
    // before that happens to the second chunk, so cuts fall among them.
    let params = StoreConfig::default().chunker;
    let second = Cutter::new(params).next_len(&data);
    let (first, tiny) = (second + params.max as usize - 700, 1_500);
    let server = ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    let loc = create(&api, data.len(), "tiny.bin");
    let (st, _, v) = patch(&api, &loc, 0, &data[..first]);
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    // What the upload's state takes: the index and the tails (the packs grow by the chunks).
    let state = || {
        let tails = s.store().join("tails");
        dir_bytes(&s.store().join("index")) + if tails.exists() { dir_bytes(&tails) } else { 0 }
    };
    let before = state();
    for at in first..first + tiny {
        let (st, h, v) = patch(&api, &loc, at, &data[at..=at]);
        assert_eq!(st, StatusCode::NO_CONTENT, "byte {at}: {v}");
        assert_eq!(h["upload-offset"], (at + 1).to_string().as_str());
    }
    let grown = state() - before;
    eprintln!("index/ and tails/ grew by {grown} bytes for {tiny} one-byte PATCHes");
    assert!(grown < 4 << 20, "index/ and tails/ grew by {grown} bytes");

    // Every one of those bytes is durable: kill -9, restart, the same offset.
    server.kill();
    let server = ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    let at = first + tiny;
    assert_eq!(offset(&api, &loc), at as u64);
    // One byte at a time a while longer after the restart, then the rest.
    for at in at..at + 700 {
        let (st, _, v) = patch(&api, &loc, at, &data[at..=at]);
        assert_eq!(st, StatusCode::NO_CONTENT, "byte {at}: {v}");
    }
    let at = at + 700;
    let (st, h, v) = patch(&api, &loc, at, &data[at..]);
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(h["hoard-file-id"], b3(&data).as_str());
    assert_eq!(download(&api, "tiny.bin"), data);
    let (st, v) = api.json(M::POST, "/v1/fsck");
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["clean"], true, "{v}");
}
