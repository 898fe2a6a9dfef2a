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
    // What hyper answers before any router runs: a URI over 64 KiB, a request line that
    // does not parse; and a percent-escape that is not UTF-8. (Headers past hyper's buffer,
    // 431, are not sent here: the server closes with the rest unread, and the reset that
    // follows can discard the answer before the client reads it. The unit test in
    // `parse_errors.rs` covers that head.)
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    let long = format!("/v1/files/{}", "a".repeat(70_000));
    let raw: Vec<(String, u16)> = vec![
        (format!("GET {long} HTTP/1.1\r\nHost: x\r\n\r\n"), 414),
        ("GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        (
            "GET /v1/files/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            400,
        ),
    ];
    for (request, want) in raw {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // The server may answer and close before it has read all of a huge request.
        let _ = c.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let what = &request[..40.min(request.len())];
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want} ")),
            "{what:?}: {answer}"
        );
        assert!(
            answer.contains("content-type: application/json"),
            "{what:?}: {answer}"
        );
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(body).expect(body);
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{what:?}: {v}"
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
        // A small body: the answer comes before the body is read, and a client still
        // sending a large one may see the connection closed instead of the answer.
        api.req(Method::PUT, &format!("/v1/files/{id_a}"))
            .body(b[..10].to_vec()),
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
        ("write a b c\n", "line 1", "field"),
        ("write a B\n", "line 1", "not a namespace name"),
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

/// Raw connections to a test server, for clients that misbehave below HTTP.
mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub fn connect(url: &str) -> TcpStream {
        let addr = url.strip_prefix("http://").unwrap();
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Seconds until the server closes `s` (reads return 0 or fail), reading what it sends.
    pub fn closed_after(s: &mut TcpStream) -> f64 {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return t.elapsed().as_secs_f64(),
                Ok(_) => {}
            }
            assert!(t.elapsed() < Duration::from_secs(10), "never closed");
        }
    }

    /// Sends `bytes` one by one, `gap` apart, until the server stops taking them or `limit`
    /// passes; returns how long it took.
    pub fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration, limit: Duration) -> f64 {
        let t = Instant::now();
        for b in bytes {
            if s.write_all(&[*b]).is_err() || t.elapsed() > limit {
                break;
            }
            std::thread::sleep(gap);
        }
        t.elapsed().as_secs_f64()
    }
}

fn quick_limits() -> hoard::server::Limits {
    let second = std::time::Duration::from_secs(1);
    hoard::server::Limits {
        header_timeout: second,
        idle_timeout: second,
        shutdown_timeout: second,
        gc_interval: std::time::Duration::ZERO,
        ..Default::default()
    }
}

#[test]
fn trickled_headers_and_idle_connections_are_closed() {
    use std::io::Write;
    let s = Scratch::new();
    let server = TestServer::start(
        &s.store(),
        None,
        quick_limits(),
        hoard::server::Auth::default(),
    );
    // Headers that never finish.
    let mut c = raw::connect(&server.url);
    raw::trickle(
        &mut c,
        b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(4),
    );
    let t = raw::closed_after(&mut c);
    assert!(t < 3.0, "a connection trickling its headers stayed open");
    // A kept-alive connection left idle after a request.
    let mut c = raw::connect(&server.url);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t = raw::closed_after(&mut c);
    assert!(t < 3.0, "an idle kept-alive connection stayed open {t} s");
    // A connection that sends nothing at all.
    let mut c = raw::connect(&server.url);
    assert!(raw::closed_after(&mut c) < 3.0);
}

