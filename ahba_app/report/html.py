"""The HTML report: one self-contained page built from Jinja2 templates.

The templates live in ``ahba_app/templates/report`` (a base page, one partial per section, a macro
file, the stylesheet and a few lines of inline script). Figures are inline SVG; nothing is loaded
from the network, so the page opens offline and can be archived or e-mailed as one file.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text
from ..genes import search_context
from ..options import OPTIONS, report_value
from . import figures as _figures
from .methods import (CC0_NOTICE, CC0_URL, NORMALIZATION, PROJECT_URL, ReportParameters,
                      RunSummary, advisories, methods_document)

__all__ = ["SECTIONS", "render_report", "write_report"]

#: The sections of the report, in page order: (anchor / partial name, title).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("warnings", "Warnings and notes"),
    ("methods", "Methods"),
    ("coverage", "Samples per region"),
    ("positions", "Sample positions"),
    ("genes", "Probes and genes"),
    ("expression", "Expression"),
    ("parameters", "Parameters"),
)

_SAMPLE_COLUMNS = (
    ("total", "in the AHBA"),
    ("mirrored", "mirrored copies"),
    ("dropped_hemisphere", "dropped: wrong side"),
    ("dropped_similarity", "dropped: atypical"),
    ("kept", "kept"),
    ("matched", "assigned to a region"),
)


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ahba_app", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    env.filters["linkify"] = _linkify
    env.filters["value"] = _value
    return env


def _num(value, digits: int = 0) -> str:
    """Thousands separators for counts; '-' for missing values."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and digits == 0:
        return f"{int(value):,}"
    return f"{float(value):,.{digits or 2}f}"


def _value(value) -> str:
    """A parameter value as a user would type it."""
    if value is None:
        return "None"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


_URL = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:)\]]")
_CITE = re.compile(r"\[(\d+(?:, \d+)*)\]")


def _linkify(text: str):
    """Escape ``text``, then turn URLs and numbered citations into links."""
    from markupsafe import Markup, escape

    out = str(escape(text))
    out = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', out)
    out = _CITE.sub(lambda m: "[" + ", ".join(
        f'<a class="cite" href="#ref-{n}">{n}</a>' for n in m.group(1).split(", ")) + "]", out)
    return Markup(out)


@dataclass
class _Figure:
    """A figure slot: inline SVG (trusted, written by :mod:`.figures`), or why there is none."""

    id: str
    title: str
    caption: str
    svg: Any = None
    missing: str | None = None


def _draw(slot: _Figure, errors: list[str], func, *args, **kwargs) -> _Figure:
    from markupsafe import Markup

    try:
        slot.svg = Markup(func(*args, **kwargs))
    except Exception as exc:  # a broken figure must not hide the rest of the report
        slot.missing = f"This figure could not be drawn: {type(exc).__name__}: {exc}"
        errors.append(f"Figure '{slot.title}' could not be drawn: {type(exc).__name__}: {exc}")
    return slot


def _brain_outline() -> np.ndarray | None:
    """fsaverage5 pial vertices (both hemispheres), for a silhouette behind sample positions."""
    try:
        from ..datasets import fetch_fsaverage5

        surf = fetch_fsaverage5()
        return np.vstack([np.asarray(surf.lh.vertices), np.asarray(surf.rh.vertices)])
    except Exception:
        return None


def _region_names(summary: RunSummary) -> dict:
    """Atlas id -> short name for figure axes, with the hemisphere when known ("insula L")."""
    info = summary.region_info
    if info is None:
        return {}
    for column in ("label", "name"):
        if column in info.columns:
            hemi = info["hemisphere"] if "hemisphere" in info.columns else None
            names = {}
            for idx, value in info[column].items():
                if pd.isna(value):
                    continue
                side = hemi.get(idx) if hemi is not None else None
                names[idx] = f"{value} {side}" if isinstance(side, str) and side in "LR" \
                    and side else str(value)
            return names
    return {}


