"""Unit tests of streaming and record checks."""

import io
import json
import math

import ijson
import pytest

from schemas.records import Reason, parse_annotation_file_name
from transforms.coco_json import (
    RecordError,
    check_annotation,
    check_caption,
    check_image,
    iter_section,
)


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