#[test]
fn the_connection_cap_holds_and_healthz_answers_past_the_request_limit() {
    use std::io::Write;
    let s = Scratch::new();
    let mut limits = quick_limits();
    limits.header_timeout = std::time::Duration::from_secs(30);
    limits.idle_timeout = std::time::Duration::from_secs(30);
    limits.min_body_rate = 0;
    limits.concurrency = 2;
    limits.max_connections = 4;
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    let api = Api::new(&server);
    // Two requests whose bodies never finish hold both request slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = raw::connect(&server.url);
        c.write_all(b"POST /v1/chunks/missing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[").unwrap();
        slow.push(c);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    let (st, _, _) = api.call(
        api.req(Method::GET, "/healthz")
            .timeout(std::time::Duration::from_secs(3)),
    );
    assert_eq!(st.as_u16(), 200);
    assert!(t.elapsed().as_secs_f64() < 2.0);
    // Two more idle connections reach the cap of 4: a fifth client waits for one to close.
    let idle: Vec<_> = (0..2).map(|_| raw::connect(&server.url)).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let fifth = api.rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/healthz", server.url))
            .timeout(std::time::Duration::from_millis(800))
            .send()
            .await
    });
    assert!(
        fifth.is_err(),
        "a fifth connection was served past the cap of 4"
    );
    drop(idle);
    let (st, _, _) = api.call(
        api.req(Method::GET, "/healthz")
            .timeout(std::time::Duration::from_secs(3)),
    );
    assert_eq!(st.as_u16(), 200);
    drop(slow);
}

#[test]
fn a_body_slower_than_the_minimum_rate_is_cut_off_and_shutdown_has_a_deadline() {
    use std::io::Write;
    let s = Scratch::new();
    let mut limits = quick_limits();
    limits.min_body_rate = 1000;
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    let mut c = raw::connect(&server.url);
    c.write_all(b"PUT /v1/files/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    // 10 bytes a second, each byte well inside the 1 s idle timeout.
    let sent = raw::trickle(
        &mut c,
        &[7u8; 100],
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(8),
    );
    let t = raw::closed_after(&mut c) + sent;
    assert!(t < 6.0, "a trickling body was served for {t} s");

    // With no minimum rate, a trickling upload is still cut off by the shutdown deadline.
    let mut limits = quick_limits();
    limits.min_body_rate = 0;
    let store2 = s.path("store2");
    let server2 = TestServer::start(&store2, None, limits, hoard::server::Auth::default());
    let mut c = raw::connect(&server2.url);
    c.write_all(b"PUT /v1/files/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let feeder = std::thread::spawn(move || {
        raw::trickle(
            &mut c,
            &[7u8; 100],
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(8),
        );
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    server2.stop();
    assert!(
        t.elapsed().as_secs_f64() < 4.0,
        "shutdown waited {:?} for a trickling upload",
        t.elapsed()
    );
    feeder.join().unwrap();
    drop(server);
}

#[test]
fn tus_lengths_are_strict_and_a_completed_upload_serves_its_file() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let tus = |m: Method, path: &str| api.req(m, path).header("tus-resumable", "1.0.0");
    for bad in ["+5", "-1", "5 5", "0x10", ""] {
        let (st, _, body) =
            api.call_json(tus(Method::POST, "/v1/tus/").header("upload-length", bad));
        assert_eq!(st.as_u16(), 400, "Upload-Length {bad:?}: {body}");
    }
    let file = data::random(300_000, 94);
    let create = |len: usize| {
        let (st, h, _) =
            api.call(tus(Method::POST, "/v1/tus/").header("upload-length", len.to_string()));
        assert_eq!(st.as_u16(), 201);
        let loc = h["location"].to_str().unwrap().to_owned();
        loc.strip_prefix(&server.url).unwrap_or(&loc).to_owned()
    };
    // A body longer than Upload-Length, with no Content-Length: 413, and no file.
    let url = create(file.len());
    let mut longer = file.clone();
    longer.extend_from_slice(b"and more");
    let stream =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(longer))]);
    let (st, _, body) = api.call_json(
        tus(Method::PATCH, &url)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(reqwest::Body::wrap_stream(stream)),
    );
    assert_eq!(st.as_u16(), 413, "{body}");
    let (st, _, _) = api.call(tus(Method::GET, &url));
    assert_eq!(st.as_u16(), 409, "an unfinished upload has no file yet");

    // A completed upload's URL serves the file (Uppy shows it as the file's link).
    let url = create(file.len());
    let (st, _, _) = api.call(
        tus(Method::PATCH, &url)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(file.clone()),
    );
    assert_eq!(st.as_u16(), 204);
    let (st, _, got) = api.call(api.req(Method::GET, &url));
    assert_eq!(st.as_u16(), 200);
    assert!(got == file);
    let (st, h, _) = api.call(api.req(Method::GET, &url).header("range", "bytes=10-19"));
    assert_eq!(st.as_u16(), 206);
    assert_eq!(h["content-range"], "bytes 10-19/300000");
    let (st, h, _) = api.call(tus(Method::HEAD, &url));
    assert_eq!(st.as_u16(), 200);
    assert_eq!(h["upload-offset"], "300000");
    assert_eq!(h["content-length"], "300000");
    assert_eq!(
        h["etag"].to_str().unwrap(),
        format!("\"{}\"", super::support::b3(&file))
    );
}

