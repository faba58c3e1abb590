"""Panoptic PNGs: decoded once, checked against ``segments_info``, split into per-segment RLE.

Pure: ``inspect_panoptic`` takes the PNG's bytes, the image's size and the record's segments.

Guarantees:
  * the PNG is opened with Pillow's PNG decoder only, and must be RGB (or RGBA with an opaque
    alpha) of the image's exact size; segment ids are ``R + 256 * G + 256**2 * B``, 0 is void;
  * the ids in the PNG and those of ``segments_info`` are the same set: an id in the PNG that
    no segment lists, or a listed segment with no pixel, rejects the record
    (``panoptic_mismatch``), as does an unreadable PNG;
  * each segment's ``rle`` is COCO compressed RLE whose decoded mask is exactly the pixels
    holding its id; ``area`` is that pixel count (``segments_info``'s area is kept as
    ``listed_area``, and a difference flags the segment ``panoptic_area_mismatch``);
  * ``category_map`` holds each pixel's category id (0: void) and ``instance_map`` the thing
    segments' index in ``segments_info`` plus one (0: stuff or void), as TF Model Garden's
    ``image/panoptic/category_mask`` and ``instance_mask`` do; uint8 where the values fit,
    uint16 otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason

__all__ = ["FLAG_AREA_MISMATCH", "PanopticFacts", "inspect_panoptic"]

FLAG_AREA_MISMATCH = "panoptic_area_mismatch"


@dataclasses.dataclass
class PanopticFacts:
    png: bytes  # the PNG as it is
    segments: list  # dicts: id, category_id, isthing, iscrowd, area, listed_area, bbox, rle, flags
    category_map: np.ndarray
    instance_map: np.ndarray
    void_pixels: int
    pixels_by_category: collections.Counter


def _smallest(values: np.ndarray, top: int, what: str) -> np.ndarray:
    if top >= 2**16:
        raise RecordError(Reason.PANOPTIC_MISMATCH, f"{what} {top} does not fit a 16-bit map")
    return values.astype(np.uint8 if top < 256 else np.uint16)


def inspect_panoptic(data: bytes, width: int, height: int, segments: list[dict]) -> PanopticFacts:
    """Decodes ``data`` and checks it against ``segments`` (each with ``id``, ``category_id``,
    ``isthing``, ``iscrowd``, ``bbox``, ``area``). Raises ``RecordError(panoptic_mismatch)``."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != (width, height):
                raise RecordError(
                    Reason.PANOPTIC_MISMATCH,
                    f"PNG is {image.size[0]}x{image.size[1]}, the image {width}x{height}",
                )
            if image.mode not in ("RGB", "RGBA"):
                raise RecordError(Reason.PANOPTIC_MISMATCH, f"PNG mode {image.mode}, not RGB")
            pixels = np.asarray(image)
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad bytes
        raise RecordError(
            Reason.PANOPTIC_MISMATCH, f"not a readable PNG: {type(exc).__name__}: {exc}"[:200]
        ) from exc
    if pixels.shape[2] == 4 and not (pixels[:, :, 3] == 255).all():
        raise RecordError(Reason.PANOPTIC_MISMATCH, "PNG has transparent pixels")
    rgb = pixels[:, :, :3].astype(np.uint32)
    ids = rgb[:, :, 0] | (rgb[:, :, 1] << 8) | (rgb[:, :, 2] << 16)
    void = int(np.count_nonzero(ids == 0))
    category_map = np.zeros((height, width), np.int64)
    instance_map = np.zeros((height, width), np.int64)
    out, covered = [], void
    by_category: collections.Counter = collections.Counter()
    for index, seg in enumerate(segments):
        mask = ids == seg["id"]
        area = int(np.count_nonzero(mask))
        if area == 0:
            raise RecordError(
                Reason.PANOPTIC_MISMATCH, f"segment {seg['id']} has no pixel in the PNG"
            )
        covered += area
        category_map[mask] = seg["category_id"]
        if seg["isthing"]:
            instance_map[mask] = index + 1
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        by_category[seg["category_id"]] += area
        out.append(
            {
                "id": seg["id"],
                "category_id": seg["category_id"],
                "isthing": seg["isthing"],
                "iscrowd": seg["iscrowd"],
                "area": area,
                "listed_area": seg["area"],
                "bbox": seg["bbox"],
                "rle": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "flags": [FLAG_AREA_MISMATCH] if area != seg["area"] else [],
            }
        )
    if covered != width * height:
        raise RecordError(
            Reason.PANOPTIC_MISMATCH,
            f"{width * height - covered} pixels hold segment ids that segments_info does not list",
        )
    top_category = max((s["category_id"] for s in segments), default=0)
    return PanopticFacts(
        png=data,
        segments=out,
        category_map=_smallest(category_map, top_category, "category id"),
        instance_map=_smallest(instance_map, len(segments), "segment count"),
        void_pixels=void,
        pixels_by_category=by_category,
    )
