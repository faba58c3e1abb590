"""Native crashes are contained: a decoder that kills its process rejects one record."""

from __future__ import annotations

import ctypes
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from coco_beam.schemas.errors import RecordError
from coco_beam.transforms.runtime.isolation import Isolated, NativeCrash, children_per_process

from helpers import run_build


def decode_or_crash(value: str) -> str:
    """Dies of a segmentation fault for ``"bad"``, as a C decoder would on hostile bytes."""
    if value == "bad":
        ctypes.string_at(0)
    if value == "invalid":
        raise RecordError("image_corrupt", "not an image")
    return value.upper()


@pytest.mark.parametrize("max_children", [None, 1], ids=["per_core", "one_child"])
def test_a_crash_is_told_from_the_calls_beside_it(max_children):
    isolated = Isolated(max_children)
    try:
        values = ["a", "b", "bad", "c", "invalid", "d", "e", "f"]

        def call(value):
            try:
                return isolated.call(decode_or_crash, value)
            except (NativeCrash, RecordError) as exc:
                return type(exc).__name__, getattr(exc, "reason", None)

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(call, values))
        assert got == [
            "A",
            "B",
            ("NativeCrash", None),
            "C",
            ("RecordError", "image_corrupt"),
            "D",
            "E",
            "F",
        ]
        # The pool is replaced after a crash and keeps working.
        assert isolated.call(decode_or_crash, "g") == "G"
    finally:
        isolated.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_are_bounded_and_closed_by_the_last_user():
    """Eight threads calling at once through a pool of two: two children serve them all, and
    they live until the last of two users detaches."""
    isolated = Isolated(max_children=2).attach().attach()
    with ThreadPoolExecutor(8) as pool:
        pids = list(pool.map(lambda _: isolated.call(os.getpid), range(64)))
    assert os.getpid() not in pids
    assert 1 <= len(set(pids)) <= 2
    isolated.detach()
    assert all(_alive(pid) for pid in set(pids))
    isolated.detach()
    assert not any(_alive(pid) for pid in set(pids))
    # Still usable: a later call makes a child again.
    assert isolated.call(decode_or_crash, "h") == "H"
    isolated.close()


def test_the_default_size_follows_the_cores_this_process_may_use():
    assert children_per_process() == len(os.sched_getaffinity(0)) + 1
    assert Isolated().max_children == children_per_process()
    with pytest.raises(ValueError):
        Isolated(max_children=-1)


def test_decoding_in_the_worker_or_in_children_writes_the_same_bytes(
    synth_root, synth_build, tmp_path
):
    """The default decodes in child processes; ``--no-isolate-decoders`` in the worker."""
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path}",
        "--num-shards=2",
        "--no-isolate-decoders",
    )
    _, reference = synth_build
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert manifest["stats"]["sha256"] == reference["stats"]["sha256"]
    with open(os.path.join(run_dir, "manifest.json")) as f:
        assert json.load(f)["counts"] == reference["counts"]
