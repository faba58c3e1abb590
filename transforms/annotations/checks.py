"""Pure core: check one COCO record's schema at the parse boundary.

Each ``check_*`` function takes one record as ``json_stream.iter_section`` yields it (any JSON
value: a record that is not an object is a ``schema_violation`` like any other) and returns the
checked fields, or raises ``RecordError`` with a reason code naming the field. Nothing
downstream sees an unchecked record. ``finite_numbers`` and ``safe_relative_path`` are the
checks the rasterizer and the join share with them.
"""

from __future__ import annotations

import math

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason

__all__ = [
    "check_annotation",
    "check_caption",
    "check_category",
    "check_image",
    "check_keypoints_only",
    "check_panoptic",
    "finite_numbers",
    "safe_relative_path",
]

_NUMBER_TYPES = frozenset({int, float})


def finite_numbers(values: list, what: str) -> bool:
    """True when every value is a finite int or float; raises ``schema_violation`` when one is
    not a number (a bool, a string, None). Loops at C speed: polygons hold thousands of values.
    """
    if not set(map(type, values)) <= _NUMBER_TYPES:
        raise RecordError(Reason.SCHEMA_VIOLATION, f"{what} must hold numbers only")
    try:
        # fsum is exact: a NaN or an infinity anywhere makes the sum non-finite.
        return math.isfinite(math.fsum(values))
    except ValueError:  # -inf + inf
        return False
    except OverflowError:  # finite values whose exact sum overflows: check one by one
        try:
            return all(math.isfinite(v) for v in values)
        except OverflowError:  # an integer too large for a double is not a finite double
            return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_int(record: dict, field: str, *, minimum: int | None = None) -> int:
    if not isinstance(record, dict):
        raise RecordError(Reason.SCHEMA_VIOLATION, "record is not a JSON object")
    if field not in record:
        raise RecordError(Reason.SCHEMA_VIOLATION, f"missing required key {field!r}")
    value = record[field]
    if not _is_int(value):
        raise RecordError(
            Reason.SCHEMA_VIOLATION, f"{field!r} must be an integer, got {value!r:.40}"
        )
    if minimum is not None and value < minimum:
        raise RecordError(Reason.SCHEMA_VIOLATION, f"{field!r} must be >= {minimum}, got {value}")
    return value


def _check_string(value, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(Reason.SCHEMA_VIOLATION, f"{field!r} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(
            Reason.INVALID_UNICODE, f"{field!r} is not valid Unicode: {exc.reason}"
        ) from None
    return value


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise RecordError(Reason.NON_FINITE_VALUE, f"{field!r} holds a non-finite number")
    return value


def safe_relative_path(file_name: str) -> bool:
    """True when ``file_name`` is a plain relative path that stays under the images root."""
    if not file_name or file_name.startswith("/") or "\\" in file_name or ":" in file_name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in file_name):
        return False
    return all(part not in ("", ".", "..") for part in file_name.split("/"))


def check_image(record) -> dict:
    """An ``images`` entry: ``id``, ``file_name``, positive ``width`` and ``height``."""
    image_id = _require_int(record, "id")
    width = _require_int(record, "width", minimum=1)
    height = _require_int(record, "height", minimum=1)
    if "file_name" not in record:
        raise RecordError(Reason.SCHEMA_VIOLATION, "missing required key 'file_name'")
    file_name = _check_string(record["file_name"], "file_name")
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def check_category(record) -> dict:
    """A ``categories`` entry: ``id`` and ``name``; ``supercategory`` and ``keypoints`` optional."""
    cat_id = _require_int(record, "id")
    name = _check_string(record.get("name"), "name")
    supercategory = record.get("supercategory")
    if supercategory is not None:
        _check_string(supercategory, "supercategory")
    keypoints = record.get("keypoints")
    if keypoints is not None:
        if not isinstance(keypoints, list):
            raise RecordError(Reason.SCHEMA_VIOLATION, "'keypoints' must be a list of names")
        keypoints = [_check_string(k, "keypoints") for k in keypoints]
    isthing = record.get("isthing")
    if isthing is not None and isthing not in (0, 1):
        raise RecordError(Reason.SCHEMA_VIOLATION, f"'isthing' must be 0 or 1, got {isthing!r:.20}")
    return {
        "id": cat_id,
        "name": name,
        "supercategory": supercategory,
        "keypoints": keypoints,
        "isthing": None if isthing is None else bool(isthing),
    }


