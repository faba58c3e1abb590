"""Running a command as the benchmarks measure it: wall time, peak memory and cores busy.

``measure(cmd)`` runs ``cmd`` as a separate process and samples its whole process tree (every
descendant: Beam's worker processes, the decoder children) from /proc every quarter second:

* peak resident memory: the largest sum of the tree's resident set sizes seen in one sample;
* cores busy: CPU seconds (user + system) the tree spent in each interval over the interval's
  length. CPU of descendants that already exited is included (it is credited to the parent
  that reaped them, in its ``cutime``/``cstime``), so short-lived children are not missed.

From the samples it reports the mean cores busy over the whole run (total CPU seconds over
wall seconds) and the share of the run with fewer than 1.5 cores busy: where a run is serial.
Sampling reads only the tree's own /proc entries, next to nothing beside what it measures.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import threading
import time

__all__ = ["Measurement", "amdahl", "measure"]

_INTERVAL_S = 0.25
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SERIAL_BELOW = 1.5  # cores: an interval with fewer busy counts as serial


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    seconds: float  # wall time, start to exit
    peak_bytes: int  # largest resident memory of the process tree in one sample
    cpu_seconds: float  # user + system time of the whole tree, exited descendants included
    busy: list[float]  # cores busy in each sampling interval, in order

    @property
    def mean_cores(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def serial_share(self) -> float:
        """Share of the run's intervals with fewer than 1.5 cores busy."""
        if not self.busy:
            return 0.0
        return sum(b < _SERIAL_BELOW for b in self.busy) / len(self.busy)

    def timeline(self, seconds_per_cell: float = 1.0) -> str:
        """Cores busy, one figure per ``seconds_per_cell``: where serial time hides."""
        per = max(1, round(seconds_per_cell / _INTERVAL_S))
        cells = [
            sum(self.busy[i : i + per]) / len(self.busy[i : i + per])
            for i in range(0, len(self.busy), per)
        ]
        return " ".join(f"{c:.1f}" for c in cells)


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def _stat(pid: int) -> tuple[int, int]:
    """(CPU ticks of ``pid`` and of its reaped children, resident bytes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0
    # After the command's ")": state is field 0; utime, stime, cutime, cstime are 11..14.
    return sum(int(v) for v in fields[11:15]), rss


def _tree(pid: int) -> tuple[dict[int, int], int]:
    """CPU ticks per live process of the tree, and the tree's resident bytes."""
    ticks, rss, stack = {}, 0, [pid]
    while stack:
        p = stack.pop()
        t, r = _stat(p)
        ticks[p] = t
        rss += r
        stack.extend(_children(p))
    return ticks, rss


def measure(cmd: list[str], *, env: dict | None = None) -> Measurement:
    """Runs ``cmd`` to its end; raises with its stderr's tail if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    peak, busy, done = 0, [], threading.Event()

    def sample():
        nonlocal peak
        last_total, last = 0, started
        while not done.wait(_INTERVAL_S):
            ticks, rss = _tree(proc.pid)
            now = time.perf_counter()
            # A child's ticks move into its parent's cutime when it is reaped, so the live
            # tree's sum only grows; a process that exits unreaped between two samples could
            # make it dip, hence the max.
            total = max(sum(ticks.values()), last_total)
            busy.append((total - last_total) / _TICK / (now - last))
            last_total, last = total, now
            peak = max(peak, rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
    # Every descendant that was waited for, transitively: what the whole tree used.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measurement(seconds=seconds, peak_bytes=peak, cpu_seconds=cpu, busy=busy)


def amdahl(one_core_s: float, two_core_s: float, cores: int) -> float:
    """The speed-up on ``cores`` that Amdahl's law predicts from the one- and two-core times:
    the serial share ``s`` solves ``T2 = T1 * (s + (1 - s) / 2)``."""
    serial = min(1.0, max(0.0, 2 * two_core_s / one_core_s - 1))
    return 1 / (serial + (1 - serial) / cores)
