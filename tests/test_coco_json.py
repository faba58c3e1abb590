"""Unit tests of streaming COCO JSON sections (``json_stream``, ``sanitize``) and record checks."""

import io
import json
import math

import ijson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason, parse_annotation_file_name
from coco_beam.transforms.annotations.checks import check_annotation, check_caption, check_image
from coco_beam.transforms.annotations.json_stream import (
    UTF8_BOM,
    Flagged,
    SectionError,
    iter_section,
    starts_with_bom,
)
from coco_beam.transforms.annotations.sanitize import MAX_DEPTH, DepthGuard, NestingError, Suspect


def test_iter_section_equals_json_load():
    doc = {
        "info": {"x": [1, 2, {"y": 3}]},
        "images": [{"id": 1, "file_name": "a.jpg", "width": 3, "height": 4}],
        "annotations": [{"id": 5, "bbox": [0.1, 1e-7, 3.333333333333333, 4], "area": 12.5}],
        "categories": [{"id": 1, "name": "person"}],
    }
    blob = json.dumps(doc).encode()
    for section in ("images", "annotations", "categories"):
        assert list(iter_section(io.BytesIO(blob), section)) == doc[section]


def test_images_are_read_in_any_section_order_and_parsing_stops_at_their_end():
    images = [{"id": 1, "file_name": "a.jpg", "width": 3, "height": 4}]
    late = json.dumps({"annotations": [{"id": 5, "segmentation": [[1.5] * 6]}], "images": images})
    assert list(iter_section(io.BytesIO(late.encode()), "images")) == images
    # What follows the images list is left to the other sections' readers, which do find it.
    broken = json.dumps({"images": images}).encode()[:-1] + b', "annotations": [{'
    assert list(iter_section(io.BytesIO(broken), "images")) == images
    with pytest.raises(ijson.JSONError):
        list(iter_section(io.BytesIO(broken), "annotations"))


class _Trickle(io.BytesIO):
    """Hands the parser a few bytes at a time: every token is cut at a chunk's edge somewhere."""

    def read(self, size=-1):
        return super().read(min(size, 5) if size and size > 0 else size)


def _section(blob: bytes, section: str, trickle: bool = False) -> list:
    return list(iter_section((_Trickle if trickle else io.BytesIO)(blob), section))


@pytest.mark.parametrize("trickle", [False, True])
def test_non_finite_literals_and_repeated_keys_flag_their_record_only(trickle):
    blob = (
        b'{"images": [{"id": 1, "width": NaN}, {"id": 2, "id": 3}, {"id": 4, "c": "NaN Infinity"}],'
        b' "annotations": [{"id": 1, "bbox": [1, 2, Infinity, 4]},'
        b' {"id": 2, "x": {"k": 1, "k": 2}},'
        b' {"id": 3, "area": -Infinity}, {"id": 4, "c": "[{\\"\\\\}]", "area": 2.5}],'
        b' "categories": [{"id": 1, "name": "a"}]}'
    )
    images = _section(blob, "images", trickle)
    assert [(type(r).__name__, getattr(r, "reason", None)) for r in images] == [
        ("Flagged", Reason.NON_FINITE_VALUE),
        ("Flagged", Reason.DUPLICATE_KEY),
        ("dict", None),
    ]
    assert images[2] == {"id": 4, "c": "NaN Infinity"}  # strings are left alone
    anns = _section(blob, "annotations", trickle)
    assert [getattr(r, "reason", None) for r in anns] == [
        Reason.NON_FINITE_VALUE,
        Reason.DUPLICATE_KEY,
        Reason.NON_FINITE_VALUE,
        None,
    ]
    assert anns[3] == {"id": 4, "c": '[{"\\}]', "area": 2.5}
    assert _section(blob, "categories", trickle) == [{"id": 1, "name": "a"}]


@pytest.mark.parametrize("trickle", [False, True])
def test_invalid_unicode_flags_its_record_and_nothing_is_replaced_silently(trickle):
    blob = (
        b'{"annotations": [{"id": 1, "caption": "lone \\ud800 high"},'
        b' {"id": 2, "caption": "pair \\ud83d\\ude00, text \\\\ud800, \\u00e9"},'
        b' {"id": 3, "caption": "bytes \xff\xfe"}, {"id": 4, "caption": "\xc3\xa9t\xc3\xa9"},'
        b' {"id": 5, "caption": "low \\u00e9\\udc00"}, {"id": 6, "caption": "ok"}]}'
    )
    got = _section(blob, "annotations", trickle)
    assert [getattr(r, "reason", None) for r in got] == [
        Reason.INVALID_UNICODE,
        None,
        Reason.INVALID_UNICODE,
        None,
        Reason.INVALID_UNICODE,
        None,
    ]
    assert got[1]["caption"] == "pair \U0001f600, text \\ud800, \u00e9"
    assert got[3]["caption"] == "\u00e9t\u00e9"