#[test]
fn bodies_over_a_limit_or_in_an_unknown_encoding_are_refused_before_reading() {
    use std::io::{Read, Write};
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    // Headers only: the answer comes without the body ever being sent.
    let mut c = raw::connect(&server.url);
    c.write_all(
        b"POST /v1/chunks/missing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
    )
    .unwrap();
    let mut answer = [0u8; 512];
    let n = c.read(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let api = Api::new(&server);
    for (enc, path, method) in [
        ("gzip", "/v1/files/x.bin", Method::PUT),
        ("zstd", "/v1/files/x.bin", Method::PUT),
        ("br", "/v1/chunks", Method::POST),
    ] {
        let (st, _, body) = api.call_json(
            api.req(method, path)
                .header("content-encoding", enc)
                .body(vec![1u8; 100]),
        );
        assert_eq!(st.as_u16(), 415, "{enc} {path}: {body}");
    }
    let (st, _, _) = api.call(api.req(Method::GET, "/v1/files/x.bin"));
    assert_eq!(st.as_u16(), 404, "a refused body was stored");
}

#[test]
fn a_batch_keeps_the_frames_before_a_bad_one_and_names_it() {
    use hoard::codec::Codec;
    use hoard::wire;
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let chunks: Vec<Vec<u8>> = (0..5).map(|i| data::random(20_000, 100 + i)).collect();
    let ids: Vec<hoard::Hash> = chunks.iter().map(|c| hoard::Hash::of(c)).collect();
    let mut batch = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        // Frame 3 claims the id of frame 4: a hash mismatch.
        let id = if i == 3 { ids[4] } else { ids[i] };
        wire::put_frame(&mut batch, &id, Codec::Raw, c.len() as u32, c);
    }
    let (st, _, body) = api.call_json(
        api.req(Method::POST, "/v1/chunks")
            .header("content-type", wire::BINARY)
            .body(batch),
    );
    assert_eq!(st.as_u16(), 422, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("frame 3") && msg.contains("3 frame(s) before it were stored"),
        "{msg}"
    );
    for (i, id) in ids.iter().enumerate() {
        let (st, _, _) = api.call(api.req(Method::HEAD, &format!("/v1/chunks/{id}")));
        assert_eq!(st.as_u16(), if i < 3 { 200 } else { 404 }, "chunk {i}");
    }
    // A body cut inside a frame: the whole frames before the cut are kept too (400).
    let mut cut = Vec::new();
    let extra = data::random(20_000, 110);
    wire::put_frame(
        &mut cut,
        &hoard::Hash::of(&extra),
        Codec::Raw,
        extra.len() as u32,
        &extra,
    );
    wire::put_frame(
        &mut cut,
        &ids[4],
        Codec::Raw,
        chunks[4].len() as u32,
        &chunks[4],
    );
    cut.truncate(cut.len() - 100);
    let (st, _, body) = api.call_json(
        api.req(Method::POST, "/v1/chunks")
            .header("content-type", wire::BINARY)
            .body(cut),
    );
    assert_eq!(st.as_u16(), 400, "{body}");
    let (st, _, _) = api.call(api.req(
        Method::HEAD,
        &format!("/v1/chunks/{}", hoard::Hash::of(&extra)),
    ));
    assert_eq!(st.as_u16(), 200);
}

/// A JSON manifest of `data` cut with `params` (not necessarily the store's).
fn manifest_json(data: &[u8], params: hoard::ChunkerParams, name: &str) -> Value {
    let cutter = hoard::chunker::Cutter::new(params);
    let mut at = 0;
    let mut chunks = Vec::new();
    for len in cutter.lengths(data) {
        chunks.push(serde_json::json!({"id": hoard::Hash::of(&data[at..at + len]), "len": len}));
        at += len;
    }
    serde_json::json!({
        "name": name, "id": hoard::Hash::of(data), "size": data.len(),
        "chunker": {"min": params.min, "avg": params.avg, "max": params.max}, "chunks": chunks,
    })
}

