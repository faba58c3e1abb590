"""Find the annotation files and image folders of a build from its options.

COCO's official layout: ``ROOT/annotations/<family>_<split>.json`` and ``ROOT/<split>/``
(test-dev's images are in the test folder). An annotation file may be gzipped
(``instances_val2017.json.gz``); a file and its gzipped copy side by side are refused, since
which one is meant is not known. Other files in ``annotations/`` are listed as ignored.

Panoptic files (``panoptic_<split>.json``) name PNGs in a folder with the file's stem
(``panoptic_<split>/``): beside the file (``ROOT/annotations/panoptic_<split>/``, as COCO's
archive unpacks and MMDetection expects) or, failing that, one folder up
(``ROOT/panoptic_<split>/``, beside the image folders, as Detectron2 keeps them). The same
holds for a file named with ``--annotations``.

``describe_sources`` is what the manifest lists of the inputs: a file read with a warning (a
UTF-8 byte-order mark before its JSON: ``utf8_bom``) carries it in ``flags``.
"""

from __future__ import annotations

import dataclasses

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import AnnotationSource, parse_annotation_file_name
from coco_beam.transforms.annotations.json_stream import FLAG_UTF8_BOM, starts_with_bom

__all__ = [
    "LayoutError",
    "describe_sources",
    "file_flags",
    "find_sources",
    "images_folder",
    "panoptic_folders",
]

_COCO_PREFIXES = ("instances_", "person_keypoints_", "captions_", "image_info_", "panoptic_")
_SUFFIXES = (".json", ".json.gz")


class LayoutError(ValueError):
    """The inputs named on the command line are not usable; the message says why."""


def _has_files(folder: str) -> bool:
    result = FileSystems.match([folder.rstrip("/") + "/*"], limits=[1])[0]
    return bool(result.metadata_list)


def _stem(path: str) -> str:
    """The path without its ``.json`` or ``.json.gz`` ending."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _list_annotations(root: str) -> list[tuple[str, int]]:
    patterns = [f"{root}/annotations/*{suffix}" for suffix in _SUFFIXES]
    listed = sorted(
        (m.path, m.size_in_bytes)
        for result in FileSystems.match(patterns)
        for m in result.metadata_list
    )
    return listed


def find_sources(
    coco_root: str | None, annotations: list[str] | None, images: str | None
) -> tuple[list[AnnotationSource], list[str]]:
    """Returns the annotation sources and the annotation files left out."""
    if bool(coco_root) == bool(annotations):
        raise LayoutError("give either --coco-root ROOT or --annotations FILE... --images DIR")
    ignored: list[str] = []
    sources: list[AnnotationSource] = []
    if coco_root:
        root = coco_root.rstrip("/")
        for path, size in _list_annotations(root):
            name = path.rsplit("/", 1)[-1]
            if not name.startswith(_COCO_PREFIXES):
                ignored.append(path)
                continue
            family, split = parse_annotation_file_name(name)
            sources.append(_source(path, family, split, f"{root}/{images_folder(split)}", size))
        if not sources:
            raise LayoutError(
                f"no COCO annotation files matched {root}/annotations/*.json (or *.json.gz)"
            )
    else:
        if not images:
            raise LayoutError("--annotations needs --images DIR, the folder of the images")
        for path in annotations:
            if not FileSystems.exists(path):
                raise LayoutError(f"annotation file {path} does not exist")
            family, split = parse_annotation_file_name(path)
            size = FileSystems.get_filesystem(path).metadata(path).size_in_bytes
            sources.append(_source(path, family, split, images.rstrip("/"), size))
    _refuse_twice_named(sources)
    for folder in sorted({s.images_dir for s in sources}):
        if not _has_files(folder):
            raise LayoutError(f"no image files under {folder}")
    return sources, ignored


def _refuse_twice_named(sources: list[AnnotationSource]) -> None:
    """One file per family and split: two (``x.json`` and ``x.json.gz``, or the same name in
    two folders) would list every record twice."""
    seen: dict[tuple[str, str], str] = {}
    for source in sources:
        key = (source.family, source.split)
        if key in seen:
            raise LayoutError(
                f"{seen[key]} and {source.path} both hold the {source.family} annotations of "
                f"split {source.split}: keep one"
            )
        seen[key] = source.path


def images_folder(split: str) -> str:
    """The folder of a split's images in COCO's layout: its own name, except that test-dev
    (``image_info_test-dev2017.json``) is a subset of the test images (``test2017/``)."""
    if split.startswith("test-dev"):
        return "test" + split[len("test-dev") :]
    return split


def panoptic_folders(path: str) -> list[str]:
    """Where the PNGs of the panoptic file ``path`` may be, in the order they are looked for:
    beside it (COCO, MMDetection), then one folder up (Detectron2)."""
    beside = _stem(path)
    scheme, sep, rest = beside.rpartition("://")
    parts = rest.split("/")
    # What going up never leaves: a bucket (gs://bucket/...) or the root ("/...").
    kept = 1 if sep or parts[0] == "" else 0
    if len(parts) - 2 < kept:
        return [beside]
    return [beside, scheme + sep + "/".join([*parts[:-2], parts[-1]])]


def _source(path, family, split, images_dir, size_bytes) -> AnnotationSource:
    masks_dir = ""
    if family == "panoptic":
        candidates = panoptic_folders(path)
        masks_dir = next((c for c in candidates if _has_files(c)), "")
        if not masks_dir:
            raise LayoutError(
                f"no panoptic PNGs under {' or '.join(candidates)} (the folders {path} may "
                "name them in)"
            )
    try:
        return AnnotationSource(path, family, split, images_dir, size_bytes, masks_dir)
    except ValueError as exc:
        raise LayoutError(str(exc)) from exc


def file_flags(path: str) -> list[str]:
    """The warnings reading ``path`` gives: ``utf8_bom`` when its JSON follows a byte-order
    mark (read all the same). Reads its first bytes only."""
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        return [FLAG_UTF8_BOM] if starts_with_bom(f) else []


def describe_sources(sources: list[AnnotationSource], ignored: list[str]) -> list[dict]:
    """The inputs as the manifest lists them: each source's fields, ``flags`` when reading it
    gives a warning, then the files left out (``ignored``)."""
    described = []
    for source in sources:
        entry = dataclasses.asdict(source)
        flags = file_flags(source.path)
        if flags:
            entry["flags"] = flags
        described.append(entry)
    return described + [{"path": path, "ignored": True} for path in ignored]
