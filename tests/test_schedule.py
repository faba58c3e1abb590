"""Twenty scheduled rebuilds into one output, as a nightly job runs them.

Between two runs the input changes at random the way a living dataset does: nothing, a few
images added, removed or with new bytes, a category renamed; once, the export is broken (every
train file lost 90% of its images) and must be refused; once, a run dies halfway through
publishing, and leaves its lease behind as a killed process does. Every run that publishes
must equal a full build of its input, the lake table's history must hold one snapshot per
kept published run in order, and ``--keep-runs`` must bound the run folders on disk.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from coco_beam.pipelines.synth import synthesize
from coco_beam.transforms.runs import lake

from helpers import dump_json, load_json, run_build

KEEP = 3
ARGS = ("--num-shards=2", f"--keep-runs={KEEP}")
TRAIN = "train2017"
STEPS = (
    ["none"] * 3
    + ["add"] * 3
    + ["remove"] * 3
    + ["modify"] * 3
    + ["rename"] * 2
    + ["mixed"] * 3
    + ["broken", "killed"]
)


def _train_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "annotations", f"*_{TRAIN}.json")))


def _instances(root: str) -> str:
    return os.path.join(root, "annotations", f"instances_{TRAIN}.json")


def _add(root: str, rng: random.Random) -> None:
    """An image copied from another one's file, with one object of a random category."""
    doc = load_json(_instances(root))
    source = rng.choice(doc["images"])
    image_id = max(i["id"] for i in doc["images"]) + 1000
    added = dict(source, id=image_id, file_name=f"{image_id:012d}.jpg")
    shutil.copyfile(
        os.path.join(root, TRAIN, source["file_name"]),
        os.path.join(root, TRAIN, added["file_name"]),
    )
    doc["images"].append(added)
    doc["annotations"].append(
        {
            "id": max(a["id"] for a in doc["annotations"]) + 1,
            "image_id": image_id,
            "category_id": rng.choice(doc["categories"])["id"],
            "bbox": [1.0, 2.0, 30.0, 40.0],
            "segmentation": [[1.0, 2.0, 31.0, 2.0, 31.0, 42.0, 1.0, 42.0]],
            "area": 1200.0,
            "iscrowd": 0,
        }
    )
    dump_json(_instances(root), doc)


def _remove(root: str, rng: random.Random) -> None:
    """An image whose objects' categories all have other instances (a category emptied is a
    change the volume check stops), out of every train file, its file deleted."""
    doc = load_json(_instances(root))
    counts: dict[int, int] = {}
    for ann in doc["annotations"]:
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    candidates = [
        image
        for image in doc["images"]
        if all(
            counts[a["category_id"]]
            > sum(
                1
                for b in doc["annotations"]
                if b["image_id"] == image["id"] and b["category_id"] == a["category_id"]
            )
            for a in doc["annotations"]
            if a["image_id"] == image["id"]
        )
    ]
    removed = rng.choice(candidates)
    for path in _train_files(root):
        other = load_json(path)
        other["images"] = [i for i in other["images"] if i["id"] != removed["id"]]
        other["annotations"] = [a for a in other["annotations"] if a["image_id"] != removed["id"]]
        dump_json(path, other)
    os.remove(os.path.join(root, TRAIN, removed["file_name"]))


def _modify(root: str, rng: random.Random) -> None:
    """An image's bytes replaced by its mirror image, of the same size."""
    image = rng.choice(load_json(_instances(root))["images"])
    path = os.path.join(root, TRAIN, image["file_name"])
    with Image.open(path) as im:
        picture = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sink = io.BytesIO()
    picture.save(sink, format="JPEG", quality=90)
    with open(path, "wb") as f:
        f.write(sink.getvalue())


def _rename(root: str, rng: random.Random) -> None:
    doc = load_json(_instances(root))
    category = rng.choice(doc["categories"])
    category["name"] += "-renamed"
    dump_json(_instances(root), doc)


