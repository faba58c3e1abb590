"""Dataset statistics as one small, mergeable accumulator per split, over a pure core.

An accumulator is a ``collections.Counter`` whose keys name what is counted: ``("n",
"images")``, ``("cat", category_id, "instances")``, ``("h", histogram, bin)``, ``("pair", a,
b)``, ``("px", channel, "n" | "sum" | "sq")``, ``("joint", index, visibility)``. Merging is
adding counters, so it is exact, associative and commutative: the result does not depend on
bundling, workers or merge order. Its size is bounded by the bins and categories, never by the
number of images (a COCO split: a few thousand keys).

Guarantees of ``summarize``:
  * counts are exact; COCO's area buckets use the annotation's ``area``: small below 32*32,
    medium below 96*96, large from there on;
  * ``pixel_mean`` and ``pixel_std`` are the population mean and standard deviation over every
    pixel of every written image, per RGB channel (0-255), computed from exact integer sums;
  * histograms have fixed bins, stated next to each; quantiles are read from them and are exact
    to within one bin (1 px for box sides);
  * statistics describe what was written: a rejected image or annotation is not in them (the
    manifest counts those).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

import apache_beam as beam
from pycocotools import mask as mask_utils

from coco_beam.transforms.images.decode import pixel_sums
from coco_beam.transforms.runtime.packing import unpack

__all__ = [
    "GatherStatistics",
    "HEADLINE_COUNTS",
    "MergeStats",
    "add_image",
    "add_pixel_sums",
    "add_pixels",
    "find_duplicates",
    "merge",
    "pixel_sums",
    "stats_document",
    "summarize",
]

# The document's top-level counts, in order (the tables and comparisons list them too).
HEADLINE_COUNTS = (
    "num_images",
    "num_annotations",
    "num_crowd",
    "num_captions",
    "num_images_without_annotations",
    "num_zero_size_boxes",
    "num_boxes_outside_image",
    "num_pixels",
)

_SMALL, _MEDIUM = 32**2, 96**2
_GRID = 16  # object centres: a 16 x 16 heatmap over the normalized image
_MAX_COUNT_BIN = 100  # per-image counts and caption words: exact up to 99, then "100+"
_MAX_BIN = 4096  # any histogram: bins k with |k| < 4096, the outermost holding everything past
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

# name -> (bin width, unit) of the one-dimensional histograms; bin k holds [k*w, (k+1)*w).
HISTOGRAMS = {
    "objects_per_image": (1, "objects"),
    "categories_per_image": (1, "categories"),
    "bbox_width": (1, "px"),
    "bbox_height": (1, "px"),
    "bbox_aspect_log2": (0.125, "log2(width / height)"),
    "bbox_relative_size": (0.01, "sqrt(box area / image area)"),
    "mask_to_bbox_area": (0.05, "mask area / box area"),
    "image_width": (16, "px"),
    "image_height": (16, "px"),
    "image_aspect_log2": (0.125, "log2(width / height)"),
    "file_size_log2_kib": (0.25, "log2(KiB)"),
    "caption_words": (1, "words"),
}


def _bin(value: float, width: float) -> int:
    """The bin of ``value``; values past ``_MAX_BIN`` bins from zero (a box side of 10^200 px,
    an overflow to infinity) fall in the outermost bin, so bins stay bounded and nothing a
    checked record holds can raise here."""
    q = value / width
    if not -_MAX_BIN < q < _MAX_BIN:
        return _MAX_BIN if q > 0 else -_MAX_BIN
    return math.floor(q)


def _count_bin(n: int) -> int:
    return min(n, _MAX_COUNT_BIN)


def add_image(
    acc: collections.Counter,
    *,
    width: int,
    height: int,
    fmt: str,
    mode: str,
    exif_orientation: int | None,
    num_bytes: int,
    annotations: list[dict],
    captions: list[dict],
    panoptic=None,
    flags=(),
) -> collections.Counter:
    """Adds one written image (its row's annotations carry ``rle``) to ``acc``; returns it.
    Its pixels are added with ``add_pixel_sums`` (or ``add_pixels``, from counts).
    ``panoptic``: its checked panoptic record (``images.panoptic.PanopticFacts``), if it has
    one. ``flags``: the image's warnings (its annotations carry their own), counted by name.

    Keys counted once are gathered in a list and counted by ``Counter.update`` (a C loop): an
    image of COCO's has about a hundred of them, and this runs once per image written."""
    categories = sorted({a["category_id"] for a in annotations})
    keys = [
        ("n", "images"),
        ("format", fmt),
        ("mode", mode),
        ("exif_orientation", exif_orientation or 0),
        ("h", "image_width", _bin(width, 16)),
        ("h", "image_height", _bin(height, 16)),
        ("h", "image_aspect_log2", _bin(math.log2(width / height), 0.125)),
        ("h", "file_size_log2_kib", _bin(math.log2(max(num_bytes, 1) / 1024), 0.25)),
        ("size2d", width // 64, height // 64),
        ("h", "objects_per_image", _count_bin(len(annotations))),
        ("h", "categories_per_image", _count_bin(len(categories))),
    ]
    keys += [("flag", flag) for flag in flags]
    if not annotations:
        keys.append(("n", "images_without_annotations"))
    keys += [("cat", cat, "images") for cat in categories]
    keys += [("pair", a, b) for i, a in enumerate(categories) for b in categories[i + 1 :]]
    # Mask areas in one call per image (a call per mask costs twice as much).
    masked = [a["rle"] for a in annotations if a["bbox"][2] * a["bbox"][3] > 0]
    mask_areas = iter(
        mask_utils.area([{"size": r["size"], "counts": r["counts"]} for r in masked])
        if masked
        else ()
    )
    for ann in annotations:
        _annotation_keys(keys, ann, width, height, mask_areas)
    keys += [("h", "caption_words", _count_bin(len(c["caption"].split()))) for c in captions]
    acc.update(keys)
    acc["n", "pixels"] += width * height
    acc["n", "annotations"] += len(annotations)
    acc["n", "captions"] += len(captions)
    if panoptic is not None:
        acc["n", "panoptic_images"] += 1
        acc["n", "panoptic_pixels"] += width * height
        acc["n", "panoptic_void_pixels"] += panoptic.void_pixels
        for seg in panoptic.segments:
            kind = "thing" if seg["isthing"] else "stuff"
            acc["pan", seg["category_id"], "segments"] += 1
            acc["pan", seg["category_id"], "pixels"] += seg["area"]
            acc["pan_kind", kind, "segments"] += 1
            acc["pan_kind", kind, "pixels"] += seg["area"]
    return acc


def add_pixel_sums(
    acc: collections.Counter, n: int, sums: Iterable[int], squares: Iterable[int]
) -> collections.Counter:
    """Adds the exact pixel sums of one or many images (see ``pixel_sums``)."""
    if n:
        for channel, (s, q) in enumerate(zip(sums, squares, strict=True)):
            acc["px", channel, "n"] += n
            acc["px", channel, "sum"] += s
            acc["px", channel, "sq"] += q
    return acc


def add_pixels(acc: collections.Counter, histogram: Iterable[int]) -> collections.Counter:
    """Adds 768 per-channel pixel counts (R, G, B; 256 values each), e.g. the sum of many
    images' pixel histograms (``transforms.images.decode.rgb_histogram``)."""
    return add_pixel_sums(acc, *pixel_sums(histogram))


def _annotation_keys(keys: list, ann: dict, width: int, height: int, mask_areas) -> None:
    """Appends the keys one annotation counts once each; ``mask_areas`` yields the mask area of
    each annotation with a box of positive area, in order."""
    cat = ann["category_id"]
    keys.append(("cat", cat, "instances"))
    if ann["iscrowd"]:
        keys += (("n", "crowd"), ("cat", cat, "crowd"))
    area = ann["area"]
    bucket = "area_small" if area < _SMALL else "area_medium" if area < _MEDIUM else "area_large"
    x, y, w, h = ann["bbox"]
    keys += (
        ("cat", cat, bucket),
        ("h", "bbox_width", _bin(w, 1)),
        ("h", "bbox_height", _bin(h, 1)),
    )
    box = w * h  # may underflow to 0 or overflow to infinity for extreme sides
    if box > 0:
        mask_area = float(next(mask_areas))
        keys += (
            # A difference of logs: w / h itself can underflow to 0 or overflow.
            ("h", "bbox_aspect_log2", _bin(math.log2(w) - math.log2(h), 0.125)),
            ("h", "mask_to_bbox_area", _bin(mask_area / box, 0.05)),
        )
    else:
        keys.append(("n", "zero_size_boxes"))
    flags = ann.get("flags", ())
    keys += [("flag", flag) for flag in flags]
    if "bbox_outside_image" in flags:
        keys.append(("n", "boxes_outside_image"))
    cx = min(max((x + w / 2) / width, 0.0), 1.0)
    cy = min(max((y + h / 2) / height, 0.0), 1.0)
    keys += (
        ("h", "bbox_relative_size", _bin(math.sqrt(max(box, 0) / (width * height)), 0.01)),
        ("centre", min(int(cx * _GRID), _GRID - 1), min(int(cy * _GRID), _GRID - 1)),
    )
    keypoints = ann.get("keypoints")
    if keypoints:
        if ann.get("num_keypoints"):
            keys.append(("n", "people_with_keypoints"))
        keys += [("joint", j, int(v)) for j, v in enumerate(keypoints[2::3])]


def merge(accumulators: Iterable[collections.Counter]) -> collections.Counter:
    merged = collections.Counter()
    for acc in accumulators:
        merged.update(acc)
    return merged


def _histogram(acc: collections.Counter, name: str) -> dict:
    width, unit = HISTOGRAMS[name]
    bins = sorted((k[2], n) for k, n in acc.items() if k[0] == "h" and k[1] == name)
    total = sum(n for _, n in bins)
    quantiles = {}
    if total:
        running, i = 0, 0
        for q in _QUANTILES:
            target = q * total
            while running + bins[i][1] < target:
                running += bins[i][1]
                i += 1
            quantiles[str(q)] = bins[i][0] * width
    return {
        "bin_width": width,
        "unit": unit,
        "bins": [[b * width, n] for b, n in bins],
        "quantiles": quantiles,
    }


def _pixels(acc: collections.Counter) -> tuple[list, list]:
    means, stds = [], []
    for channel in range(3):
        n = acc["px", channel, "n"]
        if not n:
            means.append(None)
            stds.append(None)
            continue
        total, squares = acc["px", channel, "sum"], acc["px", channel, "sq"]
        # Exact integers until this one division each: n * sum(x^2) - sum(x)^2 >= 0.
        means.append(total / n)
        stds.append(math.sqrt((n * squares - total * total) / (n * n)))
    return means, stds


def summarize(acc: collections.Counter, categories: dict[int, dict]) -> dict:
    """The JSON document of one accumulator: see ``schemas`` and the README for the keys."""
    means, stds = _pixels(acc)
    cats = []
    for cat_id in sorted(categories):
        cat = categories[cat_id]
        cats.append(
            {
                "id": cat_id,
                "name": cat["name"],
                "supercategory": cat.get("supercategory"),
                **{
                    f"num_{k}" if k in ("instances", "images", "crowd") else k: acc[
                        "cat", cat_id, k
                    ]
                    for k in (
                        "instances",
                        "images",
                        "crowd",
                        "area_small",
                        "area_medium",
                        "area_large",
                    )
                },
            }
        )
    joints = collections.defaultdict(lambda: [0, 0, 0])
    for key, n in acc.items():
        if key[0] == "joint" and 0 <= key[2] <= 2:
            joints[key[1]][key[2]] += n
    return {
        "num_images": acc["n", "images"],
        "num_annotations": acc["n", "annotations"],
        "num_crowd": acc["n", "crowd"],
        "num_captions": acc["n", "captions"],
        "num_images_without_annotations": acc["n", "images_without_annotations"],
        "num_zero_size_boxes": acc["n", "zero_size_boxes"],
        "num_boxes_outside_image": acc["n", "boxes_outside_image"],
        "num_pixels": acc["n", "pixels"],
        "pixel_mean": means,
        "pixel_std": stds,
        "categories": cats,
        "cooccurrence": sorted([k[1], k[2], n] for k, n in acc.items() if k[0] == "pair"),
        "centre_heatmap": {
            "grid": _GRID,
            "counts": [[acc["centre", col, row] for col in range(_GRID)] for row in range(_GRID)],
        },
        "image_sizes_2d": sorted(
            [k[1] * 64, k[2] * 64, n] for k, n in acc.items() if k[0] == "size2d"
        ),
        "formats": _categorical(acc, "format"),
        "modes": _categorical(acc, "mode"),
        "exif_orientations": _categorical(acc, "exif_orientation"),
        # Warnings that were not rejections, by flag: images' and annotations' together.
        "flags": _categorical(acc, "flag"),
        "keypoints": {
            "people_with_keypoints": acc["n", "people_with_keypoints"],
            "joint_visibility": [
                {"joint": j, "v0": v[0], "v1": v[1], "v2": v[2]} for j, v in sorted(joints.items())
            ],
        },
        "histograms": {name: _histogram(acc, name) for name in HISTOGRAMS},
        "panoptic": _panoptic(acc, categories),
    }


def _panoptic(acc: collections.Counter, categories: dict[int, dict]) -> dict:
    """Pixel shares are of every pixel of the images with a panoptic record, void included."""
    pixels = acc["n", "panoptic_pixels"]

    def share(n: int) -> float | None:
        return n / pixels if pixels else None

    cats = []
    for cat_id in sorted({k[1] for k in acc if k[0] == "pan"}):
        cat = categories.get(cat_id, {})
        n = acc["pan", cat_id, "pixels"]
        cats.append(
            {
                "id": cat_id,
                "name": cat.get("name"),
                "isthing": cat.get("isthing"),
                "num_segments": acc["pan", cat_id, "segments"],
                "pixels": n,
                "pixel_share": share(n),
            }
        )
    kinds = {
        kind: {
            "segments": acc["pan_kind", kind, "segments"],
            "pixels": acc["pan_kind", kind, "pixels"],
            "pixel_share": share(acc["pan_kind", kind, "pixels"]),
        }
        for kind in ("thing", "stuff")
    }
    return {
        "num_images": acc["n", "panoptic_images"],
        "num_segments": sum(c["num_segments"] for c in cats),
        "num_pixels": pixels,
        "void_pixels": acc["n", "panoptic_void_pixels"],
        "void_share": share(acc["n", "panoptic_void_pixels"]),
        "things": kinds["thing"],
        "stuff": kinds["stuff"],
        "categories": cats,
    }


def stats_document(per_split: dict, categories: dict, duplicates: list) -> dict:
    """``stats.json``: the overall summary, the same keys under ``splits.<name>``, and the
    images with identical bytes (``duplicates``), those across splits also as ``leaks``."""
    union: dict[int, dict] = {}
    for split in sorted(categories):
        for cat_id, cat in categories[split].items():
            merged = union.setdefault(cat_id, dict(cat))
            # A test split's image_info file knows names only; another split's files may
            # know the joints or whether it is a thing.
            for key, value in cat.items():
                if merged.get(key) is None and value is not None:
                    merged[key] = value
    duplicates = sorted(duplicates, key=lambda d: d["sha256"])
    doc = summarize(merge(per_split.values()), union)
    doc["duplicates"] = duplicates
    doc["leaks"] = [d for d in duplicates if len({split for split, _ in d["images"]}) > 1]
    doc["splits"] = {}
    for split in sorted(per_split):
        entry = summarize(per_split[split], categories.get(split, {}))
        entry["duplicates"] = [
            {"sha256": d["sha256"], "images": inside}
            for d in duplicates
            if len(inside := [im for im in d["images"] if im[0] == split]) > 1
        ]
        doc["splits"][split] = entry
    return doc


def _categorical(acc: collections.Counter, name: str) -> dict:
    return {str(k[1]): n for k, n in sorted(acc.items(), key=lambda kv: str(kv[0])) if k[0] == name}


class MergeStats(beam.CombineFn):
    """Merges per-shard accumulators of one key (a split) into one. The accumulator is the same
    small counter whether it holds one image or a million."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, accumulator, partial):
        accumulator.update(partial)
        return accumulator

    def merge_accumulators(self, accumulators):
        return merge(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def find_duplicates(kv) -> list[dict]:
    """From ``(sha256 prefix, [packed [(sha256, split, image_id), ...], ...])``: one entry per
    content hash held by more than one image, with every image that holds it."""
    _, packed = kv
    by_hash: dict[str, list] = collections.defaultdict(list)
    for blob in packed:
        for sha, split, image_id in unpack(blob):
            by_hash[sha].append([split, image_id])
    return [
        {"sha256": sha, "images": sorted(images)}
        for sha, images in sorted(by_hash.items())
        if len(images) > 1
    ]


class GatherStatistics(beam.PTransform):
    """Takes the writer's ``stats`` and ``digests`` outputs; returns ``stats`` (``(split,
    accumulator)``, one per split, merged by ``MergeStats``) and ``duplicates`` (one dict per
    content hash shared by several images, grouped by hash prefix: no step sees every hash)."""

    def expand(self, inputs):
        stats, digests = inputs
        return {
            "stats": stats | "MergePerSplit" >> beam.CombinePerKey(MergeStats()),
            "duplicates": (
                digests
                | "GroupByHashPrefix" >> beam.GroupByKey()
                | "FindDuplicates" >> beam.FlatMap(find_duplicates)
            ),
        }
