"""Unit tests of the mask core against pycocotools."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason
from coco_beam.transforms.images.masks import (
    FLAG_RING_DROPPED,
    decode_rle_counts,
    pack_polygons,
    to_rle,
)


def _decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def _reference(segmentation, h, w):
    """What ``COCO.annToMask`` does."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


@pytest.mark.parametrize(
    "name, segmentation",
    [
        ("triangle", [[1, 1, 30, 2, 15, 25]]),
        ("two_rings", [[1, 1, 30, 2, 15, 25], [35, 35, 45, 35, 40, 39.5]]),
        ("float_coords", [[0.5, 0.5, 20.25, 0.75, 10.1, 18.9, 3.3, 12.0]]),
        ("touching_edge", [[0, 0, 49.99, 0, 49.99, 39.99, 0, 39.99]]),
    ],
)
@pytest.mark.parametrize("packed", [False, True])
def test_polygons_equal_pycocotools(name, segmentation, packed):
    rle, flags = to_rle(pack_polygons(segmentation) if packed else segmentation, 40, 50)
    assert rle["size"] == [40, 50]
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(_decode(rle), _reference(segmentation, 40, 50))
    assert flags == []


def test_uncompressed_rle_is_compressed_equal():
    mask = np.zeros((20, 30), np.uint8, order="F")
    mask[3:9, 4:20] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    seg = {"size": [20, 30], "counts": counts}
    rle, _ = to_rle(seg, 20, 30)
    np.testing.assert_array_equal(_decode(rle), mask)
    np.testing.assert_array_equal(_decode(rle), _reference(seg, 20, 30))


def test_compressed_rle_is_kept():
    mask = np.asfortranarray((np.arange(600).reshape(20, 30) % 7 == 0).astype(np.uint8))
    encoded = mask_utils.encode(mask)
    seg = {"size": [20, 30], "counts": encoded["counts"].decode()}
    rle, _ = to_rle(seg, 20, 30)
    assert rle["counts"] == seg["counts"]
    assert decode_rle_counts(seg["counts"])[0] >= 0


def test_short_ring_is_dropped_and_flagged():
    rle, flags = to_rle([[1, 1, 30, 2, 15, 25], [1, 2, 3, 4]], 40, 50)
    np.testing.assert_array_equal(_decode(rle), _reference([[1, 1, 30, 2, 15, 25]], 40, 50))
    assert flags == [FLAG_RING_DROPPED]


@pytest.mark.parametrize(
    "name, segmentation, reason",
    [
        ("only_short_rings", [[1, 2, 3, 4]], Reason.DEGENERATE_POLYGON),
        ("empty", [], Reason.DEGENERATE_POLYGON),
        ("odd_length", [[1, 1, 30, 2, 15, 25, 7]], Reason.ODD_POLYGON_LENGTH),
        ("nan", [[1, 1, 30, float("nan"), 15, 25]], Reason.NON_FINITE_VALUE),
        ("inf", [[1, 1, 30, float("inf"), 15, 25]], Reason.NON_FINITE_VALUE),
        ("huge_int", [[1, 1, 30, 10**400, 15, 25]], Reason.NON_FINITE_VALUE),
        ("strings", [["1", 1, 30, 2, 15, 25]], Reason.SCHEMA_VIOLATION),
        ("rle_sum", {"size": [40, 50], "counts": [10, 20]}, Reason.INVALID_RLE),
        ("rle_negative", {"size": [40, 50], "counts": [2010, -10]}, Reason.INVALID_RLE),
        ("rle_size", {"size": [41, 50], "counts": [2050]}, Reason.INVALID_RLE),
        ("rle_chars", {"size": [40, 50], "counts": "\x01\x02"}, Reason.INVALID_RLE),
        ("rle_truncated", {"size": [40, 50], "counts": "o"}, Reason.INVALID_RLE),
        ("not_geometry", 42, Reason.SCHEMA_VIOLATION),
    ],
)
@pytest.mark.parametrize("packed", [False, True])
def test_rejections(name, segmentation, reason, packed):
    """The same reason whether the reader packed the polygons or not."""
    with pytest.raises(RecordError) as info:
        to_rle(pack_polygons(segmentation) if packed else segmentation, 40, 50)
    assert info.value.reason == reason


def test_pack_polygons_packs_only_finite_numbers():
    assert [list(r) for r in pack_polygons([[1, 2.5, 3, 4, 5, 6]])] == [[1.0, 2.5, 3, 4, 5, 6]]
    for unchanged in (
        [[1, 2, float("nan"), 4, 5, 6]],
        [[1, 2, True, 4, 5, 6]],
        [[1, 2, 10**400, 4, 5, 6]],
        [[1, 2, 3, 4, 5, 6], "x"],
        {"size": [1, 1], "counts": [1]},
        [],
    ):
        assert pack_polygons(unchanged) is unchanged


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-5, 60, allow_nan=False), min_size=6, max_size=24).filter(
            lambda r: len(r) % 2 == 0
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_random_polygons_match_pycocotools(rings):
    rle, _ = to_rle(rings, 40, 50)
    np.testing.assert_array_equal(_decode(rle), _reference(rings, 40, 50))
    assert to_rle(pack_polygons(rings), 40, 50)[0] == rle


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=40).map(lambda b: np.frombuffer(b, np.uint8) % 2))
def test_rle_string_decoder_inverts_pycocotools(bits):
    h = len(bits)
    mask = np.asfortranarray(bits.reshape(h, 1).astype(np.uint8))
    encoded = mask_utils.encode(mask)
    counts = decode_rle_counts(encoded["counts"].decode())
    assert sum(counts) == h
    assert all(c >= 0 for c in counts)


# Any value a JSON segmentation can hold, weighted towards the shapes COCO uses.
_NUMBER = (
    st.floats(-10, 60)
    | st.integers(-10, 60)
    | st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, True, None, "7"])
)
_SEGMENTATION = st.one_of(
    st.lists(st.lists(_NUMBER, max_size=14), max_size=3),
    st.fixed_dictionaries(
        {
            "size": st.lists(st.integers(-2, 45), min_size=0, max_size=3),
            "counts": st.lists(st.integers(-5, 2100), max_size=6)
            | st.text(st.characters(min_codepoint=0, max_codepoint=130), max_size=12),
        }
    ),
    st.just({"size": [40, 50]}),
    st.integers(),
    st.text(max_size=5),
)
_REASONS = {
    Reason.DEGENERATE_POLYGON,
    Reason.ODD_POLYGON_LENGTH,
    Reason.NON_FINITE_VALUE,
    Reason.INVALID_RLE,
    Reason.SCHEMA_VIOLATION,
}


@settings(max_examples=400, deadline=None)
@given(_SEGMENTATION, st.booleans())
def test_any_segmentation_is_rasterized_as_pycocotools_does_or_rejected(segmentation, packed):
    """Never a crash, never another exception: pycocotools sees only what passed the checks,
    and then the mask is exactly its ``annToMask``."""
    value = pack_polygons(segmentation) if packed else segmentation
    try:
        rle, flags = to_rle(value, 40, 50)
    except RecordError as exc:
        assert exc.reason in _REASONS
        return
    if isinstance(segmentation, list):
        # Rings too short to be polygons are dropped, with a flag; the rest is pycocotools'.
        kept = [r for r in segmentation if len(r) >= 6]
        assert (len(kept) < len(segmentation)) == (FLAG_RING_DROPPED in flags)
        expected = _reference(kept, 40, 50)
    else:
        expected = _reference(segmentation, 40, 50)
    np.testing.assert_array_equal(_decode(rle), expected)
