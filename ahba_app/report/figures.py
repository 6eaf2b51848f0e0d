"""Figures of the HTML report: pure functions from tables to SVG text, written directly.

Every figure is an SVG document built here from the numbers, without a plotting library: axes,
ticks, bars and text are SVG elements (text is real, searchable text), and the dense parts (the
sample clouds, the brain silhouette, the heat map) are small PNG images drawn with NumPy and
embedded as data URIs. This takes milliseconds where matplotlib took seconds (its import, its
font cache, and one text layout per tick label at every draw), which a batch of atlases paid once
per atlas. Lengths are in points (1/72 inch), as the ``viewBox``; the page's CSS scales the
figure.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["samples_per_region", "sample_positions", "stability_histogram",
           "expression_heatmap", "top_variable_genes", "png_bytes", "DONOR_COLORS"]

#: One colour per AHBA donor, the same in every figure.
DONOR_COLORS = {
    "9861": "#4e79a7", "10021": "#f28e2b", "12876": "#59a14f",
    "14380": "#b07aa1", "15496": "#76b7b2", "15697": "#edc948",
}
_EXTRA_COLORS = ("#9c755f", "#bab0ac", "#ff9da7", "#e15759")
_EMPTY = "#d62728"
_GREY = "#9aa0a6"
_OUTLINE = "#e6e9ee"
_NO_DATA = "#d5d8dc"
_TEXT = "#202124"
_AXIS = "#5f6368"
_FONT = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif"
#: A qualitative palette of 20 colours for regions (Tableau's 20, in its usual order).
_REGION_COLORS = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
                  "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
                  "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")
#: The viridis colour map (CC0) at 33 points; colours in between are interpolated linearly
#: (within 2/255 of the 256-colour table).
_VIRIDIS = ("440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d "
            "2f6b8e 2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a "
            "3fbc73 4ec36b 5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725")
#: Average advance of a character of the sans-serif font, in ems (for margins only).
_CHAR = 0.6


# ---------------------------------------------------------------------------------------------
# Small pieces: colours, numbers, PNG
# ---------------------------------------------------------------------------------------------
def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _viridis(values: np.ndarray) -> np.ndarray:
    """RGB (uint8) of ``values`` in [0, 1] on the viridis map."""
    table = np.array([[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in _VIRIDIS.split()], float)
    where = np.linspace(0.0, 1.0, len(table))
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, where, table[:, k]) for k in range(3)], axis=-1) \
        .round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file of an (H, W, 3) or (H, W, 4) uint8 image (8 bits a channel, no filter)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, channels = rgb.shape
    if channels not in (3, 4):
        raise ValueError(f"An image needs 3 or 4 channels, not {channels}.")
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # filter byte 0 on every row
    rows[:, 1:] = rgb.reshape(height, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _num(v: float) -> str:
    """A coordinate with at most two decimals, no trailing zeros."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _ticks(lo: float, hi: float, n: int = 6) -> tuple[np.ndarray, list[str]]:
    """Round tick values in [lo, hi] (steps 1, 2, 2.5 or 5 times a power of ten) and labels."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if np.isfinite(lo) else np.array([]), \
            [_tick_label(lo, 1.0)] if np.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    values = np.array([k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)])
    return values, [_tick_label(v, step) for v in values]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if decimals and round(step / 10.0 ** -decimals, 6) % 1:  # 0.25, 0.025...
        decimals += 1
    if not decimals and step < 10 and round(step, 6) % 1:  # 2.5
        decimals = 1
    text = f"{value:.{decimals}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "\u2212")


def _text_width(text: str, size: float) -> float:
    return len(str(text)) * size * _CHAR


def _donor_color(donor: str, i: int) -> str:
    return DONOR_COLORS.get(str(donor), _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def _region_palette(labels: Sequence) -> dict:
    """A colour per region, cycling a qualitative palette in atlas order."""
    ordered = sorted(set(labels), key=lambda v: (str(type(v)), v))
    return {lab: _REGION_COLORS[i % len(_REGION_COLORS)] for i, lab in enumerate(ordered)}


# ---------------------------------------------------------------------------------------------
# The SVG document and its axes
# ---------------------------------------------------------------------------------------------
class _Svg:
    """An SVG document in points, built element by element."""

    def __init__(self, width: float, height: float, name: str):
        self.width, self.height, self.name = width, height, name
        self.parts: list[str] = []
        self._ids = 0

    def new_id(self, kind: str) -> str:
        self._ids += 1
        return f"{self.name}-{kind}{self._ids}"

    def rect(self, x, y, w, h, fill, opacity=None, extra=""):
        op = f' fill-opacity="{opacity}"' if opacity is not None else ""
        self.parts.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" '
                          f'height="{_num(h)}" fill="{fill}"{op}{extra}/>')

    def line(self, x1, y1, x2, y2, color=_AXIS, width=0.8, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" '
                          f'y2="{_num(y2)}" stroke="{color}" stroke-width="{width}"{d}/>')

    def path(self, d: str, fill="none", stroke=None, width=None):
        s = f' stroke="{stroke}" stroke-width="{width}"' if stroke else ""
        self.parts.append(f'<path d="{d}" fill="{fill}"{s}/>')

    def text(self, x, y, text, size=8.5, anchor="start", color=_TEXT, weight=None,
             rotate=False):
        """Text whose vertical middle is at ``y`` (rotated: reading upwards, middle at ``x``)."""
        w = ' font-weight="bold"' if weight == "bold" else ""
        a = f' text-anchor="{anchor}"' if anchor != "start" else ""
        body = html.escape(str(text), quote=False)
        if rotate:
            pos = f'transform="translate({_num(x + 0.35 * size)} {_num(y)}) rotate(-90)"'
        else:
            pos = f'x="{_num(x)}" y="{_num(y + 0.35 * size)}"'
        self.parts.append(f'<text {pos} font-size="{size}" fill="{color}"{a}{w}>{body}</text>')

    def image(self, x, y, w, h, rgb: np.ndarray, pixelated=False, clip=None):
        data = base64.b64encode(png_bytes(rgb)).decode("ascii")
        style = ' style="image-rendering:pixelated"' if pixelated else ""
        c = f' clip-path="url(#{clip})"' if clip else ""
        self.parts.append(f'<image x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" '
                          f'height="{_num(h)}" preserveAspectRatio="none"{style}{c} '
                          f'xlink:href="data:image/png;base64,{data}"/>')

    def clip(self, x, y, w, h) -> str:
        ident = self.new_id("clip")
        self.parts.append(f'<clipPath id="{ident}"><rect x="{_num(x)}" y="{_num(y)}" '
                          f'width="{_num(w)}" height="{_num(h)}"/></clipPath>')
        return ident

    def render(self) -> str:
        head = (f'<svg class="figure" role="img" aria-label="{self.name}" '
                f'xmlns="http://www.w3.org/2000/svg" '
                f'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" '
                f'width="{_num(self.width)}pt" height="{_num(self.height)}pt" '
                f'viewBox="0 0 {_num(self.width)} {_num(self.height)}" '
                f'font-family="{_FONT}">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n')
        return head + "\n".join(self.parts) + "\n</svg>\n"


class _Axes:
    """A plot area (``x``, ``y`` its top-left corner, in points) with data limits."""

    def __init__(self, svg: _Svg, x, y, w, h, xlim, ylim):
        self.svg, self.x, self.y, self.w, self.h = svg, x, y, w, h
        self.xlim, self.ylim = (float(xlim[0]), float(xlim[1])), (float(ylim[0]), float(ylim[1]))

    def sx(self, v):
        x0, x1 = self.xlim
        return self.x + (np.asarray(v, float) - x0) / (x1 - x0) * self.w

    def sy(self, v):
        y0, y1 = self.ylim
        return self.y + self.h - (np.asarray(v, float) - y0) / (y1 - y0) * self.h

    def spines(self):
        b = self.y + self.h
        self.svg.line(self.x, self.y, self.x, b)
        self.svg.line(self.x, b, self.x + self.w, b)

    def yticks(self, values, labels, size=8.5, length=3.5):
        for v, label in zip(values, labels):
            y = float(self.sy(v))
            if length:
                self.svg.line(self.x - length, y, self.x, y)
            self.svg.text(self.x - length - 2, y, label, size=size, anchor="end", color=_AXIS)

    def xticks(self, values, labels, size=8.5, rotate=False, length=3.5, colors=None,
               bold=None):
        b = self.y + self.h
        for i, (v, label) in enumerate(zip(values, labels)):
            x = float(self.sx(v))
            if length:
                self.svg.line(x, b, x, b + length)
            color = colors[i] if colors is not None else _AXIS
            weight = "bold" if bold is not None and bold[i] else None
            if rotate:
                self.svg.text(x, b + length + 2, label, size=size, anchor="end", color=color,
                              weight=weight, rotate=True)
            else:
                self.svg.text(x, b + length + 2 + 0.6 * size, label, size=size, anchor="middle",
                              color=color, weight=weight)

    def xlabel(self, text, offset):
        self.svg.text(self.x + self.w / 2, self.y + self.h + offset, text, anchor="middle")

    def ylabel(self, text, offset):
        self.svg.text(self.x - offset, self.y + self.h / 2, text, anchor="middle", rotate=True)

    def title(self, text):
        self.svg.text(self.x + self.w / 2, self.y - 8, text, size=9.5, anchor="middle")


def _legend(svg: _Svg, entries: list[tuple[str, str]], x: float, y: float, *, centre=False,
            size=8.0) -> None:
    """One row of legend entries (marker kind, label); kinds: '#rrggbb' swatch, 'x:#color'
    cross, 'o:#color' ring, '.:#color' dot."""
    widths = [14 + _text_width(label, size) + 10 for _, label in entries]
    if centre:
        x -= sum(widths) / 2
    for (kind, label), width in zip(entries, widths):
        if kind.startswith("x:"):
            svg.path(_cross_path(x + 5, y, 3.0), stroke=kind[2:], width=1.2)
        elif kind.startswith("o:"):
            svg.parts.append(f'<circle cx="{_num(x + 5)}" cy="{_num(y)}" r="3.5" fill="none" '
                             f'stroke="{kind[2:]}" stroke-width="1.4"/>')
        elif kind.startswith(".:"):
            svg.parts.append(f'<circle cx="{_num(x + 5)}" cy="{_num(y)}" r="2.5" '
                             f'fill="{kind[2:]}"/>')
        else:
            svg.rect(x, y - 3.5, 10, 7, kind)
        svg.text(x + 14, y, label, size=size)
        x += width


def _cross_path(x: float, y: float, half: float) -> str:
    return (f"M{_num(x - half)},{_num(y - half)}L{_num(x + half)},{_num(y + half)}"
            f"M{_num(x - half)},{_num(y + half)}L{_num(x + half)},{_num(y - half)}")


def _category_axis(ax: _Axes, index, region_names, flags, n: int, rotate_size: float):
    """Region labels under the axis: names (rotated) for at most 100 regions, else every n/20th
    atlas id."""
    x = np.arange(n)
    if n <= 100:
        names = [str((region_names or {}).get(r, r)) for r in index]
        colors = [_EMPTY if e else _AXIS for e in flags]
        ax.xticks(x, names, size=rotate_size, rotate=True, colors=colors, bold=flags)
    else:
        step = max(1, n // 20)
        ax.xticks(x[::step], [str(r) for r in index[::step]], size=7)
        ax.xlabel("region (atlas id)", 26)


def _category_margin(index, region_names, n: int, size: float) -> float:
    if n > 100:
        return 34.0
    longest = max((len(str((region_names or {}).get(r, r))) for r in index), default=1)
    return 8 + longest * size * _CHAR


# ---------------------------------------------------------------------------------------------
# The four figures
# ---------------------------------------------------------------------------------------------
def samples_per_region(counts: pd.DataFrame, *, region_names: dict | None = None) -> str:
    """Stacked bars of the samples of each donor in each region; empty regions marked in red.

    ``counts``: regions (index, atlas ids) x donors (columns). ``region_names`` maps atlas ids to
    names for the axis (used when there are at most 100 regions).
    """
    counts = counts.fillna(0)
    n = len(counts)
    size = 5.5 if n > 40 else 7
    totals = counts.to_numpy(dtype=float).sum(axis=1) if n else np.zeros(0)
    empty = totals == 0
    top = max(float(totals.max()) if n else 0.0, 1.0)
    bottom_margin = _category_margin(counts.index, region_names, n, size)
    width = 720.0
    height = max(259.0 if n <= 100 else 216.0, 90 + bottom_margin)
    svg = _Svg(width, height, "samples-per-region")
    ax = _Axes(svg, 46, 26, width - 56, height - 26 - bottom_margin, (-0.6, n - 0.4),
               (0, top * 1.05))
    for e in np.flatnonzero(empty):
        svg.rect(float(ax.sx(e - 0.5)), ax.y, float(ax.sx(e + 0.5) - ax.sx(e - 0.5)), ax.h,
                 _EMPTY, opacity=0.12)
    x = np.arange(n)
    left, right = ax.sx(x - 0.42), ax.sx(x + 0.42)
    base = np.zeros(n)
    entries = []
    for i, donor in enumerate(counts.columns):
        values = counts[donor].to_numpy(dtype=float)
        y0, y1 = ax.sy(base), ax.sy(base + values)
        d = "".join(f"M{_num(left[k])},{_num(y0[k])}H{_num(right[k])}V{_num(y1[k])}"
                    f"H{_num(left[k])}Z" for k in np.flatnonzero(values > 0))
        color = _donor_color(donor, i)
        if d:  # one path per donor: its bars
            svg.path(d, fill=color)
        entries.append((color, f"donor {donor}"))
        base = base + values
    if empty.any():
        y = float(ax.sy(top * 0.03))
        svg.path("".join(_cross_path(float(ax.sx(e)), y, 2.1) for e in np.flatnonzero(empty)),
                 stroke=_EMPTY, width=1.2)
        entries.append((f"x:{_EMPTY}", "no sample"))
    ax.spines()
    ax.yticks(*_ticks(0, top * 1.05, 8))
    ax.ylabel("samples", 34)
    _category_axis(ax, counts.index, region_names, empty, n, size)
    for start in range(0, len(entries), 7):
        _legend(svg, entries[start:start + 7], ax.x, 10 + 12 * (start // 7))
    return svg.render()


def _occupancy(points: np.ndarray, axes: tuple[int, int], lo, hi, step: float = 2.0):
    """Occupancy of projected points on a ``step`` mm grid starting at ``lo`` (True where the
    brain is), as (columns along the first axis, rows along the second)."""
    a, b = axes
    xs = np.arange(lo[a], hi[a] + step, step)
    ys = np.arange(lo[b], hi[b] + step, step)
    hist, _, _ = np.histogram2d(points[:, a], points[:, b], bins=(xs, ys))
    return hist > 0


def _stamp(image: np.ndarray, px: np.ndarray, py: np.ndarray, offsets, colors) -> None:
    """Paint each point's ``offsets`` (pixel shifts) in its colour (later points on top)."""
    h, w = image.shape[:2]
    for dx, dy in offsets:
        x, y = px + dx, py + dy
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        image[y[ok], x[ok]] = colors[ok]


