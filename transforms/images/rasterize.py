"""``RasterizeMasks``: every instance's segmentation becomes one compressed RLE.

Runs on batches of ``ImagePlan``s (no image bytes: the mask needs only the JSON's size). The
build does not use it: there the shard writer rasterizes each image's masks in its decoder
children, in the same call as the image's decode, on every core and after the shuffle
(``shards.load``). It stays for pipelines that want rasterized plans on their own; the writer
takes those as they are (``masks.rasterize_plan`` leaves a rasterized annotation alone). The
pure core is ``images.masks``.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import Union

from coco_beam.schemas.records import REJECTED, PlanBatch, Rejection
from coco_beam.transforms.images.masks import (
    FLAG_AREA_FROM_MASK,
    FLAG_BBOX_OUTSIDE,
    FLAG_BBOX_ZERO,
    FLAG_CROWD_MISMATCH,
    FLAG_NUM_KEYPOINTS_MISMATCH,
    rasterize_plan,
)

__all__ = [
    "FLAG_AREA_FROM_MASK",  # re-exported from ``images.masks``, as the flags below
    "FLAG_BBOX_OUTSIDE",
    "FLAG_BBOX_ZERO",
    "FLAG_CROWD_MISMATCH",
    "FLAG_NUM_KEYPOINTS_MISMATCH",
    "RasterizeMasks",
    "rasterize_plan",  # re-exported: the pure core, one plan at a time
]


@beam.typehints.with_input_types(PlanBatch)
# Beam's --runtime_type_check holds every output, tagged ones too, to the main output's type:
# that type is the union of both, and ``RasterizeMasks`` gives the main output its own.
@beam.typehints.with_output_types(Union[PlanBatch, Rejection], **{REJECTED: Rejection})
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
        rasterized = plans | "PolygonsToRle" >> beam.ParDo(_RasterizeFn()).with_outputs(
            REJECTED, main="plans"
        )
        rasterized.plans.element_type = PlanBatch
        return rasterized
