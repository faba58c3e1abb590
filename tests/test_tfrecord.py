"""TFRecord shards read by real TensorFlow with Model Garden's feature spec, against the source."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coco_beam.schemas.fields import Struct, Value
from coco_beam.schemas.parquet import IMAGE_ROW
from coco_beam.schemas.tf_example import FEATURES, Example, check_against_parquet
from coco_beam.transforms.shards.tfrecord import mask_png, mask_rows

from helpers import run_build

tf = pytest.importorskip("tensorflow", reason="TensorFlow (a test dependency) is not installed")


def _model_garden_spec(masks: bool, keypoints: bool) -> dict:
    """The decoder spec of Model Garden's ``tf_example_decoder`` plus the keys it leaves out."""
    spec = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string),
        "image/format": tf.io.FixedLenFeature((), tf.string),
        "image/filename": tf.io.FixedLenFeature((), tf.string),
        "image/source_id": tf.io.FixedLenFeature((), tf.string),
        "image/key/sha256": tf.io.FixedLenFeature((), tf.string),
        "image/height": tf.io.FixedLenFeature((), tf.int64, -1),
        "image/width": tf.io.FixedLenFeature((), tf.int64, -1),
        "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/class/text": tf.io.VarLenFeature(tf.string),
        "image/object/area": tf.io.VarLenFeature(tf.float32),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/caption": tf.io.VarLenFeature(tf.string),
    }
    if masks:
        spec["image/object/mask"] = tf.io.VarLenFeature(tf.string)
    if keypoints:
        spec["image/object/keypoint/x"] = tf.io.VarLenFeature(tf.float32)
        spec["image/object/keypoint/y"] = tf.io.VarLenFeature(tf.float32)
        spec["image/object/keypoint/visibility"] = tf.io.VarLenFeature(tf.int64)
        spec["image/object/keypoint/num"] = tf.io.VarLenFeature(tf.int64)
        spec["image/object/keypoint/text"] = tf.io.VarLenFeature(tf.string)
    return spec


def _dense(value):
    if isinstance(value, tf.SparseTensor):
        return tf.sparse.to_dense(value).numpy()
    return value.numpy()


def _read(path: str, masks: bool, keypoints: bool) -> list[dict]:
    spec = _model_garden_spec(masks, keypoints)
    out = []
    for record in tf.data.TFRecordDataset(path):
        parsed = tf.io.parse_single_example(record, spec)
        out.append({k: _dense(v) for k, v in parsed.items()})
    return out


@pytest.fixture(scope="module")
def tf_build(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf-out")
    return run_build(
        f"--coco-root={synth_root}",
        f"--output={out}",
        "--num-shards=2",
        "--formats=parquet,tfrecord",
        "--tfrecord-masks",
    )


def test_feature_map_is_checked_against_the_parquet_schema():
    check_against_parquet()
    drifted = Struct(tuple((n, node) for n, node in IMAGE_ROW.fields if n != "sha256"))
    with pytest.raises(ValueError, match="image/key/sha256: no column sha256"):
        check_against_parquet(FEATURES, drifted)
    retyped = Struct(
        tuple((n, Value("float64") if n == "height" else node) for n, node in IMAGE_ROW.fields)
    )
    with pytest.raises(ValueError, match="image/height: height is float64"):
        check_against_parquet(FEATURES, retyped)


@pytest.mark.parametrize(
    "shape,pixels",
    [
        pytest.param((1, 1), [(0, 0)], id="one-pixel"),
        pytest.param((5, 7), [], id="empty"),
        pytest.param((31, 17), [(0, 0), (30, 16), (3, 4), (10, 2)], id="corners"),
    ],
)
def test_mask_png_decodes_to_the_rle_mask(shape, pixels):
    mask = np.zeros(shape, np.uint8)
    for y, x in pixels:
        mask[y, x] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    png = mask_png({"size": list(shape), "counts": rle["counts"].decode()})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), mask)
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy()[:, :, 0], mask)


