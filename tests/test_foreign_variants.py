"""benchmarks/foreign.py's variants of the synthetic data (files not shaped like ours): the
script runs, and ahba-app reads each variant to the numbers its text holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ahba_app import io

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import foreign  # noqa: E402
import run  # noqa: E402


def _parsed_by_python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probe ids, values) of a matrix CSV, each field unquoted and read by ``float``."""
    ids, rows = [], []
    for line in path.read_bytes().splitlines():
        fields = [field.strip(b'"') for field in line.split(b",")]
        ids.append(int(fields[0]))
        rows.append([float(field) for field in fields[1:]])
    return np.array(ids), np.array(rows)


@pytest.fixture(scope="module")
def variants(ahba_small, tmp_path_factory):
    work = tmp_path_factory.mktemp("foreign")
    return {name: foreign.make_variant(name, ahba_small, work / name, jobs=1)
            for name in foreign.VARIANTS}


def test_help_runs():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "foreign.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--variants" in result.stdout and "--abagen-venv" in result.stdout


def test_script_makes_the_text_variant(ahba_small, tmp_path):
    data = run.link_data(ahba_small, tmp_path / "data")
    foreign.main(["--work", str(tmp_path / "work"), "--data", str(data), "--variants", "text",
                  "--make-only"])
    donor = run.donor_folder(tmp_path / "work" / "variant-text", "12876")
    text = (donor / "PACall.csv").read_bytes()
    assert text.startswith(b'"') and b'"\r\n"' in text and not text.endswith(b"\n")
    # the unchanged source stays unchanged (the variant's files are new files, not links)
    assert (run.donor_folder(data, "12876") / "PACall.csv").read_bytes()[:1] != b'"'
    # the same numbers, the same cache: its bytes per value counted alike (no final newline)
    sizes = []
    for root in (data, tmp_path / "work" / "variant-text"):
        for donor in run.DONORS:
            for name, kind in (("MicroarrayExpression.csv", "microarray"),
                               ("PACall.csv", "pacall")):
                io.ensure_cache(run.donor_folder(root, donor) / name, kind)
        sizes.append(foreign.cache_bytes_per_value(root))
    for name, size in sizes[0].items():   # (headers differ: the source's path and size)
        assert size == pytest.approx(sizes[1][name], rel=1e-3) and size > 0.1


@pytest.mark.parametrize("name", foreign.VARIANTS)
def test_cache_reads_every_value_of_a_variant_exactly(variants, name):
    """Quoted, CRLF, unterminated, reordered, rescaled, mixed-precision and scientific-notation
    files: the cache decodes every value to float(text), bit for bit, and every call."""
    for donor in run.DONORS:
        folder = run.donor_folder(variants[name], donor)
        ids, values = _parsed_by_python(folder / "MicroarrayExpression.csv")
        frame = io.read_microarray(folder / "MicroarrayExpression.csv")
        assert np.array_equal(frame.index.to_numpy(), ids)
        assert np.array_equal(frame.to_numpy().view(np.int64), values.view(np.int64)), donor
        call_ids, calls = _parsed_by_python(folder / "PACall.csv")
        pacall = io.read_pacall(folder / "PACall.csv")
        assert np.array_equal(pacall.index.to_numpy(), call_ids)
        assert np.array_equal(pacall.to_numpy(), calls.astype(np.int64)), donor


def test_reordered_and_requoted_variants_give_the_same_table(ahba_small, variants):
    """Only text and order differ from the source: the same table (order: the sum over samples
    in another order may round differently in the last bit, no more)."""
    import ahba_app

    dk = ahba_app.fetch_desikan_killiany()
    tables = {name: ahba_app.get_expression_data(dk["image"], dk["info"], data_dir=str(folder))
              for name, folder in [("source", ahba_small), *variants.items()]}
    source = tables["source"].to_numpy()
    for name in ("text", "order"):
        assert tables[name].index.equals(tables["source"].index)
        assert tables[name].columns.equals(tables["source"].columns)
    assert np.array_equal(tables["text"].to_numpy().view(np.int64), source.view(np.int64))
    np.testing.assert_allclose(tables["order"].to_numpy(), source, rtol=0, atol=1e-12)
    # the numbers variant changes the values: a different table, of the same shape
    assert tables["numbers"].shape[0] == tables["source"].shape[0]
    assert not tables["numbers"].equals(tables["source"])


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
@pytest.mark.parametrize("final", [True, False])
def test_plain_pacall_reader_takes_quotes_and_crlf(tmp_path, quoted, line_end, final):
    """Every field quoted, CRLF line ends and no line end at the end of the file keep PACall on
    the fast byte reader (it fell back to pyarrow's parser, ~8 times the CPU, for the first
    two), with the same ids and calls as pyarrow gives."""
    rng = np.random.default_rng(3)
    calls = rng.integers(0, 2, (40, 19))
    ids = rng.choice(np.arange(10**5, 10**7), 40, replace=False)
    ids[:5] = [7, 12, 100, 1058685, 9]   # lines of several lengths

    def field(value):
        return f'"{value}"' if quoted else str(value)

    lines = [",".join(field(v) for v in [i, *row]) for i, row in zip(ids, calls)]
    text = line_end.join(line.encode() for line in lines) + (line_end if final else b"")
    path = tmp_path / "PACall.csv"
    path.write_bytes(text)
    blocks = io._plain_calls(path, calls.shape[1])
    assert blocks is not None
    got_ids = np.concatenate([block[0] for block in blocks])
    got = np.unpackbits(np.concatenate([block[1] for block in blocks]), axis=1)[:, :19]
    assert np.array_equal(got_ids, ids) and np.array_equal(got, calls)
    frame = io.read_pacall(path)
    assert np.array_equal(frame.index.to_numpy(), ids)
    assert np.array_equal(frame.to_numpy(), calls)


