"""deploy/ checked as far as no cluster is needed: syntax, and agreement with the code."""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from coco_beam.pipelines.options import BuildOptions

from helpers import REPO

DEPLOY = REPO / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_parse(path: pathlib.Path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for doc in documents:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), path


def test_dockerfile_copies_only_what_the_repository_has():
    text = (DEPLOY / "dataflow" / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/beam_python3\.11_sdk:2\.77\.0$", text, re.M)
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # The image's Beam is the pinned one.
    assert '"apache-beam[gcp]==2.77.0"' in (REPO / "pyproject.toml").read_text()


def test_template_parameters_are_options_the_build_accepts():
    metadata = json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())
    known = BuildOptions(["--coco_root=x"]).view_as(BuildOptions).get_all_options()
    samples = {"tfrecord_masks": None, "formats": "parquet,tfrecord", "num_shards": "4"}
    for param in metadata["parameters"]:
        name = param["name"]
        assert name in known, f"template parameter {name} is not a build option"
        value = samples.get(name, "0.1" if "fraction" in name else "gs://b/p")
        arg = f"--{name}" if value is None else f"--{name}={value}"
        options = PipelineOptions([arg]).view_as(BuildOptions)
        assert getattr(options, name) not in (None, False, ""), arg
        for pattern in param.get("regexes", []):
            if value is not None:
                assert re.match(pattern, value), (name, pattern)


def test_python_files_compile_and_the_shell_script_parses():
    for path in DEPLOY.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))
    subprocess.run(["sh", "-n", str(DEPLOY / "spark" / "submit.sh")], check=True)


def test_scheduled_runs_pass_only_options_the_build_accepts():
    dag = (DEPLOY / "schedule" / "coco_beam_dag.py").read_text()
    options = ast.literal_eval(
        re.search(r"pipeline_options=(\{.*?\n        \})", dag, re.S).group(1)
    )
    ours = {"coco_root", "output", "formats"}
    assert ours <= set(options)
    parsed = PipelineOptions([f"--{k}={options[k]}" for k in sorted(ours)]).view_as(BuildOptions)
    assert parsed.formats == ["parquet", "tfrecord"]
    cron = yaml.safe_load((DEPLOY / "schedule" / "cronjob.yaml").read_text())
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (params,) = [a for a in container["args"] if a.startswith("--parameters=")]
    pairs = dict(p.split("=", 1) for p in params.split("^~^", 1)[1].split("~"))
    assert {"coco_root", "output", "formats"} <= set(pairs)
