"""Charts drawn on the server as SVG: overlaid day curves, daily bars, a completeness heat map.

The gateway has no internet and the page must work in any browser without a CDN: SVG text in
the HTML needs no script at all. Every label is escaped; values arrive as decimal strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 270, 60, 20, 30, 40


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return v


def _axes(ymax: float, unit: str) -> list[str]:
    out = [f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#333"/>',
           f'<text x="4" y="14" font-size="11">{escape(unit)}</text>']
    for k in range(5):
        v = ymax * k / 4
        y = H - BOTTOM - (H - TOP - BOTTOM) * k / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
    return out


def _label(x: float, text: str) -> str:
    return f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" font-size="10" text-anchor="middle">{escape(text)}</text>'


def _svg(parts: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>' + "".join(parts) + "</svg>")


def line_chart(series: Sequence[tuple[str, Sequence[float | None]]], slots: int,
               x_labels: Sequence[str], unit: str, title: str) -> str:
    """One line per (name, values); values[i] sits at slot i of `slots`; None breaks the line."""
    vals = [v for _, vs in series for v in vs if v is not None]
    ymax = _nice_max(max(vals, default=0.0))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = _axes(ymax, unit)
    for i, lab in enumerate(x_labels):
        if i % max(1, len(x_labels) // 12) == 0:
            x = LEFT + pw * i / max(slots, 1)
            parts.append(_label(x, lab))
    # The first series (the chosen day) is drawn last, on top of the days it is compared with.
    for n, (name, vs) in reversed(list(enumerate(series))):
        color = COLORS[n % len(COLORS)]
        path, pen = [], "M"
        for i, v in enumerate(vs):
            if v is None:
                pen = "M"
                continue
            x = LEFT + pw * (i + 0.5) / max(slots, 1)
            y = H - BOTTOM - ph * v / ymax
            path.append(f"{pen}{x:.1f},{y:.1f}")
            pen = "L"
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        parts.append(f'<rect x="{LEFT + 10 + 110 * n}" y="{H - 14}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{LEFT + 24 + 110 * n}" y="{H - 5}" font-size="11">{escape(name)}</text>')
    return _svg(parts, title)


def bar_chart(bars: Sequence[tuple[str, float | None]], unit: str, title: str) -> str:
    vals = [v for _, v in bars if v is not None]
    ymax = _nice_max(max(vals, default=0.0))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = _axes(ymax, unit)
    n = max(len(bars), 1)
    bw = pw / n
    for i, (lab, v) in enumerate(bars):
        x = LEFT + bw * i
        if v is not None:
            h = ph * v / ymax
            tip = f"<title>{escape(lab)}: {v:g} {escape(unit)}</title>"
            parts.append(f'<rect x="{x + bw * 0.15:.1f}" y="{H - BOTTOM - h:.1f}" width="{bw * 0.7:.1f}" '
                         f'height="{h:.1f}" fill="{COLORS[0]}">{tip}</rect>')
        parts.append(_label(x + bw / 2, lab))
    return _svg(parts, title)


def heat_color(ratio: float | None, line: float) -> str:
    if ratio is None:
        return "#eeeeee"
    if ratio >= line:
        return "#2e7d32" if ratio >= 0.99 else "#81c784"
    return "#fbc02d" if ratio >= line - 0.2 else "#d32f2f"
