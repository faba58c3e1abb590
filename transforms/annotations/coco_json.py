"""Pure core: stream the sections of a COCO JSON file and check each record's schema.

``iter_section`` walks one top-level array (``images``, ``annotations``, ``categories``) with
ijson's C backend, so memory stays bounded by one record whatever the file's size; the other
sections are skipped by the parser without building objects. Numbers come back as Python
floats and ints exactly as ``json.load`` gives them.

``check_*`` functions validate one record at the parse boundary and raise ``RecordError`` with
a reason code naming the field; nothing downstream sees an unchecked record.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import re
import threading
from collections.abc import Iterator
from typing import IO

import ijson
import numpy as np

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason

__all__ = [
    "MAX_DEPTH",
    "SECTIONS",
    "Flagged",
    "NestingError",
    "check_annotation",
    "check_caption",
    "check_category",
    "check_image",
    "check_keypoints_only",
    "finite_numbers",
    "iter_section",
]

SECTIONS = ("images", "annotations", "categories")


def _until_end_of(events, section: str):
    for event in events:
        yield event
        if event[1] == "end_array" and event[0] == section:
            return


# Deeper than any COCO record (a file's section, a record, a segmentation, a ring): a nesting
# this deep is an attack or a broken export. The parser's memory grows with the square of the
# depth (100,000 levels: tens of GB), so it is refused before the parser sees it.
MAX_DEPTH = 64


class NestingError(ValueError):
    """A JSON document nested deeper than ``MAX_DEPTH``: the whole file is refused."""


class _DepthGuard:
    """A read-only stream that refuses a document nested deeper than ``MAX_DEPTH`` while passing
    its bytes through: brackets are counted outside strings, a chunk at a time, in C
    (``bytes.replace``, ``bytes.translate``) and NumPy over the few bytes that are brackets or
    quotes."""

    _DROP = bytes(b for b in range(256) if b not in b'[]{}"')
    _STEP = np.zeros(256, np.int64)
    _STEP[ord("[")] = _STEP[ord("{")] = 1
    _STEP[ord("]")] = _STEP[ord("}")] = -1

    def __init__(self, raw, slow: bool = False):
        self._raw = raw
        self._slow = slow  # reading ``_Sanitized`` bytes: nothing left to give way to
        self._depth = 0
        self._in_string = False
        self._tail = b""  # a backslash ending the previous chunk: its escape continues here
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._check(data)
        self._offset += len(data)
        return data

    def _check(self, data: bytes) -> None:
        text = self._tail + data
        # An odd run of backslashes at the end escapes the next chunk's first byte.
        stripped = text.rstrip(b"\\")
        self._tail = b"\\" if (len(text) - len(stripped)) % 2 else b""
        if self._tail:
            text = text[:-1]
        if not self._slow and (b"\\ud" in text or b"\\uD" in text) and _LONE_SURROGATE.search(text):
            raise _Suspect("a lone surrogate escape")
        if b"\\" in text:  # escapes: an escaped backslash or quote is neither
            text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        marks = text.translate(None, self._DROP)
        if not marks:
            return
        codes = np.frombuffer(marks, np.uint8)
        quotes = codes == ord('"')
        # Parity of the quotes before each mark (this one excluded): odd is inside a string.
        inside = (np.cumsum(quotes) - quotes + self._in_string) % 2 == 1
        steps = np.where(inside | quotes, 0, self._STEP[codes])
        depths = self._depth + np.cumsum(steps)
        if depths.size and int(depths.max()) > MAX_DEPTH:
            raise NestingError(
                f"nested deeper than {MAX_DEPTH} levels (near byte {self._offset:,})"
            )
        self._depth = int(depths[-1])
        self._in_string = bool((int(quotes.sum()) + self._in_string) % 2)


# What JSON parsers accept but a record must not hold, read in a second, slower pass as marker
# strings, so the parser reads the rest of the document and only the records holding them are
# rejected: non-finite literals (``NaN``, ``Infinity``: not JSON, though Python's json writes
# them) become ``_NON_FINITE``; invalid UTF-8 and lone surrogate escapes (``"\ud800"``, which
# the parser would silently turn into ``?``) become ``_BAD_UNICODE`` inside their string.
_NON_FINITE = "\x00coco-beam:non-finite"
_BAD_UNICODE = "\x00coco-beam:invalid-unicode"
_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"|-?Infinity|NaN|"')
# In a string: an escaped backslash (kept), a surrogate pair (kept), a lone surrogate.
_SURROGATE = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
# A lone surrogate escape anywhere in a chunk (a pair cut at the chunk's end counts as one):
# the fast pass then gives way to the slower one.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\)(?:\\\\)*(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _escaped(marker: str) -> bytes:
    return marker.replace("\x00", "\\u0000").encode()


def _bad_utf8(error: UnicodeDecodeError):
    return _escaped(_BAD_UNICODE).decode(), error.end


codecs.register_error("coco-beam-invalid-unicode", _bad_utf8)


class _Suspect(ValueError):
    """The fast pass met what only the slower pass reads correctly."""


class _Sanitized:
    """A read-only stream rewriting what ``_NON_FINITE`` and ``_BAD_UNICODE`` mark. Used only
    for a document the fast pass could not read as it is: it is slower than the parser."""

    _NON_FINITE_STRING = b'"' + _escaped(_NON_FINITE) + b'"'

    def __init__(self, raw):
        self._raw = raw
        self._carry = b""

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # the parser's probe of the stream's type
            return b""
        while True:
            data = self._raw.read(size if size > 0 else 1 << 16)
            if not data:
                out, self._carry = self._carry, b""
                return self._sub(out)
            text = self._carry + data
            # Keep back the last 12 bytes (a literal, a surrogate pair or a UTF-8 character
            # cut short), a string running past this chunk, and never cut through a token.
            cut = max(0, len(text) - 12)
            for m in _LITERAL.finditer(text):
                if m.group() == b'"':  # a string running past this chunk
                    cut = min(cut, m.start())
                    break
                if m.start() < cut < m.end():
                    cut = m.start()
            out, self._carry = text[:cut], text[cut:]
            if out:
                return self._sub(out)

    def _sub(self, text: bytes) -> bytes:
        text = text.decode("utf-8", "coco-beam-invalid-unicode").encode("utf-8")

        def token(m):
            value = m.group()
            if value[:1] != b'"':
                return self._NON_FINITE_STRING
            if b"\\u" not in value:
                return value
            return _SURROGATE.sub(
                lambda e: e.group() if len(e.group()) != 6 else _escaped(_BAD_UNICODE), value
            )

        return _LITERAL.sub(token, text)


def _marker(value) -> str | None:
    """The reason for the first marker anywhere in ``value``, if any."""
    if isinstance(value, str):
        if _NON_FINITE in value:
            return Reason.NON_FINITE_VALUE
        return Reason.INVALID_UNICODE if _BAD_UNICODE in value else None
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return None
    for child in value:
        reason = _marker(child)
        if reason:
            return reason
    return None


_MARKER_MESSAGES = {
    Reason.NON_FINITE_VALUE: "NaN or Infinity where a number belongs",
    Reason.INVALID_UNICODE: "a string holds invalid UTF-8 or a lone surrogate",
}


class _Repeated(threading.local):
    """Per thread: the objects built with a repeated key, by id, until their record is read.
    The parser builds a chunk's records before the first is read, so a counter would not say
    whose they are."""

    def __init__(self):
        self.objects: dict[int, dict] = {}


_REPEATED = _Repeated()


class _Object(dict):
    """A JSON object that notes a key given twice (JSON allows it; a plain dict keeps the last
    silently)."""

    __slots__ = ()

    def __setitem__(self, key, value):
        if key in self:
            _REPEATED.objects[id(self)] = self
        dict.__setitem__(self, key, value)


def _holds_repeated(value, objects: dict) -> bool:
    if isinstance(value, dict):
        return id(value) in objects or any(_holds_repeated(v, objects) for v in value.values())
    if isinstance(value, list):
        return any(_holds_repeated(v, objects) for v in value)
    return False


def _forget(value, objects: dict) -> None:
    """Forgets every noted object inside ``value``: its record is flagged once."""
    if isinstance(value, dict):
        objects.pop(id(value), None)
        for child in value.values():
            _forget(child, objects)
    elif isinstance(value, list):
        for child in value:
            _forget(child, objects)


@dataclasses.dataclass(frozen=True)
class Flagged:
    """A record ``iter_section`` read but that cannot be used as it is: ``reason`` says why."""

    record: object
    reason: str
    message: str


def _items(stream, section: str):
    if section == "images":
        events = _until_end_of(ijson.parse(stream, use_float=True), section)
        return ijson.items(events, "images.item", map_type=_Object)
    return ijson.items(stream, f"{section}.item", use_float=True, map_type=_Object)


def iter_section(stream: IO[bytes], section: str) -> Iterator[object]:
    """Yields the items of the top-level array ``section`` of a JSON document, one at a time.

    The ``images`` list, which COCO's files put first, is read from the parser's events and
    parsing stops at its end: its readers skip the rest of the file (a fifth of the time of
    reading a 450 MB instances file to its end). The other sections are read to the end of
    the document, so a file that is not valid JSON is always found by one of its readers.

    A record that repeats a key, or holds a ``NaN`` or ``Infinity`` literal, comes back as a
    ``Flagged`` record (``duplicate_key``, ``non_finite_value``); the records around it are
    read as usual. A document nested deeper than ``MAX_DEPTH`` raises ``NestingError``; one
    that is not JSON for another reason raises the parser's error. Objects are plain dicts at
    the top level of each record (nested ones are a dict subclass).
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    yielded = 0
    try:
        for item in _checked(_items(_DepthGuard(stream), section)):
            yield item
            yielded += 1
        return
    except NestingError:
        raise
    except (ijson.JSONError, UnicodeDecodeError, _Suspect) as exc:
        first = exc
    # The C parser refuses NaN and Infinity literals: read the document again with them turned
    # into markers, skipping what was already yielded (parsing is deterministic). A document
    # that still does not parse is not JSON: the parser's first error is raised.
    stream.seek(0)
    try:
        items = _checked(_items(_DepthGuard(_Sanitized(stream), slow=True), section), markers=True)
        for i, item in enumerate(items):
            if i >= yielded:
                yield item
    except (ijson.JSONError, UnicodeDecodeError):
        if isinstance(first, _Suspect):
            raise
        raise first from None


def _checked(items, markers: bool = False):
    """Plain top-level dicts; records that repeat a key or (``markers``) hold a non-finite
    marker come back ``Flagged``. The records are walked only while a repeated key is noted
    and not yet placed (or, with ``markers``, always)."""
    repeated = _REPEATED.objects
    repeated.clear()  # one document is read at a time per thread
    for item in items:
        flagged = bool(repeated) and _holds_repeated(item, repeated)
        if flagged:
            _forget(item, repeated)
        if type(item) is _Object:
            item = dict(item)
        if flagged:
            yield Flagged(item, Reason.DUPLICATE_KEY, "an object repeats a key")
        elif markers and (reason := _marker(item)):
            yield Flagged(item, reason, _MARKER_MESSAGES[reason])
        else:
            yield item


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
    it is rasterized, before any C code sees it). A missing ``area`` is None: ``RasterizeMasks``
    fills in the mask's area, as pycocotools' ``loadRes`` does.
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
