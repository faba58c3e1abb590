"""Benchmark: an incremental rebuild after 1% of a dataset changed, against a full build.

For each size, on a copy of the synthetic dataset of ``bench_build.py`` (hard links, so the
copy is instant; changed files are replaced, never written through a link):

1. ``coco-beam build`` into a fresh output (the previous run), then again with nothing changed
   (every shard reused), timed;
2. 1% of the images change, as labelling teams change them: 40% of those get new bytes (the
   picture flipped), 40% one annotation's category changed, 10% are added (a new id, a copy of
   another file), 10% removed from every annotation file;
3. ``coco-beam build`` into the same output again (incremental), timed;
4. ``coco-beam build --full`` of the changed input into a fresh output, timed: the reference,
   whose shards and statistics the incremental rebuild must equal byte for byte (checked).

Usage: python benchmarks/bench_rebuild.py [--sizes 5000 20000] [--fraction 0.01]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys

from bench_build import DATA, REPO
from measure import measure


def _manifest(out: str) -> dict:
    with open(os.path.join(out, "LATEST")) as f:
        run = f.read().strip()
    with open(os.path.join(out, "runs", run, "manifest.json")) as f:
        return json.load(f)


def _replace(path: str, data: bytes) -> None:
    """Writes ``data`` as a new file at ``path``: never through a hard link."""
    if os.path.exists(path):
        os.remove(path)
    with open(path, "wb") as f:
        f.write(data)


def change(root: str, fraction: float, seed: int = 5) -> dict:
    from PIL import Image

    rng = random.Random(seed)
    ann_dir = os.path.join(root, "annotations")
    docs = {
        name: json.load(open(os.path.join(ann_dir, name)))
        for name in os.listdir(ann_dir)
        if name.endswith(".json")
    }
    splits = {}
    for name, doc in docs.items():
        split = name.rsplit("_", 1)[1][: -len(".json")]
        for img in doc["images"]:
            splits.setdefault(split, {})[img["id"]] = img
    everything = [(s, i) for s in sorted(splits) for i in sorted(splits[s])]
    k = max(10, round(len(everything) * fraction))
    chosen = rng.sample(everything, k)
    n_bytes, n_labels, n_added = round(k * 0.4), round(k * 0.4), round(k * 0.1)
    groups = {
        "bytes": chosen[:n_bytes],
        "labels": chosen[n_bytes : n_bytes + n_labels],
        "added": chosen[n_bytes + n_labels : n_bytes + n_labels + n_added],
        "removed": chosen[n_bytes + n_labels + n_added :],
    }
    for split, image_id in groups["bytes"]:
        path = os.path.join(root, split, splits[split][image_id]["file_name"])
        with Image.open(path) as im:
            flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            sink = io.BytesIO()
            flipped.save(sink, format="JPEG", quality=90)
        _replace(path, sink.getvalue())
    relabel = {(s, i) for s, i in groups["labels"]}
    removed = {(s, i) for s, i in groups["removed"]}
    next_id = max(i for _, i in everything) + 1
    for name, doc in docs.items():
        split = name.rsplit("_", 1)[1][: -len(".json")]
        if name.startswith("instances_"):
            cats = [c["id"] for c in doc["categories"]]
            seen = set()
            for ann in doc["annotations"]:
                key = (split, ann["image_id"])
                if key in relabel and key not in seen and not ann.get("num_keypoints"):
                    ann["category_id"] = cats[(cats.index(ann["category_id"]) + 1) % len(cats)]
                    seen.add(key)
        doc["images"] = [i for i in doc["images"] if (split, i["id"]) not in removed]
        doc["annotations"] = [
            a for a in doc.get("annotations", []) if (split, a["image_id"]) not in removed
        ]
    for split, image_id in groups["added"]:
        source = splits[split][image_id]
        new = dict(source, id=next_id, file_name=f"{next_id:012d}.jpg")
        shutil.copyfile(
            os.path.join(root, split, source["file_name"]),
            os.path.join(root, split, new["file_name"]),
        )
        for name, doc in docs.items():
            if name.endswith(f"_{split}.json"):
                doc["images"].append(new)
        next_id += 1
    for split, image_id in groups["removed"]:
        os.remove(os.path.join(root, split, splits[split][image_id]["file_name"]))
    for name, doc in docs.items():
        _replace(os.path.join(ann_dir, name), json.dumps(doc).encode())
    return {g: len(v) for g, v in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[5000, 20000])
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--json", default=os.path.join(DATA, "results-rebuild.json"))
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        base = os.path.join(DATA, f"synth-{n}")
        if not os.path.isdir(base):
            raise SystemExit(f"{base} is missing: run benchmarks/bench_build.py --sizes {n} first")
        root = os.path.join(DATA, f"rebuild-{n}")
        out, full_out = os.path.join(DATA, "rebuild-out"), os.path.join(DATA, "rebuild-full")
        for path in (root, out, full_out):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["cp", "-al", base, root], check=True)
        build = [sys.executable, "-m", "coco_beam.pipelines.cli", "build", "--coco-root", root]
        first_s = measure([*build, "--output", out]).seconds
        unchanged_s = measure([*build, "--output", out]).seconds
        assert _manifest(out)["changes"]["shards_rewritten"] == 0
        changed = change(root, args.fraction)
        rebuild = measure([*build, "--output", out])
        full_run = measure([*build, "--output", full_out, "--full"])
        rebuild_s, rebuild_mem = rebuild.seconds, rebuild.peak_bytes
        full_s, full_mem = full_run.seconds, full_run.peak_bytes
        rebuilt, full = _manifest(out), _manifest(full_out)
        identical = [(s["path"], s["sha256"]) for s in rebuilt["shards"]] == [
            (s["path"], s["sha256"]) for s in full["shards"]
        ] and rebuilt["stats"]["files"] == full["stats"]["files"]
        c = rebuilt["changes"]
        row = {
            "images": n,
            "changed": changed,
            "first_build_s": round(first_s, 1),
            "unchanged_rebuild_s": round(unchanged_s, 1),
            "rebuild_s": round(rebuild_s, 1),
            "rebuild_peak_mb": round(rebuild_mem / 2**20),
            "full_s": round(full_s, 1),
            "full_peak_mb": round(full_mem / 2**20),
            "rebuild_pct_of_full": round(100 * rebuild_s / full_s, 1),
            "rebuild_mean_cores": round(rebuild.mean_cores, 2),
            "rebuild_serial_share": round(rebuild.serial_share, 2),
            "shards_reused": c["shards_reused"],
            "shards_rewritten": c["shards_rewritten"],
            "identical_to_full": identical,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        for path in (root, out, full_out):
            shutil.rmtree(path, ignore_errors=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(
        "\n| images | changed | full build s | unchanged rebuild s | rebuild s | rebuild / full |"
        " shards reused |"
        " shards rewritten | peak MB rebuild / full | cores busy | under 1.5 cores | identical |"
        "\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['images']:,} | {sum(r['changed'].values())} | {r['full_s']} |"
            f" {r['unchanged_rebuild_s']} | {r['rebuild_s']} |"
            f" {r['rebuild_pct_of_full']}% | {r['shards_reused']} | {r['shards_rewritten']} |"
            f" {r['rebuild_peak_mb']:,} / {r['full_peak_mb']:,} | {r['rebuild_mean_cores']} |"
            f" {round(100 * r['rebuild_serial_share'])}% | {r['identical_to_full']} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
