"""``RasterizeMasks``: every instance's segmentation becomes one compressed RLE.

Runs on batches of ``ImagePlan``s (no image bytes: the mask needs only the JSON's size), so it
spreads over all workers before the shard shuffle and the shard writers do no mask work.
"""

from __future__ import annotations

import hashlib
import json
from array import array

import apache_beam as beam
from apache_beam.metrics import Metrics
from pycocotools import mask as mask_utils

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import REJECTED, ImagePlan, PlanBatch, Rejection
from coco_beam.transforms.images.masks import to_rle

__all__ = [
    "FLAG_AREA_FROM_MASK",
    "FLAG_BBOX_OUTSIDE",
    "FLAG_BBOX_ZERO",
    "FLAG_CROWD_MISMATCH",
    "FLAG_NUM_KEYPOINTS_MISMATCH",
    "RasterizeMasks",
    "rasterize_plan",
]

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


def rasterize_plan(plan: ImagePlan) -> tuple[ImagePlan, list[Rejection]]:
    """Replaces each annotation's ``segmentation`` by ``rle``; rejects what cannot be rasterized."""
    kept, rejections = [], []
    for ann in plan.annotations:
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


class _RasterizeFn(beam.DoFn):
    """Metrics (namespace ``coco_beam``): ``masks_rasterized``, ``masks_rejected``."""

    def setup(self):
        self._rasterized = Metrics.counter("coco_beam", "masks_rasterized")
        self._rejected = Metrics.counter("coco_beam", "masks_rejected")

    def process(self, batch: PlanBatch):
        for plan in batch.plans:
            plan, rejections = rasterize_plan(plan)
            self._rasterized.inc(len(plan.annotations))
            self._rejected.inc(len(rejections))
            for rejection in rejections:
                yield beam.pvalue.TaggedOutput(REJECTED, rejection)
        yield batch


class RasterizeMasks(beam.PTransform):
    """Takes ``PlanBatch``es with raw segmentations; returns them with annotations that carry
    ``rle`` (COCO compressed RLE equal to ``annToMask``) and flags, plus ``rejected``
    annotations (degenerate or odd polygons, broken RLE) with their reason."""

    def expand(self, plans):
        return plans | "PolygonsToRle" >> beam.ParDo(_RasterizeFn()).with_outputs(
            REJECTED, main="plans"
        )
