"""TestPipeline tests of the transforms, with strict assertions."""

import json
import pickle

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from coco_beam.schemas.records import AnnotationSource, ImagePlan, PlanBatch, Reason
from coco_beam.transforms.annotations.join import JoinAnnotationsToImages, _JoinBucketFn
from coco_beam.transforms.annotations.read import (
    ReadCocoAnnotations,
    _ReadSectionFn,
    deal_tasks,
    plan_tasks,
    task_cost,
)
from coco_beam.transforms.images.rasterize import RasterizeMasks, _RasterizeFn
from coco_beam.transforms.runs.publish import PublishConfig, _PublishFn
from coco_beam.transforms.runtime.packing import unpack
from coco_beam.transforms.shards.assign import AssignShards
from coco_beam.transforms.shards.sharding import shard_index
from coco_beam.transforms.shards.write import ShardWriterConfig, _WriteShardFn

# TestPipeline reads its options from ``--test-pipeline-options`` only: ``argv`` would be ignored.
TYPE_CHECKED = PipelineOptions(runtime_type_check=True)


@pytest.fixture()
def tiny_coco(tmp_path):
    doc = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 20, "height": 10},
            {"id": 2, "file_name": "2.jpg", "width": 20, "height": 10},
            {"id": "x", "file_name": "3.jpg", "width": 20, "height": 10},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 9.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 9.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5]],
            },
            {
                "id": 12,
                "image_id": 5,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 9.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5, 5]],
            },
        ],
        "categories": [{"id": 1, "name": "thing", "supercategory": "stuff"}],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(doc))
    return AnnotationSource(str(path), "instances", "val", str(tmp_path))


def test_read_join_rasterize(tiny_coco):
    with TestPipeline(options=TYPE_CHECKED) as p:
        assert p.options.view_as(TypeOptions).runtime_type_check
        read = p | ReadCocoAnnotations([tiny_coco])
        joined = read | JoinAnnotationsToImages({"val": tiny_coco.images_dir})
        raster = joined.plans | RasterizeMasks()
        assert_that(
            raster.plans
            | beam.FlatMap(lambda batch: batch.plans)
            | beam.Map(
                lambda p: (
                    p.image_id,
                    [a["id"] for a in p.annotations],
                    [a["rle"]["size"] for a in p.annotations],
                )
            ),
            equal_to([(1, [10], [[10, 20]]), (2, [], [])]),
            label="Plans",
        )
        rejected = (read["rejected"], joined.rejected, raster.rejected) | beam.Flatten()
        assert_that(
            rejected | beam.Map(lambda r: (r.kind, r.key, r.reason)),
            equal_to(
                [
                    ("image", "x", Reason.SCHEMA_VIOLATION),
                    ("annotation", "11", Reason.ODD_POLYGON_LENGTH),
                    ("annotation", "12", Reason.ORPHAN_ANNOTATION),
                ]
            ),
            label="Rejected",
        )
        assert_that(
            (read["counts"], joined.counts) | "C" >> beam.Flatten() | beam.CombinePerKey(sum),
            equal_to([(("read", "image"), 3), (("read", "annotation"), 3)]),
            label="Counts",
        )
    metrics = p.result.metrics().query(MetricsFilter().with_name("masks_rasterized"))
    assert sum(c.committed for c in metrics["counters"]) == 1


def _checked_at_runtime(enabled: bool) -> PipelineOptions:
    # Construction-time checks off: what fails is the check of each element as it runs.
    return PipelineOptions(runtime_type_check=enabled, pipeline_type_check=False)


class _YieldsAPlan(_RasterizeFn):
    """Declares ``PlanBatch`` out (inherited), but yields an ``ImagePlan``."""

    def process(self, batch):
        yield from batch.plans


_PLAN = ImagePlan("val", 1, "1.jpg", 2, 2, "x/1.jpg", "s", [], [], [])


@pytest.mark.parametrize(
    "step, element, wrong",
    [
        pytest.param(_ReadSectionFn(), ("instances_val.json", "images"), "input", id="read"),
        pytest.param(_JoinBucketFn({"val": "x"}, None), (("val", "0"), [b""]), "input", id="join"),
        pytest.param(_RasterizeFn(), _PLAN, "input", id="rasterize"),
        pytest.param(_YieldsAPlan(), PlanBatch("val", 0, [_PLAN]), "output", id="output"),
    ],
)
def test_a_wrongly_typed_element_fails_the_runtime_type_check(step, element, wrong):
    def build(p):
        side = {}
        if isinstance(step, _JoinBucketFn):
            empty = p | "NoSide" >> beam.Create([], reshuffle=False)
            side = {
                "categories": beam.pvalue.AsDict(empty),
                "duplicate_ids": beam.pvalue.AsDict(empty),
            }
        return p | beam.Create([element], reshuffle=False) | beam.ParDo(step, **side)

    violation = {
        "input": "Runtime type violation.*Type-hint for argument",
        "output": "type-constraint violated.*received ImagePlan instead",
    }
    with pytest.raises(Exception, match=violation[wrong]):
        with TestPipeline(options=_checked_at_runtime(True)) as p:
            build(p)
    if wrong == "output":
        # Unchecked, the same wrong element passes unnoticed: only the check finds it.
        with TestPipeline(options=_checked_at_runtime(False)) as p:
            build(p)


