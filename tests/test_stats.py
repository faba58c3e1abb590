"""Statistics: the pure accumulators, their merge laws, gathering them in a pipeline, and what
a build writes."""

import collections
import copy
import json
import math
import os
import pickle
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from coco_beam.transforms.runtime.packing import pack
from coco_beam.transforms.stats.accumulators import (
    StatsAccumulator,
    add_image,
    add_pixels,
    merge,
    new_accumulator,
)
from coco_beam.transforms.stats.gather import GatherStatistics, MergeStats, find_duplicates
from coco_beam.transforms.stats.summary import summarize

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
    acc = new_accumulator()
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
    acc = new_accumulator()
    for p in pixels:
        hist = Image.fromarray(p).histogram()
        _add(acc, _image(hist=hist, w=9, h=7))
    doc = summarize(acc, {})
    everything = np.concatenate([p.reshape(-1, 3) for p in pixels]).astype(np.float64)
    assert doc["pixel_mean"] == pytest.approx(everything.mean(axis=0).tolist(), rel=1e-15)
    assert doc["pixel_std"] == pytest.approx(everything.std(axis=0).tolist(), rel=1e-12)


def _random_images(seed, n, *, varied=False):
    """``n`` images of 20 x 10 px with up to three objects of categories 1 and 3; ``varied``:
    of 16 to 1024 px a side, with up to twelve objects of twelve categories."""
    rng = random.Random(seed)
    images = []
    for _ in range(n):
        w, h = (rng.randrange(16, 1025), rng.randrange(16, 1025)) if varied else (20, 10)
        anns = [
            _ann(
                rng.choice(range(1, 13) if varied else [1, 3]),
                [
                    rng.uniform(0, w * 0.75),
                    rng.uniform(0, h * 0.8),
                    rng.uniform(0, w * 0.3),
                    rng.uniform(0, h * 0.3),
                ],
                rng.uniform(0, 10000),
                crowd=rng.random() < 0.2,
            )
            for _ in range(rng.randrange(13 if varied else 4))
        ]
        hist = [rng.randrange(3) for _ in range(768)]
        images.append(_image(anns, hist=hist, w=w, h=h, exif_orientation=rng.choice([None, 1, 6])))
    return images


def _accumulate(images) -> StatsAccumulator:
    acc = new_accumulator()
    for image in images:
        _add(acc, image)
    return acc


def _entries(acc: StatsAccumulator) -> int:
    """How many numbers ``acc`` holds: a count each, plus every bin, id or pair counted."""
    return sum(
        len(value) if isinstance(value, collections.Counter | list) else 1
        for family in acc.__getstate__()
        for value in family.__getstate__()
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 25), st.integers(1, 6))
def test_three_ways_of_merging_agree(seed, n, batches):
    """Sequential; one accumulator per batch, then merged; merged in another order, then
    compacted and merged again: one accumulator, since the statistics must not depend on
    bundling or merge order. Merging changes only the accumulator merged into."""
    images = _random_images(seed, n, varied=seed % 2 == 1)
    sequential = _accumulate(images)
    parts = [new_accumulator() for _ in range(batches)]
    for i, image in enumerate(images):
        _add(parts[i % batches], image)
    before = copy.deepcopy(parts)
    per_batch = merge(parts)
    assert parts == before
    shuffled = parts[:]
    random.Random(seed).shuffle(shuffled)
    fn = MergeStats()
    halves = [
        fn.compact(fn.merge_accumulators([fn.create_accumulator(), *shuffled[: batches // 2]])),
        fn.compact(fn.add_input(fn.create_accumulator(), merge(shuffled[batches // 2 :]))),
    ]
    compacted = fn.extract_output(fn.merge_accumulators(halves[::-1]))
    assert parts == before
    assert per_batch == sequential
    assert compacted == sequential
    expected = summarize(sequential, _CATS)
    assert summarize(per_batch, _CATS) == expected
    assert summarize(compacted, _CATS) == expected
    assert expected["num_images"] == n


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 12))
def test_merge_order_never_matters(seed, n):
    """Any two orders of merging the same single-image accumulators give one accumulator."""
    singles = [_accumulate([image]) for image in _random_images(seed, n, varied=True)]
    order = singles[:]
    random.Random(seed).shuffle(order)
    left = merge(singles)
    right = new_accumulator()
    for acc in reversed(order):
        right.merge(acc)
    assert left == right
    assert left.categories.num_annotations == sum(a.categories.num_annotations for a in singles)


def test_accumulator_size_is_bounded_by_bins_not_images():
    """2,000 images of other seeds, sizes and categories than a small set of 50: they fill
    more bins than it does, and their second thousand, doubling every count, adds a few bins
    not seen yet (under a tenth), where anything kept per image or per box would double."""
    small = _accumulate(_random_images(1, 50))
    images = [im for seed in range(2, 42) for im in _random_images(seed, 50, varied=True)]
    half, full = _accumulate(images[:1000]), _accumulate(images)
    assert full.properties.num_images == 2 * half.properties.num_images == 2000
    assert full.categories.num_annotations > 1.9 * half.categories.num_annotations
    assert _entries(full) > 3 * _entries(small)
    assert _entries(full) <= 1.1 * _entries(half)
    assert len(pickle.dumps(full)) <= 1.1 * len(pickle.dumps(half))


def test_accumulators_pickle_compactly_and_whole():
    acc = _accumulate(_random_images(3, 30, varied=True))
    data = pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == acc
    assert pickle.loads(data) != _accumulate(_random_images(4, 30, varied=True))
    # Fields travel by position: no field name is spelled in the bytes.
    assert b"num_images" not in data and b"relative_sizes" not in data
    assert len(pickle.dumps(new_accumulator())) < 1000


def test_the_combine_fn_pickles():
    for dumps, loads in ((pickle.dumps, pickle.loads), (pickler.dumps, pickler.loads)):
        fn = loads(dumps(MergeStats()))
        acc = fn.add_input(fn.create_accumulator(), _accumulate(_random_images(5, 3)))
        assert fn.extract_output(acc).properties.num_images == 3


def test_gather_statistics_merges_per_split_and_finds_duplicates():
    train = [_accumulate(_random_images(seed, 4, varied=True)) for seed in (10, 11)]
    val = _accumulate(_random_images(12, 5, varied=True))
    digests = [
        ("ab", pack([("ab1", "train", 1), ("ab2", "train", 2)])),
        ("ab", pack([("ab1", "val", 7)])),
        ("cd", pack([("cd9", "train", 3), ("cd9", "train", 4), ("cd8", "val", 5)])),
    ]
    options = PipelineOptions(runtime_type_check=True)
    with TestPipeline(options=options) as p:
        stats = p | "Stats" >> beam.Create([("train", train[0]), ("val", val), ("train", train[1])])
        hashes = p | "Digests" >> beam.Create(digests)
        gathered = (stats, hashes) | GatherStatistics()
        assert_that(
            gathered["stats"],
            equal_to([("train", merge(train)), ("val", val)]),
            label="CheckStats",
        )
        assert_that(
            gathered["duplicates"],
            equal_to(
                [
                    {"sha256": "ab1", "images": [["train", 1], ["val", 7]]},
                    {"sha256": "cd9", "images": [["train", 3], ["train", 4]]},
                ]
            ),
            label="CheckDuplicates",
        )


def test_extreme_boxes_land_in_outer_bins():
    """Finite, non-negative boxes pass the parse-time checks however large or small; their
    products and ratios overflow or underflow, and must neither raise nor add unbounded bins."""
    acc = new_accumulator()
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