@pytest.mark.parametrize("text", [
    b'"1","0","1"\n2,0,1\n',          # quoted first line, then a plain one
    b'1,0,1\r\n2,0,1\n',              # CRLF first line, then LF
    b'"1","0","1"\n"2","0",1\n',      # one field unquoted
    b'"1",",0","1"\n',                # a quote out of place
])
def test_plain_pacall_reader_refuses_mixed_forms(tmp_path, text):
    """Lines not in the first line's form go to pyarrow's parser (None here)."""
    path = tmp_path / "PACall.csv"
    path.write_bytes(text)
    assert io._plain_calls(path, 2) is None


def _write_matrix(path: Path, rows: list) -> Path:
    path.write_text("".join(f"{1000 + i},{row}\n" for i, row in enumerate(rows)))
    return path


def _values_by_float(path: Path) -> np.ndarray:
    return _parsed_by_python(path)[1]


def test_each_row_is_stored_at_its_own_fewest_decimals(tmp_path, monkeypatch):
    """Rows of 6 decimals after rows of 11 (a file of mixed precisions, many blocks) keep 3
    bytes a value; they took the 11 decimals of the first block's rows (5 bytes) before."""
    monkeypatch.setattr(io, "_BLOCK_SIZE", 1 << 10)
    rng = np.random.default_rng(5)
    values = rng.uniform(1.5, 9.9, (600, 6))
    rows = [",".join(f"{v:.11f}" for v in row) for row in values[:300]]
    rows += [",".join(f"{v:.6f}" for v in row) for row in values[300:]]
    path = _write_matrix(tmp_path / "MicroarrayExpression.csv", rows)
    matrix = io.load_matrix(path)
    assert set(matrix.codes.divisor[300:]) <= {10.0 ** k for k in range(7)}
    assert set(matrix.codes.segment[300:]) <= {1, 2, 3}
    assert np.array_equal(matrix.to_frame().to_numpy().view(np.int64),
                          _values_by_float(path).view(np.int64))


def test_a_short_row_does_not_make_other_rows_search_every_decimal(tmp_path, monkeypatch):
    """A constant row (a control probe) at the top of a 17-digit file: every other row is
    tried once, in binary; before, each later row tried every number of decimals first."""
    monkeypatch.setattr(io, "_BLOCK_SIZE", 1 << 12)
    rng = np.random.default_rng(6)
    rows = ["5.5," * 7 + "5.5"] + [",".join(repr(float(v)) for v in row)
                                   for row in rng.uniform(1.5, 18.4, (400, 8))]
    path = _write_matrix(tmp_path / "MicroarrayExpression.csv", rows)
    tried = []
    fit = io._RowEncoder._fit

    def counting(values, *args, **kwargs):
        tried.append(len(values))
        return fit(values, *args, **kwargs)

    monkeypatch.setattr(io._RowEncoder, "_fit", staticmethod(counting))
    matrix = io.load_matrix(path)
    assert sum(tried) <= 2 * len(rows)
    assert matrix.codes.divisor[0] == 10.0
    assert np.array_equal(matrix.to_frame().to_numpy().view(np.int64),
                          _values_by_float(path).view(np.int64))


def test_tables_compared_bit_for_bit_or_within_a_tolerance(tmp_path):
    """The benchmark's one comparison of two tables: "exact" asks for the same bits, a number
    for a largest absolute difference (a table one ulp apart passes the second only)."""
    import pandas as pd

    table = pd.DataFrame({"A1BG": [0.25, np.nan], "A2M": [1.0, 0.5]}, index=[1, 2])
    apart = table.copy()
    apart.iloc[1, 1] = np.nextafter(0.5, 1.0)
    paths = {}
    for name, frame in (("table", table), ("same", table.copy()), ("apart", apart)):
        paths[name] = tmp_path / f"{name}.pkl"
        frame.to_pickle(paths[name])
    same = run.compare_outputs(paths["table"], paths["same"], tolerance="exact")
    assert same["ok"] and same["bit_identical"]
    exact = run.compare_outputs(paths["table"], paths["apart"], tolerance="exact")
    assert not exact["ok"] and not exact["bit_identical"]
    close = run.compare_outputs(paths["table"], paths["apart"], tolerance=1e-12)
    assert close["ok"] and close["max_abs_diff"] == np.nextafter(0.5, 1.0) - 0.5
