"""One writer per output: the lease ``OUT/LEASE`` a run holds from its start to its end.

The lease is a small JSON object beside ``LATEST`` naming its holder (run id, host, pid, when
it was taken and last renewed). It is created create-only, so of two runs started together
exactly one gets it: on a local disk with ``O_CREAT | O_EXCL``, on ``gs://`` with the
``if_generation_match=0`` precondition. The holder renews it while it runs and deletes it when
the run ends, published or failed. A lease not renewed for ``timeout`` seconds (its run was
killed) is taken over by the next run, and at once when its holder was a process of the same
machine that no longer exists. Every change after the creation is a compare-and-swap
against what was read (an object generation on ``gs://``; on a local disk the bytes read,
compared under an ``flock`` of ``OUT/.LEASE.lock``, which the kernel releases if the process
dies), so a run whose stale lease was taken over can neither renew nor release the new
holder's, and publishing checks the lease still names the run before moving ``LATEST``.

A run that finds the lease held fails at once with ``LeaseHeld``, naming the holder. The
launcher holds the lease while it waits for the pipeline; the publishing step releases it
once the run is published, so a job that outlives a launcher that does not wait (a template
launch) still ends with the output free, and is fenced as long as ``timeout`` exceeds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time

from apache_beam.io.filesystems import FileSystems

from coco_beam.transforms.runs.checks import RunFailed

__all__ = [
    "DEFAULT_LEASE_TIMEOUT",
    "Lease",
    "LeaseHeld",
    "check_lease",
    "hold_lease",
    "lease_holder",
    "release_lease",
]

_LOGGER = logging.getLogger(__name__)
LEASE_NAME = "LEASE"
# An hour: a run renews its lease every quarter of this, so only a run that stopped (killed,
# or its launcher's machine gone) loses it; a COCO train2017 build takes well under an hour.
DEFAULT_LEASE_TIMEOUT = 3600


class LeaseHeld(RunFailed):
    """Another run holds the output's lease."""


def _describe(holder: dict) -> str:
    return (
        f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"renewed {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(holder.get('renewed', 0)))})"
    )


def _gone(holder: dict) -> bool:
    """Whether the holder was a process of this machine that no longer exists (a killed run):
    its lease need not wait for the timeout. Elsewhere only the timeout tells."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, as another user's process
    return False


class _LocalStore:
    """The lease file on a local disk; every operation under an ``flock`` of a lock file.

    Stores (this one and ``_GcsStore``) offer ``create(data)`` and ``replace(data,
    generation)``, which return the new generation or None where the lease existed or had
    changed, ``read()``: ``(data, generation)`` or None, and ``delete(generation)``. Here the
    generation is the lease's bytes, which hold a fresh token at every change."""

    def __init__(self, path: str):
        self._path = path
        self._lock = os.path.join(os.path.dirname(path), "." + LEASE_NAME + ".lock")

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        fd = os.open(self._lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self):
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes):
        with self._locked():
            try:
                fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return data

    def read(self):
        with self._locked():
            return self._read()

    def replace(self, data: bytes, generation):
        with self._locked():
            current = self._read()
            if current is None or current[1] != generation:
                return None
            staged = f"{self._path}.{secrets.token_hex(4)}"
            with open(staged, "wb") as f:
                f.write(data)
            os.replace(staged, self._path)
            return data

    def delete(self, generation) -> bool:
        with self._locked():
            current = self._read()
            if current is None or current[1] != generation:
                return False
            os.remove(self._path)
            return True


class _GcsStore:
    """The lease object on GCS; preconditions on its generation make each change atomic."""

    def __init__(self, path: str):
        from apache_beam.io.gcp.gcsio import create_storage_client
        from apache_beam.options.pipeline_options import PipelineOptions

        bucket, _, name = path[len("gs://") :].partition("/")
        client = create_storage_client(PipelineOptions([]))
        self._bucket = client.bucket(bucket)
        self._name = name

    def create(self, data: bytes):
        return self.replace(data, 0)

    def read(self):
        from google.api_core.exceptions import NotFound, PreconditionFailed

        while True:
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation)
            except (PreconditionFailed, NotFound):
                continue  # changed between the two requests: read again
            return data, blob.generation

    def replace(self, data: bytes, generation):
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self._name)
        try:
            blob.upload_from_string(
                data, content_type="application/json", if_generation_match=generation
            )
        except PreconditionFailed:
            return None
        return blob.generation

    def delete(self, generation) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._bucket.blob(self._name).delete(if_generation_match=generation)
        except (PreconditionFailed, NotFound):
            return False
        return True


