"""The report's pictures that only publishing can choose, and the example thumbnails gathered.

The example thumbnails (``stats.examples``) come from the shard writers' decode. Duplicate
groups are known only once every shard is written, so the publishing step reads back their
few images from their source files (the writer sends each image's path along with its
perceptual hash; identical files have identical hashes, so every duplicate group's images are
among the near-duplicate pairs) and makes their thumbnails
(``images.thumbnails.plain_thumbnail_of``: a JPEG decoded at a reduced scale), a few at once
in threads. A bounded few are read (``wanted_images``: one image of each exact group and a
few of each near-duplicate group, of the groups the page draws), the same in a build of any
format and in ``coco-beam stats``.

Guarantees: the pictures depend on the statistics document and the source images only, so
the same data gives the same page, whatever the formats written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.transforms.images.thumbnails import plain_thumbnail_of
from coco_beam.transforms.stats.examples import ExampleSets, example_pictures
from coco_beam.transforms.stats.gallery import (
    MAX_PICTURED_GROUPS,
    NEAR_GROUP_PICTURES,
    group_picture_ids,
)

__all__ = ["report_pictures", "wanted_images"]

# Images read and thumbnailed at once: reading waits on storage and decoding releases the GIL.
_READ_THREADS = 4


def wanted_images(doc: dict) -> list[tuple[str, int]]:
    """``(split, image id)`` of the duplicate groups' images the page draws, in the page's
    order (leaks first), of the first ``MAX_PICTURED_GROUPS`` groups: the first image of a
    group of identical bytes, the first ``NEAR_GROUP_PICTURES`` of a near-duplicate group."""
    dups, leaks = doc.get("duplicates", []), doc.get("leaks", [])
    leak_hashes = {d["sha256"] for d in leaks}
    groups = leaks + [d for d in dups if d["sha256"] not in leak_hashes]
    wanted = [tuple(d["images"][0]) for d in groups[:MAX_PICTURED_GROUPS] if d["images"]]
    near = doc.get("near_duplicates") or []
    near = [g for g in near if g["leak"]] + [g for g in near if not g["leak"]]
    for g in near[:MAX_PICTURED_GROUPS]:
        wanted += [(s, i) for s, i, _ in g["images"][:NEAR_GROUP_PICTURES]]
    return list(dict.fromkeys(wanted))


def _thumbnail_at(path: str) -> bytes:
    """The plain thumbnail of the image at ``path``, read from where it came from."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return plain_thumbnail_of(f.read())


def report_pictures(doc: dict, per_split: dict, paths: dict[tuple[str, int], str]) -> dict:
    """Every picture of the page: the example thumbnails of the splits' accumulators
    (``per_split``: split -> ``StatsAccumulator``, left as they are) and the duplicate
    groups' images read back from their source files (``paths``: ``(split, image id) ->
    path``, as ``stats.near_duplicates.member_paths`` gives them)."""
    examples = ExampleSets()
    for split in sorted(per_split):
        examples.merge(per_split[split].examples)
    pictures = example_pictures(examples)
    wanted = [key for key in wanted_images(doc) if key in paths]
    if wanted:
        with ThreadPoolExecutor(min(_READ_THREADS, len(wanted))) as pool:
            thumbs = pool.map(_thumbnail_at, [paths[key] for key in wanted])
            for (split, image_id), plain in zip(wanted, thumbs, strict=True):
                [(pid, _)] = group_picture_ids([[split, image_id]])
                pictures[pid] = plain
    return pictures
