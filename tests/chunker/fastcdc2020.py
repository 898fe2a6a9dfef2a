"""FastCDC 2020 exactly as hoard cuts it: a reference implementation, short enough to read.

hoard's chunker (src/chunker.rs) calls the Rust `fastcdc` crate 3.2.1, `v2020::cut_gear`,
with normalization level 1 and gear seed 0. This module is the same function in plain
Python 3 (stdlib only), written from the crate's source, so that a client in any language can
see precisely where a cut falls. It is slow (pure Python, a few MiB a second) and meant as a
spec by example; tests/chunker/check.py pins it to fixtures/ and to a live server.

    lengths = cut(data, 16384, 65536, 262144)          # whole buffer -> chunk lengths
    for chunk in stream(pieces, 16384, 65536, 262144):  # iterable of bytes -> chunk bytes
        ...

All arithmetic is on unsigned 64-bit integers, wrapping (hence the `& U64`).
"""

import hashlib

U64 = (1 << 64) - 1

# The crate's bounds on the sizes (MINIMUM_MIN..MINIMUM_MAX, AVERAGE_*, MAXIMUM_*); hoard
# also requires min < avg < max (src/config.rs).
BOUNDS = {"min": (64, 1_048_576), "avg": (256, 4_194_304), "max": (1024, 16_777_216)}

# Normalization level 1: one mask bit more before `avg`, one fewer after.
NORMALIZATION = 1

# The crate's MASKS, indexed by a number of bits (0..4 are padding). Values for 64 B..128 KiB
# come from the C reference implementation (destor), the larger ones from restic-FastCDC; the
# bits are spread out on purpose. They are constants, not derived from anything.
MASKS = [0, 0, 0, 0, 0,
    0x0000000001804110, 0x0000000001803110, 0x0000000018035100, 0x0000001800035300,
    0x0000019000353000, 0x0000590003530000, 0x0000d90003530000, 0x0000d90103530000,
    0x0000d90303530000, 0x0000d90313530000, 0x0000d90f03530000, 0x0000d90303537000,
    0x0000d90703537000, 0x0000d90707537000, 0x0000d91707537000, 0x0000d91747537000,
    0x0000d91767537000, 0x0000d93767537000, 0x0000d93777537000, 0x0000d93777577000,
    0x0000db3777577000,
]


def gear_table(seed=0):
    """(GEAR, GEAR_LS): GEAR[i] = the first 8 bytes, big-endian, of MD5(64 bytes of value i);
    GEAR_LS[i] = GEAR[i] << 1 (the top bit falls off). A non-zero seed is XORed into GEAR and
    seed << 1 into GEAR_LS (crate's get_gear_with_seed); hoard uses seed 0."""
    gear = [int.from_bytes(hashlib.md5(bytes([i]) * 64).digest()[:8], "big") for i in range(256)]
    gear_ls = [(g << 1) & U64 for g in gear]
    if seed:
        gear = [g ^ seed for g in gear]
        gear_ls = [g ^ ((seed << 1) & U64) for g in gear_ls]
    return gear, gear_ls


def bits(avg):
    """The crate's logarithm2: round(log2(avg)), computed here without floating point:
    round(log2(x)) = floor(log2(2 x^2) / 2). (There are no ties: log2 of an integer is never
    exactly k + 0.5.)"""
    return ((2 * avg * avg).bit_length() - 1) // 2


def masks(avg):
    """(mask_s, mask_l) for `avg`: MASKS[bits + 1] (harder, used before avg) and
    MASKS[bits - 1] (easier, used after). The loop also needs each shifted left by one."""
    b = bits(avg)
    return MASKS[b + NORMALIZATION], MASKS[b - NORMALIZATION]


def check_params(min, avg, max):
    """Raises ValueError unless the sizes are ones hoard accepts."""
    for what, v in (("min", min), ("avg", avg), ("max", max)):
        lo, hi = BOUNDS[what]
        if not (isinstance(v, int) and lo <= v <= hi):
            raise ValueError(f"{what} chunk size {v} is outside {lo}..={hi} bytes")
    if not min < avg < max:
        raise ValueError(f"chunk sizes must satisfy min < avg < max, got {min}/{avg}/{max}")


