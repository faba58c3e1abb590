"""Bad records end in the rejected output with a reason, counted; good ones are unaffected."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from coco_beam.pipelines.build import run

from helpers import IN_MEMORY, run_build


def _jpeg(w, h):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(w * h).integers(0, 255, (h, w, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()


@pytest.fixture()
def messy(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images, anns = [], []
    for i in range(1, 41):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 24})
        (root / "val" / f"{i}.jpg").write_bytes(_jpeg(32, 24))
        anns.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "area": 40.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]],
            }
        )
    (root / "val" / "2.jpg").write_bytes(_jpeg(32, 24)[:300])  # truncated
    (root / "val" / "3.jpg").unlink()  # missing
    (root / "val" / "4.jpg").write_bytes(_jpeg(40, 24))  # JSON says 32x24
    images.append({"id": 99, "file_name": "../../etc/passwd", "width": 32, "height": 24})
    anns.append(
        {
            "id": 500,
            "image_id": 12345,
            "category_id": 1,
            "bbox": [1, 1, 2, 2],
            "area": 4.0,
            "iscrowd": 0,
            "segmentation": [[1, 1, 2, 1, 2, 2]],
        }
    )
    anns.append(
        {
            "id": 501,
            "image_id": 5,
            "category_id": 77,
            "bbox": [1, 1, 2, 2],
            "area": 4.0,
            "iscrowd": 0,
            "segmentation": [[1, 1, 2, 1, 2, 2]],
        }
    )
    anns.append(
        {
            "id": 502,
            "image_id": 6,
            "category_id": 1,
            "bbox": [1, 1, 2, 2],
            "area": 4.0,
            "iscrowd": 0,
            "segmentation": [[1, 1, 2, 1, 2]],
        }
    )
    anns.append({"id": "503", "image_id": 6, "category_id": 1})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    return root


def test_each_bad_record_is_rejected_with_its_reason(messy, tmp_path):
    run_dir, manifest = run_build(
        f"--coco-root={messy}", f"--output={tmp_path / 'out'}", "--max-rejected-fraction=0.5"
    )
    with open(os.path.join(run_dir, "rejected", "rejected.jsonl")) as f:
        rejected = [json.loads(line) for line in f]
    got = sorted((r["kind"], r["key"], r["reason"]) for r in rejected)
    assert got == sorted(
        [
            ("image", "2", "image_truncated"),
            ("image", "3", "image_missing"),
            ("image", "4", "dims_mismatch"),
            ("image", "99", "unsafe_path"),
            ("annotation", "102", "image_rejected"),
            ("annotation", "103", "image_rejected"),
            ("annotation", "104", "image_rejected"),
            ("annotation", "500", "orphan_annotation"),
            ("annotation", "501", "unknown_category"),
            ("annotation", "502", "odd_polygon_length"),
            ("annotation", "503", "schema_violation"),
        ]
    )
    assert all(
        set(r) >= {"kind", "key", "reason", "error_type", "message", "source"} for r in rejected
    )
    assert all(r["source"].endswith("instances_val.json") for r in rejected)
    counts = manifest["counts"]
    assert counts["image"] == {"read": 41, "written": 37, "rejected": 4}
    assert counts["annotation"] == {"read": 44, "written": 37, "rejected": 7}


def test_too_many_rejections_fail_the_run_and_publish_nothing(messy, tmp_path):
    for i in range(5, 20):
        os.unlink(messy / "val" / f"{i}.jpg")
    out = tmp_path / "out"
    with pytest.raises(Exception, match="max-rejected-fraction.*image_missing"):
        run([f"--coco-root={messy}", f"--output={out}", *IN_MEMORY])
    assert not (out / "LATEST").exists()


def test_malformed_json_fails_with_the_file_name(messy, tmp_path):
    path = messy / "annotations" / "instances_val.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(Exception, match="instances_val.json: not a readable COCO JSON"):
        run([f"--coco-root={messy}", f"--output={tmp_path / 'out'}", *IN_MEMORY])


def test_missing_inputs_are_clear_errors(tmp_path):
    from coco_beam.pipelines.layout import LayoutError

    with pytest.raises(LayoutError, match="no COCO annotation files"):
        run([f"--coco-root={tmp_path}", f"--output={tmp_path / 'out'}"])
    (tmp_path / "annotations").mkdir()
    shutil.copy(__file__, tmp_path / "annotations" / "instances_x.json")
    with pytest.raises(LayoutError, match="no image files under"):
        run([f"--coco-root={tmp_path}", f"--output={tmp_path / 'out'}"])


def test_test_dev_reads_the_test_images(synth_root, tmp_path):
    """COCO's image_info_test-dev2017.json lists a subset of test2017/: no folder of its own."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(os.path.join(synth_root, "test2017"), root / "test2017")
    with open(os.path.join(synth_root, "annotations", "image_info_test2017.json")) as f:
        doc = json.load(f)
    doc["images"] = doc["images"][:3]
    (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(doc))
    shutil.copy(
        os.path.join(synth_root, "annotations", "image_info_test2017.json"), root / "annotations"
    )
    _, manifest = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}")
    assert manifest["splits"]["test-dev2017"]["images"] == 3
    assert manifest["splits"]["test2017"]["images"] == len(os.listdir(root / "test2017"))
    assert (
        manifest["unlisted_files"]["test-dev2017"] == manifest["splits"]["test2017"]["images"] - 3
    )


