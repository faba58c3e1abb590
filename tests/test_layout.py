"""Where the inputs are found: panoptic PNGs in either common layout, gzipped annotation files
(local and gs://), and what the manifest lists of them."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
from test_gcs import emulator  # noqa: F401  (the GCS emulator, a fixture)

from coco_beam.pipelines.layout import LayoutError, find_sources, panoptic_folders

from helpers import run_build


def _copy(synth_root: str, dest) -> str:
    root = str(dest / "coco")
    shutil.copytree(synth_root, root)
    return root


def _shards(manifest: dict) -> list[tuple[str, str]]:
    return [(s["path"], s["sha256"]) for s in manifest["shards"]]


def _gzip_annotations(root: str) -> list[str]:
    """Replaces every annotation file by its gzipped copy; returns the new names."""
    folder = os.path.join(root, "annotations")
    names = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".json"):
            with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as out:
                shutil.copyfileobj(f, out)
            os.unlink(path)
            names.append(name + ".gz")
    return names


@pytest.mark.parametrize(
    "path, expected",
    [
        pytest.param(
            "/d/annotations/panoptic_val2017.json",
            ["/d/annotations/panoptic_val2017", "/d/panoptic_val2017"],
            id="local",
        ),
        pytest.param(
            "gs://b/coco/annotations/panoptic_val2017.json.gz",
            ["gs://b/coco/annotations/panoptic_val2017", "gs://b/coco/panoptic_val2017"],
            id="gzipped-on-gcs",
        ),
        pytest.param(
            "gs://b/panoptic_val.json", ["gs://b/panoptic_val"], id="never-above-a-bucket"
        ),
        pytest.param("/panoptic_val.json", ["/panoptic_val"], id="never-above-the-root"),
        pytest.param("ann/panoptic_val.json", ["ann/panoptic_val", "panoptic_val"], id="relative"),
        pytest.param("panoptic_val.json", ["panoptic_val"], id="bare-name"),
    ],
)
def test_panoptic_folders_beside_the_file_then_one_up(path, expected):
    assert panoptic_folders(path) == expected


def test_detectron2_layout_finds_the_pngs_beside_the_image_folders(
    synth_root, synth_build, tmp_path
):
    """Detectron2 keeps ROOT/panoptic_<split>/ beside the image folders: the same build as with
    COCO's ROOT/annotations/panoptic_<split>/, byte for byte."""
    root = _copy(synth_root, tmp_path)
    for split in ("train2017", "val2017"):
        os.rename(
            os.path.join(root, "annotations", f"panoptic_{split}"),
            os.path.join(root, f"panoptic_{split}"),
        )
    _, manifest = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}", "--num-shards=2")
    _, coco_layout = synth_build
    masks = {s["split"]: s["masks_dir"] for s in manifest["sources"] if s["family"] == "panoptic"}
    assert masks == {split: f"{root}/panoptic_{split}" for split in ("train2017", "val2017")}
    assert manifest["counts"] == coco_layout["counts"]
    assert manifest["counts"]["panoptic"]["written"] > 0
    assert _shards(manifest) == _shards(coco_layout)
    # COCO's own layout, in the reference build, reads from annotations/.
    assert {
        s["masks_dir"].rsplit("/", 2)[-2] for s in coco_layout["sources"] if s["masks_dir"]
    } == {"annotations"}


def test_no_panoptic_pngs_names_both_folders_looked_in(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path)
    shutil.rmtree(os.path.join(root, "annotations", "panoptic_val2017"))
    with pytest.raises(LayoutError) as info:
        find_sources(root, None, None)
    message = str(info.value)
    assert f"{root}/annotations/panoptic_val2017 or {root}/panoptic_val2017" in message


def test_gzipped_annotation_files_build_the_same_output(synth_root, synth_build, tmp_path):
    root = _copy(synth_root, tmp_path)
    names = _gzip_annotations(root)
    assert "instances_val2017.json.gz" in names and "panoptic_val2017.json.gz" in names
    sources, ignored = find_sources(root, None, None)
    assert sorted(s.path.rsplit("/", 1)[-1] for s in sources) == names and ignored == []
    panoptic = [s for s in sources if s.family == "panoptic"]
    assert {s.masks_dir for s in panoptic} == {
        f"{root}/annotations/panoptic_{split}" for split in ("train2017", "val2017")
    }
    _, manifest = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}", "--num-shards=2")
    _, plain = synth_build
    assert manifest["counts"] == plain["counts"]
    assert _shards(manifest) == _shards(plain)


def test_one_gzipped_file_named_with_annotations(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path)
    _gzip_annotations(root)
    _, manifest = run_build(
        f"--annotations={root}/annotations/instances_val2017.json.gz",
        f"--images={root}/val2017",
        f"--output={tmp_path / 'out'}",
    )
    [source] = manifest["sources"]
    assert (source["family"], source["split"]) == ("instances", "val2017")
    assert manifest["splits"]["val2017"]["images"] == len(os.listdir(f"{root}/val2017"))
    assert manifest["counts"]["annotation"]["written"] > 0


def test_a_file_and_its_gzipped_copy_are_refused(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path)
    path = os.path.join(root, "annotations", "captions_val2017.json")
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as out:
        shutil.copyfileobj(f, out)
    with pytest.raises(LayoutError, match=r"captions_val2017.json and .*json.gz both hold"):
        find_sources(root, None, None)


def test_gzipped_annotations_on_gcs(emulator, synth_root, synth_build, tmp_path):  # noqa: F811
    """gs:// to local, every annotation file gzipped: streamed and decompressed from the store,
    the same shards as the plain local build."""
    from google.cloud import storage

    root = _copy(synth_root, tmp_path)
    _gzip_annotations(root)
    client = storage.Client.create_anonymous_client()
    client.project = "coco-beam-test"
    bucket = client.create_bucket("coco-gz")
    for path in sorted(os.path.join(d, n) for d, _, files in os.walk(root) for n in files):
        bucket.blob("coco/" + os.path.relpath(path, root)).upload_from_filename(path)
    _, manifest = run_build(
        "--coco-root=gs://coco-gz/coco", f"--output={tmp_path / 'out'}", "--num-shards=2"
    )
    assert {s["path"].rsplit(".", 1)[-1] for s in manifest["sources"]} == {"gz"}
    _, plain = synth_build
    assert manifest["counts"] == plain["counts"]
    assert _shards(manifest) == _shards(plain)
