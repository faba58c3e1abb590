"""The output's bytes against those of a build made before the code was reorganized.

``data/output_digests.json`` holds the SHA-256 of every file of two runs (synthetic data with
every annotation family, both formats, masks and the semantic map; and the real COCO excerpt)
made by an earlier version of the pipeline. A change of code layout, of the runner, or of how
work is spread must leave them equal. A deliberate change of the output contract (a new
statistic, a new manifest field) updates the stats and manifest digests in the same commit;
the shards' digests change only with the shard format itself.
"""

from __future__ import annotations

import hashlib
import json
import os

from helpers import REPO, require_coco_tiny, run_build

_EXPECTED = json.loads((REPO / "tests" / "data" / "output_digests.json").read_text())
# Fields of the manifest that differ between any two runs.
_VOLATILE = ("run_id", "started", "finished", "versions")


def output_digests(run_dir: str, root: str) -> dict[str, str]:
    """SHA-256 of every file of a run; the manifest without its volatile fields, with the
    input's root folder spelled ``<root>``."""
    digests = {}
    for dirpath, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, run_dir)
            with open(path, "rb") as f:
                data = f.read()
            if rel == "manifest.json":
                doc = json.loads(data)
                for key in _VOLATILE:
                    doc.pop(key)
                data = json.dumps(doc, sort_keys=True).replace(root.rstrip("/"), "<root>").encode()
            digests[rel] = hashlib.sha256(data).hexdigest()
    return dict(sorted(digests.items()))


def _assert_equal(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected), "a run writes other files than before"
    changed = sorted(name for name in expected if got[name] != expected[name])
    assert not changed, f"bytes differ from the reference build: {changed}"


def test_synthetic_build_bytes_unchanged(synth_root, tmp_path):
    run_dir, _ = run_build(
        f"--coco-root={synth_root}",
        f"--output={tmp_path}",
        "--formats=parquet,tfrecord",
        "--tfrecord-masks",
        "--panoptic-semantic",
        "--num-shards=2",
    )
    _assert_equal(output_digests(run_dir, synth_root), _EXPECTED["synth"])


def test_real_coco_build_bytes_unchanged(tmp_path):
    root = str(require_coco_tiny())
    run_dir, _ = run_build(
        f"--coco-root={root}",
        f"--output={tmp_path}",
        "--formats=parquet,tfrecord",
        "--tfrecord-masks",
    )
    _assert_equal(output_digests(run_dir, root), _EXPECTED["coco_tiny"])
