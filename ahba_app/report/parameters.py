"""The report's inputs: what a run was (its options and atlas) and what happened in it.

:class:`ReportParameters` holds the options (fields from :data:`ahba_app.options.OPTIONS`), the
atlas (:class:`AtlasDescription`), the preset and the software versions; :class:`RunSummary`
the facts of the run (built by :func:`ahba_app.summary.run_summary`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..options import OPTIONS, report_value
from ..options import table as options_table

__all__ = ["AtlasDescription", "ReportParameters", "RunSummary"]


def _none(value):
    """abagen's and the presets' spellings of "no value" (None, 'none', 'None', '')."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _choice(name: str, value, allowed: Iterable) -> None:
    allowed = list(allowed)
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"Invalid {name}={value!r}: allowed values are {shown}.")


#: Spaces whose template has a reference, by lower-case prefix of the space name.
_SPACE_REFERENCES = (
    ("mni152nlin6", "evans2012"),
    ("mni152nlin2009", "fonov2009"),
    ("fsaverage", "fischl1999"),
    ("fslr", "vanessen2012"),
)

#: Well-known atlases: (lower-case label fragment, display name, reference keys).
_KNOWN_ATLASES = (
    ("desikankilliany", "Desikan-Killiany", ("desikan2006",)),
    ("desikan", "Desikan-Killiany", ("desikan2006",)),
    ("aparc.a2009s", "Destrieux", ("destrieux2010",)),
    ("destrieux", "Destrieux", ("destrieux2010",)),
    ("aparc", "Desikan-Killiany", ("desikan2006",)),
    ("schaefer", "Schaefer (2018)", ("schaefer2018",)),
    ("hcpmmp", "HCP multi-modal (HCP-MMP1.0)", ("glasser2016",)),
    ("glasser", "HCP multi-modal (HCP-MMP1.0)", ("glasser2016",)),
)


