"""Write-through to a Beam file that counts and hashes the bytes as they are written, so a
shard's size and SHA-256 (what the manifest lists) cost no second read of the file."""

from __future__ import annotations

import hashlib

__all__ = ["HashingFile"]


class HashingFile:
    """A write-only stream over ``raw``: every byte written goes to ``raw`` and into
    ``sha256`` and ``num_bytes``. ``close`` marks it closed and leaves ``raw`` open (its
    owner closes it), as pyarrow's writer closes the stream it is given."""

    def __init__(self, raw):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0
        self.closed = False

    def write(self, data) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        self.closed = True
