"""Process settings and shuffle packing for workers that hold many small records.

``relax_gc``: Python's cyclic garbage collector runs a young-generation pass every 700
allocations and promotes survivors into passes over the whole heap. A worker holding a split's
annotation records (hundreds of thousands of dicts) then spends a measurable share of its CPU
scanning them: on 20,000 images, 8% of the build's user CPU. Records here form no reference
cycles worth collecting early, so collection runs a hundred times less often. Idempotent;
affects the calling process only.

``pack`` / ``unpack``: batches of records cross a shuffle as one opaque pickle each. A runner
may decode and re-encode every grouped value: Beam's local runner does so in its one launcher
thread, where a batch of nested dicts costs as much as parsing it again, while bytes cost a
copy. Only this project's own steps read what it packed, within one run of one version.
"""

from __future__ import annotations

import gc
import pickle

__all__ = ["pack", "relax_gc", "unpack"]

_THRESHOLDS = (100_000, 50, 1_000)


def relax_gc() -> None:
    if gc.get_threshold() != _THRESHOLDS:
        gc.set_threshold(*_THRESHOLDS)


def pack(values: list) -> bytes:
    return pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(packed: bytes) -> list:
    return pickle.loads(packed)
