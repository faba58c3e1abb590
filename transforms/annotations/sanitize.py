"""Pure core: byte-level passes over a JSON document, before and around the parser.

``DepthGuard`` passes a document's bytes through and refuses one nested deeper than
``MAX_DEPTH`` (``NestingError``) before the parser builds anything; it also notices what only
the slower pass reads correctly (``Suspect``). ``Sanitized`` is that slower pass: it rewrites
what JSON parsers accept (or refuse) but a record must not hold (``NaN``, ``Infinity``,
invalid UTF-8, lone surrogate escapes) into marker strings, so the parser reads the rest of the
document and ``marker_reason`` finds the records holding them. Nothing here knows COCO.
"""

from __future__ import annotations

import codecs
import re

import numpy as np

from coco_beam.schemas.records import Reason

__all__ = [
    "MARKER_MESSAGES",
    "MAX_DEPTH",
    "DepthGuard",
    "NestingError",
    "Sanitized",
    "Suspect",
    "marker_reason",
]


# Deeper than any COCO record (a file's section, a record, a segmentation, a ring): a nesting
# this deep is an attack or a broken export. The parser's memory grows with the square of the
# depth (100,000 levels: tens of GB), so it is refused before the parser sees it.
MAX_DEPTH = 64


class NestingError(ValueError):
    """A JSON document nested deeper than ``MAX_DEPTH``: the whole file is refused."""


class DepthGuard:
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
        self._slow = slow  # reading ``Sanitized`` bytes: nothing left to give way to
        self._depth = 0
        self._in_string = False
        self._tail = b""  # a backslash ending the previous chunk: its escape continues here
        self._offset = 0
        # The end of the bytes read so far, from a byte no backslash precedes, and how many of
        # its last bytes could still begin a surrogate pair: an escape cut at a chunk's edge
        # is searched for whole, with the next chunk.
        self._window = b""
        self._unsettled = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._check(data)
        self._offset += len(data)
        return data

    def _search_surrogates(self, data: bytes) -> None:
        joined = self._window + data
        if b"\\ud" in joined or b"\\uD" in joined:
            # Matches ending in the bytes settled now: after what was settled before, and far
            # enough from the end (unless it is the end) for a low surrogate to follow.
            first = len(self._window) - self._unsettled
            last = len(joined) - (_PAIR_HALF if data else 0)
            start = max(0, first - _WINDOW)
            for match in _LONE_SURROGATE.finditer(joined, start):
                if first < match.end() <= last:
                    raise Suspect("a lone surrogate escape")
        cut = max(0, len(joined) - _WINDOW)
        while cut and joined[cut - 1] == 0x5C:  # never start inside a run of backslashes
            cut -= 1
        self._window = joined[cut:]
        self._unsettled = min(_PAIR_HALF, len(self._window)) if data else 0

    def _check(self, data: bytes) -> None:
        if not self._slow:
            self._search_surrogates(data)
        text = self._tail + data
        # An odd run of backslashes at the end escapes the next chunk's first byte.
        stripped = text.rstrip(b"\\")
        self._tail = b"\\" if (len(text) - len(stripped)) % 2 else b""
        if self._tail:
            text = text[:-1]
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
# A lone surrogate escape anywhere in the document: the fast pass then gives way to the slower
# one. ``DepthGuard`` searches chunk by chunk, keeping ``_WINDOW`` bytes of the previous chunk
# (more than a match and the escape it looks at before it) and settling a match only once the
# ``_PAIR_HALF`` bytes after it, where a pair's low half would be, have been read.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\)(?:\\\\)*(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


_PAIR_HALF = 6
_WINDOW = 32


def _escaped(marker: str) -> bytes:
    return marker.replace("\x00", "\\u0000").encode()


def _bad_utf8(error: UnicodeDecodeError):
    return _escaped(_BAD_UNICODE).decode(), error.end


codecs.register_error("coco-beam-invalid-unicode", _bad_utf8)


class Suspect(ValueError):
    """The fast pass met what only the slower pass reads correctly."""


class Sanitized:
    """A read-only stream rewriting what ``_NON_FINITE`` and ``_BAD_UNICODE`` mark. Used only
    for a document the fast pass could not read as it is, or to look again at a section that
    held nothing: it is slower than the parser."""

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


def marker_reason(value) -> str | None:
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
        reason = marker_reason(child)
        if reason:
            return reason
    return None


MARKER_MESSAGES = {
    Reason.NON_FINITE_VALUE: "NaN or Infinity where a number belongs",
    Reason.INVALID_UNICODE: "a string holds invalid UTF-8 or a lone surrogate",
}