#[test]
fn session_tags_and_states_are_truthful() {
    let s = Scratch::new();
    let limits = hoard::server::Limits {
        session_ttl: std::time::Duration::from_secs(2),
        gc_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    let api = Api::new(&server);
    let chunk = data::random(10_000, 120);
    let id = hoard::Hash::of(&chunk);
    // A tag that is not a session id, or names none: refused, and nothing stored.
    for (tag, want) in [("nope", 404), ("00000000000000000000000000000000", 404)] {
        let (st, _, body) = api.call_json(
            api.req(Method::PUT, &format!("/v1/chunks/{id}?session={tag}"))
                .body(chunk.clone()),
        );
        assert_eq!(st.as_u16(), want, "{tag}: {body}");
    }
    let (st, _, _) = api.call(api.req(Method::HEAD, &format!("/v1/chunks/{id}")));
    assert_eq!(st.as_u16(), 404);

    // A file the store holds already: a session for it, cut with other boundaries, needs
    // no chunk and completes at once.
    let file = data::random(400_000, 121);
    let (st, _, _) = api.call(
        api.req(Method::PUT, "/v1/files/held.bin")
            .body(file.clone()),
    );
    assert!(st.is_success());
    let other = hoard::ChunkerParams::new(1024, 4096, 16384).unwrap();
    let (st, _, open) = api.call_json(api.req(Method::POST, "/v1/uploads").json(&manifest_json(
        &file,
        other,
        "again.bin",
    )));
    assert_eq!(st.as_u16(), 201, "{open}");
    assert_eq!(open["missing"].as_array().unwrap().len(), 0, "{open}");
    let sid = open["id"].as_str().unwrap().to_owned();
    let (st, _, done) =
        api.call_json(api.req(Method::POST, &format!("/v1/uploads/{sid}/complete")));
    assert_eq!(st.as_u16(), 200, "{done}");
    assert_eq!(done["state"], "complete");

    // A session that expired says what is still missing, not "nothing".
    let fresh = data::random(300_000, 122);
    let (st, _, open) = api.call_json(api.req(Method::POST, "/v1/uploads").json(&manifest_json(
        &fresh,
        hoard::ChunkerParams::DEFAULT,
        "fresh.bin",
    )));
    assert_eq!(st.as_u16(), 201, "{open}");
    let want = open["missing_chunks"].as_u64().unwrap();
    assert!(want > 0);
    let sid = open["id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let (st, _, p) = api.call_json(api.req(Method::GET, &format!("/v1/uploads/{sid}")));
    assert_eq!(st.as_u16(), 200);
    assert_eq!(p["state"], "expired", "{p}");
    assert_eq!(p["missing_chunks"].as_u64().unwrap(), want, "{p}");
    // Chunks tagged with the ended session are refused (410), not silently taken.
    let (st, _, _) = api.call(
        api.req(Method::PUT, &format!("/v1/chunks/{id}?session={sid}"))
            .body(chunk.clone()),
    );
    assert_eq!(st.as_u16(), 410);
}

#[test]
fn a_manifest_over_the_servers_limits_is_refused_before_it_is_recorded() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), None);
    let api = Api::new(&server);
    let file = data::random(300_000, 123);
    // Chunks longer than --max-chunk (1M by default): 2M max chunks of a zero-filled file.
    let zeros = vec![0u8; 3 << 20];
    let big = hoard::ChunkerParams::new(1 << 20, 2 << 20, 4 << 20).unwrap();
    let (st, _, body) = api.call_json(
        api.req(Method::POST, "/v1/uploads")
            .json(&manifest_json(&zeros, big, "z")),
    );
    assert_eq!(st.as_u16(), 413, "{body}");
    // A chunker the store does not accept.
    let mut m = manifest_json(&file, hoard::ChunkerParams::DEFAULT, "f");
    m["chunker"] = serde_json::json!({"min": 1, "avg": 2, "max": 3});
    let (st, _, body) = api.call_json(api.req(Method::POST, "/v1/uploads").json(&m));
    assert_eq!(st.as_u16(), 400, "{body}");
    let (_, _, list) = api.call_json(api.req(Method::GET, "/v1/files"));
    assert_eq!(list["files"].as_array().map_or(0, Vec::len), 0, "{list}");
}

