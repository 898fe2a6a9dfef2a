//! Hostile input (its own test binary, for its allocation cap): proptest-driven fuzzing (a stand-in for cargo-fuzz that runs in CI) of every
//! parser that takes bytes from outside: the binary manifest (whole and streamed), batched
//! chunk frames, packed id lists, id text, `Range` headers, stored manifest and page records,
//! and the metadata journal. Inputs are mutations of the seed corpus in `fixtures/fuzz/` and
//! plain random bytes. None may panic, hang or allocate past [`MEMORY_CAP`]; whatever
//! decodes must re-encode to the same bytes.
//!
//! Cases per target: 2 000, or 100 000 with `HOARD_LONG_TESTS=1`.

use std::alloc::System;
use std::path::PathBuf;

use cap::Cap;
use hoard::ChunkerParams;
use hoard::codec::Codec;
use hoard::hash::Hash;
use hoard::manifest::{ChunkRef, Manifest, ManifestBuilder, Page};
use hoard::server::{RangeChoice, choose_range};
use hoard::wire::{self, FlatManifest, ManifestReader};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Memory this whole test binary may hold at once = 512 MiB: a parser that believed a hostile
/// length and asked for more fails the allocation, which aborts the run.
const MEMORY_CAP: usize = 512 << 20;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

fn cases() -> u32 {
    if std::env::var_os("HOARD_LONG_TESTS").is_some() {
        100_000
    } else {
        2_000
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(target)
}

/// The seeds of one target (at least one, or the corpus is missing).
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// One edit of a seed.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Overwrite 4 bytes with a little-endian u32 (lengths and counts live in such fields).
    Word(usize, u32),
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i, x) if !v.is_empty() => v[i % n] ^= x | 1,
            Edit::Insert(i, bytes) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, k) if !v.is_empty() => {
                let at = i % n;
                let end = (at + k).min(v.len());
                v.drain(at..end);
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Edit::Word(i, w) if v.len() >= 4 => {
                let at = i % (v.len() - 3);
                v[at..at + 4].copy_from_slice(&w.to_le_bytes());
            }
            _ => {}
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, k)| Edit::Delete(i, k)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(u32::MAX),
                Just(1 << 24),
                any::<u32>()
            ]
        )
            .prop_map(|(i, w)| Edit::Word(i, w)),
    ]
}

/// Mutated seeds and random bytes, for `target`.
fn inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    let n = seeds.len();
    prop_oneof![
        4 => (0..n, prop::collection::vec(edit(), 0..6))
            .prop_map(move |(i, edits)| apply(seeds[i].clone(), &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ]
}

/// Runs `check` on `cases()` inputs of `target`; returns how many ran.
fn fuzz(target: &str, check: impl Fn(&[u8])) -> u32 {
    ALLOC
        .set_limit(MEMORY_CAP)
        .expect("the cap is above what the binary holds");
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let mut ran = 0;
    runner
        .run(&inputs(target), |bytes| {
            check(&bytes);
            Ok(())
        })
        .unwrap();
    ran += cases();
    eprintln!("fuzz {target}: {ran} executions, no panic, memory under the cap");
    ran
}

#[test]
fn fuzz_binary_manifest() {
    fuzz("manifest", |bytes| {
        let whole = FlatManifest::from_binary(bytes);
        if let Ok(m) = &whole {
            assert_eq!(
                m.to_binary(ChunkerParams::DEFAULT),
                bytes,
                "re-encodes differently"
            );
        }
        // Streamed in pieces, the same bytes give the same answer.
        let mut r = ManifestReader::default();
        let mut refs = Vec::new();
        let mut streamed = Ok(());
        for piece in bytes.chunks(7) {
            match r.push(piece) {
                Ok(more) => refs.extend(more),
                Err(e) => {
                    streamed = Err(e);
                    break;
                }
            }
        }
        let streamed = streamed.and_then(|()| r.finish());
        match (&whole, streamed) {
            (Ok(m), Ok((_, id, size))) => {
                assert_eq!((m.id, m.size, &m.chunks), (id, size, &refs));
            }
            (Err(_), Err(_)) => {}
            (w, s) => panic!("whole {w:?} but streamed {s:?}"),
        }
    });
}

#[test]
fn fuzz_chunk_frames() {
    fuzz("frames", |bytes| {
        if let Ok(frames) = wire::parse_frames(bytes, 1 << 20) {
            let mut again = Vec::new();
            for f in &frames {
                wire::put_frame(&mut again, &f.id, f.codec, f.raw_len, f.payload);
            }
            assert_eq!(again, bytes);
        }
        if let Ok(Some((_, used))) = wire::parse_frame(bytes, 1 << 20) {
            assert!(used <= bytes.len());
        }
    });
}

#[test]
fn fuzz_ids() {
    fuzz("ids", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        for candidate in [text.as_ref(), text.trim()] {
            if let Ok(id) = candidate.parse::<Hash>() {
                assert_eq!(id.to_hex(), candidate.to_ascii_lowercase());
            }
        }
        match wire::unpack_ids(bytes, 8) {
            Ok(ids) => assert_eq!(wire::pack_ids(&ids), bytes),
            Err(_) => assert!(!bytes.len().is_multiple_of(32) || bytes.len() / 32 > 8),
        }
    });
}

