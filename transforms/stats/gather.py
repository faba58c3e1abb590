"""Gathering the writer's statistics: per-shard accumulators merged per split, and duplicates.

The shard writer adds each image it writes to its shard's ``StatsAccumulator``
(``new_accumulator``, ``add_image``, ``add_pixel_sums``, from ``accumulators``) in the fused
stage that decodes it, so no image is read twice. ``GatherStatistics`` merges those per split
with one fused CombineFn (``MergeStats``: every statistic family in one accumulator), and finds
the images with identical bytes from their content hashes. The document itself is
``summary.stats_document``'s.

Guarantees: the merged accumulator does not depend on bundling, workers or merge order (exact
integer counts); its size is bounded by bins and categories, never by the number of images; no
step holds every content hash (they are grouped by hash prefix).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import apache_beam as beam

from coco_beam.transforms.runtime.packing import unpack
from coco_beam.transforms.stats.accumulators import (
    StatsAccumulator,
    add_image,
    add_pixel_sums,
    add_pixels,
    merge,
    new_accumulator,
)
from coco_beam.transforms.stats.examples import Preselection
from coco_beam.transforms.stats.summary import stats_document, summarize

__all__ = [
    "GatherStatistics",
    "MergeStats",
    "PreselectExamples",
    "StatsAccumulator",
    "add_image",
    "add_pixel_sums",
    "add_pixels",
    "find_duplicates",
    "merge",
    "new_accumulator",
    "stats_document",
    "summarize",
]


def _merged_into_first(accumulators: Iterable):
    """The first accumulator with every other merged into it (``merge``, in place): a
    CombineFn's ``merge_accumulators`` may mutate its first accumulator only."""
    accumulators = iter(accumulators)
    merged = next(accumulators)
    for acc in accumulators:
        merged.merge(acc)
    return merged


@beam.typehints.with_input_types(StatsAccumulator)
@beam.typehints.with_output_types(StatsAccumulator)
class MergeStats(beam.CombineFn):
    """Merges per-shard accumulators of one key (a split) into one: every statistic family at
    once, so the data is read once. The accumulator is the same size whether it holds one
    image or a million; ``merge_accumulators`` mutates only the first accumulator."""

    def create_accumulator(self) -> StatsAccumulator:
        return StatsAccumulator()

    def add_input(self, accumulator: StatsAccumulator, partial: StatsAccumulator):
        accumulator.merge(partial)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[StatsAccumulator]) -> StatsAccumulator:
        return _merged_into_first(accumulators)

    def extract_output(self, accumulator: StatsAccumulator) -> StatsAccumulator:
        return accumulator


class _PreselectFn(beam.CombineFn):
    """``Preselection`` of every plan: a bounded bottom-k per category, merged in place."""

    def create_accumulator(self) -> Preselection:
        return Preselection()

    def add_input(self, accumulator: Preselection, batch) -> Preselection:
        accumulator.add_plans(batch.plans)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Preselection]) -> Preselection:
        return _merged_into_first(accumulators)

    def extract_output(self, accumulator: Preselection) -> dict:
        return accumulator.chosen()


class PreselectExamples(beam.PTransform):
    """Takes the joined ``PlanBatch``es; returns one dict (``Preselection.chosen``): per
    category the few images and instances that can be among the report's examples, chosen from
    ids and areas before any image is read, so the shard writers make thumbnails for those
    only (``examples.ExamplePicker.preselect``). Its size is bounded by the categories."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "KeepBottomK" >> beam.CombineGlobally(_PreselectFn())


def find_duplicates(kv: tuple[str, Iterable[bytes]]) -> list[dict]:
    """From ``(sha256 prefix, [packed [(sha256, split, image_id), ...], ...])``: one entry per
    content hash held by more than one image, with every image that holds it."""
    _, packed = kv
    by_hash: dict[str, list] = collections.defaultdict(list)
    for blob in packed:
        for sha, split, image_id in unpack(blob):
            by_hash[sha].append([split, image_id])
    return [
        {"sha256": sha, "images": sorted(images)}
        for sha, images in sorted(by_hash.items())
        if len(images) > 1
    ]


class GatherStatistics(beam.PTransform):
    """Takes the writer's ``stats`` (``(split, StatsAccumulator)``, one per shard) and
    ``digests`` (``(sha256 prefix, packed [(sha256, split, image_id), ...])``) outputs; returns
    ``stats`` (``(split, StatsAccumulator)``, one per split, merged by ``MergeStats``) and
    ``duplicates`` (one dict per content hash shared by several images, grouped by hash
    prefix: no step sees every hash). Nothing is rejected here: the writer checked the
    records it counted."""

    def expand(
        self, inputs: tuple[beam.PCollection, beam.PCollection]
    ) -> dict[str, beam.PCollection]:
        stats, digests = inputs
        return {
            "stats": stats | "MergePerSplit" >> beam.CombinePerKey(MergeStats()),
            "duplicates": (
                digests
                | "GroupByHashPrefix" >> beam.GroupByKey()
                | "FindDuplicates" >> beam.FlatMap(find_duplicates)
            ),
        }
