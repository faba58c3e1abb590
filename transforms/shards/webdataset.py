"""WebDataset shard files: plain POSIX tars of ``<key>.jpg``/``<key>.png`` and ``<key>.json``.

``sample_key`` and ``sample_document`` are the pure core: one image's stable key, and the JSON
of its annotations, which holds the fields of its Parquet row (``parquet.build_row``) except the
image and panoptic PNG bytes, so both formats carry the same annotations (RLE masks), captions,
keypoints and panoptic segments. ``WebDatasetFile`` writes one tar through any Beam filesystem,
hashing the bytes as they go.

Guarantees:
  * one sample per image, in the order images are added (``image_id`` order): the image member,
    then its JSON, adjacent, as WebDataset readers group consecutive members by key;
  * the image member is the original file, unmodified, named by the format its bytes are
    (``jpg`` or ``png``), whatever its file name says;
  * every header is fixed (USTAR, mtime 0, uid/gid 0, empty owner names, mode 0644), and the
    JSON is written with sorted keys, so the same input gives the same bytes;
  * keys hold no dot (readers cut a key at its first dot): ``<split>_<image_id:012d>``, the
    split's dots written as ``-``.
"""

from __future__ import annotations

import io
import json
import tarfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import ImagePlan, ShardFile
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.panoptic import PanopticFacts
from coco_beam.transforms.shards.hashing import HashingFile
from coco_beam.transforms.shards.parquet import build_row

__all__ = ["WebDatasetFile", "image_extension", "sample_document", "sample_key"]

# The extension of the image member by the format decoding found: what WebDataset's decoders
# key on. Only these formats are ever written (others are rejected as format_not_allowed).
_IMAGE_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
# Read-only for everyone: a tar extracted by hand gives ordinary files.
_MODE = 0o644


def sample_key(split: str, image_id: int) -> str:
    """The sample's key: stable, unique across splits, without dots."""
    return f"{split.replace('.', '-')}_{image_id:012d}"


def image_extension(facts: ImageFacts) -> str:
    return _IMAGE_EXTENSIONS[facts.format]


def sample_document(
    plan: ImagePlan, data: bytes, facts: ImageFacts, panoptic: PanopticFacts | None
) -> dict:
    """The ``<key>.json`` of one image: its Parquet row without the image bytes, the panoptic
    record without its PNG (its segments keep their RLE masks)."""
    row = build_row(plan, data, facts, panoptic)
    del row["image"]
    if row["panoptic"] is not None:
        row["panoptic"] = {
            "file_name": row["panoptic"]["file_name"],
            "segments": row["panoptic"]["segments"],
        }
    return row


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class WebDatasetFile:
    """One WebDataset tar shard being written: images in, a ``ShardFile`` out."""

    def __init__(self, temp_path: str):
        self._temp_path = temp_path
        self._raw = FileSystems.create(temp_path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._file = HashingFile(self._raw)
        # A stream ("w|"): members are written in order and never sought back to, as an object
        # store's upload requires.
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)

    def add(
        self, plan: ImagePlan, data: bytes, facts: ImageFacts, panoptic: PanopticFacts | None
    ) -> None:
        key = sample_key(plan.split, plan.image_id)
        document = sample_document(plan, data, facts, panoptic)
        text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        self._tar.addfile(_member(f"{key}.{image_extension(facts)}", len(data)), io.BytesIO(data))
        self._tar.addfile(_member(f"{key}.json", len(text)), io.BytesIO(text))

    def close(self) -> ShardFile:
        self._tar.close()  # the end-of-archive blocks; the Beam file stays open
        self._raw.close()
        return ShardFile(
            "webdataset", self._temp_path, self._file.num_bytes, self._file.sha256.hexdigest()
        )
