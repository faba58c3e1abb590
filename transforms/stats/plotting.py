"""The report's plotting kit: Plotly figures in one look, and loading Plotly ahead.

Pure. Every figure of the page starts from ``new_figure``, whose template is Plotly's
``plotly_white`` cut to the trace types the page draws; ``note_if_empty`` writes a note on a
figure with no data, so every plot of the page shows something.
"""

from __future__ import annotations

import functools

__all__ = ["PLOT_CONFIG", "log_toggle", "new_figure", "note_if_empty", "warm_up"]

PLOT_CONFIG = {"displaylogo": False, "responsive": True}  # Plotly's config of every plot

_TRACE_TYPES = ("bar", "heatmap", "scatter")  # every trace type the page draws


@functools.cache  # built once per process
def _template():
    """Plotly's ``plotly_white`` look, cut to the trace types the page draws: the full template
    styles every trace type Plotly has, and each figure copies and validates it (about 9 ms a
    figure, 16 figures: most of the page's rendering time)."""
    import plotly.graph_objects as go
    import plotly.io as pio

    white = pio.templates["plotly_white"]
    return go.layout.Template(
        layout=white.layout, data={kind: white.data[kind] for kind in _TRACE_TYPES}
    )


def warm_up() -> None:
    """Loads what rendering needs (Plotly's figure classes for the page's trace types, the
    template, the HTML writer), so the first ``render_report`` costs what every later one does."""
    import plotly.graph_objects as go

    fig = new_figure(title="warm-up")
    fig.add_trace(go.Bar(x=[1], y=[1]))
    fig.add_trace(go.Heatmap(z=[[1]]))
    fig.add_trace(go.Scatter(x=[1], y=[1]))
    fig.to_html(full_html=False, include_plotlyjs=False, div_id="warm-up", config=PLOT_CONFIG)


def new_figure(**layout):
    """A figure in the page's look, with ``layout`` applied."""
    import plotly.graph_objects as go

    fig = go.Figure(
        layout={"template": _template(), "margin": {"l": 60, "r": 20, "t": 40, "b": 50}}
    )
    fig.update_layout(**layout)
    return fig


def note_if_empty(fig, what: str):
    """``fig``, with "no <what> in this dataset" written on it if it has no trace."""
    if not fig.data:
        fig.add_annotation(text=f"no {what} in this dataset", showarrow=False, font={"size": 16})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def log_toggle(fig, axis: str):
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
