"""End-to-end builds of synthetic COCO, read back with independent readers."""

import glob
import hashlib
import json
import os

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.conftest import run_build, shard_files


def _rows(run_dir):
    return pq.read_table(shard_files(run_dir)).to_pylist()


def _compare_with_source(root: str, run_dir: str) -> int:
    """Every image once with its bytes; every instance's mask equals pycocotools'; keypoints
    and captions equal. Returns the number of masks compared."""
    rows = {(r["split"], r["image_id"]): r for r in _rows(run_dir)}
    seen, masks = set(), 0
    for path in sorted(glob.glob(os.path.join(root, "annotations", "*.json"))):
        family, split = os.path.basename(path)[:-5].rsplit("_", 1)
        with open(path) as f:
            doc = json.load(f)
        for image in doc["images"]:
            row = rows[(split, image["id"])]
            seen.add((split, image["id"]))
            with open(os.path.join(root, split, image["file_name"]), "rb") as f:
                data = f.read()
            assert row["image"]["bytes"] == data
            assert row["sha256"] == hashlib.sha256(data).hexdigest()
            assert (row["width"], row["height"]) == (image["width"], image["height"])
        if family == "captions":
            for cap in doc["annotations"]:
                caps = rows[(split, cap["image_id"])]["captions"]
                assert {"id": cap["id"], "caption": cap["caption"]} in caps
        if family == "person_keypoints":
            for ann in doc["annotations"]:
                row = rows[(split, ann["image_id"])]
                [got] = [a for a in row["annotations"] if a["id"] == ann["id"]]
                assert got["keypoints"] == [float(v) for v in ann["keypoints"]]
                assert got["num_keypoints"] == ann["num_keypoints"]
        if family == "instances":
            coco = COCO(path)
            for ann_id, ann in coco.anns.items():
                row = rows[(split, ann["image_id"])]
                [got] = [a for a in row["annotations"] if a["id"] == ann_id]
                rle = {"size": got["rle"]["size"], "counts": got["rle"]["counts"].encode()}
                np.testing.assert_array_equal(mask_utils.decode(rle), coco.annToMask(ann))
                assert got["bbox"] == [float(v) for v in ann["bbox"]]
                assert (got["category_id"], got["iscrowd"], got["area"]) == (
                    ann["category_id"],
                    ann["iscrowd"],
                    ann["area"],
                )
                masks += 1
            for image_id in coco.imgs:
                row = rows[(split, image_id)]
                assert row["num_objects"] == len(coco.getAnnIds(imgIds=[image_id]))
                assert [a["id"] for a in row["annotations"]] == sorted(
                    coco.getAnnIds(imgIds=[image_id])
                )
    assert seen == set(rows), "rows that no annotation file lists"
    return masks


def test_round_trip_equals_source(synth_root, synth_build):
    run_dir, manifest = synth_build
    assert _compare_with_source(synth_root, run_dir) > 100
    counts = manifest["counts"]
    assert counts["image"] == {"read": 60, "written": 60, "rejected": 0}
    assert counts["annotation"]["read"] == counts["annotation"]["written"] > 100
    assert counts["caption"]["written"] == 5 * (60 - 60 // 10)


def test_manifest_lists_every_shard_with_checksums(synth_build):
    run_dir, manifest = synth_build
    files = shard_files(run_dir)
    assert [os.path.join(run_dir, s["path"]) for s in manifest["shards"]] == files
    for shard in manifest["shards"]:
        path = os.path.join(run_dir, shard["path"])
        with open(path, "rb") as f:
            data = f.read()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["bytes"] == len(data)
        assert shard["rows"] == pq.ParquetFile(path).metadata.num_rows
    names = sorted(os.path.basename(f) for f in files)
    assert names == [
        "test2017-00000-of-00002.parquet",
        "test2017-00001-of-00002.parquet",
        "train2017-00000-of-00002.parquet",
        "train2017-00001-of-00002.parquet",
        "val2017-00000-of-00002.parquet",
        "val2017-00001-of-00002.parquet",
    ]
    assert set(manifest["versions"]) >= {"apache-beam", "pyarrow", "pycocotools", "pillow"}
    with open(os.path.join(os.path.dirname(os.path.dirname(run_dir)), "LATEST")) as f:
        assert f.read().strip() == manifest["run_id"]


def test_rows_sorted_and_shards_deterministic(synth_build):
    run_dir, _ = synth_build
    from transforms.sharding import shard_index

    for path in shard_files(run_dir):
        table = pq.read_table(path)
        ids = table.column("image_id").to_pylist()
        assert ids == sorted(ids)
        split, index, n = os.path.basename(path).split("-")[0], int(path[-22:-17]), 2
        assert all(shard_index(split, i, n) == index for i in ids)
        assert table.schema.metadata[b"huggingface"]


def test_datasets_decodes_images_and_nested_annotations(synth_build, synth_root):
    import datasets
    from PIL import Image

    run_dir, _ = synth_build
    ds = datasets.load_dataset("parquet", data_files=shard_files(run_dir), split="train")
    assert len(ds) == 60
    assert isinstance(ds.features["image"], datasets.Image)
    row = next(r for r in ds if r["annotations"])
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (row["width"], row["height"])
    ann = row["annotations"][0]
    assert set(ann) >= {"id", "category_id", "bbox", "area", "iscrowd", "rle", "keypoints"}
    assert len(ann["bbox"]) == 4 and isinstance(ann["rle"]["counts"], str)
    with open(os.path.join(synth_root, row["split"], row["file_name"]), "rb") as f:
        assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(f)))


