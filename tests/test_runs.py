"""Runs that die or are retried: killed builds, retried bundles, and what readers see meanwhile."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from coco_beam.transforms.shards import write as write_shards

from helpers import run_build


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _published(out: str) -> tuple[str, dict] | None:
    """The run ``LATEST`` names, checked as a reader would trust it: its manifest exists and
    every shard it lists is there with the listed size and checksum. None before any run."""
    latest = os.path.join(out, "LATEST")
    if not os.path.exists(latest):
        return None
    with open(latest) as f:
        run_dir = os.path.join(out, "runs", f.read().strip())
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    for shard in manifest["shards"]:
        path = os.path.join(run_dir, shard["path"])
        assert os.path.getsize(path) == shard["bytes"]
        assert _digest(path) == shard["sha256"]
    listed = {os.path.join(run_dir, s["path"]) for s in manifest["shards"]}
    assert set(glob.glob(os.path.join(run_dir, "data", "*"))) == listed, "stray files"
    assert not os.path.exists(os.path.join(run_dir, ".tmp"))
    return run_dir, manifest


def _current_snapshot_run(out: str) -> str:
    """The run whose shards the Iceberg table's current snapshot holds."""
    from pyiceberg.catalog.sql import SqlCatalog

    folder = os.path.join(out, "iceberg")
    catalog = SqlCatalog(
        "coco_beam", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}"
    )
    snapshot = catalog.load_table("coco_beam.images").current_snapshot()
    return snapshot.summary.additional_properties["coco-beam.run-id"]


def _shard_digests(run_dir: str, manifest: dict) -> dict:
    return {s["path"]: _digest(os.path.join(run_dir, s["path"])) for s in manifest["shards"]}


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory):
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path_factory.mktemp('reference')}",
        "--num-shards=3",
    )
    return run_dir, manifest


def test_killed_builds_leave_readers_a_complete_run_and_a_rerun_completes(
    synth_root, reference, tmp_path
):
    """SIGKILL to the whole build (launcher and workers) at random moments from start to
    finish, several times into one output, then an uninterrupted run: at every moment LATEST
    names nothing or a complete run, and the final output equals an uninterrupted build's."""
    out = str(tmp_path / "out")
    command = [
        sys.executable,
        "-m",
        "coco_beam.pipelines.cli",
        "build",
        f"--coco-root={synth_root}",
        f"--output={out}",
        "--num-shards=3",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    full = time.monotonic() - started
    rng = random.Random(11)
    current = _current_snapshot_run(out)
    for i, fraction in enumerate(sorted(rng.uniform(0.05, 1.0) for _ in range(4))):
        before = _published(out)
        # Full rebuilds and incremental ones (which link the previous run's shards), killed.
        killed = command + ["--full"] * (i % 2 == 0)
        proc = subprocess.Popen(
            killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(full * fraction)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        after = _published(out)  # the previous run, or the killed one if it had published
        assert after is not None and (after == before or after[1]["run_id"] != before[1]["run_id"])
        # The lake table's current snapshot is a complete run's: the one it was before, the
        # run LATEST named (a run killed between LATEST and its commit is registered by the
        # next one to publish), or the killed one if it got that far; never an older one.
        registered = _current_snapshot_run(out)
        assert registered in {current, before[1]["run_id"], after[1]["run_id"]}
        assert registered >= current
        current = registered
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    run_dir, manifest = _published(out)
    assert _current_snapshot_run(out) == manifest["run_id"]
    ref_dir, ref_manifest = reference
    assert _shard_digests(run_dir, manifest) == _shard_digests(ref_dir, ref_manifest)
    assert _digest(os.path.join(run_dir, "stats", "stats.json")) == _digest(
        os.path.join(ref_dir, "stats", "stats.json")
    )
    # Killed runs left folders without a manifest; nothing points at them.
    for folder in glob.glob(os.path.join(out, "runs", "*")):
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            assert os.path.basename(folder) != os.path.basename(run_dir)


def test_a_retried_shard_leaves_no_duplicate_and_no_stray_file(
    synth_root, reference, tmp_path, monkeypatch
):
    """Local runners do not retry, so a retry is made: for every other shard the writer runs
    once, its outputs are thrown away as a runner throws away a failed attempt's (its
    temporary file stays behind), then runs again. The published output equals a clean run's."""
    original = write_shards._WriteShardFn.process
    attempts = []

    def retried(self, element, num_shards, categories):
        (split, index), _ = element
        if index % 2 == 0:
            attempts.append((split, index))
            for _ in original(self, element, num_shards, categories):
                pass  # the failed attempt: files written, outputs lost
        yield from original(self, element, num_shards, categories)

    monkeypatch.setattr(write_shards._WriteShardFn, "process", retried)
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--num-shards=3"
    )
    assert len(attempts) >= 3
    assert _published(str(tmp_path)) == (run_dir, manifest)
    ref_dir, ref_manifest = reference
    assert _shard_digests(run_dir, manifest) == _shard_digests(ref_dir, ref_manifest)
    assert manifest["counts"] == ref_manifest["counts"]
    assert _digest(os.path.join(run_dir, "stats", "stats.json")) == _digest(
        os.path.join(ref_dir, "stats", "stats.json")
    )
