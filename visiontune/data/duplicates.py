"""Exact duplicates (the same bytes) and near duplicates (close perceptual hashes) among files."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .inspect import FileInfo

__all__ = ["DEFAULT_NEAR_DISTANCE", "exact_groups", "hamming_pairs", "near_groups"]

# Bits (of the 143 of a 12x12 pHash) two images may differ by and still count as near copies.
# On the yoga set every pair up to 16 is the same photo resized, re-encoded, bordered or
# watermarked; from about 18 on, different people in the same pose against white start to appear.
DEFAULT_NEAR_DISTANCE = 16

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def exact_groups(infos: Sequence[FileInfo]) -> list[list[FileInfo]]:
    """Usable files sharing a sha256, two or more per group, in first-seen order."""
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    for info in infos:
        if info.usable and info.sha256:
            by_hash[info.sha256].append(info)
    return [group for group in by_hash.values() if len(group) > 1]


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` of packed bit rows (N, bytes) at most ``max_distance`` bits apart.

    Every pair is compared (N^2), a block of rows at a time so that memory stays near 16 MB.
    """
    block = max(1, 2**24 // max(1, hashes.size))
    pairs = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distances = _POPCOUNT[rows[:, None, :] ^ hashes[None, :, :]].sum(axis=2)
        for i, j in zip(*np.nonzero(distances <= max_distance), strict=True):
            if start + i < j:
                pairs.append((int(start + i), int(j)))
    return pairs


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[root(i)].append(i)
    return [m for m in members.values() if len(m) > 1]


def near_groups(
    infos: Sequence[FileInfo], max_distance: int = DEFAULT_NEAR_DISTANCE
) -> list[list[FileInfo]]:
    """Groups of files whose contents differ but whose perceptual hashes are within
    ``max_distance`` bits (linked transitively). Every file of each content is included, so a
    group may also hold exact copies; only groups of two or more distinct contents are returned."""
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    for info in infos:
        if info.usable and info.phash is not None:
            by_hash[info.sha256].append(info)
    contents = list(by_hash.values())
    if len(contents) < 2:
        return []
    hashes = np.stack([np.frombuffer(c[0].phash, dtype=np.uint8) for c in contents])
    components = _components(len(contents), hamming_pairs(hashes, max_distance))
    return [[info for k in members for info in contents[k]] for members in components]
