"""The report's figures: one Plotly figure per plot of ``report.html``, from ``stats.json``.

Pure: ``figures(doc)`` returns the figures by plot id (``PLOT_IDS``, in page order), from the
statistics document alone. With several splits a figure draws each split; with one, the whole
dataset. A figure without data carries a note saying so rather than an empty frame.
"""

from __future__ import annotations

import html

from coco_beam.transforms.stats.plotting import log_toggle, new_figure, note_if_empty

__all__ = ["PLOT_IDS", "figures"]

# Every plot the page holds, in page order; a test checks each one renders.
PLOT_IDS = (
    "class-balance",
    "area-buckets",
    "objects-per-image",
    "categories-per-image",
    "image-sizes",
    "image-properties",
    "file-sizes",
    "box-sides",
    "box-aspect",
    "box-relative-size",
    "mask-to-box",
    "centre-heatmap",
    "cooccurrence",
    "keypoint-visibility",
    "caption-words",
    "panoptic-pixel-share",
)

_COUNT_HISTOGRAMS = ("objects_per_image", "categories_per_image", "caption_words")


def _scopes(doc: dict) -> list[tuple[str, dict]]:
    """The splits, or the whole dataset when there is a single split."""
    splits = doc.get("splits", {})
    if len(splits) > 1:
        return sorted(splits.items())
    return [(next(iter(splits), "all"), doc)]


def _category_label(cat: dict) -> str:
    return f"{cat['name']} ({cat['id']})"


def _category_bars(doc, title: str):
    """Categories with instances, fewest first (so the most frequent is drawn on top), their
    labels, and a stacked horizontal bar figure tall enough for them."""
    cats = sorted(doc["categories"], key=lambda c: (c["num_instances"], -c["id"]))
    cats = [c for c in cats if c["num_instances"]]
    fig = new_figure(
        title=title,
        barmode="stack",
        height=max(400, 18 * len(cats) + 120),
        xaxis_title="instances",
    )
    return cats, [_category_label(c) for c in cats], fig


def _class_balance(doc):
    import plotly.graph_objects as go

    cats, labels, fig = _category_bars(doc, "Instances per category")
    for split, s in _scopes(doc):
        by_id = {c["id"]: c for c in s["categories"]}
        fig.add_trace(
            go.Bar(
                name=split,
                orientation="h",
                y=labels,
                x=[by_id.get(c["id"], {}).get("num_instances", 0) for c in cats],
                customdata=[by_id.get(c["id"], {}).get("num_images", 0) for c in cats],
                hovertemplate="%{y}: %{x} instances in %{customdata} images<extra>"
                + html.escape(split)
                + "</extra>",
            )
        )
    return note_if_empty(log_toggle(fig, "xaxis"), "annotated objects")


def _area_buckets(doc):
    import plotly.graph_objects as go

    cats, labels, fig = _category_bars(
        doc, "COCO object sizes per category (by area: small < 32², medium < 96², large)"
    )
    for bucket in ("area_small", "area_medium", "area_large"):
        fig.add_trace(
            go.Bar(
                name=bucket.removeprefix("area_"),
                orientation="h",
                y=labels,
                x=[c[bucket] for c in cats],
            )
        )
    return note_if_empty(log_toggle(fig, "xaxis"), "annotated objects")


def _histogram(doc, name: str, title: str, what: str, log_y: bool = False):
    import plotly.graph_objects as go

    fig = new_figure(title=title, barmode="overlay", bargap=0)
    for split, s in _scopes(doc):
        hist = s["histograms"][name]
        if not hist["bins"]:
            continue
        # Counts (objects, words) sit on their integer; measures fill their bin.
        centre = 0 if name in _COUNT_HISTOGRAMS else hist["bin_width"] / 2
        fig.add_trace(
            go.Bar(
                name=split,
                x=[start + centre for start, _ in hist["bins"]],
                y=[n for _, n in hist["bins"]],
                width=hist["bin_width"] * (0.8 if centre == 0 else 1.0),
                opacity=0.6 if len(_scopes(doc)) > 1 else 1.0,
            )
        )
        fig.update_xaxes(title=hist["unit"])
    fig.update_yaxes(title="count", type="log" if log_y else "linear")
    return note_if_empty(fig, what)


def _box_sides(doc):
    import plotly.graph_objects as go

    fig = new_figure(title="Box width and height (px)", barmode="overlay", bargap=0)
    for name in ("bbox_width", "bbox_height"):
        hist = doc["histograms"][name]
        if hist["bins"]:
            fig.add_trace(
                go.Bar(
                    name=name.removeprefix("bbox_"),
                    x=[start + 0.5 for start, _ in hist["bins"]],
                    y=[n for _, n in hist["bins"]],
                    width=1,
                    opacity=0.6,
                )
            )
    fig.update_xaxes(title="px", type="log")
    fig.update_yaxes(title="boxes")
    return note_if_empty(fig, "boxes")


def _image_sizes(doc):
    import plotly.graph_objects as go

    cells = doc["image_sizes_2d"]
    fig = new_figure(title="Image sizes (64 px cells)", xaxis_title="width", yaxis_title="height")
    if cells:
        fig.add_trace(
            go.Scatter(
                x=[w + 32 for w, _, _ in cells],
                y=[h + 32 for _, h, _ in cells],
                mode="markers",
                marker={
                    "size": [6 + 30 * (n / max(c[2] for c in cells)) ** 0.5 for _, _, n in cells],
                    "color": [n for _, _, n in cells],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": "images"},
                },
                text=[f"{w}-{w + 63} x {h}-{h + 63}: {n} images" for w, h, n in cells],
                hoverinfo="text",
            )
        )
    return note_if_empty(fig, "images")


