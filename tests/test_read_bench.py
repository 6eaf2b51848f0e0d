"""benchmarks/read_bench.py runs on today's cache format and says how the rows were stored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import read_bench  # noqa: E402


def test_one_donor_figures(ahba_small, tmp_path):
    record = tmp_path / "figures.json"
    assert read_bench.main([str(ahba_small), "--donors", "9861", "--no-parquet",
                            "--work", str(tmp_path / "work"), "--json", str(record)]) == 0
    (row,) = json.loads(record.read_text())["donors"]
    # the synthetic data's 6 decimals fit 3-byte rows (io.py's row-scaled cache)
    assert row["encoding"].startswith("3 bytes: ")
    assert row["cache_mb"] > 0
    assert row["cached"]["seconds"] > 0
