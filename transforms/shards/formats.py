"""The shard formats: one table from a format's name to what writes it.

Adding a format is one entry in ``REGISTRY``: the extension of its files and a function that
opens one shard file of it. ``FORMATS`` (what ``--formats`` and ``ShardWriterConfig`` accept) is
the table's names, in the table's order.

An opener is called as ``open(temp_path, categories, config)``: the temporary path the file is
written under (``PublishRun`` renames it), the split's categories (id -> category) and the
writer's ``ShardWriterConfig``. It returns an ``OpenFile``: ``add`` is called once per image
written, in ``image_id`` order, with the same arguments for every format; ``close`` finishes the
file and returns its ``ShardFile`` (format name, temporary path, size and SHA-256 of the bytes).

Guarantee asked of every entry: the same images and settings give the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from coco_beam.schemas import parquet as contract
from coco_beam.schemas.records import ImagePlan, ShardFile
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.panoptic import PanopticFacts
from coco_beam.transforms.shards.parquet import ParquetFile
from coco_beam.transforms.shards.tfrecord import TFRecordFile
from coco_beam.transforms.shards.webdataset import WebDatasetFile
from coco_beam.transforms.shards.yolo import INDEX_EXTENSION, YoloFile

if TYPE_CHECKING:
    from coco_beam.transforms.shards.config import ShardWriterConfig

__all__ = ["FORMATS", "REGISTRY", "OpenFile", "ShardFormat", "open_file"]


class OpenFile(Protocol):
    """One shard file being written."""

    def add(
        self, plan: ImagePlan, data: bytes, facts: ImageFacts, panoptic: PanopticFacts | None
    ) -> None: ...

    def close(self) -> ShardFile: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardFormat:
    """What writes one format: the extension of its files, and how one is opened."""

    extension: str
    open: Callable[[str, dict, ShardWriterConfig], OpenFile]


def _open_parquet(temp_path: str, categories: dict, config: ShardWriterConfig) -> ParquetFile:
    cats = sorted(categories.values(), key=lambda c: c["id"])
    return ParquetFile(
        temp_path,
        contract.arrow_schema(cats),
        compression=config.compression,
        row_group_bytes=config.row_group_bytes,
        semantic=config.panoptic_semantic,
    )


def _open_tfrecord(temp_path: str, categories: dict, config: ShardWriterConfig) -> TFRecordFile:
    return TFRecordFile(temp_path, categories, masks=config.tfrecord_masks)


def _open_webdataset(temp_path: str, categories: dict, config: ShardWriterConfig):
    return WebDatasetFile(temp_path)


def _open_yolo(temp_path: str, categories: dict, config: ShardWriterConfig) -> YoloFile:
    return YoloFile(temp_path, categories, task=config.yolo_task)


REGISTRY: dict[str, ShardFormat] = {
    "parquet": ShardFormat(extension="parquet", open=_open_parquet),
    "tfrecord": ShardFormat(extension="tfrecord", open=_open_tfrecord),
    "webdataset": ShardFormat(extension="tar", open=_open_webdataset),
    # The index of the shard's images; their labels and files are published beside the shards.
    "yolo": ShardFormat(extension=INDEX_EXTENSION, open=_open_yolo),
}

FORMATS: tuple[str, ...] = tuple(REGISTRY)


def open_file(fmt: str, temp_path: str, categories: dict, config: ShardWriterConfig) -> OpenFile:
    """Opens one shard file of format ``fmt`` (a name of ``REGISTRY``)."""
    return REGISTRY[fmt].open(temp_path, categories, config)
