"""Unit tests of the per-image join."""

from coco_beam.schemas.records import Reason
from coco_beam.transforms.annotations.join import join_image

CATS = {1: {"id": 1, "name": "person", "keypoints": ["a", "b"]}, 3: {"id": 3, "name": "car"}}
IMG = {"id": 9, "file_name": "9.jpg", "width": 50, "height": 40}


def _ann(ann_id, category=3, **extra):
    ann = {
        "id": ann_id,
        "image_id": 9,
        "category_id": category,
        "bbox": [1.0, 1.0, 5.0, 5.0],
        "area": 20.0,
        "iscrowd": 0,
        "segmentation": [[1, 1, 6, 1, 6, 6]],
        "keypoints": None,
        "num_keypoints": None,
    }
    ann.update(extra)
    return ann


def _values(*records):
    return [(tag, family, f"{family}.json", rec) for tag, family, rec in records]


def _join(values, dups=frozenset()):
    return join_image("val", 9, values, CATS, "/images", dups)


def test_families_merge_into_one_instance():
    plan, rejected, read = _join(
        _values(
            ("image", "instances", IMG),
            ("annotation", "instances", _ann(1, category=1)),
            (
                "annotation",
                "person_keypoints",
                _ann(1, category=1, keypoints=[1, 2, 2, 0, 0, 0], num_keypoints=1),
            ),
            ("annotation", "instances", _ann(2)),
            ("caption", "captions", {"id": 7, "image_id": 9, "caption": "a car"}),
        )
    )
    assert rejected == []
    assert read == {"image": 1, "annotation": 2, "caption": 1}
    assert [a["id"] for a in plan.annotations] == [1, 2]
    assert plan.annotations[0]["keypoints"] == [1, 2, 2, 0, 0, 0]
    assert plan.annotations[1]["keypoints"] is None
    assert plan.captions == [{"id": 7, "caption": "a car"}]
    assert plan.path == "/images/9.jpg"


def test_duplicates_reject_every_copy():
    plan, rejected, read = _join(
        _values(
            ("image", "instances", IMG),
            ("annotation", "instances", _ann(1)),
            ("annotation", "instances", _ann(1)),
            ("annotation", "instances", _ann(2)),
            ("annotation", "instances", _ann(3)),
        ),
        dups=frozenset({3}),
    )
    assert [a["id"] for a in plan.annotations] == [2]
    assert sorted((r.key, r.reason) for r in rejected) == [
        ("1", Reason.DUPLICATE_ANNOTATION_ID),
        ("1", Reason.DUPLICATE_ANNOTATION_ID),
        ("3", Reason.DUPLICATE_ANNOTATION_ID),
    ]
    assert read["annotation"] == 4


def test_orphans_and_unknown_categories():
    plan, rejected, read = _join(
        _values(
            ("annotation", "instances", _ann(1)),
            ("caption", "captions", {"id": 7, "image_id": 9, "caption": "x"}),
        )
    )
    assert plan is None
    assert {(r.kind, r.reason) for r in rejected} == {
        ("annotation", Reason.ORPHAN_ANNOTATION),
        ("caption", Reason.ORPHAN_ANNOTATION),
    }
    assert read == {"annotation": 1, "caption": 1}
    plan, rejected, _ = _join(
        _values(("image", "instances", IMG), ("annotation", "instances", _ann(1, category=99)))
    )
    assert plan.annotations == [] and rejected[0].reason == Reason.UNKNOWN_CATEGORY


def test_keypoints_without_their_instance_are_rejected():
    slim = {
        "id": 1,
        "image_id": 9,
        "category_id": 1,
        "keypoints": [1, 2, 2, 0, 0, 0],
        "num_keypoints": 1,
    }
    plan, rejected, read = _join(
        _values(("image", "instances", IMG), ("annotation", "person_keypoints", slim))
    )
    assert plan.annotations == []
    assert [(r.key, r.reason) for r in rejected] == [("1", Reason.SCHEMA_VIOLATION)]
    assert read["annotation"] == 1


def test_keypoints_length_follows_category():
    _, rejected, _ = _join(
        _values(
            ("image", "instances", IMG),
            (
                "annotation",
                "person_keypoints",
                _ann(1, category=1, keypoints=[1, 2, 2], num_keypoints=1),
            ),
        )
    )
    assert rejected[0].reason == Reason.INVALID_KEYPOINTS


def test_bad_images_take_their_records_along():
    for image_records, reason in [
        ([("image", "instances", IMG), ("image", "instances", IMG)], Reason.DUPLICATE_IMAGE_ID),
        ([("image", "instances", dict(IMG, file_name="../x.jpg"))], Reason.UNSAFE_PATH),
    ]:
        plan, rejected, read = _join(_values(*image_records, ("annotation", "instances", _ann(1))))
        assert plan is None
        assert [(r.kind, r.reason) for r in rejected] == [
            ("image", reason),
            ("annotation", Reason.IMAGE_REJECTED),
        ]
        assert read == {"image": 1, "annotation": 1, "caption": 0}


def test_records_arrive_in_any_order():
    values = _values(
        ("caption", "captions", {"id": 8, "image_id": 9, "caption": "b"}),
        ("annotation", "instances", _ann(3)),
        ("image", "instances", IMG),
        ("caption", "captions", {"id": 7, "image_id": 9, "caption": "a"}),
        ("annotation", "instances", _ann(2)),
    )
    first, _, _ = _join(values)
    second, _, _ = _join(list(reversed(values)))
    assert first == second
    assert [a["id"] for a in first.annotations] == [2, 3]
    assert [c["id"] for c in first.captions] == [7, 8]
