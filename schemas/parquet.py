"""The Parquet contract: one row per image, every annotation family joined to it.

Guarantees:
  * ``image.bytes`` is the original file, unmodified; ``sha256`` is its hex digest.
  * ``annotations[*].rle`` is COCO compressed RLE (column-major, ``size`` = ``[h, w]``) whose
    decoded mask equals ``pycocotools``' ``annToMask`` for that annotation.
  * ``category_id`` keeps COCO's (non-contiguous) ids; names travel in the schema metadata key
    ``coco_beam`` and in ``categories.parquet`` beside the shards.
  * The ``huggingface`` metadata makes ``datasets`` decode ``image`` as a PIL image.
"""

from __future__ import annotations

import functools
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from coco_beam.schemas.fields import Image, ListOf, Struct, Value

__all__ = [
    "ANNOTATION",
    "CAPTION",
    "CATEGORIES_SCHEMA",
    "COLUMNS",
    "IMAGE_ROW",
    "arrow_schema",
    "column_codecs",
    "hf_features",
]

RLE = Struct((("size", ListOf(Value("int32"), length=2)), ("counts", Value("string"))))

ANNOTATION = Struct(
    (
        ("id", Value("int64")),
        ("category_id", Value("int64")),
        ("bbox", ListOf(Value("float64"), length=4)),
        ("area", Value("float64")),
        ("iscrowd", Value("int8")),
        ("rle", RLE),
        ("keypoints", ListOf(Value("float64"))),
        ("num_keypoints", Value("int32")),
        ("flags", ListOf(Value("string"))),
    )
)

CAPTION = Struct((("id", Value("int64")), ("caption", Value("string"))))

PANOPTIC_SEGMENT = Struct(
    (
        ("id", Value("int64")),
        ("category_id", Value("int64")),
        ("isthing", Value("bool")),
        ("iscrowd", Value("int8")),
        ("area", Value("int64")),  # pixels holding the id in the PNG
        ("listed_area", Value("int64")),  # segments_info's area
        ("bbox", ListOf(Value("float64"), length=4)),
        ("rle", RLE),
        ("flags", ListOf(Value("string"))),
    )
)

# Null for images without a panoptic record.
PANOPTIC = Struct(
    (
        ("file_name", Value("string")),
        ("png", Value("binary")),  # the panoptic PNG as it is
        ("segments", ListOf(PANOPTIC_SEGMENT)),
        # With --panoptic-semantic: a grey PNG of each pixel's category id (0: void), 8-bit
        # where the ids fit, 16-bit otherwise.
        ("semantic_png", Value("binary")),
    )
)

IMAGE_ROW = Struct(
    (
        ("image_id", Value("int64")),
        ("split", Value("string")),
        ("file_name", Value("string")),
        ("width", Value("int32")),
        ("height", Value("int32")),
        ("image", Image()),
        ("sha256", Value("string")),
        ("format", Value("string")),
        ("mode", Value("string")),
        ("exif_orientation", Value("int8")),
        ("annotations", ListOf(ANNOTATION)),
        ("captions", ListOf(CAPTION)),
        ("panoptic", PANOPTIC),
        # Query columns: a data lake filters on these without reading image bytes.
        ("num_objects", Value("int32")),
        ("category_ids", ListOf(Value("int64"))),
        ("has_crowd", Value("bool")),
        ("flags", ListOf(Value("string"))),
    )
)

COLUMNS = tuple(name for name, _ in IMAGE_ROW.fields)

CATEGORIES_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("id", pa.int64()),
        ("name", pa.string()),
        ("supercategory", pa.string()),
        ("keypoints", pa.list_(pa.string())),
        ("isthing", pa.bool_()),  # from a panoptic file; null without one
    ]
)


# JPEG and PNG bytes are already entropy-coded: zstd saves under 1% on them and costs a
# quarter of the writer's CPU, so that one column is stored as it is and every other is zstd.
UNCOMPRESSED_COLUMNS = ("image.bytes", "panoptic.png")


@functools.lru_cache(maxsize=1)
def column_codecs(codec: str = "zstd") -> dict:
    """Per leaf column, the Parquet codec: ``codec`` for all but ``UNCOMPRESSED_COLUMNS``."""
    sink = io.BytesIO()
    pq.write_table(arrow_schema().empty_table(), sink)
    metadata = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    return {path: "none" if path in UNCOMPRESSED_COLUMNS else codec for path in paths}


def hf_features() -> dict:
    """The ``features`` dict ``datasets`` reads from the ``huggingface`` metadata key."""
    return IMAGE_ROW.hf()


def arrow_schema(categories: list[dict] | None = None) -> pa.Schema:
    """The shard schema, with ``huggingface`` metadata and, if given, the split's categories."""
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features()}}, sort_keys=True)}
    if categories is not None:
        metadata["coco_beam"] = json.dumps({"categories": categories}, sort_keys=True)
    return pa.schema([(name, node.arrow()) for name, node in IMAGE_ROW.fields], metadata=metadata)
