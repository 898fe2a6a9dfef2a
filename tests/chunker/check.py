"""Checks the Python FastCDC 2020 (tests/chunker/fastcdc2020.py) against hoard.

Without arguments: against the golden files in fixtures/ (the cut lists of mixed.bin for two
sets of params, its BLAKE3, the ids of its first chunks) and, if the fastcdc crate's source is
in ~/.cargo/registry, against the crate's own MASKS, GEAR and GEAR_LS tables.

With --server URL (a live `hoard serve` on loopback; repeatable): reads GET /v1/config, checks
every published chunker field against its own derivation, uploads test files with
PUT /v1/files/NAME and requires the server's manifest (GET /v1/manifests/{id}, JSON) to list
exactly the chunk ids and lengths that Python cuts, both with its own tables and with only the
published ones. Exits non-zero with a message on the first mismatch. Needs `blake3` (PyPI).

    python tests/chunker/check.py [--server http://127.0.0.1:PORT ...] [--allow-partial-config]
"""

import argparse
import glob
import json
import os
import random
import re
import sys
import urllib.error
import urllib.request

import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import fastcdc2020 as cdc  # noqa: E402

FIXTURES = os.path.join(ROOT, "fixtures")
CUT_FILES = ["mixed.16k-64k-256k.cuts", "mixed.1k-4k-16k.cuts"]

# Ids of the first chunks of mixed.bin, from the blake3 crate (the same list pins the browser
# code in tests/js/vectors.test.mjs).
FIRST_CHUNK_IDS = {
    "mixed.16k-64k-256k.cuts": [
        "8846afaf514a1136a0cbc7c4194a5f5838b567260be70625dd11cbf13e57e57b",
        "3e17a97e7e7213e241ed6283a9a712b23532bdcf3c241ed853fc0c0468f88e9a",
        "c0935c5f6e49aa53b0dffacc04a27d4bbb19065feb0772f02a243a4f7678ada7",
        "9021cdb27e301d695a1720b42d86f5674668a3de61562c7df015913e4477a0a4",
    ],
    "mixed.1k-4k-16k.cuts": [
        "0a6092ee498b7af079e1c97dbfba0e4d3892fc808640731c48edb60fa16ebdcc",
        "f01097b5ef90e6aff9a32b4b200d0711cbfb4a5c2ce92b09c75f293d4f3039ac",
        "b81d165c87937cae10f27df527a85b7406fa9222de28855728621fc4203e2d4c",
        "9a4bf34984faba482a64ed600dc87a9132910fad57ef4ef94b04486a0eca9e35",
    ],
}

# Entries of the crate's tables, for when its source is not at hand.
GEAR_SPOT = {0: 0x3B5D3C7D207E37DC, 1: 0x784D68BA91123086, 255: 0xAABD2B2A451504E1}
GEAR_LS_SPOT = {0: 0x76BA78FA40FC6FB8, 2: 0x9AA5101F105CE530, 255: 0x557A56548A2A09C2}

HEX64 = re.compile(r"0x[0-9a-fA-F]{16}")


class Mismatch(Exception):
    pass


def expect(ok, what):
    if not ok:
        raise Mismatch(what)


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def read_cuts(name):
    """(min, avg, max), lengths of a .cuts file (its comment ends in "min/avg/max A/B/C")."""
    lines = fixture(name).decode().splitlines()
    comment = next(line for line in lines if line.startswith("#"))
    params = tuple(int(v) for v in re.search(r"(\d+)/(\d+)/(\d+)\s*$", comment).groups())
    return params, [int(line) for line in lines if line.strip() and not line.startswith("#")]


def chunk_list(data, cutter):
    """[(id hex, len)] of `data` cut by `cutter`."""
    view, out, pos = memoryview(data), [], 0
    for n in cutter.lengths(data):
        out.append((blake3.blake3(view[pos:pos + n]).hexdigest(), n))
        pos += n
    return out


def crate_tables():
    """(MASKS, GEAR, GEAR_LS) parsed from the fastcdc 3.2.1 source in the cargo registry, or None."""
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    paths = glob.glob(os.path.join(home, "registry/src/*/fastcdc-3.2.1/src/v2020/mod.rs"))
    if not paths:
        return None
    src = open(paths[0]).read()

    def table(name):
        body = re.search(r"const %s: \[u64; \d+\] = \[(.*?)\];" % name, src, re.S).group(1)
        body = re.sub(r"//[^\n]*", "", body)
        return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\b\d+\b", body)]

    return table("MASKS"), table("GEAR"), table("GEAR_LS")


