"""What a run did, for its report: one description of the atlas, one run summary.

Both front ends build the report's inputs here, from the same facts: the Python API
(:func:`ahba_app.api.get_expression_data` with ``return_report=True``) from the objects of its
in-process run, the workflow's report node from the nodes' files. So the methods text of the
same atlas and options is the same text whichever way the run was made.

- :func:`describe_atlas` -> :class:`ahba_app.report.AtlasDescription` fields;
- :class:`GroupFacts`: what the group level did (regions empty or filled, genes dropped);
- :func:`run_summary` -> :class:`ahba_app.report.RunSummary`.

Pure functions: nothing here reads AHBA files or writes anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .report.parameters import RunSummary

__all__ = ["GroupFacts", "ProbeCounts", "atlas_entities", "describe_atlas", "probe_table",
           "report_parameters", "run_summary", "sample_table"]


# ---------------------------------------------------------------------------------------------
# the atlas
# ---------------------------------------------------------------------------------------------
_HEMI_TAIL = re.compile(r"[-_.](lh|rh|l|r|left|right)$", re.IGNORECASE)


def atlas_entities(image) -> dict:
    """The BIDS entities of an atlas given by file name (``atlas``, ``tpl``, ``desc``, ...):
    of the left file of a pair (its hemisphere tail dropped), of the first donor's file of a
    donor-native dict; ``{}`` for images given as objects."""
    from .bids import parse_entities

    if isinstance(image, Mapping):
        image = next(iter(image.values()), None)
    pair = isinstance(image, (list, tuple))
    if pair:
        image = image[0] if image else None
    if not isinstance(image, (str, os.PathLike)):
        return {}
    entities = {k: v for k, v in parse_entities(image).items()
                if k not in ("suffix", "extension", "hemi", "sub")}
    if pair:
        entities = {k: _HEMI_TAIL.sub("", v) for k, v in entities.items()}
    return entities


def describe_atlas(tree, *, entities: Mapping | None = None) -> dict:
    """The report's :class:`~ahba_app.report.AtlasDescription` fields of an atlas.

    ``tree`` is the loaded atlas (:class:`ahba_app.atlas.AtlasTree`, the first donor's for a
    donor-native atlas); ``entities`` are those of its file name (:func:`atlas_entities`, or
    :attr:`ahba_app.bids.AtlasInput.entities`). The space is the template the file name gives;
    without one, a surface's own space (fsaverage5 unless told) and, for a volume, plain
    "MNI152": the variant of a volume given without a template is not known, so none is named
    or cited.
    """
    entities = dict(entities or {})
    native = not getattr(tree, "group_atlas", True)
    kind = "donor-native" if native else ("volumetric" if tree.volumetric else "surface")
    space = entities.get("tpl") or entities.get("space")
    if space is None and not native:
        space = "MNI152" if tree.volumetric else (tree.space or "fsaverage5")
    parts = getattr(tree, "parts", None)   # a CIFTI with voxels: (surface, volume) trees
    return {"label": entities.get("atlas") or "custom", "space": None if native else space,
            "kind": kind, "native_kind": "volumetric" if tree.volumetric else "surface",
            "n_regions": int(len(tree.labels)), "has_info": tree.atlas_info is not None,
            "description": entities.get("desc"),
            "volume_regions": int(len(parts[1].labels)) if parts else 0}


# ---------------------------------------------------------------------------------------------
# the options
# ---------------------------------------------------------------------------------------------
def report_parameters(settings, *, atlas: Mapping | None = None, return_donors: bool = False,
                      preset=None, versions: Mapping | None = None) -> dict:
    """The report's :class:`~ahba_app.report.ReportParameters` fields of a run.

    ``preset`` is the :class:`ahba_app.cli.presets.Preset` used, if any; a run whose options
    are all abagen's defaults (donors aside) is said to use the "abagen-defaults" preset.
    ``versions`` default to :func:`ahba_app.derivatives.software_versions`.
    """
    from .derivatives import software_versions
    from .options import DEFAULTS, Settings

    params = dict(settings.as_dict(), return_donors=bool(return_donors),
                  versions=dict(versions) if versions is not None else software_versions())
    if atlas is not None:
        params["atlas"] = dict(atlas)
    if preset is not None:
        params.update(preset=preset.name, preset_description=preset.description,
                      preset_citations=list(preset.citations))
    else:
        reference = Settings(**dict(DEFAULTS, donors="all")).as_dict()
        if {k: v for k, v in settings.as_dict().items() if k != "donors"} == \
                {k: v for k, v in reference.items() if k != "donors"}:
            params.update(preset="abagen-defaults",
                          preset_description="abagen 0.1.3's defaults (no option changed)")
    return params


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
@dataclass
class ProbeCounts:
    """Probes at each step: in Probes.csv, with a gene after (re)annotation, above background;
    genes after probe selection."""

    n_probes: int | None = None
    n_annotated: int | None = None
    n_filtered: int | None = None
    n_genes: int | None = None


@dataclass
class GroupFacts:
    """What the group level did (JSON-able: the aggregate node writes it, the report reads it).

    ``filled_regions`` is None when ``missing`` is None (nothing was to be filled);
    ``n_genes`` counts the genes of the final table (after the stability filter, if any).
    """

    regions_without_samples: list[int] = field(default_factory=list)
    filled_regions: list[int] | None = None
    genes_dropped: list[str] = field(default_factory=list)
    stability_threshold: float | None = None
    n_genes: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping | None) -> "GroupFacts | None":
        return None if value is None else cls(**dict(value))


#: Sample facts of ahba_app.pipeline.prepare_donor_samples -> the report's sample columns.
_SAMPLE_COLUMNS = {"n_samples": "total", "n_mirrored": "mirrored",
                   "n_mismatched": "dropped_hemisphere", "n_dissimilar": "dropped_similarity",
                   "n_kept": "kept"}


def sample_table(sample_info: Mapping[str, Mapping], match_labels: Mapping) -> pd.DataFrame:
    """One row per donor: samples in the AHBA, mirrored, dropped, kept, matched."""
    rows = {str(d): {col: info.get(key) for key, col in _SAMPLE_COLUMNS.items()}
            for d, info in sample_info.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["matched"] = [int((np.asarray(match_labels[d]) != 0).sum()) for d in table.index]
    return table


def probe_table(selection: pd.DataFrame, donor: str | None = None) -> pd.DataFrame:
    """The chosen probe of every gene (shared choice, else ``donor``'s), indexed by gene, with
    the differential stability when it was the selection criterion."""
    rows = selection[selection["donor"].astype(str) == "all"]
    if not len(rows) and donor is not None:
        rows = selection[selection["donor"].astype(str) == str(donor)]
    if not len(rows):
        rows = selection[selection["donor"] == selection["donor"].iloc[0]] if len(selection) \
            else selection
    table = rows.set_index("gene_symbol")
    if len(table) and (table["criterion"] == "diff_stability").all():
        table = table.assign(diff_stability=table["score"])
    return table


def _region_info(tree, table: pd.DataFrame | None) -> pd.DataFrame:
    if table is not None:
        info = table.reindex(tree.labels)
    elif tree.atlas_info is not None:
        info = tree.atlas_info.copy()
    else:
        info = pd.DataFrame(index=pd.Index(tree.labels, name="index"))
    centroids = np.asarray([tree.centroids[int(lab)] for lab in tree.labels], dtype=float)
    return info.assign(x=centroids[:, 0], y=centroids[:, 1], z=centroids[:, 2])


def run_summary(*, tree, donors: Sequence[str], sample_info: Mapping[str, Mapping],
                annotations: Mapping, match_labels: Mapping, selection: pd.DataFrame,
                probes: ProbeCounts, group: GroupFacts | None = None, expression=None,
                counts: pd.DataFrame | None = None, region_table: pd.DataFrame | None = None,
                only_donor: str | None = None, warnings: Sequence[str] = (),
                provenance: Mapping | None = None) -> RunSummary:
    """The :class:`~ahba_app.report.RunSummary` of one atlas.

    ``annotations`` and ``match_labels`` are every donor's sample table and region labels
    before normalization (all samples, in the same row order); ``sample_info`` the sample
    facts of :func:`ahba_app.pipeline.prepare_donor_samples`; ``counts`` the samples per
    region and donor (by default counted from ``match_labels``); ``region_table`` the atlas's
    region table (names) when the atlas tree does not hold it; ``only_donor`` restricts
    samples, counts and coordinates to one donor (participant reports).
    """
    from .matching import sample_counts

    shown = [str(only_donor)] if only_donor else [str(d) for d in donors]
    samples = sample_table(sample_info, match_labels).loc[shown]
    if counts is None or only_donor:
        counts = sample_counts({d: match_labels[d] for d in shown}, tree.labels)
    coords = pd.concat([
        annotations[d][["mni_x", "mni_y", "mni_z"]].reset_index(drop=True)
        .assign(label=np.asarray(match_labels[d]), donor=d) for d in shown], ignore_index=True)
    summary = RunSummary(
        donors=[str(d) for d in donors], n_probes=probes.n_probes,
        n_probes_annotated=probes.n_annotated, n_probes_filtered=probes.n_filtered,
        n_genes=probes.n_genes, samples=samples, counts=counts,
        region_info=_region_info(tree, region_table), sample_coords=coords,
        probes=probe_table(selection, only_donor), expression=expression,
        warnings=list(warnings), provenance=dict(provenance or {}))
    if group is not None:
        summary.genes_dropped = list(group.genes_dropped)
        summary.filled_regions = (None if group.filled_regions is None
                                  else list(group.filled_regions))
        if group.stability_threshold is not None:
            summary.n_genes_stable = group.n_genes
    return summary
