"""``WriteShards`` alone: keyed plan batches in, shard files, rejections, statistics and digests
out; and its decoder children, shared and bounded per process."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from coco_beam.schemas.records import ImagePlan, PlanBatch, Reason, ShardResult
from coco_beam.transforms.images.decode import inspect_image
from coco_beam.transforms.images.rasterize import rasterize_plan
from coco_beam.transforms.runtime import isolation
from coco_beam.transforms.runtime.packing import pack, unpack
from coco_beam.transforms.shards.assign import key_by_shard
from coco_beam.transforms.shards.formats import FORMATS, REGISTRY, open_file
from coco_beam.transforms.shards.load import expected_format
from coco_beam.transforms.shards.sharding import shard_index, shard_name
from coco_beam.transforms.shards.write import ShardWriterConfig, WriteShards, _WriteShardFn
from coco_beam.transforms.stats.examples import ExamplePicker
from coco_beam.transforms.stats.gather import add_image, add_pixel_sums, new_accumulator

SPLIT = "val2017"
NUM_SHARDS = 2
WIDTH, HEIGHT = 40, 30
CATEGORIES = {SPLIT: {1: {"id": 1, "name": "person", "supercategory": "person"}}}
MISSING, CORRUPT = 8, 9  # image ids: no file; bytes that are no image


def _image_bytes(image_id: int, fmt: str) -> bytes:
    image = Image.new("RGB", (WIDTH, HEIGHT), (image_id * 20 % 256, 90, 200 - image_id))
    image.paste((255, 255, 255), (2, 3, 12, 11))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _plan(root: str, image_id: int, file_name: str) -> ImagePlan:
    annotation = {
        "id": 100 + image_id,
        "category_id": 1,
        "bbox": [2.0, 3.0, 10.0, 8.0],
        "area": None,
        "iscrowd": 0,
        "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]],
        "keypoints": None,
        "num_keypoints": None,
        "flags": [],
    }
    plan = ImagePlan(
        split=SPLIT,
        image_id=image_id,
        file_name=file_name,
        width=WIDTH,
        height=HEIGHT,
        path=os.path.join(root, file_name),
        source="instances_val2017.json",
        annotations=[annotation],
        captions=[{"id": 1000 + image_id, "caption": "a grey box on a coloured ground"}],
        flags=[],
    )
    plan, rejected = rasterize_plan(plan)
    assert rejected == []
    return plan


@pytest.fixture()
def plans(tmp_path) -> list[ImagePlan]:
    """Images 1-6 JPEG, 7 PNG, 8 missing, 9 corrupt; one annotation and caption each."""
    root = tmp_path / "images"
    root.mkdir()
    names = {i: f"{i:012d}.jpg" for i in range(1, 10)}
    names[7] = f"{7:012d}.png"
    for image_id, name in names.items():
        if image_id == MISSING:
            continue
        data = b"not an image" if image_id == CORRUPT else None
        if data is None:
            data = _image_bytes(image_id, "PNG" if name.endswith(".png") else "JPEG")
        (root / name).write_bytes(data)
    return [_plan(str(root), image_id, name) for image_id, name in sorted(names.items())]


def _keyed(plans: list[ImagePlan]) -> list:
    """What ``AssignShards`` gives the writer: plans keyed by shard, packed, from two join
    buckets (bucket 0 also names every shard of the split)."""
    batches = [
        PlanBatch(SPLIT, 0, [p for p in plans if p.image_id % 2]),
        PlanBatch(SPLIT, 1, [p for p in plans if not p.image_id % 2]),
    ]
    return [kv for batch in batches for kv in key_by_shard(batch, {SPLIT: NUM_SHARDS})]


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _shard_view(result: ShardResult) -> tuple:
    """A shard result as it can be expected: per file, its format, whether its temporary name
    is the shard's and whether its size and digest are those of the bytes on disk; the image
    ids of its Parquet file."""
    files = []
    for f in result.files:
        name = shard_name(result.split, result.index, result.num_shards, f.format)
        on_disk = (os.path.getsize(f.temp_path), _digest(f.temp_path))
        named = os.path.basename(f.temp_path).startswith(name + ".")
        files.append((f.format, named, on_disk == (f.num_bytes, f.sha256)))
    parquet = next(f.temp_path for f in result.files if f.format == "parquet")
    ids = pq.read_table(parquet, columns=["image_id"]).column("image_id").to_pylist()
    return (
        result.split,
        result.index,
        result.num_shards,
        result.num_rows,
        tuple(sorted(result.written.items())),
        result.files_found,
        tuple(files),
        tuple(ids),
        result.reused,
        len(result.fingerprint) > 0,
        result.state is not None and os.path.exists(result.state),
    )


def _written(plans) -> list:
    return [p for p in plans if p.image_id not in (MISSING, CORRUPT)]


def _expected_shards(plans) -> list[tuple]:
    expected = []
    for index in range(NUM_SHARDS):
        mine = [p for p in plans if shard_index(SPLIT, p.image_id, NUM_SHARDS) == index]
        good = _written(mine)
        n = len(good)
        expected.append(
            (
                SPLIT,
                index,
                NUM_SHARDS,
                n,
                (("annotation", n), ("caption", n), ("image", n), ("panoptic", 0)),
                n + sum(p.image_id == CORRUPT for p in mine),  # files found
                (("parquet", True, True), ("tfrecord", True, True)),
                tuple(p.image_id for p in good),
                False,
                True,
                True,
            )
        )
    return expected


def _expected_stats(plans) -> list[tuple]:
    """Each shard's accumulator, from the images decoded here."""
    expected = []
    for index in range(NUM_SHARDS):
        acc = new_accumulator()
        # The report's examples, picked the writer's way (``stats.examples``).
        picker = ExamplePicker(acc.examples)
        for plan in _written(plans):
            if shard_index(SPLIT, plan.image_id, NUM_SHARDS) != index:
                continue
            with open(plan.path, "rb") as f:
                data = f.read()
            ask = picker.request(plan, expected_format=expected_format(plan.file_name))
            facts = inspect_image(data, WIDTH, HEIGHT, thumbnail=ask)
            add_image(
                acc,
                width=WIDTH,
                height=HEIGHT,
                fmt=facts.format,
                mode=facts.mode,
                exif_orientation=facts.exif_orientation,
                num_bytes=len(data),
                annotations=plan.annotations,
                captions=plan.captions,
                flags=sorted(facts.flags),
            )
            add_pixel_sums(acc, *facts.pixel_sums)
            picker.add(plan, facts)
        expected.append((SPLIT, acc))
    return expected


