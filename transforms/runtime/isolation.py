"""Running a native decoder where its crash cannot take the worker down.

``Isolated.call(fn, ...)`` runs ``fn`` in a child process: a plain ``python -m
coco_beam.transforms.runtime.isolation`` that imports nothing of the worker's own main module
(Beam's), reads ``(fn, args, kwargs)`` pickles on its stdin and answers with pickles on its
stdout. Children are
kept and reused, one call at a time each. If a child dies during a call (a segmentation fault in
C code, an abort), the call is run again alone in a fresh child, so the input that kills a child
is told from a crash of something else: it raises ``NativeCrash``. Exceptions raised by ``fn``
come back as they are (or as a ``RuntimeError`` naming them, if they do not pickle).

Guarantee: a call returns ``fn``'s result or exception, or raises ``NativeCrash`` only when
``fn`` killed two processes with the same arguments. Thread-safe.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys

__all__ = ["Isolated", "NativeCrash"]


class NativeCrash(RuntimeError):
    """The call killed the process running it, twice."""


class _Died(Exception):
    pass


class _Child:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "coco_beam.transforms.runtime.isolation"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def call(self, fn, args, kwargs):
        try:
            pickle.dump((fn, args, kwargs), self._proc.stdin, pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
            ok, value = pickle.load(self._proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            self.close()
            raise _Died from None
        if ok:
            return value
        raise value

    def close(self):
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._proc.kill()
        except OSError:
            pass
        self._proc.wait()


class Isolated:
    """Children are made as calls need them: at most one per thread calling at once."""

    def __init__(self):
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()

    def call(self, fn, *args, **kwargs):
        try:
            child = self._idle.get_nowait()
        except queue.Empty:
            child = _Child()
        try:
            result = child.call(fn, args, kwargs)
        except _Died:
            # Alone, in a child of its own: a crash now is this call's.
            solo = _Child()
            try:
                result = solo.call(fn, args, kwargs)
            except _Died:
                raise NativeCrash(f"{getattr(fn, '__name__', fn)} killed its process") from None
            self._idle.put(solo)
            return result
        except BaseException:
            self._idle.put(child)
            raise
        self._idle.put(child)
        return result

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _serve() -> None:
    """The child: answers calls until its stdin closes. Its stdout carries only answers;
    anything else printed goes to stderr."""
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            fn, args, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller as it is
            answer = (False, exc)
        try:
            data = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {exc}")))
        answers.write(data)
        answers.flush()


if __name__ == "__main__":
    _serve()
