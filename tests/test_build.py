"""End-to-end builds of synthetic COCO, read back with independent readers."""

import glob
import hashlib
import json
import os

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from coco_beam.pipelines import build
from coco_beam.transforms.runtime.faults import FAULTS_DIR_ENV, FAULTS_ENV, InjectedFault
from coco_beam.transforms.shards import write as write_shards

from helpers import compare_with_source, read_rows, run_build, shard_files


def test_round_trip_equals_source(synth_root, synth_build):
    run_dir, manifest = synth_build
    assert compare_with_source(synth_root, run_dir) > 100
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
    from coco_beam.transforms.shards.sharding import shard_index

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
        1 for r in read_rows(run_dir) if any(a["category_id"] == 1 for a in r["annotations"])
    )
    assert people == expected > 0
    assert crowded == sum(
        1 for r in read_rows(run_dir) if any(a["iscrowd"] for a in r["annotations"])
    )
    names = con.execute(
        f"SELECT name FROM '{run_dir}/categories.parquet' WHERE id = 90 AND split = 'val2017'"
    ).fetchone()
    assert names == ("toothbrush",)


def test_pandas_reads_the_shards(synth_build):
    import pandas as pd

    run_dir, _ = synth_build
    frame = pd.read_parquet(os.path.join(run_dir, "data"))
    assert len(frame) == 60 and frame["image_id"].is_unique


def _build(*args: str) -> tuple[str, dict]:
    """A build with the runner options given (``run_build`` always runs in-process)."""
    _, plan = build.run(list(args))
    with open(os.path.join(plan.run_dir, "manifest.json")) as f:
        return plan.run_dir, json.load(f)


def test_same_input_same_bytes_whatever_the_bundling(synth_root, synth_build, tmp_path):
    """In-process with three decode threads (``synth_build``) against two worker processes
    with one thread each: other bundles, other workers, other decode order; the same bytes."""
    _, first = synth_build
    _, spread = _build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path / 'spread'}",
        "--num-shards=2",
        "--io-threads=1",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    )
    assert len(spread["shards"]) == 6
    assert [(s["path"], s["sha256"]) for s in spread["shards"]] == [
        (s["path"], s["sha256"]) for s in first["shards"]
    ]
    assert spread["stats"]["sha256"] == first["stats"]["sha256"]
    assert spread["counts"] == first["counts"]
    # Row groups of another size: other bytes, the same shards and rows.
    _, regrouped = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path / 'regrouped'}",
        "--num-shards=2",
        "--row-group-bytes=1048576",
    )
    assert [(s["path"], s["rows"]) for s in regrouped["shards"]] == [
        (s["path"], s["rows"]) for s in first["shards"]
    ]


def _published_once(out: str) -> tuple[str, dict]:
    """The one run of ``out`` that has a manifest, checked: LATEST names it; its folder holds
    exactly the shards and states the manifest lists, with their sizes and digests, and no
    temporary file."""
    [manifest_path] = glob.glob(os.path.join(out, "runs", "*", "manifest.json"))
    run_dir = os.path.dirname(manifest_path)
    with open(manifest_path) as f:
        manifest = json.load(f)
    with open(os.path.join(out, "LATEST")) as f:
        assert f.read().strip() == manifest["run_id"] == os.path.basename(run_dir)
    for shard in manifest["shards"]:
        path = os.path.join(run_dir, shard["path"])
        assert (os.path.getsize(path), _sha256(path)) == (shard["bytes"], shard["sha256"])
    listed = {s["path"] for s in manifest["shards"]} | {s["state"] for s in manifest["shards"]}
    found = {
        os.path.relpath(os.path.join(folder, name), run_dir)
        for sub in ("data", "state")
        for folder, _, names in os.walk(os.path.join(run_dir, sub))
        for name in names
    }
    assert found == listed, "stray files"
    assert not os.path.exists(os.path.join(run_dir, ".tmp"))
    return run_dir, manifest


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _assert_like_reference(manifest: dict, reference: dict) -> None:
    assert [(s["path"], s["sha256"]) for s in manifest["shards"]] == [
        (s["path"], s["sha256"]) for s in reference["shards"]
    ]
    assert manifest["stats"]["sha256"] == reference["stats"]["sha256"]
    assert manifest["counts"] == reference["counts"]
    for kind, count in manifest["counts"].items():
        assert count["read"] == count["written"] + count["rejected"], kind


@pytest.fixture()
def write_fault(monkeypatch, tmp_path):
    """The writer fails once, halfway through shard 0 of train2017."""
    fired = tmp_path / "faults"
    monkeypatch.setenv(FAULTS_ENV, "write:train2017-00000")
    monkeypatch.setenv(FAULTS_DIR_ENV, str(fired))
    return fired


def test_a_shard_retried_after_a_fault_is_published_once(
    synth_root, synth_build, tmp_path, monkeypatch, write_fault
):
    """A retrying runner, simulated (local runners do not retry a bundle): the writer fails
    halfway through a shard, leaving a partial temporary file; the bundle's outputs are thrown
    away and it runs again. The run publishes once, with the bytes of an undisturbed build."""
    original = write_shards._WriteShardFn.process
    failed = []

    def retried(self, element, num_shards, categories, examples=None):
        try:
            outputs = list(original(self, element, num_shards, categories, examples))
        except InjectedFault:
            failed.append(element[0])
            outputs = list(original(self, element, num_shards, categories, examples))
        yield from outputs

    monkeypatch.setattr(write_shards._WriteShardFn, "process", retried)
    out = str(tmp_path / "out")
    run_build(f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2")
    assert failed == [("train2017", 0)]
    _, manifest = _published_once(out)
    _assert_like_reference(manifest, synth_build[1])


def test_a_build_that_failed_in_a_worker_is_rerun_into_the_same_output(
    synth_root, synth_build, tmp_path, write_fault
):
    """The fault fires in a worker process and fails the build: nothing is published. The same
    build run again into the same output passes the fault (it fired once) and publishes once,
    with the bytes of an undisturbed build; the failed run is left unpublished."""
    out = str(tmp_path / "out")
    args = [f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2"]
    with pytest.raises(Exception, match="injected fault at write:train2017-00000"):
        _build(*args, "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert os.listdir(write_fault) == ["write_train2017-00000.fired"]
    assert not os.path.exists(os.path.join(out, "LATEST"))
    [failed_run] = glob.glob(os.path.join(out, "runs", "*"))
    assert glob.glob(os.path.join(failed_run, ".tmp", "train2017-00000-of-00002.parquet.*"))
    run_dir, manifest = run_build(*args)
    assert _published_once(out) == (run_dir, manifest)
    assert run_dir != failed_run
    _assert_like_reference(manifest, synth_build[1])


def test_explicit_annotation_files(synth_root, tmp_path):
    ann = os.path.join(synth_root, "annotations")
    run_dir, manifest = run_build(
        f"--annotations={ann}/instances_val2017.json",
        f"--images={synth_root}/val2017",
        f"--output={tmp_path}",
    )
    assert set(manifest["splits"]) == {"val2017"}
    rows = read_rows(run_dir)
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
