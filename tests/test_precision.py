"""The microarray cache is exact and compact whatever the digits of the CSV (issue 16).

Every test compares each decoded cell with ``float(text)`` of the cell as written, bit for bit.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ahba_app import io, synthetic
from ahba_app.datasets import DONORS
from ahba_app.matrix import DonorMatrix

PRECISIONS = synthetic.PRECISIONS

# values real files could hold: short and long decimals, binary fractions that are not short
# in decimal, the ends of the AHBA's log2 range, exponent notation, and float64's own extremes
EDGE_ROWS = [
    ["0.1", "1e-05", "18.400000000000002", "1.5", "18.4", "0.30000000000000004"],
    ["1E-5", "0.00001", "1e-5", "1.0e-5", "10e-6", "0.000010"],
    ["1.5", "18.4", "1.5000000000000002", "18.399999999999999", "2.220446049250313e-16", "1"],
    ['"7.125"', '"12.5"', "+2.5", ".5", "12.50", "3."],
    ["0", "0.0", "-0.0", "-1.25", "-18.4", "1e0"],
    ["5e-324", "2.2250738585072014e-308", "1.7976931348623157e+308", "1e-300", "1e300", "1"],
    ["nan", "inf", "-inf", "2.5", "NaN", "3.75"],
    ["1.23456789012345678901234567890", "9007199254740993", "9007199254740992", "0.5", "2", "3"],
]


def _cells(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split(",")[1:] for line in path.read_text().splitlines(True)]


def _expected(cells: list[list[str]]) -> np.ndarray:
    return np.array([[float(c.strip('"')) for c in row] for row in cells])


def _assert_exact(path: Path) -> io.CachedMatrix:
    """Cache built, cache read again, CSV parsed without a cache: every cell's bits equal
    ``float(text)`` (NaN: any NaN)."""
    expected = _expected(_cells(path))
    for decoded in (io.select_rows(io.load_matrix(path)),
                    io.select_rows(io.load_matrix(path)),
                    io.read_microarray(path, parquet=False).to_numpy(),
                    io.read_microarray(path).to_numpy()):
        nan = np.isnan(expected)
        assert np.array_equal(np.isnan(decoded), nan)
        same = decoded.view(np.int64) == expected.view(np.int64)
        bad = np.argwhere(~same & ~nan)
        assert bad.size == 0, f"{len(bad)} cells differ, first {bad[0]}"
    return io.load_matrix(path)


def _styled(text: str, k: int) -> str:
    """The same number written in one of several ways real files use."""
    style = k % 5
    if style == 1:
        return f'"{text}"'
    if style == 2:  # scientific notation, exactly the same decimal
        return f"{Decimal(text):E}"
    if style == 3 and "e" not in text and "." in text:
        return text + "0"  # a trailing zero
    return text


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join(f"{i + 1},{','.join(r)}\n" for i, r in enumerate(rows)))
    return path


def _values(rng, n_rows=40, n_cols=23) -> np.ndarray:
    """log2-like values: rows with their own level and spread, within the AHBA's 1.5 to 18.4."""
    level = rng.uniform(3, 12, (n_rows, 1))
    values = level + rng.normal(0, 1.2, (n_rows, n_cols))
    return np.clip(values, 1.5, 18.4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_cell_decodes_to_float_of_its_text(tmp_path, precision):
    rng = np.random.default_rng(16)
    values = _values(rng)
    texts = np.array(synthetic.format_values(values, precision)).reshape(values.shape)
    rows = [[_styled(t, i * 7 + j) for j, t in enumerate(row)] for i, row in enumerate(texts)]
    rows += [row + ["2.5"] * (values.shape[1] - len(row)) for row in EDGE_ROWS]
    path = _write(tmp_path / "MicroarrayExpression.csv", rows)
    assert any('"' in c for c in rows[0]) and any("E" in c for r in rows for c in r)
    matrix = _assert_exact(path)
    # and through the block decoder the stages use, with samples picked and transposed
    picked = np.array([5, 0, 0, 22, 9])
    order = np.random.default_rng(1).permutation(len(rows))
    expected = _expected(_cells(path))[order][:, picked]
    donor = DonorMatrix(matrix, "microarray")
    taken = donor.take(order, picked, transposed=True)
    same = (taken.T.view(np.int64) == expected.view(np.int64)) | np.isnan(expected)
    assert same.all()


def test_edge_values_are_stored_as_expected(tmp_path):
    path = _write(tmp_path / "MicroarrayExpression.csv", EDGE_ROWS)
    codes = _assert_exact(path).codes
    segment, divisor = codes.segment, codes.divisor
    assert segment[1] > 0 and divisor[1] == 1e5            # 1e-05 in five spellings
    assert segment[3] > 0 and divisor[3] == 1e3            # quoted, signed, .5, 3.
    assert segment[4] == 0                                 # -0.0 has no integer
    assert segment[5] == 0 and segment[6] == 0             # extremes, NaN and infinities
    assert segment[0] == 0                                 # 1e-05 beside 18.400000000000002


@pytest.mark.parametrize("precision, width", [("6dp", 3), ("9", 4), ("12", 5), ("17", 7)])
def test_cache_size_follows_the_digits(tmp_path, precision, width):
    rng = np.random.default_rng(7)
    values = 2 + rng.uniform(0, 9.5, (60, 50))  # row ranges below 10, as most AHBA rows
    texts = np.array(synthetic.format_values(values, precision)).reshape(values.shape)
    path = _write(tmp_path / "MicroarrayExpression.csv", texts.tolist())
    matrix = _assert_exact(path)
    assert matrix.codes.widths() == {width: 60}
    header_bytes = 25 * 60 + 64 * 1024  # row table (17 bytes a row), probe ids, header, padding
    assert matrix.cache.stat().st_size <= width * values.size + header_bytes
    assert width < 8  # float64 would be 8 bytes a value


def test_cache_records_its_format(tmp_path):
    path = _write(tmp_path / "MicroarrayExpression.csv", [["1.5", "2.25"], ["3", "300.25"]])
    cache = io.load_matrix(path).cache
    data = cache.read_bytes()
    magic, version, _, offset, length = io._PREAMBLE.unpack(data[:io._PREAMBLE.size])
    assert magic == b"AHBAMTX\0" and version == io.CACHE_FORMAT_VERSION == 4
    header = json.loads(data[offset:offset + length])
    assert header["version"] == 4 and header["values"]["encoding"] == "row-scaled"
    assert {r["width"]: r["rows"] for r in header["values"]["segments"]} == {1: 1, 2: 1}
    assert set(header["rows"]) == {"segment", "base", "divisor", "check"}
    # each row's check, of the integers it stores over its least (150, 225 over 10**2; then
    # 300, 30025 over 10**2, less 300): u0 * 1 + u1 * 3
    matrix = io.load_matrix(path)
    assert matrix.codes.check.tolist() == [0 * 1 + 75 * 3, 0 * 1 + 29725 * 3]


@pytest.mark.parametrize("precision, digits", [("6dp", None), ("9", 9), ("12", 12), ("17", 17)])
def test_generator_writes_the_digits_asked_for(tmp_path, precision, digits):
    spec = synthetic.SIZES["small"]
    probes = synthetic.make_probes(spec, np.random.default_rng([0, 3])).iloc[:150]
    samples_table = synthetic.make_samples(spec, np.random.default_rng([0, 2]))
    model = synthetic.make_model(probes, np.random.default_rng([0, 1]))
    donor = next(iter(DONORS))
    folder = tmp_path / "donor"
    synthetic.write_donor_microarray(folder, donor, samples_table, probes,
                                     synthetic.make_ontology(), model, 0, precision)
    path = folder / "MicroarrayExpression.csv"
    cells = [c for row in _cells(path) for c in row]
    mantissas = [c.split("e")[0].replace(".", "").replace("-", "").lstrip("0") for c in cells]
    longest = max(len(m) for m in mantissas)
    if digits is None:
        assert max(len(c.split(".")[1]) if "." in c else 0 for c in cells) == 6
    else:
        assert longest == digits if digits < 17 else 15 <= longest <= 17
    _assert_exact(path)


def test_round_values_keeps_the_same_draws():
    rng = np.random.default_rng(2)
    values = rng.uniform(1.5, 18.4, 1000)
    assert np.array_equal(synthetic.round_values(values, "17"), values)
    assert np.array_equal(synthetic.round_values(values, "6dp"), np.round(values, 6))
    for precision in ("9", "12"):
        rounded = synthetic.round_values(values, precision)
        assert np.abs(rounded - values).max() <= 10.0 ** (2 - int(precision))
        assert all(len(repr(float(v)).replace(".", "")) <= int(precision) + 1 for v in rounded)
    with pytest.raises(ValueError, match="precision"):
        synthetic.round_values(values, "8")


def test_command_line_precision(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda out, **kw: calls.append(kw) or out)
    assert synthetic.main([str(tmp_path / "x"), "--precision", "12"]) == 0
    assert calls[0]["precision"] == "12"
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "x"), "--precision", "10"])
    assert "invalid choice" in capsys.readouterr().err
    synthetic.main([str(tmp_path / "x")])
    assert calls[-1]["precision"] == "6dp"


