"""``report.html``: the statistics document as one self-contained page a person reads.

Pure: ``render_report(doc)`` turns ``stats.json``'s document into HTML: the headline numbers,
the duplicates, near-duplicates and leaks with their pictures, the example images of
``gallery`` (thumbnails inlined as ``data:`` URIs), then the figures of ``figures``. Plots
are Plotly figures (interactive: hover for exact counts, zoom a long category axis) with
Plotly's JavaScript inlined once, so the page opens offline, from a bucket or an e-mail
attachment, and fetches nothing. Element ids are fixed, so the same statistics give the same bytes.
"""

from __future__ import annotations

import html
import json

from coco_beam.transforms.stats.figures import PLOT_IDS, figures
from coco_beam.transforms.stats.gallery import (
    GALLERY_STYLE,
    MAX_PICTURED_GROUPS,
    NEAR_GROUP_PICTURES,
    duplicate_pictures,
    gallery_sections,
)
from coco_beam.transforms.stats.plotting import PLOT_CONFIG, warm_up

__all__ = ["PLOT_IDS", "render_report", "warm_up"]

_MAX_DUPLICATE_ROWS = 200  # the page lists this many groups; the tables hold them all


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    return f"{value:,}"


_HEADLINE = (
    ("num_images", "images"),
    ("num_annotations", "objects"),
    ("num_crowd", "crowd"),
    ("num_captions", "captions"),
    ("num_images_without_annotations", "images without objects"),
    ("num_zero_size_boxes", "zero-size boxes"),
    ("num_boxes_outside_image", "boxes past the edge"),
    ("pixel_mean", "pixel mean (R / G / B)"),
    ("pixel_std", "pixel std (R / G / B)"),
)


def _headline(doc) -> str:
    scopes = [("all splits", doc)] + sorted(doc.get("splits", {}).items())
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _HEADLINE)
    rows = []
    for name, s in scopes:
        cells = "".join(f"<td>{_fmt(s.get(key))}</td>" for key, _ in _HEADLINE)
        people = s["keypoints"]["people_with_keypoints"]
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td>{people:,}</td></tr>")
    return (
        f"<table class='numbers'><tr><th></th>{head}<th>people with keypoints</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _duplicates(doc, pictures: dict) -> str:
    dups, leaks = doc.get("duplicates", []), doc.get("leaks", [])
    if not dups:
        return "<p id='duplicates-summary'>No two images have identical bytes.</p>"
    parts = [
        f"<p id='duplicates-summary'>{len(dups):,} groups of images with identical bytes, "
        f"{len(leaks):,} of them across splits (a train/validation leak).</p>",
        "<table class='duplicates'><tr><th>SHA-256</th><th>images (split: id)</th>"
        "<th>across splits</th><th>picture</th></tr>",
    ]
    leak_hashes = {d["sha256"] for d in leaks}
    groups = leaks + [d for d in dups if d["sha256"] not in leak_hashes]
    for row, d in enumerate(groups[:_MAX_DUPLICATE_ROWS]):
        images = ", ".join(f"{html.escape(str(s))}: {i}" for s, i in d["images"])
        # Identical bytes: one picture shows the whole group.
        picture = duplicate_pictures(d["images"][:1], pictures) if row < MAX_PICTURED_GROUPS else ""
        parts.append(
            f"<tr><td><code>{d['sha256'][:16]}...</code></td><td>{images}</td>"
            f"<td>{'yes' if d['sha256'] in leak_hashes else ''}</td><td>{picture}</td></tr>"
        )
    parts.append("</table>")
    if len(dups) > _MAX_DUPLICATE_ROWS:
        parts.append(
            f"<p>First {_MAX_DUPLICATE_ROWS} groups shown; all are in stats.json and "
            "stats/duplicates.parquet.</p>"
        )
    return "".join(parts)


def _near_duplicates(doc, pictures: dict) -> str:
    """Groups of near-duplicate images (perceptual hashes a few bits apart), leaks first."""
    groups = doc.get("near_duplicates", [])
    if groups is None:
        return (
            "<p id='near-duplicates-summary'>Near-duplicates were not searched (a build with "
            "--no-near-duplicates).</p>"
        )
    if not groups:
        return "<p id='near-duplicates-summary'>No two images are near-duplicates.</p>"
    leaks = [g for g in groups if g["leak"]]
    parts = [
        f"<p id='near-duplicates-summary'>{len(groups):,} groups of near-duplicate images "
        f"(re-encoded, resized, cropped or recoloured copies), {len(leaks):,} of them across "
        "splits (a leak). Each image with the bits its perceptual hash differs from the "
        "group's first.</p>",
        "<table class='near-duplicates'><tr><th>images (split: id, distance)</th>"
        "<th>across splits</th><th>pictures</th></tr>",
    ]
    for row, g in enumerate((leaks + [g for g in groups if not g["leak"]])[:_MAX_DUPLICATE_ROWS]):
        images = ", ".join(f"{html.escape(str(s))}: {i} ({d})" for s, i, d in g["images"])
        # Side by side, the first few of the group (``gallery.NEAR_GROUP_PICTURES``).
        shown = [[s, i] for s, i, _ in g["images"][:NEAR_GROUP_PICTURES]]
        side = duplicate_pictures(shown, pictures) if row < MAX_PICTURED_GROUPS else ""
        parts.append(
            f"<tr><td>{images}</td><td>{'yes' if g['leak'] else ''}</td><td>{side}</td></tr>"
        )
    parts.append("</table>")
    if len(groups) > _MAX_DUPLICATE_ROWS:
        parts.append(
            f"<p>First {_MAX_DUPLICATE_ROWS} groups shown; all are in stats.json and "
            "stats/near_duplicates.parquet.</p>"
        )
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f5f5f5; }
section.plot { margin: 2em 0; border-top: 1px solid #eee; }
code { font-size: 12px; }
"""


def render_report(
    doc: dict, *, title: str = "coco-beam statistics", pictures: dict | None = None
) -> str:
    """The report page of one statistics document; deterministic for a given document and
    ``pictures`` (``examples.picture_id`` -> JPEG bytes of the example thumbnails; without
    them the picture sections say what they would show, with no image)."""
    pictures = pictures or {}
    from plotly.offline import get_plotlyjs

    plots = figures(doc)
    sections = []
    for plot_id in PLOT_IDS:
        fig = plots[plot_id]
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=plot_id,
            config=PLOT_CONFIG,
            default_height=fig.layout.height or 450,
        )
        sections.append(f"<section class='plot' data-plot='{plot_id}'>{div}</section>")
    meta = json.dumps({"plots": list(PLOT_IDS)})
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}{GALLERY_STYLE}</style>"
        f"<script type='application/json' id='report-meta'>{meta}</script>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<h2>Headline numbers</h2>"
        f"{_headline(doc)}"
        "<h2>Duplicates and leaks</h2>"
        f"{_duplicates(doc, pictures)}"
        f"{_near_duplicates(doc, pictures)}"
        f"{gallery_sections(doc, pictures)}"
        "<h2>Plots</h2>" + "".join(sections) + "</body></html>\n"
    )
