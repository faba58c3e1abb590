"""The report's pictures: the images behind the numbers, as sections of ``report.html``.

Pure: ``gallery_sections(doc, pictures)`` turns ``stats.json``'s ``examples`` and
``never_together`` (and the duplicate groups) into HTML, with each thumbnail
(``pictures``: ``examples.picture_id`` -> JPEG bytes) inlined as a ``data:`` URI, so the page
stays one file that fetches nothing. Sections: the rarest categories, the common categories
never seen together, a few images per warning flag, per category a few images with its masks
drawn and its smallest and largest instance; ``duplicate_pictures`` draws a duplicate group's
images side by side. A picture missing from ``pictures`` is left out, never a broken image.

Guarantees: the same document and pictures give the same bytes; the pictures inlined are
those ``examples`` names (bounded by ``examples.K`` per category and flag) plus one per
duplicate group shown, so the page's size is bounded whatever the size of the data.
"""

from __future__ import annotations

import base64
import html

from coco_beam.transforms.stats.examples import picture_id

__all__ = [
    "MAX_PICTURED_GROUPS",
    "NEAR_GROUP_PICTURES",
    "RAREST",
    "duplicate_pictures",
    "gallery_sections",
    "group_picture_ids",
]

RAREST = 10  # categories shown as the rarest (fewest instances, at least one)
# Duplicate groups drawn with their pictures (the table lists more; stats.json holds all).
MAX_PICTURED_GROUPS = 24
# Images of a near-duplicate group drawn side by side (groups are mostly pairs).
NEAR_GROUP_PICTURES = 4

GALLERY_STYLE = """
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; align-items: flex-start; }
figure.thumb { margin: 0; text-align: center; font-size: 11px; color: #555; }
figure.thumb img { display: block; max-height: 128px; border: 1px solid #ccc; }
table.gallery td { text-align: left; vertical-align: top; }
"""


def _img(pictures: dict, pid: str, caption: str) -> str:
    jpeg = pictures.get(pid)
    if jpeg is None:
        return ""
    data = base64.b64encode(jpeg).decode("ascii")
    text = html.escape(caption)
    return (
        f"<figure class='thumb'><img src='data:image/jpeg;base64,{data}' alt='{text}' "
        f"title='{text}'><figcaption>{text}</figcaption></figure>"
    )


def _thumbs(parts: list[str]) -> str:
    return f"<div class='thumbs'>{''.join(parts)}</div>"


def _names(doc: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in doc["categories"]}


def _category_images(pictures, entry: dict) -> str:
    cat = entry["id"]
    return _thumbs(
        [
            _img(pictures, picture_id("categories", cat, split, image_id), f"{split}: {image_id}")
            for split, image_id in entry["images"]
        ]
    )


def _instance(pictures, kind: str, cat: int, instance: dict | None) -> str:
    if instance is None:
        return ""
    split, image_id = instance["split"], instance["image_id"]
    caption = f"{split}: {image_id}, area {instance['area']:,.1f}"
    return _img(pictures, picture_id(kind, cat, split, image_id), caption)


def _rarest(doc: dict, pictures: dict, by_id: dict) -> str:
    held = [c for c in doc["categories"] if c["num_instances"]]
    rarest = sorted(held, key=lambda c: (c["num_instances"], c["id"]))[:RAREST]
    if not rarest:
        return "<p id='rarest-categories'>No annotated objects.</p>"
    rows = "".join(
        f"<tr><th>{html.escape(c['name'])} ({c['id']})</th><td>{c['num_instances']:,}</td>"
        f"<td>{c['num_images']:,}</td>"
        f"<td>{_category_images(pictures, by_id[c['id']]) if c['id'] in by_id else ''}</td></tr>"
        for c in rarest
    )
    return (
        f"<table class='gallery' id='rarest-categories'><tr><th>category</th><th>instances</th>"
        f"<th>images</th><th>examples (masks drawn)</th></tr>{rows}</table>"
    )


def _never_together(doc: dict) -> str:
    found = doc.get("never_together")
    if not found or not found["among"]:
        return "<p id='never-together'>No category is in any image.</p>"
    names = _names(doc)
    among = len(found["among"])
    if not found["pairs"]:
        return (
            f"<p id='never-together'>Each pair of the {among} categories in most images "
            "appears together in at least one image.</p>"
        )
    items = "".join(
        f"<li>{html.escape(names.get(a, str(a)))} and {html.escape(names.get(b, str(b)))}</li>"
        for a, b in found["pairs"]
    )
    return (
        f"<p id='never-together'>Of the {among} categories in most images, "
        f"{len(found['pairs']):,} pairs never appear in one image:</p><ul>{items}</ul>"
    )


def _flags(doc: dict, pictures: dict) -> str:
    flags = doc["examples"]["flags"]
    if not flags:
        return "<p id='flag-examples'>No image carries a warning flag.</p>"
    counts = doc.get("flags", {})
    rows = []
    for entry in flags:
        flag = entry["flag"]
        count = f"{counts[flag]:,}" if flag in counts else "-"
        images = _thumbs(
            [
                _img(pictures, picture_id("flags", flag, split, image_id), f"{split}: {image_id}")
                for split, image_id in entry["images"]
            ]
        )
        rows.append(f"<tr><th>{html.escape(flag)}</th><td>{count}</td><td>{images}</td></tr>")
    return (
        "<table class='gallery' id='flag-examples'><tr><th>flag</th><th>count</th>"
        f"<th>examples</th></tr>{''.join(rows)}</table>"
    )


def _categories(doc: dict, pictures: dict, by_id: dict) -> str:
    if not by_id:
        return "<p id='category-examples'>No annotated objects.</p>"
    names = _names(doc)
    rows = []
    for cat in sorted(by_id):
        entry = by_id[cat]
        name = html.escape(names.get(cat, str(cat)))
        rows.append(
            f"<tr><th>{name} ({cat})</th><td>{_category_images(pictures, entry)}</td>"
            f"<td>{_thumbs([_instance(pictures, 'smallest', cat, entry['smallest'])])}</td>"
            f"<td>{_thumbs([_instance(pictures, 'largest', cat, entry['largest'])])}</td></tr>"
        )
    return (
        "<table class='gallery' id='category-examples'><tr><th>category</th>"
        "<th>examples (its masks drawn)</th><th>smallest instance</th>"
        f"<th>largest instance</th></tr>{''.join(rows)}</table>"
    )


def gallery_sections(doc: dict, pictures: dict) -> str:
    """The picture sections of the page (see the module docstring); a document without
    ``examples`` (an older one) gives only the co-occurrence answer."""
    parts = ["<h2>Common categories never seen together</h2>", _never_together(doc)]
    if "examples" not in doc:
        return "".join(parts)
    by_id = {entry["id"]: entry for entry in doc["examples"]["categories"]}
    parts += [
        "<h2>Rarest categories</h2>",
        _rarest(doc, pictures, by_id),
        "<h2>Images carrying each warning flag</h2>",
        _flags(doc, pictures),
        "<h2>Each category: examples, smallest and largest instance</h2>",
        _categories(doc, pictures, by_id),
    ]
    return "".join(parts)


def group_picture_ids(images: list) -> list[tuple[str, str]]:
    """``(picture id, caption)`` of a duplicate group's images (``[[split, id], ...]``)."""
    return [
        (picture_id("image", None, split, image_id), f"{split}: {image_id}")
        for split, image_id in images
    ]


def duplicate_pictures(images: list, pictures: dict) -> str:
    """A duplicate group's images side by side (those with a picture)."""
    return _thumbs([_img(pictures, pid, caption) for pid, caption in group_picture_ids(images)])