def test_tensorflow_reads_every_image_once_equal_to_the_source(synth_root, tf_build):
    run_dir, manifest = tf_build
    files = sorted(glob.glob(os.path.join(run_dir, "data", "*.tfrecord")))
    listed = [s for s in manifest["shards"] if s["format"] == "tfrecord"]
    assert [os.path.basename(f) for f in files] == [os.path.basename(s["path"]) for s in listed]
    for path, shard in zip(files, listed, strict=True):
        with open(path, "rb") as f:
            data = f.read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard["bytes"], shard["sha256"])

    examples = {}
    for path in files:
        split = os.path.basename(path).split("-")[0]
        for ex in _read(path, masks=True, keypoints=split != "test2017"):
            key = (split, int(ex["image/source_id"]))
            assert key not in examples
            examples[key] = ex
    compared = 0
    for split in ("train2017", "val2017"):
        coco = COCO(os.path.join(synth_root, "annotations", f"instances_{split}.json"))
        with open(os.path.join(synth_root, "annotations", f"person_keypoints_{split}.json")) as f:
            keypoints = {a["id"]: a for a in json.load(f)["annotations"]}
        with open(os.path.join(synth_root, "annotations", f"captions_{split}.json")) as f:
            captions = {}
            for c in json.load(f)["annotations"]:
                captions.setdefault(c["image_id"], []).append(c)
        for image_id, image in coco.imgs.items():
            ex = examples.pop((split, image_id))
            with open(os.path.join(synth_root, split, image["file_name"]), "rb") as f:
                data = f.read()
            assert ex["image/encoded"] == data
            assert ex["image/key/sha256"].decode() == hashlib.sha256(data).hexdigest()
            assert ex["image/filename"].decode() == image["file_name"]
            assert ex["image/format"] == b"jpeg"
            w, h = image["width"], image["height"]
            assert (ex["image/width"], ex["image/height"]) == (w, h)
            decoded = tf.io.decode_image(ex["image/encoded"]).numpy()
            assert decoded.shape[:2] == (h, w)
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=lambda a: a["id"])
            boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
            np.testing.assert_allclose(ex["image/object/bbox/xmin"], boxes[:, 0] / w, rtol=1e-6)
            np.testing.assert_allclose(
                ex["image/object/bbox/xmax"], (boxes[:, 0] + boxes[:, 2]) / w, rtol=1e-6
            )
            np.testing.assert_allclose(ex["image/object/bbox/ymin"], boxes[:, 1] / h, rtol=1e-6)
            np.testing.assert_allclose(
                ex["image/object/bbox/ymax"], (boxes[:, 1] + boxes[:, 3]) / h, rtol=1e-6
            )
            assert list(ex["image/object/class/label"]) == [a["category_id"] for a in anns]
            assert [t.decode() for t in ex["image/object/class/text"]] == [
                coco.cats[a["category_id"]]["name"] for a in anns
            ]
            assert list(ex["image/object/is_crowd"]) == [a["iscrowd"] for a in anns]
            np.testing.assert_allclose(
                ex["image/object/area"], [a["area"] for a in anns], rtol=1e-6
            )
            assert sorted(c.decode() for c in ex["image/caption"]) == sorted(
                c["caption"] for c in captions.get(image_id, [])
            )
            for png, ann in zip(ex["image/object/mask"], anns, strict=True):
                mask = tf.io.decode_png(png).numpy()[:, :, 0]
                np.testing.assert_array_equal(mask, coco.annToMask(ann))
                compared += 1
            if not anns:
                assert len(ex["image/object/keypoint/x"]) == 0
                continue
            xs = ex["image/object/keypoint/x"].reshape(len(anns), -1)
            vis = ex["image/object/keypoint/visibility"].reshape(len(anns), -1)
            for i, ann in enumerate(anns):
                kp = keypoints.get(ann["id"])
                if kp is None:
                    assert not vis[i].any() and ex["image/object/keypoint/num"][i] == 0
                    continue
                np.testing.assert_allclose(xs[i], np.array(kp["keypoints"][0::3]) / w, rtol=1e-6)
                assert list(vis[i]) == kp["keypoints"][2::3]
                assert ex["image/object/keypoint/num"][i] == kp["num_keypoints"]
            names = ex["image/object/keypoint/text"].reshape(len(anns), -1)
            assert all(row[0] == b"nose" for row in names)
    assert compared > 20
    # What is left is the test split: images without annotations.
    assert {split for split, _ in examples} == {"test2017"}
    assert all(len(ex["image/object/class/label"]) == 0 for ex in examples.values())


