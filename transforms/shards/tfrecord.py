"""TFRecord shard files of ``tf.train.Example``s with Model Garden's keys (``schemas.tf_example``).

``build_example`` is the pure core: one image's plan, bytes and decode facts to one serialized
Example. ``TFRecordFile`` frames records the standard way (length, masked CRC32C of the
length, data, masked CRC32C of the data) with Beam's TFRecord code, so TensorFlow's readers
verify every record.

Guarantees:
  * every key of ``schemas.tf_example.FEATURES`` is written for every image (lists may be
    empty), except the mask key without ``masks`` and the keypoint keys in splits whose
    categories define no keypoints;
  * boxes are normalized by the image's width and height and clipped to [0, 1]; a box that
    needed clipping or has no area keeps its flags on the Parquet row and is counted in the
    statistics, never dropped;
  * ``image/object/mask`` holds one 8-bit grey PNG per instance, values 0 and 1, equal pixel
    for pixel to pycocotools' decode of the instance's RLE;
  * the same input gives the same bytes (map keys serialized in sorted order, PNGs from a
    pinned compressor).
"""

from __future__ import annotations

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from coco_beam.schemas.records import ImagePlan, ShardFile
from coco_beam.schemas.tf_example import Example
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.masks import decode_rle_counts
from coco_beam.transforms.images.panoptic import PanopticFacts
from coco_beam.transforms.images.png import grey_png, png_from_rows
from coco_beam.transforms.shards.hashing import HashingFile

__all__ = ["TFRecordFile", "build_example", "mask_png", "mask_rows"]


