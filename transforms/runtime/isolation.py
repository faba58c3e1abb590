"""Running a native decoder where its crash cannot take the worker down.

``Isolated.call(fn, ...)`` runs ``fn`` in a child process: a plain ``python -m
coco_beam.transforms.runtime.isolation`` that imports nothing of the worker's own main module
(Beam's), reads ``(fn, args, kwargs)`` pickles on its stdin and answers with pickles on its
stdout. Children are made as calls need them, kept and reused, one call at a time each, and
never more than ``max_children`` at once: a call beyond that waits for a child to be free. If a
child dies during a call (a segmentation fault in C code, an abort), the call is run again
alone in a fresh child, so the input that kills a child is told from a crash of something
else: it raises ``NativeCrash``. Exceptions raised by ``fn`` come back as they are (or as a
``RuntimeError`` naming them, if they do not pickle). ``Isolated.stream(fn, ...)`` runs a
generator function in a child and yields its items as the child makes them, one pickle each:
the pipe holds the child back while they are not read, so memory stays bounded by an item.

One ``Isolated`` serves a whole worker process: an SDK worker runs many bundles of a step at
once, each in a DoFn instance of its own, and children per instance would multiply with them.
The DoFns share one through ``apache_beam.utils.shared.Shared`` and ``attach``/``detach`` it;
its children are closed when the last user detaches, or when it is garbage-collected.
``children_per_process`` sizes it from the cores this process may run on.

Guarantee: a call returns ``fn``'s result or exception, or raises ``NativeCrash`` only when
``fn`` killed two processes with the same arguments. At most ``max_children`` children are
alive at any moment. Thread-safe.
"""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
import threading
import weakref

__all__ = ["Isolated", "NativeCrash", "children_per_process"]


def children_per_process() -> int:
    """Decoder children for one worker process: one per core it may run on, plus one so that
    a core is not left idle while a child's answer is handed back (on 2 cores: 3, the number of
    decode threads measured best for one writer, ``ShardWriterConfig.io_threads``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        cores = os.cpu_count() or 1
    return cores + 1


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

    def stream(self, fn, args, kwargs):
        """The items of the generator ``fn(*args, **kwargs)`` as the child sends them."""
        try:
            pickle.dump((fn, args, kwargs), self._proc.stdin, pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            raise _Died from None
        while True:
            try:
                ok, value = pickle.load(self._proc.stdout)
            except (EOFError, pickle.UnpicklingError):
                self.close()
                raise _Died from None
            if ok is None:  # an item; the end is ``(True, None)``
                yield value
            elif ok:
                return
            else:
                raise value

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

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
    """A bounded pool of decoder children (``max_children``; default
    ``children_per_process()``), made as calls need them."""

    def __init__(self, max_children: int | None = None):
        self.max_children = max_children or children_per_process()
        if self.max_children < 1:
            raise ValueError("max_children must be at least 1")
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._live = 0  # children alive: idle, or running a call
        self._users = 0
        # Children die with the pool, even when nobody detaches (Beam may skip teardown).
        weakref.finalize(self, _close_all, self._idle)

    def call(self, fn, *args, **kwargs):
        child = self._take(fresh=False)
        try:
            result = child.call(fn, args, kwargs)
        except _Died:
            self._lost()
            # Alone, in a child of its own: a crash now is this call's.
            solo = self._take(fresh=True)
            try:
                result = solo.call(fn, args, kwargs)
            except _Died:
                self._lost()
                raise NativeCrash(f"{getattr(fn, '__name__', fn)} killed its process") from None
            except BaseException:
                self._give(solo)
                raise
            self._give(solo)
            return result
        except BaseException:
            self._give(child)
            raise
        self._give(child)
        return result

    def stream(self, fn, *args, **kwargs):
        """Yields the items of the generator ``fn(*args, **kwargs)``, run in a child. Not run
        again if the child dies (items were given out already): that raises ``NativeCrash``.
        An iterator closed before its end closes its child (it is still sending)."""
        child = self._take(fresh=False)
        finished = False
        try:
            yield from child.stream(fn, args, kwargs)
            finished = True
        except _Died:
            self._lost()
            raise NativeCrash(f"{getattr(fn, '__name__', fn)} killed its process") from None
        except Exception:
            finished = True  # ``fn`` raised: the child answered, and is free again
            raise
        finally:
            if finished:
                self._give(child)
            elif child.alive:
                child.close()
                self._lost()

    def attach(self) -> Isolated:
        """Counts one more user (a DoFn instance); returns the pool."""
        with self._cond:
            self._users += 1
        return self

    def detach(self) -> None:
        """Counts one user less; the last one out closes the idle children (a later call makes
        new ones)."""
        with self._cond:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close()

    def close(self) -> None:
        """Closes the idle children (all of them once no call is running)."""
        with self._cond:
            idle = list(self._idle)
            self._idle.clear()
            self._live -= len(idle)
            self._cond.notify_all()
        _close_all(idle)

    def _take(self, *, fresh: bool) -> _Child:
        """An idle child (unless ``fresh``), or a new one while fewer than ``max_children`` are
        alive; else waits for one to be given back or to die."""
        stale = None
        with self._cond:
            while True:
                if self._idle and not fresh:
                    return self._idle.pop()
                if self._live < self.max_children:
                    self._live += 1
                    break
                if self._idle:  # fresh, and the pool is full: an idle child makes room
                    stale = self._idle.pop()
                    break
                self._cond.wait()
        if stale is not None:
            stale.close()  # its place (``_live``) goes to the new child
        try:
            return _Child()
        except BaseException:
            self._lost()
            raise

    def _give(self, child: _Child) -> None:
        with self._cond:
            self._idle.append(child)
            self._cond.notify()

    def _lost(self) -> None:
        """A child died (and was closed): room for another."""
        with self._cond:
            self._live -= 1
            self._cond.notify()


def _close_all(children: list) -> None:
    for child in children:
        child.close()
    children.clear()


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
            if inspect.isgenerator(answer[1]):
                items, answer = answer[1], (True, None)
                for item in items:
                    if not _answer(answers, (None, item)):
                        items.close()
                        break  # an error was sent instead: the stream ends there
                else:
                    _answer(answers, answer)
                continue
        except Exception as exc:  # noqa: BLE001 - handed back to the caller as it is
            answer = (False, exc)
        _answer(answers, answer)


def _answer(answers, answer: tuple) -> bool:
    """Sends one answer; False when it did not pickle and an error was sent in its place."""
    sent = True
    try:
        data = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
        data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {exc}")))
        sent = False
    answers.write(data)
    answers.flush()
    return sent


if __name__ == "__main__":
    _serve()
