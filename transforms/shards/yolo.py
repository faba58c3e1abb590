"""Ultralytics YOLO datasets: ``images/<split>/``, ``labels/<split>/<stem>.txt`` and ``data.yaml``.

A YOLO dataset is a file per image rather than a file per shard. The shard writer's part
(``YoloFile``) writes, for each image of a shard, its label file and its image (hard-linked to
the source where both are on one local filesystem, else written from the bytes already read)
under the shard's temporary name, ``<temp_path>.members/<relative path>``, and one shard file:
an index, one JSON line per image (its image and label paths, sizes, SHA-256, the instances
written and those left out), published as ``data/<split>-SSSSS-of-NNNNN.yolo.jsonl``, listed
in the manifest and reused by incremental rebuilds like any shard file. Publishing
(``publish_layout``) then renames the members to their final paths (or links a reused shard's
from the previous run), and writes ``data.yaml`` and ``classes.json``, all before the manifest
and ``LATEST``, so a published run is never partial.

Label rules (the pure core, ``label_lines``):
  * class index = the position of the category id among the split's category ids, sorted
    (0..N-1), a panoptic file's stuff categories left out; ``classes.json`` maps each index to
    the COCO id and name. Every split with a label line must have the same categories
    (``data.yaml`` has one list of names), else the run fails before it is published;
  * crowd instances are left out, as Ultralytics' own converter does; so are boxes with no area
    inside the image, instances of a stuff category and, for ``pose``, instances without a
    labelled keypoint (as the converter does); each is counted in the manifest
    (``yolo.left_out``);
  * coordinates are normalized by the image's width and height and clipped to [0, 1]
    (Ultralytics' loader refuses a whole label file with a coordinate past 1.01); boxes are
    clipped to the image before their centre and size are taken; values are written with
    ``%g`` (six significant digits), as the converter writes them; one line per instance, in
    annotation id order; an image without objects gets an empty label file;
  * ``detect``: ``class cx cy w h``; ``pose``: the same, then ``x y v`` for each of the split's
    K joints; ``segment``: ``class x1 y1 x2 y2 ...``, one polygon per instance:
      - an instance with polygons in the JSON: its polygon as ``convert_coco(...,
        use_segments=True)`` writes it, from the JSON's rings (``ImagePlan.polygons``, which the
        writer keeps only for this task): one ring normalized as it is; several merged into
        one by Ultralytics' ``merge_multi_segment`` (``merge_rings``: consecutive rings joined
        at their closest points, in the JSON's order), rings without a point left out;
      - an instance whose segmentation is RLE (a non-crowd mask): the outline of its mask
        (``mask_polygon``; its box's outline where the mask covers no pixel), as is a polygon
        instance of a plan rasterized before it reached the writer (no rings kept).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import ImagePlan, ShardFile
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.outline import mask_polygon
from coco_beam.transforms.images.panoptic import PanopticFacts
from coco_beam.transforms.runs.incremental import link_or_copy
from coco_beam.transforms.shards.hashing import HashingFile
from coco_beam.transforms.shards.sharding import shard_name
from coco_beam.transforms.shards.tfrecord import split_keypoint_names

__all__ = [
    "INDEX_EXTENSION",
    "LEFT_OUT",
    "TASKS",
    "YoloFile",
    "class_indices",
    "data_yaml",
    "flip_index",
    "image_path",
    "label_lines",
    "label_path",
    "merge_rings",
    "polygon_values",
    "publish_layout",
    "split_roles",
]

TASKS = ("detect", "segment", "pose")
# The shard file: an index of the shard's images, published as data/<shard>.yolo.jsonl.
INDEX_EXTENSION = "yolo.jsonl"
# Why an instance has no label line, in the order the rules are checked.
LEFT_OUT = ("crowd", "stuff_category", "zero_size", "no_keypoints")
_MEMBERS = ".members"


def class_indices(categories: dict[int, dict]) -> dict[int, int]:
    """COCO category id -> class index 0..N-1, in id order; a panoptic file's stuff categories
    (``isthing`` false: regions, never instances) are no classes."""
    things = sorted(c for c, cat in categories.items() if cat.get("isthing") is not False)
    return {cat_id: index for index, cat_id in enumerate(things)}


def image_path(split: str, file_name: str) -> str:
    return f"images/{split}/{file_name}"


def label_path(split: str, file_name: str) -> str:
    """Where Ultralytics looks for an image's labels: ``images`` -> ``labels``, extension -> txt."""
    return f"labels/{split}/{file_name.rsplit('.', 1)[0]}.txt"


