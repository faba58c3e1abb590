"""Publishing a run: the pure checks and manifest, ``PublishRun`` alone in a TestPipeline, and
publishing retried after it failed halfway (as a runner retries a failed bundle)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from coco_beam.schemas.records import Reason, Rejection, ShardFile, ShardResult
from coco_beam.schemas.state import STATE_VERSION
from coco_beam.transforms.runs import lake as lake_module
from coco_beam.transforms.runs.checks import (
    RunFailed,
    check_conservation,
    check_rejected_fraction,
    choose_shards,
    conservation,
)
from coco_beam.transforms.runs.lake import lake_config
from coco_beam.transforms.runs.manifest import (
    build_manifest,
    library_versions,
    split_totals,
    unlisted_files,
)
from coco_beam.transforms.runs.publish import (
    PublishConfig,
    PublishInputs,
    PublishRun,
    _PublishFn,
    publish_run,
)
from coco_beam.transforms.runs.volume import check_volume, volume_failure, volume_figures
from coco_beam.transforms.runtime.faults import InjectedFault

TYPE_CHECKED = PipelineOptions(runtime_type_check=True)
RUN_ID = "20260101T000000Z-abcdef"
# (split, index) -> image ids of the shard; two splits of two shards, one of them empty.
LAYOUT = {("train", 0): [1, 2], ("train", 1): [3], ("val", 0): [10], ("val", 1): []}
CATEGORIES = {
    "train": {1: {"id": 1, "name": "cat", "supercategory": "animal"}},
    "val": {1: {"id": 1, "name": "cat", "supercategory": "animal"}},
}


def _shard(split="train", index=0, attempt="a", written=None, **files) -> ShardResult:
    return ShardResult(
        split=split,
        index=index,
        num_shards=2,
        files=tuple(
            ShardFile(format=f, temp_path=p, num_bytes=1, sha256="0") for f, p in files.items()
        ),
        num_rows=1,
        written=written or {"image": 1},
        files_found=1,
        attempt=attempt,
    )


def _rejection(kind="annotation", reason=Reason.INVALID_BBOX, key="7") -> Rejection:
    return Rejection(
        kind=kind,
        key=key,
        reason=reason,
        error_type="ValueError",
        message="bad",
        source="instances_val.json",
        split="val",
    )


# --- the pure core -----------------------------------------------------------------------


def test_choose_shards_takes_the_first_attempt_of_each_shard_whatever_the_order():
    late = _shard(index=0, attempt="b", parquet="b")
    first = _shard(index=0, attempt="a", parquet="a")
    other = _shard(index=1, attempt="c", parquet="c")
    chosen, extra = choose_shards([late, other, first], {"train": 2})
    assert chosen == [first, other]
    assert extra == [late]


def test_choose_shards_fails_naming_a_shard_no_attempt_wrote():
    with pytest.raises(RunFailed, match="shard 1 of split train was not written"):
        choose_shards([_shard(index=0)], {"train": 2})


def test_conservation_counts_every_kind_and_fails_where_records_went_missing():
    shards = [_shard(written={"image": 2, "annotation": 3}), _shard(written={"image": 1})]
    counts = {("read", "image"): 3, ("read", "annotation"): 5}
    totals = conservation(counts, shards, [_rejection()])
    assert totals == {
        "image": {"read": 3, "written": 3, "rejected": 0},
        "annotation": {"read": 5, "written": 3, "rejected": 1},
        "caption": {"read": 0, "written": 0, "rejected": 0},
        "panoptic": {"read": 0, "written": 0, "rejected": 0},
    }
    with pytest.raises(RunFailed, match=r"lost or invented.*'annotation'"):
        check_conservation(totals)
    totals["annotation"]["written"] = 4
    check_conservation(totals)


@pytest.mark.parametrize(
    ("rejected", "fails"),
    [
        pytest.param(1, False, id="at_the_limit"),
        pytest.param(2, True, id="past_the_limit"),
    ],
)
def test_the_rejected_fraction_fails_past_its_limit_naming_the_commonest_reasons(rejected, fails):
    records = [_rejection(key=str(i)) for i in range(rejected)] + [
        _rejection(kind="image", reason=Reason.IMAGE_CORRUPT)
    ]
    totals = {
        "annotation": {"read": 4, "written": 4 - rejected, "rejected": rejected},
        "image": {"read": 10, "written": 9, "rejected": 1},
    }
    if not fails:
        check_rejected_fraction(totals, records, 0.25, rejected_path="r.jsonl")
        return
    with pytest.raises(RunFailed) as failed:
        check_rejected_fraction(totals, records, 0.25, rejected_path="r.jsonl")
    assert str(failed.value) == (
        "2 of 4 annotation records were rejected, more than --max-rejected-fraction=0.25; "
        "commonest reasons: invalid_bbox (2). Rejected records: r.jsonl"
    )


def test_split_totals_and_unlisted_files():
    shards = [
        dataclasses.replace(_shard(index=0, parquet="p"), written={"image": 2, "caption": 4}),
        dataclasses.replace(_shard(index=1, parquet="p"), written={"image": 1, "annotation": 5}),
        _shard(split="val", index=0, written={"image": 1}),
    ]
    assert split_totals(shards) == {
        "train": {"num_shards": 2, "images": 3, "annotations": 5, "captions": 4, "bytes": 2},
        "val": {"num_shards": 2, "images": 1, "annotations": 0, "captions": 0, "bytes": 0},
    }
    assert unlisted_files({"train": (5, 500), "val": (1, 9), "test": (2, 1)}, shards) == {
        "test": 2,
        "train": 3,
        "val": 0,
    }


def test_the_manifest_is_a_function_of_its_inputs():
    shards = [_shard(index=0, parquet="/tmp/a.parquet", tfrecord="/tmp/a.tfrecord")]
    shards[0] = dataclasses.replace(shards[0], state="/tmp/a.state")
    kwargs = dict(
        run_id="r",
        started=0.0,
        finished=60.0,
        chosen=shards,
        totals={"image": {"read": 1, "written": 1, "rejected": 0}},
        rejected=[_rejection(), _rejection(key="8"), _rejection(reason=Reason.INVALID_RLE)],
        listed={"train": (1, 10)},
        stats=None,
        changes=None,
        volume=None,
        sources=[{"path": "a.json"}],
        settings={"num_shards": 2},
        versions={"python": "3"},
    )
    manifest = build_manifest(**kwargs)
    assert manifest == build_manifest(**kwargs)
    assert (manifest["started"], manifest["finished"]) == (
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:01:00Z",
    )
    assert [(s["path"], s["format"], s["state"]) for s in manifest["shards"]] == [
        ("data/train-00000-of-00002.parquet", "parquet", "state/train-00000-of-00002.parquet"),
        ("data/train-00000-of-00002.tfrecord", "tfrecord", "state/train-00000-of-00002.parquet"),
    ]
    assert manifest["rejected_reasons"] == {"invalid_bbox": 2, "invalid_rle": 1}
    assert "volume_check" not in manifest
    assert build_manifest(**{**kwargs, "volume": {"verdict": "passed"}})["volume_check"] == {
        "verdict": "passed"
    }


# --- PublishRun on files written by hand -------------------------------------------------


def _parquet(split: str, ids: list[int]) -> bytes:
    table = pa.table(
        {"split": pa.array([split] * len(ids), pa.string()), "image_id": pa.array(ids, pa.int64())}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _write_temp_shards(temp_dir: str, attempt: str = "a") -> list[ShardResult]:
    """Shard files under temporary names, as the writer leaves them, and their results."""
    os.makedirs(temp_dir, exist_ok=True)
    results = []
    for (split, index), ids in LAYOUT.items():
        data = _parquet(split, ids)
        path = os.path.join(temp_dir, f"{split}-{index}-{attempt}.parquet")
        with open(path, "wb") as f:
            f.write(data)
        state = os.path.join(temp_dir, f"{split}-{index}-{attempt}.state")
        with open(state, "wb") as f:
            f.write(f"state of {split} {index}".encode())
        results.append(
            ShardResult(
                split=split,
                index=index,
                num_shards=2,
                files=(
                    ShardFile(
                        format="parquet",
                        temp_path=path,
                        num_bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                    ),
                ),
                num_rows=len(ids),
                written={"image": len(ids), "annotation": 2 * len(ids)},
                files_found=len(ids),
                attempt=attempt,
                state=state,
                fingerprint=f"fp-{split}-{index}",
            )
        )
    return results


def _inputs(temp_dir: str, *, retried_shard: bool = False) -> PublishInputs:
    shards = _write_temp_shards(temp_dir)
    if retried_shard:
        # A second attempt of one shard (a retried bundle): its files are not published.
        shards += [r for r in _write_temp_shards(temp_dir, attempt="b") if r.index == 1]
    return PublishInputs(
        shards=shards,
        rejected=[_rejection()],
        counts={("read", "image"): 4, ("read", "annotation"): 9},
        categories=CATEGORIES,
        num_shards={"train": 2, "val": 2},
        listed={"train": (4, 400), "val": (1, 100)},
        stats={},
        duplicates=[],
    )


def _config(output: str, *, lake: bool = False) -> PublishConfig:
    return PublishConfig(
        output=output,
        run_id=RUN_ID,
        temp_dir=os.path.join(output, "runs", RUN_ID, ".tmp"),
        max_rejected_fraction=0.5,
        settings={"num_shards": 2},
        sources=[{"path": "instances_val.json"}],
        started=0.0,
        statistics=False,
        lake=lake_config(output, None, [], "coco_beam") if lake else None,
    )


def _without_finished(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "finished"}


def _expected_manifest(inputs: PublishInputs) -> dict:
    chosen = [s for s in inputs.shards if s.attempt == "a"]
    return {
        "format": "coco-beam/1",
        "run_id": RUN_ID,
        "started": "1970-01-01T00:00:00Z",
        "shards": [
            {
                "path": f"data/{s.split}-{s.index:05d}-of-00002.parquet",
                "format": "parquet",
                "split": s.split,
                "index": s.index,
                "num_shards": 2,
                "rows": s.num_rows,
                "bytes": s.files[0].num_bytes,
                "sha256": s.files[0].sha256,
                "state": f"state/{s.split}-{s.index:05d}-of-00002.parquet",
                "fingerprint": f"fp-{s.split}-{s.index}",
                "reused": False,
            }
            for s in chosen
        ],
        "state_version": STATE_VERSION,
        "changes": None,
        "splits": {
            "train": {
                "num_shards": 2,
                "images": 3,
                "annotations": 6,
                "captions": 0,
                "bytes": sum(s.files[0].num_bytes for s in chosen if s.split == "train"),
            },
            "val": {
                "num_shards": 2,
                "images": 1,
                "annotations": 2,
                "captions": 0,
                "bytes": sum(s.files[0].num_bytes for s in chosen if s.split == "val"),
            },
        },
        "stats": None,
        "counts": {
            "image": {"read": 4, "written": 4, "rejected": 0},
            "annotation": {"read": 9, "written": 8, "rejected": 1},
            "caption": {"read": 0, "written": 0, "rejected": 0},
            "panoptic": {"read": 0, "written": 0, "rejected": 0},
        },
        "rejected_reasons": {"invalid_bbox": 1},
        "unlisted_files": {"train": 1, "val": 0},
        "sources": [{"path": "instances_val.json"}],
        "settings": {"num_shards": 2},
        "versions": library_versions(),
        "volume_check": {
            "previous_run": None,
            "max_shrink": 0.1,
            "verdict": "nothing to compare",
        },
    }


def _files(folder: str) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but the manifest, by relative path."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if rel != "manifest.json":
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def test_publish_run_alone_emits_the_manifest_and_publishes_the_files(tmp_path):
    output = str(tmp_path / "out")
    config = _config(output)
    inputs = _inputs(config.temp_dir, retried_shard=True)
    expected = _expected_manifest(inputs)
    with TestPipeline(options=TYPE_CHECKED) as p:
        manifest = p | PublishRun(
            config,
            shards=p | "Shards" >> beam.Create(inputs.shards),
            rejected=p | "Rejected" >> beam.Create(inputs.rejected),
            counts=p | "Counts" >> beam.Create(sorted(inputs.counts.items())),
            categories=p | "Categories" >> beam.Create(sorted(inputs.categories.items())),
            num_shards=p | "NumShards" >> beam.Create(sorted(inputs.num_shards.items())),
            listed=p | "Listed" >> beam.Create(sorted(inputs.listed.items())),
            stats=p | "Stats" >> beam.Create([]).with_output_types(tuple[str, dict]),
            duplicates=p | "Duplicates" >> beam.Create([]).with_output_types(dict),
        )
        assert_that(manifest | beam.Map(_without_finished), equal_to([expected]))

    run_dir = config.run_dir
    assert _without_finished(_read_json(os.path.join(run_dir, "manifest.json"))) == expected
    with open(os.path.join(output, "LATEST")) as f:
        assert f.read() == RUN_ID + "\n"
    published = {s["path"]: s["sha256"] for s in expected["shards"]}
    files = _files(run_dir)
    assert {k: v for k, v in files.items() if k.startswith("data/")} == published
    assert sorted(k for k in files if k.startswith("state/")) == sorted(
        s["state"] for s in expected["shards"]
    )
    assert sorted(files) == sorted(
        [*published, *(s["state"] for s in expected["shards"])]
        + ["categories.parquet", "rejected/rejected.jsonl"]
    ), "a temporary file or the retried attempt's files were left behind"
    with open(os.path.join(run_dir, "rejected", "rejected.jsonl")) as f:
        assert [json.loads(line) for line in f] == [_rejection().to_json()]


def test_a_failed_check_publishes_nothing_but_the_rejected_records(tmp_path):
    config = _config(str(tmp_path / "out"))
    inputs = _inputs(config.temp_dir)
    lossy = dataclasses.replace(inputs, counts={**inputs.counts, ("read", "image"): 5})
    with pytest.raises(RunFailed, match="lost or invented"):
        publish_run(config, lossy)
    assert not os.path.exists(os.path.join(config.output, "LATEST"))
    assert sorted(_files(config.run_dir)) == sorted(
        os.path.relpath(p, config.run_dir)
        for s in inputs.shards
        for p in (s.files[0].temp_path, s.state)
    ) + ["rejected/rejected.jsonl"]


def _snapshot_runs(output: str) -> dict[str, list[str]]:
    catalog = lake_module._catalog(lake_config(output, None, [], "coco_beam"))
    return {
        name: [
            s.summary.get("coco-beam.run-id")
            for s in catalog.load_table(f"coco_beam.{name}").snapshots()
        ]
        for name in ("images", "categories")
    }


def test_publishing_retried_after_a_partial_rename_publishes_once(tmp_path, monkeypatch):
    """The step fails after renaming some shards (the fault hook) and runs again with the
    same inputs, as a runner retries a failed bundle: one published run, byte for byte an
    undisturbed one's, no stray file, and the run once in the lake table's history."""
    undisturbed = _config(str(tmp_path / "undisturbed"), lake=True)
    reference = publish_run(undisturbed, _inputs(undisturbed.temp_dir))

    config = _config(str(tmp_path / "out"), lake=True)
    inputs = _inputs(config.temp_dir)
    monkeypatch.setenv("COCO_BEAM_FAULTS", "publish:rename")
    monkeypatch.setenv("COCO_BEAM_FAULTS_DIR", str(tmp_path / "faults"))
    fn = _PublishFn(config)
    with pytest.raises(InjectedFault):
        list(fn.process(inputs))
    renamed = os.listdir(os.path.join(config.run_dir, "data"))
    assert 0 < len(renamed) < len(LAYOUT), "the fault struck between two renames"
    assert not os.path.exists(os.path.join(config.output, "LATEST"))

    [manifest] = list(fn.process(inputs))
    assert _without_finished(manifest) == _without_finished(reference)
    assert _files(config.run_dir) == _files(undisturbed.run_dir)
    assert os.listdir(os.path.join(config.output, "runs")) == [RUN_ID]
    assert _snapshot_runs(config.output) == {"images": [RUN_ID], "categories": [RUN_ID]}


def test_publishing_retried_after_latest_moved_moves_it_once_and_commits_once(
    tmp_path, monkeypatch
):
    """The lake commit fails once, after LATEST moved; the retry neither rewrites the run
    nor commits it twice."""
    config = _config(str(tmp_path / "out"), lake=True)
    inputs = _inputs(config.temp_dir)
    register = lake_module.register_run
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("catalog unreachable")
        return register(*args, **kwargs)

    monkeypatch.setattr(lake_module, "register_run", fails_once)
    with pytest.raises(ConnectionError):
        publish_run(config, inputs)
    latest = os.path.join(config.output, "LATEST")
    moved_at = os.stat(latest).st_mtime_ns
    written = _read_json(os.path.join(config.run_dir, "manifest.json"))
    assert publish_run(config, inputs) == written
    assert os.stat(latest).st_mtime_ns == moved_at
    assert publish_run(config, inputs) == written  # and once more: nothing left to do
    assert _snapshot_runs(config.output) == {"images": [RUN_ID], "categories": [RUN_ID]}


def test_a_destination_with_other_bytes_and_no_source_fails_the_run(tmp_path):
    config = _config(str(tmp_path / "out"))
    inputs = _inputs(config.temp_dir)
    first = inputs.shards[0]
    final = os.path.join(config.run_dir, "data", "train-00000-of-00002.parquet")
    os.makedirs(os.path.dirname(final))
    with open(final, "wb") as f:
        f.write(b"something else")
    os.remove(first.files[0].temp_path)
    with pytest.raises(RunFailed, match="holds other bytes"):
        publish_run(config, inputs)
    assert not os.path.exists(os.path.join(config.output, "LATEST"))


# --- the volume check --------------------------------------------------------------------


def _figures(run, images, instances=None):
    stats = None
    if instances is not None:
        stats = {
            "splits": {
                split: {
                    "categories": [
                        {"id": cat_id, "name": name, "num_instances": n}
                        for cat_id, (name, n) in cats.items()
                    ]
                }
                for split, cats in instances.items()
            }
        }
    splits = {split: {"images": n} for split, n in images.items()}
    return volume_figures(run, splits, stats)


PREVIOUS = _figures(
    "r1", {"train": 100, "val": 20}, {"train": {1: ("cat", 50), 2: ("dog", 7)}, "val": {}}
)


def test_the_volume_check_passes_small_changes_and_a_renamed_category():
    current = _figures(
        "r2", {"train": 91, "val": 25}, {"train": {1: ("kitty", 40), 2: ("dog", 1)}, "val": {}}
    )
    record = check_volume(PREVIOUS, current, 0.1)
    assert record == {
        "previous_run": "r1",
        "max_shrink": 0.1,
        "splits": {
            "train": {"previous": 100, "current": 91, "shrink": 0.09},
            "val": {"previous": 20, "current": 25, "shrink": -0.25},
        },
        "categories_compared": True,
        "categories_emptied": [],
        "problems": [],
        "verdict": "passed",
    }
    assert check_volume(None, current, 0.1) == {
        "previous_run": None,
        "max_shrink": 0.1,
        "verdict": "nothing to compare",
    }


@pytest.mark.parametrize(
    ("images", "instances", "message"),
    [
        pytest.param(
            {"train": 89, "val": 20},
            None,
            "split train fell from 100 to 89 written images (11% fewer) since run r1, more than "
            "--max-shrink=0.1. If this is intended, run again with --max-shrink=0.11",
            id="a_split_shrank",
        ),
        pytest.param(
            {"train": 100},
            None,
            "split val disappeared (20 images in run r1). If this is intended, run again with "
            "--max-shrink=1",
            id="a_split_disappeared",
        ),
        pytest.param(
            {"train": 100, "val": 20},
            {"train": {1: ("cat", 50)}, "val": {}},
            "category 2 (dog) of split train has no instances, 7 in run r1. If this is "
            "intended, run again with --max-shrink=1",
            id="a_category_emptied",
        ),
    ],
)
def test_the_volume_check_fails_naming_the_split_the_counts_and_the_flag(
    images, instances, message
):
    current = _figures("r2", images, instances)
    record = check_volume(PREVIOUS, current, 0.1)
    assert record["verdict"] == "failed"
    assert volume_failure(record) == message
    assert check_volume(PREVIOUS, current, 1.0)["verdict"] == "passed"


def test_without_statistics_on_either_side_categories_are_not_compared():
    record = check_volume(PREVIOUS, _figures("r2", {"train": 100, "val": 20}), 0.1)
    assert record["categories_compared"] is False
    assert record["verdict"] == "passed"


def test_a_shrunken_run_is_not_published_and_latest_stays(tmp_path):
    """Publishing against a previous run with twice the images fails before any rename."""
    output = str(tmp_path / "out")
    first = dataclasses.replace(_config(output), run_id="20250101T000000Z-000000")
    first = dataclasses.replace(first, temp_dir=os.path.join(first.run_dir, ".tmp"))
    doubled = _inputs(first.temp_dir)
    bigger = [
        dataclasses.replace(s, written={k: 2 * v for k, v in s.written.items()})
        for s in doubled.shards
    ]
    counts = {k: 2 * v for k, v in doubled.counts.items()}
    counts[("read", "annotation")] -= 1
    publish_run(first, dataclasses.replace(doubled, shards=bigger, counts=counts))

    config = _config(output)
    with pytest.raises(RunFailed, match=r"split train fell from 6 to 3 written images"):
        publish_run(config, _inputs(config.temp_dir))
    with open(os.path.join(output, "LATEST")) as f:
        assert f.read().strip() == first.run_id
    assert not os.path.exists(os.path.join(config.run_dir, "data"))


def test_a_leased_run_publishes_only_while_it_holds_the_lease_and_then_releases_it(tmp_path):
    from coco_beam.transforms.runs.lease import Lease, LeaseHeld, lease_holder

    config = dataclasses.replace(_config(str(tmp_path / "out")), leased=True)
    inputs = _inputs(config.temp_dir)
    other = Lease.acquire(config.output, "another-run", timeout=60)
    with pytest.raises(LeaseHeld, match=f"run {RUN_ID} lost the lease of .* to run another-run"):
        publish_run(config, inputs)
    assert not os.path.exists(os.path.join(config.output, "LATEST"))
    assert other.release()
    Lease.acquire(config.output, RUN_ID, timeout=60).detach()  # a launcher that did not wait
    publish_run(config, inputs)
    with open(os.path.join(config.output, "LATEST")) as f:
        assert f.read().strip() == RUN_ID
    assert lease_holder(config.output) is None, "released by the publishing step"