def _check_bbox(value) -> list[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise RecordError(Reason.INVALID_BBOX, "'bbox' must be 4 numbers [x, y, w, h]")
    for v in value:
        if not math.isfinite(v):
            raise RecordError(Reason.NON_FINITE_VALUE, "'bbox' holds a non-finite number")
    if value[2] < 0 or value[3] < 0:
        raise RecordError(Reason.INVALID_BBOX, f"'bbox' has a negative size {value[2:]}")
    return [float(v) for v in value]


def _check_keypoints(record: dict) -> tuple[list[float], int]:
    keypoints = record["keypoints"]
    if not isinstance(keypoints, list) or len(keypoints) % 3:
        raise RecordError(Reason.INVALID_KEYPOINTS, "'keypoints' must be a list of 3k numbers")
    try:
        finite = finite_numbers(keypoints, "'keypoints'")
    except RecordError as exc:
        raise RecordError(Reason.INVALID_KEYPOINTS, str(exc)) from None
    if not finite:
        raise RecordError(Reason.NON_FINITE_VALUE, "'keypoints' holds a non-finite number")
    if not set(keypoints[2::3]) <= {0, 1, 2}:
        raise RecordError(Reason.INVALID_KEYPOINTS, "a keypoint visibility is not 0, 1 or 2")
    num = record.get("num_keypoints")
    if num is None:
        num = sum(1 for v in keypoints[2::3] if v > 0)
    elif not _is_int(num):
        raise RecordError(Reason.SCHEMA_VIOLATION, "'num_keypoints' must be an integer")
    return [float(v) for v in keypoints], num


def _plain(value):
    return dict(value) if isinstance(value, dict) else value


def check_annotation(record, family: str) -> dict:
    """An ``annotations`` entry of the instances or person_keypoints family.

    Returns the checked fields; ``segmentation`` is passed on unchanged (it is validated where
    it is rasterized, in the shard writer, before any C code sees it). A missing ``area`` is
    None: rasterizing (``images.masks.rasterize_plan``) fills in the mask's area, as
    pycocotools' ``loadRes`` does.
    """
    ann_id = _require_int(record, "id")
    image_id = _require_int(record, "image_id")
    category_id = _require_int(record, "category_id")
    iscrowd = record.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
        raise RecordError(Reason.SCHEMA_VIOLATION, f"'iscrowd' must be 0 or 1, got {iscrowd!r:.20}")
    if "segmentation" not in record:
        raise RecordError(Reason.SCHEMA_VIOLATION, "missing required key 'segmentation'")
    if "bbox" not in record:
        raise RecordError(Reason.SCHEMA_VIOLATION, "missing required key 'bbox'")
    bbox = _check_bbox(record["bbox"])
    area = record.get("area")
    if area is not None:  # exports of other tools omit it; it is then the mask's area
        if not _is_number(area):
            raise RecordError(Reason.SCHEMA_VIOLATION, "'area' must be a number")
        area = float(_finite(area, "area"))
    out = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": area,
        "iscrowd": iscrowd,
        # An RLE object becomes a plain dict: pycocotools accepts nothing else.
        "segmentation": _plain(record["segmentation"]),
        "keypoints": None,
        "num_keypoints": None,
    }
    if family == "person_keypoints" or "keypoints" in record:
        if "keypoints" not in record:
            raise RecordError(Reason.INVALID_KEYPOINTS, "missing 'keypoints'")
        out["keypoints"], out["num_keypoints"] = _check_keypoints(record)
    return out


def check_keypoints_only(record) -> dict:
    """A ``person_keypoints`` entry whose instance also comes from an instances file: only its
    ids and keypoints are kept (its geometry repeats the instance's and is not carried twice)."""
    ann_id = _require_int(record, "id")
    image_id = _require_int(record, "image_id")
    category_id = _require_int(record, "category_id")
    if "keypoints" not in record:
        raise RecordError(Reason.INVALID_KEYPOINTS, "missing 'keypoints'")
    keypoints, num = _check_keypoints(record)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "keypoints": keypoints,
        "num_keypoints": num,
    }


def check_panoptic(record) -> dict:
    """An ``annotations`` entry of a panoptic file: ``image_id``, the PNG's ``file_name`` (a
    plain relative path, else ``unsafe_path``) and ``segments_info``, each segment with an
    ``id`` (above 0: 0 is void), ``category_id``, ``iscrowd``, ``bbox`` and ``area``; segment
    ids unique."""
    image_id = _require_int(record, "image_id")
    if "file_name" not in record:
        raise RecordError(Reason.SCHEMA_VIOLATION, "missing required key 'file_name'")
    file_name = _check_string(record["file_name"], "file_name")
    if not safe_relative_path(file_name):
        raise RecordError(Reason.UNSAFE_PATH, "file_name is not a plain relative path")
    segments_info = record.get("segments_info")
    if not isinstance(segments_info, list):
        raise RecordError(Reason.SCHEMA_VIOLATION, "'segments_info' must be a list")
    segments = []
    for seg in segments_info:
        if not isinstance(seg, dict):
            raise RecordError(Reason.SCHEMA_VIOLATION, "a segments_info entry is not an object")
        iscrowd = seg.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            raise RecordError(Reason.SCHEMA_VIOLATION, "a segment's 'iscrowd' must be 0 or 1")
        if "bbox" not in seg:
            raise RecordError(Reason.SCHEMA_VIOLATION, "a segment has no 'bbox'")
        area = seg.get("area")
        if not _is_int(area) or area < 0:
            raise RecordError(Reason.SCHEMA_VIOLATION, "a segment's 'area' must be a count >= 0")
        segments.append(
            {
                "id": _require_int(seg, "id", minimum=1),
                "category_id": _require_int(seg, "category_id"),
                "iscrowd": iscrowd,
                "bbox": _check_bbox(seg["bbox"]),
                "area": area,
            }
        )
    if len({s["id"] for s in segments}) != len(segments):
        raise RecordError(Reason.PANOPTIC_MISMATCH, "a segment id is listed twice")
    return {"image_id": image_id, "file_name": file_name, "segments": segments}


def check_caption(record) -> dict:
    """An ``annotations`` entry of the captions family: ``id``, ``image_id``, ``caption``."""
    cap_id = _require_int(record, "id")
    image_id = _require_int(record, "image_id")
    caption = _check_string(record.get("caption"), "caption")
    return {"id": cap_id, "image_id": image_id, "caption": caption}
