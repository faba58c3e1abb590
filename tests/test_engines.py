"""The build on real engines: Apache Flink, Apache Spark and Prism, each byte for byte the
DirectRunner's, and runs that fail half-way and are retried by the engine itself.

The engines come from ``deploy/fetch-engines.sh`` (Maven and ``go install``, cached under
``~/.cache/coco-beam``, fetched once per machine by the session fixture); Flink and Spark runs
go through ``deploy/flink/submit.sh`` and ``deploy/spark/submit.sh`` themselves, so the
invocations documented in ``deploy/`` are the ones tested. Every build runs in its own process.

Compared with the DirectRunner's in-process build of the same input: every file of the run
folder (shards, statistics, tables, report, manifest without its per-run fields), on the real
COCO excerpt and on synthetic data with every annotation family, Parquet and TFRecord.

Retries: the fault hook (``transforms/runtime/faults.py``) fails a shard writer once after part
of its shard is written, and the publishing step once after it renamed some shards. Flink
(restart strategy from ``deploy/flink/conf``: the whole job is run again) and Spark (a task
retried, ``local[2,4]``) must publish one run, equal to an undisturbed one, with no stray file,
every record conserved and the run once in the lake table's history.

Slow (minutes): marked ``engines``; ``-m "not engines"`` leaves them out locally.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from test_output_bytes import output_digests

from helpers import REPO, require_coco_tiny, run_build

pytestmark = pytest.mark.engines

DEPLOY = REPO / "deploy"
# The CLI of this interpreter: the environment under test, whatever is on PATH.
_COCO_BEAM = f"{sys.executable} -m coco_beam.pipelines.cli"
_SYNTH_ARGS = ("--formats=parquet,tfrecord", "--tfrecord-masks", "--panoptic-semantic")
_SYNTH_ARGS += ("--num-shards=2",)
_TINY_ARGS = ("--formats=parquet,tfrecord", "--tfrecord-masks")
# A shard every synthetic dataset has, and the publishing step: each fails once.
_FAULTS = "write:train2017-00000,publish:rename"
_FIRED = ["publish_rename.fired", "write_train2017-00000.fired"]
# A build on an engine starts a JVM and an embedded cluster: tens of seconds on 2 cores.
_TIMEOUT = 900


def _unavailable(message: str) -> None:
    """Skips where an engine cannot be had; fails under CI (``CI=true``), where it is a broken
    set-up, not a reason to pass."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engines() -> dict[str, str]:
    """Paths of the Flink and Spark job server jars and of the prism binary, fetched once."""
    missing = [tool for tool in ("java", "mvn", "go") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"fetching the engines needs {', '.join(missing)} on PATH")
    result = subprocess.run(
        [str(DEPLOY / "fetch-engines.sh"), "flink", "spark", "prism"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    flink, spark, prism = result.stdout.split()
    for path in (flink, spark, prism):
        assert os.path.isfile(path), path
    return {"flink": flink, "spark": spark, "prism": prism}


def _build(engine: str, engines: dict, root: str, out: str, args, **env) -> str:
    """One build on ``engine`` in a process of its own; returns the published run folder."""
    environment = dict(os.environ, COCO_BEAM=_COCO_BEAM, COCO_ROOT=root, OUTPUT=out, **env)
    if engine == "prism":
        command = [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            f"--coco-root={root}",
            f"--output={out}",
            "--runner=PrismRunner",
            f"--prism_location={engines['prism']}",
            "--environment_type=LOOPBACK",
            *args,
        ]
    else:
        command = [str(DEPLOY / engine / "submit.sh"), *args]
    started = time.monotonic()
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=_TIMEOUT
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"{engine}: {seconds:.1f} s")  # shown with -s: the times deploy/README.md quotes
    with open(os.path.join(out, "LATEST")) as f:
        return os.path.join(out, "runs", f.read().strip())


@pytest.fixture(scope="module")
def direct_synth(synth_root, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("direct-synth")
    run_dir, _ = run_build(f"--coco-root={synth_root}", f"--output={out}", *_SYNTH_ARGS)
    return run_dir


@pytest.fixture(scope="module")
def direct_tiny(tmp_path_factory) -> str:
    root = str(require_coco_tiny())
    out = tmp_path_factory.mktemp("direct-tiny")
    run_dir, _ = run_build(f"--coco-root={root}", f"--output={out}", *_TINY_ARGS)
    return run_dir


@pytest.mark.parametrize("engine", ["prism", "spark", "flink"])
def test_synthetic_build_on_the_engine_equals_the_direct_runner(
    engine, engines, synth_root, direct_synth, tmp_path
):
    run_dir = _build(engine, engines, synth_root, str(tmp_path / "out"), _SYNTH_ARGS)
    assert output_digests(run_dir, synth_root) == output_digests(direct_synth, synth_root)


@pytest.mark.parametrize("engine", ["prism", "spark", "flink"])
def test_real_coco_build_on_the_engine_equals_the_direct_runner(
    engine, engines, direct_tiny, tmp_path
):
    root = str(require_coco_tiny())
    run_dir = _build(engine, engines, root, str(tmp_path / "out"), _TINY_ARGS)
    assert output_digests(run_dir, root) == output_digests(direct_tiny, root)


def _listed(manifest: dict) -> set[str]:
    """The files a run folder holds, by its manifest: shards, their state files, statistics,
    and the files every run writes."""
    listed = {"manifest.json", "categories.parquet", "rejected/rejected.jsonl"}
    for shard in manifest["shards"]:
        listed.add(shard["path"])
        if shard.get("state"):
            listed.add(shard["state"])
    stats = manifest.get("stats") or {}
    listed.update(f["path"] for f in stats.get("files", []))
    listed.update(stats[key] for key in ("path", "report") if stats.get(key))
    return listed


def _files(folder: str) -> set[str]:
    return {
        os.path.relpath(os.path.join(dirpath, name), folder)
        for dirpath, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.parametrize(
    ("engine", "retrying"),
    [
        # A failed Flink batch job is run again, whole, under a restart strategy.
        ("flink", {}),
        # Spark in local mode retries a failed task only with a failure budget: local[N,F].
        ("spark", {"SPARK_MASTER_URL": "local[2,4]"}),
    ],
    ids=["flink", "spark"],
)
def test_engine_retries_publish_one_complete_run(
    engine, retrying, engines, synth_root, direct_synth, tmp_path
):
    from coco_beam.transforms.runs import lake

    faults = tmp_path / "faults"
    out = str(tmp_path / "out")
    run_dir = _build(
        engine,
        engines,
        synth_root,
        out,
        _SYNTH_ARGS,
        COCO_BEAM_FAULTS=_FAULTS,
        COCO_BEAM_FAULTS_DIR=str(faults),
        **retrying,
    )
    assert sorted(os.listdir(faults)) == _FIRED, "both faults struck"
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    # Published exactly once: one run folder, LATEST names it, the lake table has it once.
    assert os.listdir(os.path.join(out, "runs")) == [manifest["run_id"]]
    # (Hidden files are the lease's lock file, which stays by design.)
    visible = sorted(name for name in os.listdir(out) if not name.startswith("."))
    assert visible == ["LATEST", "iceberg", "runs"], "a lease or a temporary file left behind"
    catalog = lake._catalog(lake.lake_config(out, None, [], "coco_beam"))
    for name in ("images", "categories", "stats_summary"):
        snapshots = catalog.load_table(f"coco_beam.{name}").snapshots()
        assert [s.summary.get("coco-beam.run-id") for s in snapshots] == [manifest["run_id"]]
    # No stray file: the run folder holds what its manifest lists, nothing half-written.
    assert _files(run_dir) == _listed(manifest)
    # Every record conserved, and the bytes of an undisturbed run.
    for kind, count in manifest["counts"].items():
        assert count["read"] == count["written"] + count["rejected"], kind
    assert manifest["counts"]["image"]["written"] > 0
    assert output_digests(run_dir, synth_root) == output_digests(direct_synth, synth_root)