def _centroids(summary: RunSummary, regions) -> np.ndarray | None:
    info = summary.region_info
    if info is None or not regions:
        return None
    for cols in (("x", "y", "z"), ("mni_x", "mni_y", "mni_z"),
                 ("centroid_x", "centroid_y", "centroid_z")):
        if set(cols) <= set(info.columns):
            table = info.reindex(list(regions))[list(cols)].dropna()
            return table.to_numpy(dtype=float) if len(table) else None
    return None


def _figures_context(params: ReportParameters, s: RunSummary, errors: list[str],
                     outline: bool) -> dict[str, _Figure]:
    names = _region_names(s)
    figs: dict[str, _Figure] = {}

    slot = _Figure("fig-counts", "Samples per region and donor",
                   "Number of tissue samples assigned to each region, stacked by donor. Regions "
                   "without any sample are shaded and marked in red.")
    if s.counts is not None and len(s.counts):
        _draw(slot, errors, _figures.samples_per_region, s.counts, region_names=names)
    else:
        slot.missing = "No sample counts were given."
    figs["counts"] = slot

    slot = _Figure("fig-positions", "Sample positions",
                   "Samples on three projections of their coordinates (all depths collapsed), "
                   "coloured by the region they were assigned to (colours cycle); grey crosses "
                   "are samples assigned to no region, red rings the centroids of regions "
                   "without samples. The light silhouette is the fsaverage5 pial surface, for "
                   "orientation only.")
    if s.sample_coords is not None and len(s.sample_coords):
        empty = s.empty_regions or []
        _draw(slot, errors, _figures.sample_positions, s.sample_coords,
              background=_brain_outline() if outline and not params.atlas.native else None,
              empty_centroids=_centroids(s, empty))
        if params.atlas.native:
            slot.caption = slot.caption.replace(
                " The light silhouette is the fsaverage5 pial surface, for orientation only.",
                " Coordinates are those used for matching.")
    else:
        slot.missing = "No sample coordinates were given."
    figs["positions"] = slot

    slot = _Figure("fig-stability", "Differential stability of the genes",
                   "Differential stability of each gene's chosen probe: the mean Spearman "
                   "correlation of its regional pattern between pairs of donors. Genes to the "
                   "right reproduce well across brains.")
    ds = None
    if s.probes is not None:
        for column in ("diff_stability", "differential_stability", "stability", "ds"):
            if column in s.probes.columns:
                ds = s.probes[column]
                break
    if ds is not None and ds.notna().any():
        _draw(slot, errors, _figures.stability_histogram, ds,
              threshold=params.stability_threshold)
    else:
        slot.missing = "No differential stability values were given for the chosen probes."
    figs["stability"] = slot

    table = s.group_expression
    norm = params.gene_norm or params.sample_norm
    label = (f"expression ({NORMALIZATION[norm].label})" if norm
             else "expression (log2, not normalised)")
    n_top = 50
    slot = _Figure("fig-expression", "Most variable genes",
                   f"The {n_top} genes whose expression varies most across regions, ordered by "
                   "the region where they peak. Grey columns are regions without data."
                   + (" Donor tables were averaged for display." if params.return_donors
                      else ""))
    if table is not None and table.size:
        n_top = min(n_top, table.shape[1])
        slot.caption = slot.caption.replace("The 50 genes", f"The {n_top} genes")
        _draw(slot, errors, _figures.expression_heatmap, table, n_genes=n_top,
              region_names=names, value_label=label)
    else:
        slot.missing = "No expression table was given."
    figs["expression"] = slot
    return figs


