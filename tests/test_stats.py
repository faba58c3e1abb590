"""Statistics: the pure accumulator, its merge laws, and what a build writes."""

import collections
import json
import math
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from coco_beam.transforms.runtime.packing import pack
from coco_beam.transforms.stats.gather import (
    MergeStats,
    add_image,
    add_pixels,
    find_duplicates,
    merge,
    summarize,
)

from helpers import require_coco_tiny

_CATS = {1: {"name": "person", "supercategory": "person"}, 3: {"name": "car"}}


def _rle(h, w, on):
    """A compressed RLE of ``on`` pixels at the start of an ``h`` x ``w`` image."""
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8, order="F")
    m.flat[:on] = 1
    rle = mask_utils.encode(np.asfortranarray(m.reshape(h, w)))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def _image(anns=(), caps=(), hist=None, w=20, h=10, **kw):
    """``add_image``'s arguments, and the image's pixel histogram under ``hist``."""
    args = dict(
        width=w,
        height=h,
        fmt="jpeg",
        mode="RGB",
        exif_orientation=None,
        num_bytes=2048,
        annotations=list(anns),
        captions=list(caps),
        hist=hist or [0] * 768,
    )
    args.update(kw)
    return args


def _add(acc, image):
    image = dict(image)
    add_pixels(acc, image.pop("hist"))
    return add_image(acc, **image)


def _ann(cat, bbox, area, crowd=0, keypoints=None):
    return {
        "category_id": cat,
        "bbox": bbox,
        "area": area,
        "iscrowd": crowd,
        "rle": _rle(10, 20, 30),
        "keypoints": keypoints,
        "num_keypoints": None if keypoints is None else sum(v > 0 for v in keypoints[2::3]),
    }


def test_counts_buckets_and_cooccurrence():
    acc = collections.Counter()
    _add(
        acc,
        _image(
            [
                _ann(1, [0, 0, 4, 5], 20.0),
                _ann(1, [0, 0, 10, 10], 32 * 32.0, crowd=1),
                _ann(3, [5, 5, 10, 5], 96 * 96.0, keypoints=[1, 1, 2, 0, 0, 0]),
            ],
            [{"id": 1, "caption": "a car and two people"}],
        ),
    )
    _add(acc, _image())
    doc = summarize(acc, _CATS)
    assert doc["num_images"] == 2
    assert doc["num_annotations"] == 3
    assert doc["num_crowd"] == 1
    assert doc["num_captions"] == 1
    assert doc["num_images_without_annotations"] == 1
    person, car = doc["categories"]
    assert person == {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "num_instances": 2,
        "num_images": 1,
        "num_crowd": 1,
        "area_small": 1,
        "area_medium": 1,
        "area_large": 0,
    }
    assert (car["num_instances"], car["area_large"], car["supercategory"]) == (1, 1, None)
    assert doc["cooccurrence"] == [[1, 3, 1]]
    assert doc["histograms"]["objects_per_image"]["bins"] == [[0, 1], [3, 1]]
    assert doc["histograms"]["caption_words"]["bins"] == [[5, 1]]
    # A 30-pixel mask in boxes of 100, 50 and 20 pixels, in bins of 0.05.
    ratios = doc["histograms"]["mask_to_bbox_area"]["bins"]
    assert ratios == [[pytest.approx(r), 1] for r in (0.25, 0.55, 1.5)]
    assert doc["keypoints"] == {
        "people_with_keypoints": 1,
        "joint_visibility": [
            {"joint": 0, "v0": 0, "v1": 0, "v2": 1},
            {"joint": 1, "v0": 1, "v1": 0, "v2": 0},
        ],
    }
    assert sum(map(sum, doc["centre_heatmap"]["counts"])) == 3


def test_pixel_mean_and_std_are_the_population_figures():
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (7, 9, 3), dtype=np.uint8) for _ in range(3)]
    acc = collections.Counter()
    for p in pixels:
        hist = Image.fromarray(p).histogram()
        _add(acc, _image(hist=hist, w=9, h=7))
    doc = summarize(acc, {})
    everything = np.concatenate([p.reshape(-1, 3) for p in pixels]).astype(np.float64)
    assert doc["pixel_mean"] == pytest.approx(everything.mean(axis=0).tolist(), rel=1e-15)
    assert doc["pixel_std"] == pytest.approx(everything.std(axis=0).tolist(), rel=1e-12)


