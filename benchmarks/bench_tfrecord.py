"""Benchmark: ``coco-beam build --formats tfrecord`` against TF Model Garden's converter.

Both run on the same data, real COCO images (``../shared/data/coco-tiny``, every image of both
splits gathered into one split and replicated under new ids to about 3,000 images), with masks
off and on, as separate processes timed from start to end with the peak resident memory of the
whole process tree. Model Garden's ``official/vision/data/create_coco_tf_record.py`` (from the
``tf-models-official`` package, installed into its own virtual environment under bench-data/
because it pins its own TensorFlow) runs with ``--num_processes=2``; the build runs with its
defaults (Beam in one process, decoding in child processes), and again doing the same work as
Model Garden plus decoding and verifying every image: ``--no-statistics`` (Model Garden
computes none) and ``--no-isolate-decoders`` (its pool processes run unguarded). Both write
the same number of shards.

Usage: python benchmarks/bench_tfrecord.py [--images 3000 12000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from bench_build import COCO_TINY, DATA, REPO
from measure import measure

MODEL_GARDEN_VENV = os.path.join(DATA, "venv-model-garden")
MODEL_GARDEN_PACKAGE = "tf-models-official==2.20.0"


def gather_tiny(dest: str, images: int) -> int:
    """coco-tiny's images of every split in one split ``train2017``, repeated under new ids
    until there are at least ``images``; returns the count."""
    if os.path.isdir(dest):
        return len(os.listdir(os.path.join(dest, "train2017")))
    docs = []
    for split in ("train2017", "val2017"):
        with open(os.path.join(COCO_TINY, "annotations", f"instances_{split}.json")) as f:
            docs.append((split, json.load(f)))
    per_copy = sum(len(doc["images"]) for _, doc in docs)
    copies = -(-images // per_copy)
    os.makedirs(os.path.join(dest, "annotations"))
    os.makedirs(os.path.join(dest, "train2017"))
    out_images, out_anns = [], []
    categories = docs[0][1]["categories"]
    for k in range(copies):
        offset = k * 10_000_000
        for split, doc in docs:
            for image in doc["images"]:
                name = f"{k:03d}_{image['file_name']}"
                out_images.append(dict(image, id=image["id"] + offset, file_name=name))
                shutil.copyfile(
                    os.path.join(COCO_TINY, split, image["file_name"]),
                    os.path.join(dest, "train2017", name),
                )
            out_anns.extend(
                dict(a, id=a["id"] + offset, image_id=a["image_id"] + offset)
                for a in doc["annotations"]
            )
    with open(os.path.join(dest, "annotations", "instances_train2017.json"), "w") as f:
        json.dump({"images": out_images, "annotations": out_anns, "categories": categories}, f)
    return len(out_images)


def ensure_model_garden() -> str:
    python = os.path.join(MODEL_GARDEN_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", MODEL_GARDEN_VENV], check=True)
    check = subprocess.run(
        [python, "-c", "import official.vision.data.create_coco_tf_record"], capture_output=True
    )
    if check.returncode != 0:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", MODEL_GARDEN_PACKAGE], check=True
        )
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[3000, 12000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--json", default=os.path.join(DATA, "results-tfrecord.json"))
    args = parser.parse_args()
    if not os.path.isdir(COCO_TINY):
        sys.exit(f"no {COCO_TINY}: this benchmark runs on real COCO images")
    python = ensure_model_garden()
    out = os.path.join(DATA, "out-tfrecord")
    rows = []
    for size, masks in ((size, masks) for size in args.images for masks in (False, True)):
        root = os.path.join(DATA, f"coco-tiny-{size}")
        n = gather_tiny(root, size)
        garden = [
            python,
            "-m",
            "official.vision.data.create_coco_tf_record",
            f"--image_dir={root}/train2017",
            f"--object_annotations_file={root}/annotations/instances_train2017.json",
            f"--output_file_prefix={out}/train",
            f"--num_shards={args.num_shards}",
            "--num_processes=2",
            f"--include_masks={str(masks).lower()}",
        ]
        build = [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            f"--coco-root={root}",
            f"--output={out}",
            "--formats=tfrecord",
            f"--num-shards={args.num_shards}",
            *(["--tfrecord-masks"] if masks else []),
        ]
        same_work = [*build, "--no-statistics", "--no-isolate-decoders"]
        times = {"garden": [], "build": [], "same_work": []}
        for _ in range(args.repeat):
            for name, cmd in (("garden", garden), ("build", build), ("same_work", same_work)):
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                times[name].append(measure(cmd))
        shutil.rmtree(out, ignore_errors=True)
        garden_s = min(m.seconds for m in times["garden"])
        best = min(times["build"], key=lambda m: m.seconds)
        build_s = best.seconds
        row = {
            "images": n,
            "masks": masks,
            "garden_s": round(garden_s, 1),
            "garden_img_s": round(n / garden_s, 1),
            "garden_peak_mb": round(max(m.peak_bytes for m in times["garden"]) / 2**20),
            "build_s": round(build_s, 1),
            "build_img_s": round(n / build_s, 1),
            "build_peak_mb": round(max(m.peak_bytes for m in times["build"]) / 2**20),
            "speedup": round(garden_s / build_s, 2),
            "build_mean_cores": round(best.mean_cores, 2),
            "build_serial_share": round(best.serial_share, 2),
            "build_timeline": best.timeline(),
            "same_work_s": round(min(m.seconds for m in times["same_work"]), 1),
            "same_work_peak_mb": round(max(m.peak_bytes for m in times["same_work"]) / 2**20),
        }
        row["same_work_speedup"] = round(garden_s / row["same_work_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)
    print(
        "\n| masks | images | Model Garden s | img/s | peak MB | coco-beam s | img/s | peak MB |"
        " speedup | cores busy | under 1.5 cores | same work s | peak MB | speedup |\n"
        + "|---" * 14
        + "|"
    )
    for r in rows:
        print(
            f"| {'on' if r['masks'] else 'off'} | {r['images']:,} | {r['garden_s']} | "
            f"{r['garden_img_s']} | {r['garden_peak_mb']:,} | {r['build_s']} | "
            f"{r['build_img_s']} | "
            f"{r['build_peak_mb']:,} | {r['speedup']}x | {r['build_mean_cores']} | "
            f"{round(100 * r['build_serial_share'])}% | {r['same_work_s']} | "
            f"{r['same_work_peak_mb']:,} | {r['same_work_speedup']}x |"
        )


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