def test_exports_without_area_or_iscrowd_get_them_from_the_mask(messy, tmp_path):
    """Other tools' COCO exports often omit area and iscrowd: area becomes the mask's area
    (as pycocotools' loadRes computes it), flagged; iscrowd defaults to 0."""
    from pycocotools import mask as mask_utils

    path = messy / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    for ann in doc["annotations"]:
        ann.pop("area", None)
        ann.pop("iscrowd", None)
    path.write_text(json.dumps(doc))
    run_dir, manifest = run_build(
        f"--coco-root={messy}", f"--output={tmp_path / 'out'}", "--max-rejected-fraction=0.5"
    )
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(run_dir, "data")).to_pylist()
    anns = [a for r in rows for a in r["annotations"]]
    assert len(anns) == manifest["counts"]["annotation"]["written"] == 37
    for ann in anns:
        rle = {"size": ann["rle"]["size"], "counts": ann["rle"]["counts"].encode()}
        assert ann["area"] == float(mask_utils.area(rle)) > 0
        assert "area_from_mask" in ann["flags"] and ann["iscrowd"] == 0


def test_a_record_lost_inside_the_pipeline_fails_the_run_before_publishing(
    synth_root, tmp_path, monkeypatch
):
    """Conservation is checked by the pipeline itself: a writer that loses one annotation (a
    bug, simulated) fails the run naming the kind, and nothing is published."""
    from coco_beam.transforms.shards import accounting

    original = accounting.ShardTally.add
    lost = []

    def lossy(self, plan, *args):
        original(self, plan, *args)
        if plan.annotations and not lost:
            lost.append(plan.image_id)
            self.written["annotation"] -= 1

    monkeypatch.setattr(accounting.ShardTally, "add", lossy)
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"lost or invented.*annotation"):
        run([f"--coco-root={synth_root}", f"--output={out}", "--num-shards=1", *IN_MEMORY])
    assert lost
    assert not (out / "LATEST").exists()


def _edit(messy, change) -> None:
    path = messy / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "section, value, found",
    [
        pytest.param("images", None, "got null", id="images-null"),
        pytest.param("annotations", {"id": 1}, "got an object", id="annotations-object"),
        pytest.param("categories", "person", "got a string", id="categories-string"),
        pytest.param("images", 0, "got a number", id="images-number"),
    ],
)
def test_a_section_that_is_not_a_list_fails_its_file_and_publishes_nothing(
    messy, tmp_path, section, value, found
):
    """A broken export's ``"images": null`` once published an empty dataset."""
    _edit(messy, lambda doc: doc.update({section: value}))
    out = tmp_path / "out"
    pattern = rf"instances_val.json: .*section '{section}'.*'{section}' must be a list.*{found}"
    with pytest.raises(Exception, match=pattern):
        run([f"--coco-root={messy}", f"--output={out}", "--max-rejected-fraction=0.5", *IN_MEMORY])
    assert not (out / "LATEST").exists()


def test_a_document_that_is_not_an_object_fails_its_file(messy, tmp_path):
    path = messy / "annotations" / "instances_val.json"
    path.write_text(json.dumps(json.loads(path.read_text())["annotations"]))
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"instances_val.json: .*the document is a list"):
        run([f"--coco-root={messy}", f"--output={out}", *IN_MEMORY])
    assert not (out / "LATEST").exists()


def test_a_record_that_is_not_an_object_is_a_schema_violation(messy, tmp_path):
    """Per docs/bad-inputs: a wrongly typed record is rejected at the parse boundary, alone."""

    def add_bad_records(doc):
        doc["images"] += [7, "an image"]
        doc["annotations"] += [None, [1, 2]]

    _edit(messy, add_bad_records)
    run_dir, manifest = run_build(
        f"--coco-root={messy}", f"--output={tmp_path / 'out'}", "--max-rejected-fraction=0.5"
    )
    with open(os.path.join(run_dir, "rejected", "rejected.jsonl")) as f:
        rejected = [json.loads(line) for line in f]
    not_objects = sorted((r["kind"], r["reason"], r["message"]) for r in rejected if r["key"] == "")
    not_an_object = "record is not a JSON object"
    assert (
        not_objects
        == [("annotation", "schema_violation", not_an_object)] * 2
        + [("image", "schema_violation", not_an_object)] * 2
    )
    assert manifest["counts"]["image"] == {"read": 43, "written": 37, "rejected": 6}
    assert manifest["counts"]["annotation"] == {"read": 46, "written": 37, "rejected": 9}


def test_a_byte_order_mark_is_read_and_flagged_in_the_manifest(messy, tmp_path):
    _, plain = run_build(
        f"--coco-root={messy}", f"--output={tmp_path / 'plain'}", "--max-rejected-fraction=0.5"
    )
    path = messy / "annotations" / "instances_val.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, manifest = run_build(
        f"--coco-root={messy}", f"--output={tmp_path / 'bom'}", "--max-rejected-fraction=0.5"
    )
    [source] = manifest["sources"]
    assert source["flags"] == ["utf8_bom"]
    assert "flags" not in plain["sources"][0]
    assert manifest["counts"] == plain["counts"]
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in plain["shards"]]
