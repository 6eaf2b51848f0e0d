"""ahba_app.pipeline.run's arrangements for speed and memory give the stages' numbers exactly.

run() maps each cache once, reads each donor's chosen probes only for the samples it keeps,
takes region means donor by donor when that is all the group level needs, and runs the heavy
loops on threads. None of it may change a number: the results are compared, bit for bit, with
the command line's (the Nipype workflow, which runs the same stage functions node by node on
whole tables) and with a single thread.
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


def _workflow(data, tmp_path, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The command line's tables (the Nipype workflow wrapping the stage functions node by
    node), read back exactly."""
    from ahba_app.cli import run as cli_run

    (tmp_path / "in").mkdir()
    flags = []
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", "none" if value is None else str(value)]
    out = tmp_path / "out"
    assert cli_run.main([str(tmp_path / "in"), str(out), "group", "--ahba-dir", str(data),
                         "-w", str(tmp_path / "work"), "--participant-label", *DONORS,
                         *flags]) == 0

    def read(suffix):
        (path,) = out.glob(f"atlas-desikankilliany_desc-*_{suffix}.tsv")
        return pd.read_csv(path, sep="\t", index_col=0, na_values="n/a",
                           float_precision="round_trip")
    return read("expression"), read("counts")


@pytest.mark.parametrize("options", [{}, {"missing": "interpolate", "lr_mirror": "leftright"},
                                     {"sample_norm": "zscore", "gene_norm": "sigmoid"}])
def test_the_api_and_the_workflow_give_the_same_table(ahba_small, tmp_path, monkeypatch,
                                                      options):
    """One composition of the stages, two front ends: pipeline.run (the Python API) streams
    donors through the stages, the workflow runs them node by node; same numbers, bit for bit."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    result = _run(ahba_small, **options)
    table, counts = _workflow(ahba_small, tmp_path, **options)
    assert list(table.columns) == list(result.expression.columns)
    assert list(table.index) == list(result.expression.index)
    np.testing.assert_array_equal(table.to_numpy(), result.expression.to_numpy())
    np.testing.assert_array_equal(counts.to_numpy(), result.counts.to_numpy())


def test_threads_do_not_change_a_number(ahba_small, monkeypatch):
    monkeypatch.setenv("AHBA_APP_THREADS", "1")
    alone = _run(ahba_small)
    monkeypatch.setenv("AHBA_APP_THREADS", "3")
    threaded = _run(ahba_small)
    pd.testing.assert_frame_equal(threaded.expression, alone.expression, check_exact=True)
    pd.testing.assert_frame_equal(threaded.selection, alone.selection, check_exact=True)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_donors_side_by_side_give_the_numbers_of_one_after_the_other(ahba_small, monkeypatch,
                                                                     threads):
    """A streamed run normalizes and reduces the donors side by side, each in place in its
    thread's buffer, and folds them in donor order: the table of one donor after the other."""
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    calls = []
    side_by_side = pipeline.stream_side_by_side
    monkeypatch.setattr(pipeline, "stream_side_by_side",
                        lambda *a, **k: calls.append(1) or side_by_side(*a, **k))
    for options in ({}, {"missing": "interpolate", "gene_norm": "minmax", "sample_norm": None}):
        result = _run(ahba_small, **options)
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "_in_place", lambda *norms: False)
            expected = _run(ahba_small, **options)
        assert result.expression.to_numpy().tobytes() == expected.expression.to_numpy().tobytes()
        pd.testing.assert_frame_equal(result.expression, expected.expression, check_exact=True)
        assert result.group == expected.group
    assert len(calls) == 2  # (the streamed runs went side by side)


@pytest.mark.parametrize("sizes, parts, largest", [
    # the full data's six donors (kept samples): largest first gave 1,569 and 1,468
    ([737, 785, 287, 390, 444, 394], 2, 1521),
    ([5, 5, 4, 3, 3], 2, 10),          # largest first: 9 and 11
    ([7], 3, 7), ([3, 0], 2, 3), ([4, 4, 4, 4], 4, 4), ([9, 1, 1, 1], 3, 9)])
def test_donors_are_split_among_threads_with_the_least_largest_share(sizes, parts, largest):
    import itertools

    named = {f"d{k}": size for k, size in enumerate(sizes)}
    shares = pipeline.balanced_shares(named, parts)
    # every donor once, no share empty, as many shares as threads (at most one per donor)
    assert sorted(d for share in shares for d in share) == sorted(named)
    assert len(shares) == min(parts, len(sizes)) and all(shares)
    assert max(sum(named[d] for d in share) for share in shares) == largest
    # no split does better (every assignment of donors to shares)
    best = min(max(sum(s for s, p in zip(sizes, where) if p == k) for k in range(len(shares)))
               for where in itertools.product(range(len(shares)), repeat=len(sizes))
               if len(set(where)) == len(shares))
    assert largest == best


