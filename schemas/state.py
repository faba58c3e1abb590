"""The build state: one small Parquet file per shard, what the next run needs to rebuild only
what changed.

``runs/<run_id>/state/<split>-SSSSS-of-NNNNN.parquet`` holds one row per image the shard's
plans named, written or rejected, in image id order:

  * ``record_fp``: a fingerprint of everything the image's row takes from the annotation files
    (``transforms.runs.incremental.record_fingerprint``);
  * ``image_fp`` / ``panoptic_fp``: CRC32C of the image's bytes and of its panoptic PNG (the
    checksum object stores keep, computed the same way for local files);
  * ``width`` and ``height`` from the JSON, which the decoded image was checked against;
  * what decoding the image found (``decoded_width``, ``decoded_height``, ``sha256``,
    ``format``, ``mode``, ``exif_orientation``, ``flags``, ``num_bytes``) and its exact
    per-channel pixel sums (``px_n``, ``px_sum``, ``px_sq``) and perceptual hash (``phash``:
    ``transforms.images.phash.dct_hash``), all null when statistics were off, so an unchanged
    image is neither decoded nor counted again;
  * ``panoptic_stats``: the statistics' view of its accepted panoptic record (JSON), null when
    it has none or it was rejected.

``STATE_VERSION`` changes whenever what a row means changes: a state of another version is
never used.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["STATE_SCHEMA", "STATE_VERSION"]

# 2: rows hold ``phash``.
STATE_VERSION = 2

STATE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("written", pa.bool_(), nullable=False),
        pa.field("record_fp", pa.string(), nullable=False),
        pa.field("image_fp", pa.string()),
        pa.field("panoptic_fp", pa.string()),
        pa.field("width", pa.int64(), nullable=False),
        pa.field("height", pa.int64(), nullable=False),
        pa.field("decoded_width", pa.int64()),
        pa.field("decoded_height", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("exif_orientation", pa.int32()),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("num_bytes", pa.int64()),
        pa.field("px_n", pa.int64()),
        pa.field("px_sum", pa.list_(pa.int64(), 3)),
        pa.field("px_sq", pa.list_(pa.int64(), 3)),
        pa.field("panoptic_stats", pa.string()),
        pa.field("phash", pa.string()),
    ],
    metadata={"coco_beam_state_version": str(STATE_VERSION)},
)