def _dataclass_from_mapping(cls, value, what: str):
    """``cls`` from a mapping of its fields (None gives the defaults); unknown keys are errors."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    names = {f.name for f in fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"Unknown {what}(s) {sorted(unknown)}: known are {sorted(names)}.")
    return cls(**dict(value))


@dataclass
class AtlasDescription:
    """What the methods text needs to know about the atlas.

    label: the atlas name or BIDS ``atlas-<label>`` (``"desikankilliany"``, ``"Schaefer2018"``);
        well-known atlases are recognised and cited.
    space: template or surface space (``MNI152NLin6Asym``, ``fsaverage5``, ``fsLR``); ignored for
        donor-native atlases.
    kind: ``"volumetric"``, ``"surface"`` or ``"donor-native"`` (one image per donor, in that
        donor's native MRI space; set ``native_kind`` to ``"surface"`` for native surfaces).
    n_regions: number of labelled regions.
    has_info: whether a hemisphere/structure table was given (or read from GIFTI label tables),
        which constrains sample-to-region matching.
    description: optional free text (``"400 parcels, 7 networks"``).
    citation_keys: extra keys of ``references.json`` to cite for this atlas.
    references: free-text references for atlases not in ``references.json`` (e.g. a BIDS
        sidecar's ``ReferencesAndLinks``); each is cited as given.
    volume_regions: for a surface atlas that is a CIFTI with subcortical voxels (HCP
        grayordinates), the number of its regions drawn as voxels (0: a surface atlas only).
    """

    label: str = "custom"
    space: str | None = "MNI152NLin6Asym"
    kind: str = "volumetric"
    n_regions: int | None = None
    has_info: bool = False
    description: str | None = None
    native_kind: str = "volumetric"
    citation_keys: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    volume_regions: int = 0

    KINDS = ("volumetric", "surface", "donor-native")

    def __post_init__(self):
        if self.kind == "native":
            self.kind = "donor-native"
        _choice("atlas kind", self.kind, self.KINDS)
        _choice("atlas native_kind", self.native_kind, ("volumetric", "surface"))
        self.citation_keys = tuple(self.citation_keys or ())
        self.references = tuple(self.references or ())
        self.has_info = bool(self.has_info)

    @classmethod
    def from_mapping(cls, value: "AtlasDescription | Mapping | None") -> "AtlasDescription":
        return _dataclass_from_mapping(cls, value, "atlas field")

    @property
    def native(self) -> bool:
        return self.kind == "donor-native"

    @property
    def volumetric(self) -> bool:
        return self.kind == "volumetric" or (self.native and self.native_kind == "volumetric")

    @property
    def grayordinates(self) -> bool:
        """A surface atlas with subcortical regions as voxels (a CIFTI in the HCP layout)."""
        return self.kind == "surface" and bool(self.volume_regions)

    @property
    def known(self) -> tuple[str, tuple[str, ...]] | None:
        """(display name, reference keys) when the label names a well-known atlas."""
        norm = re.sub(r"[^a-z0-9.]", "", self.label.lower())
        for fragment, name, keys in _KNOWN_ATLASES:
            if fragment in norm or (fragment == "desikankilliany" and norm == "dk"):
                return name, keys
        return None

    @property
    def display_name(self) -> str:
        known = self.known
        return known[0] if known else self.label

    @property
    def space_reference(self) -> str | None:
        if self.native or not self.space:
            return None
        space = self.space.lower()
        for prefix, key in _SPACE_REFERENCES:
            if space.startswith(prefix):
                return key
        return None


#: The options, with their defaults, as fields (declared in :mod:`ahba_app.options`).
_ReportOptions = make_dataclass("_ReportOptions", [(o.name, Any, field(default=o.default))
                                                   for o in OPTIONS.values()])


@dataclass
class ReportParameters(_ReportOptions):
    """The options of a run, with abagen's names and defaults, plus what describes the run.

    The option fields are those of :data:`ahba_app.options.OPTIONS` (``get_expression_data``'s
    parameters and ``stability_threshold``); ``return_donors`` says whether per-donor tables
    were returned. ``preset`` names the preset used, with its ``preset_description`` and
    ``preset_citations`` (keys of ``references.json``). ``versions`` maps software names to
    versions (``{"ahba-app": "0.1.0", "python": "3.11.7", ...}``). String spellings
    ``"none"``/``"None"`` mean None, as in the preset files.
    """

    return_donors: bool = False
    atlas: AtlasDescription = field(default_factory=AtlasDescription)
    preset: str | None = None
    preset_description: str | None = None
    preset_citations: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.atlas = AtlasDescription.from_mapping(self.atlas)
        for name in OPTIONS:
            setattr(self, name, report_value(name, getattr(self, name)))
        self.preset = _none(self.preset)
        self.return_donors = bool(self.return_donors)
        self.preset_citations = tuple(self.preset_citations or ())
        self.versions = {str(k): str(v) for k, v in dict(self.versions or {}).items()}
        if "ahba-app" not in self.versions:
            from .._version import __version__
            self.versions = {"ahba-app": __version__, **self.versions}

    #: get_expression_data arguments that do not change the methods (accepted, ignored).
    IGNORED = ("data_dir", "verbose", "n_proc", "return_counts", "return_report")

    @classmethod
    def from_mapping(cls, value: "ReportParameters | Mapping | None") -> "ReportParameters":
        """Accept an instance, a dict of the fields (``atlas`` may be a dict) or None.

        abagen's ``atlas_info`` (any non-None value) sets ``atlas.has_info``; arguments that do
        not change the methods (``data_dir``, ``verbose``, ...) are ignored.
        """
        if value is None or isinstance(value, cls):
            return _dataclass_from_mapping(cls, value, "parameter")
        value = {k: v for k, v in dict(value).items() if k not in cls.IGNORED}
        if "atlas_info" in value:
            info = value.pop("atlas_info")
            atlas = AtlasDescription.from_mapping(value.get("atlas"))
            if info is not None:
                atlas.has_info = True
            value["atlas"] = atlas
        return _dataclass_from_mapping(cls, value, "parameter")

    @property
    def donor_ids(self) -> list[str]:
        from ..datasets import check_donors
        return check_donors(self.donors)

    @property
    def effective_donor_probes(self) -> str:
        """``donor_probes`` as it acts: methods that need all donors jointly force 'aggregate'."""
        from ..probes import AGGREGATE_ONLY

        if self.probe_selection in AGGREGATE_ONLY:
            return "aggregate"
        return self.donor_probes

    def as_table(self) -> list[tuple[str, Any, Any, str]]:
        """(name, value, default, description) of every option, and ``return_donors``."""
        rows = options_table(vars(self))
        at = [row[0] for row in rows].index("donors") + 1
        rows.insert(at, ("return_donors", self.return_donors, False,
                         "Return one table per donor instead of the donor aggregate."))
        return rows


@dataclass
class RunSummary:
    """What actually happened in a run; every field is optional.

    donors: donor ids used (default: those of the parameters).
    donor_info: demographics (columns donor, age, sex); default ``datasets.fetch_donor_info()``.
    n_probes: probes in the AHBA probe table (58,692 in the full data).
    n_probes_annotated: probes left with a valid gene (Entrez id) after (re)annotation.
    n_probes_filtered: probes left after intensity-based filtering.
    n_genes: genes after probe selection.
    genes_dropped: genes removed because normalisation left them undefined (names or a count).
    n_genes_stable: genes kept by the stability filter (``stability_threshold``).
    samples: one row per donor (index: donor id) with any of the columns ``total`` (samples in
        the AHBA), ``mirrored`` (copies added by lr_mirror), ``dropped_hemisphere``,
        ``dropped_similarity``, ``kept`` (samples entering matching) and ``matched``.
    counts: samples per region (rows, atlas ids) and donor (columns).
    region_info: one row per region (index: atlas id) with optional ``label``/``name``,
        ``hemisphere``, ``structure`` and a centroid ``x``, ``y``, ``z``.
    filled_regions: ids of regions filled by the ``missing`` option.
    probes: the chosen probe per gene (index: gene symbol), e.g. columns ``probe_name`` and
        ``diff_stability``.
    sample_coords: one row per sample with ``mni_x``, ``mni_y``, ``mni_z``, ``label`` (0 or NaN
        when unmatched) and ``donor``.
    expression: the final regions x genes table (a dict of them per donor is accepted).
    warnings, errors: messages to show in the report.
    provenance: free key/value pairs shown in the report (command line, run time, ...).
    genes: what became of every gene symbol (:func:`ahba_app.genes.gene_fates`): the report's
        "Why is a gene missing?" search box answers from it; genes_file: its file name.
    """

    donors: Sequence[str] | None = None
    donor_info: pd.DataFrame | None = None
    n_probes: int | None = None
    n_probes_annotated: int | None = None
    n_probes_filtered: int | None = None
    n_genes: int | None = None
    genes_dropped: Sequence[str] | int | None = None
    n_genes_stable: int | None = None
    samples: pd.DataFrame | None = None
    counts: pd.DataFrame | None = None
    region_info: pd.DataFrame | None = None
    filled_regions: Sequence | None = None
    probes: pd.DataFrame | None = None
    sample_coords: pd.DataFrame | None = None
    expression: Any = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    genes: pd.DataFrame | None = None
    genes_file: str | None = None

    @classmethod
    def from_mapping(cls, value: "RunSummary | Mapping | None") -> "RunSummary":
        return _dataclass_from_mapping(cls, value, "summary field")

    # derived facts ------------------------------------------------------------------------------
    def sample_total(self, column: str) -> int | None:
        if self.samples is None or column not in self.samples:
            return None
        return int(pd.to_numeric(self.samples[column]).sum())

    @property
    def n_matched(self) -> int | None:
        matched = self.sample_total("matched")
        if matched is None and self.counts is not None:
            matched = int(np.asarray(self.counts, dtype=float).sum())
        return matched

    @property
    def n_regions(self) -> int | None:
        if self.counts is not None:
            return int(len(self.counts))
        if isinstance(self.expression, pd.DataFrame):
            return int(len(self.expression))
        return None

    @property
    def empty_regions(self) -> list | None:
        """Atlas ids of regions that no sample of any donor was assigned to."""
        if self.counts is None:
            return None
        total = np.asarray(self.counts, dtype=float).sum(axis=1)
        return [idx for idx, n in zip(self.counts.index, total) if n == 0]

    def region_name(self, region) -> str:
        info = self.region_info
        if info is not None and region in info.index:
            for column in ("label", "name"):
                if column in info.columns and pd.notna(info.at[region, column]):
                    hemi = info.at[region, "hemisphere"] if "hemisphere" in info.columns else None
                    name = str(info.at[region, column])
                    return f"{name} ({hemi})" if isinstance(hemi, str) and hemi else name
        return str(region)

    @property
    def n_genes_final(self) -> int | None:
        table = self.group_expression
        if table is not None:
            return int(table.shape[1])
        return self.n_genes_stable

    @property
    def group_expression(self) -> pd.DataFrame | None:
        """The final table; per-donor tables are averaged (ignoring NaN) for display."""
        expr = self.expression
        if expr is None:
            return None
        if isinstance(expr, pd.DataFrame):
            return expr
        tables = list(expr.values()) if isinstance(expr, Mapping) else list(expr)
        if not tables:
            return None
        stacked = np.stack([np.asarray(t, dtype=float) for t in tables])
        with np.errstate(invalid="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(stacked, axis=0)
        return pd.DataFrame(mean, index=tables[0].index, columns=tables[0].columns)

    @property
    def n_genes_dropped(self) -> int | None:
        dropped = self.genes_dropped
        if dropped is None:
            return None
        return int(dropped) if isinstance(dropped, (int, np.integer)) else len(dropped)
