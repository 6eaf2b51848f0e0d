"""benchmarks/cache_bound.py (the information in the values, against our cache's size) and
benchmarks/cache_codecs.py (what generic codecs could do, with a working prototype)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "cache_bound.py"
CODECS = REPO / "benchmarks" / "cache_codecs.py"


def _script(path=SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_values_read_as_their_digits():
    """Sign, decimal exponent (value = 0.d1 d2 ... x 10**E) and significant digits as written;
    missing values left out."""
    values = _script().Values([b"1,12.345,0.00123,-5", b"2,0.5,,nan,0"], [7, 8])
    assert values.missing == 2
    assert list(values.row) == [7, 7, 7, 8, 8]
    assert list(values.sign) == [False, False, True, False, False]
    assert list(values.exponent) == [2, -2, 1, 0, 0]
    np.testing.assert_array_equal(values.digits, [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0],
                                                  [5, 0, 0, 0, 0], [5, 0, 0, 0, 0],
                                                  [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(values.float, [12.345, 0.00123, -5.0, 0.5, 0.0])


def test_a_value_in_exponent_notation_is_an_error_naming_the_file(tmp_path):
    """The digit counts read plain decimals only: a value such as 1.5e-3 stops the script with
    the file, the value and what to give instead."""
    donor = tmp_path / "data" / "microarray" / "normalized_microarray_donor1"
    donor.mkdir(parents=True)
    (donor / "MicroarrayExpression.csv").write_text("1,2.5,1.5e-3\n2,3.25,4.0\n")
    (donor / "PACall.csv").write_text("1,1,0\n2,1,1\n")
    with pytest.raises(SystemExit) as stop:
        _script().main([str(tmp_path / "data"), "--no-cache", "--compress-rows", "0",
                        "--work", str(tmp_path / "work")])
    message = str(stop.value)
    assert message.startswith(str(donor / "MicroarrayExpression.csv") + ": value b'1.5e-3'")
    assert "without exponents" in message


@pytest.fixture(scope="module")
def twelve_digits(tmp_path_factory):
    from ahba_app import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("p12") / "data", size="small", seed=3,
                              precision="12")


def test_the_bound_is_below_our_cache(twelve_digits, tmp_path):
    """On small 12-digit data the script runs; what the values carry (the bound given the
    generator's parameters, and the per-row estimate) is below what our cache stores, and the
    later digits alone are below both; the later digits look like noise (near log2(10) each)."""
    out = tmp_path / "bound.json"
    subprocess.run([sys.executable, str(SCRIPT), str(twelve_digits), "--rows", "0",
                    "--compress-rows", "0", "--work", str(tmp_path / "work"), "--json",
                    str(out)], check=True, capture_output=True, text=True)
    result, = json.loads(out.read_text())
    bits, ours = result["bits"], result["ours"]
    assert result["sampled_values"] == result["values"] > 0
    # twelve significant digits: about 11 decimals a value, each carrying log2(10) bits
    assert 34 < bits["model"] < bits["row"] < ours["expression"]
    assert bits["digits"] < bits["model"]
    assert bits["model"] + bits["calls (model)"] < ours["with PACall"]
    assert result["later digits most below log2(10)"] < 0.1
    for mi, bias in result["independence (bits, mean over donors; plug-in bias)"].values():
        assert mi < bias + 0.01


def test_residual_bits_is_the_entropy_of_normal_values_on_their_cells():
    """Normal values coded on a cell of 1e-6: log2(sqrt(2 pi e) sd / cell), whatever the
    rows' sds (one scale per row, one shape for all)."""
    script = _script(CODECS)
    rng = np.random.default_rng(0)
    sds = np.array([0.2, 0.5, 1.5])[:, None]
    residual = rng.normal(0, 1, (3, 200_000)) * sds
    log2_cell = np.full(residual.shape, np.log2(1e-6))
    expected = np.mean(np.log2(np.sqrt(2 * np.pi * np.e) * sds / 1e-6))
    assert abs(script.residual_bits(residual, log2_cell) - expected) < 0.01


def test_call_codecs_see_calls_that_follow_the_values():
    """Calls that are a threshold of the value cost nothing given the value, and a fair coin's
    cost one bit a call to every codec that sees only the calls."""
    script = _script(CODECS)
    rng = np.random.default_rng(1)
    values = rng.normal(5, 1, (50, 800))
    threshold = script.call_codecs((values > 5).astype(np.int8), values)
    assert threshold["given the value, one table (plug-in)"] < 0.01
    coin = script.call_codecs(rng.integers(0, 2, values.shape).astype(np.int8), values)
    for name in ("xz -9e over packed bits", "per-row coin (plug-in)"):
        assert coin[name] > 0.98, name
    if "zstd -19 over packed bits" in coin:  # (only where pyarrow has zstd)
        assert coin["zstd -19 over packed bits"] > 0.98
    assert coin["packed bits (ours)"] == 1.0


def test_a_per_row_code_passes_when_the_rows_are_narrow_enough():
    """The normal per-row code grows by one bit when the sd doubles, is 3.32 bits smaller from
    10 up (one digit fewer after the point at 12 significant digits), and passing_sd is where
    it meets the target."""
    script = _script(CODECS)
    narrow, wide = script.normal_row_bits(0.25, 6.0), script.normal_row_bits(0.5, 6.0)
    assert abs(wide - narrow - 1) < 1e-9
    assert abs(script.normal_row_bits(0.25, 6.0) - script.normal_row_bits(0.25, 13.0)
               - script.LOG2_10) < 1e-6
    sd = script.passing_sd(37.15, 0.27, 6.0)
    assert abs(script.normal_row_bits(sd, 6.0) + 0.27 - 37.15) < 1e-6
    assert script.passing_sd(37.15, 0.27, 13.0) > 5 * sd


def test_the_prototype_codec_gives_the_values_back_at_its_estimated_size():
    """A row and its noisy copy at 12 significant digits: the prototype decodes every value bit
    for bit (it raises otherwise), and its size is near what the estimate of the same model
    says (the residual's entropy plus the parameters), well below coding the row alone."""
    from ahba_app import synthetic

    script = _script(CODECS)
    rng = np.random.default_rng(2)
    signal = rng.normal(0, 1, (200, 500))
    reference = synthetic.round_values(6 + signal + rng.normal(0, 0.2, signal.shape), "12")
    # values from 1 to 10: one cell (1e-11) for all, as the estimate below takes it
    exact = synthetic.round_values(5.5 + 0.7 * signal + rng.normal(0, 0.3, signal.shape), "12")
    assert 1 < exact.min() and exact.max() < 10
    log2_cell = np.log2(1e-11) * np.ones(exact.shape)
    # (the frequency tables shared by a file of 20,000 such rows)
    out = script.prototype_codec(exact, reference, file_rows=20_000, repeat=1)
    centred = exact - exact.mean(axis=1, keepdims=True)
    ref = reference - reference.mean(axis=1, keepdims=True)
    residual = centred - ((centred * ref).sum(1) / (ref ** 2).sum(1))[:, None] * ref
    estimate = script.residual_bits(residual, log2_cell)
    parameters = (40 + np.log2(20_000)) / 500  # a row's mean, slope, shift, table, reference
    assert estimate < out["bits a value"] - parameters < estimate + 0.05
    assert out["bits a value"] < script.residual_bits(centred, log2_cell) - 1


def test_the_codec_study_runs_and_finds_the_shared_genes(twelve_digits, tmp_path):
    """cache_codecs.py --prototype on small 12-digit data (500 of 2,000 rows coded, the models
    fitted on the others): rows of one gene predict each other (the best earlier row gains
    over the row alone), low-rank models gain with their rank before their parameters, and the
    prototype reaches about the best earlier row's estimate; the target is cache_bound.py's.
    All rows coded: an error naming the donor's folder, no rows being left to fit on."""
    out = tmp_path / "codecs.json"
    subprocess.run([sys.executable, str(CODECS), str(twelve_digits), "--rows", "500",
                    "--prototype", "--ranks", "1", "4", "--combined", "2", "--fit-rows", "500",
                    "--parquet-mib", "1", "--json", str(out)],
                   check=True, capture_output=True, text=True)
    result, = json.loads(out.read_text())
    cross = result["cross-row"]
    assert cross["best earlier row"]["net"] < cross["row"]["net"]
    assert cross["rank 4"]["gross"] < cross["rank 1"]["gross"] < cross["row"]["gross"]
    prototype = result["prototype"]["best earlier row"]
    assert abs(prototype["bits a value"] - cross["best earlier row"]["net"]) < 0.5
    assert 0 < result["calls"]["given the value, one table (plug-in)"] < 0.5
    bound = tmp_path / "bound.json"
    subprocess.run([sys.executable, str(SCRIPT), str(twelve_digits), "--rows", "500",
                    "--compress-rows", "0", "--no-cache", "--parquet-mib", "1",
                    "--work", str(tmp_path / "work"), "--json", str(bound)],
                   check=True, capture_output=True, text=True)
    assert result["target"] == json.loads(bound.read_text())[0]["target"]
    everything = subprocess.run(
        [sys.executable, str(CODECS), str(twelve_digits), "--rows", "0"],
        capture_output=True, text=True)
    assert everything.returncode != 0 and "sample fewer --rows" in everything.stderr
    assert "normalized_microarray_donor" in everything.stderr
