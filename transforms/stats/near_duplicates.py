"""Near-duplicate images: pairs of perceptual hashes a few bits apart, found without comparing
all pairs, and the groups they connect.

Each written image has a 64-bit DCT hash (``transforms.images.phash``), computed by the shard
writer from the decode it already does, or kept in the build state for an image a rebuild does
not decode again. ``FindNearDuplicates`` finds every pair at Hamming distance at most
``MAX_DISTANCE``:

  * **bands**: the 64 bits are cut into ``MAX_DISTANCE + 1`` bands (``BANDS``). A pair at
    distance <= d differs in at most d bits, so (pigeonhole) at least one of the d + 1 bands
    is equal in both: each image is keyed by ``(band, band value)`` once per band, and only
    images sharing a key are compared (a ``GroupByKey``, so no step holds every hash);
  * **verification**: within a key, the exact distance of every candidate is computed with
    numpy (vectorized XOR and popcount), and a pair is kept in the lowest band both share
    only, so each pair comes out once whatever bands it shares;
  * **a very common band value** stays bounded two ways. Images with the *same* hash (flat,
    blank or byte-identical images: what makes one value common in practice) collapse to one
    representative first, each joined to it at distance 0, so a thousand blank images cost a
    thousand steps, not half a million comparisons. The distinct hashes of a key are compared
    in blocks of ``_BLOCK_CELLS`` distances, so memory stays bounded however large the key.

Cost: ``d + 1`` keyed copies per image through one shuffle (linear), and the comparisons of
the images that share a key. With d = 12 a band is 4 or 5 bits, so two unrelated hashes share
one of the 13 bands about a third of the time: the candidates are a fixed share of all pairs,
compared at numpy's speed, so that part grows with the square of the images with a small
constant. Measured (one core, random balanced hashes, banding and groups together): 0.05 s for
3,040 images, 0.46 s for 12,160, 3.7 s for 48,640, against a build's 7 ms of CPU per image
(0.2%, 0.5%, 1%; about 3% at COCO's 123,000 images). A smaller threshold widens the bands and
shrinks the constant (d = 5: six 10- or 11-bit bands, 1 pair in 250) but misses cropped copies.

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
from coco_beam.transforms.runtime.packing import unpack

__all__ = [
    "BANDS",
    "MAX_DISTANCE",
    "FindNearDuplicates",
    "band_keys",
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

# (split, image_id, hash as 16 hex digits, the image's source path): the path rides along so
# that publishing can read the few images of the groups it draws from where they came from
# (the same in a build of any format and in ``coco-beam stats``).
Member = Tuple[str, int, str, str]
# (first member, second member, distance), the members in sorted order
Pair = Tuple[Member, Member, int]


def _band_values(value: int) -> tuple[int, ...]:
    return tuple((value >> shift) & ((1 << width) - 1) for shift, width in BANDS)


def band_keys(member: tuple[str, int, str]) -> list[tuple[tuple[int, int], tuple]]:
    """``((band, band value), member)`` for every band of the member's hash."""
    values = _band_values(int(member[2], 16))
    return [((band, value), member) for band, value in enumerate(values)]


def _first_shared_band(a: int, b: int) -> int:
    return next(
        band
        for band, (x, y) in enumerate(zip(_band_values(a), _band_values(b), strict=True))
        if x == y
    )


def verify_candidates(
    key: tuple[int, int], members: Iterable[tuple[str, int, str]]
) -> list[tuple[tuple, tuple, int]]:
    """The pairs at distance <= ``MAX_DISTANCE`` among the members of one key whose lowest
    shared band is this key's band (so a pair is found under one key only). Images with the
    same hash are joined to the first of them (by split and image id) at distance 0, in band
    0's keys only; distinct hashes are compared by their first images."""
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
        if band == 0:  # equal hashes share every band: band 0 is their lowest
            pairs.extend((same[0], other, 0) for other in same[1:])
    values = np.array([int(h, 16) for h in hashes], np.uint64)
    rows = max(1, _BLOCK_CELLS // max(1, len(values)))
    for start in range(0, len(values), rows):
        block = values[start : start + rows]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        above = np.arange(len(values))[None, :] > np.arange(start, start + len(block))[:, None]
        for i, j in zip(*np.nonzero((distances <= MAX_DISTANCE) & above), strict=True):
            i, j = int(i) + start, int(j)
            a, b = int(values[i]), int(values[j])
            if _first_shared_band(a, b) == band:
                first, second = sorted((firsts[i], firsts[j]))
                pairs.append((first, second, int(distances[i - start, j])))
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


def _members(_split: str, packed: bytes) -> list[tuple[str, int, str, str]]:
    return unpack(packed)


class FindNearDuplicates(beam.PTransform):
    """Takes the shard writer's ``phashes`` output (per shard, ``(split, packed [(split,
    image_id, hash, path), ...])``); returns the pairs at distance <= ``MAX_DISTANCE`` as
    ``(member, member, distance)``, each pair once, in no particular order
    (``near_duplicate_groups`` orders them). Deterministic: which pairs come out depends on
    the hashes only, never on bundling. Nothing is rejected: every written image has a hash."""

    def expand(self, phashes: beam.PCollection[Tuple[str, bytes]]) -> beam.PCollection[Pair]:
        return (
            phashes
            | "Unpack" >> beam.FlatMapTuple(_members).with_output_types(Member)
            | "KeyByBand"
            >> beam.FlatMap(band_keys).with_output_types(Tuple[Tuple[int, int], Member])
            | "GroupByBand" >> beam.GroupByKey()
            | "VerifyCandidates" >> beam.FlatMapTuple(verify_candidates).with_output_types(Pair)
        )
