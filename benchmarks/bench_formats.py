"""Benchmark: what each shard format costs when added to a Parquet build.

Builds the same data, real COCO images (``../shared/data/coco-tiny`` replicated under new ids,
as ``bench_build.py`` does), once with ``--formats parquet`` and once with Parquet plus each
other format (TFRecord, WebDataset, YOLO detect and segment), as separate processes measured
by ``measure.py``; reports each run's time, its cost over Parquet alone, and the bytes the
added format wrote (from the manifest; YOLO: its labels, as its images are linked).

Usage: python benchmarks/bench_formats.py [--tiny-copies 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from bench_build import DATA, REPO, replicate_tiny
from measure import measure

# (label, extra build arguments); the first is the baseline the others are compared with.
_RUNS = [
    ("parquet", ["--formats=parquet"]),
    ("+ tfrecord", ["--formats=parquet,tfrecord"]),
    ("+ webdataset", ["--formats=parquet,webdataset"]),
    ("+ yolo detect", ["--formats=parquet,yolo"]),
    ("+ yolo segment", ["--formats=parquet,yolo", "--yolo-task=segment"]),
]


def _added_bytes(out: str, label: str) -> int:
    """Bytes of the files the added format wrote in the run ``out/LATEST`` names."""
    with open(os.path.join(out, "LATEST")) as f:
        run_dir = os.path.join(out, "runs", f.read().strip())
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    added = sum(s["bytes"] for s in manifest["shards"] if s["format"] != "parquet")
    if "yolo" in label:
        for folder, _, files in os.walk(os.path.join(run_dir, "labels")):
            added += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-copies", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest is kept")
    parser.add_argument("--json", default=os.path.join(DATA, "formats.json"))
    args = parser.parse_args()
    os.makedirs(DATA, exist_ok=True)
    root = os.path.join(DATA, f"coco-tiny-x{args.tiny_copies}")
    images = replicate_tiny(root, args.tiny_copies)
    out = os.path.join(DATA, "out-formats")
    results = []
    for label, extra in _RUNS:
        cmd = [sys.executable, "-m", "coco_beam.pipelines.cli", "build"]
        cmd += ["--coco-root", root, "--output", out, *extra]
        runs = []
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(measure(cmd))
        added = _added_bytes(out, label)
        shutil.rmtree(out, ignore_errors=True)
        best = min(runs, key=lambda m: m.seconds)
        row = {
            "run": label,
            "images": images,
            "seconds": round(best.seconds, 1),
            "peak_mb": round(max(m.peak_bytes for m in runs) / 2**20),
            "mean_cores": round(best.mean_cores, 2),
            "added_mb": round(added / 2**20, 1),
        }
        base = results[0]["seconds"] if results else row["seconds"]
        row["cost_pct"] = round(100 * (row["seconds"] / base - 1), 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print("\n| formats | images | s | cost over Parquet | peak MB | cores | format's MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['run']} | {r['images']:,} | {r['seconds']} | {r['cost_pct']}% | "
            f"{r['peak_mb']} | {r['mean_cores']} | {r['added_mb']} |"
        )


if __name__ == "__main__":
    os.chdir(REPO)
    main()
