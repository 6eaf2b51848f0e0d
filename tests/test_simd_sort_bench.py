"""benchmarks/simd_sort.py times numpy's sort paths with and without AVX-512 and says which ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import simd_sort  # noqa: E402


def test_both_dispatches_are_timed(tmp_path, capsys):
    record = tmp_path / "figures.json"
    assert simd_sort.main(["--genes", "300", "--samples", "40", "--repeat", "1",
                           "--json", str(record)]) == 0
    figures = json.loads(record.read_text())
    # with AVX-512 hidden numpy must not dispatch to it, whatever this CPU has
    assert figures["avx512_hidden"]["avx512_used"] is False
    for path in ("default", "avx512_hidden"):
        for key in ("sort_rows_of_samples_ns", "partition_rows_of_genes_ns", "exp_ns",
                    "chunks_rows_of_samples_ns", "count_rows_of_genes_ns"):
            assert figures[path][key] > 0
    printed = capsys.readouterr().out
    assert "partition each sample across genes" in printed
    assert "each gene, in sorted chunks" in printed
