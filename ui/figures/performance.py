"""Performance-page figures: measured quantities against N, sdattn selectors against Keras MHA."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ui.figures.common import *  # noqa: F403
from ui.figures.compare import SELECTOR_COLORS, selector_color


# ----------------------------------------------------------------------------- performance page

REFERENCE_COLOR = "#7f7f7f"  # the dense baseline every sdattn line is read against


def _one_two_five_ticks(low, high):
    """Tick values 1, 2, 5, 10, 20, … covering `[low, high]` (both positive)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1):
        for digit in (1, 2, 5):
            value = digit * 10.0 ** exponent
            if low / 1.5 <= value <= high * 1.5:
                ticks.append(value)
    return ticks


# Height of one row of a horizontal legend, in pixels.
_LEGEND_ROW_PX = 22


def scaling_figure(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    y_title: str,
    title: str,
    reference: str | None = None,
    log_y: bool = True,
    baseline: tuple[float, str] | None = None,
) -> go.Figure:
    """A measured quantity against N (log axis), one line per method.

    Args:
        series: `{method: (N values, measured values)}`, in legend order; values that are not
            positive (a log axis cannot show them) or not finite are left out.
        y_title: the quantity and its unit, e.g. `"time per call (ms)"`.
        title: figure title.
        reference: the method drawn as the baseline (dashed, grey), e.g. Keras MHA; None: none.
        log_y: a log y axis labelled at 1, 2 and 5 of each decade; False: a linear axis from 0
            (memory: absolute megabytes read best on a linear scale).
        baseline: `(value, label)` of a dashed horizontal line, e.g. `(1.0, "Keras MHA")` on a
            chart of ratios; None: none.

    Returns:
        A `go.Figure` with one scatter trace per method (x: N, y: the values, both log axes);
        the other methods take `selector_color(i)` in order, dotted with diamond markers once
        the colours repeat.
    """
    traces = []
    position = 0
    num_methods = sum(method != reference for method in series)
    for method, (sizes, values) in series.items():
        sizes = np.asarray(sizes, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        shown = np.isfinite(values) & ((values > 0) if log_y else (values >= 0))
        is_reference = method == reference
        color = REFERENCE_COLOR if is_reference else selector_color(position)
        # Past the palette, colours repeat: the second round of methods is dotted, with diamonds.
        second_round = not is_reference and position >= len(SELECTOR_COLORS)
        position += 0 if is_reference else 1
        traces.append(dict(
            type="scatter",
            x=sizes[shown],
            y=values[shown],
            mode="lines+markers",
            # Earlier methods drawn wider, underneath: two methods with the same numbers
            # (random and window) both stay visible.
            line=dict(color=color, width=2 if is_reference else 2 + 3 * (
                (num_methods - position) / max(num_methods - 1, 1)),  # position: 1..n here
                      dash="dash" if is_reference else "dot" if second_round else "solid"),
            marker=dict(size=7, symbol="square" if is_reference else "diamond" if second_round else "circle"),
            name=method,
            hovertemplate=f"{method}<br>N = %{{x:,}}<br>{y_title}: %{{y:.3g}}<extra></extra>",
        ))
    all_sizes = sorted({float(n) for sizes, _ in series.values() for n in sizes})
    legend_rows = max(1, math.ceil(len(traces) / 3))
    shown_values = [v for trace in traces for v in trace["y"]]
    if baseline is not None:
        shown_values = shown_values + [baseline[0]]
    y_ticks = (_one_two_five_ticks(min(shown_values), max(shown_values))
               if shown_values and log_y else [])
    layout = dict(
        # At the very top, above however many legend rows the top margin holds.
        title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=10)),
        xaxis=dict(type="log", title=dict(text="N (dense key tokens)"), tickvals=all_sizes,
                   ticktext=[f"{int(n):,}" for n in all_sizes]),
        # Labels at 1, 2 and 5 of each decade, written out in full (Plotly's "D2" shorthand
        # labels 20 and 50 as small "2" and "5", which reads as 2 and 5).
        yaxis=(dict(type="log", title=dict(text=y_title), tickvals=y_ticks,
                    ticktext=[f"{v:,.3g}" for v in y_ticks]) if log_y else
               dict(type="linear", title=dict(text=y_title), rangemode="tozero",
                    tickformat=",~r", nticks=6)),
        # The legend grows upwards from the plot, one row per about three methods in a half-page
        # column: the top margin keeps every row below the title.
        height=330 + _LEGEND_ROW_PX * legend_rows,
        margin=dict(l=10, r=10, t=45 + _LEGEND_ROW_PX * legend_rows, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
    )
    if baseline is not None:
        value, label = baseline
        layout["shapes"] = [dict(type="line", xref="paper", x0=0, x1=1, y0=value, y1=value,
                                 line=dict(dash="dash", width=2, color=REFERENCE_COLOR))]
        layout["annotations"] = [dict(
            text=label, xref="paper", x=1.0, xanchor="right",
            y=math.log10(value) if log_y else value, yanchor="bottom", showarrow=False,
            font=dict(color=REFERENCE_COLOR))]  # log axes place annotations in log10 units
    return go.Figure(dict(data=traces, layout=layout))
