"""Incremental rebuilds and the Iceberg lake table.

A synthetic dataset is built, then changed as labelling teams change data (one image's bytes
replaced, one annotation's category changed, one image added, one removed) and rebuilt into
the same output. The rebuild must rewrite only the shards holding a change, leave the others
byte-identical (the very same files, linked), equal a full build of the changed input byte for
byte (shards in both formats, state, statistics), say what changed in its manifest, and leave
two snapshots in the Iceberg table, each reading back as its run's rows.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import io
import json
import logging
import os
import shutil

import duckdb
import pytest
from PIL import Image

from helpers import dump_json, load_json, run_build

SHARDS = ["--num-shards=6", "--formats=parquet,tfrecord"]


def _digests(run_dir: str, *folders: str) -> dict:
    out = {}
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(run_dir, folder, "*"))):
            with open(path, "rb") as f:
                out[os.path.relpath(path, run_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _change_dataset(root: str) -> dict:
    """Changes the train split in four ways; returns the ids involved."""
    ann_dir = os.path.join(root, "annotations")
    instances = load_json(os.path.join(ann_dir, "instances_train2017.json"))
    images = sorted(instances["images"], key=lambda i: i["id"])
    by_image: dict[int, list] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    keypoint_ids = {
        a["id"]
        for a in load_json(os.path.join(ann_dir, "person_keypoints_train2017.json"))["annotations"]
    }

    # 1. One image's bytes replaced by another picture of the same size.
    replaced = images[3]
    path = os.path.join(root, "train2017", replaced["file_name"])
    with Image.open(path) as im:
        picture = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sink = io.BytesIO()
    picture.save(sink, format="JPEG", quality=88)
    with open(path, "wb") as f:
        f.write(sink.getvalue())

    # 2. One annotation's category changed (an object without keypoints, of a category with
    # other instances: a category emptied is a change the volume check stops).
    per_category = collections.Counter(a["category_id"] for a in instances["annotations"])
    relabelled = next(
        a
        for img in images[10:]
        for a in by_image.get(img["id"], [])
        if a["id"] not in keypoint_ids and per_category[a["category_id"]] > 1
    )
    other = next(c["id"] for c in instances["categories"] if c["id"] != relabelled["category_id"])
    relabelled["category_id"] = other

    # 3. One image added: a copy of another one's file, with one object.
    source = images[5]
    added_id = max(i["id"] for i in images) + 1000
    added = dict(source, id=added_id, file_name=f"{added_id:012d}.jpg")
    shutil.copyfile(
        os.path.join(root, "train2017", source["file_name"]),
        os.path.join(root, "train2017", added["file_name"]),
    )
    instances["images"].append(added)
    next_ann = max(a["id"] for a in instances["annotations"]) + 1
    template = next(a for a in instances["annotations"] if a["id"] not in keypoint_ids)
    instances["annotations"].append(
        dict(
            template,
            id=next_ann,
            image_id=added_id,
            bbox=[1.0, 2.0, 30.0, 40.0],
            segmentation=[[1.0, 2.0, 31.0, 2.0, 31.0, 42.0, 1.0, 42.0]],
            area=1200.0,
        )
    )
    dump_json(os.path.join(ann_dir, "instances_train2017.json"), instances)

    # 4. One image removed from every annotation file, its file deleted: the last one whose
    # removal leaves every category some instances.
    per_category = collections.Counter(a["category_id"] for a in instances["annotations"])
    removed = next(
        img
        for img in reversed(images[11:])
        if all(
            per_category[cat] > n
            for cat, n in collections.Counter(
                a["category_id"] for a in by_image.get(img["id"], [])
            ).items()
        )
    )
    for name in os.listdir(ann_dir):
        if not (name.endswith("_train2017.json")):
            continue
        doc = load_json(os.path.join(ann_dir, name))
        doc["images"] = [i for i in doc["images"] if i["id"] != removed["id"]]
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != removed["id"]]
        dump_json(os.path.join(ann_dir, name), doc)
    os.remove(os.path.join(root, "train2017", removed["file_name"]))
    return {
        "replaced": replaced["id"],
        "relabelled": relabelled["image_id"],
        "added": added_id,
        "removed": removed["id"],
    }


@pytest.fixture(scope="module")
def rebuilt(synth_root, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("changing") / "coco")
    shutil.copytree(synth_root, root)
    out = str(tmp_path_factory.mktemp("incremental-out"))
    first = run_build(f"--coco-root={root}", f"--output={out}", *SHARDS)
    changed = _change_dataset(root)
    second = run_build(f"--coco-root={root}", f"--output={out}", *SHARDS)
    full = run_build(
        f"--coco-root={root}", f"--output={tmp_path_factory.mktemp('full-out')}", *SHARDS
    )
    return {"out": out, "first": first, "second": second, "full": full, "changed": changed}


def test_rebuild_equals_a_full_build_of_the_new_input(rebuilt):
    (second_dir, second), (full_dir, full) = rebuilt["second"], rebuilt["full"]
    assert _digests(second_dir, "data", "state", "stats") == _digests(
        full_dir, "data", "state", "stats"
    )
    assert second["counts"] == full["counts"]
    assert [(s["path"], s["sha256"]) for s in second["shards"]] == [
        (s["path"], s["sha256"]) for s in full["shards"]
    ]


def test_rebuild_rewrites_only_the_changed_shards_and_links_the_rest(rebuilt):
    (first_dir, first), (second_dir, second) = rebuilt["first"], rebuilt["second"]
    changes = second["changes"]
    assert changes["previous_run"] == first["run_id"]
    assert changes["incremental"] is True
    assert changes["images_added"] == 1
    assert changes["images_removed"] == 1
    assert changes["images_modified"] == 1
    assert changes["annotations_changed"] == 1
    assert changes["splits"]["train2017"]["images_added"] == 1
    shards = {(s["split"], s["index"]) for s in second["shards"]}
    touched = {(s["split"], s["index"]) for s in second["shards"] if not s["reused"]}
    # Every change is in train2017; at most one shard per changed image is rewritten.
    assert 1 <= len(touched) <= 4
    assert {split for split, _ in touched} == {"train2017"}
    assert changes["shards_rewritten"] == len(touched)
    assert changes["shards_reused"] == len(shards) - len(touched)
    before = {s["path"]: s for s in first["shards"]}
    for shard in second["shards"]:
        old, new = os.path.join(first_dir, shard["path"]), os.path.join(second_dir, shard["path"])
        if shard["reused"]:
            # The previous run's very file, untouched.
            assert os.stat(old).st_ino == os.stat(new).st_ino
            assert before[shard["path"]]["sha256"] == shard["sha256"]
        else:
            assert os.stat(old).st_ino != os.stat(new).st_ino
    # The statistics comparison beside the manifest sees the added and removed image's effect.
    with open(os.path.join(second_dir, "compare.json")) as f:
        diff = json.load(f)
    assert diff["changed"] is True
    assert json.dumps(diff).count("num_annotations") >= 1


def test_an_unchanged_rebuild_reuses_every_shard_and_full_reuses_none(rebuilt, tmp_path):
    out = rebuilt["out"]
    root = rebuilt["second"][1]["sources"][0]["path"].rsplit("/annotations/", 1)[0]
    same_dir, same = run_build(f"--coco-root={root}", f"--output={out}", *SHARDS)
    assert same["changes"]["shards_rewritten"] == 0
    assert same["changes"]["images_added"] == same["changes"]["images_modified"] == 0
    full_dir, full = run_build(f"--coco-root={root}", f"--output={out}", *SHARDS, "--full")
    assert full["changes"]["shards_reused"] == 0
    assert full["changes"]["incremental"] is False
    assert full["changes"]["why_not_incremental"] == "--full"
    assert _digests(same_dir, "data", "state", "stats") == _digests(
        full_dir, "data", "state", "stats"
    )
    # Other settings: the previous run is not reused, and the manifest says why.
    _, masks = run_build(f"--coco-root={root}", f"--output={out}", *SHARDS, "--tfrecord-masks")
    assert masks["changes"]["shards_reused"] == 0
    assert "tfrecord_masks" in masks["changes"]["why_not_incremental"]


def _catalog(out: str):
    from pyiceberg.catalog.sql import SqlCatalog

    folder = os.path.join(out, "iceberg")
    return SqlCatalog(
        "coco_beam", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}"
    )


def _image_rows(run_dir: str) -> list[tuple]:
    return duckdb.sql(
        f"SELECT split, image_id, sha256, num_objects FROM '{run_dir}/data/*.parquet' ORDER BY ALL"
    ).fetchall()


def test_each_run_is_a_snapshot_of_the_iceberg_table(rebuilt):
    (first_dir, first), (second_dir, second) = rebuilt["first"], rebuilt["second"]
    table = _catalog(rebuilt["out"]).load_table("coco_beam.images")
    by_run = {s.summary.additional_properties.get("coco-beam.run-id"): s for s in table.snapshots()}
    assert first["run_id"] in by_run and second["run_id"] in by_run
    columns = ["split", "image_id", "sha256", "num_objects"]
    for run_dir, manifest in ((first_dir, first), (second_dir, second)):
        snapshot = by_run[manifest["run_id"]]
        scanned = table.scan(snapshot_id=snapshot.snapshot_id, selected_fields=columns)
        rows = sorted(tuple(r[c] for c in columns) for r in scanned.to_arrow().to_pylist())
        assert rows == _image_rows(run_dir)
        # The snapshot registers the run's own files, not copies (a scan plans the ones
        # holding rows).
        files = sorted(t.file.file_path for t in scanned.plan_files())
        assert files == sorted(
            "file://" + os.path.join(run_dir, s["path"])
            for s in manifest["shards"]
            if s["format"] == "parquet" and s["rows"]
        )
        # DuckDB over the files the snapshot names reads the same rows.
        paths = ", ".join(f"'{p[len('file://') :]}'" for p in files)
        assert (
            duckdb.sql(
                f"SELECT {', '.join(columns)} FROM read_parquet([{paths}]) ORDER BY ALL"
            ).fetchall()
            == rows
        )
    assert {f.name for f in table.spec().fields} == {"split"}
    # The statistics tables are registered the same way.
    categories = _catalog(rebuilt["out"]).load_table("coco_beam.stats_categories")
    snapshot = next(
        s
        for s in categories.snapshots()
        if s.summary.additional_properties.get("coco-beam.run-id") == second["run_id"]
    )
    scanned = categories.scan(snapshot_id=snapshot.snapshot_id).to_arrow().to_pylist()
    expected = duckdb.sql(f"SELECT * FROM '{second_dir}/stats/categories.parquet'")
    columns = expected.columns
    assert sorted(repr(tuple(r[c] for c in columns)) for r in scanned) == sorted(
        repr(row) for row in expected.fetchall()
    )
    assert scanned


def test_a_previous_run_with_files_gone_is_rebuilt_where_they_are_missing(synth_root, tmp_path):
    out = str(tmp_path / "out")
    args = [f"--coco-root={synth_root}", f"--output={out}", *SHARDS]
    first_dir, first = run_build(*args)
    parquet = [s for s in first["shards"] if s["format"] == "parquet" and s["rows"]]
    # One shard's TFRecord file and another shard's state are deleted behind the tool's back.
    gone = next(
        s
        for s in first["shards"]
        if s["format"] == "tfrecord"
        and s["index"] == parquet[0]["index"]
        and s["split"] == parquet[0]["split"]
    )
    os.remove(os.path.join(first_dir, gone["path"]))
    os.remove(os.path.join(first_dir, parquet[1]["state"]))
    second_dir, second = run_build(*args)
    rewritten = {(s["split"], s["index"]) for s in second["shards"] if not s["reused"]}
    assert rewritten == {(s["split"], s["index"]) for s in parquet[:2]}
    with open(os.path.join(second_dir, gone["path"]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == gone["sha256"]
    # The previous run's other files were not touched by the rewrite.
    for shard in first["shards"]:
        path = os.path.join(first_dir, shard["path"])
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
    assert [(s["path"], s["sha256"]) for s in second["shards"]] == [
        (s["path"], s["sha256"]) for s in first["shards"]
    ]


def test_a_catalog_named_by_uri_and_properties_gets_the_snapshot(synth_root, tmp_path):
    from pyiceberg.catalog import load_catalog

    catalog_dir = tmp_path / "lake"
    uri = f"sqlite:///{catalog_dir}/catalog.db"
    warehouse = f"file://{catalog_dir}/warehouse"
    catalog_dir.mkdir()
    _, manifest = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path / 'out'}",
        "--num-shards=2",
        f"--iceberg-catalog={uri}",
        f"--iceberg-property=warehouse={warehouse}",
        "--iceberg-namespace=vision",
    )
    assert not (tmp_path / "out" / "iceberg").exists()
    table = load_catalog("coco_beam", uri=uri, warehouse=warehouse).load_table("vision.images")
    snapshot = table.current_snapshot()
    assert snapshot.summary.additional_properties["coco-beam.run-id"] == manifest["run_id"]
    assert table.scan().to_arrow().num_rows == manifest["counts"]["image"]["written"]


def _a_published_run_missing_from_the_lake(synth_root, tmp_path, monkeypatch):
    """A build, then a second one that moves LATEST but whose lake commit does nothing (as if
    killed just before it); returns the output, the build arguments, the first manifest and the
    second run's ``(folder, manifest)``."""
    import coco_beam.transforms.runs.lake

    out = str(tmp_path / "out")
    args = (f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2")
    _, first = run_build(*args)
    register = coco_beam.transforms.runs.lake.register_run
    monkeypatch.setattr(coco_beam.transforms.runs.lake, "register_run", lambda *a, **k: {})
    second = run_build(*args, "--full")
    monkeypatch.setattr(coco_beam.transforms.runs.lake, "register_run", register)
    return out, args, first, second


def test_a_run_killed_before_its_lake_commit_is_registered_by_the_next(
    synth_root, tmp_path, monkeypatch
):
    """A run that moved LATEST and died before committing to the lake (simulated: the commit
    does nothing) leaves the table one run behind; the next build registers it first, so the
    table's history holds every published run, in order, and ends at the newest."""
    out, args, first, (_, second) = _a_published_run_missing_from_the_lake(
        synth_root, tmp_path, monkeypatch
    )
    table = _catalog(out).load_table("coco_beam.images")
    assert table.current_snapshot().summary.get("coco-beam.run-id") == first["run_id"]
    third_dir, third = run_build(*args)
    for name in ("images", "categories", "stats_categories"):
        table = _catalog(out).load_table(f"coco_beam.{name}")
        runs = [s.summary.get("coco-beam.run-id") for s in table.snapshots()]
        assert runs == [first["run_id"], second["run_id"], third["run_id"]], name
    images = _catalog(out).load_table("coco_beam.images")
    second_snapshot = images.snapshots()[1].snapshot_id
    files = {t.file.file_path for t in images.scan(snapshot_id=second_snapshot).plan_files()}
    assert files and all(f"/runs/{second['run_id']}/data/" in f for f in files)
    columns = ("split", "image_id", "sha256", "num_objects")
    scanned = images.scan(selected_fields=columns).to_arrow().select(list(columns)).to_pylist()
    assert _image_rows(third_dir) == sorted(tuple(r.values()) for r in scanned)


def test_a_lost_previous_run_that_cannot_be_registered_does_not_block_the_next(
    synth_root, tmp_path, monkeypatch, caplog
):
    """The run LATEST names never reached the lake and its shards were deleted since: the next
    run cannot register it (its files are gone), says so, and publishes and registers itself."""
    out, args, first, (second_dir, second) = _a_published_run_missing_from_the_lake(
        synth_root, tmp_path, monkeypatch
    )
    for path in glob.glob(os.path.join(second_dir, "data", "*.parquet")):
        os.remove(path)
    with caplog.at_level(logging.WARNING, logger="coco_beam.transforms.runs.publish"):
        _, third = run_build(*args)
    assert any("previous run was not registered" in r.getMessage() for r in caplog.records)
    images = _catalog(out).load_table("coco_beam.images")
    runs = [s.summary.get("coco-beam.run-id") for s in images.snapshots()]
    assert runs == [first["run_id"], third["run_id"]]
    assert third["changes"]["previous_run"] == second["run_id"]


def test_a_tfrecord_only_build_registers_statistics_only_in_a_catalog_it_is_named(
    synth_root, tmp_path
):
    from pyiceberg.catalog import load_catalog

    args = (f"--coco-root={synth_root}", "--num-shards=2", "--formats=tfrecord")
    run_build(*args, f"--output={tmp_path / 'plain'}")
    assert not (tmp_path / "plain" / "iceberg").exists()
    uri = f"sqlite:///{tmp_path}/catalog.db"
    warehouse = f"file://{tmp_path}/warehouse"
    _, manifest = run_build(
        *args,
        f"--output={tmp_path / 'named'}",
        f"--iceberg-catalog={uri}",
        f"--iceberg-property=warehouse={warehouse}",
    )
    catalog = load_catalog("coco_beam", uri=uri, warehouse=warehouse)
    tables = {name for _, name in catalog.list_tables("coco_beam")}
    assert "images" not in tables and {"categories", "stats_categories"} <= tables
    stats = catalog.load_table("coco_beam.stats_categories")
    assert stats.current_snapshot().summary.get("coco-beam.run-id") == manifest["run_id"]


def test_keep_runs_deletes_older_folders_and_their_snapshots_but_never_a_kept_runs_file(
    synth_root, tmp_path
):
    """Four builds into one output with ``--keep-runs=2`` (rebuilds link the unchanged shards
    of the run before), and a killed run's folder among them: the newest two runs stay whole
    and readable, older folders go, and the lake keeps the snapshots of the kept runs only,
    each scanning back as its run's rows."""
    out = str(tmp_path / "out")
    args = (f"--coco-root={synth_root}", f"--output={out}", "--num-shards=3", "--keep-runs=2")
    runs = [run_build(*args)]
    killed = os.path.join(out, "runs", "20000101T000000Z-000000", ".tmp")
    os.makedirs(killed)  # a run killed before publishing, long ago
    runs += [run_build(*args) for _ in range(3)]
    kept = [m["run_id"] for _, m in runs[-2:]]
    assert sorted(os.listdir(os.path.join(out, "runs"))) == kept
    # The newest run reused the shards of the one before, which reused the deleted ones':
    # the same files (hard links), still whole.
    for run_dir, manifest in runs[-2:]:
        for shard in manifest["shards"]:
            with open(os.path.join(run_dir, shard["path"]), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
        assert all(s["reused"] for s in manifest["shards"])
    catalog = _catalog(out)
    for name in ("images", "categories", "stats_summary"):
        table = catalog.load_table(f"coco_beam.{name}")
        assert [s.summary.get("coco-beam.run-id") for s in table.snapshots()] == kept, name
    images = catalog.load_table("coco_beam.images")
    for snapshot, (run_dir, _) in zip(images.snapshots(), runs[-2:], strict=True):
        columns = ("split", "image_id", "sha256", "num_objects")
        scanned = images.scan(snapshot_id=snapshot.snapshot_id, selected_fields=columns)
        rows = scanned.to_arrow().select(list(columns)).to_pylist()
        assert sorted(tuple(r.values()) for r in rows) == _image_rows(run_dir)