def _break(root: str) -> None:
    """The export that lost 90% of every train file's images (and their records)."""
    for path in _train_files(root):
        doc = load_json(path)
        doc["images"] = sorted(doc["images"], key=lambda i: i["id"])[: len(doc["images"]) // 10]
        kept = {i["id"] for i in doc["images"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in kept]
        dump_json(path, doc)


def _input_digest(root: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _output_digests(run_dir: str) -> dict:
    out = {}
    for folder in ("data", "state", "stats"):
        for path in sorted(glob.glob(os.path.join(run_dir, folder, "*"))):
            with open(path, "rb") as f:
                out[os.path.relpath(path, run_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _leave_a_killed_runs_lease(out: str) -> None:
    """The lease a SIGKILLed launcher leaves: naming a process that no longer exists."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dump_json(
        os.path.join(out, "LEASE"),
        {
            "run_id": "killed",
            "host": socket.gethostname(),
            "pid": int(gone.stdout),
            "renewed": time.time(),
        },
    )


def test_twenty_scheduled_rebuilds(tmp_path, monkeypatch):
    root = str(tmp_path / "coco")
    synthesize(root, 18, seed=5, processes=1, panoptic=False)
    out = str(tmp_path / "out")
    build = (f"--coco-root={root}", f"--output={out}", *ARGS)
    rng = random.Random(20)
    steps = ["first", *rng.sample(STEPS, len(STEPS))]
    changes = {"add": _add, "remove": _remove, "modify": _modify, "rename": _rename}
    full_builds: dict[str, dict] = {}  # input digest -> a full build's output digests
    published: list[str] = []
    for n, step in enumerate(steps):
        if step == "mixed":
            for change in ("add", "remove", "modify"):
                changes[change](root, rng)
        elif step in changes:
            # One image removed at a time: from 14 train images, never more than the default
            # --max-shrink of 0.1 (the broken export is far past it).
            for _ in range(rng.randint(1, 2) if step in ("add", "modify") else 1):
                changes[step](root, rng)
        latest_before = published[-1] if published else None

        if step == "broken":
            saved = str(tmp_path / "saved-annotations")
            shutil.copytree(os.path.join(root, "annotations"), saved)
            _break(root)
            with pytest.raises(Exception, match=f"split {TRAIN} fell from") as refused:
                run_build(*build)
            assert "--max-shrink=" in str(refused.value)
            shutil.rmtree(os.path.join(root, "annotations"))
            shutil.move(saved, os.path.join(root, "annotations"))
        elif step == "killed":
            monkeypatch.setenv("COCO_BEAM_FAULTS", "publish:rename")
            monkeypatch.setenv("COCO_BEAM_FAULTS_DIR", str(tmp_path / "faults"))
            with pytest.raises(Exception, match="injected fault at publish:rename"):
                run_build(*build)
            monkeypatch.delenv("COCO_BEAM_FAULTS")
            _leave_a_killed_runs_lease(out)
        else:
            run_dir, manifest = run_build(*build)
            published.append(manifest["run_id"])
            key = _input_digest(root)
            if key not in full_builds:
                full_dir, _ = run_build(
                    f"--coco-root={root}",
                    f"--output={tmp_path / f'full-{n}'}",
                    *ARGS[:1],
                    "--no-iceberg",
                )
                full_builds[key] = _output_digests(full_dir)
            assert _output_digests(run_dir) == full_builds[key], f"run {n} ({step})"
            assert manifest["volume_check"]["verdict"] == (
                "passed" if latest_before else "nothing to compare"
            )

        with open(os.path.join(out, "LATEST")) as f:
            assert f.read().strip() == published[-1], f"run {n} ({step})"
        folders = os.listdir(os.path.join(out, "runs"))
        complete = {
            r for r in folders if os.path.exists(os.path.join(out, "runs", r, "manifest.json"))
        }
        assert complete == set(published[-KEEP:]), f"run {n} ({step})"
        assert all(r > published[-KEEP:][0] for r in set(folders) - complete)
        assert not os.path.exists(os.path.join(out, "LEASE")) or step == "killed"

    assert len(published) == len(steps) - 2
    catalog = lake._catalog(lake.lake_config(out, None, [], "coco_beam"))
    for name in ("images", "categories", "stats_summary"):
        table = catalog.load_table(f"coco_beam.{name}")
        runs = [s.summary.get("coco-beam.run-id") for s in table.snapshots()]
        assert runs == published[-KEEP:], name
