"""``JoinAnnotationsToImages``: every annotation family joined to its image, over a pure core.

Guarantees of ``join_image`` (one image key's records from every family):
  * one ``ImagePlan`` per valid image, or none; every record it saw is either in the plan or in
    the returned rejections, so counts are conserved;
  * instance and keypoint records with the same annotation id merge into one instance (COCO's
    ``person_keypoints`` files repeat the person instances with keypoints added);
  * duplicates are rejected, all copies, never last-wins: an image id listed twice in its split's
    images list, an annotation id listed twice in one family (here or, through
    ``duplicate_ids``, on another image);
  * an annotation or caption without an image is ``orphan_annotation``; an unknown category is
    ``unknown_category``; a keypoint array of the wrong length for its category is
    ``invalid_keypoints``; a ``file_name`` that could leave the images root is ``unsafe_path``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.typehints import Iterable as IterableOf
from apache_beam.typehints import Tuple, Union

from coco_beam.schemas.records import (
    COUNTS,
    REJECTED,
    TAG_ANNOTATION,
    TAG_CAPTION,
    TAG_IMAGE,
    TAG_PANOPTIC,
    ImagePlan,
    PlanBatch,
    Reason,
    Rejection,
)
from coco_beam.transforms.annotations.checks import safe_relative_path
from coco_beam.transforms.runtime.packing import relax_gc, unpack
from coco_beam.transforms.runtime.progress import ProgressReporter

__all__ = ["JoinAnnotationsToImages", "join_image"]


# Records are tagged with their kind, the kinds conservation is counted for.


def _reject(*, kind, key, reason, message, source, split) -> Rejection:
    return Rejection(
        kind=kind,
        key=str(key),
        reason=reason,
        error_type="RecordError",
        message=message,
        source=source,
        split=split,
    )


def _merge_instances(records: list, split: str, dup_ids: frozenset, rejections: list) -> list:
    """Groups annotation records by id, merges families, rejects duplicates (all copies)."""
    by_id: dict[int, list] = collections.defaultdict(list)
    for family, source, ann in records:
        by_id[ann["id"]].append((family, source, ann))
    merged = []
    for ann_id in sorted(by_id):
        copies = by_id[ann_id]
        families = [family for family, _, _ in copies]
        if ann_id in dup_ids or len(set(families)) != len(families):
            for _, source, _ in copies:
                rejections.append(
                    _reject(
                        kind=TAG_ANNOTATION,
                        key=ann_id,
                        reason=Reason.DUPLICATE_ANNOTATION_ID,
                        message="annotation id listed more than once",
                        source=source,
                        split=split,
                    )
                )
            continue
        by_family = {family: (source, ann) for family, source, ann in copies}
        source, ann = by_family.get("instances") or by_family["person_keypoints"]
        if "segmentation" not in ann:  # keypoints read without geometry, and no instance
            rejections.append(
                _reject(
                    kind=TAG_ANNOTATION,
                    key=ann_id,
                    reason=Reason.SCHEMA_VIOLATION,
                    message="keypoints of an instance the instances file does not have",
                    source=source,
                    split=split,
                )
            )
            continue
        ann = dict(ann)
        if "person_keypoints" in by_family:
            kp = by_family["person_keypoints"][1]
            ann["keypoints"], ann["num_keypoints"] = kp["keypoints"], kp["num_keypoints"]
        merged.append((source, ann))
    return merged


def join_image(
    split: str,
    image_id: int,
    values: Iterable[tuple],
    categories: dict,
    images_dir: str,
    duplicate_ids: frozenset = frozenset(),
) -> tuple[ImagePlan | None, list[Rejection], collections.Counter]:
    """Joins one image's records. ``values`` are ``(tag, family, source, record)`` tuples.

    Images come from one file per split (see ``ReadCocoAnnotations``), so two image records
    are a duplicate id. Returns ``(plan or None, rejections, read)`` where ``read`` counts the
    records seen per kind (an instance and its keypoints record are one annotation).
    """
    images, annotations, captions, panoptic = [], [], [], []
    lists = {
        TAG_IMAGE: images,
        TAG_ANNOTATION: annotations,
        TAG_CAPTION: captions,
        TAG_PANOPTIC: panoptic,
    }
    for tag, family, source, record in values:
        lists[tag].append((family, source, record))
    rejections: list[Rejection] = []
    read = collections.Counter()
    merged = _merge_instances(annotations, split, duplicate_ids, rejections)
    read[TAG_ANNOTATION] = len(merged) + len(rejections)
    cap_ids = collections.Counter(cap["id"] for _, _, cap in captions)
    read[TAG_CAPTION] = len(captions)
    if panoptic:
        read[TAG_PANOPTIC] = len(panoptic)

    def reject_all(reason: str, message: str) -> None:
        for source, ann in merged:
            rejections.append(
                _reject(
                    kind=TAG_ANNOTATION,
                    key=ann["id"],
                    reason=reason,
                    message=message,
                    source=source,
                    split=split,
                )
            )
        for _, source, cap in captions:
            rejections.append(
                _reject(
                    kind=TAG_CAPTION,
                    key=cap["id"],
                    reason=reason,
                    message=message,
                    source=source,
                    split=split,
                )
            )
        for _, source, _ in panoptic:
            rejections.append(
                _reject(
                    kind=TAG_PANOPTIC,
                    key=image_id,
                    reason=reason,
                    message=message,
                    source=source,
                    split=split,
                )
            )

    if not images:
        reject_all(Reason.ORPHAN_ANNOTATION, f"image {image_id} is in no images list")
        return None, rejections, read
    read[TAG_IMAGE] = 1
    source = images[0][1]
    if len(images) > 1:
        rejections.append(
            _reject(
                kind=TAG_IMAGE,
                key=image_id,
                reason=Reason.DUPLICATE_IMAGE_ID,
                message="image id listed more than once",
                source=source,
                split=split,
            )
        )
        reject_all(Reason.IMAGE_REJECTED, f"image {image_id} was rejected")
        return None, rejections, read
    first = images[0][2]
    if not safe_relative_path(first["file_name"]):
        rejections.append(
            _reject(
                kind=TAG_IMAGE,
                key=image_id,
                reason=Reason.UNSAFE_PATH,
                message="file_name is not a plain relative path",
                source=source,
                split=split,
            )
        )
        reject_all(Reason.IMAGE_REJECTED, f"image {image_id} was rejected")
        return None, rejections, read

    kept = []
    for ann_source, ann in merged:
        category = categories.get(ann["category_id"])
        if category is None:
            rejections.append(
                _reject(
                    kind=TAG_ANNOTATION,
                    key=ann["id"],
                    reason=Reason.UNKNOWN_CATEGORY,
                    message=f"category {ann['category_id']} is not defined",
                    source=ann_source,
                    split=split,
                )
            )
            continue
        names = category.get("keypoints")
        if ann["keypoints"] is not None and names and len(ann["keypoints"]) != 3 * len(names):
            rejections.append(
                _reject(
                    kind=TAG_ANNOTATION,
                    key=ann["id"],
                    reason=Reason.INVALID_KEYPOINTS,
                    message=(
                        f"{len(ann['keypoints'])} keypoint values for {len(names)} named joints"
                    ),
                    source=ann_source,
                    split=split,
                )
            )
            continue
        ann.pop("image_id", None)
        ann["flags"] = []
        kept.append(ann)
    kept_captions = []
    for _, cap_source, cap in sorted(captions, key=lambda c: c[2]["id"]):
        if cap_ids[cap["id"]] > 1:
            rejections.append(
                _reject(
                    kind=TAG_CAPTION,
                    key=cap["id"],
                    reason=Reason.DUPLICATE_ANNOTATION_ID,
                    message="caption id listed more than once",
                    source=cap_source,
                    split=split,
                )
            )
            continue
        kept_captions.append({"id": cap["id"], "caption": cap["caption"]})
    plan_panoptic = None
    if len(panoptic) > 1:
        for _, pan_source, _ in panoptic:
            rejections.append(
                _reject(
                    kind=TAG_PANOPTIC,
                    key=image_id,
                    reason=Reason.DUPLICATE_PANOPTIC_ANNOTATION,
                    message="two panoptic records for one image",
                    source=pan_source,
                    split=split,
                )
            )
    elif panoptic:
        _, pan_source, record = panoptic[0]
        unknown = sorted({s["category_id"] for s in record["segments"]} - set(categories), key=int)
        if unknown:
            rejections.append(
                _reject(
                    kind=TAG_PANOPTIC,
                    key=image_id,
                    reason=Reason.UNKNOWN_CATEGORY,
                    message=f"segment categories {unknown[:5]} are not defined",
                    source=pan_source,
                    split=split,
                )
            )
        else:
            plan_panoptic = {
                "file_name": record["file_name"],
                "path": record["path"],
                "source": pan_source,
                "segments": [
                    dict(s, isthing=bool(categories[s["category_id"]].get("isthing")))
                    for s in record["segments"]
                ],
            }
    plan = ImagePlan(
        split=split,
        image_id=image_id,
        file_name=first["file_name"],
        width=first["width"],
        height=first["height"],
        # A checked relative path with "/" separators: the same join on every filesystem.
        path=images_dir.rstrip("/") + "/" + first["file_name"],
        source=source,
        annotations=kept,
        captions=kept_captions,
        flags=[],
        panoptic=plan_panoptic,
    )
    return plan, rejections, read


_Count = Tuple[Tuple[str, str], int]  # ((counter, key), n)


@beam.typehints.with_input_types(
    Tuple[Tuple[str, int], IterableOf[bytes]], categories=dict, duplicate_ids=dict
)
# Beam's --runtime_type_check holds every output, tagged ones too, to the main output's type:
# that type is the union of all, and ``JoinAnnotationsToImages`` gives the main output its own.
@beam.typehints.with_output_types(
    Union[PlanBatch, Rejection, _Count], **{REJECTED: Rejection, COUNTS: _Count}
)
class _JoinBucketFn(beam.DoFn):
    """Joins every image of one join bucket; emits one ``PlanBatch`` (plans in id order), the
    rejections, and the bucket's read counts."""

    def __init__(self, images_dirs: dict, progress_dir: str | None):
        self._images_dirs = images_dirs
        self._progress_dir = progress_dir

    def setup(self):
        relax_gc()
        self._progress = ProgressReporter(self._progress_dir, "known")

    def process(self, element, categories, duplicate_ids):
        (split, bucket), batches = element
        by_image: dict[int, list] = collections.defaultdict(list)
        for packed in batches:
            for image_id, value in unpack(packed):
                by_image[image_id].append(value)
        cats = categories.get(split, {})
        dups = duplicate_ids.get(split, frozenset())
        images_dir = self._images_dirs[split]
        plans, read = [], collections.Counter()
        for image_id in sorted(by_image):
            plan, rejections, counts = join_image(
                split, image_id, by_image.pop(image_id), cats, images_dir, dups
            )
            read.update(counts)
            for rejection in rejections:
                yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            if plan is not None:
                plans.append(plan)
        for kind, n in sorted(read.items()):
            if n:
                yield beam.pvalue.TaggedOutput(COUNTS, (("read", kind), n))
        self._progress.add(len(plans))
        yield PlanBatch(split, bucket, plans)

    def finish_bundle(self):
        self._progress.flush()


