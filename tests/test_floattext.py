"""ahba_app.floattext: Python's repr of float64 values in bulk, byte for byte, and the TSV
writer built on it (the same bytes as pandas' to_csv)."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest

from ahba_app import floattext

AWKWARD = [0.1, 1e-05, 1.5e-07, 1e16, 1e15, 999999999999999.9, 123456789012345.6,
           1234567890123456.7, 123.0, 1.0, 0.0, -0.0, -1.0, 18.400000000000002, 5e-324,
           2.2250738585072014e-308, 1.7976931348623157e308, 1e-4, 9.999999999999999e-05,
           0.00012345, 0.30000000000000004, 1 / 3, 2 / 3, -3.75e-10, 1e22, 1e21, 1e14 + 0.5,
           99999999999999.99, np.inf, -np.inf, 0.5, 2.5, 1e-300, 4.35e-05, 0.9999999999999999]


def _reprs(values, nan="nan"):
    return [nan if x != x else repr(x) for x in np.asarray(values, float).tolist()]


def test_awkward_values_are_written_as_repr_writes_them():
    values = np.array(AWKWARD + [np.nan])
    assert floattext.float_texts(values).to_pylist() == _reprs(values)
    assert floattext.float_texts(values, nan="n/a").to_pylist()[-1] == "n/a"


@pytest.mark.parametrize("kind", ["uniform", "normal", "log-uniform", "bits", "rounded"])
def test_many_values_are_written_as_repr_writes_them(kind):
    rng = np.random.default_rng(16)
    n = 200_000
    values = {
        "uniform": lambda: rng.random(n),  # what normalized region means look like
        "normal": lambda: rng.normal(8, 3, n),
        "log-uniform": lambda: np.exp(rng.uniform(np.log(1e-6), np.log(1e17), n)),
        "bits": lambda: rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64).view(np.float64),
        "rounded": lambda: (rng.random(n) * 10.0 ** rng.integers(-5, 16, n)).round(6),
    }[kind]()
    assert floattext.float_texts(values).to_pylist() == _reprs(values)


@pytest.mark.parametrize("kind", ["uniform", "log-uniform", "bits", "rounded", "awkward"])
def test_region_tables_are_written_as_to_csv_writes_them(tmp_path, kind):
    """The region table writer (orjson's digits, repr's text where orjson's differs) on
    many values of each kind, NaN and infinities among them."""
    rng = np.random.default_rng(8)
    n = 60_000
    values = {
        "uniform": lambda: rng.random(n),
        "log-uniform": lambda: np.exp(rng.uniform(np.log(1e-7), np.log(1e18), n)),
        "bits": lambda: rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64).view(np.float64),
        "rounded": lambda: (rng.random(n) * 10.0 ** rng.integers(-6, 17, n)).round(6),
        "awkward": lambda: rng.choice(np.array(AWKWARD + [np.nan]), n),
    }[kind]().reshape(60, -1)
    values[rng.random(values.shape) < 0.01] = np.nan
    frame = pd.DataFrame(values, index=pd.Index(range(1, 61), name="label"))
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    frame.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
    floattext.write_float_tsv(frame, written)
    assert written.read_bytes() == expected.read_bytes()


@pytest.mark.parametrize("labels", [[3, 1, 20], ["insula L", "x", "caudate"]])
def test_tsv_bytes_equal_to_csv(tmp_path, monkeypatch, labels):
    rng = np.random.default_rng(3)
    values = rng.random((3, 40))
    values[0, :len(AWKWARD)] = AWKWARD
    values[1, 5] = np.nan
    values[1, -1], values[0, -1] = -np.inf, 1e-05  # repr's text at the end of a row too
    values[2] = np.nan  # a row NaN throughout
    frame = pd.DataFrame(values, index=pd.Index(labels, name="label"),
                         columns=[f"G{i}" for i in range(40)])
    expected = tmp_path / "pandas.tsv"
    frame.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
    monkeypatch.setattr(floattext, "_BLOCK_VALUES", 50)  # one row a block, on two threads
    written = tmp_path / "ours.tsv"
    floattext.write_float_tsv(frame, written)
    assert written.read_bytes() == expected.read_bytes()
    floattext.write_float_tsv(frame, written, index_label="region")
    assert written.read_bytes().split(b"\n", 1)[0].startswith(b"region\tG0\tG1")
    floattext.write_float_tsv(frame.iloc[:0], written)
    assert written.read_bytes() == ("\t".join(["label", *frame.columns]) + "\n").encode()


def _helper_table():
    rng = np.random.default_rng(12)
    values = rng.random((9, 50))
    values[0, :len(AWKWARD)] = AWKWARD
    values[6] = np.nan                    # rows NaN throughout, on both sides of the split
    values[1] = np.nan
    values[7, 3], values[8, -1] = 1e-07, -np.inf  # repr's text in the helper's rows
    return pd.DataFrame(values, index=pd.Index(range(1, 10), name="label"),
                        columns=[f"G{i}" for i in range(50)])


def test_rows_helper_writes_its_rows_as_to_csv_writes_them(tmp_path):
    """A helper process formats the last rows and writes them after this process's rows."""
    frame = _helper_table()
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    frame.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
    with floattext.RowsHelper(frame) as helper:
        assert 0 < helper.first < len(frame)
        helper.finish = _spy(helper.finish, sizes := [])
        floattext.write_float_tsv(frame, written, helper=helper)
    assert sizes and sizes[0] is not None and sizes[0] > 0  # the helper wrote its rows
    assert written.read_bytes() == expected.read_bytes()


def _spy(finish, sizes):
    def spied(path, offset):
        sizes.append(finish(path, offset))
        return sizes[-1]
    return spied


def test_rows_helper_that_died_leaves_its_rows_to_this_process(tmp_path):
    frame = _helper_table()
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    frame.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
    with floattext.RowsHelper(frame) as helper:
        helper._server._process.kill()
        floattext.write_float_tsv(frame, written, helper=helper)
    assert written.read_bytes() == expected.read_bytes()
    with floattext.RowsHelper(frame) as helper:  # started on another table: refused
        with pytest.raises(ValueError, match="another table"):
            floattext.write_float_tsv(frame.iloc[1:], written, helper=helper)


def test_rows_helper_only_where_it_pays(monkeypatch):
    from ahba_app import derivatives

    frame = _helper_table()
    monkeypatch.setattr(floattext, "HELPER_MIN_VALUES", 100)
    monkeypatch.setenv("AHBA_APP_THREADS", "2")  # (two CPUs, whatever runs the tests)
    monkeypatch.setattr(derivatives.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    with derivatives.rows_helper(frame) as helper:
        assert isinstance(helper, floattext.RowsHelper)
    with derivatives.rows_helper(frame.iloc[:, :5]) as helper:  # 45 values
        assert helper is None
    with derivatives.rows_helper(frame.fillna(0).clip(-1, 1).astype(np.float32)) as helper:
        assert helper is None
    monkeypatch.setattr(derivatives.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # busy machine
    with derivatives.rows_helper(frame) as helper:  # started all the same: no load test
        assert isinstance(helper, floattext.RowsHelper)
    monkeypatch.setenv("AHBA_APP_THREADS", "1")  # one CPU: nothing to overlap
    with derivatives.rows_helper(frame) as helper:
        assert helper is None


def _mixed_table():
    """A table shaped like the genes and probes tables: text with missing values and empty
    strings, integers (nullable too), floats with NaN and awkward values, a column of None."""
    n = len(AWKWARD)
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "gene_symbol": pd.array([f"G{i}" if i % 7 else f"G-{i},x y" for i in range(n)],
                                dtype="str"),
        "fate": np.array(["kept" if i % 3 else None for i in range(n)], dtype=object),
        "n_probes": rng.integers(-3, 10, n),
        "probe_id": pd.array([None if i % 5 == 0 else 1_000_000 + i for i in range(n)],
                             dtype="Int64"),
        "share": np.array(AWKWARD, dtype=float) * np.where(np.arange(n) % 4, 1.0, np.nan),
        "donors": ["" if i % 2 else "9861,10021" for i in range(n)],
        "threshold": [None] * n,
        "reason": [f"{x:.1%} of the samples; it's" for x in rng.random(n)],
    }, index=pd.Index(range(100, 100 + n), name="index"))


@pytest.mark.parametrize("index", [False, True])
def test_mixed_tables_are_written_as_to_csv_writes_them(tmp_path, index):
    frame = _mixed_table()
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    for table in (frame, frame.iloc[:0], frame.iloc[[3]]):
        table.to_csv(expected, sep="\t", na_rep="n/a", index=index, lineterminator="\n")
        assert floattext.write_table_tsv(table, written, index=index)
        assert written.read_bytes() == expected.read_bytes()
    frame.to_csv(expected, sep="\t", na_rep="n/a", index=True, index_label="region",
                 lineterminator="\n")
    assert floattext.write_table_tsv(frame, written, index=True, index_label="region")
    assert written.read_bytes() == expected.read_bytes()


@pytest.mark.parametrize("change", ["tab", "quote", "newline", "category", "bool", "mixed",
                                    "float32", "one column", "header"])
def test_tables_to_csv_would_write_otherwise_are_left_to_it(tmp_path, change):
    frame = _mixed_table()
    if change in ("tab", "quote", "newline"):
        frame.loc[frame.index[2], "reason"] = {"tab": "a\tb", "quote": 'a "b"',
                                               "newline": "a\nb"}[change]
    elif change == "category":
        frame["fate"] = frame["fate"].astype("category")
    elif change == "bool":
        frame["flag"] = True
    elif change == "mixed":
        frame["reason"] = frame["reason"].astype(object)
        frame.loc[frame.index[1], "reason"] = 1.5
    elif change == "float32":
        frame["share"] = frame["share"].astype(np.float32)
    elif change == "one column":
        frame = frame[["donors"]]
    else:
        frame = frame.rename(columns={"reason": 'the "reason"'})
    written = tmp_path / "ours.tsv"
    assert not floattext.write_table_tsv(frame, written, index=False)
    assert not written.exists()


def test_arrow_text_columns_are_written_as_to_csv_writes_them(tmp_path):
    """Text stored by Arrow (as the nodes' tables are read) is taken from its buffers: missing
    values, empty and non-ASCII strings, and slices of a larger array, as ``to_csv`` writes
    them; a slice whose shared buffer holds a tab outside its rows is written all the same
    (by ``to_csv`` or here: the same bytes)."""
    text = pd.array(["a\tb", None, "", "é ü", "x,y", None, "plain", "it's"] * 50, dtype="str")
    assert type(text).__name__ == "ArrowStringArray"
    frame = pd.DataFrame({"text": text, "n": np.arange(len(text))})
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    assert not floattext.write_table_tsv(frame, written, index=False)  # the tab: to_csv's
    for table in (frame.iloc[1:], frame.iloc[1:8], frame.iloc[[1, 2, 3, 5]]):
        table.to_csv(expected, sep="\t", na_rep="n/a", index=False, lineterminator="\n")
        if floattext.write_table_tsv(table, written, index=False):
            assert written.read_bytes() == expected.read_bytes()
    clean = frame.iloc[[1, 2, 3, 4, 5, 6, 7]].reset_index(drop=True)
    clean["text"] = pd.array(clean["text"].tolist(), dtype="str")  # its own buffer
    clean.to_csv(expected, sep="\t", na_rep="n/a", index=False, lineterminator="\n")
    assert floattext.write_table_tsv(clean, written, index=False)
    assert written.read_bytes() == expected.read_bytes()


def test_rows_helpers_of_a_run_share_one_process(tmp_path, monkeypatch):
    """Within sharing_rows_helper, the tables' helpers are one process, started by the first
    table and ended with the block; each table's bytes are to_csv's, a table whose rows were
    not asked for (written otherwise) leaves the next one right."""
    started = []
    popen = floattext.subprocess.Popen
    monkeypatch.setattr(floattext.subprocess, "Popen",
                        lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    frame = _helper_table()
    other = frame.iloc[::-1] * 3.0
    with floattext.sharing_rows_helper():
        with floattext.RowsHelper(frame):
            pass  # dropped: never asked to write
        for n, table in enumerate([frame, other, frame]):
            expected, written = tmp_path / f"pandas{n}.tsv", tmp_path / f"ours{n}.tsv"
            table.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
            with floattext.RowsHelper(table) as helper:
                helper.finish = _spy(helper.finish, sizes := [])
                floattext.write_float_tsv(table, written, helper=helper)
            assert sizes[0] is not None and sizes[0] > 0
            assert written.read_bytes() == expected.read_bytes()
        assert len(started) == 1 and started[0].poll() is None  # kept for the next table
    assert started[0].wait(timeout=10) == 0  # ended with the block
    with floattext.sharing_rows_helper():
        with floattext.RowsHelper(frame) as first, floattext.RowsHelper(other) as second:
            # two tables at once: the second gets a process of its own
            for n, (table, helper) in enumerate([(frame, first), (other, second)]):
                expected, written = tmp_path / f"both{n}.tsv", tmp_path / f"mine{n}.tsv"
                table.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
                floattext.write_float_tsv(table, written, helper=helper)
                assert written.read_bytes() == expected.read_bytes()
    assert len(started) == 3  # (the run's, and the second table's own)
    started.clear()
    with floattext.RowsHelper(frame):
        pass
    assert len(started) == 1  # outside a run: a process of its own


def test_shared_rows_helper_that_died_leaves_later_tables_to_this_process(tmp_path,
                                                                         monkeypatch):
    from ahba_app import derivatives

    monkeypatch.setattr(floattext, "HELPER_MIN_VALUES", 100)
    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    frame = _helper_table()
    expected, written = tmp_path / "pandas.tsv", tmp_path / "ours.tsv"
    frame.to_csv(expected, sep="\t", na_rep="n/a", lineterminator="\n")
    with floattext.sharing_rows_helper():
        with floattext.RowsHelper(frame) as helper:
            helper._server._process.kill()
            floattext.write_float_tsv(frame, written, helper=helper)
        assert written.read_bytes() == expected.read_bytes()
        with pytest.raises(OSError):
            floattext.RowsHelper(frame)
        with derivatives.rows_helper(frame) as helper:  # (a large table otherwise)
            assert helper is None


def test_a_run_that_fails_kills_its_rows_helper(monkeypatch):
    started = []
    popen = floattext.subprocess.Popen
    monkeypatch.setattr(floattext.subprocess, "Popen",
                        lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    with pytest.raises(RuntimeError, match="stopped"):
        with floattext.sharing_rows_helper():
            floattext.RowsHelper(_helper_table())
            raise RuntimeError("stopped")
    assert started[0].returncode == -signal.SIGKILL  # not left to finish rows of no use
