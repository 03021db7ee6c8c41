"""Near-duplicate grouping (outputs/neardup.py): exact copies, the threshold, chains, and a
million rows by bands, checked against all pairs on small sets."""

from __future__ import annotations

import random
import time

import pytest

from batchgen.outputs.neardup import (
    MAX_DISTANCE,
    band_masks,
    distance,
    grow_groups,
    near_duplicate_groups,
    plan,
)


def h(x: int) -> str:
    return f"{x:016x}"


def flip(x: int, *bits: int) -> int:
    for b in bits:
        x ^= 1 << b
    return x


def brute(hashes: list[str | None], k: int) -> list[list[int]]:
    """Every pair compared, components by a plain union-find: the reference."""
    parent = list(range(len(hashes)))

    def root(u: int) -> int:
        while parent[u] != u:
            u = parent[u]
        return u

    for i, a in enumerate(hashes):
        for j in range(i + 1, len(hashes)):
            b = hashes[j]
            if a is not None and b is not None and distance(a, b) <= k:
                parent[max(root(i), root(j))] = min(root(i), root(j))
    comps: dict[int, list[int]] = {}
    for i, x in enumerate(hashes):
        if x is not None:
            comps.setdefault(root(i), []).append(i)
    return sorted((g for g in comps.values() if len(g) > 1), key=lambda g: g[0])


def test_exact_duplicates_are_one_group_the_earliest_first() -> None:
    a, b = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    got = near_duplicate_groups([h(b), h(a), None, h(a), h(b), h(a), "junk"])
    assert got == [[0, 4], [1, 3, 5]]


def test_the_threshold_is_inclusive() -> None:
    base = 0x5A5A5A5A5A5A5A5A
    at = flip(base, *range(0, 64, 64 // MAX_DISTANCE)[:MAX_DISTANCE])
    over = flip(base, *range(1, 64, 64 // (MAX_DISTANCE + 1))[: MAX_DISTANCE + 1])
    assert distance(h(base), h(at)) == MAX_DISTANCE
    assert distance(h(base), h(over)) == MAX_DISTANCE + 1
    assert near_duplicate_groups([h(base), h(at)]) == [[0, 1]]
    assert near_duplicate_groups([h(base), h(over)]) == []
    assert near_duplicate_groups([h(base), h(over)], MAX_DISTANCE + 1) == [[0, 1]]
    assert near_duplicate_groups([h(base), h(flip(base, 3))], 0) == []


def test_a_chain_is_one_group() -> None:
    a = 0
    b = flip(a, 0, 1, 2, 3)
    c = flip(b, 10, 11, 12, 13)  # 8 bits from a, 4 from b
    assert near_duplicate_groups([h(c), h(a), h(b)], 4) == [[0, 1, 2]]


def test_bands_cover_every_bit_once() -> None:
    for m in range(1, 12):
        masks = band_masks(m)
        assert len(masks) == m
        total = 0
        for mask in masks:
            assert total & mask == 0
            total |= mask
        assert total == (1 << 64) - 1


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_same_as_all_pairs(k: int) -> None:
    rng = random.Random(k)
    hashes: list[str | None] = []
    for _ in range(300):
        x = rng.getrandbits(64)
        hashes.append(h(x))
        for _ in range(rng.randrange(3)):  # near copies a few bits away, some over k
            hashes.append(h(flip(x, *rng.sample(range(64), rng.randrange(k + 3)))))
        if rng.random() < 0.1:
            hashes.append(None)
    rng.shuffle(hashes)
    assert near_duplicate_groups(hashes, k) == brute(hashes, k)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_growing_the_groups_of_older_rows_is_grouping_all(k: int) -> None:
    """A refresh's way (grow_groups: pairs with a new row only) finds the same groups as
    grouping every row, new rows joining old groups, old groups merged through a new row."""
    rng = random.Random(k + 10)
    values: list[int | None] = []
    for _ in range(400):
        x = rng.getrandbits(64)
        values.append(x)
        for _ in range(rng.randrange(3)):
            values.append(flip(x, *rng.sample(range(64), rng.randrange(k + 2))))
        if rng.random() < 0.1:
            values.append(None)
    rng.shuffle(values)
    a, b = 0xF0F0F0F0F0F0F0F0, 0x0F0F0F0F0F0F0F0F
    values += [a, flip(a, *range(2 * k))]  # 2k bits apart: joined only by the bridge below
    values += [flip(a, *range(k)), b, b]
    texts = [None if v is None else h(v) for v in values]
    everything = near_duplicate_groups(texts, k)
    for known in (0, 1, len(values) // 2, len(values) - 3, len(values) - 1, len(values)):
        older = near_duplicate_groups(texts[:known], k)
        assert grow_groups(older, values, known, k) == everything, known


def test_plan_keeps_the_pigeonhole() -> None:
    for k in range(8):
        for n in (10, 10_000, 1_000_000):
            m, r = plan(n, k)
            assert m - r == k and r >= 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_million_rows_by_bands() -> None:
    """Random hashes with a planted near copy every 1,000 rows: found, and nothing else."""
    rng = random.Random(7)
    n = 1_000_000
    values = [rng.getrandbits(64) for _ in range(n)]
    planted = []
    for i in range(0, n - 10, 1000):
        values[i + 7] = flip(values[i], *rng.sample(range(64), MAX_DISTANCE))
        planted.append([i, i + 7])
    t = time.perf_counter()
    got = near_duplicate_groups([h(v) for v in values])
    assert got == planted
    assert time.perf_counter() - t < 300  # about 20 s on the shared 2-core build machine