def _image_properties(doc):
    import plotly.graph_objects as go

    fig = new_figure(title="Formats, colour modes and EXIF orientations", yaxis_title="images")
    for key, label in (
        ("formats", "format"),
        ("modes", "mode"),
        ("exif_orientations", "EXIF orientation"),
    ):
        values = doc[key]
        if values:
            fig.add_trace(
                go.Bar(
                    name=label,
                    x=[f"{label}: {v if v != '0' else 'none'}" for v in values],
                    y=list(values.values()),
                )
            )
    return note_if_empty(fig, "images")


def _heatmap(doc):
    import plotly.graph_objects as go

    heat = doc["centre_heatmap"]
    fig = new_figure(
        title="Where object centres fall in the normalized image",
        height=520,
        width=560,
        xaxis_title="x / width",
        yaxis_title="y / height",
    )
    if any(any(row) for row in heat["counts"]):
        edges = [(i + 0.5) / heat["grid"] for i in range(heat["grid"])]
        fig.add_trace(
            go.Heatmap(
                z=heat["counts"],
                x=edges,
                y=edges,
                colorscale="Viridis",
                colorbar={"title": "objects"},
            )
        )
        fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return note_if_empty(fig, "objects")


def _cooccurrence(doc):
    import plotly.graph_objects as go

    cats = [c for c in doc["categories"] if c["num_images"]]
    n = len(cats)
    fig = new_figure(
        title="Category co-occurrence (images holding both)",
        height=max(450, 14 * n + 200),
        width=max(550, 14 * n + 300),
    )
    if doc["cooccurrence"]:
        index = {c["id"]: i for i, c in enumerate(cats)}
        # The diagonal (images holding the category) stays blank: it would swamp the pairs.
        z = [[None if i == j else 0 for j in range(n)] for i in range(n)]
        for a, b, count in doc["cooccurrence"]:
            if a in index and b in index:
                z[index[a]][index[b]] = z[index[b]][index[a]] = count
        labels = [_category_label(c) for c in cats]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=labels,
                y=labels,
                colorscale="Viridis",
                colorbar={"title": "images"},
                hovertemplate="%{y} and %{x}: %{z} images<extra></extra>",
            )
        )
        fig.update_yaxes(autorange="reversed")
    return note_if_empty(fig, "images with two categories or more")


def _keypoints(doc):
    import plotly.graph_objects as go

    joints = doc["keypoints"]["joint_visibility"]
    fig = new_figure(
        title=f"Keypoint visibility per joint ({doc['keypoints']['people_with_keypoints']} "
        "annotated people)",
        barmode="stack",
        xaxis_title="joint index",
        yaxis_title="instances",
    )
    for v, label in (("v2", "visible"), ("v1", "occluded"), ("v0", "not labelled")):
        if joints:
            fig.add_trace(
                go.Bar(name=label, x=[j["joint"] for j in joints], y=[j[v] for j in joints])
            )
    return note_if_empty(fig, "keypoints")


def _panoptic(doc):
    import plotly.graph_objects as go

    pan = doc["panoptic"]
    cats = sorted(pan["categories"], key=lambda c: (c["pixels"], -c["id"]))

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    fig = new_figure(
        title=f"Panoptic pixel share per category: things {pct(pan['things']['pixel_share'])}, "
        f"stuff {pct(pan['stuff']['pixel_share'])}, void {pct(pan['void_share'])}",
        barmode="stack",
        height=max(400, 18 * len(cats) + 120),
        xaxis_title="share of all pixels",
    )
    for isthing, label in ((True, "things"), (False, "stuff")):
        chosen = [c for c in cats if bool(c["isthing"]) == isthing]
        if chosen:
            fig.add_trace(
                go.Bar(
                    name=label,
                    orientation="h",
                    y=[_category_label(c) for c in chosen],
                    x=[c["pixel_share"] for c in chosen],
                    customdata=[c["num_segments"] for c in chosen],
                    hovertemplate="%{y}: %{x:.2%} of pixels, %{customdata} segments<extra></extra>",
                )
            )
    fig.update_xaxes(tickformat=".0%")
    return note_if_empty(fig, "panoptic segments")


def figures(doc: dict) -> dict:
    return {
        "class-balance": _class_balance(doc),
        "area-buckets": _area_buckets(doc),
        "objects-per-image": _histogram(
            doc, "objects_per_image", "Objects per image (100: 100 or more)", "images"
        ),
        "categories-per-image": _histogram(
            doc, "categories_per_image", "Categories per image", "images"
        ),
        "image-sizes": _image_sizes(doc),
        "image-properties": _image_properties(doc),
        "file-sizes": _histogram(doc, "file_size_log2_kib", "File sizes", "images"),
        "box-sides": _box_sides(doc),
        "box-aspect": _histogram(
            doc, "bbox_aspect_log2", "Box aspect ratio (0: square)", "boxes with an area"
        ),
        "box-relative-size": _histogram(
            doc, "bbox_relative_size", "Box size relative to the image", "boxes"
        ),
        "mask-to-box": _histogram(
            doc, "mask_to_bbox_area", "Mask area against box area", "boxes with an area"
        ),
        "centre-heatmap": _heatmap(doc),
        "cooccurrence": _cooccurrence(doc),
        "keypoint-visibility": _keypoints(doc),
        "caption-words": _histogram(doc, "caption_words", "Caption length", "captions"),
        "panoptic-pixel-share": _panoptic(doc),
    }
