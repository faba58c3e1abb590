"""The statistic families: one small mergeable accumulator class per family of figures.

A family (image properties, image sizes, categories, co-occurrence, boxes, keypoints, captions,
panoptic segments, pixels, flags) keeps its counts in named fields, each an exact integer, a
list of them, or a ``collections.Counter`` of bins or ids, and has an ``add`` method for one
image and an in-place ``merge``. Pure: no Beam here (``accumulators.StatsAccumulator`` holds
one of each; ``gather`` merges those inside one fused CombineFn).

Guarantees:
  * counts are exact integers, so ``merge`` is exact, associative and commutative: the result
    does not depend on bundling, workers or merge order; ``merge`` mutates only ``self``;
  * the size is bounded by bins, categories, joints and flags, never by the number of images
    (histogram bins ``k`` have ``|k| <= 4096``: an overflow to infinity lands in the outer bin);
  * a family pickles as its class and a tuple of its fields (no per-object field names).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable

from pycocotools import mask as mask_utils

from coco_beam.schemas.stats import HISTOGRAMS

__all__ = [
    "GRID",
    "SIZE_CELL",
    "BoxStats",
    "CaptionStats",
    "CategoryStats",
    "Cooccurrence",
    "Family",
    "FlagCounts",
    "ImageProperties",
    "ImageSizes",
    "KeypointStats",
    "PanopticStats",
    "PixelStats",
]

SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's area buckets: small < 32², medium < 96²
GRID = 16  # object centres: a 16 x 16 heatmap over the normalized image
SIZE_CELL = 64  # image sizes: 64 x 64 px cells
_MAX_COUNT_BIN = 100  # per-image counts and caption words: exact up to 99, then "100+"
_MAX_BIN = 4096  # any histogram: bins k with |k| < 4096, the outermost holding everything past
_W = {name: width for name, (width, _) in HISTOGRAMS.items()}  # bin widths, read once
_BOX_SIDE = _W["bbox_width"]
_BOX_HEIGHT = _W["bbox_height"]
_BOX_ASPECT = _W["bbox_aspect_log2"]
_MASK_RATIO = _W["mask_to_bbox_area"]
_RELATIVE_SIZE = _W["bbox_relative_size"]


def _bin(value: float, width: float) -> int:
    """The bin of ``value``; values past ``_MAX_BIN`` bins from zero (a box side of 10^200 px,
    an overflow to infinity) fall in the outermost bin, so bins stay bounded and nothing a
    checked record holds can raise here."""
    q = value / width
    if not -_MAX_BIN < q < _MAX_BIN:
        return _MAX_BIN if q > 0 else -_MAX_BIN
    return math.floor(q)


class Family:
    """Pickling, equality and merging over ``__slots__``: ints add, Counters update, lists
    add element-wise. A family whose merge differs overrides ``merge``."""

    __slots__ = ()

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def merge(self, other: Family) -> None:
        """Adds ``other`` into ``self``; ``other`` is left as it is."""
        for name in self.__slots__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, collections.Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                setattr(self, name, [a + b for a, b in zip(mine, theirs, strict=True)])
            else:
                setattr(self, name, mine + theirs)


class ImageProperties(Family):
    """How many images, and their categorical properties."""

    __slots__ = ("num_images", "formats", "modes", "exif_orientations")

    def __init__(self):
        self.num_images = 0  # images written
        self.formats = collections.Counter()  # decoded format ("jpeg", "png", ...) -> images
        self.modes = collections.Counter()  # Pillow mode ("RGB", "L", ...) -> images
        self.exif_orientations = collections.Counter()  # EXIF orientation (0: none) -> images

    def add(self, fmt: str, mode: str, exif_orientation: int | None) -> None:
        self.num_images += 1
        self.formats[fmt] += 1
        self.modes[mode] += 1
        self.exif_orientations[exif_orientation or 0] += 1


class ImageSizes(Family):
    """Image dimensions and file sizes."""

    __slots__ = ("num_pixels", "cells", "widths", "heights", "aspects", "file_sizes")

    def __init__(self):
        self.num_pixels = 0  # width x height summed over the images
        self.cells = collections.Counter()  # (width // 64, height // 64) -> images
        self.widths = collections.Counter()  # image_width bin -> images
        self.heights = collections.Counter()  # image_height bin -> images
        self.aspects = collections.Counter()  # image_aspect_log2 bin -> images
        self.file_sizes = collections.Counter()  # file_size_log2_kib bin -> images

    def add(self, width: int, height: int, num_bytes: int) -> None:
        self.num_pixels += width * height
        self.cells[width // SIZE_CELL, height // SIZE_CELL] += 1
        self.widths[_bin(width, _W["image_width"])] += 1
        self.heights[_bin(height, _W["image_height"])] += 1
        self.aspects[_bin(math.log2(width / height), _W["image_aspect_log2"])] += 1
        kib = math.log2(max(num_bytes, 1) / 1024)
        self.file_sizes[_bin(kib, _W["file_size_log2_kib"])] += 1


class CategoryStats(Family):
    """Objects per category, by COCO area bucket, and per image."""

    __slots__ = (
        "num_annotations",
        "num_crowd",
        "num_images_without_annotations",
        "instances",
        "images",
        "crowd",
        "small",
        "medium",
        "large",
        "objects_per_image",
        "categories_per_image",
    )

    def __init__(self):
        self.num_annotations = 0  # annotations of the images written
        self.num_crowd = 0  # of them, crowd regions
        self.num_images_without_annotations = 0  # images with no annotation
        self.instances = collections.Counter()  # category id -> annotations
        self.images = collections.Counter()  # category id -> images holding one or more
        self.crowd = collections.Counter()  # category id -> crowd annotations
        self.small = collections.Counter()  # category id -> annotations of area < 32²
        self.medium = collections.Counter()  # category id -> annotations of area in [32², 96²)
        self.large = collections.Counter()  # category id -> annotations of area >= 96²
        self.objects_per_image = collections.Counter()  # min(annotations, 100) -> images
        self.categories_per_image = collections.Counter()  # min(categories, 100) -> images

    def add(self, annotations: list[dict], categories: list[int]) -> None:
        """``categories``: the distinct category ids of ``annotations``."""
        self.num_annotations += len(annotations)
        if not annotations:
            self.num_images_without_annotations += 1
        self.objects_per_image[min(len(annotations), _MAX_COUNT_BIN)] += 1
        self.categories_per_image[min(len(categories), _MAX_COUNT_BIN)] += 1
        self.images.update(categories)
        instances, small, medium, large = self.instances, self.small, self.medium, self.large
        for ann in annotations:
            cat = ann["category_id"]
            instances[cat] += 1
            if ann["iscrowd"]:
                self.num_crowd += 1
                self.crowd[cat] += 1
            area = ann["area"]
            (small if area < SMALL_AREA else medium if area < MEDIUM_AREA else large)[cat] += 1


class Cooccurrence(Family):
    """Pairs of categories held by one image."""

    __slots__ = ("pairs",)

    def __init__(self):
        self.pairs = collections.Counter()  # (category a, category b), a < b -> images

    def add(self, categories: list[int]) -> None:
        """``categories``: an image's distinct category ids, sorted."""
        if len(categories) > 1:
            self.pairs.update(itertools.combinations(categories, 2))