def test_duckdb_filters_with_query_columns(synth_build):
    run_dir, _ = synth_build
    glob_path = os.path.join(run_dir, "data", "*.parquet")
    con = duckdb.connect()
    total, crowded = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE has_crowd) FROM '{glob_path}'"
    ).fetchone()
    assert total == 60
    people = con.execute(
        f"SELECT count(*) FROM '{glob_path}' WHERE list_contains(category_ids, 1)"
    ).fetchone()[0]
    expected = sum(
        1 for r in _rows(run_dir) if any(a["category_id"] == 1 for a in r["annotations"])
    )
    assert people == expected > 0
    assert crowded == sum(1 for r in _rows(run_dir) if any(a["iscrowd"] for a in r["annotations"]))
    names = con.execute(
        f"SELECT name FROM '{run_dir}/categories.parquet' WHERE id = 90 AND split = 'val2017'"
    ).fetchone()
    assert names == ("toothbrush",)


def test_pandas_reads_the_shards(synth_build):
    import pandas as pd

    run_dir, _ = synth_build
    frame = pd.read_parquet(os.path.join(run_dir, "data"))
    assert len(frame) == 60 and frame["image_id"].is_unique


def test_same_input_same_bytes_whatever_the_bundling(synth_root, synth_build, tmp_path):
    _, first = synth_build
    # Shards follow the data size when --num-shards is not given; fix it to compare.
    _, again = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path}",
        "--num-shards=2",
        "--io-threads=1",
        "--row-group-bytes=1048576",
    )
    assert [s["sha256"] for s in again["shards"]] != [] and [
        (s["path"], s["rows"]) for s in again["shards"]
    ] == [(s["path"], s["rows"]) for s in first["shards"]]
    # Row groups differ in size, so bytes may differ; with the same settings they must not.
    _, same = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--num-shards=2", "--io-threads=3"
    )
    assert [s["sha256"] for s in same["shards"]] == [s["sha256"] for s in first["shards"]]


def test_explicit_annotation_files(synth_root, tmp_path):
    ann = os.path.join(synth_root, "annotations")
    run_dir, manifest = run_build(
        f"--annotations={ann}/instances_val2017.json",
        f"--images={synth_root}/val2017",
        f"--output={tmp_path}",
    )
    assert set(manifest["splits"]) == {"val2017"}
    rows = _rows(run_dir)
    assert len(rows) == manifest["counts"]["image"]["written"] > 0
    assert all(r["captions"] == [] and r["split"] == "val2017" for r in rows)


@pytest.mark.parametrize(
    "flag",
    [
        "--num-shards=0",
        "--max-rejected-fraction=2",
        "--formats=parquet,csv",
        "--formats=parquet,parquet",
    ],
)
def test_bad_options_fail_before_running(flag, synth_root, tmp_path):
    with pytest.raises(SystemExit):
        run_build(f"--coco-root={synth_root}", f"--output={tmp_path}", flag)
