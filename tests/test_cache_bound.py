"""benchmarks/cache_bound.py: the information in the values, against our cache's size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "cache_bound.py"


def _script():
    spec = importlib.util.spec_from_file_location("cache_bound", SCRIPT)
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