def _donor_rows(params: ReportParameters, s: RunSummary) -> tuple[list[str], list[list]]:
    from ..datasets import DONORS, fetch_donor_info

    donors = [str(d) for d in (s.donors or params.donor_ids)]
    info = s.donor_info if s.donor_info is not None else fetch_donor_info()
    info = info.assign(donor=info["donor"].astype(str)).set_index("donor")
    columns = [(c, t) for c, t in _SAMPLE_COLUMNS if s.samples is not None and c in s.samples]
    header = ["donor", "uid", "age", "sex"] + [t for _, t in columns]
    if s.counts is not None:
        header.append("regions reached")
    rows = []
    samples = s.samples.rename(index=str) if s.samples is not None else None
    for donor in donors:
        row = [donor, DONORS[donor].uid if donor in DONORS else "",
               _num(info.at[donor, "age"]) if donor in info.index else "",
               info.at[donor, "sex"] if donor in info.index else ""]
        for column, _ in columns:
            row.append(_num(samples.at[donor, column]) if donor in samples.index else "–")
        if s.counts is not None:
            counts = s.counts.rename(columns=str)
            row.append(_num(int((counts[donor] > 0).sum())) if donor in counts else "–")
        rows.append(row)
    return header, rows


def _flow_rows(s: RunSummary) -> list[tuple[str, Any]]:
    rows = [
        ("Probes in the AHBA", s.n_probes),
        ("Probes with a valid gene after annotation", s.n_probes_annotated),
        ("Probes above background (intensity filter)", s.n_probes_filtered),
        ("Genes after probe selection", s.n_genes),
        ("Genes removed by normalisation", s.n_genes_dropped),
        ("Genes kept by the stability filter", s.n_genes_stable),
        ("Genes in the final table", s.n_genes_final),
    ]
    return [(label, value) for label, value in rows if value is not None]


def _empty_rows(s: RunSummary, params: ReportParameters) -> list[dict]:
    """The regions no sample reached, with their names and what became of them."""
    info = s.region_info
    filled = set(s.filled_regions) if s.filled_regions is not None else None
    rows = []
    for region in s.empty_regions or []:
        if params.missing is None:
            status, ok = "no data", False
        elif filled is not None and region not in filled:
            status, ok = "could not be filled", False
        else:
            status, ok = f"filled ({params.missing})", True
        row = {"id": region, "name": "", "hemisphere": "", "structure": "", "status": status,
               "ok": ok}
        if info is not None and region in info.index:
            for key, columns in (("name", ("label", "name")), ("hemisphere", ("hemisphere",)),
                                 ("structure", ("structure",))):
                for column in columns:
                    if column in info.columns and pd.notna(info.at[region, column]):
                        row[key] = str(info.at[region, column])
                        break
        rows.append(row)
    return rows


def _stable_genes(s: RunSummary, n: int = 12) -> dict | None:
    if s.probes is None or "diff_stability" not in s.probes.columns:
        return None
    table = s.probes.dropna(subset=["diff_stability"]).sort_values("diff_stability",
                                                                    ascending=False)
    probe_col = next((c for c in ("probe_name", "probe_id") if c in table.columns), None)

    def rows(part):
        return [(str(gene), str(r[probe_col]) if probe_col else "", f"{r['diff_stability']:.3f}")
                for gene, r in part.iterrows()]
    return {"top": rows(table.head(n)), "bottom": rows(table.tail(n).iloc[::-1]),
            "probe_col": probe_col}


def _facts(params: ReportParameters, s: RunSummary, doc_donors: list[str]) -> list[dict]:
    atlas = params.atlas
    n_regions = atlas.n_regions or s.n_regions
    empty = s.empty_regions
    kind = {"volumetric": "volumetric", "surface": "surface",
            "donor-native": f"donor-native ({atlas.native_kind})"}[atlas.kind]
    cards = [
        {"label": "Atlas", "value": atlas.display_name,
         "detail": " · ".join(x for x in (kind, None if atlas.native else atlas.space) if x)},
        {"label": "Regions", "value": _num(n_regions),
         "detail": (f"{_num(n_regions - len(empty))} with samples · {_num(len(empty))} empty"
                    if empty is not None and n_regions else ""),
         "alert": bool(empty)},
        {"label": "Donors", "value": _num(len(doc_donors)), "detail": _demographics(doc_donors,
                                                                               s.donor_info)},
    ]
    matched = s.n_matched
    kept = s.sample_total("kept")
    cards.append({"label": "Samples assigned", "value": _num(matched),
                  "detail": (f"of {_num(kept)} kept ({100 * matched / kept:.0f}%)"
                             if matched is not None and kept else "")})
    cards.append({"label": "Genes", "value": _num(s.n_genes_final if s.n_genes_final is not None
                                                   else s.n_genes),
                  "detail": (f"from {_num(s.n_probes_filtered)} probes"
                             if s.n_probes_filtered is not None else "")})
    cards.append({"label": "Preset", "value": params.preset or "custom",
                  "detail": params.preset_description or ""})
    return cards


