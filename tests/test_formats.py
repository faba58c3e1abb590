"""WebDataset tars and Ultralytics YOLO datasets, from the same pass as the Parquet shards.

The tars are read back with the ``webdataset`` library and with ``tarfile``; the YOLO label
files are compared line by line with a conversion of the source JSON written here, apart from
the pipeline, the way Ultralytics' ``convert_coco`` converts (its package needs PyTorch and
OpenCV, too heavy for a test dependency).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import io
import json
import os
import tarfile
from array import array

import numpy as np
import pyarrow.parquet as pq
import pytest
import test_gcs
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from coco_beam.pipelines.options import BuildOptions
from coco_beam.schemas.records import ImagePlan, ShardResult
from coco_beam.transforms.images.decode import ImageFacts
from coco_beam.transforms.images.outline import mask_polygon
from coco_beam.transforms.shards.config import ShardWriterConfig
from coco_beam.transforms.shards.formats import FORMATS, REGISTRY
from coco_beam.transforms.shards.webdataset import WebDatasetFile, sample_key
from coco_beam.transforms.shards.yolo import (
    YoloFile,
    class_indices,
    flip_index,
    label_lines,
    publish_layout,
    split_roles,
)

from helpers import require_coco_tiny, run_build

wds = pytest.importorskip("webdataset", reason="webdataset (a test dependency) is not installed")

# The GCS emulator (a real server on loopback) and the synthetic dataset uploaded to it.
emulator, gcs_input = test_gcs.emulator, test_gcs.gcs_input

_FORMATS = "--formats=parquet,webdataset,yolo"


# ---- pure core ---------------------------------------------------------------------------


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _raster(polygon: list[float], height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))


def _disc(height=60, width=80, cx=40, cy=30, r=20) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


def _two_parts() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:20] = True
    mask[25:35, 30:55] = True
    return mask


def _ring() -> np.ndarray:
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[10:20, 10:20] = False
    return mask


def _holes_filled(mask: np.ndarray) -> np.ndarray:
    filled = mask.copy()
    filled[10:20, 10:20] = True
    return filled


@pytest.mark.parametrize(
    "mask, expected",
    [
        pytest.param(np.eye(1, dtype=bool), np.eye(1, dtype=bool), id="one-pixel"),
        pytest.param(np.pad(np.ones((4, 7), bool), 3), np.pad(np.ones((4, 7), bool), 3), id="box"),
        pytest.param(_disc(), _disc(), id="disc"),
        pytest.param(_two_parts(), _two_parts(), id="two-parts-joined"),
        pytest.param(_ring(), _holes_filled(_ring()), id="hole-not-cut"),
    ],
)
def test_mask_polygon_outlines_the_mask(mask, expected):
    polygon = mask_polygon(_rle(mask))
    height, width = mask.shape
    xs, ys = polygon[0::2], polygon[1::2]
    assert min(xs) >= 0 and max(xs) <= width and min(ys) >= 0 and max(ys) <= height
    drawn = _raster(polygon, height, width).astype(bool)
    iou = (drawn & expected).sum() / (drawn | expected).sum()
    assert iou > 0.97


def test_mask_polygon_runs_through_the_midpoints_of_the_border_edges():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    corners = [(3.5, 2), (8.5, 2), (9, 2.5), (9, 4.5), (8.5, 5), (3.5, 5), (3, 4.5), (3, 2.5)]
    assert mask_polygon(_rle(mask)) == [float(v) for corner in corners for v in corner]


def test_mask_polygon_of_an_empty_mask_is_empty():
    assert mask_polygon(_rle(np.zeros((5, 5), bool))) == []


def test_mask_polygon_draws_a_staircase_as_one_edge():
    mask = np.tril(np.ones((50, 50), bool))  # a triangle: its hypotenuse is a staircase
    polygon = mask_polygon(_rle(mask))
    assert len(polygon) // 2 <= 6
    np.testing.assert_array_equal(_raster(polygon, 50, 50), mask)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda h: st.integers(1, 12).flatmap(
            lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
                lambda bits: np.array(bits, bool).reshape(h, w)
            )
        )
    )
)
def test_any_mask_gives_a_polygon_within_the_image_or_none(mask):
    polygon = mask_polygon(_rle(mask))
    if not mask.any():
        assert polygon == []
        return
    height, width = mask.shape
    assert len(polygon) >= 6 and len(polygon) % 2 == 0
    assert all(0 <= x <= width for x in polygon[0::2])
    assert all(0 <= y <= height for y in polygon[1::2])


def _plan(annotations, width=100, height=50) -> ImagePlan:
    return ImagePlan(
        split="train",
        image_id=7,
        file_name="a/b.c.jpg",
        width=width,
        height=height,
        path="/nowhere",
        source="instances_train.json",
        annotations=annotations,
        captions=[],
        flags=[],
    )


def _ann(ann_id, bbox, *, category_id=1, iscrowd=0, keypoints=None, rle=None) -> dict:
    return {
        "id": ann_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": iscrowd,
        "rle": rle,
        "keypoints": keypoints,
        "num_keypoints": None,
        "flags": [],
    }


_CATEGORIES = {
    1: {"id": 1, "name": "person", "keypoints": ["nose", "left_eye", "right_eye"]},
    5: {"id": 5, "name": "bus"},
    200: {"id": 200, "name": "sky", "isthing": False},
}


def test_class_indices_follow_the_ids_and_leave_stuff_out():
    assert class_indices(_CATEGORIES) == {1: 0, 5: 1}


def test_detect_lines_normalize_clip_and_count_what_is_left_out():
    plan = _plan(
        [
            _ann(1, [10.0, 5.0, 20.0, 10.0], category_id=5),
            _ann(2, [90.0, 40.0, 20.0, 20.0]),  # past the corner: clipped to the image
            _ann(3, [0.0, 0.0, 5.0, 5.0], iscrowd=1),
            _ann(4, [100.0, 10.0, 5.0, 5.0]),  # nothing inside the image
            _ann(5, [1.0, 1.0, 2.0, 2.0], category_id=200),
        ]
    )
    lines, left_out = label_lines(plan, class_indices(_CATEGORIES), task="detect")
    assert lines == ["1 0.2 0.2 0.2 0.2", "0 0.95 0.9 0.1 0.2"]
    assert left_out == {"crowd": 1, "zero_size": 1, "stuff_category": 1}


def test_pose_lines_carry_every_joint_and_skip_instances_without_one():
    labelled = _ann(
        1, [10.0, 10.0, 20.0, 20.0], keypoints=[15.0, 12.0, 2, 0.0, 0.0, 0, 120.0, 5, 1]
    )
    unlabelled = _ann(2, [10.0, 10.0, 20.0, 20.0], keypoints=[0.0, 0.0, 0] * 3)
    plan = _plan([labelled, unlabelled, _ann(3, [1.0, 1.0, 3.0, 3.0], category_id=5)])
    lines, left_out = label_lines(plan, class_indices(_CATEGORIES), task="pose", num_keypoints=3)
    assert lines == ["0 0.2 0.4 0.2 0.4 0.15 0.24 2 0 0 0 1 0.1 1"]
    assert left_out == {"no_keypoints": 2}


def test_segment_lines_are_the_mask_outline_normalized():
    mask = np.zeros((50, 100), bool)
    mask[10, 10] = True
    empty = _rle(np.zeros((50, 100), bool))
    plan = _plan(
        [
            _ann(1, [10.0, 10.0, 1.0, 1.0], rle=_rle(mask)),
            _ann(2, [20.0, 10.0, 0.2, 0.2], category_id=5, rle=empty),  # no pixel: its box
        ]
    )
    lines, _ = label_lines(plan, class_indices(_CATEGORIES), task="segment")
    assert lines == [
        "0 0.105 0.2 0.11 0.21 0.105 0.22 0.1 0.21",
        "1 0.2 0.2 0.202 0.2 0.202 0.204 0.2 0.204",
    ]


def _ultralytics_polygon(rings: list, width: int, height: int) -> list[float]:
    """``convert_coco(..., use_segments=True)``'s polygon of one instance, in plain Python: one
    ring normalized; several merged as ``merge_multi_segment`` merges them (each ring joined
    to the next at their closest points, the first such pair in row order; a middle ring
    reversed when its entry index is past its exit index, the indexes swapped, not remapped;
    rolled to its entry point and closed; the middle rings' way back added last, last ring
    first). Clipped to [0, 1] as the pipeline clips. Rings without a point are left out."""
    rings = [ring for ring in rings if len(ring)]
    points = [[(ring[i], ring[i + 1]) for i in range(0, len(ring), 2)] for ring in rings]
    if len(points) == 1:
        merged = points[0]
    else:
        joins = [[] for _ in points]
        for i in range(1, len(points)):
            _, a, b = min(
                ((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2, m, n)
                for m, p in enumerate(points[i - 1])
                for n, q in enumerate(points[i])
            )
            joins[i - 1].append(a)
            joins[i].append(b)
        last, merged = len(points) - 1, []
        for i, idx in enumerate(joins):
            ring = points[i]
            if len(idx) == 2 and idx[0] > idx[1]:
                idx, ring = idx[::-1], ring[::-1]
            ring = ring[idx[0] :] + ring[: idx[0]]
            points[i] = ring = ring + ring[:1]
            merged += ring if i in (0, last) else ring[: idx[1] - idx[0] + 1]
        for i in range(last - 1, 0, -1):
            merged += points[i][abs(joins[i][1] - joins[i][0]) :]
    return [min(max(v, 0.0), 1.0) for x, y in merged for v in (x / width, y / height)]


def _line(cls: int, values: list[float]) -> str:
    return ("%d" + " %g" * len(values)) % (cls, *values)


_SQUARES = [[0, 0, 10, 0, 10, 10, 0, 10], [20, 0, 30, 0, 30, 10, 20, 10], [40, 0, 50, 0, 50, 10]]


def test_merged_rings_join_at_their_closest_points_and_walk_back():
    # Worked by hand from merge_multi_segment: the first square entered at (10, 0), the middle
    # one walked from (20, 0) to (30, 0) on the way out and around on the way back.
    expected = (
        "0 0.1 0 0.1 0.2 0 0.2 0 0 0.1 0 0.2 0 0.3 0 0.4 0 0.5 0 0.5 0.2 0.4 0 "
        "0.3 0 0.3 0.2 0.2 0.2 0.2 0"
    )
    assert _line(0, _ultralytics_polygon(_SQUARES, 100, 50)) == expected
    ann = _ann(1, [0.0, 0.0, 50.0, 10.0])
    plan = dataclasses.replace(_plan([ann]), polygons={1: [array("d", r) for r in _SQUARES]})
    assert label_lines(plan, class_indices(_CATEGORIES), task="segment")[0] == [expected]


def test_segment_lines_take_the_json_polygons_and_rle_instances_their_mask_outline():
    mask = np.zeros((50, 100), bool)
    mask[10, 10] = True
    plan = _plan(
        [
            _ann(1, [10.0, 10.0, 1.0, 1.0], rle=_rle(mask)),  # RLE: no rings kept
            _ann(2, [90.0, 5.0, 20.0, 5.0], category_id=5, rle=_rle(mask)),
            _ann(3, [1.0, 1.0, 2.0, 2.0], rle=_rle(mask)),
        ]
    )
    # Past the right edge: clipped; one ring: as it is, however the mask looks.
    plan.polygons = {2: [[90.0, 5.0, 110.0, 5.0, 110.0, 10.0]], 3: [[], [1.0, 1.0, 3, 1, 3, 3]]}
    lines, _ = label_lines(plan, class_indices(_CATEGORIES), task="segment")
    assert lines == [
        "0 0.105 0.2 0.11 0.21 0.105 0.22 0.1 0.21",
        "1 0.9 0.1 1 0.1 1 0.2",
        "0 0.01 0.02 0.03 0.02 0.03 0.06",
    ]


_ring_coordinate = st.integers(0, 400).map(lambda v: v / 4)


@given(
    rings=st.lists(
        st.lists(st.tuples(_ring_coordinate, _ring_coordinate), min_size=3, max_size=12),
        min_size=1,
        max_size=5,
    )
)
@settings(max_examples=200, deadline=None)
def test_any_rings_give_the_line_of_the_reference_conversion(rings):
    flat = [[v for point in ring for v in point] for ring in rings]
    ann = _ann(1, [0.0, 0.0, 100.0, 50.0])
    plan = dataclasses.replace(_plan([ann]), polygons={1: [array("d", r) for r in flat]})
    lines, _ = label_lines(plan, class_indices(_CATEGORIES), task="segment")
    assert lines == [_line(0, _ultralytics_polygon(flat, 100, 50))]


def test_flip_index_swaps_left_and_right_joints():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "tail"]
    assert flip_index(names) == [0, 2, 1, 4, 3, 5]


@pytest.mark.parametrize(
    "splits, expected",
    [
        pytest.param(
            ["train2017", "val2017", "test2017"],
            {"train": ["train2017"], "val": ["val2017"], "test": ["test2017"]},
            id="coco",
        ),
        pytest.param(["train"], {"train": ["train"], "val": ["train"]}, id="no-val"),
        pytest.param(["a", "b", "valid"], {"train": ["a", "b"], "val": ["valid"]}, id="no-train"),
    ],
)
def test_split_roles(splits, expected):
    assert split_roles(splits) == expected


def test_the_registry_names_four_formats_and_the_task_is_checked():
    assert FORMATS == ("parquet", "tfrecord", "webdataset", "yolo")
    assert REGISTRY["webdataset"].extension == "tar"
    with pytest.raises(ValueError, match="YOLO task"):
        ShardWriterConfig(temp_dir="/tmp", yolo_task="classify")
    with pytest.raises(SystemExit):
        BuildOptions(["--yolo-task=classify"]).view_as(BuildOptions)


def test_sample_keys_are_stable_and_hold_no_dot():
    assert sample_key("val2017", 139) == "val2017_000000000139"
    assert sample_key("val.v2", 1) == "val-v2_000000000001"


def _facts(fmt: str) -> ImageFacts:
    return ImageFacts("ab" * 32, fmt, "RGB", 4, 3, None, ())


def _write_tar(path: str) -> tuple:
    shard = WebDatasetFile(path)
    plan = _plan([_ann(1, [1.0, 1.0, 2.0, 2.0], rle={"size": [3, 4], "counts": "03"})])
    shard.add(plan, b"jpeg bytes", _facts("jpeg"), None)
    shard.add(dataclasses.replace(plan, image_id=9), b"png bytes", _facts("png"), None)
    return shard.close()


def test_a_tar_has_fixed_headers_adjacent_members_and_the_same_bytes_twice(tmp_path):
    first = _write_tar(str(tmp_path / "a.tar"))
    second = _write_tar(str(tmp_path / "b.tar"))
    data = (tmp_path / "a.tar").read_bytes()
    assert data == (tmp_path / "b.tar").read_bytes()
    assert (first.num_bytes, first.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert first.sha256 == second.sha256 and first.format == "webdataset"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "train_000000000007.jpg",
            "train_000000000007.json",
            "train_000000000009.png",
            "train_000000000009.json",
        ]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert tar.extractfile(members[2]).read() == b"png bytes"
        doc = json.loads(tar.extractfile(members[1]).read())
    assert "image" not in doc and doc["annotations"][0]["rle"] == {"size": [3, 4], "counts": "03"}


def _yolo_shard(run, source: str, split="train", categories=_CATEGORIES) -> ShardResult:
    """One written YOLO shard of two images, its index already moved to ``run/data/``."""
    name = f"{split}-00000-of-00001.yolo.jsonl"
    temp = str(run / ".tmp" / f"{name}.x")
    os.makedirs(os.path.dirname(temp), exist_ok=True)
    shard = YoloFile(temp, categories, task="detect")
    plan = _plan([_ann(1, [10.0, 5.0, 20.0, 10.0], category_id=min(categories))])
    plan = dataclasses.replace(plan, path=source, split=split)
    shard.add(plan, b"jpeg bytes", _facts("jpeg"), None)
    shard.add(dataclasses.replace(plan, image_id=8, file_name="c.jpg"), b"x", _facts("jpeg"), None)
    file = shard.close()
    os.makedirs(run / "data", exist_ok=True)
    os.rename(temp, run / "data" / name)
    return ShardResult(split, 0, 1, (file,), 2, {"image": 2}, 2, "x")


def test_publishing_the_yolo_layout_can_be_repeated_and_checks_every_file(tmp_path):
    source = tmp_path / "source.jpg"
    source.write_bytes(b"jpeg bytes")
    chosen = [_yolo_shard(tmp_path / "run", str(source))]
    run = str(tmp_path / "run")
    entry = publish_layout(run, chosen, {"train": _CATEGORIES}, task="detect", previous_dir=None)
    assert (entry["images"], entry["instances"]) == (2, 2)
    with open(os.path.join(run, "labels", "train", "a", "b.c.txt")) as f:
        assert f.read() == "0 0.2 0.2 0.2 0.2\n"
    assert os.path.samefile(source, os.path.join(run, "images", "train", "a", "b.c.jpg"))
    # A retry (the renames done already) finds everything in place.
    again = publish_layout(run, chosen, {"train": _CATEGORIES}, task="detect", previous_dir=None)
    assert again == entry
    os.remove(os.path.join(run, "labels", "train", "c.txt"))
    with pytest.raises(ValueError, match="neither temporary nor in place"):
        publish_layout(run, chosen, {"train": _CATEGORIES}, task="detect", previous_dir=None)


def test_splits_with_labels_must_share_their_classes(tmp_path):
    source = tmp_path / "source.jpg"
    source.write_bytes(b"jpeg bytes")
    other = {5: _CATEGORIES[5]}
    categories = {"train": _CATEGORIES, "val": other}
    run = tmp_path / "run"
    chosen = [_yolo_shard(run, str(source))]
    # No label line of val yet: its classes do not matter.
    entry = publish_layout(str(run), chosen, categories, task="detect", previous_dir=None)
    assert entry["splits"]["train"]["instances"] == 2
    chosen.append(_yolo_shard(run, str(source), "val", other))
    with pytest.raises(ValueError, match="same categories"):
        publish_layout(str(run), chosen, categories, task="detect", previous_dir=None)


# ---- builds ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def formats_build(synth_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("formats-out"))
    return out, *run_build(
        f"--coco-root={synth_root}", f"--output={out}", _FORMATS, "--num-shards=2"
    )


def _files(run_dir: str, ext: str) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "data", f"*.{ext}")))


@dataclasses.dataclass(frozen=True)
class _MaskLine:
    """The expected line of a non-crowd RLE instance: its class, and a polygon that covers its
    mask (the outline of a mask is the pipeline's own; it is checked by overlap)."""

    cls: int
    ann: dict
    height: int
    width: int

    def check(self, line: str) -> None:
        """Asserts ``line`` is this instance's (its mask compared when big enough)."""
        cls, *coords = line.split()
        assert int(cls) == self.cls
        seg = self.ann["segmentation"]
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, self.height, self.width)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        truth = mask_utils.decode(rle).astype(bool)
        if truth.sum() < 100:
            return
        scale = (self.width, self.height)
        polygon = [float(v) * scale[i % 2] for i, v in enumerate(coords)]
        drawn = _raster(polygon, self.height, self.width).astype(bool)
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.9