def _g(value: float) -> str:
    return f"{value:g}"


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The indexes of the closest pair of points of ``a`` and ``b`` (first in row order)."""
    distances = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(distances, axis=None), distances.shape)
    return int(i), int(j)


def merge_rings(rings: list) -> list[np.ndarray]:
    """Ultralytics' ``merge_multi_segment``, step for step: each ring joined to the next at
    their closest points, walked forward then back, so the pieces make one polygon. Returns
    the pieces (``(n, 2)`` arrays of points) in order."""
    segments = [np.array(ring, dtype=np.float64).reshape(-1, 2) for ring in rings]
    joins: list[list[int]] = [[] for _ in segments]
    for i in range(1, len(segments)):
        a, b = _closest(segments[i - 1], segments[i])
        joins[i - 1].append(a)
        joins[i].append(b)
    last = len(joins) - 1
    pieces = []
    for i, idx in enumerate(joins):
        if len(idx) == 2 and idx[0] > idx[1]:
            # As Ultralytics does: the ring reversed, its two indexes swapped (not remapped).
            idx = idx[::-1]
            segments[i] = segments[i][::-1, :]
        segments[i] = np.roll(segments[i], -idx[0], axis=0)
        segments[i] = np.concatenate([segments[i], segments[i][:1]])
        if i in (0, last):
            pieces.append(segments[i])
        else:
            pieces.append(segments[i][: idx[1] - idx[0] + 1])
    for i in range(last, -1, -1):
        if i not in (0, last):
            pieces.append(segments[i][abs(joins[i][1] - joins[i][0]) :])
    return pieces


def polygon_values(rings: list, width: int, height: int) -> list[float]:
    """An instance's polygon rings as ``convert_coco`` writes them, before ``%g``: ``x / w``,
    ``y / h`` of the one ring, or of the rings merged (``merge_rings``)."""
    rings = [ring for ring in rings if len(ring)]
    if len(rings) > 1:
        points = np.concatenate(merge_rings(rings), axis=0)
    else:
        points = np.array([v for ring in rings for v in ring], dtype=np.float64).reshape(-1, 2)
    return (points / np.array([width, height])).reshape(-1).tolist()


def label_lines(
    plan: ImagePlan, classes: dict[int, int], *, task: str, num_keypoints: int = 0
) -> tuple[list[str], collections.Counter]:
    """The label lines of one image, and the instances left out by reason (``LEFT_OUT``)."""
    width, height = plan.width, plan.height
    lines, left_out = [], collections.Counter()
    for ann in plan.annotations:
        if ann["iscrowd"]:
            left_out["crowd"] += 1
            continue
        if ann["category_id"] not in classes:
            left_out["stuff_category"] += 1
            continue
        x, y, w, h = ann["bbox"]
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            left_out["zero_size"] += 1
            continue
        box = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        values = [_g(v) for v in box]
        if task == "pose":
            kp = ann.get("keypoints") or []
            if len(kp) != 3 * num_keypoints or not any(kp[2::3]):
                left_out["no_keypoints"] += 1
                continue
            for kx, ky, v in zip(kp[0::3], kp[1::3], kp[2::3], strict=True):
                values += [_g(_unit(kx / width)), _g(_unit(ky / height)), _g(v)]
        elif task == "segment":
            rings = (plan.polygons or {}).get(ann["id"])
            if rings and any(len(ring) for ring in rings):
                values = [_g(_unit(v)) for v in polygon_values(rings, width, height)]
            else:
                # An empty mask (too thin to cover a pixel): its box's outline instead.
                points = mask_polygon(ann["rle"]) or [x1, y1, x2, y1, x2, y2, x1, y2]
                values = [_g(_unit(v / (height if i % 2 else width))) for i, v in enumerate(points)]
        lines.append(" ".join([str(classes[ann["category_id"]]), *values]))
    return lines, left_out


def flip_index(names: list[str]) -> list[int]:
    """Ultralytics' ``flip_idx``: the joint each joint becomes in a mirrored image (``left``
    and ``right`` swapped in its name; itself where the name has no counterpart)."""
    flipped = []
    for name in names:
        if "left" in name:
            other = name.replace("left", "right", 1)
        elif "right" in name:
            other = name.replace("right", "left", 1)
        else:
            other = name
        flipped.append(names.index(other) if other in names else names.index(name))
    return flipped


def split_roles(splits: list[str]) -> dict[str, list[str]]:
    """``data.yaml``'s ``train``/``val``/``test``: the splits whose names start so; without a
    ``train*`` split, every split not otherwise named trains; without a ``val*`` split, the
    training splits validate (Ultralytics requires both keys)."""
    roles = {}
    for role in ("train", "val", "test"):
        named = [s for s in sorted(splits) if s.lower().startswith(role)]
        if named:
            roles[role] = named
    if "train" not in roles:
        claimed = {s for named in roles.values() for s in named}
        roles["train"] = [s for s in sorted(splits) if s not in claimed] or sorted(splits)
    roles.setdefault("val", roles["train"])
    return {role: roles[role] for role in ("train", "val", "test") if role in roles}


def data_yaml(
    path: str,
    splits: list[str],
    names: list[str],
    *,
    task: str,
    keypoint_names: list[str] | None = None,
) -> str:
    """``data.yaml`` (strings as JSON, which YAML reads as double-quoted scalars)."""
    lines = [f"# Ultralytics YOLO dataset ({task}); classes.json maps classes to COCO ids"]
    lines.append(f"path: {json.dumps(path)}")
    for role, named in split_roles(splits).items():
        folders = [json.dumps(f"images/{s}") for s in named]
        lines.append(
            f"{role}: {folders[0] if len(folders) == 1 else '[' + ', '.join(folders) + ']'}"
        )
    lines.append(f"nc: {len(names)}")
    lines.append("names:")
    lines += [f"  {index}: {json.dumps(name)}" for index, name in enumerate(names)]
    if task == "pose":
        lines.append(f"kpt_shape: [{len(keypoint_names)}, 3]")
        lines.append(f"flip_idx: {json.dumps(flip_index(keypoint_names))}")
    return "\n".join(lines) + "\n"


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def _place_image(source: str, data: bytes, destination: str) -> None:
    """A hard link to the source where both are on one local filesystem, else its bytes."""
    if FileSystems.get_scheme(source) is None and FileSystems.get_scheme(destination) is None:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        try:
            os.link(source, destination)
            return
        except OSError:
            pass  # another device, or a filesystem without links: write the bytes
    _write(destination, data)


class YoloFile:
    """One shard of a YOLO dataset being written: images in, its index's ``ShardFile`` out."""

    def __init__(self, temp_path: str, categories: dict[int, dict], *, task: str):
        if task not in TASKS:
            raise ValueError(f"unknown YOLO task {task!r}; known: {TASKS}")
        self._temp_path = temp_path
        self._task = task
        self._classes = class_indices(categories)
        self._num_keypoints = len(split_keypoint_names(categories) or ())
        self._raw = FileSystems.create(temp_path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._index = HashingFile(self._raw)

    def add(
        self, plan: ImagePlan, data: bytes, facts: ImageFacts, panoptic: PanopticFacts | None
    ) -> None:
        lines, left_out = label_lines(
            plan, self._classes, task=self._task, num_keypoints=self._num_keypoints
        )
        text = "".join(line + "\n" for line in lines).encode()
        image, label = (
            image_path(plan.split, plan.file_name),
            label_path(plan.split, plan.file_name),
        )
        _write(f"{self._temp_path}{_MEMBERS}/{label}", text)
        _place_image(plan.path, data, f"{self._temp_path}{_MEMBERS}/{image}")
        entry = {
            "image_id": plan.image_id,
            "image": image,
            "image_bytes": len(data),
            "image_sha256": facts.sha256,
            "label": label,
            "label_bytes": len(text),
            "label_sha256": hashlib.sha256(text).hexdigest(),
            "instances": len(lines),
            "left_out": {reason: left_out[reason] for reason in LEFT_OUT},
        }
        self._index.write((json.dumps(entry, sort_keys=True) + "\n").encode())

    def close(self) -> ShardFile:
        self._raw.close()
        return ShardFile(
            "yolo", self._temp_path, self._index.num_bytes, self._index.sha256.hexdigest()
        )


def _read_index(path: str) -> list[dict]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return [json.loads(line) for line in f.read().decode().splitlines()]


def _class_names(categories: dict, labelled: list[str]) -> tuple[list[dict], list[str] | None]:
    """The class table of the ``labelled`` splits (those with a label line), which must be the
    same in each, and the joints of the first split that has any."""
    tables = {
        split: [(cat_id, cats[cat_id]["name"]) for cat_id in class_indices(cats)]
        for split, cats in sorted(categories.items())
    }
    distinct = {json.dumps(tables[s]) for s in labelled}
    if len(distinct) > 1:
        raise ValueError(
            "--formats yolo needs the same categories in every split with labels (data.yaml "
            f"has one list of names); these differ: {sorted(labelled)}"
        )
    table = tables[labelled[0]] if labelled else next((t for t in tables.values() if t), [])
    classes = [
        {"index": index, "category_id": cat_id, "name": name}
        for index, (cat_id, name) in enumerate(table)
    ]
    joints = [split_keypoint_names(categories[s]) for s in sorted(categories)]
    return classes, next((j for j in joints if j), None)


def _existing(paths: list[str], root: str) -> set[str]:
    """Those of ``paths`` (all under ``root``) that exist: a stat each on a local disk, one
    listing of ``root`` on an object store."""
    if FileSystems.get_scheme(root) is None:
        return {p for p in paths if os.path.exists(p)}
    listed = {m.path for m in FileSystems.match([root.rstrip("/") + "/**"])[0].metadata_list}
    return listed.intersection(paths)


def publish_layout(
    run_dir: str, chosen: list, categories: dict, *, task: str, previous_dir: str | None
) -> dict:
    """Puts the YOLO layout of a run in place, once its shard files are (``chosen``: one
    ``ShardResult`` per shard, their indexes already at ``data/``): the members of written
    shards renamed from their temporary names, those of reused shards linked from the previous
    run (``previous_dir``), then ``data.yaml`` and ``classes.json``. Returns the manifest's
    ``yolo`` entry. Safe to repeat: a member already in place is left as it is. Raises
    ``ValueError`` when the splits' categories differ, two images would share a path, ``pose``
    finds no joints or a member is nowhere."""
    if task == "pose" and not any(split_keypoint_names(c) for c in categories.values()):
        raise ValueError("--yolo-task pose needs a category with keypoints (person_keypoints)")
    renames, links, seen, splits = [], [], set(), {}
    for shard in chosen:
        if not any(f.format == "yolo" for f in shard.files):
            continue
        name = shard_name(shard.split, shard.index, shard.num_shards, INDEX_EXTENSION)
        [file] = [f for f in shard.files if f.format == "yolo"]
        totals = splits.setdefault(
            shard.split, {"images": 0, "instances": 0, **dict.fromkeys(LEFT_OUT, 0)}
        )
        for entry in _read_index(FileSystems.join(run_dir, "data", name)):
            totals["images"] += 1
            totals["instances"] += entry["instances"]
            for reason in LEFT_OUT:
                totals[reason] += entry["left_out"][reason]
            for rel in (entry["image"], entry["label"]):
                if rel in seen:
                    raise ValueError(f"two images of the YOLO layout would be {rel!r}")
                seen.add(rel)
                final = FileSystems.join(run_dir, rel)
                if shard.reused:
                    links.append((FileSystems.join(previous_dir, rel), final))
                else:
                    renames.append((f"{file.temp_path}{_MEMBERS}/{rel}", final))
    classes, joints = _class_names(categories, [s for s, t in splits.items() if t["instances"]])
    temps = [t for t, _ in renames]
    present = (
        _existing(temps, temps[0].split(_MEMBERS + "/", 1)[0].rsplit("/", 1)[0]) if temps else set()
    )
    pending = [(t, f) for t, f in renames if t in present]
    done = [f for t, f in renames if t not in present] + [f for _, f in links]
    in_place = _existing(done, run_dir) if done else set()
    missing = [f for t, f in renames if t not in present and f not in in_place]
    if missing:
        raise ValueError(
            f"{len(missing)} YOLO files are neither temporary nor in place: {missing[:3]}"
        )
    if pending:
        if FileSystems.get_scheme(run_dir) is None:
            for folder in sorted({os.path.dirname(f) for _, f in pending}):
                os.makedirs(folder, exist_ok=True)  # a local rename makes no folders
        FileSystems.rename([t for t, _ in pending], [f for _, f in pending])
    for source, final in links:
        if final not in in_place:
            link_or_copy(source, final)
    files = {
        "data.yaml": data_yaml(
            run_dir,
            sorted(categories),
            [c["name"] for c in classes],
            task=task,
            keypoint_names=joints,
        ).encode(),
        "classes.json": (json.dumps(classes, indent=1, sort_keys=True) + "\n").encode(),
    }
    for name, data in files.items():
        _write(FileSystems.join(run_dir, name), data)
    return {
        "task": task,
        "data_yaml": "data.yaml",
        "classes": "classes.json",
        "images": sum(s["images"] for s in splits.values()),
        "instances": sum(s["instances"] for s in splits.values()),
        "left_out": {r: sum(s[r] for s in splits.values()) for r in LEFT_OUT},
        "splits": dict(sorted(splits.items())),
        "files": [
            {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in sorted(files.items())
        ],
    }
