"""Near-duplicate images: groups of rows whose 64-bit perceptual hashes (``phash``, from
:mod:`quality`) differ in at most ``max_distance`` bits. Pure logic, no I/O: the gallery's
filter and ``batchgen mark --where near-duplicate`` share it.

Never all pairs. Each distinct hash is kept once (rows with the same hash are one group
already, however many: the blank images of a folder all hash to zero), and candidates are
found by bands, as the pigeonhole principle allows: cut the 64 bits into ``m`` bands; two
hashes at most ``k`` bits apart differ in at most ``k`` bands, so they agree exactly on at
least ``m - k`` of them. For every choice of ``r = m - k`` bands, hashes are bucketed by
those bands' bits, and only hashes sharing a bucket are compared. ``m = k + 1`` (one band
in common) is the plain pigeonhole; with more bands each key is longer (fewer chance
collisions) but there are more keys (``C(m, r)``), and :func:`plan` picks ``m`` for the
number of hashes. Pairs within the distance are joined (union-find), so a group is a
connected component: a chain of near neighbours, whose ends may be further apart.

Cost with uniformly spread hashes (bench/outputs.py measures it at a million rows): about
``C(m, r)`` dict insertions a hash plus the chance pairs. Real hashes are less spread; a
bucket that many distinct hashes share is compared pair by pair, so a folder of very
similar images costs more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations, compress, groupby, pairwise
from math import comb

BITS = 64
MAX_DISTANCE = 4  # bits of 64: re-encoded, resized or slightly edited copies (docs/outputs.md)


def parse(phash: str | None) -> int | None:
    """A hash as an int, or None for a missing or malformed one."""
    if not isinstance(phash, str) or len(phash) != BITS // 4:
        return None
    try:
        return int(phash, 16)
    except ValueError:
        return None


def distance(a: str, b: str) -> int:
    """Bits in which two hashes differ."""
    x, y = parse(a), parse(b)
    if x is None or y is None:
        raise ValueError(f"not 64-bit hashes: {a!r}, {b!r}")
    return (x ^ y).bit_count()


def plan(n: int, max_distance: int) -> tuple[int, int]:
    """(bands, bands in common) that should cost least for ``n`` spread hashes."""
    k = max_distance
    best: tuple[float, int, int] | None = None
    for m in range(k + 1, min(BITS, k + 6) + 1):
        r = m - k
        keys = comb(m, r)
        bits = BITS * r / m  # a key's bits (bands are within one bit of each other)
        cost = keys * (n + 3 * n * n / 2 ** (bits + 1))  # a pair costs ~3 insertions
        if best is None or cost < best[0]:
            best = (cost, m, r)
    assert best is not None
    return best[1], best[2]


def band_masks(m: int) -> list[int]:
    """``m`` masks that cut the 64 bits into contiguous bands of near-equal width."""
    edges = [round(i * BITS / m) for i in range(m + 1)]
    return [((1 << (hi - lo)) - 1) << lo for lo, hi in pairwise(edges)]


def near_duplicate_groups(
    phashes: Sequence[str | None], max_distance: int = MAX_DISTANCE
) -> list[list[int]]:
    """Groups of row positions whose hashes are within ``max_distance`` bits, through a chain
    of such pairs. Each group has two rows or more, in row order (the first, the earliest
    row, is the one to keep); groups are ordered by their first row. Rows without a valid
    hash (None) are in no group."""
    return groups_of_values([parse(t) for t in phashes], max_distance)


def groups_of_values(ints: list[int | None], max_distance: int = MAX_DISTANCE) -> list[list[int]]:
    """:func:`near_duplicate_groups` of hashes already parsed (``ints`` is consumed: it is
    cleared, to give its memory back before the bands are built)."""
    if not 0 <= max_distance < BITS:
        raise ValueError(f"max_distance must be in 0..{BITS - 1}, not {max_distance}")
    n = len(ints)
    # Each distinct hash and its earliest row, built at C speed (the last write wins: going
    # backwards, that is the earliest row).
    first: dict[int | None, int] = dict(zip(reversed(ints), range(n - 1, -1, -1), strict=True))
    first.pop(None, None)
    later: dict[int, list[int]] = {}  # a hash's rows after its first
    for pos, f in enumerate(map(first.get, ints)):
        x = ints[pos]
        if f is not None and f != pos and x is not None:
            later.setdefault(x, []).append(pos)
    ints.clear()
    parent: dict[int, int] = {}  # union-find over hashes joined to another
    if max_distance > 0 and len(first) > 1:
        _join_near([h for h in first if h is not None], parent, max_distance)
    members: dict[int, list[int]] = {}
    for h in parent:
        members.setdefault(_root(parent, h), []).append(h)
    for h in later:
        if h not in parent:
            members[h] = [h]
    groups = []
    for hashes in members.values():
        rows = [first[h] for h in hashes]
        for h in hashes:
            rows += later.get(h, ())
        rows.sort()
        groups.append(rows)
    groups.sort(key=lambda g: g[0])
    return groups


def _root(parent: dict[int, int], h: int) -> int:
    while (up := parent[h]) != h:
        parent[h] = parent[up]  # path halving
        h = up
    return h


def _union(parent: dict[int, int], a: int, b: int) -> None:
    ra, rb = _root(parent, parent.setdefault(a, a)), _root(parent, parent.setdefault(b, b))
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _join_near(values: list[int], parent: dict[int, int], k: int) -> None:
    """Join every pair of the distinct ``values`` within ``k`` bits in ``parent``."""
    m, r = plan(len(values), k)
    for chosen in combinations(band_masks(m), r):
        mask = 0
        for band in chosen:
            mask |= band
        keys = [h & mask for h in values]
        # Counter counts at C speed; only the hashes whose key another shares go on, sorted
        # by key so that a bucket is a run of neighbours.
        shared = {key for key, c in Counter(keys).items() if c > 1}
        found = list(compress(values, map(shared.__contains__, keys)))
        del keys, shared
        found.sort(key=mask.__and__)
        for _, run in groupby(found, mask.__and__):
            a, *rest = run
            for b in rest:  # a bucket of two, nearly always
                if (a ^ b).bit_count() <= k:
                    _union(parent, a, b)
            for i, b in enumerate(rest):  # the rest of a bigger one
                for c in rest[i + 1 :]:
                    if (b ^ c).bit_count() <= k:
                        _union(parent, b, c)


def grow_groups(
    groups: Sequence[Sequence[int]],
    values: Sequence[int | None],
    known: int,
    max_distance: int = MAX_DISTANCE,
) -> list[list[int]]:
    """The groups of ``values`` (parsed hashes, by row), given ``groups``, those of its first
    ``known`` rows: what a gallery refresh needs when rows were appended. Only pairs with a
    new row are looked for: for each key of the bands, the rows whose key a new row has (a
    pass over the keys at C speed), so its cost follows the new rows, not the pairs of old
    ones. Gives what :func:`groups_of_values` gives for all of ``values``."""
    parent: dict[int, int] = {}
    for g in groups:
        for row in g[1:]:
            _union(parent, g[0], row)
    fresh = [p for p in range(known, len(values)) if values[p] is not None]
    if fresh:
        rows = [p for p, v in enumerate(values) if v is not None]
        vals = [0 if v is None else v for v in values]  # 0 is never read: rows skip None
        hashes = [vals[p] for p in rows]
        m, r = plan(len(rows), max_distance)
        for chosen in combinations(band_masks(m), r):
            mask = 0
            for band in chosen:
                mask |= band
            wanted = {vals[p] & mask for p in fresh}
            buckets: dict[int, list[int]] = {}
            for p in compress(rows, map(wanted.__contains__, map(mask.__and__, hashes))):
                buckets.setdefault(vals[p] & mask, []).append(p)
            for bucket in buckets.values():  # rows in order: a pair with a new row ends in one
                for i, p in enumerate(bucket):
                    hp = vals[p]
                    for q in bucket[i + 1 :]:
                        if q >= known and (hp ^ vals[q]).bit_count() <= max_distance:
                            _union(parent, p, q)
    members: dict[int, list[int]] = {}
    for row in parent:
        members.setdefault(_root(parent, row), []).append(row)
    out = [sorted(g) for g in members.values() if len(g) > 1]
    out.sort(key=lambda g: g[0])
    return out