#[test]
fn fuzz_ranges() {
    fuzz("ranges", |bytes| {
        let header = String::from_utf8_lossy(bytes);
        for len in [0u64, 1, 100, 1 << 40] {
            match choose_range(Some(&header), len) {
                RangeChoice::Part(a, b) => assert!(a < b && b <= len, "{header:?} {len}: {a}..{b}"),
                RangeChoice::Whole | RangeChoice::NotSatisfiable => {}
            }
        }
    });
}

#[test]
fn fuzz_stored_records() {
    fuzz("records", |bytes| {
        if let Ok(m) = Manifest::decode(bytes) {
            assert_eq!(m.encode(), bytes, "manifest re-encodes differently");
        }
        if let Ok(p) = Page::decode(bytes) {
            assert_eq!(p.encode(), bytes, "page re-encodes differently");
        }
    });
}

#[test]
fn fuzz_journal_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    fuzz("journal", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let mut seen = 0u64;
        let r = hoard::store::journal::replay(&path, |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(r.records, seen);
    });
}

/// The seeds decode as they are (so the corpus keeps up with the formats). Run with
/// `--ignored write_seed_corpus` to write it anew after a format change.
/// Hostile delta payloads (a store's codec 2: base id, then a zstd frame made against the
/// base): mutations of a real one and random bytes, decoded against the right base, an empty
/// one and a 16 MiB one, into outputs of several lengths. No panic, memory under the cap
/// (the output slice caps what a frame can make; the window is capped by base + output).
#[test]
fn fuzz_delta_payloads() {
    use hoard::codec;
    ALLOC
        .set_limit(MEMORY_CAP)
        .expect("the cap is above what the binary holds");
    let base: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let mut data = base.clone();
    data[100] ^= 1;
    data.splice(3000..3000, *b"inserted");
    let id = Hash::of(&data);
    let frame = codec::compress_against(&data, &base, 1, data.len()).expect("a delta");
    let seed = codec::delta_payload(&Hash::of(&base), &frame);
    // The real one decodes.
    let mut out = vec![0u8; data.len()];
    let (_, f) = codec::split_delta(&id, &seed).unwrap();
    codec::decode_against_into(&id, f, &base, &mut out).unwrap();
    assert_eq!(out, data);
    let huge = vec![0x5au8; 16 << 20];
    let strategy = prop_oneof![
        4 => prop::collection::vec(edit(), 0..6).prop_map(move |e| apply(seed.clone(), &e)),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ];
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |bytes| {
            let Ok((_, frame)) = codec::split_delta(&id, &bytes) else {
                assert!(bytes.len() < codec::DELTA_BASE_LEN);
                return Ok(());
            };
            for b in [&base[..], &[][..], &huge[..]] {
                for len in [1usize, 4096, data.len(), 1 << 20] {
                    let mut out = vec![0u8; len];
                    let _ = codec::decode_against_into(&id, frame, b, &mut out);
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz delta: {} executions, no panic, memory under the cap",
        cases()
    );
}

#[test]
fn seed_corpus_is_valid() {
    for m in seeds("manifest") {
        FlatManifest::from_binary(&m).unwrap();
    }
    for f in seeds("frames") {
        assert!(!wire::parse_frames(&f, 1 << 20).unwrap().is_empty());
    }
    for r in seeds("records") {
        assert!(Manifest::decode(&r).is_ok() || Page::decode(&r).is_ok());
    }
    for j in seeds("journal") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        std::fs::write(&p, j).unwrap();
        let r = hoard::store::journal::replay(&p, |_, _| Ok(())).unwrap();
        assert!(
            r.records > 0 && r.damaged == 0 && r.stopped.is_none(),
            "{r:?}"
        );
    }
}

#[test]
#[ignore = "writes fixtures/fuzz; run by hand after a format change"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let refs: Vec<ChunkRef> = (0u32..5)
        .map(|i| ChunkRef {
            id: Hash::of(&i.to_le_bytes()),
            len: 20_000 + i,
        })
        .collect();
    let size = refs.iter().map(|r| u64::from(r.len)).sum();
    let flat = FlatManifest {
        id: Hash::of(b"file"),
        size,
        chunker: Some(ChunkerParams::DEFAULT),
        chunks: refs.clone(),
    };
    write(
        "manifest",
        "five-refs.bin",
        &flat.to_binary(ChunkerParams::DEFAULT),
    );
    let empty = FlatManifest {
        id: Hash::of(b""),
        size: 0,
        chunker: Some(ChunkerParams::DEFAULT),
        chunks: vec![],
    };
    write(
        "manifest",
        "empty.bin",
        &empty.to_binary(ChunkerParams::DEFAULT),
    );

    let mut frames = Vec::new();
    wire::put_frame(&mut frames, &Hash::of(b"abc"), Codec::Raw, 3, b"abc");
    let z = zstd::bulk::compress(&[7u8; 5000], 1).unwrap();
    wire::put_frame(&mut frames, &Hash::of(&[7u8; 5000]), Codec::Zstd, 5000, &z);
    write("frames", "raw-and-zstd.bin", &frames);

    write("ids", "hex.txt", Hash::of(b"x").to_hex().as_bytes());
    write(
        "ids",
        "packed.bin",
        &wire::pack_ids(&[Hash::of(b"a"), Hash::of(b"b")]),
    );
    for (i, r) in [
        "bytes=0-99",
        "bytes=-500",
        "bytes=100-",
        "bytes=0-0,5-9",
        "items=1-2",
    ]
    .iter()
    .enumerate()
    {
        write("ranges", &format!("{i}.txt"), r.as_bytes());
    }

    let mut b = ManifestBuilder::default();
    let mut pages = Vec::new();
    for r in &refs {
        pages.extend(b.push(*r));
    }
    let (m, last) = b.finish(Hash::of(b"file"), ChunkerParams::DEFAULT);
    let last = last.unwrap();
    write("records", "manifest.bin", &m.encode());
    write("records", "page.bin", &last.bytes);

    let dir = tempfile::tempdir().unwrap();
    let jp = dir.path().join("journal.log");
    let (j, _) = hoard::store::journal::Journal::open(&jp).unwrap();
    {
        let mut a = j.lock();
        a.append(hoard::store::journal::Kind::Page, &last.bytes)
            .unwrap();
        a.append(hoard::store::journal::Kind::Manifest, &m.encode())
            .unwrap();
        a.append(hoard::store::journal::Kind::NameRemoved, b"vm/base.qcow2")
            .unwrap();
        a.sync().unwrap();
    }
    write("journal", "three-records.log", &std::fs::read(&jp).unwrap());
}