def test_many_donors_are_split_largest_first():
    sizes = {k: (k * 37) % 101 for k in range(40)}  # too many splits to try them all
    shares = pipeline.balanced_shares(sizes, 2)
    loads = [sum(sizes[d] for d in share) for share in shares]
    assert sorted(d for share in shares for d in share) == sorted(sizes)
    assert abs(loads[0] - loads[1]) <= max(sizes.values())


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


def test_shared_threads(monkeypatch):
    """Within shared_threads, thread_map's calls run on the block's threads (started once):
    the same results in order, pieces that call thread_map run it inline, an error is raised
    only once every piece has ended, and the threads end with the block."""
    import threading
    import time

    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    before = set(threading.enumerate())
    names = set()

    def square(x):
        names.add(threading.current_thread().name)
        return x * x

    ended = []

    def slow_or_fail(x):
        if x == 0:
            raise KeyError(x)
        time.sleep(0.05)
        ended.append(x)

    with _blocks.shared_threads():
        for _ in range(5):
            assert _blocks.thread_map(square, range(20)) == [x * x for x in range(20)]
        assert len(names) <= 2 and threading.current_thread().name not in names
        nested = _blocks.thread_map(lambda x: _blocks.thread_map(lambda y: x + y, range(3)),
                                    range(4))
        assert nested == [[x + y for y in range(3)] for x in range(4)]
        with pytest.raises(KeyError):
            _blocks.thread_map(slow_or_fail, range(4))
        assert sorted(ended) == [1, 2, 3]
        with _blocks.shared_threads():  # nested blocks share the outer one's threads
            assert _blocks.thread_map(square, range(4)) == [0, 1, 4, 9]
        assert _blocks.thread_map(square, range(3), threads=1) == [0, 1, 4]
    assert set(threading.enumerate()) <= before | {threading.current_thread()}


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


@pytest.mark.parametrize("order", ["C", "F", "K"])
def test_own_copy_is_a_copy_in_the_layout_asked(order):
    values = np.asfortranarray(np.random.default_rng(1).random((5, 3)))
    buffer = np.full(20, np.nan)
    for into in (buffer, None, np.zeros(20, dtype=np.float32)):
        copy = _blocks.own_copy(values, order, into)
        assert np.array_equal(copy, values) and not np.shares_memory(copy, values)
        assert copy.flags.writeable
        assert copy.flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]
        # in the buffer given, unless its dtype is not the values'
        assert np.shares_memory(copy, buffer) == (into is buffer)


def test_tables_read_in_file_order_hold_the_same_columns(ahba_small):
    """A donor's table read with its genes in the order of its microarray's rows (as the
    streamed run reads it: no reordering after decoding) holds each gene's column bit for bit."""
    settings = pipeline.Settings(donors=DONORS)
    files, _ = pipeline.locate_data(ahba_small, DONORS)
    _, probes = pipeline.read_probe_tables(files)
    annotations = {d: pipeline.prepare_donor_samples(files[d], probes)[0] for d in DONORS}
    probes = pipeline.filter_probe_table(files, annotations, probes,
                                         ibf_threshold=settings.ibf_threshold)
    tables, _ = pipeline.select_donor_probes(files, annotations, probes)
    for donor in DONORS:
        order = tables.file_order(donor)
        whole = tables.frame(donor, order="C")
        assert not np.array_equal(order, np.arange(len(order)))  # (the test means something)
        samples = np.arange(0, len(whole), 2)
        read = tables.frame(donor, samples, order="C", columns=order)
        assert list(read.columns) == list(whole.columns[order])
        expected = whole.iloc[samples, order].to_numpy()
        assert read.to_numpy().tobytes() == np.ascontiguousarray(expected).tobytes()


def test_reannotation_table_may_come_when_probes_are_read(ahba_small):
    """``read_probe_tables`` takes the reannotation table or a function giving it (the run
    reads it on another thread meanwhile): called once, after Probes.csv is read; the same
    tables either way."""
    from ahba_app import datasets, io

    files, _ = pipeline.locate_data(ahba_small, DONORS)
    table = datasets.load_reannotated()
    calls = []
    read = io.read_probes

    def giving():
        calls.append("table")
        return table

    def reading(path, *args, **kwargs):
        calls.append("probes")
        return read(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "read_probes", reading)
        raw, probes = pipeline.read_probe_tables(files, table=giving)
    assert calls == ["probes", "table"]
    expected_raw, expected = pipeline.read_probe_tables(files, table=table)
    pd.testing.assert_frame_equal(raw, expected_raw)
    pd.testing.assert_frame_equal(probes, expected)
    pd.testing.assert_frame_equal(probes, pipeline.read_probe_tables(files)[1])
