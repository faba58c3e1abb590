"""Shared fixtures: a synthetic COCO dataset and one build of it, made once per session."""

from __future__ import annotations

import glob
import json
import os
import pathlib

import pytest

from pipelines import build
from pipelines.synth import synthesize

REPO = pathlib.Path(__file__).resolve().parent.parent
COCO_TINY = REPO.parent / "shared" / "data" / "coco-tiny"

# The in-process runner: fast to start, and what TestPipeline uses. The default multi-process
# runner is exercised by the CLI tests.
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(autouse=True, scope="session")
def _offline_hf(tmp_path_factory):
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synth")
    synthesize(str(root), 60, seed=7, processes=1)
    return str(root)


def run_build(*args: str) -> tuple[str, dict]:
    """Runs a build in-process; returns the run folder and its manifest."""
    from apache_beam.io.filesystems import FileSystems

    _, plan = build.run([*args, *IN_MEMORY])
    with FileSystems.open(FileSystems.join(plan.run_dir, "manifest.json")) as f:
        return plan.run_dir, json.loads(f.read())


def shard_files(run_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "data", "*.parquet")))


@pytest.fixture(scope="session")
def synth_build(synth_root, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("synth-out")
    return run_build(f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2")
