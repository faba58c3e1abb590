"""Shared fixtures: a synthetic COCO dataset and one build of it, made once per session."""

from __future__ import annotations

import os

import pytest

from coco_beam.pipelines.synth import synthesize

from helpers import run_build


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


@pytest.fixture(scope="session")
def synth_build(synth_root, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("synth-out")
    return run_build(f"--coco-root={synth_root}", f"--output={out}", "--num-shards=2")
