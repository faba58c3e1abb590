"""The statistics accumulator of a shard, a split or a dataset: one of each statistic family.

The shard writer makes one per shard (``new_accumulator``) and adds each image it writes
(``add_image``, ``add_pixel_sums``); ``gather`` merges them per split, ``summary`` turns one into
the document's figures. Pure. The per-image cost is what the statistics add to writing a
shard: ``add_image`` calls each family's ``add`` once, and masks' areas are computed in one
call per image.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from coco_beam.transforms.images.decode import pixel_sums
from coco_beam.transforms.stats.examples import ExampleSets
from coco_beam.transforms.stats.families import (
    BoxStats,
    CaptionStats,
    CategoryStats,
    Cooccurrence,
    Family,
    FlagCounts,
    ImageProperties,
    ImageSizes,
    KeypointStats,
    PanopticStats,
    PixelStats,
)

__all__ = [
    "StatsAccumulator",
    "add_image",
    "add_pixel_sums",
    "add_pixels",
    "merge",
    "new_accumulator",
]


class StatsAccumulator(Family):
    """One of each family: the accumulator of a shard, a split or the dataset (``add_image``
    and ``add_pixel_sums`` add to it)."""

    __slots__ = (
        "properties",
        "sizes",
        "categories",
        "cooccurrence",
        "boxes",
        "keypoints",
        "captions",
        "panoptic",
        "pixels",
        "flags",
        "examples",
    )

    def __init__(self):
        self.properties = ImageProperties()  # images; formats, modes, EXIF orientations
        self.sizes = ImageSizes()  # pixels; width, height, aspect, file size; 64 px cells
        self.categories = CategoryStats()  # objects per category, area bucket and image
        self.cooccurrence = Cooccurrence()  # images holding two categories
        self.boxes = BoxStats()  # box sides, aspect, relative size, mask fill, centres
        self.keypoints = KeypointStats()  # people with keypoints; joints by visibility
        self.captions = CaptionStats()  # captions and their lengths in words
        self.panoptic = PanopticStats()  # panoptic segments and pixels, things and stuff
        self.pixels = PixelStats()  # exact pixel sums for the mean and standard deviation
        self.flags = FlagCounts()  # warnings that were not rejections
        self.examples = ExampleSets()  # the report's example thumbnails (bottom-k per group)

    def merge(self, other: StatsAccumulator) -> None:
        """Adds ``other`` into ``self``, family by family; ``other`` is left as it is."""
        for name in self.__slots__:
            getattr(self, name).merge(getattr(other, name))

    def histograms(self) -> dict[str, collections.Counter]:
        """Each histogram of ``HISTOGRAMS`` by name: bin index -> count."""
        return {
            "objects_per_image": self.categories.objects_per_image,
            "categories_per_image": self.categories.categories_per_image,
            "bbox_width": self.boxes.widths,
            "bbox_height": self.boxes.heights,
            "bbox_aspect_log2": self.boxes.aspects,
            "bbox_relative_size": self.boxes.relative_sizes,
            "mask_to_bbox_area": self.boxes.mask_ratios,
            "image_width": self.sizes.widths,
            "image_height": self.sizes.heights,
            "image_aspect_log2": self.sizes.aspects,
            "file_size_log2_kib": self.sizes.file_sizes,
            "caption_words": self.captions.words,
        }


def new_accumulator() -> StatsAccumulator:
    """An empty accumulator (a shard's, before its first image)."""
    return StatsAccumulator()


def add_image(
    acc: StatsAccumulator,
    *,
    width: int,
    height: int,
    fmt: str,
    mode: str,
    exif_orientation: int | None,
    num_bytes: int,
    annotations: list[dict],
    captions: list[dict],
    panoptic=None,
    flags: Iterable[str] = (),
) -> StatsAccumulator:
    """Adds one written image (its annotations carry ``rle``) to ``acc``; returns it. Its
    pixels are added with ``add_pixel_sums`` (or ``add_pixels``, from counts). ``panoptic``:
    its checked panoptic record (``images.panoptic.PanopticFacts``), if it has one.
    ``flags``: the image's warnings (its annotations carry their own), counted by name."""
    categories = sorted({a["category_id"] for a in annotations})
    acc.properties.add(fmt, mode, exif_orientation)
    acc.sizes.add(width, height, num_bytes)
    acc.categories.add(annotations, categories)
    acc.cooccurrence.add(categories)
    acc.boxes.add(annotations, width, height)
    acc.keypoints.add(annotations)
    acc.captions.add(captions)
    if panoptic is not None:
        acc.panoptic.add(panoptic, width * height)
    acc.flags.add(flags, annotations)
    return acc


def add_pixel_sums(
    acc: StatsAccumulator, n: int, sums: Iterable[int], squares: Iterable[int]
) -> StatsAccumulator:
    """Adds the exact pixel sums of one or many images (see ``pixel_sums``)."""
    acc.pixels.add(n, sums, squares)
    return acc


def add_pixels(acc: StatsAccumulator, histogram: Iterable[int]) -> StatsAccumulator:
    """Adds 768 per-channel pixel counts (R, G, B; 256 values each), e.g. the sum of many
    images' pixel histograms (``transforms.images.decode.rgb_histogram``)."""
    return add_pixel_sums(acc, *pixel_sums(histogram))


def merge(accumulators: Iterable[StatsAccumulator]) -> StatsAccumulator:
    """A new accumulator holding all of ``accumulators``, which are left as they are."""
    merged = StatsAccumulator()
    for acc in accumulators:
        merged.merge(acc)
    return merged
