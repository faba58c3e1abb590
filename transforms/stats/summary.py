"""The statistics document (``stats.json``) of the accumulators: the figures a person reads.

Pure: ``summarize`` turns one ``StatsAccumulator`` into the document's figures, and
``stats_document`` assembles the whole document from each split's accumulator and the images
with identical bytes.

Guarantees of ``summarize``:
  * counts are exact; COCO's area buckets use the annotation's ``area``: small below 32*32,
    medium below 96*96, large from there on;
  * ``pixel_mean`` and ``pixel_std`` are the population mean and standard deviation over every
    pixel of every written image, per RGB channel (0-255), computed from exact integer sums;
  * histograms have fixed bins (``schemas.stats.HISTOGRAMS``); quantiles are read from them and
    are exact to within one bin (1 px for box sides);
  * statistics describe what was written: a rejected image or annotation is not in them (the
    manifest counts those);
  * the same accumulator gives the same document, key order included.
"""

from __future__ import annotations

import collections
import itertools
import math

from coco_beam.schemas.stats import HISTOGRAMS
from coco_beam.transforms.stats.accumulators import StatsAccumulator, merge
from coco_beam.transforms.stats.examples import examples_document
from coco_beam.transforms.stats.families import GRID, SIZE_CELL, PanopticStats, PixelStats
from coco_beam.transforms.stats.near_duplicates import near_duplicate_groups

__all__ = ["never_together", "stats_document", "summarize"]

_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_AREA_BUCKETS = ("area_small", "area_medium", "area_large")
# "Which common categories never appear together?" is asked of the 20 in most images: COCO's
# 80 give 3,160 pairs, most of them rare and absent for want of data rather than by nature.
_COMMON_CATEGORIES = 20


def _histogram(bins_counts: collections.Counter, name: str) -> dict:
    width, unit = HISTOGRAMS[name]
    bins = sorted(bins_counts.items())
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


def _pixels(pixels: PixelStats) -> tuple[list, list]:
    n = pixels.count
    if not n:
        return [None] * 3, [None] * 3
    means, stds = [], []
    for total, squares in zip(pixels.sums, pixels.squares, strict=True):
        # Exact integers until this one division each: n * sum(x^2) - sum(x)^2 >= 0.
        means.append(total / n)
        stds.append(math.sqrt((n * squares - total * total) / (n * n)))
    return means, stds


def _categorical(counts: collections.Counter) -> dict:
    """Values as strings, in the order of their ``repr`` (the document's order since its
    first version, when it sorted the keys ``(family, value)`` by their text)."""
    return {str(value): n for value, n in sorted(counts.items(), key=lambda kv: repr(kv[0]))}


def _categories(acc: StatsAccumulator, categories: dict[int, dict]) -> list[dict]:
    stats = acc.categories
    buckets = (stats.small, stats.medium, stats.large)
    return [
        {
            "id": cat_id,
            "name": categories[cat_id]["name"],
            "supercategory": categories[cat_id].get("supercategory"),
            "num_instances": stats.instances[cat_id],
            "num_images": stats.images[cat_id],
            "num_crowd": stats.crowd[cat_id],
            **{name: bucket[cat_id] for name, bucket in zip(_AREA_BUCKETS, buckets, strict=True)},
        }
        for cat_id in sorted(categories)
    ]


def _keypoints(acc: StatsAccumulator) -> dict:
    joints = collections.defaultdict(lambda: [0, 0, 0])
    for (joint, visibility), n in acc.keypoints.joints.items():
        if 0 <= visibility <= 2:
            joints[joint][visibility] += n
    return {
        "people_with_keypoints": acc.keypoints.num_people,
        "joint_visibility": [
            {"joint": j, "v0": v[0], "v1": v[1], "v2": v[2]} for j, v in sorted(joints.items())
        ],
    }


def _panoptic(pan: PanopticStats, categories: dict[int, dict]) -> dict:
    """Pixel shares are of every pixel of the images with a panoptic record, void included."""
    pixels = pan.num_pixels

    def share(n: int) -> float | None:
        return n / pixels if pixels else None

    cats = []
    for cat_id in sorted(pan.segments):
        cat = categories.get(cat_id, {})
        cats.append(
            {
                "id": cat_id,
                "name": cat.get("name"),
                "isthing": cat.get("isthing"),
                "num_segments": pan.segments[cat_id],
                "pixels": pan.pixels[cat_id],
                "pixel_share": share(pan.pixels[cat_id]),
            }
        )
    kinds = {
        kind: {
            "segments": pan.kind_segments[kind],
            "pixels": pan.kind_pixels[kind],
            "pixel_share": share(pan.kind_pixels[kind]),
        }
        for kind in ("thing", "stuff")
    }
    return {
        "num_images": pan.num_images,
        "num_segments": sum(c["num_segments"] for c in cats),
        "num_pixels": pixels,
        "void_pixels": pan.void_pixels,
        "void_share": share(pan.void_pixels),
        "things": kinds["thing"],
        "stuff": kinds["stuff"],
        "categories": cats,
    }


