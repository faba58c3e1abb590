"""``report.html``: the statistics document as one self-contained page a person reads.

Pure: ``render_report(doc)`` turns ``stats.json``'s document into HTML. Plots are Plotly
figures (interactive: hover for exact counts, zoom a long category axis) with Plotly's
JavaScript inlined once, so the page opens offline, from a bucket or an e-mail attachment,
and fetches nothing. Element ids are fixed, so the same statistics give the same bytes.
"""

from __future__ import annotations

import html
import json

__all__ = ["PLOT_IDS", "render_report", "warm_up"]

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
_CONFIG = {"displaylogo": False, "responsive": True}
_MAX_DUPLICATE_ROWS = 200  # the page lists this many groups; the tables hold them all


_TRACE_TYPES = ("bar", "heatmap", "scatter")  # every trace type the page draws
_TEMPLATE = []  # built once per process


def _template():
    """Plotly's ``plotly_white`` look, cut to the trace types the page draws: the full template
    styles every trace type Plotly has, and each figure copies and validates it (about 9 ms a
    figure, 16 figures: most of the page's rendering time)."""
    if not _TEMPLATE:
        import plotly.graph_objects as go
        import plotly.io as pio

        white = pio.templates["plotly_white"]
        _TEMPLATE.append(
            go.layout.Template(
                layout=white.layout, data={kind: white.data[kind] for kind in _TRACE_TYPES}
            )
        )
    return _TEMPLATE[0]


def warm_up() -> None:
    """Loads what rendering needs (Plotly's figure classes for the page's trace types, the
    template, the HTML writer), so the first ``render_report`` costs what every later one does."""
    import plotly.graph_objects as go

    fig = _figure(title="warm-up")
    fig.add_trace(go.Bar(x=[1], y=[1]))
    fig.add_trace(go.Heatmap(z=[[1]]))
    fig.add_trace(go.Scatter(x=[1], y=[1]))
    fig.to_html(full_html=False, include_plotlyjs=False, div_id="warm-up", config=_CONFIG)


def _figure(**layout):
    import plotly.graph_objects as go

    fig = go.Figure(
        layout={"template": _template(), "margin": {"l": 60, "r": 20, "t": 40, "b": 50}}
    )
    fig.update_layout(**layout)
    return fig


def _empty(fig, what: str):
    if not fig.data:
        fig.add_annotation(text=f"no {what} in this dataset", showarrow=False, font={"size": 16})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def _scopes(doc: dict) -> list[tuple[str, dict]]:
    """The splits, or the whole dataset when there is a single split."""
    splits = doc.get("splits", {})
    if len(splits) > 1:
        return sorted(splits.items())
    return [(next(iter(splits), "all"), doc)]


def _log_toggle(fig, axis: str):
    """Buttons to switch ``axis`` between linear and log: COCO's classes span four decades."""
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 1.0,
                "y": 1.0,
                "xanchor": "right",
                "yanchor": "bottom",
                "buttons": [
                    {"label": scale, "method": "relayout", "args": [{f"{axis}.type": scale}]}
                    for scale in ("linear", "log")
                ],
            }
        ]
    )
    return fig


def _category_label(cat: dict) -> str:
    return f"{cat['name']} ({cat['id']})"


def _category_bars(doc, title: str):
    """Categories with instances, fewest first (so the most frequent is drawn on top), their
    labels, and a stacked horizontal bar figure tall enough for them."""
    cats = sorted(doc["categories"], key=lambda c: (c["num_instances"], -c["id"]))
    cats = [c for c in cats if c["num_instances"]]
    fig = _figure(
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
    return _empty(_log_toggle(fig, "xaxis"), "annotated objects")


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
    return _empty(_log_toggle(fig, "xaxis"), "annotated objects")


def _histogram(doc, name: str, title: str, what: str, log_y: bool = False):
    import plotly.graph_objects as go

    fig = _figure(title=title, barmode="overlay", bargap=0)
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
    return _empty(fig, what)


def _box_sides(doc):
    import plotly.graph_objects as go

    fig = _figure(title="Box width and height (px)", barmode="overlay", bargap=0)
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
    return _empty(fig, "boxes")


def _image_sizes(doc):
    import plotly.graph_objects as go

    cells = doc["image_sizes_2d"]
    fig = _figure(title="Image sizes (64 px cells)", xaxis_title="width", yaxis_title="height")
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
    return _empty(fig, "images")


def _image_properties(doc):
    import plotly.graph_objects as go

    fig = _figure(title="Formats, colour modes and EXIF orientations", yaxis_title="images")
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
    return _empty(fig, "images")


def _heatmap(doc):
    import plotly.graph_objects as go

    heat = doc["centre_heatmap"]
    fig = _figure(
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
    return _empty(fig, "objects")


def _cooccurrence(doc):
    import plotly.graph_objects as go

    cats = [c for c in doc["categories"] if c["num_images"]]
    n = len(cats)
    fig = _figure(
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
    return _empty(fig, "images with two categories or more")


def _keypoints(doc):
    import plotly.graph_objects as go

    joints = doc["keypoints"]["joint_visibility"]
    fig = _figure(
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
    return _empty(fig, "keypoints")


def _panoptic(doc):
    import plotly.graph_objects as go

    pan = doc["panoptic"]
    cats = sorted(pan["categories"], key=lambda c: (c["pixels"], -c["id"]))

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    fig = _figure(
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
    return _empty(fig, "panoptic segments")


def _plots(doc) -> dict:
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


def _duplicates(doc) -> str:
    dups, leaks = doc.get("duplicates", []), doc.get("leaks", [])
    if not dups:
        return "<p id='duplicates-summary'>No two images have identical bytes.</p>"
    parts = [
        f"<p id='duplicates-summary'>{len(dups):,} groups of images with identical bytes, "
        f"{len(leaks):,} of them across splits (a train/validation leak).</p>",
        "<table class='duplicates'><tr><th>SHA-256</th><th>images (split: id)</th>"
        "<th>across splits</th></tr>",
    ]
    leak_hashes = {d["sha256"] for d in leaks}
    for d in (leaks + [d for d in dups if d["sha256"] not in leak_hashes])[:_MAX_DUPLICATE_ROWS]:
        images = ", ".join(f"{html.escape(str(s))}: {i}" for s, i in d["images"])
        parts.append(
            f"<tr><td><code>{d['sha256'][:16]}...</code></td><td>{images}</td>"
            f"<td>{'yes' if d['sha256'] in leak_hashes else ''}</td></tr>"
        )
    parts.append("</table>")
    if len(dups) > _MAX_DUPLICATE_ROWS:
        parts.append(
            f"<p>First {_MAX_DUPLICATE_ROWS} groups shown; all are in stats.json and "
            "stats/duplicates.parquet.</p>"
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


def render_report(doc: dict, *, title: str = "coco-beam statistics") -> str:
    """The report page of one statistics document; deterministic for a given document."""
    from plotly.offline import get_plotlyjs

    plots = _plots(doc)
    sections = []
    for plot_id in PLOT_IDS:
        fig = plots[plot_id]
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=plot_id,
            config=_CONFIG,
            default_height=fig.layout.height or 450,
        )
        sections.append(f"<section class='plot' data-plot='{plot_id}'>{div}</section>")
    meta = json.dumps({"plots": list(PLOT_IDS)})
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script type='application/json' id='report-meta'>{meta}</script>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<h2>Headline numbers</h2>"
        f"{_headline(doc)}"
        "<h2>Duplicates and leaks</h2>"
        f"{_duplicates(doc)}"
        "<h2>Plots</h2>" + "".join(sections) + "</body></html>\n"
    )
