"""The processing stages, in order, as pure functions over in-memory data.

Both front ends run exactly these functions: :func:`ahba_app.api.get_expression_data` calls them
one after the other in one process; the Nipype interfaces call one each and pass the results
between nodes as files. Each stage takes the previous stages' outputs and explicit settings:

============================  ==================================================================
stage                         what it does
============================  ==================================================================
:func:`locate_data`           finds (or downloads) the AHBA files of the requested donors
:func:`load_probe_table`      probe table: reannotated or Probes.csv, probes with an Entrez id
:func:`prepare_donor_samples` one donor's samples: coordinates, mirroring, hemisphere checks,
                              similarity filter
:func:`filter_probe_table`    intensity-based filter over all donors' samples
:func:`select_donor_probes`   one column per gene for every donor (probe selection)
:func:`load_atlas`            the atlas as a matching tree per donor
:func:`match_donor_samples`   region label of every sample of one donor
:func:`normalize_donor_expression`  sample and gene normalization of one donor
:func:`fill_missing_regions`  rows for regions without samples (``missing``)
:func:`aggregate_expression`  region x gene table(s) and the sample counts
============================  ==================================================================

:class:`~ahba_app.options.Settings` (declared in :mod:`ahba_app.options`) validates every option
once, up front, against the method registries.
"""

from __future__ import annotations

import collections.abc
import hashlib
import itertools
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from . import aggregate as _aggregate
from . import exact as _exact
from . import io as _io
from . import matching as _matching
from . import normalize as _normalize
from . import probes as _probes
from . import samples as _samples
from ._blocks import background, n_threads, shared_threads, thread_map, transpose_into
from .datasets import RNASEQ_DONORS, load_corrected_mni, load_reannotated
from .options import DEFAULTS, Settings
from .stages import stage_options
from .summary import GroupFacts, ProbeCounts, run_summary

LGR = logging.getLogger("ahba_app")

class EmptyResultError(ValueError):
    """The run would produce an empty or degenerate result (no gene, no matched sample, every
    region empty): an error with the reason, never a table."""


def check_matched(n_matched: Mapping, n_samples: Mapping, *, tolerance) -> None:
    """EmptyResultError when no sample of any donor matched a region of the atlas."""
    if any(int(n) for n in n_matched.values()):
        return
    total = sum(int(n) for n in n_samples.values())
    if not total:
        raise EmptyResultError(
            f"No tissue sample is left to match (donors {', '.join(map(str, n_samples))}): "
            "check the donors' SampleAnnot.csv files and the sample options (lr_mirror, "
            "sim_threshold).")
    raise EmptyResultError(
        f"None of the {total} tissue samples of donors {', '.join(map(str, n_samples))} lies "
        f"in a region of the atlas (tolerance={tolerance}): is the atlas in MNI space, with "
        "the right voxel size and origin in its header? Check its affine, or raise tolerance.")


def check_genes(n_genes: int, *, n_probes: int | None = None, ibf_threshold=None) -> None:
    """EmptyResultError when no gene is left after probe filtering and selection."""
    if n_genes:
        return
    detail = (f" {n_probes} probes passed the intensity filter (ibf_threshold={ibf_threshold})"
              if n_probes is not None else "")
    raise EmptyResultError(f"No gene is left after probe filtering and selection.{detail} "
                           "Lower ibf_threshold, or check the Probes.csv and PACall.csv files.")


def check_expression(expression: pd.DataFrame, facts: GroupFacts | None = None) -> None:
    """EmptyResultError for a region x gene table without genes or without any value."""
    facts = facts or GroupFacts()
    if expression.shape[1] == 0:
        threshold = facts.stability_threshold
        if threshold is not None:
            raise EmptyResultError(
                f"No gene reaches the differential stability threshold {threshold} "
                f"(stability_threshold): lower it (the ENIGMA Toolbox used 0.2).")
        dropped = len(facts.genes_dropped or ())
        raise EmptyResultError(
            f"No gene is left in the region x gene table ({dropped} dropped because some "
            "region or donor had no value for them): use missing='centroids' or "
            "'interpolate', or an atlas whose regions hold samples.")
    if expression.shape[0] == 0 or not expression.notna().to_numpy().any():
        raise EmptyResultError(
            "Every region of the atlas is empty: no region holds a sample of any donor. Is "
            "the atlas in MNI space? Check its affine, or use missing='centroids'.")

# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------
def locate_data(data_dir, donors, *, need_rnaseq: bool = False, n_proc: int = 1,
                verbose: int = 0) -> tuple[dict, dict | None]:
    """AHBA file paths per donor (downloaded when absent), and the RNA-seq ones when needed."""
    from .fetch import fetch_microarray, fetch_rnaseq

    files = fetch_microarray(data_dir=data_dir, donors=donors, verbose=verbose, n_proc=n_proc)
    rnaseq = None
    if need_rnaseq:
        rnaseq = fetch_rnaseq(data_dir=data_dir, donors=list(RNASEQ_DONORS), verbose=verbose)
    return files, rnaseq


_TABLE_READERS = {"probes": _io.read_probes, "annotation": _io.read_annotation,
                  "ontology": _io.read_ontology}


