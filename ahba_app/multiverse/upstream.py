"""What the normalization groups of one unit share, computed once: the stages of
:func:`ahba_app.pipeline.run` above normalization (data located and mapped, atlas, samples,
matching, probe filter and choice), then each group's normalization from them.

A unit's groups differ only in ``sample_norm``, ``gene_norm``, ``norm_matched`` and
``norm_structures`` (:mod:`.planner`), so the samples, their regions and the chosen probes are
the same for all of them: :class:`UnitUpstream` holds them, and :meth:`UnitUpstream.normalized`
gives a group's normalized donors as ``pipeline.run(..., aggregate=False)`` would (the same
stage functions, called in the same order with the same arguments; the tests compare every row
with ``get_expression_data``).
"""

from __future__ import annotations

import warnings

from .. import io as _io
from .. import normalize as _normalize
from .. import pipeline as _pipeline
from .. import probes as _probes
from ..selection_cache import ChoiceStore

__all__ = ["UnitUpstream"]


class UnitUpstream:
    """The shared upstream result of a unit (``settings``: any of its pipelines')."""

    def __init__(self, atlas, atlas_info=None, *, settings, data_dir=None, n_proc: int = 1):
        p = _pipeline
        files, rnaseq = p.locate_data(data_dir, settings.donors,
                                      need_rnaseq=settings.probe_selection == "rnaseq",
                                      n_proc=n_proc)
        files = {donor: dict(paths, **{kind: _io.load_matrix(paths[kind], kind)
                                       for kind in ("pacall", "microarray")})
                 for donor, paths in files.items()}
        atlases, group_atlas = p.load_atlas(atlas, atlas_info, settings.donors,
                                            data_dir=data_dir)
        p.check_atlas_settings(group_atlas, settings)
        affines = p.native_affines(atlases, group_atlas, data_dir)
        raw_probes = _io.read_probes(next(iter(files.values()))["probes"])
        probes = _probes.prepare_probes(raw_probes, reannotated=settings.reannotated)
        annotations = {}
        for donor, donor_files in files.items():
            annotations[donor], _ = p.prepare_donor_samples(
                donor_files, probes, corrected_mni=settings.corrected_mni,
                lr_mirror=settings.lr_mirror, sim_threshold=settings.sim_threshold,
                native_affine=affines.get(donor))
        match_labels, renumbered = {}, {}
        for donor in files:
            renumbered[donor] = p.renumbered(annotations[donor])
            match_labels[donor] = p.match_donor_samples(atlases[donor], renumbered[donor],
                                                        tolerance=settings.tolerance)
        p.check_matched({d: int((m != 0).sum()) for d, m in match_labels.items()},
                        {d: len(m) for d, m in match_labels.items()},
                        tolerance=settings.tolerance)
        filtered = p.filter_probe_table(files, annotations, probes,
                                        ibf_threshold=settings.ibf_threshold)
        expressions, _ = p.select_donor_probes(
            files, annotations, filtered, probe_selection=settings.probe_selection,
            donor_probes=settings.donor_probes, rnaseq_files=rnaseq, store=ChoiceStore())
        p.check_genes(expressions.n_genes(next(iter(expressions))), n_probes=len(filtered),
                      ibf_threshold=settings.ibf_threshold)
        self.atlases = atlases
        self.all_labels = next(iter(atlases.values())).labels
        self.donors = list(files)
        self.expressions = expressions
        self.match_labels = match_labels
        self.annotations = renumbered

    def normalized(self, settings) -> tuple[dict, dict, dict]:
        """One group's normalized donors, their kept sample tables and region labels (as
        :class:`ahba_app.pipeline.PipelineResult`'s ``expression``, ``annotations`` and
        ``labels``)."""
        order = _pipeline.read_order(settings.sample_norm)
        normalized, kept, labels = {}, {}, {}
        for donor in self.donors:
            keep = _pipeline.normalized_rows(self.match_labels[donor],
                                             norm_matched=settings.norm_matched)
            kept[donor] = self.annotations[donor].iloc[keep]
            labels[donor] = self.match_labels[donor][keep]
            structures = kept[donor][["structure"]] if settings.norm_structures else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                normalized[donor] = _normalize.normalize_donor(
                    self.expressions.frame(donor, keep, order=order)
                    .set_axis(kept[donor].index, axis=0),
                    sample_norm=settings.sample_norm, gene_norm=settings.gene_norm,
                    structures=structures)
        return normalized, kept, labels