def test_tfrecord_and_parquet_shards_hold_the_same_images_in_the_same_order(tf_build):
    run_dir, manifest = tf_build
    parquet = sorted(glob.glob(os.path.join(run_dir, "data", "*.parquet")))
    assert len(parquet) == len(glob.glob(os.path.join(run_dir, "data", "*.tfrecord")))
    for path in parquet:
        ids = pq.read_table(path, columns=["image_id"]).column(0).to_pylist()
        records = tf.data.TFRecordDataset(path[: -len(".parquet")] + ".tfrecord")
        tf_ids = [
            int(
                Example.FromString(r.numpy())
                .features.feature["image/source_id"]
                .bytes_list.value[0]
            )
            for r in records
        ]
        assert tf_ids == ids


def test_a_flipped_byte_is_caught_by_tensorflows_reader(tf_build, tmp_path):
    run_dir, _ = tf_build
    path = sorted(glob.glob(os.path.join(run_dir, "data", "train2017-*.tfrecord")))[0]
    broken = tmp_path / "broken.tfrecord"
    shutil.copy(path, broken)
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0x01
    broken.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        for _ in tf.data.TFRecordDataset(str(broken)):
            pass


def test_edge_boxes_are_kept_flagged_and_counted(synth_root, tmp_path):
    """A zero-width box and one past the image edge stay in the TFRecord (clipped to [0, 1]),
    are flagged on the Parquet row and counted in the statistics; a negative size is rejected
    with its reason. None is dropped silently."""
    root = tmp_path / "coco"
    shutil.copytree(synth_root, root)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    zero, outside, negative = doc["annotations"][:3]
    zero["bbox"] = [5.0, 5.0, 0.0, 10.0]
    w, h = sizes[outside["image_id"]]
    outside["bbox"] = [w - 10.0, h - 10.0, 40.0, 30.0]
    negative["bbox"] = [1.0, 1.0, -3.0, 4.0]
    path.write_text(json.dumps(doc))
    run_dir, manifest = run_build(
        f"--coco-root={root}", f"--output={tmp_path / 'out'}", "--formats=tfrecord"
    )
    assert manifest["rejected_reasons"] == {"invalid_bbox": 1}
    (tfrecord,) = glob.glob(os.path.join(run_dir, "data", "val2017-*.tfrecord"))
    by_id = {int(e["image/source_id"]): e for e in _read(tfrecord, masks=False, keypoints=True)}
    ex = by_id[outside["image_id"]]
    labels = list(ex["image/object/class/label"])
    assert len(labels) == len(
        [a for a in doc["annotations"] if a["image_id"] == outside["image_id"]]
    ) - (negative["image_id"] == outside["image_id"])
    assert ex["image/object/bbox/xmax"].max() == 1.0 and ex["image/object/bbox/ymax"].max() == 1.0
    zero_ex = by_id[zero["image_id"]]
    assert any(
        a == b
        for a, b in zip(
            zero_ex["image/object/bbox/xmin"], zero_ex["image/object/bbox/xmax"], strict=True
        )
    )
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    assert stats["splits"]["val2017"]["num_zero_size_boxes"] >= 1
    assert stats["splits"]["val2017"]["num_boxes_outside_image"] >= 1


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    density=st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]),
)
def test_mask_rows_equal_pycocotools_decode(h, w, seed, density):
    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    rows = mask_rows({"size": [h, w], "counts": rle["counts"].decode()})
    assert rows.shape == (h, w + 1) and not rows[:, 0].any()
    np.testing.assert_array_equal(rows[:, 1:], mask_utils.decode(rle))


def test_rle_counts_reject_a_short_mask():
    rle = mask_utils.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="do not cover"):
        mask_rows({"size": [5, 4], "counts": rle["counts"].decode()})
