"""Faults injected on purpose, to test what a retry or a rerun leaves behind.

``maybe_fail(point, key)`` raises ``InjectedFault`` once when the environment variable
``COCO_BEAM_FAULTS`` names ``point:key`` in its comma-separated list (for example
``write:train2017-00000,publish:rename``). That it fired is remembered as a marker file under
``COCO_BEAM_FAULTS_DIR``, created atomically, so the retry passes, in this process or in any
other (a runner retries a bundle in another worker; a rerun is another launcher), and only one
of several concurrent callers fails.

Points in the code: ``write`` (key ``<split>-<index:05d>``: a shard, after part of it is
written) and ``publish``. Without ``COCO_BEAM_FAULTS`` a call costs one environment lookup.
"""

from __future__ import annotations

import os
import re

__all__ = ["FAULTS_DIR_ENV", "FAULTS_ENV", "InjectedFault", "maybe_fail"]

FAULTS_ENV = "COCO_BEAM_FAULTS"
FAULTS_DIR_ENV = "COCO_BEAM_FAULTS_DIR"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class InjectedFault(RuntimeError):
    """A fault ``COCO_BEAM_FAULTS`` asked for."""


def maybe_fail(point: str, key: str) -> None:
    """Raises ``InjectedFault`` the first time ``point:key`` is reached, when it is named in
    ``COCO_BEAM_FAULTS``; returns otherwise."""
    wanted = os.environ.get(FAULTS_ENV)
    if not wanted:
        return
    name = f"{point}:{key}"
    if name not in (w.strip() for w in wanted.split(",")):
        return
    folder = os.environ.get(FAULTS_DIR_ENV)
    if not folder:
        raise ValueError(f"{FAULTS_ENV} is set but {FAULTS_DIR_ENV} names no folder")
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, _UNSAFE.sub("_", name) + ".fired")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return  # fired already: this is the retry
    raise InjectedFault(f"injected fault at {name}")