def test_a_document_that_is_not_json_still_fails_after_the_non_finite_pass():
    with pytest.raises(ijson.JSONError):
        _section(b'{"annotations": [{"a": NaN}, {"b": 1,}]}', "annotations")


@pytest.mark.parametrize("trickle", [False, True])
def test_deep_nesting_fails_the_file_before_the_parser_sees_it(trickle):
    deep = b'{"annotations": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    with pytest.raises(NestingError, match=f"deeper than {MAX_DEPTH}"):
        _section(deep, "annotations", trickle)
    # Brackets inside strings (escaped quotes included) do not count.
    text = json.dumps({"annotations": [{"c": '\\"' + "[" * 500 + '"'}]}).encode()
    assert _section(text, "annotations", trickle) == json.loads(text)["annotations"]
    nested = json.loads(b"[" * (MAX_DEPTH - 3) + b"]" * (MAX_DEPTH - 3))
    ok = json.dumps({"annotations": [nested]}).encode()
    assert _section(ok, "annotations", trickle) == [nested]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_JSON, max_size=5), st.booleans())
def test_any_json_records_stream_as_json_load_reads_them(records, trickle):
    blob = json.dumps({"annotations": records}).encode()
    got = _section(blob, "annotations", trickle)
    assert not any(isinstance(r, Flagged) for r in got)
    assert got == json.loads(blob)["annotations"]


def test_iter_section_missing_section_is_empty():
    assert list(iter_section(io.BytesIO(b'{"images": []}'), "annotations")) == []


_ANN = {
    "id": 1,
    "image_id": 2,
    "category_id": 3,
    "bbox": [1, 2, 3, 4],
    "area": 5.0,
    "iscrowd": 0,
    "segmentation": [[1, 1, 5, 1, 3, 4]],
}


@pytest.mark.parametrize(
    "name, change, reason",
    [
        ("string_id", {"id": "1"}, Reason.SCHEMA_VIOLATION),
        ("bool_id", {"id": True}, Reason.SCHEMA_VIOLATION),
        ("no_bbox", {"bbox": None}, Reason.INVALID_BBOX),
        ("short_bbox", {"bbox": [1, 2, 3]}, Reason.INVALID_BBOX),
        ("negative_bbox", {"bbox": [1, 2, -3, 4]}, Reason.INVALID_BBOX),
        ("nan_bbox", {"bbox": [1, 2, math.nan, 4]}, Reason.NON_FINITE_VALUE),
        ("crowd_2", {"iscrowd": 2}, Reason.SCHEMA_VIOLATION),
        ("nan_area", {"area": math.inf}, Reason.NON_FINITE_VALUE),
        ("keypoints_len", {"keypoints": [1, 2]}, Reason.INVALID_KEYPOINTS),
        ("keypoints_vis", {"keypoints": [1, 2, 3]}, Reason.INVALID_KEYPOINTS),
    ],
)
def test_annotation_rejections(name, change, reason):
    record = dict(_ANN, **change)
    if change.get("bbox", 0) is None:
        del record["bbox"]
        reason = Reason.SCHEMA_VIOLATION
    with pytest.raises(RecordError) as info:
        check_annotation(record, "instances")
    assert info.value.reason == reason


def test_annotation_keypoints_counted():
    out = check_annotation(dict(_ANN, keypoints=[1, 2, 2, 0, 0, 0, 5, 6, 1]), "person_keypoints")
    assert out["keypoints"] == [1, 2, 2, 0, 0, 0, 5, 6, 1]
    assert out["num_keypoints"] == 2


def test_image_and_caption_checks():
    assert check_image({"id": 1, "file_name": "a.jpg", "width": 2, "height": 3})["width"] == 2
    with pytest.raises(RecordError):
        check_image({"id": 1, "file_name": "a.jpg", "width": 0, "height": 3})
    with pytest.raises(RecordError) as info:
        check_caption({"id": 1, "image_id": 2, "caption": "bad \ud800 surrogate"})
    assert info.value.reason == Reason.INVALID_UNICODE