def summarize(acc: StatsAccumulator, categories: dict[int, dict]) -> dict:
    """The JSON document of one accumulator: see ``schemas.stats`` and the README for the keys.
    ``categories``: id -> the category as the annotation files describe it."""
    means, stds = _pixels(acc.pixels)
    centres = acc.boxes.centres
    histograms = acc.histograms()
    return {
        "num_images": acc.properties.num_images,
        "num_annotations": acc.categories.num_annotations,
        "num_crowd": acc.categories.num_crowd,
        "num_captions": acc.captions.num_captions,
        "num_images_without_annotations": acc.categories.num_images_without_annotations,
        "num_zero_size_boxes": acc.boxes.num_zero_size,
        "num_boxes_outside_image": acc.boxes.num_outside_image,
        "num_pixels": acc.sizes.num_pixels,
        "pixel_mean": means,
        "pixel_std": stds,
        "categories": _categories(acc, categories),
        "cooccurrence": sorted([a, b, n] for (a, b), n in acc.cooccurrence.pairs.items()),
        "centre_heatmap": {
            "grid": GRID,
            "counts": [[centres[col, row] for col in range(GRID)] for row in range(GRID)],
        },
        "image_sizes_2d": sorted(
            [w * SIZE_CELL, h * SIZE_CELL, n] for (w, h), n in acc.sizes.cells.items()
        ),
        "formats": _categorical(acc.properties.formats),
        "modes": _categorical(acc.properties.modes),
        "exif_orientations": _categorical(acc.properties.exif_orientations),
        # Warnings that were not rejections, by flag: images' and annotations' together.
        "flags": _categorical(acc.flags.counts),
        "keypoints": _keypoints(acc),
        "histograms": {name: _histogram(histograms[name], name) for name in HISTOGRAMS},
        "panoptic": _panoptic(acc.panoptic, categories),
    }


def never_together(categories: list[dict], cooccurrence: list, top: int = _COMMON_CATEGORIES):
    """Among the ``top`` categories in most images (ties: the smaller id), the pairs no image
    holds both of: ``{"among": [ids], "pairs": [[a, b], ...]}`` with ``a < b``, in order.
    ``categories`` and ``cooccurrence``: as ``summarize`` gives them."""
    held = [c for c in categories if c["num_images"]]
    common = sorted(held, key=lambda c: (-c["num_images"], c["id"]))[:top]
    ids = sorted(c["id"] for c in common)
    together = {(a, b) for a, b, n in cooccurrence if n}
    pairs = [[a, b] for a, b in itertools.combinations(ids, 2) if (a, b) not in together]
    return {"among": ids, "pairs": pairs}


def stats_document(
    per_split: dict, categories: dict, duplicates: list, near_pairs: list | None = ()
) -> dict:
    """``stats.json``: the overall summary, the same keys under ``splits.<name>``, and the
    images with identical bytes (``duplicates``), those across splits also as ``leaks``; the
    groups of near-duplicate images joined by ``near_pairs`` (``near_duplicates``, see
    ``near_duplicates.near_duplicate_groups``), those across splits also as
    ``near_duplicate_leaks``, both null when ``near_pairs`` is None (not searched); the
    common categories no image holds together (``never_together``) and the report's example
    images by id (``examples``, see ``examples.examples_document``). ``per_split``: split ->
    its accumulator (left as it is); ``categories``: split -> id -> category."""
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
    merged = merge(per_split.values())
    doc = summarize(merged, union)
    doc["never_together"] = never_together(doc["categories"], doc["cooccurrence"])
    # The report's example images, named (their thumbnails are the page's, not this file's).
    doc["examples"] = examples_document(merged.examples)
    doc["duplicates"] = duplicates
    doc["leaks"] = [d for d in duplicates if len({split for split, _ in d["images"]}) > 1]
    if near_pairs is None:
        doc["near_duplicates"] = doc["near_duplicate_leaks"] = None
    else:
        doc["near_duplicates"] = near_duplicate_groups(near_pairs)
        doc["near_duplicate_leaks"] = [g for g in doc["near_duplicates"] if g["leak"]]
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
