"""Running a native decoder where its crash cannot take the worker down.

``Isolated.call(fn, ...)`` runs ``fn`` in a child process of a small pool (started by
``forkserver``: no copy of the worker's threads). If a child dies (a segmentation fault in C
code, an abort), every call then in flight fails; each is run again alone in a fresh child, so
the input that kills a child is told from the bystanders: it raises ``NativeCrash``, the others
return their results. Exceptions raised by ``fn`` come back as they are (they must pickle).

Guarantee: a call returns ``fn``'s result or exception, or raises ``NativeCrash`` only when
``fn`` killed a child twice with the same arguments. Thread-safe.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

__all__ = ["Isolated", "NativeCrash"]


class NativeCrash(RuntimeError):
    """The call killed the process running it, twice."""


class Isolated:
    def __init__(self, workers: int):
        self._workers = workers
        self._context = multiprocessing.get_context("forkserver")
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self._workers, mp_context=self._context)
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def call(self, fn, *args, **kwargs):
        pool = self._current()
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            self._discard(pool)
        # Alone, in a child of its own: a crash now is this call's.
        with ProcessPoolExecutor(1, mp_context=self._context) as solo:
            try:
                return solo.submit(fn, *args, **kwargs).result()
            except BrokenProcessPool:
                raise NativeCrash(f"{getattr(fn, '__name__', fn)} killed its process") from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