class BoxStats(Family):
    """Boxes: their sides, shapes, sizes, positions and how much of them the mask fills."""

    __slots__ = (
        "num_zero_size",
        "num_outside_image",
        "widths",
        "heights",
        "aspects",
        "relative_sizes",
        "mask_ratios",
        "centres",
    )

    def __init__(self):
        self.num_zero_size = 0  # boxes of zero area (a side of 0, or an underflow)
        self.num_outside_image = 0  # boxes flagged bbox_outside_image
        self.widths = collections.Counter()  # bbox_width bin -> boxes
        self.heights = collections.Counter()  # bbox_height bin -> boxes
        self.aspects = collections.Counter()  # bbox_aspect_log2 bin -> boxes of positive area
        self.relative_sizes = collections.Counter()  # bbox_relative_size bin -> boxes
        self.mask_ratios = collections.Counter()  # mask_to_bbox_area bin -> boxes of area > 0
        self.centres = collections.Counter()  # (column, row) of the 16 x 16 grid -> boxes

    def add(self, annotations: list[dict], width: int, height: int) -> None:
        """The boxes of one image's annotations (each with its ``rle``).

        The hot loop of the statistics (COCO: about 7 boxes an image): bins are computed
        inline (``_bin``'s in-range case; a call per bin costs a fifth of the loop) and the
        counters are read once into locals."""
        # Mask areas in one call per image (a call per mask costs twice as much), for the
        # boxes of positive area, in order.
        masked = [a["rle"] for a in annotations if a["bbox"][2] * a["bbox"][3] > 0]
        mask_areas = iter(
            mask_utils.area([{"size": r["size"], "counts": r["counts"]} for r in masked]).tolist()
            if masked
            else ()
        )
        image_area = width * height
        floor, log2, sqrt, top = math.floor, math.log2, math.sqrt, _MAX_BIN
        widths, heights, aspects = self.widths, self.heights, self.aspects
        relative_sizes, mask_ratios, centres = self.relative_sizes, self.mask_ratios, self.centres
        for ann in annotations:
            x, y, w, h = ann["bbox"]
            q = w / _BOX_SIDE
            widths[floor(q) if -top < q < top else _bin(w, _BOX_SIDE)] += 1
            q = h / _BOX_HEIGHT
            heights[floor(q) if -top < q < top else _bin(h, _BOX_HEIGHT)] += 1
            box = w * h  # may underflow to 0 or overflow to infinity for extreme sides
            if box > 0:
                # A difference of logs: w / h itself can underflow to 0 or overflow.
                aspect = log2(w) - log2(h)
                q = aspect / _BOX_ASPECT
                aspects[floor(q) if -top < q < top else _bin(aspect, _BOX_ASPECT)] += 1
                ratio = float(next(mask_areas)) / box
                q = ratio / _MASK_RATIO
                mask_ratios[floor(q) if -top < q < top else _bin(ratio, _MASK_RATIO)] += 1
            else:
                self.num_zero_size += 1
                box = 0.0
            if "bbox_outside_image" in ann.get("flags", ()):
                self.num_outside_image += 1
            relative = sqrt(box / image_area)
            q = relative / _RELATIVE_SIZE
            relative_sizes[floor(q) if q < top else _bin(relative, _RELATIVE_SIZE)] += 1
            cx = (x + w / 2) / width
            cy = (y + h / 2) / height
            column = 0 if cx <= 0.0 else GRID - 1 if cx >= 1.0 else min(int(cx * GRID), GRID - 1)
            row = 0 if cy <= 0.0 else GRID - 1 if cy >= 1.0 else min(int(cy * GRID), GRID - 1)
            centres[column, row] += 1


