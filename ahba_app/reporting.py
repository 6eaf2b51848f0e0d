"""abagen's ``reporting`` module: the methods text of a run, without running it.

``Report(atlas, atlas_info, **options).gen_report()`` writes the paragraph(s) that
``get_expression_data(..., return_report=True)`` returns for the same atlas and options. The
text is ahba-app's own (:mod:`ahba_app.report.methods`, released under CC0), not abagen's.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from .datasets import check_donors, fetch_donor_info
from .options import DEFAULTS as _D

__all__ = ["Report"]

#: abagen's citation codes -> the same works in ahba_app/report/references.json
ABAGEN_CITATION_CODES = {
    "A2019N": "arnatkeviciute2019", "F2013J": "fulcher2013", "F2016P": "fulcher2016",
    "H2012N": "hawrylycz2012", "H2015N": "hawrylycz2015", "P2017G": "parkes2017",
    "Q2002N": "quackenbush2002", "R2018N": "romerogarcia2018",
}


class Report:
    """The methods text for :func:`ahba_app.get_expression_data` with ``atlas`` and options.

    Takes ``get_expression_data``'s atlas and processing options (same names and defaults) and,
    optionally, what a finished run found: ``counts`` (samples per region and donor),
    ``n_probes`` (probes left after filtering) and ``n_genes``. The text is in ``body``
    (also returned by :meth:`gen_report`).
    """

    def __init__(self, atlas, atlas_info=None, *, ibf_threshold=_D["ibf_threshold"],
                 probe_selection=_D["probe_selection"], donor_probes=_D["donor_probes"],
                 lr_mirror=_D["lr_mirror"], missing=_D["missing"], tolerance=_D["tolerance"],
                 sample_norm=_D["sample_norm"], gene_norm=_D["gene_norm"],
                 norm_matched=_D["norm_matched"], norm_structures=_D["norm_structures"],
                 region_agg=_D["region_agg"], agg_metric=_D["agg_metric"],
                 corrected_mni=_D["corrected_mni"], reannotated=_D["reannotated"],
                 donors=_D["donors"], return_donors=False, data_dir=None, counts=None,
                 n_probes=None, n_genes=None, sim_threshold=_D["sim_threshold"],
                 stability_threshold=_D["stability_threshold"]):
        from .atlas import coerce_atlas_to_dict

        self.donors = check_donors(donors)
        trees, self.group_atlas = coerce_atlas_to_dict(atlas, self.donors, atlas_info,
                                                       data_dir=data_dir)
        self.atlas = next(iter(trees.values()))
        self.atlas_info = self.atlas.atlas_info
        self.options = dict(
            ibf_threshold=ibf_threshold, probe_selection=probe_selection,
            donor_probes=donor_probes, sim_threshold=sim_threshold, lr_mirror=lr_mirror,
            missing=missing, tolerance=tolerance, sample_norm=sample_norm, gene_norm=gene_norm,
            norm_matched=norm_matched, norm_structures=norm_structures, region_agg=region_agg,
            agg_metric=agg_metric, corrected_mni=corrected_mni, reannotated=reannotated,
            donors=self.donors, return_donors=return_donors,
            stability_threshold=stability_threshold)
        self.counts, self.n_probes, self.n_genes = counts, n_probes, n_genes
        self.body = self.gen_report()

    def _atlas_description(self) -> dict:
        tree = self.atlas
        surface = not tree.volumetric
        if not self.group_atlas:
            kind, space = "donor-native", None
        else:
            kind = "surface" if surface else "volumetric"
            space = getattr(tree, "space", None) or ("fsaverage5" if surface
                                                     else "MNI152NLin6Asym")
        # a file's name stands for the atlas (the methods text recognises well-known atlases)
        source = str(getattr(tree, "source", "") or "")
        label = "custom" if source.startswith("<") else \
            re.sub(r"\.(nii|gii|label|annot|gz|dlabel).*$", "", os.path.basename(source)) or "custom"
        return dict(label=label, kind=kind,
                    native_kind="surface" if surface else "volumetric", space=space,
                    n_regions=len(tree.labels), has_info=tree.atlas_info is not None)

    def gen_report(self) -> str:
        """The methods text (plain text with numbered references), released under CC0."""
        from .report import methods_text

        summary = {}
        if self.counts is not None:
            summary["counts"] = pd.DataFrame(self.counts)
        if self.n_probes is not None:
            summary["n_probes_filtered"] = int(self.n_probes)
        if self.n_genes is not None:
            summary["n_genes"] = int(self.n_genes)
        params = dict(self.options, atlas=self._atlas_description())
        return methods_text(params, summary or None)


# abagen's private helpers, which its own test suite calls ---------------------------------------

def _sanitize_text(text: str) -> str:
    """Whitespace runs (newlines included) become one space; ``<br> `` marks a paragraph break
    and ``<p>`` a line break, as in abagen's report templates."""
    text = " ".join(text.split())
    return text.replace("<br> ", "\n\n").replace("<p>", "\n")


def _get_donor_demographics(donors=_D["donors"]) -> dict:
    """Number of donors and of women, and the min, max, mean and SD of their ages."""
    info = fetch_donor_info().set_index("donor").loc[check_donors(donors)]
    ages = info["age"].astype(float)
    return dict(n_donors=len(info), n_female=int((info["sex"] == "F").sum()),
                min=ages.min(), max=ages.max(), mean=ages.mean(),
                std=ages.std(ddof=1) if len(ages) > 1 else np.nan)


_CITED = re.compile(r"\[@?([A-Za-z0-9_-]+)\]")


def _add_references(report: str) -> str:
    """The reference list for the works that ``report`` cites as ``[key]`` or ``[@key]``
    (ahba-app's keys or abagen's codes such as ``[A2019N]``); '' when it cites none."""
    from .report.methods import load_references

    table = load_references()
    keys = []
    for code in _CITED.findall(report):
        key = ABAGEN_CITATION_CODES.get(code, code)
        if key in table and key not in keys:
            keys.append(key)
    if not keys:
        return ""
    lines = [f"[{n}] {table[key].citation}" for n, key in enumerate(keys, 1)]
    return "References\n\n" + "\n".join(lines)