def _duplicate_ids(kv):
    """``(split, ids listed more than once in one family)``."""
    (split, _), arrays = kv
    ids, counts = np.unique(np.concatenate(list(arrays)), return_counts=True)
    return split, frozenset(int(i) for i in ids[counts > 1])


def _union(kv):
    split, sets = kv
    return split, frozenset().union(*sets)


class JoinAnnotationsToImages(beam.PTransform):
    """Joins image, annotation and caption records into one ``ImagePlan`` per image.

    Takes the ``records``, ``categories`` and ``annotation_ids`` of ``ReadCocoAnnotations``.
    Returns a ``DoOutputsTuple`` with ``plans`` (one ``PlanBatch`` per join bucket), ``rejected``
    (``Rejection``) and ``counts`` (``(("read", kind), n)``). One shuffle, of record batches
    grouped by bucket; no image bytes: none exist yet.
    """

    def __init__(self, images_dirs: dict, progress_dir: str | None = None):
        super().__init__()
        self._images_dirs = dict(images_dirs)
        self._progress_dir = progress_dir

    def expand(self, inputs):
        duplicates = (
            inputs["annotation_ids"]
            | "GroupIds" >> beam.GroupByKey()
            | "FindDuplicateIds" >> beam.Map(_duplicate_ids)
            | "GroupSplits" >> beam.GroupByKey()
            | "UnionPerSplit" >> beam.Map(_union)
        )
        joined = (
            inputs["records"]
            | "GroupByBucket" >> beam.GroupByKey()
            | "Join"
            >> beam.ParDo(
                _JoinBucketFn(self._images_dirs, self._progress_dir),
                categories=beam.pvalue.AsDict(inputs["categories"]),
                duplicate_ids=beam.pvalue.AsDict(duplicates),
            ).with_outputs(REJECTED, COUNTS, main="plans")
        )
        joined.plans.element_type = PlanBatch
        return joined