#[test]
fn open_uploads_are_capped_with_a_clear_refusal() {
    let s = Scratch::new();
    let limits = hoard::server::Limits {
        max_uploads: 3,
        gc_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    let api = Api::new(&server);
    let create = || {
        api.call_json(
            api.req(Method::POST, "/v1/tus/")
                .header("tus-resumable", "1.0.0")
                .header("upload-length", "1000"),
        )
    };
    for _ in 0..3 {
        assert_eq!(create().0.as_u16(), 201);
    }
    let (st, h, body) = create();
    assert_eq!(st.as_u16(), 503, "{body}");
    assert_eq!(h["retry-after"], "60");
    assert!(
        body["message"].as_str().unwrap().contains("--max-uploads"),
        "{body}"
    );
    // Sessions have a cap of their own.
    let mut sids = Vec::new();
    for i in 0..4 {
        let file = data::random(50_000, 130 + i);
        let (st, h, body) = api.call_json(api.req(Method::POST, "/v1/uploads").json(
            &manifest_json(&file, hoard::ChunkerParams::DEFAULT, &format!("f{i}")),
        ));
        if i < 3 {
            assert_eq!(st.as_u16(), 201, "{body}");
            sids.push(body["id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(st.as_u16(), 503, "{body}");
            assert_eq!(h["retry-after"], "60");
        }
    }
    // An aborted session makes room again.
    let (st, _, _) = api.call(api.req(Method::DELETE, &format!("/v1/uploads/{}", sids[0])));
    assert!(st.is_success());
    let file = data::random(50_000, 140);
    let (st, _, body) = api.call_json(api.req(Method::POST, "/v1/uploads").json(&manifest_json(
        &file,
        hoard::ChunkerParams::DEFAULT,
        "again",
    )));
    assert_eq!(st.as_u16(), 201, "{body}");
}

#[test]
fn store_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let store = s.store();
    let f = s.file("f", &data::random(2 << 20, 150));
    let sh = |args: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec \"$0\" --store \"$1\" {args}"))
            .arg(env!("CARGO_BIN_EXE_hoard"))
            .arg(&store)
            .env_remove("HOARD_STORE")
            .status()
            .unwrap();
        assert!(st.success(), "{args}");
    };
    sh(&format!("import {}", f.display()));
    sh("fsck");
    sh("gc");
    let mut seen = 0;
    let mut stack = vec![store.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
        seen += 1;
    }
    assert!(seen > 5);
}

