"""Builds from gs:// to gs:// against a real GCS emulator server on loopback."""

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import run_build, shard_files

EMULATOR = shutil.which("gcp-storage-emulator") or os.path.join(
    os.path.dirname(sys.executable), "gcp-storage-emulator"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    port = _free_port()
    proc = subprocess.Popen(
        [EMULATOR, "start", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.1)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    yield port
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    proc.kill()
    proc.wait()


def test_build_from_gcs_to_gcs_equals_local(emulator, synth_root, synth_build, tmp_path):
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    client.project = "coco-beam-test"
    bucket = client.create_bucket("coco-in")
    client.create_bucket("coco-out")
    for path in glob.glob(os.path.join(synth_root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            bucket.blob("coco/" + os.path.relpath(path, synth_root)).upload_from_filename(path)

    # Anonymous access: Beam's GCS client falls back to it when no credentials exist.
    _, manifest = run_build(
        "--coco-root=gs://coco-in/coco", "--output=gs://coco-out/out", "--num-shards=2"
    )
    _, local = synth_build
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in local["shards"]]
    assert manifest["counts"] == local["counts"]
    out = client.bucket("coco-out")
    run_id = out.blob("out/LATEST").download_as_bytes().decode().strip()
    assert run_id == manifest["run_id"]
    for shard in manifest["shards"]:
        data = out.blob(f"out/runs/{run_id}/{shard['path']}").download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    names = {b.name for b in client.list_blobs("coco-out", prefix=f"out/runs/{run_id}/")}
    assert not any("/.tmp/" in n for n in names), "temporary shards left behind"
    shards = [n for n in names if "/data/" in n and n.endswith(".parquet")]
    assert len(shards) == len(shard_files(synth_build[0]))