def _random_images(seed, n):
    rng = random.Random(seed)
    images = []
    for _ in range(n):
        anns = [
            _ann(
                rng.choice([1, 3]),
                [rng.uniform(0, 15), rng.uniform(0, 8), rng.uniform(0, 6), rng.uniform(0, 3)],
                rng.uniform(0, 10000),
                crowd=rng.random() < 0.2,
            )
            for _ in range(rng.randrange(4))
        ]
        hist = [rng.randrange(3) for _ in range(768)]
        images.append(_image(anns, hist=hist, exif_orientation=rng.choice([None, 1, 6])))
    return images


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 25), st.integers(1, 6))
def test_three_ways_of_merging_agree(seed, n, batches):
    """Sequential, merged per batch, and merged then compacted and re-merged in another order:
    one answer, since the statistics must not depend on bundling or merge order."""
    images = _random_images(seed, n)
    sequential = collections.Counter()
    for image in images:
        _add(sequential, image)
    parts = [collections.Counter() for _ in range(batches)]
    for i, image in enumerate(images):
        _add(parts[i % batches], image)
    per_batch = merge(parts)
    shuffled = parts[:]
    random.Random(seed).shuffle(shuffled)
    fn = MergeStats()
    halves = [
        fn.merge_accumulators([fn.create_accumulator(), *shuffled[: batches // 2]]),
        fn.add_input(fn.create_accumulator(), merge(shuffled[batches // 2 :])),
    ]
    compacted = fn.extract_output(fn.merge_accumulators(halves[::-1]))
    expected = summarize(sequential, _CATS)
    assert summarize(per_batch, _CATS) == expected
    assert summarize(compacted, _CATS) == expected


def test_accumulator_size_does_not_grow_with_images():
    small, large = collections.Counter(), collections.Counter()
    for image in _random_images(1, 50):
        _add(small, image)
    for image in _random_images(1, 50) * 40:
        _add(large, image)
    assert len(large) <= len(small) + 50


def test_extreme_boxes_land_in_outer_bins():
    """Finite, non-negative boxes pass the parse-time checks however large or small; their
    products and ratios overflow or underflow, and must neither raise nor add unbounded bins."""
    acc = collections.Counter()
    for bbox in ([0, 0, 1e200, 1e200], [0, 0, 1e-200, 1e-200], [0, 0, 1e-300, 1e300]):
        _add(acc, _image([_ann(1, bbox, 5.0)]))
    doc = summarize(acc, _CATS)
    assert doc["num_annotations"] == 3
    widths = doc["histograms"]["bbox_width"]["bins"]
    assert widths == [[0, 2], [4096, 1]]
    assert doc["num_zero_size_boxes"] == 1  # 1e-200 squared is 0 in a double
    aspects = [b for b, _ in doc["histograms"]["bbox_aspect_log2"]["bins"]]
    assert aspects == [-4096 * 0.125, 0.0]


def test_duplicates_are_found_across_splits():
    blobs = [pack([("aa1", "val", 1), ("aa2", "val", 2)]), pack([("aa1", "train", 9)])]
    assert find_duplicates(("aa", blobs)) == [
        {"sha256": "aa1", "images": [["train", 9], ["val", 1]]}
    ]


def test_build_writes_stats_that_match_its_rows(synth_build):
    import pyarrow.parquet as pq

    from helpers import shard_files

    run_dir, manifest = synth_build
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    assert manifest["stats"]["path"] == "stats/stats.json"
    rows = pq.read_table(shard_files(run_dir)).to_pylist()
    assert stats["num_images"] == len(rows) == manifest["counts"]["image"]["written"]
    assert stats["num_annotations"] == sum(len(r["annotations"]) for r in rows)
    assert stats["num_captions"] == sum(len(r["captions"]) for r in rows)
    for split, entry in stats["splits"].items():
        assert entry["num_images"] == sum(r["split"] == split for r in rows)
    instances = collections.Counter(a["category_id"] for r in rows for a in r["annotations"])
    assert {c["id"]: c["num_instances"] for c in stats["categories"] if c["num_instances"]} == (
        dict(instances)
    )
    assert stats["modes"] == dict(collections.Counter(r["mode"] for r in rows))


def test_coco_tiny_stats_equal_pycocotools_and_pillow(tmp_path):
    from helpers import run_build

    COCO_TINY = require_coco_tiny()
    run_dir, _ = run_build(f"--coco-root={COCO_TINY}", f"--output={tmp_path}")
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    totals = collections.Counter()
    sums = np.zeros(3, dtype=object)
    squares = np.zeros(3, dtype=object)
    pixels = 0
    for split in ("train2017", "val2017"):
        coco = COCO(str(COCO_TINY / "annotations" / f"instances_{split}.json"))
        entry = stats["splits"][split]
        assert entry["num_images"] == len(coco.getImgIds())
        assert entry["num_annotations"] == len(coco.getAnnIds())
        by_id = {c["id"]: c for c in entry["categories"]}
        for cat_id in coco.getCatIds():
            anns = coco.loadAnns(coco.getAnnIds(catIds=[cat_id]))
            expected = {
                "num_instances": len(anns),
                "num_images": len(coco.getImgIds(catIds=[cat_id])),
                "num_crowd": sum(a["iscrowd"] for a in anns),
                "area_small": sum(a["area"] < 32**2 for a in anns),
                "area_medium": sum(32**2 <= a["area"] < 96**2 for a in anns),
                "area_large": sum(a["area"] >= 96**2 for a in anns),
            }
            assert {k: by_id[cat_id][k] for k in expected} == expected
            totals[cat_id] += len(anns)
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(COCO_TINY / split / image["file_name"]) as im:
                rgb = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.int64)
            sums += rgb.sum(axis=0).astype(object)
            squares += (rgb * rgb).sum(axis=0).astype(object)
            pixels += rgb.shape[0]
    assert {c["id"]: c["num_instances"] for c in stats["categories"]} == {
        k: v for k, v in totals.items()
    } | {c["id"]: 0 for c in stats["categories"] if c["id"] not in totals}
    mean = [int(s) / pixels for s in sums]
    std = [
        math.sqrt((pixels * int(q) - int(s) ** 2) / pixels**2)
        for s, q in zip(sums, squares, strict=True)
    ]
    assert stats["pixel_mean"] == mean
    assert stats["pixel_std"] == pytest.approx(std, rel=1e-12)
    assert stats["num_pixels"] == pixels


def test_no_statistics_writes_the_same_shards_and_no_stats(synth_root, synth_build, tmp_path):
    from helpers import run_build, shard_files

    run_dir, manifest = synth_build
    bare_dir, bare = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--num-shards=2", "--no-statistics"
    )
    assert bare["stats"] is None and not os.path.exists(os.path.join(bare_dir, "stats"))
    assert bare["settings"]["statistics"] is False
    assert [s["sha256"] for s in bare["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert len(shard_files(bare_dir)) == len(shard_files(run_dir))
