"""Where per-record work runs: annotation sections parsed in child processes, each image's
masks made in the shard writer's decoder children; the same outputs as doing it in place."""

from __future__ import annotations

import gzip
import io
import json
import os

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from coco_beam.schemas.records import AnnotationSource, ImagePlan, PlanBatch, Reason
from coco_beam.transforms.annotations.read import CocoFileError, _read_in_children
from coco_beam.transforms.annotations.sections import read_section
from coco_beam.transforms.images.masks import rasterize_plan
from coco_beam.transforms.runtime.isolation import Isolated, NativeCrash
from coco_beam.transforms.runtime.packing import unpack
from coco_beam.transforms.shards.assign import key_by_shard
from coco_beam.transforms.shards.write import ShardWriterConfig, WriteShards

SPLIT = "val2017"
WIDTH, HEIGHT = 40, 30


def squares(n: int):
    """A generator function a child runs."""
    for i in range(n):
        yield i * i


def squares_then_fail(n: int):
    yield from squares(n)
    raise ValueError("after the items")


def one_then_unpicklable():
    yield 1
    yield lambda: None
    yield 2


def one_then_die():
    yield 1
    os._exit(3)


def test_a_stream_gives_the_items_in_order_and_the_child_back():
    isolated = Isolated(1)
    try:
        assert list(isolated.stream(squares, 4)) == [0, 1, 4, 9]
        with pytest.raises(ValueError, match="after the items"):
            list(isolated.stream(squares_then_fail, 2))
        assert isolated.call(len, b"abc") == 3  # the child answered: it is free again
        items = isolated.stream(one_then_unpicklable)
        assert next(items) == 1
        with pytest.raises(RuntimeError, match="function"):
            next(items)  # the stream ends at an item that does not pickle
        assert list(isolated.stream(squares, 2)) == [0, 1]
    finally:
        isolated.close()


def test_a_stream_closed_early_or_cut_by_a_crash_frees_its_place():
    isolated = Isolated(1)
    try:
        items = isolated.stream(squares, 10**6)
        assert [next(items), next(items)] == [0, 1]
        items.close()  # the child is still sending: it is closed, and its place freed
        with pytest.raises(NativeCrash):
            list(isolated.stream(one_then_die))
        assert list(isolated.stream(squares, 3)) == [0, 1, 4]
        assert isolated._live == 1
    finally:
        isolated.close()


def _instances(tmp_path, name: str, *, compress: bool = False) -> AnnotationSource:
    doc = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": WIDTH, "height": HEIGHT}
            for i in range(1, 5)
        ]
        + [{"id": "five", "file_name": "5.jpg", "width": 1, "height": 1}],
        "annotations": [
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1,
                "bbox": [1, 1, 5, 5],
                "area": 25.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
            }
            for i in range(1, 5)
        ]
        + [{"id": 200, "image_id": 1, "category_id": 1, "bbox": [1, 1, -5, 5], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    data = json.dumps(doc).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if compress else data)
    return AnnotationSource(
        path=str(path), family="instances", split=SPLIT, images_dir=str(tmp_path)
    )


def _comparable(pairs) -> list:
    out = []
    for tag, value in pairs:
        if tag is None:
            (split, bucket), packed = value
            value = ((split, bucket), unpack(packed))
        elif tag == "annotation_ids":
            value = (value[0], value[1].tolist())
        out.append((tag or "", repr(value)))
    return sorted(out)


@pytest.mark.parametrize("compress", [False, True], ids=["json", "gzip"])
def test_sections_read_in_children_equal_those_read_in_place(tmp_path, compress):
    name = "instances_val2017.json" + (".gz" if compress else "")
    source = _instances(tmp_path, name, compress=compress)
    sections = ("images", "annotations", "categories")
    opener = gzip.open if compress else open
    in_place = []
    for section in sections:
        with opener(source.path, "rb") as f:
            in_place.extend(read_section(f, source, section))
    held = [(source, s, False, "gzip" if compress else "uncompressed") for s in sections]
    children = Isolated(2)
    try:
        in_children = list(_read_in_children(children, held))
    finally:
        children.close()
    assert _comparable(in_children) == _comparable(in_place)
    # What the fixture holds: 4 images kept and one rejected, 4 annotations and a bad bbox.
    tags = [tag for tag, _ in in_place]
    assert tags.count("rejected") == 2 and tags.count("categories") == 1


def test_a_file_that_is_not_json_fails_the_read_from_a_child(tmp_path):
    source = _instances(tmp_path, "instances_val2017.json")
    with open(source.path, "r+b") as f:
        f.seek(40)
        f.write(b"}}}not json")
    children = Isolated(1)
    try:
        with pytest.raises(CocoFileError, match="instances_val2017.json"):
            list(_read_in_children(children, [(source, "annotations", False, "uncompressed")]))
    finally:
        children.close()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (10, 90, 200)).save(out, format="JPEG")
    return out.getvalue()


