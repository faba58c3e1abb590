"""Panoptic records: PNG and segments joined per image, checked, split into RLE, counted."""

from __future__ import annotations

import collections
import glob
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from coco_beam.schemas.errors import RecordError
from coco_beam.transforms.images.panoptic import inspect_panoptic

from helpers import run_build, shard_files


def _ids(png: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.uint32)
    return rgb[:, :, 0] + 256 * rgb[:, :, 1] + 256 * 256 * rgb[:, :, 2]


def _png(ids: np.ndarray) -> bytes:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _rows(run_dir: str) -> list[dict]:
    return pq.read_table(shard_files(run_dir)).to_pylist()


def test_synthetic_segments_equal_the_png_and_segments_info(synth_root, synth_build):
    run_dir, manifest = synth_build
    assert manifest["counts"]["panoptic"]["rejected"] == 0
    assert manifest["counts"]["panoptic"]["written"] == manifest["counts"]["panoptic"]["read"] > 0
    listed = {}
    for path in glob.glob(os.path.join(synth_root, "annotations", "panoptic_*.json")):
        split = os.path.basename(path)[len("panoptic_") : -len(".json")]
        with open(path) as f:
            doc = json.load(f)
        things = {c["id"]: bool(c["isthing"]) for c in doc["categories"]}
        for record in doc["annotations"]:
            listed[(split, record["image_id"])] = (record, things, path)
    seen = 0
    for row in _rows(run_dir):
        key = (row["split"], row["image_id"])
        if key not in listed:
            assert row["panoptic"] is None
            continue
        record, things, path = listed.pop(key)
        pan = row["panoptic"]
        with open(os.path.join(path[: -len(".json")], record["file_name"]), "rb") as f:
            png = f.read()
        assert pan["png"] == png and pan["file_name"] == record["file_name"]
        ids = _ids(png)
        assert [s["id"] for s in pan["segments"]] == [s["id"] for s in record["segments_info"]]
        for seg, info in zip(pan["segments"], record["segments_info"], strict=True):
            rle = {"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode()}
            np.testing.assert_array_equal(mask_utils.decode(rle), ids == seg["id"])
            assert seg["area"] == seg["listed_area"] == info["area"] == (ids == info["id"]).sum()
            assert seg["category_id"] == info["category_id"]
            assert seg["isthing"] == things[info["category_id"]]
            assert (seg["iscrowd"], seg["bbox"]) == (info["iscrowd"], info["bbox"])
            assert seg["flags"] == []
        assert pan["semantic_png"] is None
        seen += 1
    assert seen > 20 and not listed


def test_pixel_shares_equal_an_independent_count(synth_root, synth_build):
    run_dir, _ = synth_build
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    by_category, total, void, segments = collections.Counter(), 0, 0, collections.Counter()
    for path in glob.glob(os.path.join(synth_root, "annotations", "panoptic_*.json")):
        with open(path) as f:
            doc = json.load(f)
        for record in doc["annotations"]:
            with open(os.path.join(path[: -len(".json")], record["file_name"]), "rb") as f:
                ids = _ids(f.read())
            total += ids.size
            void += int((ids == 0).sum())
            for info in record["segments_info"]:
                by_category[info["category_id"]] += int((ids == info["id"]).sum())
                segments[info["category_id"]] += 1
    pan = stats["panoptic"]
    assert (pan["num_pixels"], pan["void_pixels"]) == (total, void)
    got = {c["id"]: c for c in pan["categories"]}
    assert set(got) == set(by_category)
    for cat_id, pixels in by_category.items():
        assert got[cat_id]["pixels"] == pixels
        assert got[cat_id]["num_segments"] == segments[cat_id]
        assert got[cat_id]["pixel_share"] == pytest.approx(pixels / total, rel=1e-12)
    stuff = sum(n for c, n in by_category.items() if c > 183)
    assert pan["stuff"]["pixels"] == stuff
    assert pan["things"]["pixels"] + stuff + void == total


def _handmade(root) -> dict:
    """A real-format panoptic example built by hand: 8x6 images, things and stuff, void, and
    one bad record of each kind the catalogue names (and an orphan)."""
    (root / "annotations" / "panoptic_val").mkdir(parents=True)
    (root / "val").mkdir()
    images = []
    for image_id in range(1, 8):
        Image.new("RGB", (8, 6), (image_id * 20, 90, 40)).save(root / "val" / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 8, "height": 6})
    categories = [
        {"id": 1, "name": "person", "supercategory": "person", "isthing": 1},
        {"id": 3, "name": "car", "supercategory": "vehicle", "isthing": 1},
        {"id": 187, "name": "sky-other-merged", "supercategory": "sky", "isthing": 0},
    ]
    good = np.full((6, 8), 3_000_111, np.uint32)  # sky
    good[0, :] = 0  # void row
    good[2:5, 1:3] = 70_000  # a person
    good[3:6, 5:8] = 255  # a car
    good_segments = [
        {"id": 3_000_111, "category_id": 187, "iscrowd": 0, "bbox": [0, 1, 8, 5], "area": 25},
        {"id": 70_000, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 2, 3], "area": 6},
        {"id": 255, "category_id": 3, "iscrowd": 1, "bbox": [5, 3, 3, 3], "area": 9},
    ]
    records = [{"image_id": 1, "file_name": "1.png", "segments_info": good_segments}]
    (root / "annotations" / "panoptic_val" / "1.png").write_bytes(_png(good))
    stray = good.copy()
    stray[5, 0] = 12345  # an id segments_info does not list
    (root / "annotations" / "panoptic_val" / "2.png").write_bytes(_png(stray))
    records.append({"image_id": 2, "file_name": "2.png", "segments_info": good_segments})
    (root / "annotations" / "panoptic_val" / "3.png").write_bytes(_png(good[:5]))  # wrong size
    records.append({"image_id": 3, "file_name": "3.png", "segments_info": good_segments})
    (root / "annotations" / "panoptic_val" / "4.png").write_bytes(_png(good))
    unknown = [dict(s, category_id=999) if s["id"] == 255 else s for s in good_segments]
    records.append({"image_id": 4, "file_name": "4.png", "segments_info": unknown})
    for _ in range(2):  # image 5 twice
        records.append({"image_id": 5, "file_name": "1.png", "segments_info": good_segments})
    records.append({"image_id": 6, "file_name": "../1.png", "segments_info": good_segments})
    records.append({"image_id": 99, "file_name": "1.png", "segments_info": good_segments})
    off = [dict(s, area=s["area"] + 1) if s["id"] == 70_000 else s for s in good_segments]
    records.append({"image_id": 7, "file_name": "1.png", "segments_info": off})
    doc = {"images": images, "annotations": records, "categories": categories}
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(doc))
    return {"good": good, "segments": good_segments}


