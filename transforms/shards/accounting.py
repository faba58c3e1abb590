"""A shard's accounting: what it wrote, the statistics of its images, its content hashes, the
records that go with a rejected image, and its state rows for the next incremental rebuild.

Pure, apart from ``write_state`` (one file through Beam's filesystems). Guarantees: every image
written is counted once with its annotations, captions and panoptic record, so the publishing
step can check that ``read == written + rejected`` for every kind; a rejected image's
annotations, captions and panoptic record are rejected with it (``image_rejected``); an image
reused from the previous run is counted from its state row exactly as decoding it counts it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import types

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import ImagePlan, Reason, Rejection
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.panoptic import PanopticFacts
from coco_beam.transforms.runs.incremental import state_bytes
from coco_beam.transforms.shards.load import Loaded
from coco_beam.transforms.stats.examples import ExamplePicker
from coco_beam.transforms.stats.gather import add_image, add_pixel_sums, new_accumulator

__all__ = [
    "ShardTally",
    "WrittenImage",
    "dependents",
    "state_row",
    "write_state",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WrittenImage:
    """What the tally needs of one image written: its decode facts, its size in bytes, its
    exact pixel sums ``(n, sums, squares)`` (None when statistics are off) and its checked
    panoptic record (``PanopticFacts``, or the statistics' view of it kept in the state)."""

    facts: ImageFacts
    num_bytes: int
    pixels: tuple | None
    panoptic: object = None

    @classmethod
    def from_loaded(cls, loaded: Loaded, panoptic: PanopticFacts | None) -> WrittenImage:
        return cls(
            facts=loaded.facts,
            num_bytes=len(loaded.data),
            pixels=loaded.pixels,
            panoptic=panoptic,
        )

    @classmethod
    def from_state(cls, plan: ImagePlan, row: dict) -> WrittenImage:
        """An image of the previous run's shard, as its state row keeps it (flags as written)."""
        facts = ImageFacts(
            sha256=row["sha256"],
            format=row["format"],
            mode=row["mode"],
            width=row["decoded_width"],
            height=row["decoded_height"],
            exif_orientation=row["exif_orientation"],
            flags=tuple(row["flags"]),
            phash=row["phash"],
        )
        panoptic = None
        if plan.panoptic is not None:
            panoptic = _panoptic_from_state(row["panoptic_stats"])
        return cls(
            facts=facts,
            num_bytes=row["num_bytes"],
            pixels=(row["px_n"], row["px_sum"], row["px_sq"]),
            panoptic=panoptic,
        )


class ShardTally:
    """A shard's counts, statistics accumulator and content hashes, image by image."""

    def __init__(self, split: str, statistics: bool, phashes: bool = True):
        self.split, self.statistics = split, statistics
        self.keeps_phashes = statistics and phashes
        # kind -> records written (image, annotation, caption, panoptic)
        self.written = collections.Counter()
        # rows in the shard's files
        self.num_rows = 0
        # the statistics accumulator (``transforms.stats.gather``)
        self.stats = new_accumulator()
        # sha256[:2] -> [(sha256, split, image_id), ...], to find identical images
        self.digests: dict[str, list] = {}
        # [(split, image_id, perceptual hash, path), ...], to find near-duplicate images (none
        # when ``phashes`` is off)
        self.phashes: list[tuple] = []
        # which images could be the report's examples, and their thumbnails (``stats.examples``)
        self.examples = ExamplePicker(self.stats.examples)

    def add(self, plan: ImagePlan, image: WrittenImage) -> None:
        self.num_rows += 1
        self.written["image"] += 1
        self.written["annotation"] += len(plan.annotations)
        self.written["caption"] += len(plan.captions)
        self.written["panoptic"] += image.panoptic is not None
        if not self.statistics:
            return
        facts = image.facts
        add_image(
            self.stats,
            width=plan.width,
            height=plan.height,
            fmt=facts.format,
            mode=facts.mode,
            exif_orientation=facts.exif_orientation,
            num_bytes=image.num_bytes,
            annotations=plan.annotations,
            captions=plan.captions,
            panoptic=image.panoptic,
            flags=sorted(set(plan.flags) | set(facts.flags)),
        )
        add_pixel_sums(self.stats, *image.pixels)
        self.examples.add(plan, facts)
        self.digests.setdefault(facts.sha256[:2], []).append(
            (facts.sha256, self.split, plan.image_id)
        )
        if self.keeps_phashes:
            self.phashes.append((self.split, plan.image_id, facts.phash, plan.path))


def dependents(plan: ImagePlan) -> list[Rejection]:
    """The records that go with a rejected image: its panoptic record, then its annotations
    and captions, each ``image_rejected``."""
    message = f"image {plan.image_id} was rejected"
    panoptic = []
    if plan.panoptic is not None:
        panoptic.append(
            Rejection(
                kind="panoptic",
                key=str(plan.image_id),
                reason=Reason.IMAGE_REJECTED,
                error_type="RecordError",
                message=message,
                source=plan.panoptic["source"],
                split=plan.split,
            )
        )
    return panoptic + [
        Rejection(
            kind=kind,
            key=str(rec["id"]),
            reason=Reason.IMAGE_REJECTED,
            error_type="RecordError",
            message=message,
            source=plan.source,
            split=plan.split,
        )
        for kind, records in (("annotation", plan.annotations), ("caption", plan.captions))
        for rec in records
    ]


def state_row(
    plan: ImagePlan,
    *,
    record_fp: str,
    loaded: Loaded | None = None,
    panoptic: PanopticFacts | None = None,
) -> dict:
    """The state row (``schemas.state``) of one image: ``loaded`` None for a rejected one."""
    row = {
        "image_id": plan.image_id,
        "written": loaded is not None,
        "record_fp": record_fp,
        "width": plan.width,
        "height": plan.height,
    }
    if loaded is None:
        return row
    facts = loaded.facts
    row.update(
        image_fp=loaded.image_fp,
        panoptic_fp=loaded.panoptic_fp,
        decoded_width=facts.width,
        decoded_height=facts.height,
        sha256=facts.sha256,
        format=facts.format,
        mode=facts.mode,
        exif_orientation=facts.exif_orientation,
        flags=list(facts.flags),
        num_bytes=len(loaded.data),
        panoptic_stats=_panoptic_stats(panoptic) if panoptic is not None else None,
    )
    if loaded.pixels is not None:
        row.update(px_n=loaded.pixels[0], px_sum=loaded.pixels[1], px_sq=loaded.pixels[2])
        row.update(phash=facts.phash)
    return row


def write_state(path: str, rows: list[dict]) -> None:
    """Writes a shard's state rows as one file."""
    with FileSystems.create(
        path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(state_bytes(rows))


def _panoptic_stats(panoptic: PanopticFacts) -> str:
    """The statistics' view of an accepted panoptic record, as the state keeps it."""
    segments = [[s["category_id"], bool(s["isthing"]), s["area"]] for s in panoptic.segments]
    return json.dumps({"void": panoptic.void_pixels, "segments": segments})


def _panoptic_from_state(text: str) -> types.SimpleNamespace:
    doc = json.loads(text)
    segments = [{"category_id": c, "isthing": t, "area": a} for c, t, a in doc["segments"]]
    return types.SimpleNamespace(void_pixels=doc["void"], segments=segments)