def _reference_lines(root: str, family: str, split: str, task: str) -> dict[str, list]:
    """Label lines by label path, from the source JSON alone: class = index of the category id
    among the instances file's ids; crowd left out; box clipped to the image, centre and size
    normalized; pose: instances with a labelled keypoint, joints normalized and clipped;
    segment: the JSON's polygons as Ultralytics converts them (``_ultralytics_polygon``), a
    ``_MaskLine`` for an RLE instance."""
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        ids = sorted(c["id"] for c in json.load(f)["categories"])
    with open(os.path.join(root, "annotations", f"{family}_{split}.json")) as f:
        doc = json.load(f)
    anns = collections.defaultdict(list)
    for ann in sorted(doc["annotations"], key=lambda a: a["id"]):
        anns[ann["image_id"]].append(ann)
    expected = {}
    for image in doc["images"]:
        size = np.array([image["width"], image["height"]], np.float64)
        lines = []
        for ann in anns[image["id"]]:
            if ann["iscrowd"]:
                continue
            box = np.array(ann["bbox"], np.float64)
            lo, hi = np.maximum(box[:2], 0.0), np.minimum(box[:2] + box[2:], size)
            if (hi <= lo).any():
                continue
            values = [*((lo + hi) / 2 / size), *((hi - lo) / size)]
            if task == "segment":
                cls = ids.index(ann["category_id"])
                if isinstance(ann["segmentation"], dict):  # RLE: checked against its mask
                    lines.append(_MaskLine(cls, ann, image["height"], image["width"]))
                else:
                    w, h = image["width"], image["height"]
                    lines.append(_line(cls, _ultralytics_polygon(ann["segmentation"], w, h)))
                continue
            if task == "pose":
                kp = np.array(ann["keypoints"], np.float64).reshape(-1, 3)
                if not kp[:, 2].any():
                    continue
                kp[:, :2] = np.clip(kp[:, :2] / size, 0.0, 1.0)
                values += kp.reshape(-1).tolist()
            lines.append(("%d" + " %g" * len(values)) % (ids.index(ann["category_id"]), *values))
        stem = image["file_name"].rsplit(".", 1)[0]
        expected[f"labels/{split}/{stem}.txt"] = lines
    return expected