def _demographics(donors: list[str], info: pd.DataFrame | None) -> str:
    from ..datasets import fetch_donor_info

    info = fetch_donor_info() if info is None else info
    info = info.assign(donor=info["donor"].astype(str)).set_index("donor").reindex(donors)
    info = info.dropna(subset=["age"])
    if info.empty:
        return ""
    sexes = info["sex"].astype(str).str.upper()
    parts = [f"{n} {sex}" for sex, n in (("F", int((sexes == "F").sum())),
                                         ("M", int((sexes == "M").sum()))) if n]
    ages = info["age"].astype(float)
    parts.append(f"aged {ages.min():g}–{ages.max():g}" if len(ages) > 1
                 else f"aged {ages.iloc[0]:g}")
    return " · ".join(parts)


def _parameter_rows(params: ReportParameters) -> list[dict]:
    rows = []
    for name, value, default, doc in params.as_table():
        rows.append({"name": name, "value": _value(value), "default": _value(default),
                     "changed": _value(value) != _value(_canonical(name, default)), "doc": doc})
    return rows


def _canonical(name: str, default):
    """The default as the run's value would be spelled (``srs`` -> ``scaled_robust_sigmoid``)."""
    return report_value(name, default) if name in OPTIONS else default


def render_report(params, summary=None, *, title: str = "ahba-app report",
                  brain_outline: bool = True,
                  generated: str | None = None) -> str:
    """The report as one self-contained HTML page (a string).

    ``params``: :class:`~ahba_app.report.methods.ReportParameters` or a dict of its fields;
    ``summary``: :class:`~ahba_app.report.methods.RunSummary`, a dict, or None (then only the
    methods, parameters and notes are shown). ``brain_outline``: draw the fsaverage5 silhouette
    behind sample positions. ``generated``: the time stamp to print (default: now).
    """
    params = ReportParameters.from_mapping(params)
    s = RunSummary.from_mapping(summary)
    doc = methods_document(params, summary if summary is not None else None)
    errors = list(s.errors)
    figs = _figures_context(params, s, errors, brain_outline)
    donors = [str(d) for d in (s.donors or params.donor_ids)]
    header, rows = _donor_rows(params, s)
    stamp = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = dict(
        title=title,
        sections=SECTIONS,
        params=params,
        summary=s,
        has_summary=summary is not None,
        atlas=params.atlas,
        facts=_facts(params, s, donors),
        donor_header=header,
        donor_rows=rows,
        flow=_flow_rows(s),
        empty_regions=_empty_rows(s, params),
        n_regions=params.atlas.n_regions or s.n_regions,
        figures=figs,
        stable=_stable_genes(s),
        doc=doc,
        markdown=doc.markdown(),
        parameters=_parameter_rows(params),
        versions=params.versions,
        provenance={str(k): _value(v) for k, v in (s.provenance or {}).items()},
        errors=errors,
        warnings=list(s.warnings),
        notes=advisories(params, summary),
        cc0_notice=CC0_NOTICE,
        cc0_url=CC0_URL,
        project_url=PROJECT_URL,
        version=params.versions.get("ahba-app", ""),
        generated=stamp,
        gene_fates=None if s.genes is None else search_context(s.genes, s.genes_file),
    )
    return _environment().get_template("report/base.html.jinja").render(**context)


def write_report(path, params, summary=None, **kwargs) -> Path:
    """Render the report and write it to ``path`` atomically (temporary file + ``os.replace``)."""
    html = render_report(params, summary, **kwargs)
    return write_text(path, html)