#[test]
fn slow_uploads_holding_every_slot_make_others_wait_at_most_ten_seconds() {
    use std::io::Write;
    let s = Scratch::new();
    let limits = hoard::server::Limits {
        min_body_rate: 0,
        idle_timeout: std::time::Duration::from_secs(60),
        gc_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    // Four whole-file uploads that send their headers and a few bytes, then nothing.
    let mut slow = Vec::new();
    for i in 0..4 {
        let mut c = raw::connect(&server.url);
        c.write_all(
            format!(
                "PUT /v1/files/slow{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc"
            )
            .as_bytes(),
        )
        .unwrap();
        slow.push(c);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let api = Api::new(&server);
    let t = std::time::Instant::now();
    let (st, h, body) = api.call_json(
        api.req(Method::PUT, "/v1/files/fifth")
            .body(vec![1u8; 1000]),
    );
    let waited = t.elapsed().as_secs_f64();
    assert_eq!(st.as_u16(), 503, "{body}");
    assert_eq!(h["retry-after"], "5");
    assert!((9.0..15.0).contains(&waited), "waited {waited} s");
    drop(slow);
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_but_never_stops_the_server() {
    use std::io::{BufRead, BufReader};
    let s = Scratch::new();
    let store = s.store();
    ok(hoard(&store).arg("init"));
    // A server allowed 64 descriptors, then 150 clients that connect and stay.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64; exec \"$0\" --store \"$1\" serve --listen 127.0.0.1:0 --gc-interval 0s")
        .arg(env!("CARGO_BIN_EXE_hoard"))
        .arg(&store)
        .env_remove("HOARD_STORE")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let hogs: Vec<_> = (0..150)
        .filter_map(|_| std::net::TcpStream::connect(url.strip_prefix("http://").unwrap()).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
    drop(hogs);
    // Once descriptors are free again it serves.
    let api = Api::from_url(&url);
    let mut served = false;
    for _ in 0..50 {
        let r = api.rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{url}/healthz"))
                .timeout(std::time::Duration::from_secs(2))
                .send()
                .await
        });
        if r.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        served,
        "the server did not serve again after descriptors were freed"
    );
}

#[test]
fn a_request_past_its_deadline_gets_408_with_the_json_body() {
    use std::io::{Read, Write};
    let s = Scratch::new();
    let limits = hoard::server::Limits {
        request_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(30),
        min_body_rate: 0,
        gc_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    let server = TestServer::start(&s.store(), None, limits, hoard::server::Auth::default());
    let mut c = raw::connect(&server.url);
    c.write_all(b"POST /v1/chunks/missing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[\"ab").unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("application/json") && text.contains("\"error\":\"timeout\""),
        "{text}"
    );
}

/// A session's progress query looks up only what was still missing (the refs are kept in
/// memory): it stays true whatever way the chunks arrive (tagged, untagged, a whole-file
/// `PUT` of the same bytes) and after a restart, when it reads the manifest once again.
#[test]
fn session_progress_follows_chunks_arriving_by_any_path_and_survives_a_restart() {
    let s = Scratch::new();
    let params = hoard::ChunkerParams::new(4096, 16384, 65536).unwrap();
    super::support::ok(
        super::support::hoard(&s.store())
            .args(["init", "--min", "4K", "--avg", "16K", "--max", "64K"]),
    );
    let server = super::net::ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    let file = data::mixed(1_500_000, 123);
    let m = manifest_json(&file, params, "p.bin");
    let (st, _, open) = api.call_json(api.req(Method::POST, "/v1/uploads").json(&m));
    assert_eq!(st.as_u16(), 201, "{open}");
    let sid = open["id"].as_str().unwrap().to_owned();
    let missing: Vec<String> = open["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let total = missing.len();
    assert!(total > 20, "{total}");
    let progress = |api: &Api| {
        let (st, _, p) = api.call_json(api.req(Method::GET, &format!("/v1/uploads/{sid}")));
        assert_eq!(st.as_u16(), 200, "{p}");
        p["missing_chunks"].as_u64().unwrap() as usize
    };
    assert_eq!(progress(&api), total);
    // The chunk bytes by id, from the manifest.
    let mut bytes_of = std::collections::HashMap::new();
    let mut at = 0;
    for c in m["chunks"].as_array().unwrap() {
        let len = c["len"].as_u64().unwrap() as usize;
        bytes_of.insert(
            c["id"].as_str().unwrap().to_owned(),
            file[at..at + len].to_vec(),
        );
        at += len;
    }
    let put = |api: &Api, id: &str, tag: &str| {
        let (st, _, b) = api.call_json(
            api.req(Method::PUT, &format!("/v1/chunks/{id}{tag}"))
                .body(bytes_of[id].clone()),
        );
        assert!(st.is_success(), "{b}");
    };
    // Five tagged with the session, five not: both count.
    for id in &missing[..5] {
        put(&api, id, &format!("?session={sid}"));
    }
    assert_eq!(progress(&api), total - 5);
    for id in &missing[5..10] {
        put(&api, id, "");
    }
    assert_eq!(progress(&api), total - 10);
    // After a restart the manifest is read again: the same answer.
    server.kill();
    let server = super::net::ChildServer::start(&s.store());
    let api = Api::from_url(&server.url);
    assert_eq!(progress(&api), total - 10);
    // The same bytes as a whole file by another path: nothing is missing any more.
    let (st, _, _) = api.call(
        api.req(Method::PUT, "/v1/files/other.bin")
            .body(file.clone()),
    );
    assert!(st.is_success());
    assert_eq!(progress(&api), 0);
    let (st, _, done) =
        api.call_json(api.req(Method::POST, &format!("/v1/uploads/{sid}/complete")));
    assert_eq!(st.as_u16(), 200, "{done}");
}
