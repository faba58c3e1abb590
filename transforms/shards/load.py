"""Loading one image for the shard writer: read its bytes, check and decode them (in the
isolated decoder children when asked), read its panoptic PNG, or take its facts from the
previous run's state when its bytes did not change.

Guarantees: a permanent fault of an image (no file, bytes that do not decode, a decoder crash)
comes back as a ``Rejection`` with its reason, as does a fault of its panoptic record (in
``Loaded.panoptic``); a transient storage error is raised, so the runner retries the bundle.
Facts taken from the previous run's state are those decoding would find: they are reused only
for bytes with the same CRC32C and a record of the same size.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import ImagePlan, Reason, Rejection
from coco_beam.transforms.images.decode import ImageFacts, inspect_image, is_not_found
from coco_beam.transforms.images.masks import (
    pending_masks,
    polygon_rings,
    rasterize_annotations,
    rasterize_plan,
)
from coco_beam.transforms.images.panoptic import PanopticFacts, inspect_panoptic
from coco_beam.transforms.images.thumbnails import thumbnails_of
from coco_beam.transforms.runs.incremental import crc32c_hex, record_fingerprint, stored_crc32c
from coco_beam.transforms.runtime.isolation import Isolated, NativeCrash

__all__ = [
    "FLAG_EXTENSION_MISMATCH",
    "ImageLoader",
    "Loaded",
    "Prepared",
    "expected_format",
    "in_order",
    "known_facts",
    "load_image",
    "probe",
]

# A file whose name says another format than its bytes (a PNG named .jpg) is written as it is,
# with this flag; the format written is the bytes'.
FLAG_EXTENSION_MISMATCH = "extension_mismatch"
_EXTENSIONS = {"jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "png": "png"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loaded:
    """One image read (and decoded unless its facts were known): its bytes, what decoding
    found, its panoptic record's facts (or rejection), and the CRC32C of the image and PNG."""

    data: bytes
    facts: ImageFacts
    panoptic: PanopticFacts | Rejection | None
    image_fp: str
    panoptic_fp: str | None
    # Exact pixel sums ``(n, sums, squares)``; None when statistics are off.
    pixels: tuple | None
    reused: bool = False