def check_fixtures():
    gear, gear_ls = cdc.gear_table(0)
    for i, v in GEAR_SPOT.items():
        expect(gear[i] == v, f"GEAR[{i}] = {gear[i]:#018x}, the crate has {v:#018x}")
    for i, v in GEAR_LS_SPOT.items():
        expect(gear_ls[i] == v, f"GEAR_LS[{i}] = {gear_ls[i]:#018x}, the crate has {v:#018x}")
    crate = crate_tables()
    if crate:
        masks, cgear, cgear_ls = crate
        expect(masks == cdc.MASKS, "MASKS differ from the crate's")
        expect(cgear == gear, "the MD5-derived GEAR table differs from the crate's")
        expect(cgear_ls == gear_ls, "GEAR << 1 differs from the crate's GEAR_LS")
        print("tables: MASKS, GEAR, GEAR_LS equal the fastcdc 3.2.1 source")
    else:
        print("tables: crate source not found; spot-checked GEAR and GEAR_LS entries")

    data = fixture("mixed.bin")
    want_id = fixture("mixed.b3").decode().split()[0]
    expect(blake3.blake3(data).hexdigest() == want_id, "BLAKE3 of mixed.bin differs from mixed.b3")
    print(f"mixed.bin: {len(data)} bytes, BLAKE3 = mixed.b3")
    for name in CUT_FILES:
        (lo, avg, hi), want = read_cuts(name)
        expect(sum(want) == len(data), f"{name} does not cover mixed.bin")
        cutter = cdc.Cutter(lo, avg, hi)
        got = cutter.lengths(data)
        expect(got == want, f"{name}: {first_diff(got, want)}")
        # The same chunks from a stream in odd pieces (small, around max, large).
        for sizes in ([1, 997, 4093, 2], [hi - 1, hi + 1], [1_000_003]):
            pieces = (data[a:a + s] for a, s in spans(len(data), sizes))
            lens = [len(c) for c in cutter.stream(pieces)]
            expect(lens == want, f"{name}, streamed in pieces of {sizes}: {first_diff(lens, want)}")
        ids = [i for i, _ in chunk_list(data, cutter)[:4]]
        expect(ids == FIRST_CHUNK_IDS[name], f"{name}: first chunk ids {ids}")
        print(f"{name}: {len(got)} chunks match ({lo}/{avg}/{hi}), streamed too; first 4 ids match")


def spans(total, sizes):
    at, i = 0, 0
    while at < total:
        yield at, sizes[i % len(sizes)]
        at += sizes[i % len(sizes)]
        i += 1


