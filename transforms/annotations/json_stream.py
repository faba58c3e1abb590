"""Pure core: stream the sections of a COCO JSON document, one record at a time.

``iter_section`` walks one top-level array (``images``, ``annotations``, ``categories``) with
ijson's C backend, so memory stays bounded by one record whatever the file's size; the other
sections are skipped by the parser without building objects. Numbers come back as Python
floats and ints exactly as ``json.load`` gives them.

Guarantees, per document: a UTF-8 byte-order mark before it is skipped (``starts_with_bom``
says whether there was one); a section that is not a list, or a document that is not an
object, raises ``SectionError``; nesting deeper than ``MAX_DEPTH`` raises ``NestingError``
before the parser sees it; a record holding what JSON parsers accept but a record must not
(``NaN``, ``Infinity``, invalid Unicode, a key given twice) comes back ``Flagged`` with its
reason, and the records around it are read as usual. Checking each record's fields is
``checks``' job.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import IO

import ijson

from coco_beam.schemas.records import Reason
from coco_beam.transforms.annotations.sanitize import (
    MARKER_MESSAGES,
    DepthGuard,
    NestingError,
    Sanitized,
    Suspect,
    marker_reason,
)

__all__ = [
    "FLAG_UTF8_BOM",
    "SECTIONS",
    "UTF8_BOM",
    "Flagged",
    "SectionError",
    "iter_section",
    "starts_with_bom",
]

SECTIONS = ("images", "annotations", "categories")

# Some Windows tools write one before a UTF-8 document; JSON (RFC 8259) lets a parser skip it,
# and ijson's C parser refuses it ("lexical error: invalid char in json text").
UTF8_BOM = b"\xef\xbb\xbf"
# The name the manifest flags such a file with.
FLAG_UTF8_BOM = "utf8_bom"


def _until_end_of(events, section: str):
    for event in events:
        yield event
        if event[1] == "end_array" and event[0] == section:
            return


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


class SectionError(ValueError):
    """A section that is not a list of records (``"images": null`` from a broken export), or a
    document that is not a JSON object: the whole file is refused, naming the section."""


def _read_exactly(raw, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def starts_with_bom(stream: IO[bytes]) -> bool:
    """True when ``stream`` (read from its start) begins with a UTF-8 byte-order mark."""
    return _read_exactly(stream, len(UTF8_BOM)) == UTF8_BOM


class _Document:
    """A read-only stream of a JSON document without the byte-order mark it may start with;
    ``seek(0)`` goes back to the document's first byte."""

    def __init__(self, raw):
        self._raw = raw
        self._head = b""  # bytes read to look for the mark that belong to the document
        self._start()

    def _start(self) -> None:
        head = _read_exactly(self._raw, len(UTF8_BOM))
        self._head = b"" if head == UTF8_BOM else head

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # the parser's probe of the stream's type
            return b""
        if not self._head:
            return self._raw.read(size)
        head, self._head = self._head, b""
        if 0 < size < len(head):
            head, self._head = head[:size], head[size:]
        return head  # shorter than asked is fine: only an empty read is the end

    def seek(self, offset: int) -> None:
        if offset != 0:
            raise ValueError("a document is only read again from its start")
        self._raw.seek(0)
        self._start()


_JSON_TYPES = {
    "start_array": "a list",
    "start_map": "an object",
    "null": "null",
    "boolean": "a boolean",
    "number": "a number",
    "integer": "a number",
    "double": "a number",
    "string": "a string",
}


def _require_list(stream, section: str) -> None:
    """Raises ``SectionError`` unless the document is an object whose ``section``, if given, is
    a list. Read only when a section held no record: parsing stops at the section's value, and
    goes through the slower pass so that anything the first pass read is read here too."""
    stream.seek(0)
    events = ijson.parse(DepthGuard(Sanitized(stream), slow=True), use_float=True)
    for prefix, event, _ in events:
        if prefix == "" and event != "map_key":
            if event == "start_map":
                continue
            if event == "end_map":
                return  # the section is not there: there is nothing to read
            raise SectionError(
                f"the document is {_JSON_TYPES.get(event, event)}, not an object with "
                f"a '{section}' list"
            )
        if prefix == section:
            if event != "start_array":
                raise SectionError(
                    f"'{section}' must be a list of records, got {_JSON_TYPES.get(event, event)}"
                )
            return


def iter_section(stream: IO[bytes], section: str) -> Iterator[object]:
    """Yields the items of the top-level array ``section`` of a JSON document, one at a time.

    The ``images`` list, which COCO's files put first, is read from the parser's events and
    parsing stops at its end: its readers skip the rest of the file (a fifth of the time of
    reading a 450 MB instances file to its end). The other sections are read to the end of
    the document, so a file that is not valid JSON is always found by one of its readers.

    A UTF-8 byte-order mark before the document is skipped. A record that repeats a key, or
    holds a ``NaN`` or ``Infinity`` literal, comes back as a ``Flagged`` record
    (``duplicate_key``, ``non_finite_value``); the records around it are read as usual. A
    section that is there but not a list, or a document that is not an object, raises
    ``SectionError`` (a missing section holds no records); a document nested deeper than
    ``MAX_DEPTH`` raises ``NestingError``; one that is not JSON for another reason raises the
    parser's error. Objects are plain dicts at the top level of each record (nested ones are
    a dict subclass). ``stream`` must be seekable to its start.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    document = _Document(stream)
    yielded = 0
    for item in _read(document, section):
        yield item
        yielded += 1
    if not yielded:
        _require_list(document, section)


def _read(stream: _Document, section: str) -> Iterator[object]:
    yielded = 0
    try:
        for item in _checked(_items(DepthGuard(stream), section)):
            yield item
            yielded += 1
        return
    except NestingError:
        raise
    except (ijson.JSONError, UnicodeDecodeError, Suspect) as exc:
        first = exc
    # The C parser refuses NaN and Infinity literals: read the document again with them turned
    # into markers, skipping what was already yielded (parsing is deterministic). A document
    # that still does not parse is not JSON: the parser's first error is raised.
    stream.seek(0)
    try:
        items = _checked(_items(DepthGuard(Sanitized(stream), slow=True), section), markers=True)
        for i, item in enumerate(items):
            if i >= yielded:
                yield item
    except (ijson.JSONError, UnicodeDecodeError):
        if isinstance(first, Suspect):
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
        elif markers and (reason := marker_reason(item)):
            yield Flagged(item, reason, MARKER_MESSAGES[reason])
        else:
            yield item