def mask_rows(rle: dict) -> np.ndarray:
    """The mask of a COCO compressed RLE as PNG scanlines: ``(h, w + 1)`` uint8, column 0 the
    filter type (0: none) of each row, then the mask's 0/1 values.

    Only the columns between the first and the last foreground pixel are expanded from the
    runs (most COCO instances cover a small part of the image); the rest stays zero. Equal to
    pycocotools' ``decode`` (tested), at about a third of the cost of decoding the whole image
    and transposing it from column-major."""
    height, width = rle["size"]
    rows = np.zeros((height, width + 1), np.uint8)
    counts = np.array(decode_rle_counts(rle["counts"]), np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts do not cover a {height}x{width} mask")
    ends = np.cumsum(counts)
    starts = ends - counts
    on_starts, on_ends = starts[1::2], ends[1::2]  # runs alternate: 0s first, then 1s
    filled = np.nonzero(on_ends > on_starts)[0]
    if len(filled):
        first = int(on_starts[filled[0]]) // height
        last = (int(on_ends[filled[-1]]) - 1) // height + 1
        lo, hi = first * height, last * height
        lengths = np.clip(ends, lo, hi) - np.clip(starts, lo, hi)
        values = np.zeros(len(counts), np.uint8)
        values[1::2] = 1
        window = np.repeat(values, lengths).reshape(last - first, height)
        rows[:, 1 + first : 1 + last] = window.T
    return rows


def mask_png(rle: dict) -> bytes:
    """The instance mask of a COCO compressed RLE as an 8-bit grey PNG with values 0 and 1."""
    height, width = rle["size"]
    return png_from_rows(mask_rows(rle), width, 8)


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def build_example(
    plan: ImagePlan,
    data: bytes,
    facts: ImageFacts,
    panoptic: PanopticFacts | None,
    categories: dict[int, dict],
    *,
    masks: bool,
    keypoint_names: list[str] | None,
) -> bytes:
    """The serialized ``tf.train.Example`` of one image. ``categories``: id -> category of the
    split (names, and joint names where it has keypoints); ``keypoint_names``: the split's
    joints, or None when the split has no keypoints (then no keypoint keys are written);
    ``panoptic``: the image's checked panoptic record, whose label maps are written as Model
    Garden's ``image/panoptic/category_mask`` and ``instance_mask``."""
    width, height = plan.width, plan.height
    example = Example()
    feature = example.features.feature

    def ints(key, values):
        feature[key].int64_list.value.extend(values)

    def floats(key, values):
        feature[key].float_list.value.extend(values)

    def strings(key, values):
        feature[key].bytes_list.value.extend(values)

    ints("image/height", [height])
    ints("image/width", [width])
    strings("image/filename", [plan.file_name.encode()])
    strings("image/source_id", [str(plan.image_id).encode()])
    strings("image/key/sha256", [facts.sha256.encode()])
    strings("image/encoded", [data])
    strings("image/format", [facts.format.encode()])
    anns = plan.annotations
    boxes = [a["bbox"] for a in anns]
    floats("image/object/bbox/xmin", [_clip(x / width) for x, _, _, _ in boxes])
    floats("image/object/bbox/xmax", [_clip((x + w) / width) for x, _, w, _ in boxes])
    floats("image/object/bbox/ymin", [_clip(y / height) for _, y, _, _ in boxes])
    floats("image/object/bbox/ymax", [_clip((y + h) / height) for _, y, _, h in boxes])
    ints("image/object/class/label", [a["category_id"] for a in anns])
    strings(
        "image/object/class/text", [categories[a["category_id"]]["name"].encode() for a in anns]
    )
    ints("image/object/is_crowd", [a["iscrowd"] for a in anns])
    floats("image/object/area", [a["area"] for a in anns])
    if masks:
        strings("image/object/mask", [mask_png(a["rle"]) for a in anns])
    strings("image/caption", [c["caption"].encode() for c in plan.captions])
    if keypoint_names is not None:
        xs, ys, vis, names, nums = [], [], [], [], []
        default_names = [n.encode() for n in keypoint_names]
        for a in anns:
            kp = a.get("keypoints")
            if kp:
                joint_names = categories[a["category_id"]].get("keypoints") or keypoint_names
                xs.extend(x / width for x in kp[0::3])
                ys.extend(y / height for y in kp[1::3])
                vis.extend(int(v) for v in kp[2::3])
                names.extend(n.encode() for n in joint_names[: len(kp) // 3])
                nums.append(a["num_keypoints"] or 0)
            else:
                xs.extend([0.0] * len(default_names))
                ys.extend([0.0] * len(default_names))
                vis.extend([0] * len(default_names))
                names.extend(default_names)
                nums.append(0)
        floats("image/object/keypoint/x", xs)
        floats("image/object/keypoint/y", ys)
        ints("image/object/keypoint/visibility", vis)
        ints("image/object/keypoint/num", nums)
        strings("image/object/keypoint/text", names)
    if panoptic is not None:
        strings("image/panoptic/category_mask", [grey_png(panoptic.category_map)])
        strings("image/panoptic/instance_mask", [grey_png(panoptic.instance_map)])
    return example.SerializeToString(deterministic=True)


def split_keypoint_names(categories: dict[int, dict]) -> list[str] | None:
    """The joints of the split's keypoint category (the lowest id that defines keypoints, as
    COCO's person), or None when no category defines keypoints."""
    for cat_id in sorted(categories):
        names = categories[cat_id].get("keypoints")
        if names:
            return list(names)
    return None


class TFRecordFile:
    """One TFRecord shard being written: rows in, a ``ShardFile`` out."""

    def __init__(self, temp_path: str, categories: dict[int, dict], *, masks: bool):
        self._temp_path = temp_path
        self._categories = categories
        self._masks = masks
        self._keypoint_names = split_keypoint_names(categories)
        self._raw = FileSystems.create(temp_path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._file = HashingFile(self._raw)

    def add(
        self, plan: ImagePlan, data: bytes, facts: ImageFacts, panoptic: PanopticFacts | None
    ) -> None:
        record = build_example(
            plan,
            data,
            facts,
            panoptic,
            self._categories,
            masks=self._masks,
            keypoint_names=self._keypoint_names,
        )
        # Beam's framing: length, masked CRC32C of the length, data, masked CRC32C of the data.
        _TFRecordUtil.write_record(self._file, record)

    def close(self) -> ShardFile:
        self._raw.close()
        return ShardFile(
            "tfrecord", self._temp_path, self._file.num_bytes, self._file.sha256.hexdigest()
        )
