"""The build on Beam's portable path (what Flink, Spark and Dataflow Runner v2 execute): a job
service and an SDK worker pool, both started here on loopback in their own processes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest

from coco_beam.pipelines import build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """Beam's Python job service and an EXTERNAL worker pool; the pool starts its SDK workers
    with the ``python`` on PATH, so this interpreter's folder goes first."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    job_port, pool_port = _free_port(), _free_port()
    logs = tmp_path_factory.mktemp("portable-logs")
    staging = tmp_path_factory.mktemp("portable-staging")
    job_log, pool_log = open(logs / "job.log", "w"), open(logs / "pool.log", "w")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apache_beam.runners.portability.local_job_service_main",
                f"--port={job_port}",
                f"--staging_dir={staging}",
            ],
            env=env,
            stdout=job_log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                f"--service_port={pool_port}",
            ],
            env=env,
            stdout=pool_log,
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        _wait_for(job_port, procs[0])
        _wait_for(pool_port, procs[1])
        yield job_port, pool_port, staging
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        job_log.close()
        pool_log.close()


def _digests(run_dir: str) -> dict:
    out = {}
    for folder in ("data", "stats"):
        for name in sorted(os.listdir(os.path.join(run_dir, folder))):
            with open(os.path.join(run_dir, folder, name), "rb") as f:
                out[f"{folder}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_portable_runner_with_external_workers_equals_the_direct_runner(
    portable_services, synth_root, synth_build, tmp_path
):
    job_port, pool_port, _ = portable_services
    out = tmp_path / "portable"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            f"--coco-root={synth_root}",
            f"--output={out}",
            "--num-shards=2",
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = out / "runs" / (out / "LATEST").read_text().strip()
    direct_dir, _ = synth_build
    assert _digests(str(run_dir)) == _digests(direct_dir)


def test_the_built_wheel_is_staged_with_extra_package(portable_services, synth_root, tmp_path):
    """Worker code travels as the installed package, never a pickled main session: the wheel
    built from pyproject.toml is staged with the job (the EXTERNAL pool here runs in this
    environment, where it is installed already; a container worker installs it from staging)."""
    job_port, pool_port, staging = portable_services
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), repo],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("coco_beam-*.whl")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            f"--coco-root={synth_root}",
            f"--output={out}",
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}",
            f"--extra_package={wheel}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "save_main_session" not in result.stderr
    staged = [p for p in staging.rglob("*") if p.name.endswith(wheel.name)]
    assert staged and staged[0].read_bytes() == wheel.read_bytes()


def test_multi_processing_direct_runner_equals_in_memory(synth_root, synth_build, tmp_path):
    _, plan = build.run(
        [
            f"--coco-root={synth_root}",
            f"--output={tmp_path}",
            "--num-shards=2",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ]
    )
    assert _digests(plan.run_dir) == _digests(synth_build[0])
