"""Near-duplicate images: pairs of perceptual hashes a few bits apart, found without comparing
all pairs, and the groups they connect.

Each written image has a 64-bit DCT hash (``transforms.images.phash``), computed by the shard
writer from the decode it already does, or kept in the build state for an image a rebuild does
not decode again. ``FindNearDuplicates`` finds every pair at Hamming distance at most
``MAX_DISTANCE``:

  * **bands**: the 64 bits are cut into ``MAX_DISTANCE + 1`` bands (``BANDS``). A pair at
    distance <= d differs in at most d bits, so (pigeonhole) at least one of the d + 1 bands
    is equal in both: each image is keyed by ``(band, band value)`` once per band, and only
    images sharing a key are compared (a ``GroupByKey``, so no step holds every hash); each
    shard sends one packed batch per key, not one element per image and band;
  * **verification**: within a key, the exact distance of every candidate is computed with
    numpy (vectorized XOR and popcount, the upper triangle only); a pair sharing several
    bands is found under each of their keys, and its one reader keeps one (``distinct_pairs``);
  * **a very common band value** stays bounded two ways. Images with the *same* hash (flat,
    blank or byte-identical images) collapse to one representative first, each joined to it
    at distance 0, so a thousand blank images cost a thousand steps, not half a million
    comparisons. A key holding more than ``KEY_CAP`` distinct hashes is cut into sub-groups
    by the value of the next band, and the next, until each holds at most ``KEY_CAP``; only
    hashes of one sub-group are compared. So no image is compared with more than ``KEY_CAP``
    others per key, and never more than ``BANDS * KEY_CAP`` in all, however common a value.

Cost: ``d + 1`` keyed copies per image through one shuffle (in at most ``BANDS * 32``
elements per shard), and at most ``13 * KEY_CAP`` distances per image (about 80 us of CPU at
numpy's 1-2 ns a distance): linear in the number of images. Measured (one core, evenly spread
random hashes, banding and verification): 0.4 s for 12,000 images, 4 s for 48,000, 11 s for
118,000 (0.1 ms an image, against a build's 4-5 ms of CPU per image), 13 s for 300,000.

What the cap costs: exactness only in an over-full key. A pair at distance <= d always
shares a band (pigeonhole); it is missed only if every key it shares is over-full and the
pair differs in the bands that cut those keys. Keys fill up with ``n / 2^width`` evenly
spread hashes (width 4 or 5 bits): up to 16 * ``KEY_CAP`` = 131,072 distinct hashes (COCO
train2017 has 118,287 images) every pair at distance <= 12 is found, as comparing all pairs
would. Beyond, a pair is still found under any shared key whose cut falls on a band it also
shares: of 3,000 pairs planted at distances 1 to 12 among 300,000 random hashes (every key
over-full), every pair up to 7 bits apart was found, 96% in all, 78% of those 12 apart
(measured). Real photographs' hashes are not evenly spread: their most common band values fill
up first, and what is missed there is said by the same rule.

``MAX_DISTANCE = 12``: measured on the 160 real images of coco-tiny (distances are even: a
hash has 32 bits set). Copies re-encoded at JPEG quality 60 lie 0-2 bits from their original,
resized to half 0-2, brightened by 10% 0-8, cropped by 3% on each side 0-12 (mean 6); distinct
images lie 16 to 48 bits apart (1st percentile 22, median 32). 12 finds every copy and keeps a
margin of 4 below the closest distinct pair.

``near_duplicate_groups`` (pure) joins the pairs into groups (connected components, by
union-find), the way ``stats.json`` lists them: each group's images sorted by ``(split,
image_id)``, each with its distance to the group's first image (which may exceed the
threshold in a chain of copies), ``leak`` when the group spans splits. Deterministic: the
same pairs in any order give the same groups.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.typehints import Tuple

from coco_beam.transforms.images.phash import HASH_BITS, hamming
from coco_beam.transforms.runtime.packing import pack, unpack

__all__ = [
    "BANDS",
    "KEY_CAP",
    "MAX_DISTANCE",
    "FindNearDuplicates",
    "band_keys",
    "distinct_pairs",
    "member_paths",
    "near_duplicate_groups",
    "verify_candidates",
]

MAX_DISTANCE = 12  # see the module docstring: measured copies <= 12, distinct images >= 16


def _cut(bits: int, parts: int) -> tuple[tuple[int, int], ...]:
    """``parts`` contiguous ``(shift, width)`` bands of ``bits`` bits, widest first."""
    widths = [bits // parts + (i < bits % parts) for i in range(parts)]
    bands, end = [], bits
    for width in widths:
        end -= width
        bands.append((end, width))
    return tuple(bands)


# (shift, width) of each band, from the most significant bit.
BANDS = _cut(HASH_BITS, MAX_DISTANCE + 1)
# Distances computed at once in a block (1 byte each): bounds the memory of a very large key.
_BLOCK_CELLS = 1 << 22
# Distinct hashes of one key compared all pairs; a key that holds more is cut into sub-groups
# by further bands (``_sub_groups``): at most ``KEY_CAP`` distances per image and key.
KEY_CAP = 8192

# A member is (split, image_id, hash as 16 hex digits, the image's source path): the path
# rides along so that publishing can read the few images of the groups it draws from where
# they came from (the same in a build of any format and in ``coco-beam stats``). A pair is
# (first member, second member, distance), the members in sorted order.


def _band_values(value: int) -> tuple[int, ...]:
    return tuple((value >> shift) & ((1 << width) - 1) for shift, width in BANDS)


def band_keys(member: tuple[str, int, str]) -> list[tuple[tuple[int, int], tuple]]:
    """``((band, band value), member)`` for every band of the member's hash."""
    values = _band_values(int(member[2], 16))
    return [((band, value), member) for band, value in enumerate(values)]


