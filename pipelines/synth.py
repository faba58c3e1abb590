"""``coco-beam synth``: a COCO-format dataset in the official layout, made from nothing.

Genuine JPEG files with photo-like texture (so decoding costs what a photo costs), of varied
sizes, some grayscale; instances as polygons with several rings, crowds as uncompressed RLE,
person keypoints (17 joints, same ids as the person instances), five captions per image,
panoptic PNGs and segments (stuff bands under the instances, a void border), some images
without annotations, and a test split with image info only. The same seed gives the
same files, byte for byte; images are encoded on every core.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["COCO_CATEGORIES", "KEYPOINT_NAMES", "SKELETON", "synthesize"]

# COCO 2017's 80 categories: ids 1..90 with gaps, as in the real files.
_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant - "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe - "
    "backpack umbrella - - handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle - wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed - dining_table - - toilet - tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator - book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()
_SUPER = {
    "person": "person",
    "vehicle": range(2, 10),
    "outdoor": range(10, 16),
    "animal": range(16, 26),
    "accessory": range(27, 34),
    "sports": range(34, 44),
    "kitchen": range(44, 52),
    "food": range(52, 62),
    "furniture": range(62, 72),
    "electronic": range(72, 78),
    "appliance": range(78, 84),
    "indoor": range(84, 91),
}


def _supercategory(cat_id: int) -> str:
    for name, ids in _SUPER.items():
        if name == "person" and cat_id == 1 or not isinstance(ids, str) and cat_id in ids:
            return name
    return "other"


COCO_CATEGORIES = [
    {"supercategory": _supercategory(i + 1), "id": i + 1, "name": name.replace("_", " ")}
    for i, name in enumerate(_NAMES)
    if name != "-"
]
KEYPOINT_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
_WORDS = (
    "a man a woman two dogs a cat a red bus a kitchen a street a table people a pizza "
    "sitting standing walking near on under next to with in the park at night"
).split()


def _ring(rng, cx, cy, radius, width, height) -> list[float]:
    n = int(rng.integers(5, 17))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(0.45, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 0.01)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 0.01)
    return [round(float(v), 2) for pair in zip(xs, ys, strict=True) for v in pair]


def _bbox_of(rings) -> list[float]:
    xs = [v for ring in rings for v in ring[0::2]]
    ys = [v for ring in rings for v in ring[1::2]]
    return [
        round(min(xs), 2),
        round(min(ys), 2),
        round(max(xs) - min(xs), 2),
        round(max(ys) - min(ys), 2),
    ]


def _objects(rng, image_id: int, width: int, height: int, next_id: list) -> list[dict]:
    """Annotations of one image (10% of images have none)."""
    if rng.random() < 0.1:
        return []
    anns = []
    for _ in range(int(rng.integers(1, 9))):
        category = (
            COCO_CATEGORIES[0]
            if rng.random() < 0.3
            else COCO_CATEGORIES[int(rng.integers(0, len(COCO_CATEGORIES)))]
        )
        radius = float(rng.uniform(8, min(width, height) / 3))
        cx, cy = (
            rng.uniform(radius / 2, width - radius / 2),
            rng.uniform(radius / 2, height - radius / 2),
        )
        crowd = rng.random() < 0.05
        rings = [_ring(rng, cx, cy, radius, width, height)]
        for _ in range(int(rng.integers(0, 3))):
            rings.append(
                _ring(
                    rng,
                    cx + rng.uniform(-radius, radius),
                    cy + rng.uniform(-radius, radius),
                    radius / 3,
                    width,
                    height,
                )
            )
        rle = mask_utils.merge(mask_utils.frPyObjects(rings, height, width))
        ann = {
            "id": next_id[0],
            "image_id": image_id,
            "category_id": category["id"],
            "iscrowd": int(crowd),
            "area": float(mask_utils.area(rle)),
            "bbox": _bbox_of(rings),
        }
        next_id[0] += 1
        if crowd:
            dense = mask_utils.decode(rle)
            flat = dense.flatten(order="F")
            changes = np.flatnonzero(np.diff(flat)) + 1
            edges = np.concatenate([[0], changes, [flat.size]])
            counts = np.diff(edges).tolist()
            if flat[0] == 1:
                counts = [0] + counts
            ann["segmentation"] = {"counts": counts, "size": [height, width]}
        else:
            ann["segmentation"] = rings
        if category["id"] == 1:
            vis = rng.choice([0, 1, 2], size=17, p=[0.3, 0.2, 0.5]) if not crowd else np.zeros(17)
            kx = rng.uniform(cx - radius, cx + radius, 17).clip(0, width - 1)
            ky = rng.uniform(cy - radius, cy + radius, 17).clip(0, height - 1)
            kps = []
            for x, y, v in zip(kx, ky, vis, strict=True):
                kps += [int(x), int(y), int(v)] if v else [0, 0, 0]
            ann["keypoints"] = kps
            ann["num_keypoints"] = int(np.count_nonzero(vis))
        anns.append(ann)
    return anns


def _render(task) -> None:
    """Draws and encodes one image: smooth colour fields, fine grain, the objects' shapes."""
    path, seed, width, height, gray, rings = task
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    mid = rng.standard_normal((height // 8 + 1, width // 8 + 1, 3), np.float32) * 28
    mid = np.repeat(np.repeat(mid, 8, axis=0), 8, axis=1)[:height, :width]
    grain = rng.standard_normal((height, width, 3), np.float32) * 16
    pixels = np.clip(base + mid + grain, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for ring in rings:
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(list(zip(ring[0::2], ring[1::2], strict=True)), fill=color)
    if gray:
        image = image.convert("L")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# A few of COCO panoptic's stuff categories (ids 92 to 200 there); things are the 80 above.
STUFF_CATEGORIES = [
    {"id": 184, "name": "tree-merged", "supercategory": "plant"},
    {"id": 187, "name": "sky-other-merged", "supercategory": "sky"},
    {"id": 190, "name": "pavement-merged", "supercategory": "ground"},
    {"id": 193, "name": "grass-merged", "supercategory": "plant"},
]
PANOPTIC_CATEGORIES = [dict(c, isthing=1) for c in COCO_CATEGORIES] + [
    dict(c, isthing=0) for c in STUFF_CATEGORIES
]
_VOID_BORDER = 2  # px of void (id 0) around every panoptic image, as unlabelled edges are


def _instance_mask(ann: dict, height: int, width: int) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    else:
        rle = mask_utils.frPyObjects(seg, height, width)
    return mask_utils.decode(rle).astype(bool)


def _panoptic(rng, anns: list, width: int, height: int) -> tuple[bytes, list]:
    """One image's panoptic PNG and segments_info: two stuff bands (sky above, ground below),
    the instances painted over them in order (a later one covers an earlier one, as panoptic
    segments do not overlap), a void border. Segment ids are random 24-bit numbers."""
    ids = np.zeros((height, width), np.uint32)
    sky, ground = rng.choice(STUFF_CATEGORIES[1:], 2, replace=False)
    horizon = int(height * rng.uniform(0.3, 0.6))
    used: set[int] = set()

    def new_id() -> int:
        while (value := int(rng.integers(1, 2**24))) in used:
            pass
        used.add(value)
        return value

    segments = [(new_id(), sky["id"], 0), (new_id(), ground["id"], 0)]
    ids[:horizon] = segments[0][0]
    ids[horizon:] = segments[1][0]
    for ann in anns:
        segments.append((new_id(), ann["category_id"], ann["iscrowd"]))
        ids[_instance_mask(ann, height, width)] = segments[-1][0]
    ids[:_VOID_BORDER] = ids[-_VOID_BORDER:] = 0
    ids[:, :_VOID_BORDER] = ids[:, -_VOID_BORDER:] = 0
    info = []
    for seg_id, category_id, iscrowd in segments:
        rows, cols = np.nonzero(ids == seg_id)
        if not len(rows):
            continue  # covered by later instances
        info.append(
            {
                "id": seg_id,
                "category_id": category_id,
                "iscrowd": iscrowd,
                "bbox": [
                    int(cols.min()),
                    int(rows.min()),
                    int(cols.max() - cols.min() + 1),
                    int(rows.max() - rows.min() + 1),
                ],
                "area": len(rows),
            }
        )
    rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), info


def _caption(rng) -> str:
    return " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), int(rng.integers(6, 14))))


def _dump(path: str, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, separators=(",", ":"))


def synthesize(
    root: str,
    num_images: int,
    seed: int = 0,
    processes: int | None = None,
    panoptic: bool = True,
) -> dict:
    """Writes the dataset under ``root``; returns ``{split: number of images}``.

    Splits: train2017 (70%), val2017 (20%), test2017 (10%, image info only). ``panoptic``:
    also ``panoptic_<split>.json`` and its PNGs in ``annotations/panoptic_<split>/`` for the
    annotated splits (drawn from their own random stream: the other files are the same
    without them).
    """
    pan_rng = np.random.default_rng([seed, 1])
    if num_images < 1:
        raise ValueError("--images must be at least 1")
    rng = np.random.default_rng(seed)
    n_val = max(1, num_images // 5) if num_images >= 3 else 0
    n_test = num_images // 10
    n_train = num_images - n_val - n_test
    splits = {"train2017": n_train, "val2017": n_val, "test2017": n_test}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    tasks, next_image, next_ann, next_cap = [], [1], [1], 1
    person = dict(COCO_CATEGORIES[0], keypoints=KEYPOINT_NAMES, skeleton=SKELETON)
    for split, count in splits.items():
        if count == 0:
            continue
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, instances, captions = [], [], []
        for _ in range(count):
            image_id = next_image[0] * 7 + 3  # sparse ids, as COCO's are
            next_image[0] += 1
            # As COCO's: the longer side is 640, the other varies.
            short = int(rng.integers(300, 641))
            width, height = (640, short) if rng.random() < 0.7 else (short, 640)
            file_name = f"{image_id:012d}.jpg"
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": width,
                    "height": height,
                    "license": 1,
                    "coco_url": "",
                    "flickr_url": "",
                }
            )
            anns = _objects(rng, image_id, width, height, next_ann) if split != "test2017" else []
            instances += anns
            rings = [
                r for a in anns if isinstance(a["segmentation"], list) for r in a["segmentation"]
            ]
            tasks.append(
                (
                    os.path.join(root, split, file_name),
                    int(rng.integers(0, 2**31)),
                    width,
                    height,
                    bool(rng.random() < 0.05),
                    rings,
                )
            )
            if split != "test2017":
                for _ in range(5):
                    captions.append(
                        {"id": next_cap, "image_id": image_id, "caption": _caption(rng)}
                    )
                    next_cap += 1
        info = {"description": "coco-beam synthetic COCO", "version": "1.0", "year": 2017}
        ann_dir = os.path.join(root, "annotations")
        if split == "test2017":
            _dump(
                os.path.join(ann_dir, f"image_info_{split}.json"),
                {"info": info, "images": images, "categories": COCO_CATEGORIES},
            )
            continue
        plain = [
            {k: v for k, v in a.items() if k not in ("keypoints", "num_keypoints")}
            for a in instances
        ]
        _dump(
            os.path.join(ann_dir, f"instances_{split}.json"),
            {
                "info": info,
                "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
                "images": images,
                "annotations": plain,
                "categories": COCO_CATEGORIES,
            },
        )
        if panoptic:
            pan_dir = os.path.join(ann_dir, f"panoptic_{split}")
            os.makedirs(pan_dir, exist_ok=True)
            by_image: dict[int, list] = {im["id"]: [] for im in images}
            for ann in instances:
                by_image[ann["image_id"]].append(ann)
            records = []
            for im in images:
                png, segments = _panoptic(pan_rng, by_image[im["id"]], im["width"], im["height"])
                name = im["file_name"].rsplit(".", 1)[0] + ".png"
                with open(os.path.join(pan_dir, name), "wb") as f:
                    f.write(png)
                records.append({"image_id": im["id"], "file_name": name, "segments_info": segments})
            _dump(
                os.path.join(ann_dir, f"panoptic_{split}.json"),
                {
                    "info": info,
                    "images": images,
                    "annotations": records,
                    "categories": PANOPTIC_CATEGORIES,
                },
            )
        people = [a for a in instances if a["category_id"] == 1]
        _dump(
            os.path.join(ann_dir, f"person_keypoints_{split}.json"),
            {"info": info, "images": images, "annotations": people, "categories": [person]},
        )
        _dump(
            os.path.join(ann_dir, f"captions_{split}.json"),
            {"info": info, "images": images, "annotations": captions},
        )
    processes = processes or os.cpu_count() or 1
    if processes > 1 and len(tasks) > 16:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=8):
                pass
    else:
        for task in tasks:
            _render(task)
    return {split: n for split, n in splits.items() if n}
