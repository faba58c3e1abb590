"""Native crashes are contained: a decoder that kills its process rejects one record."""

from __future__ import annotations

import ctypes
import json
import os
from concurrent.futures import ThreadPoolExecutor

from coco_beam.schemas.errors import RecordError
from coco_beam.transforms.runtime.isolation import Isolated, NativeCrash

from helpers import run_build


def decode_or_crash(value: str) -> str:
    """Dies of a segmentation fault for ``"bad"``, as a C decoder would on hostile bytes."""
    if value == "bad":
        ctypes.string_at(0)
    if value == "invalid":
        raise RecordError("image_corrupt", "not an image")
    return value.upper()


def test_a_crash_is_told_from_the_calls_beside_it():
    isolated = Isolated()
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
