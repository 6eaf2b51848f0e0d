"""The Python API: abagen's workflow functions, same names, parameters, defaults and returns.

A script written for abagen 0.1.3 runs unchanged after ``import ahba_app as abagen``. Each
function here only checks its arguments and calls :mod:`ahba_app.pipeline`, the same stages the
Nipype workflow runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import options, pipeline
from .selection_cache import ChoiceStore

if TYPE_CHECKING:  # (imported where used: a warm run on a NIfTI-1 atlas never needs nibabel)
    import nibabel as nib

#: the options' defaults (declared once, in ahba_app.options)
_D = options.DEFAULTS

LGR = logging.getLogger("ahba_app")

_VERBOSITY = {0: logging.WARNING, 1: logging.INFO}


def _set_verbosity(verbose) -> None:
    LGR.setLevel(_VERBOSITY.get(int(verbose), logging.DEBUG))


def get_expression_data(atlas, atlas_info=None, *, ibf_threshold=_D["ibf_threshold"],
                        probe_selection=_D["probe_selection"], donor_probes=_D["donor_probes"],
                        sim_threshold=_D["sim_threshold"], lr_mirror=_D["lr_mirror"], exact=None,
                        missing=_D["missing"], tolerance=_D["tolerance"],
                        sample_norm=_D["sample_norm"], gene_norm=_D["gene_norm"],
                        norm_matched=_D["norm_matched"], norm_structures=_D["norm_structures"],
                        region_agg=_D["region_agg"], agg_metric=_D["agg_metric"],
                        corrected_mni=_D["corrected_mni"], reannotated=_D["reannotated"],
                        return_counts=False, return_donors=False, return_report=False,
                        donors=_D["donors"], data_dir=None, verbose=0, n_proc=1,
                        stability_threshold=_D["stability_threshold"], return_genes=False):
    """Region x gene AHBA expression for ``atlas`` (abagen.get_expression_data's contract).

    Parameters are abagen 0.1.3's (see its documentation or ``ahba-app --help``), plus
    ``stability_threshold``: drop genes whose differential stability across donors is below it,
    and ``return_genes``: also return what became of every gene symbol of the probe table.

    Returns
    -------
    expression : DataFrame (regions x genes); with ``return_donors`` a dict of donor -> table
        (what abagen 0.1.3 returns, whatever its docstring says)
    counts : DataFrame (regions x donors), with ``return_counts``
    report : str, our methods text, with ``return_report``
    genes : DataFrame, with ``return_genes``: one row per gene symbol of the AHBA probe table,
        its fate (``kept``, or the stage that dropped it) and the numbers that decided it
        (:func:`ahba_app.genes.gene_fates`); always last, so abagen's returns are unchanged
    """
    _set_verbosity(verbose)
    if region_agg == "samples" and return_donors:
        raise ValueError("return_donors=True needs region_agg='donors': with region_agg="
                         "'samples' the donors' samples are pooled, so no per-donor table "
                         "exists.")
    settings = options.settings(
        ibf_threshold=ibf_threshold, probe_selection=probe_selection, donor_probes=donor_probes,
        sim_threshold=sim_threshold, lr_mirror=lr_mirror, exact=exact, missing=missing,
        tolerance=tolerance, sample_norm=sample_norm, gene_norm=gene_norm,
        norm_matched=norm_matched, norm_structures=norm_structures, region_agg=region_agg,
        agg_metric=agg_metric, corrected_mni=corrected_mni, reannotated=reannotated,
        donors=donors, stability_threshold=stability_threshold)
    result = pipeline.run(atlas, atlas_info, settings=settings, data_dir=data_dir, n_proc=n_proc,
                          verbose=verbose, return_donors=return_donors,
                          return_genes=return_genes, store=ChoiceStore())
    out = (result.expression,)
    if return_counts:
        out += (result.counts,)
    if return_report:
        out += (report_text(atlas, atlas_info, result),)
    if return_genes:
        out += (result.genes,)
    return out[0] if len(out) == 1 else out


def report_text(atlas, atlas_info, result: pipeline.PipelineResult) -> str:
    """Our methods text (ahba_app.report, CC0) for a finished run: the text the command line
    writes for the same atlas and options (the same :mod:`ahba_app.summary` functions)."""
    from .report import methods_text
    from .summary import atlas_entities, describe_atlas, report_parameters

    params = report_parameters(result.settings,
                               atlas=describe_atlas(result.atlas, entities=atlas_entities(atlas)),
                               return_donors=isinstance(result.expression, dict))
    return methods_text(params, result.summary)


def _all_sample_mask(data_dir, donors, corrected_mni) -> nib.Nifti1Image:
    """A box of ones, 1 mm voxels, holding every sample's coordinate (abagen's mask=None)."""
    import nibabel as nib

    from . import samples
    from .fetch import find_microarray

    files = find_microarray(data_dir, donors)
    coords = pd.concat([samples.update_coords(f["annotation"], corrected_mni=corrected_mni)
                        for f in files.values()])[["mni_x", "mni_y", "mni_z"]].to_numpy()
    half = np.floor(np.abs(coords).max(axis=0))
    affine = np.eye(4)
    affine[:3, 3] = -half
    return nib.Nifti1Image(np.ones((2 * half).astype(int), dtype=np.uint8), affine)


def get_samples_in_mask(mask=None, **kwargs):
    """Sample-level expression of the samples inside ``mask`` (abagen's contract).

    Returns ``(expression, coords)``: samples x genes indexed by ``well_id`` and their MNI
    coordinates (x, y, z). ``kwargs`` are get_expression_data's; atlas_info, region_agg and
    agg_metric are ignored and norm_matched defaults to False.
    """
    _set_verbosity(kwargs.get("verbose", 0))
    if mask is None:
        mask = kwargs.get("atlas")
    for ignored in ("atlas", "atlas_info", "region_agg", "agg_metric", "return_counts",
                    "return_report"):
        kwargs.pop(ignored, None)
    kwargs.setdefault("norm_matched", False)
    return_donors = kwargs.pop("return_donors", False)
    data_dir, n_proc = kwargs.pop("data_dir", None), kwargs.pop("n_proc", 1)
    verbose = kwargs.pop("verbose", 0)
    settings = options.settings(**kwargs)
    if mask is None:
        mask = _all_sample_mask(data_dir, settings.donors, settings.corrected_mni)
    result = pipeline.run(mask, None, settings=settings, data_dir=data_dir, n_proc=n_proc,
                          verbose=verbose, aggregate=False, store=ChoiceStore())
    frames, coords = {}, {}
    for donor, frame in result.expression.items():
        annotation = result.annotations[donor]
        inside = result.labels[donor] != 0
        well = pd.Index(annotation["well_id"].to_numpy()[inside], name="well_id")
        frames[donor] = frame.iloc[np.flatnonzero(inside)].set_axis(well, axis=0) \
                             .dropna(axis=1, how="any")
        xyz = annotation[["mni_x", "mni_y", "mni_z"]].to_numpy()[inside]
        coords[donor] = pd.DataFrame(xyz, index=well, columns=["x", "y", "z"])
    if return_donors:
        return frames, coords
    return pd.concat(frames.values()).dropna(axis=1, how="any"), pd.concat(coords.values())


def get_interpolated_map(genes, mask, n_neighbors=10, **kwargs):
    """Dense maps of ``genes`` over ``mask`` by inverse-distance k-nearest-neighbour averaging.

    Every sample in the brain is used (``lr_mirror`` defaults to 'bidirectional',
    ``norm_matched`` to False). Returns ``{gene: array in the mask's shape}``.
    """
    from .atlas import check_atlas
    from .matching import inverse_distance_weights

    genes = [genes] if isinstance(genes, str) else list(genes)
    mask = check_atlas(mask)
    kwargs.pop("atlas", None)
    kwargs.setdefault("lr_mirror", "bidirectional")
    expression, coords = get_samples_in_mask(mask=None, **kwargs)
    unknown = [g for g in genes if g not in expression.columns]
    if unknown:
        raise ValueError(f"Genes not in the processed expression data: {unknown[:10]}.")
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(coords.to_numpy()).query(mask.coords, k=n_neighbors)
    weights = inverse_distance_weights(dist)
    values = expression[genes].to_numpy()
    dense = np.einsum("nk,nkg->ng", weights, values[idx]) / weights.sum(axis=1, keepdims=True)
    shape = mask._shape
    out = {}
    for column, gene in enumerate(genes):
        image = np.zeros(shape)
        image[mask._nz] = dense[:, column]
        out[gene] = image
    return out
