"""Pure core: one COCO segmentation to one compressed RLE, validated before C code sees it, and
every pending segmentation of one image's plan rasterized (``rasterize_plan``).

Nothing here imports Beam: the shard writer's decoder children rasterize an image's masks in
the same call as its decode. Guarantee: for every segmentation ``to_rle`` accepts,
``pycocotools.mask.decode`` of its result equals ``COCO.annToMask`` of that annotation pixel
for pixel (the same ``frPyObjects`` and ``merge`` calls ``annToRLE`` makes). What it does not
accept raises ``RecordError`` with a reason code, checked in Python first, so the C code never
reads past a buffer or divides by zero on hostile input.
"""

from __future__ import annotations

import hashlib
import json
from array import array

from pycocotools import mask as mask_utils

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import ImagePlan, Reason, Rejection
from coco_beam.transforms.annotations.checks import finite_numbers

__all__ = [
    "FLAG_AREA_FROM_MASK",
    "FLAG_BBOX_OUTSIDE",
    "FLAG_BBOX_ZERO",
    "FLAG_CROWD_MISMATCH",
    "FLAG_NUM_KEYPOINTS_MISMATCH",
    "FLAG_RING_DROPPED",
    "decode_rle_counts",
    "pack_polygons",
    "pending_masks",
    "polygon_rings",
    "rasterize_annotations",
    "rasterize_plan",
    "to_rle",
]

FLAG_RING_DROPPED = "degenerate_ring_dropped"
FLAG_BBOX_ZERO = "bbox_zero_size"
FLAG_BBOX_OUTSIDE = "bbox_outside_image"
FLAG_AREA_FROM_MASK = "area_from_mask"
# ``iscrowd`` says 1 with polygons, or 0 with RLE: the mask follows the segmentation's type.
FLAG_CROWD_MISMATCH = "iscrowd_mismatch"
# ``num_keypoints`` unlike the count of keypoints with a visibility above 0: kept as given.
FLAG_NUM_KEYPOINTS_MISMATCH = "num_keypoints_mismatch"
# Sub-pixel slack: COCO's boxes come from float polygon extents and often end a hair past
# the edge (x + w = 640.01 on a 640-wide image).
_EDGE_SLACK = 1.0


def pack_polygons(segmentation):
    """Polygon rings as ``array('d')`` (compact to carry and to hand to pycocotools, which
    converts every ring to doubles itself); anything else, or any ring that is not all finite
    numbers, comes back unchanged for ``to_rle`` to judge."""
    if not isinstance(segmentation, list) or not segmentation:
        return segmentation
    packed = []
    for ring in segmentation:
        if not isinstance(ring, list):
            return segmentation
        try:
            if not finite_numbers(ring, "a polygon ring"):
                return segmentation
            packed.append(array("d", ring))
        except (RecordError, OverflowError):
            return segmentation
    return packed


def _check_polygons(rings: list) -> tuple[list, list[str]]:
    kept, flags = [], []
    for ring in rings:
        if isinstance(ring, array):  # packed: finite numbers already
            pass
        elif not isinstance(ring, list):
            raise RecordError(Reason.SCHEMA_VIOLATION, "a polygon ring must be a list of numbers")
        elif not finite_numbers(ring, "a polygon ring"):
            raise RecordError(Reason.NON_FINITE_VALUE, "a polygon holds a non-finite number")
        if len(ring) % 2:
            raise RecordError(Reason.ODD_POLYGON_LENGTH, f"a ring has {len(ring)} numbers")
        if len(ring) < 6:
            # Fewer than 3 points: pycocotools would misread it (4 numbers as a bbox) or draw a
            # line; it is dropped and the annotation flagged.
            if FLAG_RING_DROPPED not in flags:
                flags.append(FLAG_RING_DROPPED)
            continue
        kept.append(ring)
    if not kept:
        raise RecordError(Reason.DEGENERATE_POLYGON, "no polygon ring with 3 or more points")
    return kept, flags


def decode_rle_counts(counts: str) -> list[int]:
    """Decodes COCO's compressed RLE string in Python (the inverse of ``rleToString``).

    Raises ``RecordError(invalid_rle)`` for characters outside COCO's alphabet or a truncated
    value, where the C decoder would read past the end of the string.
    """
    values: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        x, k, more = 0, 0, True
        while more:
            if pos >= n:
                raise RecordError(Reason.INVALID_RLE, "compressed RLE ends inside a value")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise RecordError(Reason.INVALID_RLE, "compressed RLE has a character out of range")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            pos += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(values) > 2:
            x += values[-2]
        values.append(x)
    return values