def load_image(
    plan: ImagePlan,
    max_pixels: int,
    *,
    filesystem=None,
    histogram: bool = True,
    phash: bool = True,
    known: dict | None = None,
    isolated: Isolated | None = None,
    thumbnail=None,
) -> Loaded | Rejection:
    """Reads and decodes one image, and its panoptic PNG if it has one. Permanent faults come
    back as a ``Rejection`` (the image's, or the panoptic record's in ``Loaded.panoptic``);
    transient storage errors are raised. ``filesystem``: the Beam filesystem of
    ``plan.path``, if the caller holds one (finding it costs more than reading a small local
    file). ``histogram`` and ``phash``: as ``inspect_image``'s. ``known``: the previous run's
    state row of this image; when its bytes' CRC32C and the JSON's size are the same (and it
    holds the pixel sums and hash asked for), its facts are taken from there and the image is
    not decoded again. ``isolated``: decode in its child processes, where a crash of the decoder
    rejects the image (``decoder_crash``) instead of killing the worker. ``thumbnail``: an
    ``images.thumbnails.ThumbnailRequest``, made from the decode (from the bytes alone when
    the facts are known) into ``facts.thumbnails``."""
    try:
        fs = filesystem or FileSystems.get_filesystem(plan.path)
        with fs.open(plan.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    except Exception as exc:
        if not is_not_found(exc):
            raise
        return Rejection(
            kind="image",
            key=str(plan.image_id),
            reason=Reason.IMAGE_MISSING,
            error_type=type(exc).__name__,
            message=f"no file {plan.file_name!r} under the images folder",
            source=plan.source,
            split=plan.split,
        )
    image_fp = crc32c_hex(data)
    if _facts_known(known, plan, image_fp, histogram, histogram and phash):
        pixels = (known["px_n"], known["px_sum"], known["px_sq"]) if histogram else None
        panoptic, panoptic_fp = _load_panoptic(plan, isolated)
        facts = _flag_extension(plan, known_facts(known))
        if thumbnail is not None:
            try:
                thumbs = _call(isolated, thumbnails_of, data, thumbnail)
            except RecordError:
                thumbs = None  # a crash making a thumbnail: the image just shows in no example
            facts = dataclasses.replace(facts, thumbnails=thumbs)
        return Loaded(
            data=data,
            facts=facts,
            panoptic=panoptic,
            image_fp=image_fp,
            panoptic_fp=panoptic_fp,
            pixels=pixels,
            reused=True,
        )
    try:
        facts = _call(
            isolated,
            inspect_image,
            data,
            plan.width,
            plan.height,
            max_pixels=max_pixels,
            histogram=histogram,
            thumbnail=thumbnail,
            phash=phash,
        )
    except RecordError as exc:
        return Rejection(
            kind="image",
            key=str(plan.image_id),
            reason=exc.reason,
            error_type=type(exc).__name__,
            message=str(exc)[:200],
            source=plan.source,
            split=plan.split,
            payload_sha256=hashlib.sha256(data).hexdigest(),
        )
    pixels = facts.pixel_sums if histogram else None
    # The panoptic PNG is read only for an image that is written (a rejected image's panoptic
    # record goes with it).
    panoptic, panoptic_fp = _load_panoptic(plan, isolated)
    return Loaded(
        data=data,
        facts=_flag_extension(plan, facts),
        panoptic=panoptic,
        image_fp=image_fp,
        panoptic_fp=panoptic_fp,
        pixels=pixels,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prepared:
    """One plan made ready for its image's load (``ImageLoader.prepare``): the ``Rejection`` of
    each annotation whose mask could not be made, and the fingerprint of the rasterized record
    (``runs.incremental.record_fingerprint``; "" unless asked)."""

    masks_rejected: list
    record_fp: str = ""
    # Annotations whose masks were made here (0 for a plan rasterized before it came).
    masks_made: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageLoader:
    """``load_image`` with a shard's settings: called with a plan, it passes that image's row
    of the previous run's state (``known``: image id -> row) as ``known``."""

    max_pixels: int
    filesystem: object = None
    histogram: bool = True
    phash: bool = True
    known: dict = dataclasses.field(default_factory=dict)
    isolated: Isolated | None = None
    # ``prepare``: also the record's fingerprint, once its masks are made.
    fingerprint: bool = False
    # ``prepare``: also keep each pending polygon's rings in ``plan.polygons`` (YOLO segment
    # labels are written from them; ``ShardWriterConfig.keeps_polygons``).
    polygons: bool = False

    def __call__(self, plan: ImagePlan, thumbnail=None) -> Loaded | Rejection:
        return load_image(
            plan,
            self.max_pixels,
            filesystem=self.filesystem,
            histogram=self.histogram,
            phash=self.phash,
            known=self.known.get(plan.image_id),
            isolated=self.isolated,
            thumbnail=thumbnail,
        )

    def prepare(self, plan: ImagePlan) -> Prepared:
        """Rasterizes ``plan``'s pending masks (``plan.annotations`` takes them), in a decoder
        child when isolated: per-annotation work runs in the writing stage, beside the
        decoding and on every core, rather than before the shard shuffle. A crash of the child
        rasterizes them here, where they were made before (they are checked in Python first).
        With ``polygons``, each pending polygon's rings are kept first in ``plan.polygons``.
        """
        rejections, made = [], 0
        if self.polygons and plan.polygons is None:
            # Taken here, in the writer's process: a decoder child rasterizes a copy.
            plan.polygons = polygon_rings(plan)
        if pending_masks(plan):
            try:
                annotations, rejections = _call(self.isolated, rasterize_annotations, plan)
                plan.annotations = annotations
            except RecordError:
                rejections = rasterize_plan(plan)[1]
            made = len(plan.annotations)
        record_fp = record_fingerprint(plan) if self.fingerprint else ""
        return Prepared(masks_rejected=rejections, record_fp=record_fp, masks_made=made)


def known_facts(row: dict) -> ImageFacts:
    """What decoding found for an image, as the previous run's state row of it keeps it
    (without the extension flag, which is decided anew every run)."""
    return ImageFacts(
        sha256=row["sha256"],
        format=row["format"],
        mode=row["mode"],
        width=row["decoded_width"],
        height=row["decoded_height"],
        exif_orientation=row["exif_orientation"],
        flags=tuple(f for f in row["flags"] if f != FLAG_EXTENSION_MISMATCH),
        phash=row["phash"],
    )


def expected_format(file_name: str) -> str | None:
    """The format a file name says ("jpeg", "png"), or None for another extension."""
    return _EXTENSIONS.get(file_name.rsplit(".", 1)[-1].lower())


def _flag_extension(plan: ImagePlan, facts: ImageFacts) -> ImageFacts:
    """Flags a file whose name says another format than its bytes (the name may change while
    the bytes do not: this is decided anew every run)."""
    extension = plan.file_name.rsplit(".", 1)[-1].lower()
    if _EXTENSIONS.get(extension) == facts.format:
        return facts
    return dataclasses.replace(facts, flags=(*facts.flags, FLAG_EXTENSION_MISMATCH))


def _facts_known(
    known: dict | None, plan: ImagePlan, image_fp: str, histogram: bool, phash: bool
) -> bool:
    return (
        known is not None
        and known["written"]
        and known["image_fp"] == image_fp
        and (known["width"], known["height"]) == (plan.width, plan.height)
        and (not histogram or known["px_n"] is not None)
        and (not phash or known["phash"] is not None)
    )


def _call(isolated: Isolated | None, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, in a child process when ``isolated``; a crash of the child is
    a ``decoder_crash`` of the record."""
    if isolated is None:
        return fn(*args, **kwargs)
    try:
        return isolated.call(fn, *args, **kwargs)
    except NativeCrash as exc:
        raise RecordError(Reason.DECODER_CRASH, str(exc)) from None


def _load_panoptic(
    plan: ImagePlan, isolated: Isolated | None = None
) -> tuple[PanopticFacts | Rejection | None, str | None]:
    """The panoptic record's facts (or its rejection) and the CRC32C of its PNG."""
    pan = plan.panoptic
    if pan is None:
        return None, None
    data = b""
    try:
        # Beam's FileSystems: the PNGs may sit on another filesystem than the images.
        with FileSystems.open(pan["path"], compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        facts = _call(isolated, inspect_panoptic, data, plan.width, plan.height, pan["segments"])
        return facts, crc32c_hex(data)
    except RecordError as exc:
        reason, error, message = exc.reason, type(exc).__name__, str(exc)[:200]
    except Exception as exc:
        if not is_not_found(exc):
            raise
        reason, error = Reason.IMAGE_MISSING, type(exc).__name__
        message = f"no panoptic PNG {pan['file_name']!r}"
    rejection = Rejection(
        kind="panoptic",
        key=str(plan.image_id),
        reason=reason,
        error_type=error,
        message=message,
        source=pan["source"],
        split=plan.split,
        payload_sha256=hashlib.sha256(data).hexdigest() if data else "",
    )
    return rejection, crc32c_hex(data) if data else None


def probe(plan: ImagePlan, filesystem) -> tuple[str | None, str | None]:
    """The CRC32C of an image and of its panoptic PNG, from the store's checksum where it
    keeps one, else from the bytes; None for a file that is not there."""

    def one(path, fs):
        stored = stored_crc32c(path)
        if stored is not None:
            return stored
        try:
            with fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return crc32c_hex(f.read())
        except Exception as exc:
            if not is_not_found(exc):
                raise
            return None

    image = one(plan.path, filesystem)
    if plan.panoptic is None:
        return image, None
    return image, one(plan.panoptic["path"], FileSystems.get_filesystem(plan.panoptic["path"]))


def in_order(pool, fn: Callable, items: Iterable, window: int) -> Iterator[tuple]:
    """``(item, fn(item))`` in input order, with at most ``window`` calls running ahead on
    ``pool`` (a ``concurrent.futures`` executor)."""
    pending = collections.deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()