def _expected_rejections() -> list[tuple]:
    return [
        ("image", str(MISSING), Reason.IMAGE_MISSING),
        ("annotation", str(100 + MISSING), Reason.IMAGE_REJECTED),
        ("caption", str(1000 + MISSING), Reason.IMAGE_REJECTED),
        ("image", str(CORRUPT), Reason.IMAGE_CORRUPT),
        ("annotation", str(100 + CORRUPT), Reason.IMAGE_REJECTED),
        ("caption", str(1000 + CORRUPT), Reason.IMAGE_REJECTED),
    ]


def _digest_entries(kv) -> list[tuple]:
    prefix, packed = kv
    return [(prefix == sha[:2], sha, split, image_id) for sha, split, image_id in unpack(packed)]


@pytest.mark.parametrize("isolate", [False, True], ids=["in_process", "isolated"])
def test_write_shards_outputs_files_rejections_statistics_and_digests(plans, tmp_path, isolate):
    config = ShardWriterConfig(
        temp_dir=str(tmp_path / "tmp"),
        formats=("parquet", "tfrecord"),
        io_threads=2,
        isolate_decoders=isolate,
    )
    options = PipelineOptions(["--runtime_type_check"])
    with TestPipeline(options=options) as p:
        assert p.options.view_as(TypeOptions).runtime_type_check
        keyed = p | "Plans" >> beam.Create(_keyed(plans))
        written = keyed | WriteShards(
            config,
            num_shards=p | "NumShards" >> beam.Create([(SPLIT, NUM_SHARDS)]),
            categories=p | "Categories" >> beam.Create(sorted(CATEGORIES.items())),
        )
        assert_that(
            written.shards | "ViewShards" >> beam.Map(_shard_view),
            equal_to(_expected_shards(plans)),
            label="CheckShards",
        )
        assert_that(
            written.rejected | "ViewRejected" >> beam.Map(lambda r: (r.kind, r.key, r.reason)),
            equal_to(_expected_rejections()),
            label="CheckRejected",
        )
        assert_that(written.stats, equal_to(_expected_stats(plans)), label="CheckStats")
        expected_digests = []
        for plan in _written(plans):
            sha = _digest(plan.path)
            expected_digests.append((True, sha, SPLIT, plan.image_id))
        assert_that(
            written.digests | "ViewDigests" >> beam.FlatMap(_digest_entries),
            equal_to(expected_digests),
            label="CheckDigests",
        )
    counters = {
        name: sum(
            c.committed
            for c in p.result.metrics().query(MetricsFilter().with_name(name))["counters"]
        )
        for name in ("images_decoded", "images_rejected", "shards_written", "shards_reused")
    }
    assert counters == {
        "images_decoded": 7,
        "images_rejected": 2,
        "shards_written": NUM_SHARDS,
        "shards_reused": 0,
    }
    # Only temporary files: two formats and a state file per shard, nothing else.
    assert len(os.listdir(tmp_path / "tmp")) == 3 * NUM_SHARDS