class KeypointStats(Family):
    """People with keypoints, and each joint's visibility."""

    __slots__ = ("num_people", "joints")

    def __init__(self):
        self.num_people = 0  # annotations with num_keypoints > 0
        self.joints = collections.Counter()  # (joint index, visibility v) -> keypoints

    def add(self, annotations: list[dict]) -> None:
        for ann in annotations:
            keypoints = ann.get("keypoints")
            if keypoints:
                if ann.get("num_keypoints"):
                    self.num_people += 1
                self.joints.update(enumerate(map(int, keypoints[2::3])))


class CaptionStats(Family):
    """Captions and their lengths."""

    __slots__ = ("num_captions", "words")

    def __init__(self):
        self.num_captions = 0  # captions of the images written
        self.words = collections.Counter()  # min(words, 100) -> captions

    def add(self, captions: list[dict]) -> None:
        self.num_captions += len(captions)
        for caption in captions:
            self.words[min(len(caption["caption"].split()), _MAX_COUNT_BIN)] += 1


class PanopticStats(Family):
    """Panoptic segments and the pixels they cover."""

    __slots__ = (
        "num_images",
        "num_pixels",
        "void_pixels",
        "segments",
        "pixels",
        "kind_segments",
        "kind_pixels",
    )

    def __init__(self):
        self.num_images = 0  # images with a panoptic record
        self.num_pixels = 0  # their pixels, void included
        self.void_pixels = 0  # of them, pixels of no segment
        self.segments = collections.Counter()  # category id -> segments
        self.pixels = collections.Counter()  # category id -> pixels of its segments
        self.kind_segments = collections.Counter()  # "thing" | "stuff" -> segments
        self.kind_pixels = collections.Counter()  # "thing" | "stuff" -> pixels

    def add(self, panoptic, num_pixels: int) -> None:
        """``panoptic``: the image's checked record (``segments``, ``void_pixels``)."""
        self.num_images += 1
        self.num_pixels += num_pixels
        self.void_pixels += panoptic.void_pixels
        for seg in panoptic.segments:
            kind = "thing" if seg["isthing"] else "stuff"
            self.segments[seg["category_id"]] += 1
            self.pixels[seg["category_id"]] += seg["area"]
            self.kind_segments[kind] += 1
            self.kind_pixels[kind] += seg["area"]


class PixelStats(Family):
    """Exact pixel sums per RGB channel, for the population mean and standard deviation."""

    __slots__ = ("count", "sums", "squares")

    def __init__(self):
        self.count = 0  # pixels counted (each has the three channels)
        self.sums = [0, 0, 0]  # R, G, B: sum of values (0-255)
        self.squares = [0, 0, 0]  # R, G, B: sum of squared values

    def add(self, n: int, sums: Iterable[int], squares: Iterable[int]) -> None:
        if n:
            self.count += n
            self.sums = [a + b for a, b in zip(self.sums, sums, strict=True)]
            self.squares = [a + b for a, b in zip(self.squares, squares, strict=True)]


class FlagCounts(Family):
    """Warnings that were not rejections, by flag: images' and annotations' together."""

    __slots__ = ("counts",)

    def __init__(self):
        self.counts = collections.Counter()  # flag -> images or annotations carrying it

    def add(self, flags: Iterable[str], annotations: list[dict]) -> None:
        if flags:
            self.counts.update(flags)
        for ann in annotations:
            if flags := ann.get("flags"):
                self.counts.update(flags)