def _check_rle(seg: dict, height: int, width: int) -> None:
    size = seg.get("size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise RecordError(Reason.INVALID_RLE, "RLE 'size' must be [height, width]")
    if size != [height, width]:
        raise RecordError(
            Reason.INVALID_RLE, f"RLE size {size} is not the image's {[height, width]}"
        )
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise RecordError(Reason.INVALID_RLE, "RLE counts must be integers")
    elif isinstance(counts, str):
        counts = decode_rle_counts(counts)
    else:
        raise RecordError(Reason.INVALID_RLE, "RLE 'counts' must be a list or a string")
    if any(v < 0 for v in counts):
        raise RecordError(Reason.INVALID_RLE, "RLE has a negative run")
    if sum(counts) != height * width:
        raise RecordError(
            Reason.INVALID_RLE, f"RLE runs sum to {sum(counts)}, not {height}*{width}"
        )


def to_rle(segmentation, height: int, width: int) -> tuple[dict, list[str]]:
    """Returns ``({"size": [h, w], "counts": str}, flags)`` for a COCO segmentation.

    Polygons (any number of rings) are rasterized and merged, uncompressed RLE (crowds) is
    compressed, compressed RLE is validated and kept as it is, exactly as ``annToRLE`` does.
    """
    flags: list[str] = []
    if isinstance(segmentation, list):
        rings, flags = _check_polygons(segmentation)
        rle = mask_utils.merge(mask_utils.frPyObjects(rings, height, width))
    elif isinstance(segmentation, dict):
        _check_rle(segmentation, height, width)
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": segmentation["size"], "counts": segmentation["counts"]}
    else:
        raise RecordError(Reason.SCHEMA_VIOLATION, "'segmentation' must be a list or an RLE dict")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}, flags


def _bbox_flags(bbox: list[float], width: int, height: int) -> list[str]:
    x, y, w, h = bbox
    flags = []
    if w == 0 or h == 0:
        flags.append(FLAG_BBOX_ZERO)
    if (
        x < -_EDGE_SLACK
        or y < -_EDGE_SLACK
        or x + w > width + _EDGE_SLACK
        or (y + h > height + _EDGE_SLACK)
    ):
        flags.append(FLAG_BBOX_OUTSIDE)
    return flags


def _unpacked(segmentation):
    """The segmentation as the JSON had it (``pack_polygons`` undone), for payload digests."""
    if isinstance(segmentation, list):
        return [list(r) if isinstance(r, array) else r for r in segmentation]
    return segmentation


def polygon_rings(plan: ImagePlan) -> dict:
    """Annotation id -> the rings of each pending polygon segmentation of ``plan`` (the same
    ring objects, packed or not): what rasterizing is about to drop."""
    return {
        ann["id"]: list(ann["segmentation"])
        for ann in plan.annotations
        if isinstance(ann.get("segmentation"), list)
    }


def pending_masks(plan: ImagePlan) -> bool:
    """Whether any annotation of ``plan`` still holds its raw ``segmentation``."""
    return any("segmentation" in ann for ann in plan.annotations)


def rasterize_plan(plan: ImagePlan) -> tuple[ImagePlan, list[Rejection]]:
    """Replaces each annotation's ``segmentation`` by ``rle``; rejects what cannot be rasterized.
    An annotation rasterized already (``rle``, no ``segmentation``) is kept as it is, so a plan
    may go through here twice."""
    kept, rejections = [], []
    for ann in plan.annotations:
        if "segmentation" not in ann:
            kept.append(ann)
            continue
        seg = ann.pop("segmentation")
        try:
            rle, flags = to_rle(seg, plan.height, plan.width)
        except RecordError as exc:
            digest = hashlib.sha256(json.dumps(_unpacked(seg), default=str).encode()).hexdigest()
            rejections.append(
                Rejection(
                    kind="annotation",
                    key=str(ann["id"]),
                    reason=exc.reason,
                    error_type=type(exc).__name__,
                    message=str(exc)[:200],
                    source=plan.source,
                    split=plan.split,
                    payload_sha256=digest,
                )
            )
            continue
        ann["rle"] = rle
        if ann["area"] is None:
            ann["area"] = float(mask_utils.area({"size": rle["size"], "counts": rle["counts"]}))
            flags = [*flags, FLAG_AREA_FROM_MASK]
        if ann["iscrowd"] != isinstance(seg, dict):
            flags = [*flags, FLAG_CROWD_MISMATCH]
        keypoints = ann.get("keypoints")
        if keypoints is not None and ann["num_keypoints"] != sum(
            1 for v in keypoints[2::3] if v > 0
        ):
            flags = [*flags, FLAG_NUM_KEYPOINTS_MISMATCH]
        ann["flags"] = (
            ann.get("flags", []) + flags + _bbox_flags(ann["bbox"], plan.width, plan.height)
        )
        kept.append(ann)
    plan.annotations = kept
    return plan, rejections


def rasterize_annotations(plan: ImagePlan) -> tuple[list, list[Rejection]]:
    """``rasterize_plan``, giving back only what it changes: the plan's annotations and the
    rejected ones (what a decoder child hands back, rather than the whole plan)."""
    plan, rejections = rasterize_plan(plan)
    return plan.annotations, rejections
