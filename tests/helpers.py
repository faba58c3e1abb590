"""Helpers the tests share: where things are, one in-process build, reading its output back."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coco_beam.pipelines import build

REPO = pathlib.Path(__file__).resolve().parent.parent
COCO_TINY = REPO.parent / "shared" / "data" / "coco-tiny"

# The in-process runner: fast to start, and what TestPipeline uses. The default multi-process
# runner is exercised by the CLI tests.
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def require_coco_tiny() -> pathlib.Path:
    """The real COCO excerpt; skips the test where it is absent, and fails it under CI
    (``CI=true``), where its absence is a broken set-up, not a reason to pass."""
    if not (COCO_TINY / "annotations").is_dir():
        message = (
            f"the real COCO excerpt is not at {COCO_TINY} (it sits beside the repository in the "
            "project's workspace)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return COCO_TINY


def run_build(*args: str) -> tuple[str, dict]:
    """Runs a build in-process; returns the run folder and its manifest."""
    from apache_beam.io.filesystems import FileSystems

    _, plan = build.run([*args, *IN_MEMORY])
    with FileSystems.open(FileSystems.join(plan.run_dir, "manifest.json")) as f:
        return plan.run_dir, json.loads(f.read())


def shard_files(run_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "data", "*.parquet")))


def read_rows(run_dir):
    return pq.read_table(shard_files(run_dir)).to_pylist()


def compare_with_source(root: str, run_dir: str) -> int:
    """Every image once with its bytes; every instance's mask equals pycocotools'; keypoints
    and captions equal. Returns the number of masks compared."""
    rows = {(r["split"], r["image_id"]): r for r in read_rows(run_dir)}
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


def load_json(path):
    """A JSON file's document (tests that edit annotation files read them with this)."""
    with open(path) as f:
        return json.load(f)


def dump_json(path, doc) -> None:
    with open(path, "w") as f:
        json.dump(doc, f)
