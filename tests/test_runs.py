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

    def retried(self, element, num_shards, categories, examples=None):
        (split, index), _ = element
        if index % 2 == 0:
            attempts.append((split, index))
            for _ in original(self, element, num_shards, categories, examples):
                pass  # the failed attempt: files written, outputs lost
        yield from original(self, element, num_shards, categories, examples)

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


def test_the_bundle_based_runner_writes_the_same_bytes(synth_root, reference, tmp_path):
    """Beam's BundleBasedDirectRunner, which enforces Beam's model more strictly than the
    default runner (side inputs of a multi-output step, retried bundles), publishes the same
    files, byte for byte."""
    from test_output_bytes import output_digests

    run_dir, manifest = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path}",
        "--num-shards=3",
        "--runner=BundleBasedDirectRunner",
    )
    assert _published(str(tmp_path)) == (run_dir, manifest)
    ref_dir, _ = reference
    assert output_digests(run_dir, synth_root) == output_digests(ref_dir, synth_root)


def test_publishing_that_fails_after_renaming_some_shards_is_retried_and_publishes_once(
    synth_root, reference, tmp_path, monkeypatch
):
    """The publishing step fails once after renaming part of the shards (the fault hook); the
    runner retries the bundle, which finds those shards at their final names: one published
    run, equal to an undisturbed one, no stray file, the run once in the Iceberg history."""
    from test_output_bytes import output_digests

    from coco_beam.transforms.runs import lake

    monkeypatch.setenv("COCO_BEAM_FAULTS", "publish:rename")
    monkeypatch.setenv("COCO_BEAM_FAULTS_DIR", str(tmp_path / "faults"))
    out = str(tmp_path / "out")
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}",
        f"--output={out}",
        "--num-shards=3",
        "--runner=BundleBasedDirectRunner",
    )
    assert os.listdir(tmp_path / "faults") == ["publish_rename.fired"], "the fault struck"
    assert _published(out) == (run_dir, manifest)
    assert os.listdir(os.path.join(out, "runs")) == [manifest["run_id"]]
    ref_dir, _ = reference
    assert output_digests(run_dir, synth_root) == output_digests(ref_dir, synth_root)
    catalog = lake._catalog(lake.lake_config(out, None, [], "coco_beam"))
    for name in ("images", "categories", "stats_summary"):
        snapshots = catalog.load_table(f"coco_beam.{name}").snapshots()
        assert [s.summary.get("coco-beam.run-id") for s in snapshots] == [manifest["run_id"]]


# --- one writer per output: the lease ----------------------------------------------------


def test_a_lease_is_exclusive_renewed_released_and_fenced(tmp_path):
    from coco_beam.transforms.runs.lease import Lease, LeaseHeld, check_lease, lease_holder

    out = str(tmp_path)
    lease = Lease.acquire(out, "run-a", timeout=60)
    holder = lease_holder(out)
    assert (holder["run_id"], holder["pid"]) == ("run-a", os.getpid())
    with pytest.raises(
        LeaseHeld, match=rf"being written by run run-a \(host .*, pid {os.getpid()}"
    ):
        Lease.acquire(out, "run-b", timeout=60)
    check_lease(out, "run-a")
    with pytest.raises(LeaseHeld, match="run run-b lost the lease"):
        check_lease(out, "run-b")
    assert lease.renew(now=lambda: holder["renewed"] + 30)
    assert lease_holder(out)["renewed"] == holder["renewed"] + 30
    assert lease.release()
    assert lease_holder(out) is None
    assert not lease.release(), "released once"
    Lease.acquire(out, "run-b", timeout=60).release()


def test_a_stale_lease_is_taken_over_and_its_old_holder_can_neither_renew_nor_release_it(tmp_path):
    from coco_beam.transforms.runs.lease import Lease, lease_holder

    out = str(tmp_path)
    stale = Lease.acquire(out, "run-a", timeout=60, now=lambda: time.time() - 61)
    fresh = Lease.acquire(out, "run-b", timeout=60)
    assert lease_holder(out)["run_id"] == "run-b"
    assert not stale.renew()
    assert not stale.release()
    assert lease_holder(out)["run_id"] == "run-b"
    assert fresh.release()


def test_the_lease_of_a_process_that_is_gone_is_taken_over_at_once(tmp_path):
    from coco_beam.transforms.runs.lease import Lease, lease_holder

    out = str(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    Lease.acquire(out, "killed", timeout=3600)
    with open(os.path.join(out, "LEASE")) as f:
        doc = json.load(f)
    with open(os.path.join(out, "LEASE"), "w") as f:
        json.dump(dict(doc, pid=int(gone.stdout)), f)
    Lease.acquire(out, "next", timeout=3600)
    assert lease_holder(out)["run_id"] == "next"


def test_a_build_started_while_another_runs_fails_at_once_naming_the_holder(
    synth_root, tmp_path, monkeypatch
):
    """Two builds into one output: the second starts while the first holds the lease (the
    first waits, inside its lease, until the second has failed). Exactly one publishes, the
    other fails naming it, and the Iceberg history holds the published run once."""
    import threading

    from coco_beam.pipelines import build
    from coco_beam.transforms.runs.lease import LeaseHeld

    find_previous = build.find_previous
    holding, second_done = threading.Event(), threading.Event()

    def held_open(options, plan):
        holding.set()
        assert second_done.wait(timeout=300)
        return find_previous(options, plan)

    monkeypatch.setattr(build, "find_previous", held_open)
    out = str(tmp_path / "out")
    args = (f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2")
    first = {}
    thread = threading.Thread(target=lambda: first.update(result=run_build(*args)))
    thread.start()
    try:
        assert holding.wait(timeout=300)
        with pytest.raises(LeaseHeld) as failed:
            run_build(*args)
    finally:
        second_done.set()
        thread.join()
    run_dir, manifest = first["result"]
    message = str(failed.value)
    assert f"is being written by run {manifest['run_id']} (host " in message
    assert f"pid {os.getpid()}" in message
    assert _published(out) == (run_dir, manifest)
    assert os.listdir(os.path.join(out, "runs")) == [manifest["run_id"]]
    assert not os.path.exists(os.path.join(out, "LEASE")), "released when the run ended"
    monkeypatch.setattr(build, "find_previous", find_previous)
    _, again = run_build(*args)  # the output is free again
    from coco_beam.transforms.runs import lake

    table = lake._catalog(lake.lake_config(out, None, [], "coco_beam")).load_table(
        "coco_beam.images"
    )
    assert [s.summary.get("coco-beam.run-id") for s in table.snapshots()] == [
        manifest["run_id"],
        again["run_id"],
    ]