def data_identity(files: Mapping, rnaseq_files: Mapping | None = None) -> str:
    """A SHA-256 of what the AHBA files hold: each matrix's cache content id (see
    :func:`ahba_app.io.content_id`) and the SHA-256 of every other file. Every file is read
    on the way (the small tables by their readers), so a damaged one raises
    :class:`ahba_app.io.AHBAFileError` here.

    The workflow's first node takes it as an input, so data replaced in the same folder
    change every hash after it (Nipype alone sees only the folder's path).
    """
    from .bids import sha256

    digest = hashlib.sha256()
    first = next(iter(files), None)
    for group, paths_by_donor in (("microarray", files), ("rnaseq", rnaseq_files or {})):
        for donor in sorted(paths_by_donor, key=str):
            for kind, path in sorted(paths_by_donor[donor].items()):
                if group == "microarray" and kind in _io.MATRIX_KINDS:
                    token = _io.content_id(path, kind)
                else:
                    token = sha256(path)
                    # small tables: read now, so that errors come before any work (the probe
                    # table is read from the first donor only, as the stages do)
                    if group == "microarray" and (kind != "probes" or donor == first):
                        _TABLE_READERS[kind](path)
                digest.update(f"{group}/{donor}/{kind}={token}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# probes and samples
# --------------------------------------------------------------------------------------------
def load_probe_table(files: Mapping, *, reannotated: bool = DEFAULTS["reannotated"]
                    ) -> pd.DataFrame:
    """The probe table (Probes.csv is the same for every donor, so the first one is read)."""
    first = next(iter(files.values()))
    return _probes.prepare_probes(first["probes"], reannotated=reannotated)


def read_probe_tables(files: Mapping, *, reannotated: bool = DEFAULTS["reannotated"],
                      table=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The probe table as read (Probes.csv is the same for every donor, so the first one is
    read) and as the stages use it (probes with a gene, reannotated or not). ``table``: the
    reannotation table, when already read (:func:`ahba_app.datasets.load_reannotated`), or a
    function giving it, called once Probes.csv is read (e.g. a future's ``result``: another
    thread reads the table meanwhile)."""
    raw = _io.read_probes(next(iter(files.values()))["probes"])
    if reannotated and table is not None:
        return raw, _probes.reannotate_probes(raw, table() if callable(table) else table)
    return raw, _probes.prepare_probes(raw, reannotated=reannotated)


def prepare_donor_samples(donor_files: Mapping, probes: pd.DataFrame, *,
                          corrected_mni: bool = DEFAULTS["corrected_mni"], lr_mirror=None,
                          sim_threshold=None, native_affine=None, coords=None
                          ) -> tuple[pd.DataFrame, dict]:
    """One donor's sample table and the counts of what happened to its samples.

    With ``native_affine`` (a donor-native atlas) the samples' coordinates are their MRI voxels
    through it before the hemisphere check, as abagen does. ``coords``: the corrected MNI
    coordinates, when already read (:func:`ahba_app.datasets.load_corrected_mni`).
    """
    annotation, info = _samples.prepare_samples(
        donor_files["annotation"], donor_files["ontology"], corrected_mni=corrected_mni,
        lr_mirror=lr_mirror, native_affine=native_affine, coords=coords, return_info=True)
    info["n_dissimilar"] = 0
    if sim_threshold is not None:
        kept = _samples.similarity_threshold(donor_files["microarray"], annotation, probes,
                                             threshold=sim_threshold)
        info["n_dissimilar"] = len(annotation) - len(kept)
        annotation = kept
    info["n_kept"] = len(annotation)
    return annotation, info


def filter_probe_table(files: Mapping, annotations: Mapping, probes: pd.DataFrame, *,
                       ibf_threshold: float = DEFAULTS["ibf_threshold"],
                       return_share: bool = False):
    """Probes above background in at least ``ibf_threshold`` of all donors' samples (and, with
    ``return_share``, every probe's share of samples above background)."""
    pacall = {donor: files[donor]["pacall"] for donor in annotations}
    kept = _probes.filter_probes(pacall, annotations, probes, threshold=ibf_threshold,
                                 return_share=return_share)
    if not len(kept[0] if return_share else kept):
        raise EmptyResultError(
            f"No probe is above background in at least {ibf_threshold:g} of the samples "
            f"(ibf_threshold; {len(probes)} probes with a gene were tested): lower "
            "ibf_threshold, or check the donors' PACall.csv files.")
    return kept


class DonorTables(collections.abc.Mapping):
    """Donor -> samples x genes table of the chosen probes, read when asked for.

    Nothing is kept: each access reads the donor's chosen probes from its microarray (from the
    cache, only those rows), so a caller going donor by donor holds one table at a time.
    """

    def __init__(self, chosen: _probes.ChosenProbes):
        self.chosen = chosen

    def __getitem__(self, donor) -> pd.DataFrame:
        """The donor's table, each sample's values contiguous (written out row by row)."""
        if donor not in self.chosen.donors:
            raise KeyError(donor)
        return self.chosen.frame(donor, order="C")

    def __iter__(self):
        return iter(self.chosen.donors)

    def __len__(self) -> int:
        return len(self.chosen.donors)

    def frame(self, donor, samples=None, order: str = "F", buffer=None, columns=None
              ) -> pd.DataFrame:
        """The donor's table, restricted to the rows at positions ``samples`` if given, with
        values in ``order`` ('F': samples contiguous per gene, or 'C': what ``self[donor]``
        gives), in ``buffer``'s memory if given (a large enough 1-D float64 array); its genes
        are the positions ``columns`` of its genes, in that order, if given (see
        :meth:`file_order`)."""
        return self.chosen.frame(donor, samples, order=order, buffer=buffer, columns=columns)

    def read(self, donor, samples=None, order: str = "F", buffer=None, columns=None
             ) -> _probes.SampleTable:
        """:meth:`frame`'s table with the array it was read into, the caller's to overwrite
        (:meth:`ahba_app.probes.ChosenProbes.read`)."""
        return self.chosen.read(donor, samples, order=order, buffer=buffer, columns=columns)

    def file_order(self, donor) -> np.ndarray | None:
        """The order of the donor's genes in which its table is read quickest
        (:meth:`ahba_app.probes.ChosenProbes.file_order`), or None."""
        return self.chosen.file_order(donor)

    def n_genes(self, donor) -> int:
        return len(self.chosen.columns(donor))

    def source(self, donor) -> tuple[pd.DataFrame, object] | None:
        """The donor's chosen probes (:meth:`ahba_app.probes.ChosenProbes.probe_table`) and its
        cached microarray, from which :func:`read_donor_samples` reads the table again; None
        when it cannot be read that way (probes averaged, or a microarray given as a table)."""
        matrix = self.chosen.cached_matrix(donor)
        table = self.chosen.probe_table(donor)
        if matrix is None or matrix.content_id is None or table is None:
            return None
        return table, matrix


def read_order(sample_norm) -> str:
    """The memory layout a donor's table is read in before normalization by ``sample_norm``
    (any spelling): see :func:`ahba_app.exact.read_order`."""
    return _exact.read_order(_normalize.resolve_norm(sample_norm))


def read_donor_samples(microarray, content_id: str | None, annotation: pd.DataFrame,
                       chosen: pd.DataFrame, samples=None, order: str = "F",
                       buffer=None, columns=None) -> _probes.SampleTable:
    """A donor's samples x genes table of the probes ``chosen`` (one per gene), read from its
    microarray cache (``microarray``: the CSV's path), only the rows ``samples`` if given
    (in ``buffer``'s memory if given; only the genes at positions ``columns``, in that order,
    if given: see :meth:`ahba_app.probes.ChosenProbes.read`).

    ``content_id`` is what the cache held when the probes were chosen
    (:attr:`ahba_app.io.CachedMatrix.content_id`): a cache rebuilt since then is an error, not
    a table of other numbers.
    """
    return _probes.read_chosen_probes(_chosen_matrix(microarray, content_id), annotation,
                                      chosen, samples, order=order, buffer=buffer,
                                      columns=columns)


def donor_file_order(microarray, content_id: str | None, annotation: pd.DataFrame,
                     chosen: pd.DataFrame) -> np.ndarray:
    """Positions of the genes of ``chosen`` that read them in the order of the microarray's
    rows (:meth:`DonorTables.file_order`), for :func:`read_donor_samples`'s ``columns``."""
    return _probes.chosen_file_order(_chosen_matrix(microarray, content_id), annotation, chosen)


def _chosen_matrix(microarray, content_id: str | None):
    """The microarray cache the probes were chosen from (an error if it changed since)."""
    matrix = _io.load_matrix(microarray, "microarray")
    if content_id is not None and matrix.content_id != content_id:
        raise ValueError(f"The cache of {microarray} changed after the probes were chosen from "
                         "it (the file was replaced or its cache rebuilt). Run probe selection "
                         "again, e.g. with a new work folder.")
    return matrix


def normalized_rows(labels: np.ndarray, *, norm_matched: bool = DEFAULTS["norm_matched"]
                   ) -> np.ndarray:
    """Positions of the samples normalization keeps: with ``norm_matched`` the matched ones
    (label not 0), otherwise all."""
    labels = np.asarray(labels)
    return np.flatnonzero(labels != 0) if norm_matched else np.arange(len(labels))


def select_donor_probes(files: Mapping, annotations: Mapping, probes: pd.DataFrame, *,
                        probe_selection: str = DEFAULTS["probe_selection"],
                        donor_probes: str = DEFAULTS["donor_probes"],
                        rnaseq_files: Mapping | None = None, store=None
                       ) -> tuple[DonorTables, pd.DataFrame]:
    """Samples x genes expression of every donor (a :class:`DonorTables`, read on demand) and
    the table of chosen probes. ``store``: where choices are kept for later runs
    (:class:`ahba_app.selection_cache.ChoiceStore`; None: nowhere)."""
    microarray = {donor: files[donor]["microarray"] for donor in annotations}
    rnaseq = None
    if rnaseq_files is not None:
        rnaseq = {donor: {"tpm": paths["tpm"], "annotation": paths["annotation"]}
                  for donor, paths in rnaseq_files.items()}
    chosen, selection = _probes.select_probes(microarray, annotations, probes,
                                              method=probe_selection, donor_probes=donor_probes,
                                              rnaseq=rnaseq, store=store)
    return DonorTables(chosen), selection


# --------------------------------------------------------------------------------------------
# atlas and matching
# --------------------------------------------------------------------------------------------
def load_atlas(atlas, atlas_info=None, donors=DEFAULTS["donors"], *, data_dir=None, geometry=None,
               space=None) -> tuple[dict, bool]:
    """``{donor: AtlasTree}`` and whether it is one group (MNI) atlas for every donor."""
    from .atlas import coerce_atlas_to_dict

    return coerce_atlas_to_dict(atlas, donors, atlas_info=atlas_info, data_dir=data_dir,
                                geometry=geometry, space=space)


def renumber_samples(expression: pd.DataFrame, annotation: pd.DataFrame):
    """Give every row (mirrored copies included) its own sample id 1..n, in both tables.

    Mirrored copies repeat their original's sample id; every later stage aligns rows by
    position, and unique ids keep pandas from aligning the copies onto one another.
    """
    annotation = renumbered(annotation)
    return expression.set_axis(annotation.index, axis=0), annotation


def renumbered(annotation: pd.DataFrame) -> pd.DataFrame:
    """The sample table with sample ids 1..n (see :func:`renumber_samples`)."""
    return annotation.set_axis(pd.RangeIndex(1, len(annotation) + 1, name="sample_id"), axis=0)


def atlas_coordinates(atlas_tree, annotation: pd.DataFrame) -> pd.DataFrame:
    """The sample table with coordinates in the atlas's space.

    Group atlases use the (corrected) MNI coordinates as they are; a donor-native atlas maps
    each sample's MRI voxel through the atlas's ``native_affine``.
    """
    if atlas_tree.group_atlas:
        return annotation
    if atlas_tree.native_affine is None:
        raise ValueError(f"The donor-native atlas {atlas_tree.source} has no affine for the "
                         "donor's MRI voxels: set AtlasTree.native_affine to the affine of the "
                         "donor's T1w image.")
    return _matching.native_coordinates(annotation, atlas_tree.native_affine)


def native_affines(atlases: Mapping, group_atlas: bool, data_dir=None) -> dict:
    """Donor -> affine taking the donor's MRI voxels to its donor-native atlas's space
    (:func:`ahba_app.atlas.native_affines`: the donor's raw T1w, else the atlas's own)."""
    from .atlas import native_affines as _native_affines

    return _native_affines(atlases, group_atlas, data_dir)


def check_atlas_settings(group_atlas: bool, settings: Settings) -> None:
    """Refuse option combinations that make no sense for this kind of atlas."""
    if not group_atlas and settings.lr_mirror is not None:
        raise ValueError(f"lr_mirror={settings.lr_mirror!r} cannot be used with donor-native "
                         "atlases: mirroring flips x around 0, which is the midline only in MNI "
                         "space, not in a donor's scanner space. Use a group (MNI) atlas or "
                         "lr_mirror=None.")


def donor_samples(files: Mapping, *, corrected_mni: bool = DEFAULTS["corrected_mni"], lr_mirror=None
                 ) -> list:
    """Every donor's sample table (coordinates, hemisphere, structure), from the annotation files
    alone: what the atlas checks need before any expression data is read."""
    coords = load_corrected_mni() if corrected_mni else None  # (read once, not per donor)
    return [_samples.prepare_samples(paths["annotation"], paths["ontology"],
                                     corrected_mni=corrected_mni, lr_mirror=lr_mirror,
                                     coords=coords)
            for paths in files.values()]


def warn_unreachable_regions(atlases: Mapping, group_atlas: bool, annotations, *,
                             tolerance: float = DEFAULTS["tolerance"]) -> np.ndarray:
    """Warn (UserWarning) about regions of a group atlas that no sample can be matched to.

    ``annotations`` are the donors' sample tables; donor-native atlases are not checked (each
    donor's samples reach only its own atlas).
    """
    if not group_atlas:
        return np.zeros(0, dtype=np.int64)
    samples = pd.concat(list(annotations), ignore_index=True)
    return _matching.unreachable_labels(next(iter(atlases.values())), samples,
                                        tolerance=tolerance)


def match_donor_samples(atlas_tree, annotation: pd.DataFrame, *,
                        tolerance: float = DEFAULTS["tolerance"]) -> np.ndarray:
    """The region label of every sample row (0 = matched to no region)."""
    labels = atlas_tree.label_samples(atlas_coordinates(atlas_tree, annotation),
                                      tolerance=tolerance)
    return np.asarray(labels).ravel().astype(np.int64)


def normalize_donor_expression(expression: pd.DataFrame, labels: np.ndarray,
                               annotation: pd.DataFrame, *, sample_norm=DEFAULTS["sample_norm"],
                               gene_norm=DEFAULTS["gene_norm"],
                               norm_matched: bool = DEFAULTS["norm_matched"],
                               norm_structures: bool = DEFAULTS["norm_structures"],
                               buffers=None, out=None):
    """Normalize one donor; returns the normalized table and the labels and annotation kept.

    With ``norm_matched`` only samples matched to a region are normalized (and kept); otherwise
    every sample is, and the unmatched ones (label 0) are dropped at aggregation.
    ``buffers``, ``out``: those of :func:`ahba_app.normalize.normalize_donor` (the table
    returned then lives in their memory; ``out``, a writeable view of ``expression``'s own
    memory, is used when both methods allow it, and ``buffers`` otherwise).
    """
    keep = labels != 0 if norm_matched else np.ones(len(labels), dtype=bool)
    structures = annotation[["structure"]] if norm_structures else None
    first = sample_norm if sample_norm is not None else gene_norm
    values = expression.to_numpy()
    if (first is not None and not _normalize.layout_independent(first)
            and not values.flags.f_contiguous):
        # sums round by memory layout: give such methods the layout the stages always had
        # (samples contiguous per gene, as the tables were read from parquet columns)
        by_gene = np.empty(values.shape[::-1], dtype=values.dtype)
        transpose_into(by_gene, values)
        expression = pd.DataFrame(by_gene.T, index=expression.index,
                                  columns=expression.columns, copy=False)
    normalized = _normalize.normalize_donor(expression, sample_norm=sample_norm,
                                            gene_norm=gene_norm,
                                            # (every row kept: no copy of the table)
                                            matched=keep if norm_matched and not keep.all()
                                            else None,
                                            structures=structures, buffers=buffers, out=out)
    return normalized, labels[keep], annotation.iloc[np.flatnonzero(keep)]


def fill_missing_regions(missing, atlases: Mapping, labels: Mapping, expressions: Mapping,
                         annotations: Mapping) -> dict:
    """Rows (indexed by region label) to add to each donor for regions without samples."""
    if missing is None:
        return {donor: None for donor in expressions}
    return _matching.fill_missing(missing, atlases, labels, expressions, annotations)


def aggregate_expression(expressions: Mapping, labels: Mapping, all_labels, *,
                         fills: Mapping | None = None, region_agg: str = DEFAULTS["region_agg"],
                         agg_metric=DEFAULTS["agg_metric"], return_donors: bool = False):
    """Region x gene table (or per-donor tables) and the genes dropped as incomplete.

    ``expressions`` and ``labels`` are per donor, aligned by row; ``fills`` are extra rows per
    donor from :func:`fill_missing_regions`, already indexed by region label.
    """
    labelled = {donor: frame.set_axis(pd.Index(labels[donor], name="label"), axis=0)
                .rename_axis("gene_symbol", axis=1) for donor, frame in expressions.items()}
    if region_agg == "donors" and not return_donors \
            and _aggregate.check_metric(agg_metric) == "mean":
        # the filled rows are not appended to (copies of) the samples: the same numbers
        return _aggregate.mean_over_donors(labelled, labels=all_labels, extra=fills)
    for donor, frame in labelled.items():
        extra = None if fills is None else fills.get(donor)
        if extra is not None and len(extra):
            frame = pd.concat([frame, extra.astype(frame.dtypes.iloc[0])])
        labelled[donor] = frame.rename_axis("gene_symbol", axis=1)
    if return_donors:
        tables = _aggregate.aggregate_samples(labelled, labels=all_labels,
                                              region_agg=region_agg, agg_metric=agg_metric,
                                              return_donors=True)
        return tables, pd.Index([], name="gene_symbol")
    tables = _aggregate.aggregate_regions(labelled, labels=all_labels, region_agg=region_agg,
                                          agg_metric=agg_metric)
    frames = list(tables.values()) if isinstance(tables, Mapping) else list(tables)
    return _aggregate.aggregate_donors(frames, agg_metric=agg_metric)


# --------------------------------------------------------------------------------------------
# everything, in one process
# --------------------------------------------------------------------------------------------
@dataclass
class PipelineResult:
    """What one run produced: the tables, and the facts the report and outputs need.

    ``summary`` is the :class:`ahba_app.report.RunSummary` (built on first access by
    :func:`ahba_app.summary.run_summary`, as the workflow's report node builds it); ``labels``
    and ``annotations`` are the per-donor sample labels and tables after normalization;
    ``atlas`` is the atlas tree (the first donor's).
    """

    expression: pd.DataFrame | dict
    counts: pd.DataFrame
    selection: pd.DataFrame
    settings: Settings
    summarize: Callable = field(repr=False)
    group_atlas: bool = True
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    atlas: object = None
    genes: pd.DataFrame | None = None
    group: GroupFacts | None = None

    @property
    def summary(self):
        """The run summary of the report (made when asked for: most runs never need it)."""
        if getattr(self, "_summary", None) is None:
            self._summary = self.summarize(self.group, self.expression)
        return self._summary


@shared_threads()
def run(atlas, atlas_info=None, *, settings: Settings, data_dir=None, n_proc: int = 1,
        verbose: int = 0, return_donors: bool = False, aggregate: bool = True,
        return_genes: bool = False, store=None) -> PipelineResult:
    """Run every stage in order for one atlas (the Python API's engine).

    ``store`` keeps the probe choice for later runs (see :func:`select_donor_probes`). The
    stages' threads are started once for the run (:func:`ahba_app._blocks.shared_threads`).

    The same stages as the workflow, arranged to hold little at a time: each donor's
    microarray and PACall caches are mapped once and shared by the stages; each donor's table
    of chosen probes is read only when the donor is normalized, and only for the samples kept
    (with ``norm_matched``, those matched to a region).
    """
    files, rnaseq_files = locate_data(data_dir, need_rnaseq=settings.probe_selection == "rnaseq",
                                      n_proc=n_proc, verbose=verbose,
                                      **stage_options(settings, "fetch"))
    with background() as pool:
        # the atlas is loaded, and each cache checked (its checksum: read whole) and mapped
        # once, on other threads while the probes and the samples are prepared (the atlas
        # first: matching waits for it; then the donors with the largest microarray first,
        # which balances the threads when the caches are built)
        loading = pool.submit(load_atlas, atlas, atlas_info, settings.donors,
                              data_dir=data_dir)
        # the bundled tables every donor shares, read once (beside Probes.csv on this thread)
        reannotation = pool.submit(load_reannotated) if settings.reannotated else None
        corrected = pool.submit(load_corrected_mni) if settings.corrected_mni else None
        samples_first = not isinstance(atlas, Mapping)

        def sample_tables(affines, probes=None):
            coords = None if corrected is None else corrected.result()
            annotations, facts = {}, {}
            for donor, donor_files in files.items():
                if settings.sim_threshold is not None:  # the similarity filter reads expression
                    donor_files = dict(donor_files,
                                       microarray=opening[donor]["microarray"].result())
                annotations[donor], facts[donor] = prepare_donor_samples(
                    donor_files, probes, native_affine=affines.get(donor), coords=coords,
                    **stage_options(settings, "annotate"))
            return annotations, facts

        # one atlas for every donor (a group atlas, see load_atlas): its samples need nothing
        # of it, nor of the probes unless the similarity filter reads expression, so they are
        # prepared on a worker while this thread reads the probes
        early_samples = (pool.submit(sample_tables, {})
                         if samples_first and settings.sim_threshold is None else None)
        order = _io.largest_first({donor: paths["microarray"] for donor, paths in files.items()})
        opening = {donor: {kind: pool.submit(_io.load_matrix, files[donor][kind], kind)
                           for kind in ("pacall", "microarray")}
                   for donor in order}
        raw_probes, probes = read_probe_tables(
            files, table=None if reannotation is None else reannotation.result,
            **stage_options(settings, "reannotate"))
        probe_counts = ProbeCounts(n_probes=len(raw_probes), n_annotated=len(probes))
        array_probes = raw_probes[["gene_symbol"]] if return_genes else None
        del raw_probes

        if early_samples is not None:
            annotations, sample_facts = early_samples.result()
        elif samples_first:
            annotations, sample_facts = sample_tables({}, probes)
        atlases, group_atlas = loading.result()
        check_atlas_settings(group_atlas, settings)
        if not samples_first:
            annotations, sample_facts = sample_tables(
                native_affines(atlases, group_atlas, data_dir), probes)
        all_labels = next(iter(atlases.values())).labels

        # (on a worker too: it only warns, and matching does not need it)
        reaching = pool.submit(warn_unreachable_regions, atlases, group_atlas,
                               list(annotations.values()), tolerance=settings.tolerance)
        # the samples are matched on a worker while this thread filters and chooses the
        # probes: neither needs the other (both only read the samples' table)
        numbered = {donor: renumbered(annotation) for donor, annotation in annotations.items()}
        matching = pool.submit(_match_samples, atlases, numbered, settings)

        def matched():
            match_labels = matching.result()
            try:
                check_matched({d: int((m != 0).sum()) for d, m in match_labels.items()},
                              {d: len(m) for d, m in match_labels.items()},
                              tolerance=settings.tolerance)
            except EmptyResultError:
                reaching.result()  # (its warning, then the error)
                raise
            return match_labels

        try:
            files = {donor: dict(paths, **{kind: future.result()
                                           for kind, future in opening[donor].items()})
                     for donor, paths in files.items()}
            del opening
            # the probes are filtered and chosen while the unreachable regions are still
            # looked for on the worker (the pool waits for it at the end of the block anyway)
            annotated = probes
            probes, share = filter_probe_table(files, annotations, probes, return_share=True,
                                               **stage_options(settings, "filter_probes"))
            probe_counts.n_filtered = len(probes)
            expressions, selection = select_donor_probes(
                files, annotations, probes, rnaseq_files=rnaseq_files, store=store,
                **stage_options(settings, "select_probes"))
        except Exception:
            matched()  # a matching error first, as when the samples were matched before
            raise
        match_labels = matched()
        labels, kept, keep = {}, {}, {}
        for donor, donor_labels in match_labels.items():
            annotation = numbered[donor]
            keep[donor] = normalized_rows(donor_labels, norm_matched=settings.norm_matched)
            kept[donor] = annotation.iloc[keep[donor]]
            labels[donor] = donor_labels[keep[donor]]
        reaching.result()
    probe_counts.n_genes = expressions.n_genes(next(iter(expressions)))
    check_genes(probe_counts.n_genes, n_probes=len(probes), ibf_threshold=settings.ibf_threshold)

    normalized = {}
    # when the group level only needs each donor's region means, they are taken as soon as
    # the donor is normalized, and its sample-level table is dropped (see DonorStream)
    stream = DonorStream(atlases, all_labels, settings.missing) if (
        aggregate and _can_stream(settings, expressions, return_donors)) else None
    # streamed, every donor's genes are read in the order of the first donor's microarray
    # rows when that changes no number: the gene normalization and region means treat each
    # gene on its own, and a sample normalization that only sorts and compares (no sums
    # over a sample's genes) does not see their order; the region table takes back the
    # order of the symbols at the end
    columns = None
    if stream is not None and (settings.sample_norm is None
                               or _normalize.layout_independent(settings.sample_norm)):
        columns = stream.columns = expressions.file_order(next(iter(expressions)))
    if stream is not None and _in_place(settings.sample_norm, settings.gene_norm):
        stream_side_by_side(stream, expressions, keep, kept, labels, columns=columns,
                            **stage_options(settings, "normalize"))
    else:
        for donor, table in normalized_donors(expressions, keep, kept,
                                              reuse=stream is not None, columns=columns,
                                              **stage_options(settings, "normalize")):
            if stream is not None:
                stream.add(donor, table, labels[donor], kept[donor])
            else:
                normalized[donor] = table
            del table
    counts = _matching.sample_counts(labels, all_labels)
    tree = next(iter(atlases.values()))

    donors = list(files)  # (the closure below must not hold the mapped caches of ``files``)

    def summarize(group=None, expression=None):
        return run_summary(tree=tree, donors=donors, sample_info=sample_facts,
                           annotations=annotations, match_labels=match_labels,
                           selection=selection, probes=probe_counts, group=group,
                           expression=expression, counts=counts)

    result = PipelineResult(normalized, counts, selection, settings, summarize, group_atlas,
                            labels, kept, tree)
    if not aggregate:
        return result
    if stream is not None:
        group = stream.result(labels)
    else:
        group = aggregate_group(atlases, all_labels, normalized, kept, labels,
                                return_donors=return_donors,
                                **stage_options(settings, "aggregate"))
    check_expression(group["expression"], group["summary"])
    result.expression = group["donor_expressions"] if return_donors else group["expression"]
    result.group = group["summary"]
    if return_genes:
        from .genes import gene_fates

        result.genes = gene_fates(
            array_probes, annotated, probes, selection, group["expression"].columns,
            share=share, dropped_incomplete=group["summary"].genes_dropped,
            stability=group.get("stability"), donors=list(files),
            **stage_options(settings, "genes"))
    return result


def normalized_donors(expressions: DonorTables, keep: Mapping, kept: Mapping, *,
                      sample_norm=DEFAULTS["sample_norm"], gene_norm=DEFAULTS["gene_norm"],
                      norm_matched: bool = DEFAULTS["norm_matched"],
                      norm_structures: bool = DEFAULTS["norm_structures"],
                      reuse: bool = False, columns=None):
    """Yield ``(donor, normalized samples x genes table)`` for each donor, in order.

    Donors in the order of ``keep``; only the samples kept (positions ``keep[donor]``;
    ``kept[donor]`` their table, whose index the rows take) are read, in the memory layout the
    sample normalization needs to give abagen's numbers (:func:`read_order`). With ``reuse`` every donor's tables live in the same
    two buffers: the caller is done with one donor's table before asking for the next.
    ``norm_matched`` decided ``keep``; it is accepted here as the stage's option.
    ``columns``: positions of the genes to read, in that order (:meth:`DonorTables.frame`).
    """
    order = read_order(sample_norm)
    buffers = None
    if reuse:
        size = max(len(rows) * expressions.n_genes(donor) for donor, rows in keep.items())
        buffers = (np.empty(size), np.empty(size))
    for donor in keep:
        structures = kept[donor][["structure"]] if norm_structures else None
        # no name holds the table read, so normalize_donor lets go of it once normalized
        yield donor, _normalize.normalize_donor(
            expressions.frame(donor, keep[donor], order=order,
                              buffer=None if buffers is None else buffers[1], columns=columns)
            .set_axis(kept[donor].index, axis=0),
            sample_norm=sample_norm, gene_norm=gene_norm, structures=structures,
            buffers=buffers)


def _in_place(sample_norm, gene_norm) -> bool:
    """Whether a donor's table can be normalized in its own memory: both methods' numbers do
    not depend on the layout (see :func:`ahba_app.normalize.normalize_donor`'s ``out``)."""
    return all(norm is None or _normalize.layout_independent(norm)
               for norm in (sample_norm, gene_norm))


def stream_side_by_side(stream: "DonorStream", expressions: DonorTables, keep: Mapping,
                        kept: Mapping, labels: Mapping, *, columns=None,
                        sample_norm=DEFAULTS["sample_norm"], gene_norm=DEFAULTS["gene_norm"],
                        norm_matched: bool = DEFAULTS["norm_matched"],
                        norm_structures: bool = DEFAULTS["norm_structures"]) -> None:
    """:func:`normalized_donors` reduced by ``stream``, the donors side by side on the run's
    threads: each thread reads, normalizes (in place, see :func:`_in_place`) and reduces its
    donors one after the other in one buffer of its own, with no wait for the other thread
    between steps; the region tables are folded into ``stream`` in donor order, as each is
    ready. The numbers are those of one donor after the other (each donor's are its own; the
    fold's sums are rounded in donor order). The donors are split so that the thread with the
    most values has the fewest (:func:`balanced_shares`): the threads end together, and each
    buffer fits its largest donor only.
    ``norm_matched`` decided ``keep``; it is accepted here as the stage's option.
    """
    order = read_order(sample_norm)
    donors = list(keep)
    sizes = {donor: len(keep[donor]) * expressions.n_genes(donor) for donor in donors}
    shares = balanced_shares(sizes, max(1, min(n_threads(), len(donors))))
    rank = {donor: position for position, donor in enumerate(donors)}
    ready, lock, next_fold = {}, threading.Lock(), [0]

    def work(share):
        buffer = np.empty(max(sizes[donor] for donor in share))
        for donor in sorted(share, key=rank.__getitem__):  # (donor order: fewer tables wait)
            table = expressions.read(donor, keep[donor], order=order, buffer=buffer,
                                     columns=columns)
            structures = kept[donor][["structure"]] if norm_structures else None
            normalized = _normalize.normalize_donor(
                table.frame().set_axis(kept[donor].index, axis=0), sample_norm=sample_norm,
                gene_norm=gene_norm, structures=structures, out=table.values)
            del table
            reduced = stream.table(donor, normalized, labels[donor], kept[donor],
                                   first=rank[donor] == 0)
            del normalized  # (the buffer takes the next donor)
            with lock:
                ready[donor] = reduced
                while next_fold[0] < len(donors) and donors[next_fold[0]] in ready:
                    stream.fold(ready.pop(donors[next_fold[0]]))
                    next_fold[0] += 1

    thread_map(work, shares)


def _match_samples(atlases: Mapping, annotations: Mapping, settings: Settings) -> dict:
    """Donor -> region label of each of its samples (:func:`match_donor_samples`; the sample
    tables :func:`renumbered`), warning of a donor none of whose samples matched a region."""
    match_labels = {}
    for donor, annotation in annotations.items():
        donor_labels = match_donor_samples(atlases[donor], annotation,
                                           **stage_options(settings, "match"))
        if not (donor_labels != 0).any():
            LGR.warning("No sample of donor %s matched a region of the atlas.", donor)
        match_labels[donor] = donor_labels
    return match_labels


#: Splits of the donors among the threads tried one by one (above: largest first to the
#: thread with the least work)
_SPLITS_TRIED = 1 << 12


def balanced_shares(sizes: Mapping, parts: int) -> list[list]:
    """The keys of ``sizes`` split into ``parts`` non-empty shares whose largest total is the
    least: every split when there are few (six donors on two threads: 32), else largest
    first to the share with the least. Donors side by side take the time of the largest
    share: on the full data's six donors largest-first gave one thread 1,569 kept samples
    and the other 1,468 (every split: 1,521 and 1,516)."""
    keys = list(sizes)
    parts = max(1, min(parts, len(keys)))
    if parts == 1:
        return [keys]
    if parts ** (len(keys) - 1) <= _SPLITS_TRIED:
        best, best_load = None, None
        # the first key always in the first share (the others are the same splits renamed)
        for rest in itertools.product(range(parts), repeat=len(keys) - 1):
            where = (0, *rest)
            loads = [0] * parts
            for key, part in zip(keys, where):
                loads[part] += sizes[key]
            if len(set(where)) == parts and (best_load is None or max(loads) < best_load):
                best, best_load = where, max(loads)
        return [[key for key, part in zip(keys, best) if part == k] for k in range(parts)]
    shares = [[] for _ in range(parts)]
    loads = [0] * parts
    for key in sorted(keys, key=sizes.__getitem__, reverse=True):
        least = loads.index(min(loads))
        shares[least].append(key)
        loads[least] += sizes[key]
    return shares


def _can_stream(settings: Settings, expressions: DonorTables, return_donors: bool) -> bool:
    """Whether :func:`aggregate_group` would need no more than each donor's region means:
    means over donors (then over regions) of tables that all have the same genes, regions
    filled per donor or not at all, and no per-donor output."""
    return region_means_suffice(settings, return_donors) and same_genes(
        [expressions.chosen.columns(donor) for donor in expressions])


def same_genes(genes) -> bool:
    """Whether the donors' tables, whose genes are ``genes`` (one index per donor), can be
    reduced and folded donor by donor (:class:`DonorStream`): the same genes in the same
    order."""
    genes = list(genes)
    return all(other.equals(genes[0]) for other in genes[1:])


def region_means_suffice(settings: Settings, return_donors: bool = False) -> bool:
    """Whether the group level's options need no more than each donor's region means (a
    :class:`DonorStream`), given donors whose tables have the same genes."""
    return not (return_donors or settings.stability_threshold is not None
                or settings.region_agg != "donors" or settings.agg_metric != "mean"
                or settings.missing not in (None, "interpolate"))


def region_tables_suffice(settings: Settings, return_donors: bool = False) -> bool:
    """Whether each donor's region table can be made apart from the atlas and folded later
    (the command line's normalize and aggregate nodes): :func:`region_means_suffice` with no
    region filled (filling needs the atlas and the samples' coordinates)."""
    return settings.missing is None and region_means_suffice(settings, return_donors)


def genes_in_file_order(settings: Settings, return_donors: bool = False) -> bool:
    """Whether the group level may read every donor's genes in the order of the first donor's
    microarray rows (:func:`donor_file_order`) and give the region table's genes their symbol
    order at the end (:func:`in_symbol_order`), changing no number: as a streamed :func:`run`
    does, the region means treat each gene on its own and the sample normalization only
    sorts and compares (no sums over a sample's genes)."""
    return region_means_suffice(settings, return_donors) and (
        settings.sample_norm is None or _normalize.layout_independent(settings.sample_norm))


def in_symbol_order(group: dict) -> dict:
    """:func:`aggregate_group`'s result for tables whose genes were read in another order
    (:func:`genes_in_file_order`) with the region table's genes, and the genes dropped, in
    symbol order (by code point, as the chosen probes' genes are sorted)."""
    expression = group["expression"]
    symbols = expression.columns.to_numpy().astype(str)
    return dict(group, expression=expression.iloc[:, np.argsort(symbols, kind="stable")],
                summary=replace(group["summary"],
                                genes_dropped=sorted(group["summary"].genes_dropped)))


class DonorStream:
    """:func:`aggregate_group` computed donor by donor (see :func:`region_means_suffice`).

    Each donor's normalized samples are reduced at once to region means (after adding the
    rows that ``missing='interpolate'`` fills for its empty regions) and folded into the
    running mean over donors, so no donor's sample-level table outlives its turn. The numbers
    and the summary are those of :func:`aggregate_group`. The Python API reduces and folds in
    one process; the command line's normalize node reduces (:meth:`table`) and its aggregate
    node folds (:meth:`fold`), the region tables passed between them as files.
    """

    def __init__(self, atlases: Mapping, all_labels, missing):
        self.atlases, self.all_labels, self.missing = atlases, all_labels, missing
        self.means = _aggregate.DonorMeans(all_labels)
        self.filled: set = set()
        #: positions of the genes the donors' tables hold, in their order (None: all, sorted)
        self.columns = None

    def add(self, donor, normalized: pd.DataFrame, labels: np.ndarray,
            kept: pd.DataFrame) -> None:
        self.fold(self.table(donor, normalized, labels, kept,
                             first=self.means.index is None))

    def table(self, donor, normalized: pd.DataFrame, labels: np.ndarray, kept: pd.DataFrame,
              *, first: bool) -> tuple[pd.DataFrame, list | None]:
        """The donor's region table and the labels of the regions filled for it (None without
        ``missing``), for :meth:`fold` (``first``: the first donor folded: its table has
        every region of the atlas, the others' the regions they have). Changes nothing here:
        donors may be reduced side by side, or in other processes."""
        fills = None
        if self.missing == "interpolate":
            atlas = self.atlases[donor]
            fills = _matching.interpolate_missing(atlas, labels, normalized,
                                                  atlas_coordinates(atlas, kept))
        frame = normalized.set_axis(pd.Index(labels, name="label"), axis=0)
        table = self.means.table(frame.rename_axis("gene_symbol", axis=1), fills, first=first)
        return table, None if fills is None else [int(r) for r in fills.index]

    def fold(self, reduced: tuple) -> None:
        """Add a donor's :meth:`table` to the running means (donors in order)."""
        table, filled = reduced
        if filled is not None:
            self.filled.update(filled)
        self.means.fold(table)

    def result(self, labels: Mapping) -> dict:
        counts = _matching.sample_counts(labels, self.all_labels)
        expression, dropped = self.means.result(
            None if self.columns is None else np.argsort(self.columns))
        summary = GroupFacts(
            regions_without_samples=[int(r) for r in counts.index[counts.sum(axis=1) == 0]],
            filled_regions=None if self.missing is None else sorted(self.filled),
            genes_dropped=[str(gene) for gene in dropped], stability_threshold=None,
            n_genes=int(expression.shape[1]))
        return {"expression": expression, "counts": counts, "donor_expressions": None,
                "summary": summary}


def aggregate_group(atlases: Mapping, all_labels, normalized: Mapping, kept: Mapping,
                    labels: Mapping, *, missing=None, region_agg=DEFAULTS["region_agg"],
                    agg_metric=DEFAULTS["agg_metric"], stability_threshold=None, return_donors=False
                   ) -> dict:
    """Fill empty regions, aggregate, apply the stability threshold: the group level.

    Returns ``expression`` (regions x genes), ``counts``, ``donor_expressions`` (per-donor
    tables, with ``return_donors``) and ``summary`` (a :class:`ahba_app.summary.GroupFacts`).
    """
    counts = _matching.sample_counts(labels, all_labels)
    summary = GroupFacts(regions_without_samples=[int(r) for r in
                                                  counts.index[counts.sum(axis=1) == 0]],
                         stability_threshold=stability_threshold)
    kept = {donor: atlas_coordinates(atlases[donor], frame) for donor, frame in kept.items()}
    fills = fill_missing_regions(missing, atlases, labels, normalized, kept)
    if missing is not None:
        summary.filled_regions = sorted({int(r) for rows in fills.values() if rows is not None
                                         for r in rows.index})
    expression, dropped = aggregate_expression(normalized, labels, all_labels, fills=fills,
                                               region_agg=region_agg, agg_metric=agg_metric)
    summary.genes_dropped = [str(gene) for gene in dropped]
    per_donor = None
    if return_donors:
        per_donor, _ = aggregate_expression(normalized, labels, all_labels, fills=fills,
                                            region_agg=region_agg, agg_metric=agg_metric,
                                            return_donors=True)
    stability = None
    if stability_threshold is not None:
        stability = gene_stability(normalized, labels, all_labels, agg_metric=agg_metric)
        stable = stability >= stability_threshold
        expression = expression.loc[:, expression.columns.isin(stable.index[stable])]
        if per_donor is not None:
            per_donor = {d: f.loc[:, f.columns.isin(stable.index[stable])]
                         for d, f in per_donor.items()}
    summary.n_genes = int(expression.shape[1])
    return {"expression": expression, "counts": counts, "donor_expressions": per_donor,
            "summary": summary, "stability": stability}


def stable_genes(normalized: Mapping, labels: Mapping, all_labels, *, threshold: float,
                 agg_metric=DEFAULTS["agg_metric"]) -> pd.Series:
    """Whether each gene's differential stability across donors reaches ``threshold``.

    Differential stability is the mean over donor pairs of the Spearman correlation of the
    gene's regional expression (regions aggregated within each donor).
    """
    return gene_stability(normalized, labels, all_labels, agg_metric=agg_metric) >= threshold


def gene_stability(normalized: Mapping, labels: Mapping, all_labels, *,
                   agg_metric=DEFAULTS["agg_metric"]) -> pd.Series:
    """Each gene's differential stability across donors (see :func:`stable_genes`)."""
    from .correct import differential_stability

    per_donor, _ = aggregate_expression(normalized, labels, all_labels, region_agg="donors",
                                        agg_metric=agg_metric, return_donors=True)
    frames = list(per_donor.values()) if isinstance(per_donor, Mapping) else list(per_donor)
    return differential_stability(frames)
