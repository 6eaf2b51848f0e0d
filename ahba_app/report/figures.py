"""Figures of the HTML report: pure functions from tables to SVG text (or PNG bytes).

matplotlib is imported inside the functions, never at import time, and only its object-oriented
API is used (``Figure`` with an explicit Agg canvas): no pyplot, no global backend switch, no
display. Point clouds and heat maps are rasterised inside the SVG so that files stay small; axes
and text stay vector (``svg.fonttype = 'none'``: text is real, searchable text).

matplotlib keeps a font cache in its configuration folder (``MPLCONFIGDIR``, else
``~/.cache/matplotlib``). Pass ``mplconfigdir`` to the first call of any function here (or to
``render_report``) to point it elsewhere, e.g. when the home folder is read-only.
"""

from __future__ import annotations

import io
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["samples_per_region", "sample_positions", "stability_histogram",
           "expression_heatmap", "DONOR_COLORS"]

#: One colour per AHBA donor, the same in every figure.
DONOR_COLORS = {
    "9861": "#4e79a7", "10021": "#f28e2b", "12876": "#59a14f",
    "14380": "#b07aa1", "15496": "#76b7b2", "15697": "#edc948",
}
_EXTRA_COLORS = ("#9c755f", "#bab0ac", "#ff9da7", "#e15759")
_EMPTY = "#d62728"
_GREY = "#9aa0a6"
_OUTLINE = "#e6e9ee"

_STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#5f6368",
    "axes.labelcolor": "#202124",
    "xtick.color": "#5f6368",
    "ytick.color": "#5f6368",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "svg.fonttype": "none",
    "image.interpolation": "nearest",
}


@contextmanager
def _matplotlib(mplconfigdir=None):
    """Import matplotlib (once) with ``MPLCONFIGDIR`` set to ``mplconfigdir`` if given.

    The variable is set only while matplotlib is first imported and restored afterwards; when
    matplotlib is already imported it has read its folders already and ``mplconfigdir`` is moot.
    """
    if mplconfigdir is not None and "matplotlib" not in sys.modules:
        old = os.environ.get("MPLCONFIGDIR")
        os.environ["MPLCONFIGDIR"] = str(mplconfigdir)
        try:
            import matplotlib  # noqa: F401
            import matplotlib.font_manager  # noqa: F401  (builds the font cache there)
        finally:
            if old is None:
                os.environ.pop("MPLCONFIGDIR", None)
            else:
                os.environ["MPLCONFIGDIR"] = old
    import matplotlib
    with matplotlib.rc_context(_STYLE):
        yield


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, explicitly
    return fig


