"""Builds from gs:// to gs:// against a real GCS emulator server on loopback."""

import contextlib
import glob
import hashlib
import http.client
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from coco_beam.pipelines import build

from helpers import IN_MEMORY, run_build, shard_files

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


@pytest.fixture(scope="module")
def gcs_input(emulator, synth_root):
    """The synthetic dataset uploaded to gs://coco-in/coco; gs://coco-out for outputs."""
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    client.project = "coco-beam-test"
    bucket = client.create_bucket("coco-in")
    client.create_bucket("coco-out")
    for path in glob.glob(os.path.join(synth_root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            bucket.blob("coco/" + os.path.relpath(path, synth_root)).upload_from_filename(path)
    return client


def test_build_from_gcs_to_gcs_equals_local(gcs_input, synth_build, tmp_path):
    client = gcs_input

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
    # The statistics too, file for file.
    assert manifest["stats"]["files"] == local["stats"]["files"]

    # coco-beam stats, gs:// to gs://: the same statistics bytes, no shards.
    _, plan = build.run(
        ["--coco-root=gs://coco-in/coco", "--output=gs://coco-out/stats", *IN_MEMORY],
        statistics_only=True,
    )
    stats_files = {f["path"]: f["sha256"] for f in local["stats"]["files"]}
    for path, sha in stats_files.items():
        data = out.blob(f"stats/runs/{plan.run_id}/{path}").download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, path
    assert not list(client.list_blobs("coco-out", prefix=f"stats/runs/{plan.run_id}/data/"))


class _Proxy:
    """An HTTP proxy on loopback in front of the emulator. ``answer(method, path, body)`` may
    answer a request itself, as ``(status, body)``; every other request is forwarded. Under
    ``serial``, requests are answered and forwarded one at a time."""

    def __init__(self, upstream_port: int, answer, *, serial: bool = False):
        lock = threading.Lock()

        def forward(method: str, path: str, body: bytes, headers: dict):
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            return resp.status, resp.getheaders(), data

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                with lock if serial else contextlib.nullcontext():
                    own = answer(self.command, self.path, body)
                    if own is None:
                        status, response_headers, data = forward(
                            self.command, self.path, body, headers
                        )
                if own is not None:
                    status, data = own
                    response_headers = [("Content-Type", "application/json")] if data else []
                self.send_response(status)
                for key, value in response_headers:
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()


class _FlakyProxy(_Proxy):
    """Answers 503 to every ``every``-th request of the methods named and forwards the rest:
    transient server errors, on purpose."""

    def __init__(self, upstream_port: int, every: int, methods=("GET",)):
        self.failed = 0
        count = itertools.count(1)
        lock = threading.Lock()

        def answer(method: str, path: str, body: bytes):
            with lock:
                fail = method in methods and next(count) % every == 0
            if not fail:
                return None
            self.failed += 1
            return 503, b""

        super().__init__(upstream_port, answer)


def test_transient_503s_are_retried_and_the_output_is_complete(emulator, gcs_input, synth_build):
    """The same build through a proxy that answers 503 to every fifth request (reads,
    listings, uploads): each is retried and the output is complete and unchanged."""
    proxy = _FlakyProxy(emulator, every=5, methods=("GET", "POST", "PUT"))
    previous = os.environ["STORAGE_EMULATOR_HOST"]
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{proxy.port}"
    try:
        _, manifest = run_build(
            "--coco-root=gs://coco-in/coco", "--output=gs://coco-out/flaky", "--num-shards=2"
        )
    finally:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
        proxy.close()
    assert proxy.failed > 10
    _, local = synth_build
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in local["shards"]]
    assert manifest["counts"] == local["counts"]


def test_incremental_rebuild_on_gcs_reuses_unchanged_shards(gcs_input, tmp_path):
    """gs:// to gs://: images compared by the CRC32C the store keeps; unchanged shards are
    copied by the store, not rewritten; the result equals a full build."""
    import io

    from PIL import Image

    client = gcs_input
    bucket = client.bucket("coco-in")
    for blob in list(client.list_blobs("coco-in", prefix="coco/")):
        bucket.copy_blob(blob, bucket, "inc/" + blob.name[len("coco/") :])
    args = ["--coco-root=gs://coco-in/inc", "--num-shards=3", "--formats=parquet,tfrecord"]
    _, first = run_build(*args, "--output=gs://coco-out/inc")
    assert first["changes"] is None

    victim = sorted(
        b.name for b in client.list_blobs("coco-in", prefix="inc/val2017/") if b.name.endswith("g")
    )[0]
    with Image.open(io.BytesIO(bucket.blob(victim).download_as_bytes())) as im:
        flipped = im.convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    sink = io.BytesIO()
    flipped.save(sink, format="JPEG", quality=85)
    bucket.blob(victim).upload_from_string(sink.getvalue(), content_type="image/jpeg")

    _, second = run_build(*args, "--output=gs://coco-out/inc")
    changes = second["changes"]
    assert changes["incremental"] is True
    assert changes["images_modified"] == 1
    assert changes["images_added"] == changes["images_removed"] == 0
    assert changes["shards_rewritten"] == 1
    assert changes["shards_reused"] == len({(s["split"], s["index"]) for s in second["shards"]}) - 1
    _, full = run_build(*args, "--output=gs://coco-out/inc-full")
    assert [(s["path"], s["sha256"]) for s in second["shards"]] == [
        (s["path"], s["sha256"]) for s in full["shards"]
    ]
    assert second["stats"]["files"] == full["stats"]["files"]
    out = client.bucket("coco-out")
    for shard in second["shards"]:
        data = out.blob(f"inc/runs/{second['run_id']}/{shard['path']}").download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_a_gs_output_registers_in_a_named_catalog_with_its_warehouse_on_gcs(
    emulator, gcs_input, tmp_path
):
    """An object-store output has no default catalog; named one (SQL here, any pyiceberg
    catalog the same way), the run's gs:// shards are registered where they are, the table's
    metadata goes to a gs:// warehouse, and the table reads back the build's rows."""
    import duckdb
    from pyiceberg.catalog import load_catalog

    props = {
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": "gs://coco-out/lake",
        "gcs.service.host": f"http://127.0.0.1:{emulator}",
        "gcs.oauth2.token": "emulator",
        "gcs.oauth2.token-expires-at": "4102444800000",
    }
    args = [
        "--coco-root=gs://coco-in/coco",
        "--output=gs://coco-out/with-lake",
        "--num-shards=2",
        f"--iceberg-catalog={props['uri']}",
        *(f"--iceberg-property={k}={v}" for k, v in props.items() if k != "uri"),
    ]
    run_dir, manifest = run_build(*args)
    table = load_catalog("coco_beam", **props).load_table("coco_beam.images")
    assert table.current_snapshot().summary.get("coco-beam.run-id") == manifest["run_id"]
    assert table.metadata_location.startswith("gs://coco-out/lake/")
    files = sorted(t.file.file_path for t in table.scan().plan_files())
    assert files == sorted(
        f"{run_dir}/{s['path']}" for s in manifest["shards"] if s["format"] == "parquet"
    )
    scanned = table.scan(selected_fields=("split", "image_id", "sha256")).to_arrow()
    rows = sorted(scanned.select(["split", "image_id", "sha256"]).to_pylist(), key=str)
    client = gcs_input
    local = tmp_path / "shards"
    local.mkdir()
    for s in manifest["shards"]:
        blob = client.bucket("coco-out").blob(f"with-lake/runs/{manifest['run_id']}/{s['path']}")
        blob.download_to_filename(str(local / os.path.basename(s["path"])))
    expected = duckdb.sql(f"SELECT split, image_id, sha256 FROM '{local}/*.parquet'").fetchall()
    assert rows == sorted(
        ({"split": a, "image_id": b, "sha256": c} for a, b, c in expected), key=str
    )
    assert len(rows) == manifest["counts"]["image"]["written"]


class _PreconditionProxy(_Proxy):
    """The emulator ignores preconditions: a request with ``ifGenerationMatch`` is answered 412
    unless it names the object's current generation (0: no object), as GCS answers it;
    everything else is forwarded. Requests are served one at a time, so a check and the write
    after it are atomic, as on GCS."""

    def __init__(self, upstream_port: int):
        def generation(bucket: str, name: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            quoted = urllib.parse.quote(name, safe="")
            conn.request("GET", f"/storage/v1/b/{bucket}/o/{quoted}")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return int(json.loads(body)["generation"]) if resp.status == 200 else 0

        def answer(method: str, path: str, body: bytes):
            url = urllib.parse.urlsplit(path)
            query = urllib.parse.parse_qs(url.query)
            if "ifGenerationMatch" not in query:
                return None
            match = re.search(r"/b/([^/]+)/o(?:/([^/?]+))?", url.path)
            name = urllib.parse.unquote(match.group(2) or "")
            if not name:
                name = query.get("name", [""])[0] or json.loads(
                    re.search(rb"\{.*?\}", body, re.S).group(0)
                ).get("name", "")
            if generation(match.group(1), name) == int(query["ifGenerationMatch"][0]):
                return None
            return 412, b'{"error": {"code": 412, "message": "conditionNotMet"}}'

        super().__init__(upstream_port, answer, serial=True)


@pytest.fixture()
def preconditions(emulator, gcs_input):
    """GCS's preconditions in front of the emulator, for the duration of one test."""
    proxy = _PreconditionProxy(emulator)
    previous = os.environ["STORAGE_EMULATOR_HOST"]
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{proxy.port}"
    yield gcs_input
    os.environ["STORAGE_EMULATOR_HOST"] = previous
    proxy.close()


def test_the_lease_on_gcs_is_create_only_renewed_and_taken_over_when_stale(preconditions):
    from coco_beam.transforms.runs.lease import Lease, LeaseHeld, check_lease, lease_holder

    out = "gs://coco-out/leased"
    first = Lease.acquire(out, "run-a", timeout=60, now=lambda: time.time() - 61)
    second = Lease.acquire(out, "run-b", timeout=60)  # run-a's lease is stale: taken over
    with pytest.raises(LeaseHeld, match="being written by run run-b"):
        Lease.acquire(out, "run-c", timeout=60)
    assert lease_holder(out)["run_id"] == "run-b"
    assert not first.renew(), "a lease taken over is not renewed by its old holder"
    assert not first.release()
    check_lease(out, "run-b")
    assert second.renew()
    assert second.release()
    assert lease_holder(out) is None


def test_a_build_into_a_gs_output_another_run_holds_fails_naming_it(preconditions, tmp_path):
    from coco_beam.transforms.runs.lease import Lease, LeaseHeld

    out = "gs://coco-out/contended"
    args = ("--coco-root=gs://coco-in/coco", f"--output={out}", "--num-shards=2")
    holder = Lease.acquire(out, "20260101T000000Z-aaaaaa", timeout=3600)
    with pytest.raises(LeaseHeld, match=r"being written by run 20260101T000000Z-aaaaaa \(host"):
        run_build(*args)
    assert holder.release()
    _, manifest = run_build(*args)
    client = preconditions
    names = {b.name for b in client.list_blobs("coco-out", prefix="contended/")}
    assert "contended/LEASE" not in names, "released when the run ended"
    assert {n.split("/")[2] for n in names if n.startswith("contended/runs/")} == {
        manifest["run_id"]
    }


def test_keep_runs_on_gcs_deletes_older_run_prefixes_but_never_a_kept_runs_object(gcs_input):
    """Three builds into one gs:// output with ``--keep-runs=2`` (rebuilds copy the unchanged
    shards of the run before), and a killed run's objects among them: the newest two runs stay
    whole and readable, every object of older runs goes, LATEST names the newest."""
    from coco_beam.transforms.runs.retention import list_runs

    client = gcs_input
    out = client.bucket("coco-out")
    args = ("--coco-root=gs://coco-in/coco", "--output=gs://coco-out/keep", "--num-shards=2")
    runs = [run_build(*args, "--keep-runs=2")]
    # A run killed before publishing, long ago: objects under its prefix, no manifest.
    out.blob("keep/runs/20000101T000000Z-000000/.tmp/shard.parquet").upload_from_string(b"x")
    runs += [run_build(*args, "--keep-runs=2") for _ in range(2)]
    kept = [m["run_id"] for _, m in runs[-2:]]
    assert list_runs("gs://coco-out/keep") == dict.fromkeys(kept, True)
    names = {b.name for b in client.list_blobs("coco-out", prefix="keep/runs/")}
    assert {n.split("/")[2] for n in names} == set(kept)
    assert out.blob("keep/LATEST").download_as_bytes().decode().strip() == kept[-1]
    for _, manifest in runs[-2:]:
        assert all(s["reused"] for s in manifest["shards"])
        run = manifest["run_id"]
        for entry in [*manifest["shards"], *manifest["stats"]["files"]]:
            data = out.blob(f"keep/runs/{run}/{entry['path']}").download_as_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