def test_frame_from_cache_equals_parsed(tmp_path):
    path = _write(tmp_path / "MicroarrayExpression.csv", EDGE_ROWS)
    cached = io.read_microarray(path)
    parsed = io.read_microarray(path, parquet=False)
    pd.testing.assert_frame_equal(cached, parsed)


@pytest.mark.parametrize("transposed", [False, True])
def test_blocks_decode_rows_in_file_order_and_put_them_back(tmp_path, monkeypatch, transposed):
    """Rows asked for in any order (probes in gene order, repeats) come out in that order, bit
    for bit, while each block reads and releases rows in file order (a narrow stretch of the
    file, so that a donor's mapped pages never accumulate)."""
    rng = np.random.default_rng(3)
    values = _values(rng, n_rows=90, n_cols=17)
    texts = np.array(synthetic.format_values(values, "12")).reshape(values.shape)
    rows = texts.tolist() + EDGE_ROWS[:3]  # a float64 segment too
    rows[-3:] = [r + ["2.5"] * (17 - len(r)) for r in rows[-3:]]
    path = _write(tmp_path / "MicroarrayExpression.csv", rows)
    matrix = _assert_exact(path)
    expected = _expected(_cells(path))
    wanted = np.r_[rng.permutation(len(rows)), [4, 4, 0]]
    cols = np.array([16, 2, 3, 9])
    released = []
    real_release = io.release_rows
    monkeypatch.setattr(io, "release_rows",
                        lambda m, part: (released.append(np.array(part)), real_release(m, part)))
    monkeypatch.setattr(io, "_DECODE_VALUES", 4 * 7)  # blocks of 7 rows
    got = io.decode_rows(matrix, wanted, cols, transposed=transposed, release=True)
    got = got.T if transposed else got
    assert got.shape == (len(wanted), len(cols))
    assert np.array_equal(got.view(np.int64), expected[wanted][:, cols].view(np.int64))
    assert len(released) == -(-len(wanted) // 7)
    assert all((np.diff(part) >= 0).all() for part in released)
    assert np.array_equal(np.sort(np.concatenate(released)), np.sort(wanted))
    # rows already in file order: the same values, blocks of consecutive rows
    released.clear()
    ordered = io.decode_rows(matrix, np.sort(wanted), cols, transposed=transposed, release=True)
    ordered = ordered.T if transposed else ordered
    expected_sorted = expected[np.sort(wanted)][:, cols]
    assert np.array_equal(ordered.view(np.int64), expected_sorted.view(np.int64))


def test_region_means_of_a_cache_release_each_row_once(tmp_path, monkeypatch):
    """Differential stability's region means read every row of a coded cache once and hand
    each row's pages back once (the take releases them as it decodes; releasing them again
    cost ~3 % of a run choosing the probes anew), and average the values decoded bit for bit
    as pandas' groupby mean does; a frame's matrix has no pages to release."""
    from types import SimpleNamespace

    from ahba_app import probes

    rng = np.random.default_rng(11)
    values = _values(rng, n_rows=60, n_cols=29)
    texts = np.array(synthetic.format_values(values, "12")).reshape(values.shape)
    path = _write(tmp_path / "MicroarrayExpression.csv", texts.tolist())
    matrix = DonorMatrix(str(path), "microarray")
    assert matrix.releases_rows
    assert not DonorMatrix(pd.DataFrame(values), "microarray").releases_rows
    expected = _expected(_cells(path))

    rows = rng.permutation(60)[:45]            # the probes kept, in gene order
    structure = rng.integers(0, 6, size=29) * 7
    data = SimpleNamespace(
        annotation={"d": pd.DataFrame({"structure_id": structure})},
        matrices={"d": matrix}, rows={"d": rows}, cols={"d": np.arange(29)},
        genes=SimpleNamespace(n_probes=len(rows)), release=lambda donor: None)
    released = []
    real_release = io.release_rows
    monkeypatch.setattr(io, "release_rows", lambda m, part=None: (
        released.append(None if part is None else np.array(part)), real_release(m, part)))
    monkeypatch.setattr(probes, "_KAHAN_CHUNK", 29 * 8)  # chunks of 8 rows
    monkeypatch.setattr(io, "_DECODE_VALUES", 29 * 3)   # decoded 3 rows at a time
    regions, means = probes._donor_regions(data, "d")

    parts = [part for part in released if part is not None]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.sort(rows))
    reference = pd.DataFrame(expected[rows].T).groupby(structure).mean()
    assert np.array_equal(regions, reference.index)
    assert np.array_equal(means.view(np.int64), reference.to_numpy().T.view(np.int64))