def _export(fig, name: str, fmt: str = "svg", dpi: int = 150) -> str | bytes:
    """SVG text without XML prolog (ready to inline in HTML), or PNG bytes."""
    import matplotlib

    if fmt not in ("svg", "png"):
        raise ValueError(f"Invalid figure format {fmt!r}: use 'svg' or 'png'.")
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": f"ahba-{name}"}):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")
    if fmt == "png":
        return buf.getvalue()
    text = buf.getvalue().decode("utf-8")
    svg = text[text.index("<svg"):]
    # ids must be unique in the page that inlines several figures: prefix them and their uses
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', rf'url(#{name}-\1)', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    # a class and an accessible label; drop fixed pt sizes so CSS can scale the figure
    return svg.replace("<svg ", f'<svg class="figure" role="img" aria-label="{name}" ', 1)


def _donor_color(donor: str, i: int) -> str:
    return DONOR_COLORS.get(str(donor), _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def _region_palette(labels: Sequence) -> dict:
    """A colour per region, cycling a qualitative palette in atlas order."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    ordered = sorted(set(labels), key=lambda v: (str(type(v)), v))
    return {lab: cmap(i % 20) for i, lab in enumerate(ordered)}


def samples_per_region(counts: pd.DataFrame, *, region_names: dict | None = None,
                       fmt: str = "svg", mplconfigdir=None) -> str | bytes:
    """Stacked bars of the samples of each donor in each region; empty regions marked in red.

    ``counts``: regions (index, atlas ids) x donors (columns). ``region_names`` maps atlas ids to
    names for the axis (used when there are at most 100 regions).
    """
    counts = counts.fillna(0)
    n = len(counts)
    with _matplotlib(mplconfigdir):
        fig = _figure(10, 3.6 if n <= 100 else 3.0)
        ax = fig.add_subplot()
        from matplotlib.collections import PolyCollection
        from matplotlib.patches import Patch

        x = np.arange(n)
        bottom = np.zeros(n)
        handles = []
        for i, donor in enumerate(counts.columns):
            values = counts[donor].to_numpy(dtype=float)
            # one collection of rectangles per donor: much faster than one patch per bar
            left, right, top_ = x - 0.42, x + 0.42, bottom + values
            verts = np.stack([np.c_[left, bottom], np.c_[right, bottom], np.c_[right, top_],
                              np.c_[left, top_]], axis=1)
            color = _donor_color(donor, i)
            ax.add_collection(PolyCollection(verts[values > 0], facecolors=color,
                                             linewidths=0))
            handles.append(Patch(color=color, label=f"donor {donor}"))
            bottom = top_
        empty = np.flatnonzero(bottom == 0)
        top = max(float(bottom.max()) if n else 0.0, 1.0)
        for e in empty:
            ax.axvspan(e - 0.5, e + 0.5, color=_EMPTY, alpha=0.12, linewidth=0)
        if len(empty):
            handles.append(ax.scatter(empty, np.full(len(empty), top * 0.03), marker="x",
                                      color=_EMPTY, s=18, linewidths=1.2, label="no sample",
                                      zorder=3))
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("samples")
        if n <= 100:
            names = [str((region_names or {}).get(r, r)) for r in counts.index]
            ax.set_xticks(x, names, rotation=90, fontsize=5.5 if n > 40 else 7)
            for tick, e in zip(ax.get_xticklabels(), bottom == 0):
                if e:
                    tick.set_color(_EMPTY)
                    tick.set_fontweight("bold")
        else:
            step = max(1, n // 20)
            ax.set_xticks(x[::step], [str(r) for r in counts.index[::step]], fontsize=7)
            ax.set_xlabel("region (atlas id)")
        ax.legend(handles=handles, ncols=min(len(handles), 7), loc="upper left",
                  bbox_to_anchor=(0, 1.13), handlelength=1.2, columnspacing=1.2)
        return _export(fig, "samples-per-region", fmt)


def _outline_image(points: np.ndarray, axes: tuple[int, int], extent, step: float = 2.0):
    """Occupancy of projected points on a ``step`` mm grid (True where the brain is)."""
    (x0, x1), (y0, y1) = extent
    xs = np.arange(x0, x1 + step, step)
    ys = np.arange(y0, y1 + step, step)
    hist, _, _ = np.histogram2d(points[:, axes[0]], points[:, axes[1]], bins=(xs, ys))
    return np.ma.masked_equal((hist > 0).astype(float).T, 0)


def sample_positions(coords: pd.DataFrame, *, background: np.ndarray | None = None,
                     empty_centroids: np.ndarray | None = None, fmt: str = "svg",
                     mplconfigdir=None) -> str | bytes:
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
    colors = [palette[v] for v in labels[matched]]
    clouds = [xyz] + ([np.asarray(background, float)] if background is not None else [])
    if empty_centroids is not None and len(empty_centroids):
        clouds.append(np.asarray(empty_centroids, float))
    allpts = np.vstack([c for c in clouds if len(c)]) if any(len(c) for c in clouds) else \
        np.array([[-70, -100, -50], [70, 70, 80]], float)
    lo, hi = allpts.min(axis=0) - 8, allpts.max(axis=0) + 8
    views = (("Sagittal", (1, 2), "y (mm)", "z (mm)", ("P", "A")),
             ("Coronal", (0, 2), "x (mm)", "z (mm)", ("L", "R")),
             ("Axial", (0, 1), "x (mm)", "y (mm)", ("L", "R")))
    spans = [(hi[a] - lo[a], hi[b] - lo[b]) for _, (a, b), *_ in views]
    with _matplotlib(mplconfigdir):
        fig = _figure(10.5, 3.9)
        grid = fig.add_gridspec(1, 3, width_ratios=[w / h for w, h in spans])
        for k, (title, (a, b), xlab, ylab, sides) in enumerate(views):
            ax = fig.add_subplot(grid[0, k])
            extent = ((lo[a], hi[a]), (lo[b], hi[b]))
            if background is not None and len(background):
                img = _outline_image(np.asarray(background, float), (a, b), extent)
                ax.imshow(img, origin="lower", extent=(lo[a], hi[a] + 2, lo[b], hi[b] + 2),
                          cmap=_single_cmap(_OUTLINE), vmin=0, vmax=1, rasterized=True,
                          aspect="equal", zorder=0)
            if (~matched).any():
                ax.scatter(xyz[~matched, a], xyz[~matched, b], s=6, marker="x", linewidths=0.6,
                           color=_GREY, alpha=0.7, rasterized=True, zorder=1,
                           label="unassigned sample" if k == 0 else None)
            if matched.any():
                ax.scatter(xyz[matched, a], xyz[matched, b], s=6, c=colors, linewidths=0,
                           antialiased=False,
                           rasterized=True, zorder=2,
                           label="sample (colour = region)" if k == 0 else None)
            if empty_centroids is not None and len(empty_centroids):
                ec = np.asarray(empty_centroids, float)
                ax.scatter(ec[:, a], ec[:, b], s=60, facecolors="none", edgecolors=_EMPTY,
                           linewidths=1.4, zorder=3,
                           label="region without samples" if k == 0 else None)
            ax.set_xlim(lo[a], hi[a])
            ax.set_ylim(lo[b], hi[b])
            ax.set_aspect("equal")
            ax.set_title(title)
            ax.set_xlabel(xlab)
            ax.set_ylabel(ylab)
            ax.text(0.02, 0.02, sides[0], transform=ax.transAxes, color="#5f6368",
                    fontweight="bold")
            ax.text(0.98, 0.02, sides[1], transform=ax.transAxes, color="#5f6368",
                    fontweight="bold", ha="right")
        handles, names = fig.axes[0].get_legend_handles_labels()
        if handles:
            try:  # "outside" placement needs matplotlib >= 3.7
                fig.legend(handles, names, loc="outside lower center", ncols=len(handles),
                           markerscale=2.5)
            except ValueError:
                fig.legend(handles, names, loc="lower center", ncols=len(handles),
                           markerscale=2.5)
        return _export(fig, "sample-positions", fmt, dpi=110)


def _single_cmap(color: str):
    from matplotlib.colors import ListedColormap
    return ListedColormap([color])


def stability_histogram(values: Iterable[float], *, threshold: float | None = None,
                        fmt: str = "svg", mplconfigdir=None) -> str | bytes:
    """Distribution of differential stability (one value per gene), with its median.

    ``threshold``: the stability filter, drawn as a red line with the number of genes below it.
    """
    values = np.asarray(pd.to_numeric(pd.Series(list(values)), errors="coerce"), dtype=float)
    values = values[np.isfinite(values)]
    with _matplotlib(mplconfigdir):
        fig = _figure(6.5, 3.0)
        ax = fig.add_subplot()
        ax.hist(values, bins=min(60, max(10, len(values) // 20)), color="#4e79a7",
                edgecolor="white", linewidth=0.3)
        if len(values):
            med = float(np.median(values))
            ax.axvline(med, color="#202124", linewidth=1)
            ax.annotate(f"median {med:.2f}", (med, 1), xycoords=("data", "axes fraction"),
                        xytext=(4, -10), textcoords="offset points", fontsize=8)
        if threshold is not None:
            below = int((values < threshold).sum())
            ax.axvline(threshold, color=_EMPTY, linestyle="--", linewidth=1.2)
            ax.annotate(f"threshold {threshold:g}\n{below:,} genes below", (threshold, 0.8),
                        xycoords=("data", "axes fraction"), xytext=(-4, 0),
                        textcoords="offset points", ha="right", color=_EMPTY, fontsize=8)
        ax.set_xlabel("differential stability (mean Spearman ρ between pairs of donors)")
        ax.set_ylabel("genes")
        return _export(fig, "differential-stability", fmt)


def top_variable_genes(expression: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """The ``n`` genes varying most across regions, ordered by the region where they peak."""
    table = expression.astype(float)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        var = table.var(axis=0, skipna=True).fillna(-np.inf)
        top = table[var.sort_values(ascending=False, kind="stable").index[:n]]
        values = top.to_numpy()
        filled = np.where(np.isnan(values), -np.inf, values)
        peak = filled.argmax(axis=0) if len(values) else np.zeros(top.shape[1], int)
    order = np.lexsort((-filled.max(axis=0) if len(values) else peak, peak))
    return top.iloc[:, order]


def expression_heatmap(expression: pd.DataFrame, *, n_genes: int = 50,
                       region_names: dict | None = None, value_label: str = "expression",
                       fmt: str = "svg", mplconfigdir=None) -> str | bytes:
    """Heat map of the ``n_genes`` most variable genes (rows) across regions (columns).

    Genes are ordered by the region where they peak, which shows regional gradients; regions
    without data are grey.
    """
    top = top_variable_genes(expression, n_genes)
    data = np.ma.masked_invalid(top.to_numpy(dtype=float).T)
    n_regions, n_shown = top.shape
    with _matplotlib(mplconfigdir):
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="#d5d8dc")
        fig = _figure(10, min(9.0, 1.6 + 0.13 * n_shown))
        ax = fig.add_subplot()
        image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest",
                          rasterized=True)
        ax.set_yticks(np.arange(n_shown), [str(g) for g in top.columns], fontsize=6)
        if n_regions <= 100:
            names = [str((region_names or {}).get(r, r)) for r in top.index]
            ax.set_xticks(np.arange(n_regions), names, rotation=90,
                          fontsize=5.5 if n_regions > 40 else 7)
        else:
            step = max(1, n_regions // 20)
            ax.set_xticks(np.arange(n_regions)[::step], [str(r) for r in top.index[::step]],
                          fontsize=7)
            ax.set_xlabel("region (atlas id)")
        ax.spines[:].set_visible(False)
        ax.tick_params(length=0)
        bar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01)
        bar.set_label(value_label)
        bar.outline.set_visible(False)
        return _export(fig, "expression-heatmap", fmt)
