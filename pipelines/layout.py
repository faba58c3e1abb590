"""Find the annotation files and image folders of a build from its options.

COCO's official layout: ``ROOT/annotations/<family>_<split>.json`` and ``ROOT/<split>/``
(test-dev's images are in the test folder).
Panoptic files (``panoptic_<split>.json``) name PNGs in ``ROOT/annotations/panoptic_<split>/``,
as COCO's archive unpacks; named explicitly, in the folder beside the file with its stem's name.
Other files in ``annotations/`` are listed as ignored.
"""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import AnnotationSource, parse_annotation_file_name

__all__ = ["LayoutError", "find_sources", "images_folder"]

_COCO_PREFIXES = ("instances_", "person_keypoints_", "captions_", "image_info_", "panoptic_")


class LayoutError(ValueError):
    """The inputs named on the command line are not usable; the message says why."""


def _has_files(folder: str) -> bool:
    result = FileSystems.match([folder.rstrip("/") + "/*"], limits=[1])[0]
    return bool(result.metadata_list)


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
        pattern = f"{root}/annotations/*.json"
        listed = sorted(
            (m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list
        )
        for path, size in listed:
            name = path.rsplit("/", 1)[-1]
            if not name.startswith(_COCO_PREFIXES):
                ignored.append(path)
                continue
            family, split = parse_annotation_file_name(name)
            sources.append(_source(path, family, split, f"{root}/{images_folder(split)}", size))
        if not sources:
            raise LayoutError(f"no COCO annotation files matched {pattern}")
    else:
        if not images:
            raise LayoutError("--annotations needs --images DIR, the folder of the images")
        for path in annotations:
            if not FileSystems.exists(path):
                raise LayoutError(f"annotation file {path} does not exist")
            family, split = parse_annotation_file_name(path)
            size = FileSystems.get_filesystem(path).metadata(path).size_in_bytes
            sources.append(_source(path, family, split, images.rstrip("/"), size))
    for folder in sorted({s.images_dir for s in sources}):
        if not _has_files(folder):
            raise LayoutError(f"no image files under {folder}")
    return sources, ignored


def images_folder(split: str) -> str:
    """The folder of a split's images in COCO's layout: its own name, except that test-dev
    (``image_info_test-dev2017.json``) is a subset of the test images (``test2017/``)."""
    if split.startswith("test-dev"):
        return "test" + split[len("test-dev") :]
    return split


def _source(path, family, split, images_dir, size_bytes) -> AnnotationSource:
    masks_dir = path[: -len(".json")] if family == "panoptic" else ""
    if masks_dir and not _has_files(masks_dir):
        raise LayoutError(f"no panoptic PNGs under {masks_dir} (the folder beside {path})")
    try:
        return AnnotationSource(path, family, split, images_dir, size_bytes, masks_dir)
    except ValueError as exc:
        raise LayoutError(str(exc)) from exc