@pytest.mark.parametrize(
    "name, expected",
    [
        ("annotations/instances_val2017.json", ("instances", "val2017")),
        ("person_keypoints_train2017.json", ("person_keypoints", "train2017")),
        ("captions_val2014.json", ("captions", "val2014")),
        ("image_info_test-dev2017.json", ("image_info", "test-dev2017")),
        ("exports/train.json", ("instances", "train")),
    ],
)
def test_annotation_file_names(name, expected):
    assert parse_annotation_file_name(name) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.integers(-3, 5)
        | st.floats(-5, 5)
        | st.sampled_from([float("nan"), float("inf"), True, None, "2", 10**400]),
        max_size=10,
    )
    | st.integers()
    | st.text(max_size=3),
    st.one_of(st.none(), st.integers(-1, 5), st.text(max_size=2)),
)
def test_any_keypoint_array_is_kept_as_given_or_rejected(keypoints, num):
    record = dict(_ANN, keypoints=keypoints)
    if num is not None:
        record["num_keypoints"] = num
    try:
        out = check_annotation(record, "person_keypoints")
    except RecordError as exc:
        assert exc.reason in {
            Reason.INVALID_KEYPOINTS,
            Reason.NON_FINITE_VALUE,
            Reason.SCHEMA_VIOLATION,
        }
        return
    assert out["keypoints"] == [float(v) for v in keypoints]
    assert len(keypoints) % 3 == 0 and set(keypoints[2::3]) <= {0, 1, 2}
    visible = sum(1 for v in keypoints[2::3] if v > 0)
    assert out["num_keypoints"] == (visible if num is None else num)


@pytest.mark.parametrize("trickle", [False, True])
def test_a_byte_order_mark_is_skipped_on_both_passes(trickle):
    """Read as it is, and again by the slower pass a ``NaN`` sends it to."""
    doc = b'{"images": [{"id": 1}, {"id": 2, "w": NaN}], "categories": [{"id": 3}]}'
    images = _section(UTF8_BOM + doc, "images", trickle)
    assert images[0] == {"id": 1} and images[1].reason == Reason.NON_FINITE_VALUE
    assert _section(UTF8_BOM + doc, "categories", trickle) == [{"id": 3}]
    assert starts_with_bom(io.BytesIO(UTF8_BOM + doc)) and not starts_with_bom(io.BytesIO(doc))
    assert not starts_with_bom(io.BytesIO(b"{}"))


@pytest.mark.parametrize(
    "doc, message",
    [
        pytest.param(
            b'{"images": null}', "'images' must be a list of records, got null", id="null"
        ),
        pytest.param(b'{"images": {"id": 1}}', "got an object", id="object"),
        pytest.param(b'{"x": [], "images": "a"}', "got a string", id="string"),
        pytest.param(b'{"images": NaN}', "got a string", id="non-finite"),
        pytest.param(b'[{"id": 1}]', "the document is a list, not an object", id="a-list"),
    ],
)
def test_a_section_of_the_wrong_type_raises(doc, message):
    with pytest.raises(SectionError, match=message):
        _section(doc, "images")


def test_a_missing_or_empty_section_holds_no_records():
    assert _section(b'{"images": []}', "images") == []
    assert _section(b'{"annotations": [{"id": 1}]}', "images") == []
    assert _section(b'{"images": [], "annotations": null}', "images") == []


@pytest.mark.parametrize("size", range(1, 16))
def test_surrogate_escapes_cut_at_any_chunk_edge(size):
    """A lone surrogate is found wherever a chunk ends, and a pair never sends the document to
    the slower pass."""

    class Chunks(io.BytesIO):
        def read(self, n=-1):
            return super().read(min(n, size) if n and n > 0 else n)

    def read_all(blob: bytes) -> None:
        guard = DepthGuard(Chunks(blob))
        while guard.read(64):
            pass

    for pad in range(size):
        read_all(b'{"a": "' + b"x" * pad + b'\\ud83d\\ude00 \\\\ud800 \\u00e9"}')
        with pytest.raises(Suspect):
            read_all(b'{"a": "' + b"x" * pad + b'\\ud83d\\ud800"}')
        with pytest.raises(Suspect):
            read_all(b'{"a": "' + b"x" * pad + b'\\\\\\udc00"}')
        with pytest.raises(Suspect):
            read_all(b'{"a": "' + b"x" * pad + b"\\ud83d")