def first_diff(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"chunk {i} is {g}, expected {w}"
    return f"{len(got)} chunks, expected {len(want)}"


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        raise Mismatch(f"{method} {url}: {e.code} {e.read()[:300]!r}") from None


def published_hex(chunker, key):
    v = chunker[key]
    expect(isinstance(v, str) and HEX64.fullmatch(v), f"config chunker.{key} = {v!r} is not 0x + 16 hex digits")
    return int(v, 16)


def check_config(url, allow_partial):
    """GET /v1/config: returns (params, own Cutter, Cutter from the published tables or None)."""
    _, body = http("GET", url + "/v1/config")
    c = json.loads(body)["chunker"]
    lo, avg, hi = c["min"], c["avg"], c["max"]
    own = cdc.Cutter(lo, avg, hi)
    derived = {
        "algorithm": "fastcdc", "version": "2020", "normalization": cdc.NORMALIZATION,
        "gear_seed": 0, "mask_s": own.mask_s, "mask_l": own.mask_l,
        "mask_s_ls": own.mask_s_ls, "mask_l_ls": own.mask_l_ls,
        "gear": own.gear, "gear_ls": own.gear_ls, "cut": None,
    }
    missing = [k for k in derived if k not in c]
    for key, want in derived.items():
        if key in missing:
            continue
        if key.startswith("mask_"):
            got = published_hex(c, key)
            expect(got == want, f"config chunker.{key} = {c[key]}, derived {want:#018x}")
        elif key in ("gear", "gear_ls"):
            expect(isinstance(c[key], list) and len(c[key]) == 256, f"config chunker.{key} is not 256 entries")
            for i, v in enumerate(c[key]):
                expect(isinstance(v, str) and HEX64.fullmatch(v), f"config chunker.{key}[{i}] = {v!r}")
                expect(int(v, 16) == want[i], f"config chunker.{key}[{i}] = {v}, derived {want[i]:#018x}")
        elif key == "cut":
            expect(isinstance(c[key], str) and c[key].strip(), "config chunker.cut is not a description")
        else:
            expect(c[key] == want and type(c[key]) is type(want), f"config chunker.{key} = {c[key]!r}, expected {want!r}")
    if missing:
        msg = f"config chunker lacks {', '.join(missing)}"
        expect(allow_partial, msg + " (--allow-partial-config to go on without)")
        print(f"{url}: warning: {msg}")
    published = None
    if not {"gear", "gear_ls", "mask_s", "mask_l", "mask_s_ls", "mask_l_ls"} & set(missing):
        published = cdc.Cutter(
            lo, avg, hi,
            gear=[int(v, 16) for v in c["gear"]], gear_ls=[int(v, 16) for v in c["gear_ls"]],
            **{k: int(c[k], 16) for k in ("mask_s", "mask_l", "mask_s_ls", "mask_l_ls")})
    print(f"{url}: config {lo}/{avg}/{hi}, {len(derived) - len(missing)} of {len(derived)} "
          "derived fields published and equal")
    return (lo, avg, hi), own, published


def test_file(size, seed):
    """Deterministic bytes: random runs, repeats of earlier runs (dedup), zero runs (no cut
    point: max-length chunks), text-like runs, and an odd length."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij klmnop\n") for _ in range(rng.randrange(2, 9))) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        n = rng.randrange(1, 300_000)
        if kind < 0.4:
            out += rng.randbytes(n)
        elif kind < 0.65 and len(out) > n:
            at = rng.randrange(len(out) - n)
            out += out[at:at + n]
        elif kind < 0.8:
            out += bytes(n)
        else:
            while n > 0:
                w = rng.choice(words)
                out += w
                n -= len(w)
    return bytes(out[:size])


def check_server(url, allow_partial):
    params, own, published = check_config(url, allow_partial)
    lo, avg, hi = params
    files = [
        ("generated-4MiB", test_file(4 << 20, 2020)),
        ("generated-odd", test_file((3 << 20) + 12345, 7)),
        ("mixed.bin", fixture("mixed.bin")),
        # Around the smallest sizes: at min (one chunk, no hashing), min+1, an odd tail.
        ("tiny-min", random.Random(1).randbytes(lo)),
        ("tiny-min+1", random.Random(2).randbytes(lo + 1)),
        ("small-odd", random.Random(3).randbytes(2 * hi + 2 * avg + 1)),
        # GEAR[248] has none of the bits of MASKS[9]: with avg near 256 and an odd min, each
        # chunk ends at min - 1, the byte that starts the hashing (the pair holding byte min).
        ("byte-248", bytes([248]) * 100_001),
    ]
    compared, short, longest = 0, 0, 0
    for name, data in files:
        _, body = http("PUT", f"{url}/v1/files/chunker-check/{name}", data,
                       {"Content-Type": "application/octet-stream"})
        answer = json.loads(body)
        fid = answer["id"]
        expect(fid == blake3.blake3(data).hexdigest(), f"{name}: file id {fid} is not BLAKE3 of the file")
        _, body = http("GET", f"{url}/v1/manifests/{fid}", headers={"Accept": "application/json"})
        m = json.loads(body)
        expect(m["id"] == fid and m["size"] == len(data), f"{name}: manifest id/size {m['id']}/{m['size']}")
        if "chunker" in m:
            mc = m["chunker"]
            expect((mc["min"], mc["avg"], mc["max"]) == params, f"{name}: manifest chunker {mc} != config")
        server = [(c["id"], c["len"]) for c in m["chunks"]]
        for label, cutter in (("own tables", own), ("published tables", published)):
            if cutter is None:
                continue
            mine = chunk_list(data, cutter)
            expect(mine == server, f"{name} ({label}): {first_diff(mine, server)}")
        compared += len(server)
        short += sum(n < lo for _, n in server[:-1])
        longest += sum(n == hi for _, n in server)
        print(f"{url}: {name}: {len(data)} bytes, {len(server)} chunks equal the server's "
              f"(ids and lengths; {'own and published' if published else 'own'} tables)")
    print(f"{url}: corners seen: {short} non-final chunks shorter than min, {longest} of max length")
    return compared


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", action="append", default=[], help="base URL of a live hoard serve")
    ap.add_argument("--allow-partial-config", action="store_true",
                    help="only warn if /v1/config lacks the masks, gear tables or other fields")
    ap.add_argument("--skip-fixtures", action="store_true")
    a = ap.parse_args()
    try:
        if not a.skip_fixtures:
            check_fixtures()
        total = 0
        for url in a.server:
            total += check_server(url.rstrip("/"), a.allow_partial_config)
        if a.server:
            print(f"server: {total} chunks compared over {len(a.server)} server(s), all equal")
    except Mismatch as e:
        print(f"MISMATCH: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