def test_assign_shards_is_deterministic_and_covers_every_shard(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * 100)
    (tmp_path / "stray.jpg").write_bytes(b"x")
    plans = [ImagePlan("val", i, f"{i}.jpg", 1, 1, "", "", [], [], []) for i in range(6)]
    # Bucket 0 (present for every split) names every shard, even one with no images.
    batches = [
        PlanBatch("val", 0, []),
        PlanBatch("val", 7, plans[:4]),
        PlanBatch("val", 9, plans[4:]),
    ]
    with TestPipeline() as p:
        counts = p | "Counts" >> beam.Create([("val", 4), ("val", 2)])
        out = (
            p
            | beam.Create(batches)
            | AssignShards({"val": str(tmp_path)}, shard_bytes=250, image_counts=counts)
        )
        assert_that(out["num_shards"], equal_to([("val", 3)]), label="N")
        # 6 images x (601 bytes / 7 files) = 515 bytes: 3 shards of 250.
        assert_that(out["listed"], equal_to([("val", (7, 601))]), label="Listed")

        expected = [(("val", shard_index("val", i, 3)), i) for i in range(6)] + [
            (("val", i), None) for i in range(3)
        ]
        assert_that(
            out["keyed"]
            | beam.FlatMapTuple(
                lambda k, packed: [(k, p.image_id) for p in unpack(packed)] or [(k, None)]
            ),
            equal_to(expected),
            label="Keyed",
        )


def test_dofns_pickle(tmp_path):
    config = ShardWriterConfig(temp_dir=str(tmp_path))
    publish = PublishConfig(str(tmp_path), "r", str(tmp_path), 0.05, {}, [], 0.0)
    for fn in (
        _ReadSectionFn(),
        _JoinBucketFn({"val": "x"}, None),
        _RasterizeFn(),
        _WriteShardFn(config),
        _PublishFn(publish),
    ):
        assert type(pickle.loads(pickle.dumps(fn))) is type(fn)


def test_writer_config_validates():
    with pytest.raises(ValueError):
        ShardWriterConfig(temp_dir="/tmp", io_threads=0)
    with pytest.raises(ValueError):
        ShardWriterConfig(temp_dir="/tmp", row_group_bytes=10)


def test_deal_tasks_balances_round_robin_workers():
    sizes = {"instances": 27, "person_keypoints": 12, "captions": 7}
    sources = [
        AnnotationSource(f"{family}_{split}.json", family, split, "x", size * 10**6 // scale)
        for family, size in sizes.items()
        for split, scale in (("train", 1), ("val", 4))
    ]
    tasks = plan_tasks(sources)
    dealt = deal_tasks(tasks, 2)
    assert sorted(map(repr, filter(None, dealt))) == sorted(map(repr, tasks))
    loads = [sum(task_cost(t) for t in dealt[w::2] if t) for w in range(2)]
    total, largest = sum(loads), max(map(task_cost, tasks))
    # Within the largest task of perfect balance, and never worse than half the largest over.
    assert max(loads) <= max(total / 2 + largest / 2, largest) + 1
    assert deal_tasks(tasks, 1) == tasks


def _explode(_):
    raise ZeroDivisionError("a fault of the step after")


@pytest.mark.parametrize("after", ["reader", "join", "rasterize"])
def test_a_failure_downstream_is_never_taken_for_bad_input(tiny_coco, after):
    """Steps fused after a checking step fail the pipeline with their own error: no upstream
    ``try`` turns it into a rejection or a bad-file error."""
    with pytest.raises(Exception, match="a fault of the step after") as info:
        with TestPipeline() as p:
            read = p | ReadCocoAnnotations([tiny_coco])
            joined = read | JoinAnnotationsToImages({"val": tiny_coco.images_dir})
            raster = joined.plans | RasterizeMasks()
            step = {"reader": read["counts"], "join": joined.plans, "rasterize": raster.plans}
            _ = step[after] | beam.Map(_explode)
    assert "not a readable COCO JSON" not in str(info.value)
    assert "ZeroDivisionError" in str(info.value) or isinstance(info.value, ZeroDivisionError)