def _store(output: str):
    path = FileSystems.join(output, LEASE_NAME)
    if FileSystems.get_scheme(output) == "gs":
        return _GcsStore(path)
    if FileSystems.get_scheme(output) is not None:
        raise ValueError(f"no lease for {output}: outputs are local folders or gs:// URLs")
    return _LocalStore(path)


def lease_holder(output: str) -> dict | None:
    """The holder of the output's lease as written in it, or None when nobody holds it."""
    current = _store(output).read()
    return None if current is None else json.loads(current[0])


@dataclasses.dataclass
class Lease:
    """A lease held by this process: ``renew`` it well within ``timeout``, ``release`` it once."""

    output: str
    run_id: str
    timeout: float
    _store: object = dataclasses.field(repr=False, default=None)
    _generation: object = dataclasses.field(repr=False, default=None)
    _holder: dict = dataclasses.field(default_factory=dict)
    _detached: bool = False

    @classmethod
    def acquire(cls, output: str, run_id: str, *, timeout: float, now=time.time) -> Lease:
        """Takes the lease of ``output`` for ``run_id``, or raises ``LeaseHeld`` naming the
        holder; a lease not renewed for ``timeout`` seconds is taken over."""
        store = _store(output)
        lease = cls(output, run_id, timeout, store)
        stamp = now()
        holder = {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired": stamp,
            "renewed": stamp,
            "token": secrets.token_hex(8),
        }
        data = json.dumps(holder, sort_keys=True).encode()
        generation = store.create(data)
        current = None
        if generation is None:
            current = store.read()
            if current is None:  # released meanwhile: one more try, create-only again
                generation = store.create(data)
        if generation is not None:
            lease._holder, lease._generation = holder, generation
            return lease
        current = current or store.read() or (b"{}", None)
        other = json.loads(current[0] or b"{}")
        age = stamp - other.get("renewed", 0)
        if age <= timeout and not _gone(other):
            raise LeaseHeld(
                f"{output} is being written by {_describe(other)}; one run at a time writes "
                f"an output. Its lease is taken over if not renewed for {timeout:g} s "
                "(--lease-timeout)"
            )
        generation = store.replace(data, current[1])
        if generation is None:
            holder_now = lease_holder(output) or {}
            raise LeaseHeld(f"{output}: the stale lease was just taken by {_describe(holder_now)}")
        _LOGGER.warning("took over the stale lease of %s (%s)", output, _describe(other))
        lease._holder, lease._generation = holder, generation
        return lease

    def renew(self, now=time.time) -> bool:
        """Stamps the lease as alive; False when it was taken over (this run must not publish)."""
        holder = dict(self._holder, renewed=now(), token=secrets.token_hex(8))
        generation = self._store.replace(
            json.dumps(holder, sort_keys=True).encode(), self._generation
        )
        if generation is None:
            return False
        self._holder, self._generation = holder, generation
        return True

    def release(self) -> bool:
        """Deletes the lease if it is still this run's; False when it was not."""
        return self._store.delete(self._generation)

    def detach(self) -> None:
        """Leaves the lease held when this process stops holding it: the job outlives its
        launcher (a launch that does not wait), and its publishing step releases the lease."""
        self._detached = True


def release_lease(output: str, run_id: str) -> bool:
    """Deletes the output's lease if it names ``run_id`` (what the publishing step does once
    the run is published); False when it did not."""
    store = _store(output)
    current = store.read()
    if current is None or json.loads(current[0]).get("run_id") != run_id:
        return False
    return store.delete(current[1])


def check_lease(output: str, run_id: str) -> None:
    """Fails the run unless the output's lease names ``run_id``: a run whose lease was taken
    over (it stopped renewing it for longer than the timeout) must not move ``LATEST``."""
    holder = lease_holder(output)
    if holder is None or holder.get("run_id") != run_id:
        raise LeaseHeld(
            f"run {run_id} lost the lease of {output}"
            + (f" to {_describe(holder)}" if holder else "")
            + "; it is not published"
        )


@contextlib.contextmanager
def hold_lease(output: str, run_id: str, *, timeout: float):
    """Holds the output's lease for the block: acquired on entry (``LeaseHeld`` if another run
    holds it), renewed every quarter of ``timeout`` by a thread, released on exit unless
    ``Lease.detach`` was called (the run's publishing step then releases it)."""
    lease = Lease.acquire(output, run_id, timeout=timeout)
    stop = threading.Event()

    def renew():
        while not stop.wait(timeout / 4):
            try:
                if not lease.renew():
                    _LOGGER.error("the lease of %s was taken over by another run", output)
                    return
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried next period
                _LOGGER.warning("the lease of %s was not renewed: %r", output, exc)

    thread = threading.Thread(target=renew, name="coco-beam-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        if not lease._detached:
            lease.release()
