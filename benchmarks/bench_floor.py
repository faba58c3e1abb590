"""Benchmark: the floor. What each piece of a build's per-image work costs on one core, and
the fastest a build could be against the plain loop if it had no overhead at all.

On real images (the real COCO excerpt's 160 images, ``../shared/data/coco-tiny``, with their
instances), in this one process and on one core, each piece is timed over every image
(``time.process_time``, the fastest of ``--repeat`` passes): reading the file, SHA-256, the
full decode, the per-channel histogram and its sums, the perceptual hash, CRC32C, the RLE of
every instance (``images.masks.to_rle``, as the build makes it), and the Arrow conversion of
the row. The plain loop of ``bench_build.py`` does the first, second, third and seventh and the
row; a build with statistics (the default) does all of them. Their sums, per image, are the
work each must do whatever its design; their ratio is what a build on ``c`` cores could reach
against the loop with perfect parallelism and nothing else (no start, no shuffle, no handing
of data between processes, no publishing): ``c * loop / build``.

Usage: python benchmarks/bench_floor.py [--repeat 5] [--cores 2 8 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_TINY = os.path.join(os.path.dirname(REPO), "shared", "data", "coco-tiny")

# Pieces of the work, in the order a build does them; the loop does those marked True.
PIECES = {
    "read": True,
    "sha256": True,
    "decode": True,
    "histogram": False,
    "phash": False,
    "crc32c": False,
    "rle": True,
    "row": True,
}


def _images() -> list[tuple[str, dict, list]]:
    """(path, image record, its instances) of every coco-tiny image."""
    out = []
    for split in ("train2017", "val2017"):
        with open(os.path.join(COCO_TINY, "annotations", f"instances_{split}.json")) as f:
            doc = json.load(f)
        anns: dict[int, list] = {}
        for ann in doc["annotations"]:
            anns.setdefault(ann["image_id"], []).append(ann)
        for image in sorted(doc["images"], key=lambda i: i["id"]):
            path = os.path.join(COCO_TINY, split, image["file_name"])
            out.append((path, image, anns.get(image["id"], [])))
    return out


def measure_pieces(repeat: int) -> dict[str, float]:
    """Milliseconds of one core per image for each piece (the fastest of ``repeat`` passes)."""
    sys.path.insert(0, os.path.dirname(REPO))
    import hashlib

    import google_crc32c
    import pyarrow as pa
    from PIL import Image

    from coco_beam.transforms.images.decode import pixel_sums, rgb_histogram
    from coco_beam.transforms.images.masks import to_rle
    from coco_beam.transforms.images.phash import dct_hash

    images = _images()
    datas = []
    for path, _, _ in images:
        with open(path, "rb") as f:
            datas.append(f.read())
    decoded = []
    for data in datas:
        image = Image.open(io.BytesIO(data))
        image.load()
        decoded.append(image)

    def read():
        for path, _, _ in images:
            with open(path, "rb") as f:
                f.read()

    def rle():
        for _, image, anns in images:
            for ann in anns:
                to_rle(ann["segmentation"], image["height"], image["width"])

    rows = [
        {
            "image_id": image["id"],
            "image": {"bytes": data, "path": image["file_name"]},
            "annotations": [
                {"id": a["id"], "bbox": [float(v) for v in a["bbox"]], "counts": "x" * 200}
                for a in anns
            ],
        }
        for data, (_, image, anns) in zip(datas, images, strict=True)
    ]

    def decode():
        for data in datas:
            with Image.open(io.BytesIO(data)) as image:
                image.load()

    work = {
        "read": read,
        "sha256": lambda: [hashlib.sha256(d).hexdigest() for d in datas],
        "decode": decode,
        "histogram": lambda: [pixel_sums(rgb_histogram(im)) for im in decoded],
        "phash": lambda: [dct_hash(im) for im in decoded],
        "crc32c": lambda: [google_crc32c.value(d) for d in datas],
        "rle": rle,
        "row": lambda: [pa.RecordBatch.from_pylist([r]) for r in rows],
    }
    costs = {}
    for name, fn in work.items():
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        costs[name] = 1000 * best / len(images)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cores", type=int, nargs="*", default=[2, 8, 16])
    args = parser.parse_args()
    if not os.path.isdir(COCO_TINY):
        sys.exit(f"needs the real COCO excerpt at {COCO_TINY}")
    costs = measure_pieces(args.repeat)
    loop = sum(ms for name, ms in costs.items() if PIECES[name])
    build = sum(costs.values())
    print("| piece | ms of one core per image | in the loop |")
    print("|---|---|---|")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.3f} | {'yes' if PIECES[name] else 'no'} |")
    print(f"| **loop's work** | {loop:.3f} | |")
    print(f"| **build's work** | {build:.3f} | |")
    print("\n| cores | the build at most, against the loop (no overhead, no serial part) |")
    print("|---|---|")
    for cores in args.cores:
        print(f"| {cores} | {cores * loop / build:.2f}x |")
    print(json.dumps({"ms_per_image": costs, "loop_ms": loop, "build_ms": build}))


if __name__ == "__main__":
    main()
