"""Small SVG line plots for notebook output, with no plotting library.

``svg_line_plot`` is a pure function from data to an ``<svg>`` string. Every piece of text in
it (title, series names, numbers) is HTML-escaped, because series names come from users (run
and metric names). It must not import anything heavy: it runs in the kernel on every redraw.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

# Tableau 10: distinct, readable on white and on dark themes; more series get golden-angle hues.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
FONT = 'font-family="sans-serif" font-size="10"'
LEFT = 46  # room for the y labels
RIGHT = 8
BOTTOM = 14  # room for the x labels
LEGEND_ROW = 14
LEGEND_NAME_CHARS = 24
CHAR_WIDTH = 6.0  # rough width of one character at font-size 10
INSET = 3


def series_color(index: int) -> str:
    """The color of the ``index``-th series: the palette, then evenly spread hues."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 137.508) % 360
    return f"hsl({hue:.0f},60%,45%)"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _finite_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points whose x and y are finite numbers, ordered by x (NaN and ±inf are skipped)."""
    kept = []
    for point in points:
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            kept.append((x, y))
    kept.sort(key=lambda p: p[0])
    return kept


def _padded_range(values: list[float]) -> tuple[float, float]:
    """``(low, high)`` with ``low < high``: a constant gets a band around it."""
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def _short(name: str) -> str:
    return name if len(name) <= LEGEND_NAME_CHARS else name[: LEGEND_NAME_CHARS - 1] + "…"


def _legend_layout(names: list[str], width: int) -> list[tuple[float, int]]:
    """``(x, row)`` of each legend entry, flowing left to right and wrapping at ``width``."""
    spots = []
    x, row = float(LEFT), 0
    for name in names:
        entry = 14 + CHAR_WIDTH * len(_short(name)) + 10
        if x + entry > width and x > LEFT:
            x, row = float(LEFT), row + 1
        spots.append((x, row))
        x += entry
    return spots


def svg_line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    width: int = 320,
    height: int = 120,
    title: str = "",
) -> str:
    """An ``<svg>`` line plot: one polyline per series, x = step, y = value.

    ``width`` by ``height`` is the plot with its axis labels and title; the legend (one entry
    per series, long names shortened, the full name as a tooltip) adds rows below it. The y
    axis is labelled with the minimum and maximum, the x axis with the first and last step.
    Points whose step or value is NaN or infinite are skipped; a series with a single point is
    drawn as a dot; a constant series as a flat line in the middle; with no points at all the
    plot says "no data". All text is HTML-escaped, so user-given names render as text.

    Examples
    --------
    ::

        from IPython.display import HTML
        HTML(svg_line_plot({"train": [(0, 1.0), (1, 0.6)], "valid": [(0, 1.1), (1, 0.8)]}, title="loss"))
    """
    width, height = max(int(width), 120), max(int(height), 60)
    names = [str(name) for name in series]
    points = {name: _finite_points(values) for name, values in zip(names, series.values(), strict=True)}
    top = 16 if title else 6
    plot_w, plot_h = width - LEFT - RIGHT, height - top - BOTTOM
    spots = _legend_layout(names, width)
    rows = spots[-1][1] + 1 if spots else 0
    total_h = height + rows * LEGEND_ROW + (4 if rows else 0)

    label = html.escape(title or "line plot")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="jmk-LinePlot" width="{width}" height="{total_h}" '
        f'viewBox="0 0 {width} {total_h}" role="img" aria-label="{label}">',
        f"<title>{label}</title>",
        f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    if title:
        parts.append(f'<text x="{width / 2:.1f}" y="11" text-anchor="middle" {FONT}>{html.escape(title)}</text>')

    every = [p for values in points.values() for p in values]
    if not every:
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{top + plot_h / 2 + 3:.1f}" text-anchor="middle" '
            f'fill="#888" {FONT}>no data</text>'
        )
    else:
        x_low, x_high = _padded_range([p[0] for p in every])
        y_low, y_high = _padded_range([p[1] for p in every])

        # Inset by INSET so that lines and dots at the extremes stay off the frame.
        def px(x: float) -> float:
            return LEFT + INSET + (x - x_low) / (x_high - x_low) * (plot_w - 2 * INSET)

        def py(y: float) -> float:
            return top + plot_h - INSET - (y - y_low) / (y_high - y_low) * (plot_h - 2 * INSET)

        x_min, x_max = min(p[0] for p in every), max(p[0] for p in every)
        y_min, y_max = min(p[1] for p in every), max(p[1] for p in every)
        for y in (y_max, y_min) if y_min != y_max else (y_max,):
            parts.append(
                f'<text x="{LEFT - 4}" y="{py(y) + 3:.1f}" text-anchor="end" {FONT}>{html.escape(_number(y))}</text>'
            )
        x_labels = [(x_min, "start")] if x_min == x_max else [(x_min, "start"), (x_max, "end")]
        for x, anchor in x_labels:
            anchor = "middle" if x_min == x_max else anchor
            parts.append(
                f'<text x="{px(x):.1f}" y="{height - 3}" text-anchor="{anchor}" fill="#666" {FONT}>'
                f"{html.escape(_number(x))}</text>"
            )
        for index, name in enumerate(names):
            values = points[name]
            color = series_color(index)
            tip = f"<title>{html.escape(name)}</title>"
            if len(values) == 1:
                x, y = values[0]
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">{tip}</circle>')
            elif values:
                coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in values)
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5" '
                    f'stroke-linejoin="round">{tip}</polyline>'
                )

    for index, (name, (x, row)) in enumerate(zip(names, spots, strict=True)):
        y = height + 4 + row * LEGEND_ROW
        color = series_color(index)
        parts.append(
            f"<g><title>{html.escape(name)}</title>"
            f'<rect x="{x:.1f}" y="{y + 2}" width="10" height="3" fill="{color}"/>'
            f'<text x="{x + 14:.1f}" y="{y + 8}" {FONT}>{html.escape(_short(name))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["svg_line_plot"]
