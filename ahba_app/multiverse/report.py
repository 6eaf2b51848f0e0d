"""The multiverse report: what a sweep's rows say, as one self-contained HTML page (Jinja2,
inline SVG, no script, nothing fetched) and a TSV summary.

- the distribution of each statistic over the pipelines (a histogram), with where the
  reference pipeline (the run's own options: command line or preset) falls;
- each option's impact, as in Markello et al. (2021, Fig. 2): the mean absolute change of a
  statistic between two pipelines that differ in that option only, all other options equal,
  over every such pair of the grid (pairs where either value is undefined are left out);
- the summary (:func:`summary_table`): per statistic its distribution, the reference value
  and its percentile, and each option's impact; written beside Parquet rows as TSV.

Pure functions of the rows table (a DataFrame as :func:`read_rows` gives it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import atomic
from .grid import pipeline_id
from .stats import STATISTICS
from .sweep import COLUMNS, format_value

__all__ = ["ReportData", "histogram", "option_impact", "read_rows", "render_report",
           "report_data", "summary_table", "write_report"]

#: What each statistic is, for the page.
DESCRIPTIONS = {
    "n_genes": "genes in the table",
    "n_regions": "regions with data",
    "cge_distance_rho": "Spearman correlation between the regions' expression similarity "
                        "and their distance (CGE)",
    "pc1_variance": "share of the variance explained by the first principal component",
    "map_rho": "Spearman correlation between the region map and the first component's scores",
}


def read_rows(path) -> pd.DataFrame:
    """A sweep's rows (TSV or Parquet), options as the TSV writes them (text: ``none``,
    ``true``/``false``, numbers as written), statistics as numbers (NaN when undefined)."""
    path = Path(path)
    options = [c for c in COLUMNS if c not in STATISTICS]
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        for column in options:
            frame[column] = [format_value(None if v is None or (isinstance(v, float)
                                                                and math.isnan(v)) else
                                          (bool(v) if isinstance(v, np.bool_) else v))
                             for v in frame[column].tolist()]
    else:
        frame = pd.read_csv(path, sep="\t", dtype={c: str for c in options},
                            keep_default_na=False, na_values={s: ["n/a"] for s in STATISTICS})
    for column in STATISTICS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def varying_options(rows: pd.DataFrame) -> list[str]:
    """The option columns that take more than one value (the grid's axes)."""
    return [c for c in COLUMNS if c not in STATISTICS and c != "pipeline_id"
            and rows[c].nunique() > 1]


def option_impact(rows: pd.DataFrame, options: Sequence[str] | None = None,
                  statistics: Sequence[str] = STATISTICS) -> pd.DataFrame:
    """option x statistic: the mean absolute change of the statistic between pipelines that
    differ in that option only (every pair of its values, all other options equal). NaN
    when no such pair has the statistic defined on both sides."""
    options = list(varying_options(rows) if options is None else options)
    codes = {name: pd.factorize(rows[name])[0] for name in options}
    out = pd.DataFrame(np.nan, index=pd.Index(options, name="option"),
                       columns=list(statistics))
    for option in options:
        group = np.zeros(len(rows), dtype=np.int64)
        for name in options:  # the other options' values as one mixed-radix number
            if name != option:
                group = group * (int(codes[name].max()) + 1) + codes[name]
        group = pd.factorize(group)[0]
        level = codes[option]
        n_groups, n_levels = int(group.max()) + 1, int(level.max()) + 1
        for statistic in statistics:
            wide = np.full((n_groups, n_levels), np.nan)
            wide[group, level] = rows[statistic].to_numpy(dtype=float)
            diffs = [np.abs(wide[:, a] - wide[:, b]) for a in range(n_levels)
                     for b in range(a + 1, n_levels)]
            values = np.concatenate(diffs) if diffs else np.array([])
            values = values[np.isfinite(values)]
            if len(values):
                out.loc[option, statistic] = float(values.mean())
    return out


def reference_row(rows: pd.DataFrame, reference: Mapping | None) -> pd.Series | None:
    """The row of the pipeline with the ``reference`` options (every option, canonical), or
    None when the grid does not hold it."""
    if reference is None:
        return None
    found = rows.index[rows["pipeline_id"] == pipeline_id(reference)]
    return rows.loc[found[0]] if len(found) else None


def summary_table(rows: pd.DataFrame, reference: Mapping | None = None,
                  impact: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per statistic: pipelines, how many have it defined, mean, SD, min, 5/25/50/75/95th
    percentiles, max, the reference pipeline's value and percentile (share of defined values
    at or below it, in %), and each option's impact (``impact_<option>``)."""
    impact = option_impact(rows) if impact is None else impact
    ref = reference_row(rows, reference)
    records = []
    for statistic in STATISTICS:
        values = rows[statistic].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        record = {"statistic": statistic, "n_pipelines": len(values),
                  "n_defined": len(finite)}
        quantiles = (np.quantile(finite, [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1])
                     if len(finite) else [np.nan] * 7)
        record.update(mean=finite.mean() if len(finite) else np.nan,
                      sd=finite.std(ddof=1) if len(finite) > 1 else np.nan,
                      **dict(zip(("min", "p05", "p25", "median", "p75", "p95", "max"),
                                 map(float, quantiles))))
        value = np.nan if ref is None else float(ref[statistic])
        record["reference"] = value
        record["reference_percentile"] = (100.0 * float((finite <= value).mean())
                                          if len(finite) and np.isfinite(value) else np.nan)
        for option in impact.index:
            record[f"impact_{option}"] = impact.loc[option, statistic]
        records.append(record)
    return pd.DataFrame.from_records(records)


def histogram(values, reference: float | None = None, *, bins: int = 30, width: int = 360,
              height: int = 120) -> str:
    """An inline SVG histogram of the finite ``values``, with a line at ``reference``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return ('<svg class="hist" role="img" width="{0}" height="{1}"><text x="8" y="20">'
                'undefined for every pipeline</text></svg>').format(width, height)
    low, high = float(values.min()), float(values.max())
    if high == low:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    top, base, left = counts.max(), height - 18, 4
    scale = (width - 2 * left) / (high - low)
    parts = [f'<svg class="hist" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for count, start, stop in zip(counts, edges[:-1], edges[1:]):
        if count:
            h = (base - 4) * count / top
            parts.append(f'<rect x="{left + (start - low) * scale:.2f}" y="{base - h:.2f}" '
                         f'width="{max((stop - start) * scale - 1, 1):.2f}" height="{h:.2f}">'
                         f'<title>{start:.4g} to {stop:.4g}: {count} pipelines</title></rect>')
    parts.append(f'<line class="axis" x1="{left}" x2="{width - left}" y1="{base}" '
                 f'y2="{base}"/>')
    parts.append(f'<text x="{left}" y="{height - 4}">{low:.4g}</text>')
    parts.append(f'<text x="{width - left}" y="{height - 4}" text-anchor="end">{high:.4g}'
                 '</text>')
    if reference is not None and np.isfinite(reference):
        x = left + (reference - low) * scale
        parts.append(f'<line class="reference" x1="{x:.2f}" x2="{x:.2f}" y1="2" '
                     f'y2="{base}"><title>reference pipeline: {reference:.6g}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class ReportData:
    title: str
    n_pipelines: int
    options: list
    statistics: list  # those defined for at least one pipeline
    impact: list
    reference: dict | None
    reference_note: str
    grid_name: str


def report_data(rows: pd.DataFrame, *, reference: Mapping | None = None,
                title: str = "Multiverse", grid_name: str = "custom",
                reference_label: str = "the run's own options") -> ReportData:
    """What the page shows, computed from ``rows``."""
    from markupsafe import Markup

    impact = option_impact(rows)
    summary = summary_table(rows, reference, impact).set_index("statistic")
    ref = reference_row(rows, reference)
    statistics = []
    shown = [name for name in STATISTICS if summary.loc[name, "n_defined"] > 0]
    for statistic in shown:
        line = summary.loc[statistic]
        value = None if ref is None else float(ref[statistic])
        statistics.append({
            "name": statistic, "description": DESCRIPTIONS[statistic],
            "svg": Markup(histogram(rows[statistic], value)),
            "n_defined": int(line["n_defined"]), "mean": line["mean"], "sd": line["sd"],
            "median": line["median"], "min": line["min"], "max": line["max"],
            "reference": value, "percentile": line["reference_percentile"]})
    impact_rows = []
    for option in impact.index:
        cells = []
        for statistic in shown:
            value = impact.loc[option, statistic]
            column = impact[statistic].to_numpy(dtype=float)
            top = np.nanmax(column) if np.isfinite(column).any() else np.nan
            shade = float(value / top) if np.isfinite(value) and top > 0 else 0.0
            cells.append({"value": value, "shade": shade})
        impact_rows.append({"option": option, "values": sorted(rows[option].unique()),
                            "cells": cells})
    if ref is not None:
        note = f"The reference pipeline ({reference_label}) is {ref['pipeline_id']}."
        reference_out = {name: ref[name] for name in varying_options(rows)}
    else:
        note = (f"The reference pipeline ({reference_label}) is not one of the grid's "
                "pipelines: one of its options has a value the grid does not list.")
        reference_out = None
    undefined = [name for name in STATISTICS if name not in shown]
    if undefined:
        note += (" Undefined for every pipeline, so not shown: " + ", ".join(undefined)
                 + (" (map_rho needs --multiverse-map)." if "map_rho" in undefined else "."))
    return ReportData(title, len(rows), varying_options(rows), statistics, impact_rows,
                      reference_out, note, grid_name)


def render_report(data: ReportData) -> str:
    """The page's HTML."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ahba_app", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    return env.get_template("multiverse/report.html.jinja").render(
        data=data, statistic_names=[stat["name"] for stat in data.statistics])


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{float(value):.{digits}g}"


def write_report(rows_path, html_path, *, reference: Mapping | None = None,
                 summary_path=None, title: str | None = None, grid_name: str = "custom",
                 reference_label: str = "the run's own options") -> list[Path]:
    """Read the rows at ``rows_path``; write the page to ``html_path`` (and the summary TSV
    to ``summary_path`` when given), each under a temporary name renamed into place.
    Returns the files written."""
    rows = read_rows(rows_path)
    data = report_data(rows, reference=reference, grid_name=grid_name,
                       title=title or Path(rows_path).name.split("_desc-")[0],
                       reference_label=reference_label)
    outputs = [(Path(html_path), render_report(data))]
    if summary_path is not None:
        table = summary_table(rows, reference)
        outputs.append((Path(summary_path),
                        table.to_csv(sep="\t", index=False, na_rep="n/a", float_format=None)))
    return [atomic.write_text(path, text) for path, text in outputs]