def _sub_groups(values: np.ndarray, indices: np.ndarray, used: tuple[int, ...]):
    """``indices`` (into ``values``) cut into groups of at most ``KEY_CAP``: a group above it is
    split by the value of the band after the last one ``used`` (cyclically, each band once),
    and so on, so a pair that differs in one band is missed under one over-full key only.
    Distinct hashes differ in some band, so every group ends at or below the cap."""
    if len(indices) <= KEY_CAP or len(used) == len(BANDS):
        yield indices
        return
    band = next(
        b % len(BANDS)
        for b in range(used[-1] + 1, used[-1] + len(BANDS))
        if b % len(BANDS) not in used
    )
    shift, width = BANDS[band]
    sub = (values[indices] >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(sub, kind="stable")
    sub, ordered = sub[order], indices[order]
    cuts = np.flatnonzero(np.diff(sub)) + 1
    for part in np.split(ordered, cuts):
        yield from _sub_groups(values, part, (*used, band))


def _close_pairs(values: np.ndarray, indices: np.ndarray):
    """``(i, j, distance)`` of every pair of ``indices`` (i before j in ``indices``' order) at
    distance <= ``MAX_DISTANCE``: each block of rows against the rows from its own first on
    (the upper triangle), at most ``_BLOCK_CELLS`` distances at once."""
    group = values[indices]
    rows = max(1, _BLOCK_CELLS // max(1, len(group)))
    for start in range(0, len(group), rows):
        block, rest = group[start : start + rows], group[start:]
        close = np.bitwise_count(block[:, None] ^ rest[None, :]) <= MAX_DISTANCE
        # Only j after i: the block's own lower triangle and diagonal are cleared.
        close &= np.arange(len(rest))[None, :] > np.arange(len(block))[:, None]
        for i, j in zip(*np.nonzero(close), strict=True):
            a, b = int(indices[start + i]), int(indices[start + j])
            yield a, b, int(values[a] ^ values[b]).bit_count()


def verify_candidates(
    key: tuple[int, int], members: Iterable[tuple[str, int, str]]
) -> list[tuple[tuple, tuple, int]]:
    """The pairs at distance <= ``MAX_DISTANCE`` among the members of one key. Images with the
    same hash are joined to the first of them (by split and image id) at distance 0, in band
    0's keys only; distinct hashes are compared by their first images, all pairs while the key
    holds at most ``KEY_CAP`` distinct hashes, else within the sub-groups ``_sub_groups`` cuts
    it into. A pair sharing several bands comes out of each of their keys:
    ``FindNearDuplicates`` keeps one."""
    band = key[0]
    by_hash: dict[str, list] = collections.defaultdict(list)
    for member in members:
        by_hash[member[2]].append(tuple(member))
    hashes = sorted(by_hash)
    firsts = []
    pairs = []
    for h in hashes:
        same = sorted(by_hash[h])
        firsts.append(same[0])
        if band == 0:  # equal hashes share every band: band 0 has them all
            pairs.extend((same[0], other, 0) for other in same[1:])
    values = np.array([int(h, 16) for h in hashes], np.uint64)
    for group in _sub_groups(values, np.arange(len(values)), (band,)):
        for i, j, distance in _close_pairs(values, group):
            first, second = sorted((firsts[i], firsts[j]))
            pairs.append((first, second, distance))
    return sorted(pairs)


def near_duplicate_groups(pairs: Iterable) -> list[dict]:
    """Groups of images joined by ``pairs`` (``(member, member, distance)``): each
    ``{"images": [[split, image_id, distance to the first image], ...], "leak": bool}``,
    images by ``(split, image_id)``, groups by their first image."""
    parent: dict[tuple, tuple] = {}
    hashes: dict[tuple, str] = {}

    def find(node):
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    for a, b, _ in pairs:
        for split, image_id, h, *_ in (a, b):
            node = (split, image_id)
            parent.setdefault(node, node)
            hashes[node] = h
        x, y = find((a[0], a[1])), find((b[0], b[1]))
        if x != y:
            parent[max(x, y)] = min(x, y)
    members: dict[tuple, list] = collections.defaultdict(list)
    for node in parent:
        members[find(node)].append(node)
    groups = []
    for nodes in members.values():
        nodes.sort()
        first = hashes[nodes[0]]
        groups.append(
            {
                "images": [[s, i, hamming(first, hashes[s, i])] for s, i in nodes],
                "leak": len({s for s, _ in nodes}) > 1,
            }
        )
    return sorted(groups, key=lambda g: g["images"][0][:2])


def member_paths(pairs: Iterable) -> dict[tuple[str, int], str]:
    """``(split, image_id) -> source path`` of the members of ``pairs`` that carry one."""
    return {(m[0], m[1]): m[3] for a, b, _ in pairs for m in (a, b) if len(m) > 3}


def _band_batches(_split: str, packed: bytes) -> list[tuple[tuple[int, int], bytes]]:
    """``band_keys`` of one shard's members, gathered per key: ``((band, value), packed
    [member, ...])``, at most ``BANDS * 2^width`` elements per shard instead of ``BANDS`` per
    image (the shuffle's cost is per element)."""
    by_key: dict[tuple[int, int], list] = collections.defaultdict(list)
    for member in unpack(packed):
        for key, value in band_keys(member):
            by_key[key].append(value)
    return [(key, pack(members)) for key, members in sorted(by_key.items())]


def _verify_batches(key: tuple[int, int], batches: Iterable[bytes]) -> list[bytes]:
    """``verify_candidates`` of a key's members, from the shards' packed batches, packed:
    one element per key that found any pair."""
    pairs = verify_candidates(key, [m for batch in batches for m in unpack(batch)])
    return [pack(pairs)] if pairs else []


def distinct_pairs(batches: Iterable[bytes]) -> list:
    """The pairs of ``FindNearDuplicates``' packed batches, each once, sorted: a pair found
    under several keys comes out of each of them, equal."""
    return sorted({pair for batch in batches for pair in unpack(batch)})


class FindNearDuplicates(beam.PTransform):
    """Takes the shard writer's ``phashes`` output (per shard, ``(split, packed [(split,
    image_id, hash, path), ...])``); returns the pairs at distance <= ``MAX_DISTANCE`` as packed
    batches of ``(member, member, distance)``, one per band key that found any, in no
    particular order: ``distinct_pairs`` of all of them gives each pair once, sorted.
    Deterministic: which pairs come out depends on the hashes only, never on bundling. Nothing
    is rejected: every written image has a hash.

    A pair sharing several bands is in the batch of each key it shares (at most ``BANDS``;
    images of one hash are paired under band 0 only). Their one reader, the publishing step,
    holds every pair anyway, so it drops the copies (``distinct_pairs``) rather than a second
    shuffle keyed by pair, which cost a shuffled element per pair."""

    def expand(self, phashes: beam.PCollection[Tuple[str, bytes]]) -> beam.PCollection[bytes]:
        return (
            phashes
            | "KeyByBand"
            >> beam.FlatMapTuple(_band_batches).with_output_types(Tuple[Tuple[int, int], bytes])
            | "GroupByBand" >> beam.GroupByKey()
            | "VerifyCandidates" >> beam.FlatMapTuple(_verify_batches).with_output_types(bytes)
        )
