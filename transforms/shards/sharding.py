"""Pure core: the one owner of the sharding policy.

Guarantees: an image's shard is a function of ``(split, image_id)`` and the split's shard
count only (a keyed hash, as TensorFlow Datasets shards), never of workers or bundles; the
shard count is a function of the split's total bytes (or ``--num-shards``); shard files are
named ``<split>-SSSSS-of-NNNNN.<ext>``, the naming ``datasets`` and Model Garden use.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "NUM_JOIN_BUCKETS",
    "join_bucket",
    "num_shards_for",
    "shard_index",
    "shard_name",
]

# Large enough to amortize per-file costs on object stores, small enough for one worker to
# write in a minute; Hugging Face's own default is 500 MB.
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024


def num_shards_for(
    total_bytes: int,
    num_images: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    fixed: int | None = None,
) -> int:
    """The number of shards for a split: ``fixed`` if given, else ceil(bytes / shard_bytes)."""
    if fixed is not None:
        if fixed < 1:
            raise ValueError(f"--num-shards must be >= 1, got {fixed}")
        return fixed
    if num_images <= 0:
        return 1
    return max(1, min(num_images, -(-total_bytes // shard_bytes)))


def shard_index(split: str, image_id: int, num_shards: int) -> int:
    """A stable, uniform shard for an image: the first 8 bytes of SHA-1 of its key, mod N."""
    digest = hashlib.sha1(f"{split}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


# Records are grouped by a bucket of their image before the join: enough buckets to spread the
# join over many workers and keep each group small (COCO train2017: ~460 images a bucket), few
# enough that records travel in batches of dozens rather than one element each. Only the
# grouping depends on it, never the shard an image lands in or the bytes written.
NUM_JOIN_BUCKETS = 256


def join_bucket(split: str, image_id: int) -> int:
    """The join bucket of an image, uniform over ``NUM_JOIN_BUCKETS`` whatever its ids."""
    return shard_index(split, image_id, NUM_JOIN_BUCKETS)


def shard_name(split: str, index: int, num_shards: int, ext: str) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.{ext}"
