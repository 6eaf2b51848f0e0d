"""Normalization registry and normalize_expression, checked against abagen 0.1.3."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ahba_app import normalize
from ahba_app.normalize import (ALIASES, METHODS, NORMALIZATIONS, failed_genes, normalize_array,
                                normalize_donor, normalize_expression, resolve_norm)
from oracle import run_abagen

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")

SEED = 20240605
N_GENES = 14
CONST, HAS_NAN, IQR_ZERO, TIES, CONST_IN_CEREBELLUM = 3, 5, 7, 9, 11
EMPTY_ROW = 20
STRUCTURE_NAMES = ("cortex", "subcortex/brainstem", "cerebellum")
UNIT_SCALE = {"minmax", "sigmoid", "scaled_sigmoid", "scaled_sigmoid_quantiles",
              "robust_sigmoid", "scaled_robust_sigmoid", "mixed_sigmoid"}


def _donor(rng, n_samples, special=True):
    """A samples x genes frame of log2-like values, with the awkward columns of real data."""
    values = rng.normal(8.0, 1.5, size=(n_samples, N_GENES))
    if special:
        values[:, CONST] = 5.0
        values[10, HAS_NAN] = np.nan
        values[:, IQR_ZERO] = 3.0
        values[rng.choice(n_samples, 6, replace=False), IQR_ZERO] = rng.normal(3, 1, 6)
        values[:, TIES] = np.round(values[:, TIES])
        values[EMPTY_ROW] = np.nan
    return values


def _structures(n_samples):
    classes = np.array([STRUCTURE_NAMES[0]] * n_samples, dtype=object)
    classes[n_samples // 2:] = STRUCTURE_NAMES[1]
    classes[-n_samples // 6:] = STRUCTURE_NAMES[2]
    return classes


def _frame(values, donor):
    return pd.DataFrame(values,
                        index=pd.Index(np.arange(1, len(values) + 1), name="sample_id"),
                        columns=pd.Index([f"G{g}" for g in range(values.shape[1])],
                                         name="gene_symbol"))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(SEED)
    special = [_donor(rng, n) for n in (60, 45)]
    structures = [_structures(len(v)) for v in special]
    for values, classes in zip(special, structures):
        values[classes == STRUCTURE_NAMES[2], CONST_IN_CEREBELLUM] = 7.25
    clean = [_donor(rng, n, special=False) for n in (60, 45, 30)]
    clean[1][:, CONST] = 5.0  # constant in one donor only
    return {"special": special, "structures": structures, "clean": clean}


SNIPPET = r'''
from abagen import correct

special = [np.load(p) for p in PARAMS["special"]]
structures = [np.asarray(s, dtype=object) for s in PARAMS["structures"]]
clean = [np.load(p) for p in PARAMS["clean"]]
genes = pd.Index([f"G{g}" for g in range(special[0].shape[1])], name="gene_symbol")

def frame(values):
    return pd.DataFrame(values, index=pd.Index(np.arange(1, len(values) + 1), name="sample_id"),
                        columns=genes)

frames = [frame(v) for v in special]
annots = []
for f, s in zip(frames, structures):
    s = s.copy()
    s[s == None] = np.nan
    annots.append(pd.DataFrame({"structure": s}, index=f.index))

for method in PARAMS["methods"]:
    save(f"genes-{method}", correct.normalize_expression(frames, norm=method, ignore_warn=True))
    save(f"structures-{method}",
         correct.normalize_expression(frames, norm=method, structures=annots, ignore_warn=True))
    save(f"samples-{method}",
         correct.normalize_expression(frames[0].T, norm=method, ignore_warn=True).T)
for alias in PARAMS["aliases"]:
    save(f"alias-{alias}", correct.normalize_expression(frames[0], norm=alias, ignore_warn=True))
try:
    correct.normalize_expression([frame(v) for v in clean], norm="batch")
    save("batch-public", "ran")
except Exception as err:
    save("batch-public", type(err).__name__)
# abagen 0.1.3 documents norm='batch' but its normalize_expression rejects it; its model lives
# in the private _batch_correct, which we compare with
save("batch", [pd.DataFrame(a) for a in correct._batch_correct([frame(v) for v in clean])])
save("batch-nan", [pd.DataFrame(a) for a in correct._batch_correct(frames)])
'''


@pytest.fixture(scope="module")
def oracle(inputs, tmp_path_factory):
    work = tmp_path_factory.mktemp("oracle-normalize")
    paths = {}
    for key in ("special", "clean"):
        paths[key] = []
        for n, values in enumerate(inputs[key]):
            path = work / f"{key}{n}.npy"
            np.save(path, values)
            paths[key].append(str(path))
    structures = [[s if n != 7 else None for n, s in enumerate(classes)]
                  for classes in inputs["structures"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(work))
        return run_abagen(SNIPPET, work, methods=list(NORMALIZATIONS), aliases=list(ALIASES),
                          structures=structures, **paths)


def _oracle_structures(inputs):
    """The classes the oracle got: sample 8 (position 7) of each donor has none."""
    out = []
    for classes in inputs["structures"]:
        classes = classes.copy()
        classes[7] = None
        out.append(classes)
    return out


def assert_same(ours: pd.DataFrame, theirs: pd.DataFrame, method: str):
    assert list(ours.index) == list(theirs.index)
    assert ours.index.name == theirs.index.name
    assert list(ours.columns) == list(theirs.columns)
    assert ours.columns.name == theirs.columns.name
    a, b = ours.to_numpy(dtype=float), theirs.to_numpy(dtype=float)
    if method == "scaled_sigmoid_quantiles":
        # deliberate difference (test_quantiles_differs_on_degenerate_columns): where the
        # clipped sd is 0 or the column holds NaN, abagen's masked arrays yield 1.0, ours NaN
        degenerate = np.isnan(a) & ~np.isnan(b)
        np.testing.assert_array_equal(b[degenerate], 1.0)
        b = np.where(degenerate, np.nan, b)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN cells of {method}")
    if method in UNIT_SCALE:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, equal_nan=True, err_msg=method)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=method)


# ---------------------------------------------------------------------------------------------
# parity with abagen
# ---------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("method", list(NORMALIZATIONS))
def test_gene_norm_matches_abagen(method, inputs, oracle):
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    ours = normalize_expression(frames, norm=method, ignore_warn=True)
    for o, t in zip(ours, oracle[f"genes-{method}"]):
        assert_same(o, t, method)


@pytest.mark.oracle
@pytest.mark.parametrize("method", list(NORMALIZATIONS))
def test_norm_structures_matches_abagen(method, inputs, oracle):
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    annots = [pd.DataFrame({"structure": s}, index=f.index)
              for s, f in zip(_oracle_structures(inputs), frames)]
    ours = normalize_expression(frames, norm=method, structures=annots, ignore_warn=True)
    for o, t in zip(ours, oracle[f"structures-{method}"]):
        assert_same(o, t, method)
        assert o.iloc[7].isna().all()  # a sample without a structural class stays NaN


@pytest.mark.oracle
@pytest.mark.parametrize("method", list(NORMALIZATIONS))
def test_sample_norm_matches_abagen(method, inputs, oracle):
    frame = _frame(inputs["special"][0], 0)
    ours = pd.DataFrame(normalize_array(frame.to_numpy(), method, axis=1), index=frame.index,
                        columns=frame.columns)
    assert_same(ours, oracle[f"samples-{method}"], method)
    # the DataFrame route abagen's get_expression_data takes gives the same
    assert_same(normalize_expression(frame.T, norm=method).T, ours, method)


@pytest.mark.oracle
@pytest.mark.parametrize("alias", list(ALIASES))
def test_aliases_match_abagen(alias, inputs, oracle):
    frame = _frame(inputs["special"][0], 0)
    assert_same(normalize_expression(frame, norm=alias), oracle[f"alias-{alias}"],
                ALIASES[alias])


@pytest.mark.oracle
def test_batch_matches_abagen_model(inputs, oracle):
    frames = [_frame(v, n) for n, v in enumerate(inputs["clean"])]
    ours = normalize_expression(frames, norm="batch")
    for o, t in zip(ours, oracle["batch"]):
        np.testing.assert_allclose(o.to_numpy(), t.to_numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.oracle
def test_batch_with_missing_values_matches_abagen_model(inputs, oracle):
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    ours = normalize_expression(frames, norm="batch")
    for frame, out, theirs in zip(frames, ours, oracle["batch-nan"]):
        assert out.iloc[EMPTY_ROW].isna().all()  # abagen leaves empty samples out of its fit
        kept = out.drop(index=out.index[EMPTY_ROW])
        assert kept.isna().any().tolist() == [g == HAS_NAN for g in range(N_GENES)]
        np.testing.assert_allclose(kept.to_numpy(), theirs.to_numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.oracle
def test_batch_differs_from_abagen(inputs, oracle):
    """abagen 0.1.3 documents norm='batch' but its normalize_expression rejects the name (and
    its model would fail on more than one structural class). Ours runs, fitting the donor
    model within each structural class."""
    assert oracle["batch-public"] == "ValueError"
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    annots = list(inputs["structures"])
    per_class = normalize_expression(frames, norm="batch", structures=annots)
    # within a class the result equals batch correction of that class's samples alone
    cls = STRUCTURE_NAMES[1]
    alone = normalize_expression([f.loc[s == cls] for f, s in zip(frames, inputs["structures"])],
                                 norm="batch")
    for full, part, classes in zip(per_class, alone, inputs["structures"]):
        pd.testing.assert_frame_equal(full.loc[classes == cls], part)


@pytest.mark.oracle
def test_quantiles_differs_on_degenerate_columns(inputs, oracle):
    """abagen's scaled_sigmoid_quantiles runs on numpy masked arrays: where the sd of the
    clipped values is 0 (constant genes, or > 90 % ties) or the gene holds a NaN, every result
    is masked and comes out as the constant 1.0, so such a gene survives as a flat 1.0
    everywhere. Ours gives NaN, like every other sigmoid, and the gene is dropped."""
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    ours = normalize_expression(frames, norm="scaled_sigmoid_quantiles")
    theirs = oracle["genes-scaled_sigmoid_quantiles"]
    # 6 of donor 0's 60 values of G7 differ from the rest: its 5-95 % range holds ties only
    degenerate = [(f"G{CONST}", f"G{HAS_NAN}", f"G{IQR_ZERO}"), (f"G{CONST}", f"G{HAS_NAN}")]
    for o, t, genes in zip(ours, theirs, degenerate):
        rows = o.index[o.notna().any(axis=1)]
        for gene in genes:
            assert o.loc[rows, gene].isna().all()
            assert (t.loc[rows, gene] == 1.0).all()
    assert list(failed_genes(ours)) == [f"G{CONST}", f"G{HAS_NAN}", f"G{IQR_ZERO}"]


# ---------------------------------------------------------------------------------------------
# our behaviour
# ---------------------------------------------------------------------------------------------

def test_registry_names():
    assert METHODS == ("center", "zscore", "minmax", "sigmoid", "scaled_sigmoid",
                       "scaled_sigmoid_quantiles", "robust_sigmoid", "scaled_robust_sigmoid",
                       "mixed_sigmoid", "batch")
    assert all(resolve_norm(alias) == name for alias, name in ALIASES.items())
    assert resolve_norm("srs") == "scaled_robust_sigmoid"
    assert resolve_norm(None) is None
    assert normalize.IQR_NORMAL == pytest.approx(1.3489795003921634, rel=1e-15)


def test_iqr_normal_is_the_computed_float():
    # written out in normalize.py (no scipy import); must be the very float the formula gives
    import math

    from scipy.special import erfinv

    assert normalize.IQR_NORMAL == 2.0 * math.sqrt(2.0) * float(erfinv(0.5))


@pytest.mark.parametrize("bad", ["robust", "SRS", 3, ""])
def test_unknown_method_names_value(bad):
    with pytest.raises(ValueError, match="Unknown normalization") as err:
        resolve_norm(bad)
    assert repr(bad) in str(err.value) and "'scaled_robust_sigmoid'" in str(err.value)
    with pytest.raises(ValueError):
        normalize_expression(pd.DataFrame(np.ones((3, 2))), norm=bad)


def test_bad_shapes_and_inputs():
    with pytest.raises(ValueError, match="2-D"):
        normalize_array(np.ones(5))
    with pytest.raises(ValueError, match="axis"):
        normalize_array(np.ones((3, 3)), axis=2)
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(6, 3)))
    with pytest.raises(ValueError, match="6 samples"):
        normalize_expression(frame, structures=pd.DataFrame({"structure": ["a"] * 5}))
    with pytest.raises(ValueError, match="'structure' column"):
        normalize_expression(frame, structures=pd.DataFrame({"cls": ["a"] * 6}))
    with pytest.raises(ValueError, match="at least two donors"):
        normalize_expression(frame, norm="batch")
    with pytest.raises(ValueError, match="every donor"):
        normalize_array(frame.to_numpy(), "batch")
    for bad in (np.ones((3, 3)), [], {}):
        with pytest.raises(ValueError, match="DataFrame"):
            normalize_expression(bad)


def test_float32_stays_float32(inputs):
    values = inputs["special"][0]
    for method in NORMALIZATIONS:
        out32 = normalize_array(values.astype(np.float32), method)
        out64 = normalize_array(values, method)
        assert out32.dtype == np.float32 and out64.dtype == np.float64
        np.testing.assert_array_equal(np.isnan(out32), np.isnan(out64))
        # float32 input carries ~1e-7 relative error into the statistics
        np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4, equal_nan=True,
                                   err_msg=method)


def test_blocks_do_not_change_results(inputs, monkeypatch):
    values = inputs["special"][0]
    whole = normalize_array(values, "srs")
    monkeypatch.setattr(normalize, "_BLOCK_ELEMENTS", 100)  # a couple of columns per block
    monkeypatch.setattr(normalize, "_SMALL_BLOCK_ELEMENTS", 100)
    np.testing.assert_array_equal(normalize_array(values, "srs"), whole)
    np.testing.assert_array_equal(normalize_array(values.T, "srs", axis=1), whole.T)


@pytest.mark.parametrize("method", METHODS[:-1])
def test_threads_outputs_and_buffers_do_not_change_results(inputs, monkeypatch, method):
    values = inputs["special"][0]
    monkeypatch.setattr(normalize, "_BLOCK_ELEMENTS", 100)  # several blocks (the same in
    monkeypatch.setattr(normalize, "_SMALL_BLOCK_ELEMENTS", 100)  # both runs: sums depend on them)
    monkeypatch.setenv("AHBA_APP_THREADS", "1")
    alone = normalize_array(values, method)
    by_rows = normalize_array(values.T, method, axis=1)
    monkeypatch.setenv("AHBA_APP_THREADS", "3")  # the blocks on threads
    assert np.array_equal(normalize_array(values, method), alone, equal_nan=True)
    for order in "CF":  # the result written into the caller's array, of either layout
        out = np.empty(values.shape, order=order)
        assert normalize_array(values, method, out=out) is out
        assert np.array_equal(out, alone, equal_nan=True)
        out = np.empty(values.T.shape, order=order)
        assert np.array_equal(normalize_array(values.T, method, axis=1, out=out), by_rows,
                              equal_nan=True)
    if normalize.layout_independent(method):  # then the input's layout does not matter
        for layout in (np.asfortranarray, np.ascontiguousarray):
            assert np.array_equal(normalize_array(layout(values), method), alone,
                                  equal_nan=True)
    if normalize.layout_independent(method):  # over its own input: the same numbers
        own = values.copy()
        assert normalize_array(own, method, out=own) is own
        assert np.array_equal(own, alone, equal_nan=True)
        own = np.asfortranarray(values.T)
        normalize_array(own, method, axis=1, out=own)
        assert np.array_equal(own, by_rows, equal_nan=True)
    else:
        with pytest.raises(ValueError, match="apart from the input"):
            normalize_array(values, method, out=values)
    # memory overlapping the input otherwise (shifted by one value) is refused, whatever the
    # method
    both = np.concatenate([values.ravel(), [0.0]])
    with pytest.raises(ValueError, match="apart from the input"):
        normalize_array(both[:-1].reshape(values.shape), method,
                        out=both[1:].reshape(values.shape))


def test_normalize_donor_into_buffers(inputs):
    frame = _frame(inputs["special"][0], 0)
    expected = normalize_donor(frame, "srs", "zscore")
    size = frame.size + 5
    first, second = np.full(size, -1.0), np.full(size, -1.0)
    out = normalize_donor(frame, "srs", "zscore", buffers=(first, second))
    pd.testing.assert_frame_equal(out, expected)
    assert np.shares_memory(out.to_numpy(), second)  # the result lives in the second buffer
    # a buffer holding the input is never written over while it is read
    values = np.ascontiguousarray(frame.to_numpy())
    held = np.concatenate([values.ravel(), [0.0] * 5])
    source = pd.DataFrame(held[:frame.size].reshape(frame.shape), index=frame.index,
                          columns=frame.columns)
    out = normalize_donor(source, None, "srs", buffers=(first, held))
    pd.testing.assert_frame_equal(out, normalize_donor(frame, None, "srs"))
    assert np.shares_memory(out.to_numpy(), first)


@pytest.mark.parametrize("sample_norm, gene_norm", [("srs", "srs"), ("rs", "minmax"),
                                                    ("zscore", "srs"), ("srs", "zscore"),
                                                    (None, "srs")])
def test_normalize_donor_buffers_give_the_same_bits(inputs, sample_norm, gene_norm):
    # with buffers, a gene normalization that does not sum reads the sample normalization's
    # result samples-contiguous (no transposed copy); without, genes-contiguous: the numbers
    # are the same bit for bit, on data with NaN, ties, constant columns and infinities
    values = inputs["special"][0].copy()
    values[3, 5] = np.inf
    values[10, 7] = -np.inf
    values[:, 2] = np.round(values[:, 2])   # ties
    frame = _frame(values, 0)
    expected = normalize_donor(frame, sample_norm, gene_norm).to_numpy()
    for layout in (np.ascontiguousarray, np.asfortranarray):
        source = pd.DataFrame(layout(values), index=frame.index, columns=frame.columns)
        first, second = np.full(values.size, -1.0), np.full(values.size, -1.0)
        out = normalize_donor(source, sample_norm, gene_norm, buffers=(first, second))
        assert out.to_numpy().tobytes() == np.ascontiguousarray(expected).tobytes()
        # in the table's own memory (out=) when neither method's numbers depend on the
        # layout, else in new memory: the same bits either way
        own = layout(values).copy(order="K")  # (the data are written over)
        source = pd.DataFrame(own, index=frame.index, columns=frame.columns, copy=False)
        out = normalize_donor(source, sample_norm, gene_norm, out=own)
        assert out.to_numpy().tobytes() == np.ascontiguousarray(expected).tobytes()
        in_place = all(norm is None or normalize.layout_independent(norm)
                       for norm in (sample_norm, gene_norm))
        assert np.shares_memory(out.to_numpy(), own) == in_place
        assert np.array_equal(own, values, equal_nan=True) != in_place


def test_input_is_not_modified(inputs):
    frame = _frame(inputs["special"][0], 0)
    before = frame.copy()
    for method in METHODS[:-1]:
        normalize_expression(frame, norm=method)
    pd.testing.assert_frame_equal(frame, before)
    column = inputs["special"][0][:, :1].copy()  # a (n, 1) block is C- and F-contiguous
    kept = column.copy()
    for method in METHODS[:-1]:
        normalize_array(column, method)
        normalize_array(column.T, method, axis=1)
    np.testing.assert_array_equal(column, kept)


def test_shapes_of_results(inputs):
    frames = {"9861": _frame(inputs["special"][0], 0), "10021": _frame(inputs["special"][1], 1)}
    out = normalize_expression(frames)
    assert isinstance(out, dict) and list(out) == ["9861", "10021"]
    assert isinstance(normalize_expression(frames["9861"]), pd.DataFrame)
    assert isinstance(normalize_expression([frames["9861"]]), pd.DataFrame)  # as abagen
    assert normalize_expression(frames["9861"], norm=None) is frames["9861"]


def test_failed_genes_counts_what_normalization_lost(inputs, caplog):
    frames = [_frame(v, n) for n, v in enumerate(inputs["special"])]
    with caplog.at_level(logging.WARNING, logger="ahba_app.normalize"):
        srs = normalize_expression(frames, norm="srs")
    assert list(failed_genes(srs)) == ["G3", "G5", "G7"]
    assert "left 3 of 14 genes undefined" in caplog.text
    # mixed_sigmoid sets what it cannot normalize to 0 instead
    assert len(failed_genes(normalize_expression(frames, norm="mixed_sigmoid"))) == 0
    annots = list(inputs["structures"])
    by_class = normalize_expression(frames, norm="srs", structures=annots)
    assert list(failed_genes(by_class)) == ["G3", "G5", "G7", "G11"]
    cerebellum = inputs["structures"][0] == STRUCTURE_NAMES[2]
    assert by_class[0].loc[cerebellum, "G11"].isna().all()
    assert by_class[0].loc[~cerebellum, "G11"].drop(index=EMPTY_ROW + 1).notna().all()


def test_normalize_donor_matched_and_structures(inputs):
    frame = _frame(inputs["special"][0], 0)
    classes = pd.Series(inputs["structures"][0], index=frame.index)
    matched = np.arange(len(frame)) % 3 != 0
    out = normalize_donor(frame, "srs", "zscore", matched=matched, structures=classes)
    assert list(out.index) == list(frame.index[matched])
    step1 = normalize_expression(frame.loc[matched].T, norm="srs").T
    step2 = normalize_expression(step1, norm="zscore",
                                 structures=pd.DataFrame({"structure": classes[matched]}))
    pd.testing.assert_frame_equal(out, step2)
    # norm_matched=False: everything is normalized
    assert len(normalize_donor(frame, None, "srs")) == len(frame)
    with pytest.raises(ValueError, match="mask"):
        normalize_donor(frame, matched=matched[:-1])
    with pytest.raises(ValueError, match="every donor"):
        normalize_donor(frame, gene_norm="batch")


@pytest.mark.parametrize("n", [560, 946, 4096, 5001, 15000])
def test_long_columns_partitioned_give_the_sorted_numbers(monkeypatch, n):
    """Columns of at least _PARTITION_MIN values (a sample across ~15,000 genes; here every
    length is made long) take their median and quartiles from partitions: numpy's
    median/percentile and the full sort, bit for bit, with ties, a constant column and a NaN."""
    from ahba_app import normalize as nm

    rng = np.random.default_rng(n)
    x = rng.normal(8, 2, (n, 5)).round(2)  # many ties
    x[:, 1] = 3.25
    x[7, 2] = np.nan
    monkeypatch.setattr(nm, "_PARTITION_MIN", 1)  # the partitioning path
    centre, scale = nm._robust_centre_scale(x)
    with np.errstate(invalid="ignore"):
        median = np.median(x, axis=0)
        iqr = (np.percentile(x, 75, axis=0) - np.percentile(x, 25, axis=0)) / nm.IQR_NORMAL
    assert np.array_equal(centre[0], median, equal_nan=True)
    assert np.array_equal(scale[0], iqr, equal_nan=True)
    fast = nm._scaled_robust_sigmoid(x.copy())
    monkeypatch.setattr(nm, "_PARTITION_MIN", n + 1)  # the sorting path
    sorted_centre, sorted_scale = nm._robust_centre_scale(x)
    assert np.array_equal(centre.view(np.int64), sorted_centre.view(np.int64))
    assert np.array_equal(scale.view(np.int64), sorted_scale.view(np.int64))
    assert np.array_equal(fast.view(np.int64), nm._scaled_robust_sigmoid(x.copy()).view(np.int64))


@pytest.mark.parametrize("n_rows", [23, 900])
@pytest.mark.parametrize("kind", ["plain", "nan", "ties", "constant", "infinite", "descending",
                                  "wide", "subnormal", "few", "short", "tiny"])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("counting", [False, True], ids=["numpy", "counting"])
def test_selected_positions_equal_a_sort(monkeypatch, kind, n_rows, layout, counting):
    # the partitions (or counts, ahba_app.order_stats: here for every length) that find a
    # robust sigmoid's positions in long columns give the values a full sort puts there, bit
    # for bit, whatever the data (in chunks of a few columns)
    from ahba_app import normalize as nm

    monkeypatch.setattr(nm, "_SELECT_ELEMENTS", 5_000)
    monkeypatch.setattr(nm, "_COUNTED_ELEMENTS", 5_000)
    monkeypatch.setattr(nm, "_COUNTING_MIN", 2)
    kinds = ["plain", "nan", "ties", "constant", "infinite", "descending", "wide", "subnormal",
             "few", "short", "tiny"]
    rng = np.random.default_rng(kinds.index(kind))
    n = {"few": 5, "short": 946, "tiny": 2}.get(kind, 15_001 if kind == "ties" else 4_096 + 17)
    if n_rows > 23:
        n = min(n, 946)
    rows = np.round(rng.normal(8, 2, size=(n_rows, n)), 6)
    if kind == "nan":
        rows[rng.random(rows.shape) < 0.001] = np.nan
    elif kind == "ties":
        rows = np.round(rows)
    elif kind == "constant":
        rows[::3] = 7.25
    elif kind == "infinite":
        rows[rng.random(rows.shape) < 0.01] = np.inf
        rows[rng.random(rows.shape) < 0.01] = -np.inf
        rows[0, 0] = np.inf            # a row whose range is infinite but holds no NaN
    elif kind == "descending":
        rows = -np.sort(-rows, axis=1)
    elif kind == "wide":
        rows = rng.standard_cauchy(rows.shape) * 1e300
    elif kind == "subnormal":
        rows = rng.random(rows.shape) * 1e-310
    positions = {n // 2 - 1, n // 2, *nm._quantile_positions(n, 0.25),
                 *nm._quantile_positions(n, 0.75)}
    expected = np.sort(rows, axis=1)
    given = rows.T.copy()   # (a sample's values are a column, here contiguous or not)
    found = nm._Selected(given if layout == "C" else np.asfortranarray(given), positions,
                         counting=counting)
    assert given.tobytes() == rows.T.tobytes()  # only read: callers pass their own columns
    holds_nan = np.isnan(expected[:, -1])
    assert np.isnan(found[:, -1][holds_nan]).all()
    for pos in [*(p for p in positions if p >= 0), n - 1, -1]:
        assert found[:, pos][~holds_nan].tobytes() == expected[:, pos][~holds_nan].tobytes()


@pytest.mark.parametrize("seed", range(4))
def test_selected_positions_of_mostly_nan_columns_equal_a_sort(monkeypatch, seed):
    # any positions, columns holding more NaN than numbers: a part left below a partition's
    # NaN may hold NaN and numbers, and its first position is its smallest number
    from ahba_app import normalize as nm

    monkeypatch.setattr(nm, "_PARTITION_MIN", 1)  # the partitioning path
    rng = np.random.default_rng(seed)
    n = 40
    columns = rng.normal(size=(n, 30))
    columns[rng.random(columns.shape) < 0.6] = np.nan
    for _ in range(20):
        positions = sorted(set(rng.integers(0, n - 1, size=rng.integers(1, 8)).tolist()))
        found = nm._Selected(columns, positions)
        expected = np.sort(columns.T, axis=1)
        for pos in [*positions, n - 1]:
            np.testing.assert_array_equal(found[:, pos], expected[:, pos])
    # (the case that found it: positions 1-4 of six numbers and two NaN)
    column = np.array([[1.0], [np.nan], [3.0], [2.0], [np.nan], [6.0], [0.5], [4.0]])
    assert nm._Selected(column, [1, 2, 3, 4])[:, 4][0] == 4.0


@pytest.mark.parametrize("layout", ["C", "F"])
def test_empty_rows_are_the_rows_nan_throughout(monkeypatch, layout):
    # only the rows NaN in the first column are read whole: rows NaN there but not
    # everywhere, or NaN everywhere but there, are not empty; over several blocks of rows
    from ahba_app import normalize as nm

    monkeypatch.setattr(nm, "_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(200, 30))
    x[rng.random(x.shape) < 0.05] = np.nan
    x[::3, 0] = np.nan                  # NaN in the first column only (among others)
    x[::7] = np.nan                     # empty rows
    x[5, 1:] = np.nan                   # NaN everywhere but in the first column
    x[11, :-1] = np.nan                 # NaN everywhere but in the last column
    x = np.asarray(x, order=layout)
    expected = np.isnan(x).all(axis=1)
    assert expected.sum() == len(range(0, 200, 7))
    assert np.array_equal(nm._empty_rows(x), expected)
    assert np.array_equal(nm._empty_rows(x.T), np.isnan(x.T).all(axis=1))
    assert not nm._empty_rows(np.arange(6).reshape(3, 2)).any()      # integers: never NaN
    assert nm._empty_rows(np.empty((4, 0))).all()                     # no column: nothing


def test_logistic_equals_the_formula_bit_for_bit():
    # the logistic subtracts x from the centre (one pass less than negating x - centre): the
    # same bits as 1 / (1 + exp(-(x - centre) / scale)), zeros and infinities included
    from ahba_app.normalize import _logistic

    rng = np.random.default_rng(5)
    x = np.round(rng.normal(8, 2, size=(300, 40)), 6)
    x[0, :3] = [np.inf, -np.inf, 0.0]
    x[1, :] = 7.5                      # equal to the centre: zeros of both signs
    centre = np.median(x, axis=0, keepdims=True)
    centre[0, 3] = 7.5
    scale = rng.random((1, 40)) + 0.1
    with np.errstate(all="ignore"):
        expected = 1 / (1 + np.exp(-(x - centre) / scale))
        found = _logistic(x, centre, scale)
    assert np.isnan(found).sum() == np.isnan(expected).sum()
    assert found.tobytes() == expected.tobytes()


@pytest.mark.parametrize("n_rows, n_cols, parts", [(785, 14_710, 2), (287, 14_710, 2),
                                                    (14_710, 785, 4), (10, 3, 2), (10, 1, 2),
                                                    (10, 0, 2), (100, 7, 3)])
def test_even_blocks_cover_every_column_once(n_rows, n_cols, parts):
    from ahba_app.normalize import _even_blocks

    elements = 1 << 20 if n_rows > 100 else 200
    blocks = _even_blocks(n_rows, n_cols, elements, parts)
    assert [c for b in blocks for c in range(b.start, b.stop)] == list(range(n_cols))
    widths = [b.stop - b.start for b in blocks]
    assert all(w * n_rows <= max(elements, n_rows) for w in widths)
    if n_cols >= parts:
        assert len(blocks) % parts == 0 and max(widths) - min(widths) <= 1


def test_normalize_array_same_bits_whatever_the_threads(monkeypatch):
    # the methods that neither sum nor depend on their blocks are cut into as many blocks as
    # threads allow: one thread or four, the same numbers
    rng = np.random.default_rng(11)
    x = np.round(rng.normal(8, 2, size=(700, 3_000)), 6)
    results = []
    for threads in ("1", "4"):
        monkeypatch.setenv("AHBA_APP_THREADS", threads)
        results.append([normalize.normalize_array(x, "scaled_robust_sigmoid", axis=a).tobytes()
                        for a in (0, 1)])
    assert results[0] == results[1]
