"""deploy/ checked as far as no cluster is needed: syntax, and agreement with the code; and the
Airflow DAG loaded by a real Airflow with Beam's provider, its task running a build.

The Airflow tests (marked ``engines``, minutes on a fresh machine) install Airflow into a
virtual environment of its own, with the pinned set ``deploy/schedule/airflow-constraints.txt``,
once per machine under ``~/.cache/coco-beam/airflow-venv``; the DAG's task runs coco-beam with
this interpreter (``COCO_BEAM_PYTHON``)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from coco_beam.pipelines.options import BuildOptions

from helpers import REPO

DEPLOY = REPO / "deploy"


@pytest.mark.parametrize(
    # conf/: Flink's own configuration, not a Kubernetes manifest.
    "path",
    sorted(p for p in DEPLOY.rglob("*.yaml") if p.parent.name != "conf"),
    ids=lambda p: p.name,
)
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
    samples = {
        "tfrecord_masks": None,
        "formats": "parquet,tfrecord",
        "num_shards": "4",
        "keep_runs": "3",
        "max_shrink": "0.5",
    }
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


def test_python_files_compile_and_the_shell_scripts_parse():
    for path in DEPLOY.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))
    for path in DEPLOY.rglob("*.sh"):
        shell = "bash" if path.read_text().startswith("#!/usr/bin/env bash") else "sh"
        subprocess.run([shell, "-n", str(path)], check=True)
        assert os.access(path, os.X_OK), f"{path} is not executable"


def _recognized(arg: str) -> bool:
    """Whether Beam (any runner's options) or ``coco-beam build`` knows the option ``arg``."""
    from apache_beam.runners.portability import flink_runner, spark_runner  # noqa: F401

    return bool(PipelineOptions([arg]).get_all_options(drop_default=True))


# Options of Beam's Java job servers that the Python SDK passes through without knowing them.
_JAVA_OPTIONS = {"flink_conf_dir"}


@pytest.mark.parametrize("engine", ["flink", "spark"])
def test_engine_scripts_pass_only_options_beam_and_the_build_accept(engine):
    """deploy/<engine>/submit.sh is what tests/test_engines.py runs; every option it spells is
    one of Beam's (its runner's included) or of ``coco-beam build``."""
    script = (DEPLOY / engine / "submit.sh").read_text()
    # A value spelled with a shell variable is tried as "1".
    options = {
        name: "1" if "$" in value else value.strip('"')
        for name, value in re.findall(r" --([a-z_-]+)=(\S+)", script)
    }
    assert {"runner", f"{engine}_job_server_jar", "environment_type", "coco-root"} <= set(options)
    unknown = {
        name
        for name, value in options.items()
        if name not in _JAVA_OPTIONS and not _recognized(f"--{name}={value}")
    }
    assert not unknown, unknown
    assert not _recognized("--flink_job_server_jars=1"), "a misspelt option goes unnoticed"


def _assigned(path: pathlib.Path, name: str):
    """The literal a module assigns to ``name``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


def test_scheduled_runs_pass_only_options_the_build_accepts():
    dag = DEPLOY / "schedule" / "coco_beam_dag.py"
    build, dataflow = _assigned(dag, "BUILD"), _assigned(dag, "DATAFLOW")
    ours = {"coco_root", "output", "formats", "keep_runs"}
    assert set(build) == ours
    parsed = PipelineOptions([f"--{k}={build[k]}" for k in sorted(ours)]).view_as(BuildOptions)
    assert parsed.keep_runs == build["keep_runs"]
    assert parsed.formats == ["parquet", "tfrecord"]
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in dataflow.items()]
    assert all(_recognized(flag) for flag in flags), flags
    cron = yaml.safe_load((DEPLOY / "schedule" / "cronjob.yaml").read_text())
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (params,) = [a for a in container["args"] if a.startswith("--parameters=")]
    pairs = dict(p.split("=", 1) for p in params.split("^~^", 1)[1].split("~"))
    assert {"coco_root", "output", "formats", "keep_runs"} <= set(pairs)
    # The nightly jobs bound their storage.
    assert int(pairs["keep_runs"]) >= 1 and int(build["keep_runs"]) >= 1


_AIRFLOW_PACKAGES = [
    "apache-airflow",
    "apache-airflow-providers-apache-beam",
    # The Beam operator builds its Dataflow configuration with it, whatever the runner.
    "apache-airflow-providers-google",
    "apache-beam",
]
# A fresh install (about 300 packages) takes minutes; a cached one, none.
_INSTALL_TIMEOUT = 1800


def _airflow_venv() -> pathlib.Path:
    """Airflow in a virtual environment of its own, installed once for a given constraints
    file (a stamp holds the file's digest)."""
    cache = os.environ.get("COCO_BEAM_CACHE", os.path.expanduser("~/.cache/coco-beam"))
    venv = pathlib.Path(cache) / "airflow-venv"
    constraints = DEPLOY / "schedule" / "airflow-constraints.txt"
    wanted = hashlib.sha256(constraints.read_bytes()).hexdigest()
    stamp = venv / ".coco-beam-installed"
    if stamp.exists() and stamp.read_text() == wanted:
        return venv
    python = venv / "bin" / "python"
    for command in (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), *_AIRFLOW_PACKAGES],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
    stamp.write_text(wanted)
    return venv


@pytest.fixture(scope="session")
def airflow(tmp_path_factory):
    """``run(*args)``: the ``airflow`` command of that environment, with a fresh home and
    database, the DAGs folder ``deploy/schedule``, and coco-beam run by this interpreter."""
    venv = _airflow_venv()
    home = tmp_path_factory.mktemp("airflow-home")
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DEPLOY / "schedule"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        COCO_BEAM_PYTHON=sys.executable,
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "airflow"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    migrated = run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return run


def _json_output(result: subprocess.CompletedProcess):
    """The JSON document among the lines Airflow prints (warnings come before it)."""
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith(("[", "{"))]
    return json.loads(line)


@pytest.mark.engines
def test_airflow_loads_the_dag_without_import_errors(airflow):
    assert _json_output(airflow("dags", "list-import-errors", "--local", "-o", "json")) == []
    dags = _json_output(airflow("dags", "list", "--local", "-o", "json"))
    assert [d["dag_id"] for d in dags] == ["coco_beam_nightly"]


@pytest.mark.engines
def test_airflow_runs_the_dags_build(airflow, synth_root, tmp_path):
    """The nightly task, run by Airflow with a run configuration that points it at a small
    dataset and a local runner: it publishes a complete run."""
    out = tmp_path / "out"
    conf = {
        "build": {"coco_root": synth_root, "output": str(out), "formats": "parquet"},
        "runner": "FnApiRunner",
        "runner_options": {},
    }
    result = airflow("dags", "test", "coco_beam_nightly", "-c", json.dumps(conf))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "state=success" in result.stdout + result.stderr
    run_id = (out / "LATEST").read_text().strip()
    manifest = json.loads((out / "runs" / run_id / "manifest.json").read_text())
    counts = manifest["counts"]["image"]
    assert counts["written"] == counts["read"] > 0
    assert {s["format"] for s in manifest["shards"]} == {"parquet"}