def _label_files(run_dir: str) -> dict[str, list[str]]:
    labels = {}
    for path in glob.glob(os.path.join(run_dir, "labels", "**", "*.txt"), recursive=True):
        with open(path) as f:
            labels[os.path.relpath(path, run_dir)] = f.read().splitlines()
    return labels


def _check_yolo(root: str, run_dir: str, manifest: dict, family: str, task: str) -> int:
    """The label files equal the reference line by line (an RLE instance's: its class, and a
    polygon covering its mask); the images are the source's bytes; ``data.yaml`` and
    ``classes.json`` name the classes in id order. Returns the lines seen."""
    splits = sorted({s["split"] for s in manifest["shards"]})
    expected = {}
    for split in splits:
        if os.path.exists(os.path.join(root, "annotations", f"{family}_{split}.json")):
            expected.update(_reference_lines(root, family, split, task))
    got = _label_files(run_dir)
    for path, lines in expected.items():
        for n, line in enumerate(lines):
            if isinstance(line, _MaskLine) and n < len(got[path]):
                line.check(got[path][n])
                lines[n] = got[path][n]
    # Splits without annotations (COCO's test images) get an empty label file per image.
    assert {p: got[p] for p in expected} == expected
    assert not any(got[p] for p in set(got) - set(expected))
    for path in glob.glob(os.path.join(run_dir, "images", "**", "*.*"), recursive=True):
        split, name = os.path.relpath(path, os.path.join(run_dir, "images")).split(os.sep, 1)
        with open(path, "rb") as a, open(os.path.join(root, split, name), "rb") as b:
            assert a.read() == b.read()
    with open(os.path.join(run_dir, "data.yaml")) as f:
        data = yaml.safe_load(f)
    with open(os.path.join(run_dir, "classes.json")) as f:
        classes = json.load(f)
    assert [c["index"] for c in classes] == list(range(len(classes)))
    assert [c["category_id"] for c in classes] == sorted(c["category_id"] for c in classes)
    assert data["names"] == {c["index"]: c["name"] for c in classes}
    assert data["path"] == run_dir and os.path.isdir(os.path.join(run_dir, data["val"]))
    crowd = sum(a["iscrowd"] for split in splits for a in _instances(root, split))
    assert manifest["yolo"]["left_out"]["crowd"] == crowd
    return sum(len(lines) for lines in expected.values())


