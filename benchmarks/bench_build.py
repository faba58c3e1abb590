"""Benchmark: ``coco-beam build`` against a plain single-process loop doing the same work.

The loop reads every annotation file with ``json.load``, then for every image reads its bytes,
hashes and decodes them, turns every instance into compressed RLE the way ``annToRLE`` does,
and writes the same Parquet schema with the same compression, one file per split. Both are
timed as separate processes by ``measure.py``: wall time, the peak resident memory of the whole
process tree, the mean cores busy and the share of the run with fewer than 1.5 cores busy. With
``--one-core`` the build is also run pinned to one core (``taskset -c 0``): the scaling from one
core to two, measured, and what Amdahl's law predicts from it for 8 and 16 cores. With
``--near-duplicates`` the build is also run with ``--no-near-duplicates``, right after each
build: what the perceptual hash and the near-duplicate search cost, in wall and CPU seconds.

Usage: python benchmarks/bench_build.py [--sizes 1000 5000 20000] [--tiny-copies 20] [--one-core]
       [--near-duplicates] [--repeat N]
Data is generated once under bench-data/ and reused.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

from measure import amdahl, measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "bench-data")
COCO_TINY = os.path.join(os.path.dirname(REPO), "shared", "data", "coco-tiny")


def baseline_loop(root: str, out: str) -> None:
    """The plain single-process loop (run in its own process by ``measure``)."""
    sys.path.insert(0, REPO)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils

    from coco_beam.schemas.parquet import arrow_schema, column_codecs

    os.makedirs(out, exist_ok=True)
    splits: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(root, "annotations", "*.json"))):
        family, split = os.path.basename(path)[:-5].split("_", 1)
        if family in ("person", "image"):
            family, split = (
                ("person_keypoints", split.split("_", 1)[1])
                if family == "person"
                else ("image_info", split.split("_", 1)[1])
            )
        with open(path) as f:
            doc = json.load(f)
        entry = splits.setdefault(split, {"images": {}, "anns": {}, "caps": {}, "cats": {}})
        for image in doc["images"]:
            entry["images"][image["id"]] = image
        for cat in doc.get("categories", []):
            entry["cats"][cat["id"]] = cat
        for ann in doc.get("annotations", []):
            if family == "captions":
                entry["caps"].setdefault(ann["image_id"], []).append(ann)
            elif family == "person_keypoints":
                entry["anns"].setdefault(ann["image_id"], {}).setdefault(ann["id"], {}).update(
                    keypoints=ann["keypoints"], num_keypoints=ann["num_keypoints"]
                )
            else:
                entry["anns"].setdefault(ann["image_id"], {}).setdefault(ann["id"], {}).update(ann)
    for split, entry in sorted(splits.items()):
        schema = arrow_schema(sorted(entry["cats"].values(), key=lambda c: c["id"]))
        writer = pq.ParquetWriter(
            os.path.join(out, f"{split}.parquet"), schema, compression=column_codecs("zstd")
        )
        rows, buffered = [], 0
        for image_id in sorted(entry["images"]):
            image = entry["images"][image_id]
            with open(os.path.join(root, split, image["file_name"]), "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.load()
                assert decoded.size == (image["width"], image["height"])
                fmt, mode = decoded.format.lower(), decoded.mode
            h, w = image["height"], image["width"]
            anns = []
            for ann_id, ann in sorted(entry["anns"].get(image_id, {}).items()):
                seg = ann["segmentation"]
                if isinstance(seg, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                elif isinstance(seg["counts"], list):
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:
                    rle = seg
                counts = rle["counts"]
                anns.append(
                    {
                        "id": ann_id,
                        "category_id": ann["category_id"],
                        "bbox": [float(v) for v in ann["bbox"]],
                        "area": float(ann["area"]),
                        "iscrowd": ann["iscrowd"],
                        "rle": {
                            "size": [h, w],
                            "counts": counts.decode() if isinstance(counts, bytes) else counts,
                        },
                        "keypoints": ann.get("keypoints"),
                        "num_keypoints": ann.get("num_keypoints"),
                        "flags": [],
                    }
                )
            rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "file_name": image["file_name"],
                    "width": w,
                    "height": h,
                    "image": {"bytes": data, "path": image["file_name"]},
                    "sha256": digest,
                    "format": fmt,
                    "mode": mode,
                    "exif_orientation": None,
                    "annotations": anns,
                    "captions": [
                        {"id": c["id"], "caption": c["caption"]}
                        for c in sorted(entry["caps"].get(image_id, []), key=lambda c: c["id"])
                    ],
                    "num_objects": len(anns),
                    "category_ids": sorted({a["category_id"] for a in anns}),
                    "has_crowd": any(a["iscrowd"] for a in anns),
                    "flags": [],
                }
            )
            buffered += len(data)
            if buffered >= 64 * 1024 * 1024:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows, buffered = [], 0
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        writer.close()


def _place(source: str, target: str) -> None:
    """A copy of ``source`` at ``target``: a hard link where the filesystem allows one (the
    same bytes at a new path, so 118,000 images take no more room than 160), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def replicate_tiny(dest: str, copies: int) -> int:
    """coco-tiny with every image and annotation repeated under new ids (the images linked)."""
    if os.path.isdir(dest):
        return sum(len(os.listdir(os.path.join(dest, s))) for s in ("train2017", "val2017"))
    os.makedirs(os.path.join(dest, "annotations"))
    count = 0
    for split in ("train2017", "val2017"):
        os.makedirs(os.path.join(dest, split))
        with open(os.path.join(COCO_TINY, "annotations", f"instances_{split}.json")) as f:
            doc = json.load(f)
        images, anns = [], []
        for k in range(copies):
            offset = k * 10_000_000
            for image in doc["images"]:
                name = f"{k:03d}_{image['file_name']}"
                images.append(dict(image, id=image["id"] + offset, file_name=name))
                _place(
                    os.path.join(COCO_TINY, split, image["file_name"]),
                    os.path.join(dest, split, name),
                )
            for ann in doc["annotations"]:
                anns.append(dict(ann, id=ann["id"] + offset, image_id=ann["image_id"] + offset))
        count += len(images)
        with open(os.path.join(dest, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(dict(doc, images=images, annotations=anns), f)
    return count


def _near_duplicates_cost(searched: list, unsearched: list) -> dict:
    """What the near-duplicate search costs: the fastest build with it against the fastest
    without (wall seconds), and the least CPU of each (user + system of the whole tree)."""
    with_s, without_s = min(m.seconds for m in searched), min(m.seconds for m in unsearched)
    with_cpu = min(m.cpu_seconds for m in searched)
    without_cpu = min(m.cpu_seconds for m in unsearched)
    return {
        "near_with_s": round(with_s, 1),
        "near_without_s": round(without_s, 1),
        "near_cost_pct": round(100 * (with_s / without_s - 1), 1),
        "near_with_cpu_s": round(with_cpu, 1),
        "near_without_cpu_s": round(without_cpu, 1),
        "near_cost_cpu_pct": round(100 * (with_cpu / without_cpu - 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--tiny-copies", type=int, default=20)
    parser.add_argument(
        "--build-args",
        nargs="*",
        default=[],
        help="extra arguments for coco-beam build (defaults otherwise)",
    )
    parser.add_argument("--json", default=os.path.join(DATA, "results.json"))
    parser.add_argument(
        "--no-bare",
        action="store_true",
        help="skip the build without statistics (measured by default for their cost)",
    )
    parser.add_argument(
        "--one-core",
        action="store_true",
        help="also run the build pinned to one core (taskset -c 0)",
    )
    parser.add_argument(
        "--near-duplicates",
        action="store_true",
        help="also run the build with --no-near-duplicates, for what the search costs",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each; the fastest time and the highest memory are kept",
    )
    args = parser.parse_args()
    os.makedirs(DATA, exist_ok=True)
    datasets = []
    for n in args.sizes:
        root = os.path.join(DATA, f"synth-{n}")
        if not os.path.isdir(root):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "coco_beam.pipelines.cli",
                    "synth",
                    "--output",
                    root,
                    "--images",
                    str(n),
                    "--seed",
                    "1",
                    # The loop reads the instance families; panoptic would be work it skips.
                    "--no-panoptic",
                ],
                check=True,
                cwd=REPO,
            )
        datasets.append((f"synthetic {n:,}", root, n))
    if args.tiny_copies and os.path.isdir(COCO_TINY):
        root = os.path.join(DATA, f"coco-tiny-x{args.tiny_copies}")
        datasets.append(
            (f"coco-tiny x{args.tiny_copies}", root, replicate_tiny(root, args.tiny_copies))
        )
    results = []
    cores = os.cpu_count() or 1
    for name, root, n in datasets:
        out = os.path.join(DATA, "out")
        build_cmd = [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            "--coco-root",
            root,
            "--output",
            out,
            *args.build_args,
        ]
        loop_runs, build_runs, bare_runs, one_core_runs, unsearched_runs = [], [], [], [], []
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            loop_runs.append(measure([sys.executable, __file__, "--loop-run", root, out]))
            shutil.rmtree(out, ignore_errors=True)
            build_runs.append(measure(build_cmd))
            shutil.rmtree(out, ignore_errors=True)
            if args.near_duplicates:
                unsearched_runs.append(measure([*build_cmd, "--no-near-duplicates"]))
                shutil.rmtree(out, ignore_errors=True)
            if not args.no_bare:
                bare_runs.append(measure([*build_cmd, "--no-statistics"]))
                shutil.rmtree(out, ignore_errors=True)
            if args.one_core:
                one_core_runs.append(measure(["taskset", "-c", "0", *build_cmd]))
                shutil.rmtree(out, ignore_errors=True)
        loop_s = min(m.seconds for m in loop_runs)
        loop_mem = max(m.peak_bytes for m in loop_runs)
        best = min(build_runs, key=lambda m: m.seconds)
        build_s, build_mem = best.seconds, max(m.peak_bytes for m in build_runs)
        bare_s = min(m.seconds for m in bare_runs) if bare_runs else None
        one_s = min(m.seconds for m in one_core_runs) if one_core_runs else None
        near = _near_duplicates_cost(build_runs, unsearched_runs) if unsearched_runs else {}
        row = {
            "dataset": name,
            "images": n,
            "cores": cores,
            "loop_s": round(loop_s, 1),
            "loop_img_s": round(n / loop_s, 1),
            "loop_peak_mb": round(loop_mem / 2**20),
            "build_s": round(build_s, 1),
            "build_img_s": round(n / build_s, 1),
            "build_img_s_per_core": round(n / build_s / cores, 1),
            "build_peak_mb": round(build_mem / 2**20),
            "speedup": round(loop_s / build_s, 2),
            # The same build without statistics: what the statistics cost.
            "build_no_stats_s": round(bare_s, 1) if bare_s else None,
            "stats_overhead_pct": round(100 * (build_s / bare_s - 1), 1) if bare_s else None,
            # Where the fastest build's time went: cores busy on average, the share of the run
            # under 1.5 cores busy, and cores busy second by second.
            "build_mean_cores": round(best.mean_cores, 2),
            "build_serial_share": round(best.serial_share, 2),
            "build_timeline": best.timeline(),
            "one_core_s": round(one_s, 1) if one_s else None,
            "two_vs_one_core": round(one_s / build_s, 2) if one_s else None,
            "predicted_8_cores": round(amdahl(one_s, build_s, 8), 1) if one_s else None,
            "predicted_16_cores": round(amdahl(one_s, build_s, 16), 1) if one_s else None,
            **near,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(
        "\n| data | images | loop img/s | build img/s | per core | speedup | loop peak MB |"
        " build peak MB | build s | without statistics s | statistics cost | cores busy |"
        " under 1.5 cores |"
        "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['dataset']} | {r['images']:,} | {r['loop_img_s']} | {r['build_img_s']} | "
            f"{r['build_img_s_per_core']} | {r['speedup']}x | {r['loop_peak_mb']} | "
            f"{r['build_peak_mb']} | {r['build_s']} | {r['build_no_stats_s']} | "
            f"{r['stats_overhead_pct']}% | {r['build_mean_cores']} | "
            f"{round(100 * r['build_serial_share'])}% |"
        )
    if args.near_duplicates:
        print(
            "\n| data | with s | without s | cost | with CPU s | without CPU s | cost |"
            "\n|---|---|---|---|---|---|---|"
        )
        for r in results:
            print(
                f"| {r['dataset']} | {r['near_with_s']} | {r['near_without_s']} | "
                f"{r['near_cost_pct']}% | {r['near_with_cpu_s']} | {r['near_without_cpu_s']} | "
                f"{r['near_cost_cpu_pct']}% |"
            )
    if args.one_core:
        print("\n| data | one core s | two cores s | two vs one | predicted 8 | predicted 16 |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['dataset']} | {r['one_core_s']} | {r['build_s']} | "
                f"{r['two_vs_one_core']}x | {r['predicted_8_cores']}x | "
                f"{r['predicted_16_cores']}x |"
            )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--loop-run":
        baseline_loop(sys.argv[2], sys.argv[3])
    else:
        main()
