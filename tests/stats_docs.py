"""Small statistics documents made with the statistics core itself, for report and compare tests."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from coco_beam.transforms.stats.accumulators import add_image, add_pixels, new_accumulator
from coco_beam.transforms.stats.summary import stats_document

CATEGORIES = {
    1: {"id": 1, "name": "person", "supercategory": "person"},
    3: {"id": 3, "name": "car", "supercategory": "vehicle"},
    44: {"id": 44, "name": "bottle", "supercategory": "kitchen"},
}


def _rle(h: int, w: int, on: int) -> dict:
    m = np.zeros(h * w, np.uint8)
    m[:on] = 1
    rle = mask_utils.encode(np.asfortranarray(m.reshape(w, h).T))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def _ann(cat: int, bbox: list, crowd: int = 0) -> dict:
    return {
        "category_id": cat,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": crowd,
        "rle": _rle(60, 80, int(bbox[2] * bbox[3] // 2)),
        "keypoints": None,
        "num_keypoints": None,
    }


def _image(acc, anns, value: int) -> None:
    add_image(
        acc,
        width=80,
        height=60,
        fmt="jpeg",
        mode="RGB",
        exif_orientation=None,
        num_bytes=4000,
        annotations=anns,
        captions=[],
    )
    hist = [0] * 768
    for channel in range(3):
        hist[channel * 256 + value] = 80 * 60
    add_pixels(acc, hist)


def small_doc(*, extra_car: bool = False, leak: bool = True) -> dict:
    """Two splits, no keypoints or captions; ``train`` 1 and ``val`` 9 share bytes (a leak) when
    ``leak``, ``train`` 4 and 5 too. ``extra_car`` adds one car to one train image."""
    train, val = new_accumulator(), new_accumulator()
    _image(train, [_ann(1, [0, 0, 40, 30]), _ann(3, [10, 10, 8, 6])], 100)
    _image(train, [_ann(1, [5, 5, 70, 50], crowd=1)] + extra_car * [_ann(3, [1, 1, 20, 9])], 120)
    _image(train, [], 30)
    _image(val, [_ann(44, [2, 3, 4, 5]), _ann(1, [20, 10, 30, 40])], 200)
    duplicates = [{"sha256": "b" * 64, "images": [["train", 4], ["train", 5]]}]
    if leak:
        duplicates.append({"sha256": "a" * 64, "images": [["train", 1], ["val", 9]]})
    cats = {"train": CATEGORIES, "val": CATEGORIES}
    return stats_document({"train": train, "val": val}, cats, duplicates)
