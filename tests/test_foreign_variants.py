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
    donor = run._donor_folder(tmp_path / "work" / "variant-text", "12876")
    text = (donor / "PACall.csv").read_bytes()
    assert text.startswith(b'"') and b'"\r\n"' in text and not text.endswith(b"\n")
    # the unchanged source stays unchanged (the variant's files are new files, not links)
    assert (run._donor_folder(data, "12876") / "PACall.csv").read_bytes()[:1] != b'"'


@pytest.mark.parametrize("name", foreign.VARIANTS)
def test_cache_reads_every_value_of_a_variant_exactly(variants, name):
    """Quoted, CRLF, unterminated, reordered, rescaled, mixed-precision and scientific-notation
    files: the cache decodes every value to float(text), bit for bit, and every call."""
    for donor in run.DONORS:
        folder = run._donor_folder(variants[name], donor)
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

