//! Several pushes, gc (with no grace period, the hardest case) and fsck at the same time on
//! one server, with a reader pulling all along: nothing lost, nothing wrong served, and every
//! fsck taken meanwhile finds every stored file whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hoard::client::PullOptions;
use hoard::gc::GcOptions;
use hoard::server::{Auth, Limits};

use super::data;
use super::lifecycle::small_chunks;
use super::net::{TestServer, pull, push, rt};
use super::support::{Scratch, b3, hoard, ok};

fn post(url: &str) -> serde_json::Value {
    rt().block_on(async {
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.json().await.unwrap()
    })
}

#[test]
fn pushes_gc_and_fsck_at_once_lose_nothing_and_serve_nothing_wrong() {
    let s = Scratch::new();
    let limits = Limits {
        gc_interval: Duration::ZERO,
        gc: GcOptions {
            grace: Duration::ZERO,
            min_dead: 0.0,
        },
        ..Limits::default()
    };
    let server = TestServer::start(&s.store(), Some(small_chunks()), limits, Auth::default());
    let base = data::mixed(6 << 20, 70);

    // Garbage for gc to collect and packs for it to compact while the others run: an old
    // file sharing most chunks with what comes next, then removed.
    let old = data::edit(&base, 10, 71);
    let c = server.client();
    push(&c, &s.file("old.bin", &old), "old.bin").unwrap();
    let steady = data::edit(&base, 10, 72);
    push(&c, &s.file("steady.bin", &steady), "steady.bin").unwrap();
    rt().block_on(async {
        reqwest::Client::new()
            .delete(format!("{}/v1/files/old.bin", server.url))
            .send()
            .await
            .unwrap()
    });

    let files: Vec<(String, Vec<u8>)> = (0..4u64)
        .flat_map(|i| {
            let v1 = data::edit(&base, 8, 80 + i);
            let v2 = data::edit(&v1, 4, 90 + i);
            [(format!("c{i}.bin"), v1), (format!("c{i}.bin"), v2)]
        })
        .collect();
    let pushing = AtomicBool::new(true);
    let url = server.url.clone();
    let mut fscks = 0;
    let mut gcs = 0;
    std::thread::scope(|sc| {
        let pushers: Vec<_> = (0..4)
            .map(|i| {
                let (s, files, url) = (&s, &files, url.clone());
                sc.spawn(move || {
                    let c = hoard::client::Client::new(&url, None).unwrap();
                    for (name, v) in &files[i * 2..i * 2 + 2] {
                        let p = s.file(&format!("in{i}.bin"), v);
                        let r = push(&c, &p, name).unwrap();
                        assert_eq!(r.id.to_hex(), b3(v));
                    }
                })
            })
            .collect();
        let gc = sc.spawn(|| {
            let mut n = 0;
            while pushing.load(Ordering::Relaxed) && n < 40 {
                post(&format!("{url}/v1/gc"));
                n += 1;
            }
            n
        });
        let fsck = sc.spawn(|| {
            let mut n = 0;
            while pushing.load(Ordering::Relaxed) && n < 10 {
                let r = post(&format!("{url}/v1/fsck"));
                assert_eq!(r["clean"], true, "fsck during pushes and gc: {r}");
                n += 1;
            }
            n
        });
        let reader = sc.spawn(|| {
            let c = hoard::client::Client::new(&url, None).unwrap();
            let out = s.path("steady.out");
            let mut n = 0;
            while pushing.load(Ordering::Relaxed) && n < 20 {
                pull(&c, "steady.bin", &out, PullOptions::default()).unwrap();
                assert_eq!(std::fs::read(&out).unwrap(), steady, "served wrong bytes");
                n += 1;
            }
        });
        for p in pushers {
            p.join().unwrap();
        }
        pushing.store(false, Ordering::Relaxed);
        gcs = gc.join().unwrap();
        fscks = fsck.join().unwrap();
        reader.join().unwrap();
    });
    assert!(gcs > 0 && fscks > 0);

    // One more gc with nothing running, then everything comes back whole.
    let r = post(&format!("{}/v1/gc", server.url));
    assert!(r["chunks_live"].as_u64().unwrap() > 0);
    let c = server.client();
    for (i, (name, v)) in files.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let out = s.path(&format!("back{i}.bin"));
        pull(&c, name, &out, PullOptions::default()).unwrap();
        assert_eq!(&std::fs::read(&out).unwrap(), v, "{name}");
        let first = s.path(&format!("first{i}.bin"));
        pull(&c, &format!("{name}@1"), &first, PullOptions::default()).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), files[i - 1].1, "{name}@1");
    }
    server.stop();
    // The server's own pack stays open for appends while it runs, so gc could not compact
    // it; offline, gc leaves nothing unreferenced.
    ok(hoard(&s.store()).args(["gc", "--min-dead", "0"]));
    let r: serde_json::Value =
        serde_json::from_str(&ok(hoard(&s.store()).args(["fsck", "--json"]))).unwrap();
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["unreferenced_entries"], 0, "{r}");
}
