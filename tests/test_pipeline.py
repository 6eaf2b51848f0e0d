"""ahba_app.pipeline.run's arrangements for speed and memory give the stages' numbers exactly.

run() maps each cache once, reads each donor's chosen probes only for the samples it keeps,
takes region means donor by donor when that is all the group level needs, and runs the heavy
loops on threads. None of it may change a number: the results are compared, bit for bit, with
the stages composed the plain way (the workflow's way) and with a single thread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app import _blocks, pipeline
from ahba_app.datasets import fetch_desikan_killiany

DK = fetch_desikan_killiany()
DONORS = ["9861", "10021", "12876"]


def _run(data, **options):
    settings = pipeline.Settings(donors=DONORS, **options)
    return pipeline.run(DK["image"], DK["info"], settings=settings, data_dir=data)


def _plain(data, **options):
    """Every stage one after the other, on whole tables, as the workflow composes them."""
    settings = pipeline.Settings(donors=DONORS, **options)
    files, _ = pipeline.locate_data(data, settings.donors)
    atlases, _ = pipeline.load_atlas(DK["image"], DK["info"], settings.donors)
    all_labels = next(iter(atlases.values())).labels
    probes = pipeline.load_probe_table(files)
    annotations = {d: pipeline.prepare_donor_samples(f, probes, lr_mirror=settings.lr_mirror)[0]
                   for d, f in files.items()}
    probes = pipeline.filter_probe_table(files, annotations, probes)
    expressions, _ = pipeline.select_donor_probes(files, annotations, probes)
    normalized, labels, kept = {}, {}, {}
    for donor in files:
        expression, annotation = pipeline.renumber_samples(expressions[donor],
                                                           annotations[donor])
        donor_labels = pipeline.match_donor_samples(atlases[donor], annotation)
        normalized[donor], labels[donor], kept[donor] = pipeline.normalize_donor_expression(
            expression, donor_labels, annotation, sample_norm=settings.sample_norm,
            gene_norm=settings.gene_norm)
    return pipeline.aggregate_group(atlases, all_labels, normalized, kept, labels,
                                    missing=settings.missing)


@pytest.mark.parametrize("options", [{}, {"missing": "interpolate", "lr_mirror": "leftright"},
                                     {"sample_norm": "zscore", "gene_norm": "sigmoid"}])
def test_run_equals_the_stages_composed_plainly(ahba_small, options):
    result = _run(ahba_small, **options)
    plain = _plain(ahba_small, **options)
    pd.testing.assert_frame_equal(result.expression, plain["expression"], check_exact=True)
    pd.testing.assert_frame_equal(result.counts, plain["counts"], check_exact=True)
    group = plain["summary"]
    assert result.summary.genes_dropped == group.genes_dropped
    assert result.summary.filled_regions == group.filled_regions
    assert result.summary.empty_regions == group.regions_without_samples


def test_threads_do_not_change_a_number(ahba_small, monkeypatch):
    monkeypatch.setenv("AHBA_APP_THREADS", "1")
    alone = _run(ahba_small)
    monkeypatch.setenv("AHBA_APP_THREADS", "3")
    threaded = _run(ahba_small)
    pd.testing.assert_frame_equal(threaded.expression, alone.expression, check_exact=True)
    pd.testing.assert_frame_equal(threaded.selection, alone.selection, check_exact=True)


def test_sample_level_results_are_kept_without_aggregation(ahba_small):
    result = pipeline.run(DK["image"], DK["info"], settings=pipeline.Settings(donors=DONORS),
                          data_dir=ahba_small, aggregate=False)
    assert list(result.expression) == DONORS
    for donor, frame in result.expression.items():
        assert len(frame) == len(result.labels[donor]) == len(result.annotations[donor])


def test_thread_helpers(monkeypatch):
    monkeypatch.setenv("AHBA_APP_THREADS", "3")
    assert _blocks.n_threads() == 3
    assert _blocks.thread_map(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    nested = _blocks.thread_map(lambda x: _blocks.thread_map(lambda y: x + y, range(3)),
                                range(4))
    assert nested == [[x + y for y in range(3)] for x in range(4)]

    def fail(x):
        raise KeyError(x)

    with pytest.raises(KeyError):
        _blocks.thread_map(fail, range(4))
    with _blocks.background(1) as pool:  # one thread: tasks run at once, errors kept
        assert pool.submit(sum, [1, 2]).result() == 3
        with pytest.raises(KeyError):
            pool.submit(fail, 1).result()
    monkeypatch.setenv("AHBA_APP_THREADS", "many")
    with pytest.raises(ValueError, match="AHBA_APP_THREADS"):
        _blocks.n_threads()
    monkeypatch.delenv("AHBA_APP_THREADS")
    assert 1 <= _blocks.n_threads() <= _blocks.MAX_THREADS


@pytest.mark.parametrize("shape", [(1, 1), (700, 3), (5, 900), (513, 129)])
def test_transpose_into(shape):
    source = np.random.default_rng(0).random(shape)
    target = np.empty(shape[::-1])
    _blocks.transpose_into(target, source)
    assert np.array_equal(target, source.T)
    wide = np.empty((shape[1], shape[0] + 7))
    _blocks.transpose_into(wide[:, 3:3 + shape[0]], source)  # into a strided view
    assert np.array_equal(wide[:, 3:3 + shape[0]], source.T)
    with pytest.raises(ValueError):
        _blocks.transpose_into(np.empty(shape), np.empty((shape[0] + 1, shape[1])))