def test_write_shards_writes_an_empty_shard(plans, tmp_path):
    """Every shard bucket 0 names is written, even one no image falls in."""
    config = ShardWriterConfig(temp_dir=str(tmp_path / "tmp"), isolate_decoders=False)
    keyed = list(key_by_shard(PlanBatch(SPLIT, 0, []), {SPLIT: 3}))
    with TestPipeline(options=PipelineOptions(["--runtime_type_check"])) as p:
        written = (p | beam.Create(keyed)) | WriteShards(
            config,
            num_shards=p | "NumShards" >> beam.Create([(SPLIT, 3)]),
            categories=p | "Categories" >> beam.Create(sorted(CATEGORIES.items())),
        )
        assert_that(
            written.shards | beam.Map(lambda r: (r.index, r.num_rows, r.files_found)),
            equal_to([(0, 0, 0), (1, 0, 0), (2, 0, 0)]),
        )
        assert_that(written.rejected, equal_to([]), label="NoRejections")
        assert_that(written.digests, equal_to([]), label="NoDigests")


def test_the_writer_dofn_pickles():
    fn = _WriteShardFn(ShardWriterConfig(temp_dir="/tmp", formats=("parquet", "tfrecord")))
    copy = pickle.loads(pickle.dumps(fn))
    assert type(copy) is _WriteShardFn and copy._config == fn._config
    # Copies share their decoder children: one handle for the whole step.
    assert copy._decoders._key == fn._decoders._key


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_writer_instances_in_one_process_share_a_bounded_pool_of_decoders(
    plans, tmp_path, monkeypatch
):
    """Four DoFn instances (as a worker runs four bundles of the step at once), each with three
    decode threads, in one process: at most ``children_per_process()`` decoder children exist
    at any moment, all instances use the same pool, and every shard has the bytes of a shard
    decoded in the worker itself."""
    bound = 2
    monkeypatch.setattr(isolation, "children_per_process", lambda: bound)
    lock = threading.Lock()
    pids: list[int] = []
    peak = [0]

    class CountedChild(isolation._Child):
        def __init__(self):
            super().__init__()
            with lock:
                pids.append(self._proc.pid)
                peak[0] = max(peak[0], sum(_alive(pid) for pid in pids))

    monkeypatch.setattr(isolation, "_Child", CountedChild)
    element = ((SPLIT, 0), [pack(plans[:4]), pack(plans[4:])])
    sides = ({SPLIT: 1}, CATEGORIES)

    def config(isolate: bool, name: str) -> ShardWriterConfig:
        return ShardWriterConfig(
            temp_dir=str(tmp_path / name), io_threads=3, isolate_decoders=isolate
        )

    def shard_of(outputs) -> tuple:
        [result] = [o for o in outputs if isinstance(o, ShardResult)]
        return result.num_rows, result.written, tuple(f.sha256 for f in result.files)

    reference = _WriteShardFn(config(False, "reference"))
    reference.setup()
    expected = shard_of(reference.process(element, *sides))
    reference.teardown()

    step = _WriteShardFn(config(True, "shared"))
    instances = [pickle.loads(pickle.dumps(step)) for _ in range(4)]
    started = threading.Barrier(len(instances))

    def bundle(fn):
        fn.setup()
        try:
            started.wait()
            pool = fn._isolated
            return pool, shard_of(fn.process(element, *sides))
        finally:
            fn.teardown()

    with ThreadPoolExecutor(len(instances)) as threads:
        results = list(threads.map(bundle, instances))
    assert len({id(pool) for pool, _ in results}) == 1
    assert results[0][0].max_children == bound
    assert [shard for _, shard in results] == [expected] * len(instances)
    assert 1 <= peak[0] <= bound
    # The last instance to tear down closed the children.
    assert not [pid for pid in pids if _alive(pid)]


def test_the_format_registry_names_what_the_writer_accepts(plans, tmp_path):
    """Every format of the table opens a file that takes the writer's rows and closes to a
    ``ShardFile`` of its own name; ``FORMATS`` and the config's validation follow the table."""
    assert FORMATS == tuple(REGISTRY)
    assert ShardWriterConfig(temp_dir="/tmp", formats=FORMATS).formats == FORMATS
    with pytest.raises(ValueError, match="unknown output formats"):
        ShardWriterConfig(temp_dir="/tmp", formats=("parquet", "csv"))
    config = ShardWriterConfig(temp_dir=str(tmp_path))
    plan = plans[0]
    with open(plan.path, "rb") as f:
        data = f.read()
    facts = inspect_image(data, WIDTH, HEIGHT)
    for fmt, entry in REGISTRY.items():
        path = str(tmp_path / f"shard.{entry.extension}")
        opened = open_file(fmt, path, CATEGORIES[SPLIT], config)
        opened.add(plan, data, facts, None)
        shard_file = opened.close()
        assert (shard_file.format, shard_file.temp_path) == (fmt, path)
        assert (shard_file.num_bytes, shard_file.sha256) == (os.path.getsize(path), _digest(path))
