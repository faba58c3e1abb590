"""Conformance on real COCO 2017 data: what the pipeline wrote against pycocotools and Pillow."""

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import compare_with_source, require_coco_tiny, run_build, shard_files


@pytest.fixture(scope="module")
def coco_tiny():
    return require_coco_tiny()


@pytest.fixture(scope="module")
def tiny_build(coco_tiny, tmp_path_factory):
    return run_build(f"--coco-root={coco_tiny}", f"--output={tmp_path_factory.mktemp('tiny')}")


def test_every_mask_equals_pycocotools(tiny_build, coco_tiny):
    run_dir, manifest = tiny_build
    assert compare_with_source(str(coco_tiny), run_dir) == 1520
    assert manifest["counts"]["image"] == {"read": 160, "written": 160, "rejected": 0}
    assert manifest["counts"]["annotation"] == {"read": 1520, "written": 1520, "rejected": 0}


def test_decoded_facts_equal_pillow(tiny_build, coco_tiny):
    run_dir, _ = tiny_build
    rows = pq.read_table(shard_files(run_dir)).to_pylist()
    for row in rows:
        with Image.open(os.path.join(coco_tiny, row["split"], row["file_name"])) as image:
            assert (row["mode"], row["format"]) == (image.mode, image.format.lower())
            assert (row["width"], row["height"]) == image.size
            stored = Image.open(io.BytesIO(row["image"]["bytes"]))
            assert np.array_equal(np.asarray(stored), np.asarray(image))
    crowd = sum(a["iscrowd"] for r in rows for a in r["annotations"])
    assert crowd == 17  # 6 in train, 11 in val, as the excerpt's README says
    assert {r["mode"] for r in rows} >= {"RGB"}