def _instances(root: str, split: str) -> list[dict]:
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["annotations"]


def test_yolo_detect_labels_equal_an_independent_conversion(synth_root, formats_build):
    _, run_dir, manifest = formats_build
    lines = _check_yolo(synth_root, run_dir, manifest, "instances", "detect")
    assert lines == manifest["yolo"]["instances"] > 0
    assert manifest["settings"]["yolo_task"] == "detect"


def test_yolo_files_are_published_and_listed(formats_build):
    _, run_dir, manifest = formats_build
    assert not os.path.exists(os.path.join(run_dir, ".tmp"))
    indexes = [s for s in manifest["shards"] if s["format"] == "yolo"]
    assert len(indexes) == 6
    total = 0
    for entry in indexes:
        with open(os.path.join(run_dir, entry["path"]), "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        for line in data.decode().splitlines():
            member = json.loads(line)
            with open(os.path.join(run_dir, member["label"]), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == member["label_sha256"]
            total += 1
    assert (
        total == manifest["yolo"]["images"] == sum(s["images"] for s in manifest["splits"].values())
    )
    for item in manifest["yolo"]["files"]:
        with open(os.path.join(run_dir, item["path"]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == item["sha256"]


def _tar_samples(path: str) -> list[tuple[str, dict]]:
    return [(s["__key__"], s) for s in wds.WebDataset(path, shardshuffle=False)]


def test_webdataset_tars_hold_every_image_once_with_the_parquet_rows_annotations(
    synth_root, formats_build
):
    _, run_dir, manifest = formats_build
    tars, parquets = _files(run_dir, "tar"), _files(run_dir, "parquet")
    assert [t[:-4] for t in tars] == [p[:-8] for p in parquets]
    seen = set()
    for tar, parquet in zip(tars, parquets, strict=True):
        rows = pq.read_table(parquet).to_pylist()
        samples = _tar_samples(tar)
        # The same images, in the same shards and the same order.
        assert [key for key, _ in samples] == [sample_key(r["split"], r["image_id"]) for r in rows]
        for (key, sample), row in zip(samples, rows, strict=True):
            image = sample.get("jpg", sample.get("png"))
            with open(os.path.join(synth_root, row["split"], row["file_name"]), "rb") as f:
                assert image == f.read() == row["image"]["bytes"]
            doc = json.loads(sample["json"])
            assert doc["annotations"] == row["annotations"]
            assert doc["captions"] == row["captions"]
            panoptic = row["panoptic"] and {
                "file_name": row["panoptic"]["file_name"],
                "segments": row["panoptic"]["segments"],
            }
            assert doc["panoptic"] == panoptic
            assert (doc["image_id"], doc["sha256"]) == (row["image_id"], row["sha256"])
            seen.add(key)
    assert len(seen) == sum(s["images"] for s in manifest["splits"].values())
    for entry in manifest["shards"]:
        if entry["format"] == "webdataset":
            with open(os.path.join(run_dir, entry["path"]), "rb") as f:
                data = f.read()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (
                entry["bytes"],
                entry["sha256"],
            )


def test_tarfile_reads_the_same_samples(formats_build):
    _, run_dir, _ = formats_build
    for tar in _files(run_dir, "tar"):
        with tarfile.open(tar) as archive:
            members = archive.getmembers()
        names = [m.name for m in members]
        keys = [n.split(".", 1)[0] for n in names]
        assert keys[0::2] == keys[1::2] and len(set(keys)) == len(keys) // 2
        assert all(n.endswith(".json") for n in names[1::2])
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} <= {(0, 0, 0, 0o644)}
        assert [key for key, _ in _tar_samples(tar)] == keys[0::2]


def test_a_fresh_build_gives_the_same_bytes_and_a_rebuild_reuses_everything(
    synth_root, formats_build, tmp_path
):
    out, run_dir, manifest = formats_build
    _, fresh = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", _FORMATS, "--num-shards=2"
    )
    digests = {e["path"]: e["sha256"] for e in manifest["shards"]}
    assert {e["path"]: e["sha256"] for e in fresh["shards"]} == digests
    rebuilt_dir, rebuilt = run_build(
        f"--coco-root={synth_root}", f"--output={out}", _FORMATS, "--num-shards=2"
    )
    assert rebuilt["changes"]["shards_reused"] == 6 and rebuilt["changes"]["shards_rewritten"] == 0
    assert {e["path"]: e["sha256"] for e in rebuilt["shards"]} == digests
    assert _label_files(rebuilt_dir) == _label_files(run_dir)
    images = sorted(glob.glob(os.path.join(run_dir, "images", "*", "*")))
    assert len(images) == manifest["yolo"]["images"]
    for path in images:
        again = os.path.join(rebuilt_dir, os.path.relpath(path, run_dir))
        assert os.path.samefile(path, again)  # linked, not copied


def test_yolo_pose_labels_equal_an_independent_conversion(synth_root, tmp_path):
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--formats=yolo", "--yolo-task=pose"
    )
    lines = _check_yolo(synth_root, run_dir, manifest, "person_keypoints", "pose")
    assert lines == manifest["yolo"]["instances"] > 0
    with open(os.path.join(run_dir, "data.yaml")) as f:
        data = yaml.safe_load(f)
    assert data["kpt_shape"] == [17, 3]
    assert data["flip_idx"] == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def _polygon_instances(root: str) -> tuple[int, int]:
    """Non-crowd instances with polygons in the source JSON, and those with several rings."""
    anns = [a for split in ("train2017", "val2017") for a in _instances(root, split)]
    polygons = [a for a in anns if not a["iscrowd"] and isinstance(a["segmentation"], list)]
    return len(polygons), sum(len(a["segmentation"]) > 1 for a in polygons)


def test_yolo_segment_lines_equal_ultralytics_conversion_of_the_json_polygons(synth_root, tmp_path):
    run_dir, manifest = run_build(
        f"--coco-root={synth_root}", f"--output={tmp_path}", "--formats=yolo", "--yolo-task=segment"
    )
    lines = _check_yolo(synth_root, run_dir, manifest, "instances", "segment")
    assert lines == manifest["yolo"]["instances"] > 0
    polygons, merged = _polygon_instances(synth_root)
    assert polygons > 50 and merged > 10


def test_yolo_segment_lines_of_real_coco(tmp_path):
    root = str(require_coco_tiny())
    run_dir, manifest = run_build(
        f"--coco-root={root}", f"--output={tmp_path}", "--formats=yolo", "--yolo-task=segment"
    )
    lines = _check_yolo(root, run_dir, manifest, "instances", "segment")
    assert lines == manifest["yolo"]["instances"] > 0
    polygons, merged = _polygon_instances(root)
    assert polygons > 100 and merged > 0


def test_real_coco_webdataset_and_yolo(tmp_path):
    root = str(require_coco_tiny())
    run_dir, manifest = run_build(f"--coco-root={root}", f"--output={tmp_path}", _FORMATS)
    assert _check_yolo(root, run_dir, manifest, "instances", "detect") > 0
    keys = [key for tar in _files(run_dir, "tar") for key, _ in _tar_samples(tar)]
    assert len(keys) == len(set(keys)) == sum(s["images"] for s in manifest["splits"].values())


def test_gcs_to_gcs_gives_the_same_tars_and_yolo_layout(gcs_input, formats_build):
    client = gcs_input
    _, manifest = run_build(
        "--coco-root=gs://coco-in/coco",
        "--output=gs://coco-out/formats",
        _FORMATS,
        "--num-shards=2",
    )
    _, local_dir, local = formats_build
    assert [(s["path"], s["sha256"]) for s in manifest["shards"]] == [
        (s["path"], s["sha256"]) for s in local["shards"]
    ]
    assert manifest["yolo"]["files"][0] == local["yolo"]["files"][0]  # classes.json
    prefix = f"formats/runs/{manifest['run_id']}/"
    blobs = {b.name[len(prefix) :]: b for b in client.list_blobs("coco-out", prefix=prefix)}
    assert not any(name.startswith(".tmp/") for name in blobs), "temporary files left behind"
    labels = _label_files(local_dir)
    assert {n for n in blobs if n.startswith("labels/")} == set(labels)
    for name, lines in labels.items():
        assert blobs[name].download_as_bytes().decode().splitlines() == lines
    images = {n for n in blobs if n.startswith("images/")}
    assert len(images) == local["yolo"]["images"]
