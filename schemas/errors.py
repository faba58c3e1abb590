"""The error type every stage raises for one bad record.

It lives with the contracts because the reader, the joiner, the rasterizer, the decoders and
the shard writer all raise or catch it; its ``reason`` is a ``Reason`` code of
``coco_beam.schemas.records``, which is what the rejected output records.
"""

from __future__ import annotations

__all__ = ["RecordError"]


class RecordError(ValueError):
    """A permanent fault of one record; ``reason`` is a ``schemas.records.Reason`` code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries (``transforms.runtime.isolation``) intact
        return type(self), (self.reason, str(self))