def cut_gear(source, min, avg, max, mask_s, mask_l, mask_s_ls, mask_l_ls, gear, gear_ls):
    """The crate's v2020::cut_gear: the length of the chunk that starts at source[0].

    `source` is everything left of the stream (or at least `max` bytes of it: nothing past
    source[max - 1] is read). The length returned is an index: the byte source[len], whose
    gear value completed the hash that matched the mask, is the first byte of the NEXT chunk.
    """
    remaining = len(source)
    if remaining <= min:  # the end of the stream: what is left is one (short) chunk
        return remaining
    center = avg
    if remaining > max:
        remaining = max
    elif remaining < center:
        center = remaining
    # Bytes are hashed two per step, from the pair that holds byte `min` (an odd `min` starts
    # one byte early). The first byte of a pair is added with the pre-shifted table and tested
    # with the pre-shifted mask; together that is the plain gear hash h = (h << 1) + GEAR[b].
    index = min // 2
    h = 0
    while index < center // 2:  # pairs wholly before `center`: the harder mask
        a = index * 2
        h = ((h << 2) + gear_ls[source[a]]) & U64
        if h & mask_s_ls == 0:
            return a
        h = (h + gear[source[a + 1]]) & U64
        if h & mask_s == 0:
            return a + 1
        index += 1
    while index < remaining // 2:  # then the easier mask, up to the last whole pair
        a = index * 2
        h = ((h << 2) + gear_ls[source[a]]) & U64
        if h & mask_l_ls == 0:
            return a
        h = (h + gear[source[a + 1]]) & U64
        if h & mask_l == 0:
            return a + 1
        index += 1
    return remaining  # no cut point (e.g. all zeroes): the largest chunk allowed


class Cutter:
    """The constants of one configuration. By default they are derived here; pass `gear`,
    `gear_ls` and `mask_*` (e.g. parsed from GET /v1/config) to use published ones instead."""

    def __init__(self, min, avg, max, *, gear=None, gear_ls=None,
                 mask_s=None, mask_l=None, mask_s_ls=None, mask_l_ls=None):
        check_params(min, avg, max)
        self.min, self.avg, self.max = min, avg, max
        own_gear, own_gear_ls = gear_table(0)
        own_s, own_l = masks(avg)
        self.gear = own_gear if gear is None else list(gear)
        self.gear_ls = own_gear_ls if gear_ls is None else list(gear_ls)
        self.mask_s = own_s if mask_s is None else mask_s
        self.mask_l = own_l if mask_l is None else mask_l
        self.mask_s_ls = (self.mask_s << 1) & U64 if mask_s_ls is None else mask_s_ls
        self.mask_l_ls = (self.mask_l << 1) & U64 if mask_l_ls is None else mask_l_ls

    def next_len(self, source):
        """Length of the chunk at source[0]; final only if len(source) >= max or the stream
        ends with source."""
        return cut_gear(source, self.min, self.avg, self.max, self.mask_s, self.mask_l,
                        self.mask_s_ls, self.mask_l_ls, self.gear, self.gear_ls)

    def lengths(self, data):
        """All chunk lengths of a whole buffer (an empty one has no chunks)."""
        view, pos, out = memoryview(data), 0, []
        while pos < len(view):
            n = self.next_len(view[pos:pos + self.max])
            out.append(n)
            pos += n
        return out

    def stream(self, pieces):
        """Chunks (bytes) of a stream given as an iterable of byte strings of any sizes: the
        same chunks as for the whole stream. Holds back fewer than `max` bytes between pieces."""
        buf = b""
        for piece in pieces:
            buf += piece
            pos = 0
            while len(buf) - pos >= self.max:
                n = self.next_len(buf[pos:pos + self.max])
                yield buf[pos:pos + n]
                pos += n
            buf = buf[pos:]
        while buf:  # the end of the stream: cut what is left
            n = self.next_len(buf[:self.max])
            yield buf[:n]
            buf = buf[n:]


def cut(data, min, avg, max, **tables):
    """Chunk lengths of `data` cut with min/avg/max (keyword `tables` as for Cutter)."""
    return Cutter(min, avg, max, **tables).lengths(data)


def stream(pieces, min, avg, max, **tables):
    """Chunks (bytes) of the stream `pieces` (an iterable of bytes), as Cutter.stream."""
    return Cutter(min, avg, max, **tables).stream(pieces)
