"""A side channel for a local progress bar: DoFns add to counters kept in files of a folder.

Beam's metrics are only readable once a local job has finished, so a running job's progress is
shared through small files instead: each DoFn instance owns one file per counter and replaces it
atomically, at most a few times a second. The folder exists only for local runs (the CLI
creates it); with no folder every call is a no-op, so workers on a cluster never write one.
Counts are advisory: a retried bundle may count twice, which a progress bar tolerates.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["ProgressReporter", "read_progress"]

_INTERVAL_S = 0.25


class ProgressReporter:
    """Adds to counter ``name``; cheap to call per element."""

    def __init__(self, folder: str | None, name: str):
        self._folder = folder if folder and os.path.isdir(folder) else None
        self._path = None
        if self._folder:
            self._path = os.path.join(self._folder, f"{name}.{uuid.uuid4().hex}")
        self._count = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        if self._path is None:
            return
        self._count += n
        now = time.monotonic()
        if now - self._last >= _INTERVAL_S:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._path is None:
            return
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(self._count))
        os.replace(tmp, self._path)
        self._last = now if now is not None else time.monotonic()


def read_progress(folder: str) -> dict[str, int]:
    """Sums every reporter's latest count per counter name."""
    totals: dict[str, int] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return totals
    for name in names:
        if name.endswith(".tmp"):
            continue
        counter = name.split(".", 1)[0]
        try:
            with open(os.path.join(folder, name)) as f:
                totals[counter] = totals.get(counter, 0) + int(f.read() or 0)
        except (FileNotFoundError, ValueError):
            continue
    return totals
