"""Unit tests of the sharding policy."""

import collections
import hashlib

import pytest

from coco_beam.transforms.shards.sharding import num_shards_for, shard_index, shard_name


def test_shard_index_is_stable_and_in_range():
    assert shard_index("val2017", 139, 8) == shard_index("val2017", 139, 8)
    assert {shard_index("train2017", i, 4) for i in range(1000)} == {0, 1, 2, 3}
    # The split is part of the key.
    assert [shard_index("a", i, 16) for i in range(50)] != [
        shard_index("b", i, 16) for i in range(50)
    ]


def test_shard_index_is_uniform():
    counts = collections.Counter(shard_index("train2017", i, 10) for i in range(100_000))
    assert max(counts.values()) < 10_500 and min(counts.values()) > 9_500


def test_shard_index_known_value():
    # Pinned: a change here would move every image of every existing output.
    assert [shard_index("val2017", i, 7) for i in (1, 2, 3, 139)] == [0, 1, 2, 5]
    digest = hashlib.sha1(b"val2017/139").digest()
    assert shard_index("val2017", 139, 1000) == int.from_bytes(digest[:8], "big") % 1000


@pytest.mark.parametrize(
    "total, images, shard_bytes, fixed, expected",
    [
        (0, 0, 100, None, 1),
        (50, 10, 100, None, 1),
        (100, 10, 100, None, 1),
        (101, 10, 100, None, 2),
        (10_000, 3, 100, None, 3),
        (10_000, 3, 100, 7, 7),
    ],
)
def test_num_shards_for(total, images, shard_bytes, fixed, expected):
    assert num_shards_for(total, images, shard_bytes, fixed) == expected


def test_shard_name():
    assert shard_name("val2017", 3, 12, "parquet") == "val2017-00003-of-00012.parquet"
