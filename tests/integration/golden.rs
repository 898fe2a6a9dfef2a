//! Golden cut points: the committed fixture must cut exactly where its committed lists say.
//! If this fails, chunk boundaries drifted and every existing store would stop deduplicating
//! against new imports: that is a format change, not a refactor.

use std::path::PathBuf;

use hoard::ChunkerParams;
use hoard::chunker::Chunker;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn read_cuts(name: &str) -> Vec<usize> {
    std::fs::read_to_string(fixture(name))
        .expect("cuts file")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.trim().parse().expect("a length per line"))
        .collect()
}

fn hoard_cuts(data: &[u8], p: ChunkerParams, block: usize) -> Vec<usize> {
    let mut ch = Chunker::new(data, p, block);
    let mut out = Vec::new();
    while let Some(b) = ch.next_block().expect("in-memory read") {
        out.extend(b.lens.iter().map(|&l| l as usize));
    }
    out
}

fn check(p: ChunkerParams, cuts_file: &str) {
    let data = std::fs::read(fixture("mixed.bin")).expect("fixture");
    let expected = read_cuts(cuts_file);
    assert_eq!(
        expected.iter().sum::<usize>(),
        data.len(),
        "{cuts_file} must cover the fixture"
    );
    for block in [1, 100_000, 4 << 20] {
        assert_eq!(
            hoard_cuts(&data, p, block),
            expected,
            "hoard chunker, block size {block}"
        );
    }
    // The fastcdc crate's own streaming chunker agrees, so other FastCDC 2020 users can match us.
    let crate_cuts: Vec<usize> = fastcdc::v2020::StreamCDC::new(&data[..], p.min, p.avg, p.max)
        .map(|c| c.expect("in-memory read").length)
        .collect();
    assert_eq!(crate_cuts, expected, "fastcdc::v2020::StreamCDC");
}

#[test]
fn default_params_cut_points_are_pinned() {
    check(ChunkerParams::DEFAULT, "mixed.16k-64k-256k.cuts");
}

#[test]
fn small_params_cut_points_are_pinned() {
    check(
        ChunkerParams::new(1024, 4096, 16384).unwrap(),
        "mixed.1k-4k-16k.cuts",
    );
}

#[test]
fn fixture_id_matches_b3sum() {
    let data = std::fs::read(fixture("mixed.bin")).expect("fixture");
    let line = std::fs::read_to_string(fixture("mixed.b3")).expect("b3sum output");
    let committed = line.split_whitespace().next().expect("hash");
    assert_eq!(hoard::Hash::of(&data).to_hex(), committed);
}

#[test]
fn prefix_hashes_match_the_blake3_crate() {
    // The browser page's BLAKE3 (web/blake3.js) is tested against the same file.
    let data = std::fs::read(fixture("mixed.bin")).expect("fixture");
    let text = std::fs::read_to_string(fixture("mixed.prefix.b3")).expect("prefix hashes");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (len, hex) = line.split_once(' ').expect("LEN HASH");
        let len: usize = len.parse().expect("length");
        assert_eq!(
            hoard::Hash::of(&data[..len]).to_hex(),
            hex,
            "prefix of {len} bytes"
        );
        n += 1;
    }
    assert!(n >= 20, "only {n} prefixes");
}