def _raw_plan(root: str, image_id: int) -> ImagePlan:
    """Masks not yet made: a square, and a polygon of two points (no ring left to draw)."""

    def annotation(ann_id, segmentation):
        return {
            "id": ann_id,
            "category_id": 1,
            "bbox": [2.0, 3.0, 10.0, 8.0],
            "area": None,
            "iscrowd": 0,
            "segmentation": segmentation,
            "keypoints": None,
            "num_keypoints": None,
            "flags": [],
        }

    return ImagePlan(
        split=SPLIT,
        image_id=image_id,
        file_name=f"{image_id}.jpg",
        width=WIDTH,
        height=HEIGHT,
        path=os.path.join(root, f"{image_id}.jpg"),
        source="instances_val2017.json",
        annotations=[
            annotation(100 + image_id, [[2, 3, 12, 3, 12, 11, 2, 11]]),
            annotation(200 + image_id, [[1, 2, 3, 4]]),
        ],
        captions=[],
        flags=[],
    )


def _rows(result) -> list:
    path = result.files[0].temp_path
    table = pq.read_table(path, columns=["image_id", "annotations"])
    return table.to_pylist()


@pytest.mark.parametrize("isolate", [False, True], ids=["in_process", "isolated"])
def test_the_writer_makes_the_masks_as_rasterize_masks_would(tmp_path, isolate):
    root = tmp_path / "images"
    root.mkdir()
    for image_id in (1, 2):  # 3 has no file
        (root / f"{image_id}.jpg").write_bytes(_jpeg())
    raw = [_raw_plan(str(root), i) for i in (1, 2, 3)]
    made = [rasterize_plan(_raw_plan(str(root), i))[0] for i in (1, 2, 3)]
    config = ShardWriterConfig(
        temp_dir=str(tmp_path / "tmp"), io_threads=2, isolate_decoders=isolate
    )
    categories = {SPLIT: {1: {"id": 1, "name": "person", "supercategory": "person"}}}
    keyed = list(key_by_shard(PlanBatch(SPLIT, 0, raw), {SPLIT: 1}))
    with TestPipeline(options=PipelineOptions(["--runtime_type_check"])) as p:
        written = (p | beam.Create(keyed)) | WriteShards(
            config,
            num_shards=p | "NumShards" >> beam.Create([(SPLIT, 1)]),
            categories=p | "Categories" >> beam.Create(sorted(categories.items())),
        )
        assert_that(
            written.rejected | beam.Map(lambda r: (r.kind, r.key, r.reason)),
            equal_to(
                [
                    ("annotation", "201", Reason.DEGENERATE_POLYGON),
                    ("annotation", "202", Reason.DEGENERATE_POLYGON),
                    ("annotation", "203", Reason.DEGENERATE_POLYGON),
                    ("image", "3", Reason.IMAGE_MISSING),
                    ("annotation", "103", Reason.IMAGE_REJECTED),
                ]
            ),
            label="CheckRejected",
        )
        expected_rows = [
            {
                "image_id": plan.image_id,
                "rle": [a["rle"] for a in plan.annotations],
                "flags": [a["flags"] for a in plan.annotations],
            }
            for plan in made[:2]
        ]
        assert_that(
            written.shards
            | beam.FlatMap(_rows)
            | beam.Map(
                lambda row: {
                    "image_id": row["image_id"],
                    "rle": [a["rle"] for a in row["annotations"]],
                    "flags": [a["flags"] for a in row["annotations"]],
                }
            ),
            equal_to(expected_rows),
            label="CheckRows",
        )
        assert_that(
            written.shards | "Written" >> beam.Map(lambda r: dict(r.written)),
            equal_to([{"image": 2, "annotation": 2, "caption": 0, "panoptic": 0}]),
            label="CheckCounts",
        )
    counters = {
        name: sum(
            c.committed
            for c in p.result.metrics().query(MetricsFilter().with_name(name))["counters"]
        )
        for name in ("masks_rasterized", "masks_rejected")
    }
    assert counters == {"masks_rasterized": 3, "masks_rejected": 3}