def sample_positions(coords: pd.DataFrame, *, background: np.ndarray | None = None,
                     empty_centroids: np.ndarray | None = None) -> str:
    """Samples on sagittal, coronal and axial projections of their MNI coordinates.

    ``coords``: columns ``mni_x``, ``mni_y``, ``mni_z`` and ``label`` (0 or NaN: unassigned);
    matched samples are coloured by region, unassigned ones are grey crosses.
    ``background``: (N, 3) points (e.g. pial surface vertices) drawn as a light silhouette.
    ``empty_centroids``: (K, 3) centroids of regions without samples, drawn as red rings.
    """
    xyz = coords[["mni_x", "mni_y", "mni_z"]].to_numpy(dtype=float)
    labels = coords["label"] if "label" in coords else pd.Series(0, index=coords.index)
    matched = labels.notna().to_numpy() & (labels.fillna(0).to_numpy() != 0)
    palette = _region_palette(labels[matched].tolist())
    colors = np.array([_rgb(palette[v]) for v in labels[matched]], np.uint8).reshape(-1, 3)
    background = None if background is None or not len(background) else \
        np.asarray(background, float)
    centroids = None if empty_centroids is None or not len(empty_centroids) else \
        np.asarray(empty_centroids, float)
    clouds = [c for c in (xyz, background, centroids) if c is not None and len(c)]
    allpts = np.vstack(clouds) if clouds else np.array([[-70, -100, -50], [70, 70, 80]], float)
    lo, hi = allpts.min(axis=0) - 8, allpts.max(axis=0) + 8
    views = (("Sagittal", (1, 2), "y (mm)", "z (mm)", ("P", "A")),
             ("Coronal", (0, 2), "x (mm)", "z (mm)", ("L", "R")),
             ("Axial", (0, 1), "x (mm)", "y (mm)", ("L", "R")))
    width, height = 756.0, 281.0
    left, right, top, bottom, legend = 40.0, 6.0, 22.0, 30.0, 18.0
    spans = [(hi[a] - lo[a], hi[b] - lo[b]) for _, (a, b), *_ in views]
    scale = min((width - 3 * (left + right)) / sum(w for w, _ in spans),
                (height - top - bottom - legend) / max(h for _, h in spans))
    used = sum(w * scale + left + right for w, _ in spans)
    x = (width - used) / 2
    svg = _Svg(width, height, "sample-positions")
    res = 2.0  # raster pixels per point
    grey, outline = _rgb(_GREY), _rgb(_OUTLINE)
    grey_on_white = (0.7 * grey + 0.3 * 255).round().astype(np.uint8)
    r = math.sqrt(6) / 2 * res  # marker area 6 pt^2, as the earlier figures
    disc = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4) if dx * dx + dy * dy <= r * r]
    cross = [(d, d) for d in range(-2, 3)] + [(d, -d) for d in range(-2, 3) if d]
    for title, (a, b), xlab, ylab, sides in views:
        w, h = (hi[a] - lo[a]) * scale, (hi[b] - lo[b]) * scale
        ax = _Axes(svg, x + left, top, w, h,
                   (lo[a], hi[a]), (lo[b], hi[b]))
        pw, ph = max(1, round(w * res)), max(1, round(h * res))
        image = np.full((ph, pw, 3), 255, np.uint8)
        if background is not None:
            occupied = _occupancy(background, (a, b), lo, hi)
            cx = ((np.arange(pw) + 0.5) / res / scale // 2).astype(int)  # 2 mm cells
            cy = (((ph - np.arange(ph) - 0.5) / res / scale) // 2).astype(int)
            cx = np.minimum(cx, occupied.shape[0] - 1)
            cy = np.minimum(cy, occupied.shape[1] - 1)
            image[occupied[cx[None, :], cy[:, None]]] = outline
        px = lambda v, k=a: ((v - lo[k]) * scale * res).astype(int)  # noqa: E731
        py = lambda v, k=b: (ph - 1 - (v - lo[k]) * scale * res).astype(int)  # noqa: E731
        if (~matched).any():
            pts = xyz[~matched]
            _stamp(image, px(pts[:, a]), py(pts[:, b]), cross,
                   np.broadcast_to(grey_on_white, (len(pts), 3)))
        if matched.any():
            pts = xyz[matched]
            _stamp(image, px(pts[:, a]), py(pts[:, b]), disc, colors)
        svg.image(ax.x, ax.y, w, h, image)
        if centroids is not None:
            cxs, cys = ax.sx(centroids[:, a]), ax.sy(centroids[:, b])
            svg.parts.extend(f'<circle cx="{_num(u)}" cy="{_num(v)}" r="3.9" fill="none" '
                             f'stroke="{_EMPTY}" stroke-width="1.4"/>'
                             for u, v in zip(cxs, cys))
        ax.spines()
        ax.xticks(*_ticks(lo[a], hi[a], 7))
        ax.yticks(*_ticks(lo[b], hi[b], 7))
        ax.xlabel(xlab, 24)
        ax.ylabel(ylab, 32)
        ax.title(title)
        svg.text(ax.x + 0.02 * w, ax.y + h - 0.02 * h - 5, sides[0], color=_AXIS, weight="bold")
        svg.text(ax.x + 0.98 * w, ax.y + h - 0.02 * h - 5, sides[1], color=_AXIS, weight="bold",
                 anchor="end")
        x += w + left + right
    entries = []
    if (~matched).any():
        entries.append((f"x:{_GREY}", "unassigned sample"))
    if matched.any():
        entries.append((f".:{'#%02x%02x%02x' % tuple(colors[0])}", "sample (colour = region)"))
    if centroids is not None:
        entries.append((f"o:{_EMPTY}", "region without samples"))
    if entries:
        _legend(svg, entries, width / 2, height - legend / 2 - 2, centre=True)
    return svg.render()


def stability_histogram(values: Iterable[float], *, threshold: float | None = None) -> str:
    """Distribution of differential stability (one value per gene), with its median.

    ``threshold``: the stability filter, drawn as a red line with the number of genes below it.
    """
    values = np.asarray(pd.to_numeric(pd.Series(list(values)), errors="coerce"), dtype=float)
    values = values[np.isfinite(values)]
    heights, edges = np.histogram(values, bins=min(60, max(10, len(values) // 20)))
    lo, hi = float(edges[0]), float(edges[-1])
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    pad = (hi - lo) * 0.05
    top = max(float(heights.max()) if len(heights) else 0.0, 1.0) * 1.05
    width, height = 468.0, 216.0
    svg = _Svg(width, height, "differential-stability")
    ax = _Axes(svg, 52, 14, width - 64, height - 14 - 40, (lo - pad, hi + pad), (0, top))
    x0, x1, y1 = ax.sx(edges[:-1]), ax.sx(edges[1:]), ax.sy(heights)
    base = _num(float(ax.sy(0)))
    svg.path("".join(f"M{_num(x0[k])},{base}H{_num(x1[k])}V{_num(y1[k])}H{_num(x0[k])}Z"
                     for k in np.flatnonzero(heights > 0)),
             fill="#4e79a7", stroke="white", width=0.3)
    if len(values):
        med = float(np.median(values))
        xm = float(ax.sx(med))
        svg.line(xm, ax.y, xm, ax.y + ax.h, color=_TEXT, width=1)
        svg.text(xm + 4, ax.y + 10, f"median {med:.2f}", size=8)
    if threshold is not None:
        below = int((values < threshold).sum())
        xt = float(ax.sx(threshold))
        svg.line(xt, ax.y, xt, ax.y + ax.h, color=_EMPTY, width=1.2, dash="4.4,1.9")
        y = ax.y + 0.2 * ax.h
        svg.text(xt - 4, y - 5, f"threshold {threshold:g}", size=8, anchor="end", color=_EMPTY)
        svg.text(xt - 4, y + 5, f"{below:,} genes below", size=8, anchor="end", color=_EMPTY)
    ax.spines()
    ax.xticks(*_ticks(lo - pad, hi + pad))
    ax.yticks(*_ticks(0, top))
    ax.xlabel("differential stability (mean Spearman \u03c1 between pairs of donors)", 26)
    ax.ylabel("genes", 38)
    return svg.render()


#: Genes whose variances one thread computes at a time (a block of the table).
_VARIANCE_COLUMNS = 2048


def _column_variances(values: np.ndarray) -> np.ndarray:
    """Variance (ddof 1, NaN skipped) of each column of a regions x genes array, in the very
    arithmetic of ``DataFrame.var(axis=0)`` (pandas' two-pass ``nanvar`` on the genes x regions
    block, copied C-contiguous: sums along the regions in numpy's pairwise order), so the same
    bits and the same ranking with ties; the difference and the square are taken in place (two
    fewer arrays of the table's size), the NaN masking only when there are NaN. NaN where fewer
    than two values. Blocks of genes go to the threads of :func:`ahba_app._blocks.thread_map`
    (each gene's sums are its own: the same bits in any block)."""
    from .._blocks import even_block_count, thread_map

    n_genes = values.shape[1]
    out = np.empty(n_genes, dtype=np.float64)
    if not n_genes:
        return out
    width = -(-n_genes // even_block_count(n_genes, _VARIANCE_COLUMNS))

    def run(start):
        out[start:start + width] = _block_variances(values[:, start:start + width])

    thread_map(run, range(0, n_genes, width))
    return out


def _block_variances(values: np.ndarray) -> np.ndarray:
    """:func:`_column_variances` of one block of genes."""
    block = values.T
    mask = np.isnan(block)
    count = (block.shape[1] - mask.sum(axis=1)).astype(np.float64)
    work = block.copy()  # C order, as pandas' copy
    masked = bool(mask.any())
    if masked:
        np.putmask(work, mask, 0)
    avg = work.sum(axis=1, dtype=np.float64) / count
    np.subtract(avg[:, None], work, out=work)
    np.multiply(work, work, out=work)  # pandas' ** 2 on float64: the same product
    if masked:
        np.putmask(work, mask, 0)
    var = work.sum(axis=1, dtype=np.float64) / (count - 1.0)
    var[count <= 1] = np.nan
    return var


def top_variable_genes(expression: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """The ``n`` genes varying most across regions, ordered by the region where they peak."""
    table = expression.astype(float)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        var = pd.Series(_column_variances(table.to_numpy()), index=table.columns).fillna(-np.inf)
        top = table[var.sort_values(ascending=False, kind="stable").index[:n]]
        values = top.to_numpy()
        filled = np.where(np.isnan(values), -np.inf, values)
        peak = filled.argmax(axis=0) if len(values) else np.zeros(top.shape[1], int)
    order = np.lexsort((-filled.max(axis=0) if len(values) else peak, peak))
    return top.iloc[:, order]


def expression_heatmap(expression: pd.DataFrame, *, n_genes: int = 50,
                       region_names: dict | None = None, value_label: str = "expression") -> str:
    """Heat map of the ``n_genes`` most variable genes (rows) across regions (columns).

    Genes are ordered by the region where they peak, which shows regional gradients; regions
    without data are grey. Colours: viridis from the smallest to the largest value shown.
    """
    top = top_variable_genes(expression, n_genes)
    data = top.to_numpy(dtype=float).T  # genes x regions
    n_shown, n_regions = data.shape
    finite = np.isfinite(data)
    vmin, vmax = (float(data[finite].min()), float(data[finite].max())) if finite.any() \
        else (0.0, 1.0)
    span = vmax - vmin if vmax > vmin else 1.0
    rgb = _viridis(np.where(finite, (data - vmin) / span, 0.0))
    rgb[~finite] = _rgb(_NO_DATA)
    size = 5.5 if n_regions > 40 else 7
    bottom = _category_margin(top.index, region_names, n_regions, size)
    left = 10 + max((_text_width(g, 6) for g in top.columns), default=10)
    width = 720.0
    height = max(min(9.0, 1.6 + 0.13 * n_shown) * 72, 60 + bottom)
    svg = _Svg(width, height, "expression-heatmap")
    ax = _Axes(svg, left, 8, width - left - 76, height - 8 - bottom,
               (-0.5, n_regions - 0.5), (n_shown - 0.5, -0.5))
    if n_shown and n_regions:
        k = max(1, math.ceil(600 / n_regions)), max(1, math.ceil(300 / n_shown))
        big = np.repeat(np.repeat(rgb, k[1], axis=0), k[0], axis=1)  # crisp cells when scaled
        svg.image(ax.x, ax.y, ax.w, ax.h, big, pixelated=True)
    ax.yticks(np.arange(n_shown), [str(g) for g in top.columns], size=6, length=0)
    _category_axis(ax, top.index, region_names, np.zeros(n_regions, bool), n_regions, size)
    # the colour bar: 60 % of the map's height, centred, its values on the right
    bh = 0.6 * ax.h
    bar = _Axes(svg, ax.x + ax.w + 6, ax.y + 0.2 * ax.h, bh / 20, bh, (0, 1), (vmin, vmin + span))
    ramp = _viridis(np.linspace(1, 0, 256))[:, None, :]
    svg.image(bar.x, bar.y, bar.w, bar.h, ramp)
    values, labels = _ticks(vmin, vmin + span, 5)
    for v, label in zip(values, labels):
        y = float(bar.sy(v))
        svg.line(bar.x + bar.w, y, bar.x + bar.w + 3.5, y)
        svg.text(bar.x + bar.w + 5.5, y, label, size=8.5, color=_AXIS)
    svg.text(bar.x + bar.w + 5.5 + max((_text_width(t, 8.5) for t in labels), default=0) + 10,
             bar.y + bh / 2, value_label, anchor="middle", rotate=True)
    return svg.render()
