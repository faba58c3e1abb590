"""The statistics contract: the document's headline counts and histograms, and its tables.

``HEADLINE_COUNTS`` and ``HISTOGRAMS`` name what ``stats/stats.json`` holds at its top level and
under ``histograms``; the accumulators bin with these widths, the tables and comparisons list
these counts.

``STATS_TABLES``: the figures of ``stats/stats.json`` as flat Parquet tables for a lake. One file
per table under ``stats/``, each with a ``split`` column that is null for the whole
dataset and names the split otherwise, so ``WHERE split IS NULL`` selects the overall figures.
Long form (one row per bin, pair or cell) rather than nested lists, so SQL engines aggregate
them without unnesting.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["HEADLINE_COUNTS", "HISTOGRAMS", "STATS_TABLES"]

# The document's top-level counts, in order (the tables and comparisons list them too).
HEADLINE_COUNTS = (
    "num_images",
    "num_annotations",
    "num_crowd",
    "num_captions",
    "num_images_without_annotations",
    "num_zero_size_boxes",
    "num_boxes_outside_image",
    "num_pixels",
)

# name -> (bin width, unit) of the one-dimensional histograms, in the document's order; bin k
# holds [k*w, (k+1)*w).
HISTOGRAMS = {
    "objects_per_image": (1, "objects"),
    "categories_per_image": (1, "categories"),
    "bbox_width": (1, "px"),
    "bbox_height": (1, "px"),
    "bbox_aspect_log2": (0.125, "log2(width / height)"),
    "bbox_relative_size": (0.01, "sqrt(box area / image area)"),
    "mask_to_bbox_area": (0.05, "mask area / box area"),
    "image_width": (16, "px"),
    "image_height": (16, "px"),
    "image_aspect_log2": (0.125, "log2(width / height)"),
    "file_size_log2_kib": (0.25, "log2(KiB)"),
    "caption_words": (1, "words"),
}

_SPLIT = pa.field("split", pa.string())  # null: every split together

STATS_TABLES: dict[str, pa.Schema] = {
    # One row per scope: the headline numbers.
    "summary": pa.schema(
        [
            _SPLIT,
            pa.field("num_images", pa.int64(), nullable=False),
            pa.field("num_annotations", pa.int64(), nullable=False),
            pa.field("num_crowd", pa.int64(), nullable=False),
            pa.field("num_captions", pa.int64(), nullable=False),
            pa.field("num_images_without_annotations", pa.int64(), nullable=False),
            pa.field("num_zero_size_boxes", pa.int64(), nullable=False),
            pa.field("num_boxes_outside_image", pa.int64(), nullable=False),
            pa.field("num_pixels", pa.int64(), nullable=False),
            pa.field("people_with_keypoints", pa.int64(), nullable=False),
            # RGB, 0-255, over every pixel of every written image; null without images.
            pa.field("pixel_mean", pa.list_(pa.float64(), 3)),
            pa.field("pixel_std", pa.list_(pa.float64(), 3)),
            pa.field("num_duplicate_groups", pa.int64(), nullable=False),
            pa.field("num_panoptic_images", pa.int64(), nullable=False),
            pa.field("panoptic_void_pixels", pa.int64(), nullable=False),
        ]
    ),
    "categories": pa.schema(
        [
            _SPLIT,
            pa.field("id", pa.int64(), nullable=False),
            pa.field("name", pa.string()),
            pa.field("supercategory", pa.string()),
            pa.field("num_instances", pa.int64(), nullable=False),
            pa.field("num_images", pa.int64(), nullable=False),
            pa.field("num_crowd", pa.int64(), nullable=False),
            pa.field("area_small", pa.int64(), nullable=False),
            pa.field("area_medium", pa.int64(), nullable=False),
            pa.field("area_large", pa.int64(), nullable=False),
        ]
    ),
    # Fixed-bin histograms: a bin holds [bin_start, bin_start + bin_width).
    "histograms": pa.schema(
        [
            _SPLIT,
            pa.field("histogram", pa.string(), nullable=False),
            pa.field("unit", pa.string(), nullable=False),
            pa.field("bin_start", pa.float64(), nullable=False),
            pa.field("bin_width", pa.float64(), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ]
    ),
    "quantiles": pa.schema(
        [
            _SPLIT,
            pa.field("histogram", pa.string(), nullable=False),
            pa.field("quantile", pa.float64(), nullable=False),
            pa.field("value", pa.float64(), nullable=False),
        ]
    ),
    # Images holding both categories, category_a < category_b.
    "cooccurrence": pa.schema(
        [
            _SPLIT,
            pa.field("category_a", pa.int64(), nullable=False),
            pa.field("category_b", pa.int64(), nullable=False),
            pa.field("num_images", pa.int64(), nullable=False),
        ]
    ),
    # Object centres in the normalized image, on a grid x grid heatmap; only non-empty cells.
    "centre_heatmap": pa.schema(
        [
            _SPLIT,
            pa.field("grid", pa.int32(), nullable=False),
            pa.field("column", pa.int32(), nullable=False),
            pa.field("row", pa.int32(), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ]
    ),
    # Image sizes in 64 px cells: width in [width_from, width_from + 64), same for height.
    "image_sizes": pa.schema(
        [
            _SPLIT,
            pa.field("width_from", pa.int64(), nullable=False),
            pa.field("height_from", pa.int64(), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ]
    ),
    # Categorical image properties: format, mode, exif_orientation (0: none).
    "image_properties": pa.schema(
        [
            _SPLIT,
            pa.field("property", pa.string(), nullable=False),
            pa.field("value", pa.string(), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ]
    ),
    # Keypoints per joint index by COCO visibility: 0 not labelled, 1 occluded, 2 visible.
    "joint_visibility": pa.schema(
        [
            _SPLIT,
            pa.field("joint", pa.int32(), nullable=False),
            pa.field("v0", pa.int64(), nullable=False),
            pa.field("v1", pa.int64(), nullable=False),
            pa.field("v2", pa.int64(), nullable=False),
        ]
    ),
    # Panoptic segments per category; pixel_share is of every pixel of the images with a
    # panoptic record, void included.
    "panoptic_categories": pa.schema(
        [
            _SPLIT,
            pa.field("id", pa.int64(), nullable=False),
            pa.field("name", pa.string()),
            pa.field("isthing", pa.bool_()),
            pa.field("num_segments", pa.int64(), nullable=False),
            pa.field("pixels", pa.int64(), nullable=False),
            pa.field("pixel_share", pa.float64()),
        ]
    ),
    # Images with identical bytes: one row per image of every content hash held more than once.
    "duplicates": pa.schema(
        [
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("across_splits", pa.bool_(), nullable=False),
        ]
    ),
    # Near-duplicate images (``transforms.stats.near_duplicates``): one row per image of every
    # group; ``group`` is its position in stats.json's ``near_duplicates``, ``distance`` the
    # bits in which the image's perceptual hash differs from the group's first image's.
    "near_duplicates": pa.schema(
        [
            pa.field("group", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("distance", pa.int32(), nullable=False),
            pa.field("across_splits", pa.bool_(), nullable=False),
        ]
    ),
}