def test_handmade_panoptic_example_and_every_bad_record(tmp_path):
    made = _handmade(tmp_path / "coco")
    run_dir, manifest = run_build(
        f"--coco-root={tmp_path / 'coco'}",
        f"--output={tmp_path / 'out'}",
        "--max-rejected-fraction=1",
        "--panoptic-semantic",
        "--formats=parquet,tfrecord",
    )
    rows = {r["image_id"]: r for r in _rows(run_dir)}
    assert sorted(rows) == list(range(1, 8))  # every image is written, with or without panoptic
    with open(os.path.join(run_dir, "rejected", "rejected.jsonl")) as f:
        rejected = [json.loads(line) for line in f]
    reasons = sorted((r["kind"], r["key"], r["reason"]) for r in rejected)
    assert reasons == [
        ("panoptic", "2", "panoptic_mismatch"),
        ("panoptic", "3", "panoptic_mismatch"),
        ("panoptic", "4", "unknown_category"),
        ("panoptic", "5", "duplicate_panoptic_annotation"),
        ("panoptic", "5", "duplicate_panoptic_annotation"),
        ("panoptic", "6", "unsafe_path"),
        ("panoptic", "99", "orphan_annotation"),
    ]
    assert manifest["counts"]["panoptic"] == {"read": 9, "written": 2, "rejected": 7}
    for image_id in (2, 3, 4, 5, 6):
        assert rows[image_id]["panoptic"] is None
    pan = rows[1]["panoptic"]
    ids = made["good"]
    for seg in pan["segments"]:
        rle = {"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle), ids == seg["id"])
    assert [(s["id"], s["isthing"], s["area"]) for s in pan["segments"]] == [
        (3_000_111, False, 25),
        (70_000, True, 6),
        (255, True, 9),
    ]
    assert all(s["flags"] == [] for s in pan["segments"])
    semantic = np.asarray(Image.open(io.BytesIO(pan["semantic_png"])))
    expected = np.zeros((6, 8), np.uint8)
    expected[ids == 3_000_111], expected[ids == 70_000], expected[ids == 255] = 187, 1, 3
    np.testing.assert_array_equal(semantic, expected)
    # segments_info's area disagreeing with the PNG: kept, flagged.
    flagged = {s["id"]: s for s in rows[7]["panoptic"]["segments"]}
    assert flagged[70_000]["flags"] == ["panoptic_area_mismatch"]
    assert (flagged[70_000]["area"], flagged[70_000]["listed_area"]) == (6, 7)

    tf = pytest.importorskip("tensorflow", reason="TensorFlow (a test dependency) is absent")
    (path,) = glob.glob(os.path.join(run_dir, "data", "*.tfrecord"))
    spec = {
        "image/source_id": tf.io.FixedLenFeature((), tf.string),
        "image/panoptic/category_mask": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/panoptic/instance_mask": tf.io.FixedLenFeature((), tf.string, default_value=""),
    }
    parsed = {}
    for record in tf.data.TFRecordDataset(path):
        ex = tf.io.parse_single_example(record, spec)
        parsed[int(ex["image/source_id"].numpy())] = ex
    category = tf.io.decode_image(parsed[1]["image/panoptic/category_mask"], channels=1)
    np.testing.assert_array_equal(category.numpy()[:, :, 0], expected)
    instance = tf.io.decode_image(parsed[1]["image/panoptic/instance_mask"], channels=1)
    want = np.zeros((6, 8), np.uint8)
    want[ids == 70_000], want[ids == 255] = 2, 3  # things: index in segments_info + 1
    np.testing.assert_array_equal(instance.numpy()[:, :, 0], want)
    assert parsed[2]["image/panoptic/category_mask"].numpy() == b""  # rejected record


def test_synthetic_tfrecord_label_maps_match_the_png(synth_root, tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow (a test dependency) is absent")
    run_dir, _ = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--formats=tfrecord"
    )
    with open(os.path.join(synth_root, "annotations", "panoptic_val2017.json")) as f:
        doc = json.load(f)
    things = {c["id"]: c["isthing"] for c in doc["categories"]}
    records = {r["image_id"]: r for r in doc["annotations"]}
    spec = {
        "image/source_id": tf.io.FixedLenFeature((), tf.string),
        "image/panoptic/category_mask": tf.io.FixedLenFeature((), tf.string),
        "image/panoptic/instance_mask": tf.io.FixedLenFeature((), tf.string),
    }
    compared = 0
    for path in glob.glob(os.path.join(run_dir, "data", "val2017-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(path):
            ex = tf.io.parse_single_example(raw, spec)
            record = records[int(ex["image/source_id"].numpy())]
            png = os.path.join(synth_root, "annotations", "panoptic_val2017", record["file_name"])
            with open(png, "rb") as f:
                ids = _ids(f.read())
            category = np.zeros(ids.shape, np.int64)
            instance = np.zeros(ids.shape, np.int64)
            for index, info in enumerate(record["segments_info"]):
                category[ids == info["id"]] = info["category_id"]
                if things[info["category_id"]]:
                    instance[ids == info["id"]] = index + 1
            for key, want in (("category_mask", category), ("instance_mask", instance)):
                png = ex[f"image/panoptic/{key}"].numpy()
                dtype = tf.uint16 if png[24] == 16 else tf.uint8  # IHDR's bit depth
                got = tf.io.decode_png(png, dtype=dtype).numpy()
                np.testing.assert_array_equal(got[:, :, 0], want)
            compared += 1
    assert compared == len(records)


@pytest.mark.parametrize(
    "change,message",
    [
        pytest.param(lambda ids: ids[:-1], "PNG is 8x5", id="size"),
        pytest.param(lambda ids: np.where(ids == 255, 0, ids), "has no pixel", id="missing-id"),
        pytest.param(lambda ids: np.where(ids == 0, 7, ids), "does not list", id="stray-id"),
    ],
)
def test_inspect_panoptic_names_the_mismatch(change, message):
    ids = np.full((6, 8), 3_000_111, np.uint32)
    ids[0] = 0
    ids[3:6, 5:8] = 255
    segments = [
        {"id": 3_000_111, "category_id": 187, "isthing": False, "iscrowd": 0, "bbox": [0] * 4},
        {"id": 255, "category_id": 3, "isthing": True, "iscrowd": 0, "bbox": [0] * 4},
    ]
    segments = [dict(s, area=int((ids == s["id"]).sum())) for s in segments]
    facts = inspect_panoptic(_png(ids), 8, 6, segments)
    assert facts.void_pixels == 8 and facts.pixels_by_category == {187: 31, 3: 9}
    with pytest.raises(RecordError, match=message) as caught:
        inspect_panoptic(_png(change(ids)), 8, 6, segments)
    assert caught.value.reason == "panoptic_mismatch"
    with pytest.raises(RecordError, match="not a readable PNG"):
        inspect_panoptic(b"\x89PNG\r\n\x1a\nbroken", 8, 6, segments)


def test_panoptic_file_named_explicitly_finds_its_pngs_beside_it(tmp_path):
    _handmade(tmp_path / "coco")
    run_dir, manifest = run_build(
        f"--annotations={tmp_path / 'coco' / 'annotations' / 'panoptic_val.json'}",
        f"--images={tmp_path / 'coco' / 'val'}",
        f"--output={tmp_path / 'out'}",
        "--max-rejected-fraction=1",
    )
    assert manifest["counts"]["panoptic"] == {"read": 9, "written": 2, "rejected": 7}
    rows = {r["image_id"]: r for r in _rows(run_dir)}
    assert [s["id"] for s in rows[1]["panoptic"]["segments"]] == [3_000_111, 70_000, 255]


def test_overall_statistics_know_things_from_stuff(synth_build):
    """The test split's categories carry no isthing; the overall figures take it from the
    splits that do."""
    run_dir, _ = synth_build
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        cats = json.load(f)["panoptic"]["categories"]
    assert {c["id"] for c in cats if c["isthing"] is False} == {
        c["id"] for c in cats if c["id"] > 183
    }
    assert all(c["isthing"] is True for c in cats if c["id"] <= 90)
