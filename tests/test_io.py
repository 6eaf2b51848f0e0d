"""The AHBA readers and their binary cache (ahba_app.io)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ahba_app import io

# A donor folder small enough to write by hand, in the exact AHBA formats (facts.md).
PROBE_IDS = [1058685, 1058684, 1058683, 1058682, 1058681]
MICROARRAY = [
    [2.368, 2.4163, 2.6547653, 2.4255],
    [1.9685, 1.8875, 13.95217, 2.1162],
    [18.3961, 17.02, 16.8231, 15.1],
    [4.8813, 4.7506, 5.0291, 4.6],
    [9.9999999, 10.1, 10.0, 9.87654],
]
PACALL = [
    [0, 0, 1, 0],
    [0, 0, 1, 1],
    [1, 1, 1, 1],
    [1, 0, 1, 1],
    [1, 1, 1, 0],
]
PROBES_CSV = """\
probe_id,probe_name,gene_id,gene_symbol,gene_name,entrez_id,chromosome
1058685,"A_23_P20713",729,"C8G","complement component 8, gamma polypeptide",733,"9"
1058684,"CUST_15185_PI416261804",731,"C9","complement component 9",735,"5"
1058683,"A_32_P203917",736,"MRPL49","mitochondrial ribosomal protein L49",740,"11"
1058682,"A_23_P138819",736,"MRPL49","mitochondrial ribosomal protein L49",740,"11"
1058681,"CUST_445_PI416261804",1000,"A_24_P1","no gene",,"X"
"""
ANNOT_CSV = """\
structure_id,slab_num,well_id,slab_type,structure_acronym,structure_name,polygon_id,\
mri_voxel_x,mri_voxel_y,mri_voxel_z,mni_x,mni_y,mni_z
4077,22,594,"CX","SFG-i","superior frontal gyrus, left, inferior bank of gyrus",\
1000547,58,84,117,5.9,-27.7,49.7
4080,11,2985,"CX","SFG-s","superior frontal gyrus, left, superior bank of gyrus",\
1000514,53,85,122,3.2,-29.3,55.6
4323,18,1126,"CX","PrG-prc","precentral gyrus, left, paracentral lobule",1000596,\
62,95,124,-6.0,-20.2,57.5
9114,7,2457,"BS","Cb","cerebellum",1000601,70,150,40,-10.4,-76.8,-40.9
"""
ONTOLOGY_CSV = """\
id,acronym,name,parent_structure_id,hemisphere,graph_order,structure_id_path,color_hex_triplet
4005,"Br","brain",,,0,"/4005/","F0F080"
4006,"GM","gray matter",4005,,1,"/4005/4006/","F0F080"
4077,"SFG-i","superior frontal gyrus, left, inferior bank of gyrus",4076,"L",7,\
"/4005/4006/4007/4008/4076/4077/","FFA75C"
"""
GENES_CSV = """\
gene_symbol,gene_id,entrez_id,chromosome,strand,number_of_transcripts,\
median_transcriptome_length,median_genome_length,median_number_of_exons,median_gene_start,\
median_gene_end
"A1BG",1,1,"19","-",2,2134,8322,8,58858172,58864865
"A2M",2,2,"12","-",3,4575,48537,36,9220304,9268558
"NAA20",3,51126,"20","+",1,1120,27111,7,20002741,20029852
"""
RNA_ANNOT_CSV = """\
RNAseq_sample_name,replicate_sample,sample_name,well_id,microarray_run_id,ontology_color,\
main_structure,sub_structure,ontology_structure_id,ontology_structure_acronym,hemisphere,brain,\
million_clusters,clip_percentage,RIN_RNA_quality,rnaseq_run_id,A.Pct,C.Pct,G.Pct,T.Pct,N.Pct
"R1","no","S1",594,160039566,"A245B7","cortex","FL",4077,"SFG-i","L","H0351.2001",26.8,3.8,\
8.7,270952977,25.9,21.7,20.5,31.6,0.1
"R2","no","S2",2985,160468741,"6ACB68","cortex","FL",4080,"SFG-s","L","H0351.2001",49.6,7.2,\
7.3,270218825,30.6,16.1,21.3,31.8,0.1
"""
TPM_CSV = "A1BG,0.5,2.25\nA2M,100.125,0\nNAA20,3,4.5\n"
COUNTS_CSV = "A1BG,12,30.5\nA2M,4000,0\nNAA20,55,61\n"


def _matrix_csv(ids, rows) -> str:
    return "".join(",".join([str(i)] + [str(v) for v in row]) + "\n" for i, row in zip(ids, rows))


@pytest.fixture
def donor(tmp_path) -> Path:
    """A hand-written donor folder: 5 probes x 4 samples, plus RNA-seq files."""
    folder = tmp_path / "microarray" / "normalized_microarray_donor9861"
    folder.mkdir(parents=True)
    (folder / "MicroarrayExpression.csv").write_text(_matrix_csv(PROBE_IDS, MICROARRAY))
    (folder / "PACall.csv").write_text(_matrix_csv(PROBE_IDS, PACALL))
    (folder / "Probes.csv").write_text(PROBES_CSV)
    (folder / "SampleAnnot.csv").write_text(ANNOT_CSV)
    (folder / "Ontology.csv").write_text(ONTOLOGY_CSV)
    rna = tmp_path / "rnaseq" / "rnaseq_donor9861"
    rna.mkdir(parents=True)
    (rna / "Genes.csv").write_text(GENES_CSV)
    (rna / "SampleAnnot.csv").write_text(RNA_ANNOT_CSV)
    (rna / "RNAseqTPM.csv").write_text(TPM_CSV)
    (rna / "RNAseqCounts.csv").write_text(COUNTS_CSV)
    return folder


def _rna(donor: Path) -> Path:
    return donor.parents[1] / "rnaseq" / "rnaseq_donor9861"


def _count_parses(monkeypatch) -> list:
    """Record every CSV parse of a microarray or PACall file."""
    calls = []
    real = io._iter_blocks

    def counting(path, kind):
        calls.append((Path(path).name, kind))
        return real(path, kind)

    monkeypatch.setattr(io, "_iter_blocks", counting)
    return calls


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def _assert_sample_columns(frame: pd.DataFrame, n: int) -> None:
    assert frame.columns.name == "sample_id"
    assert frame.columns.dtype == np.int64
    assert frame.columns.tolist() == list(range(1, n + 1))


def _round_trip(path: Path) -> pd.DataFrame:
    """The CSV as pandas parses it with correctly rounded floats (float_precision='round_trip',
    deprecated in pandas 3 but still what the name says)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.read_csv(path, header=None, index_col=0, float_precision="round_trip")


def _python_floats(path: Path) -> np.ndarray:
    """The CSV's values parsed by Python's float(): the float64 nearest to each decimal."""
    return np.array([[float(x) for x in line.split(",")[1:]]
                     for line in path.read_text().splitlines() if line.strip()])


def _assert_bits_equal(actual, expected) -> None:
    """Equal bit for bit as float64 (so 0.0 against -0.0 and NaN payloads count)."""
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    assert actual.dtype == np.float64 and actual.shape == expected.shape
    differ = np.ascontiguousarray(actual).view(np.int64) != \
        np.ascontiguousarray(expected).view(np.int64)
    assert not differ.any(), f"{differ.sum()} values differ, first at {np.argwhere(differ)[0]}"


def _assert_exact(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` holds exactly what a correctly rounding float64 parser reads from ``path``."""
    expected = _round_trip(path)
    assert frame.index.tolist() == expected.index.tolist()
    assert (frame.dtypes == np.float64).all()
    _assert_bits_equal(frame.to_numpy(), expected.to_numpy())


def _cache_header(cache: Path) -> dict:
    data = cache.read_bytes()
    _, version, _, offset, length = io._PREAMBLE.unpack(data[: io._PREAMBLE.size])
    header = json.loads(data[offset: offset + length])
    assert header["version"] == version
    return header


# ------------------------------------------------------------------------------------------
# Readers: labels, dtypes, values
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parquet", [True, False])
def test_read_microarray(donor, parquet):
    data = io.read_microarray(donor / "MicroarrayExpression.csv", parquet=parquet)
    assert data.shape == (5, 4)
    assert data.index.name == "probe_id" and data.index.dtype == np.int64
    assert data.index.tolist() == PROBE_IDS  # file order, not sorted
    _assert_sample_columns(data, 4)
    assert (data.dtypes == np.float64).all()
    _assert_bits_equal(data.to_numpy(), MICROARRAY)  # Python's literals: the nearest float64s
    _assert_exact(data, donor / "MicroarrayExpression.csv")
    assert (donor / io.CACHE_DIRNAME).exists() == parquet


@pytest.mark.parametrize("parquet", [True, False])
def test_read_pacall(donor, parquet):
    data = io.read_pacall(donor / "PACall.csv", parquet=parquet)
    assert data.index.name == "probe_id" and data.index.tolist() == PROBE_IDS
    _assert_sample_columns(data, 4)
    assert (data.dtypes == np.int64).all()   # 0/1 integers, as abagen's
    np.testing.assert_array_equal(data.to_numpy(), np.array(PACALL, dtype=np.int64))


@pytest.mark.parametrize("parquet", [True, False])
def test_microarray_frame_is_writable_without_touching_the_cache(donor, parquet):
    path = donor / "MicroarrayExpression.csv"
    data = io.read_microarray(path, parquet=parquet)
    data.iloc[0, 0] = -1.0
    data.loc[1058681] = 0.0
    assert data.iloc[0, 0] == -1.0
    assert io.read_microarray(path).iloc[0, 0] == 2.368
    frame = io.load_matrix(path).to_frame()
    frame.iloc[1, 1] = -2.0
    assert io.select_rows(io.load_matrix(path), [1])[0, 1] == 1.8875
    codes = io.load_matrix(path).codes  # row 1 needs 5 decimals (13.95217): 1.8875 is 188750
    assert codes.divisor[1] == 1e5 and codes.base[1] == 188750


def test_missing_values_are_nan_like_pandas(tmp_path):
    path = tmp_path / "MicroarrayExpression.csv"
    path.write_text("1,2.5,,3\n2,NaN,4,5\n")
    data = io.read_microarray(path)
    assert np.isnan(data.to_numpy()).tolist() == [[False, True, False], [True, False, False]]
    assert data.loc[1, 1] == 2.5 and data.loc[2, 3] == 5
    # scaled integers cannot hold NaN: such rows are cached as float64
    matrix = io.load_matrix(path)
    assert matrix.codes.widths() == {0: 2}
    assert _cache_header(matrix.cache)["values"]["encoding"] == "row-scaled"


# ------------------------------------------------------------------------------------------
# Microarray values are exact: int32 decimals when they fit, float64 otherwise
# ------------------------------------------------------------------------------------------

def _write_rows(path: Path, rows: list[str]) -> Path:
    """A matrix CSV whose row i (probe id i + 1) holds the value texts rows[i] (comma-joined)."""
    path.write_text("".join(f"{i + 1},{row}\n" for i, row in enumerate(rows)))
    return path


def _check_exact_both_ways(path: Path) -> io.CachedMatrix:
    """Built, then cached, then parsed without cache: all bit-for-bit the correctly rounded
    parse of the text. Returns the cached matrix."""
    expected = _python_floats(path)
    for parquet in (True, True, False):
        data = io.read_microarray(path, parquet=parquet)
        _assert_exact(data, path)
        _assert_bits_equal(data.to_numpy(), expected)
    matrix = io.load_matrix(path)
    _assert_bits_equal(io.select_rows(matrix), expected)
    return matrix


def test_mixed_decimals_are_exact(tmp_path):
    path = _write_rows(tmp_path / "MicroarrayExpression.csv",
                       ["2.5,3.123456,18.4", "1.5,7,0.000001", "10.25,4.1,3.999999"])
    matrix = _check_exact_both_ways(path)
    codes = matrix.codes
    assert codes.divisor.tolist() == [1e6] * 3 and codes.base[1] == 1
    assert codes.segment.tolist() == [3, 3, 3]  # ranges below 2**24 millionths
    assert io.select_rows(matrix, [1]).tolist() == [[1.5, 7.0, 0.000001]]
    record = _cache_header(matrix.cache)["values"]
    assert record["encoding"] == "row-scaled"
    assert [(r["width"], r["rows"]) for r in record["segments"]] == [(3, 3)]


def test_fewest_decimals_are_used(tmp_path):
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", ["2,3,-4", "17,1,0"])
    codes = _check_exact_both_ways(path).codes
    assert codes.divisor.tolist() == [1, 1] and codes.segment.tolist() == [1, 1]
    assert codes.base.tolist() == [-4, 0]
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", ["2.25,3.5", "-17.125,1"])
    codes = _check_exact_both_ways(path).codes
    assert codes.divisor.tolist() == [100, 1000] and codes.segment.tolist() == [1, 2]


@pytest.fixture
def small_blocks(monkeypatch):
    """Parse CSVs in blocks of 1 kB (a few dozen short rows), so files have many blocks."""
    monkeypatch.setattr(io, "_BLOCK_SIZE", 1 << 10)


def test_later_rows_with_more_decimals_are_exact_in_one_pass(tmp_path, small_blocks,
                                                              monkeypatch):
    rng = np.random.default_rng(3)
    short = [f"{a:.1f},{b:.1f}" for a, b in rng.uniform(1.5, 18.4, (300, 2))]
    longer = [f"{a:.6f},{b:.4f}" for a, b in rng.uniform(1.5, 18.4, (300, 2))]
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", short + longer)
    calls = _count_parses(monkeypatch)
    matrix = io.load_matrix(path)
    assert len(calls) == 1  # each row is encoded for itself: nothing to start again
    divisor = matrix.codes.divisor
    assert set(divisor[:300]) <= {1.0, 10.0} and set(divisor[300:]) <= {1e4, 1e5, 1e6}
    assert 1e6 in set(divisor[300:])
    _check_exact_both_ways(path)
    assert len(calls) == 2  # the parquet=False read only


@pytest.mark.parametrize("block_size", [1 << 10, 2 << 20])
def test_rows_of_every_width_in_blocks_of_one_or_several_widths(tmp_path, monkeypatch,
                                                                block_size):
    """The encoder reuses its work arrays block after block: blocks of one width, of several,
    of other shapes, one after the other, each row still exact and in its own width."""
    monkeypatch.setattr(io, "_BLOCK_SIZE", block_size)
    rng = np.random.default_rng(8)
    spans = {w: 2**(8 * w - 1) for w in range(1, 7)}     # integers needing w bytes
    rows, widths = [], []
    for i in range(240):
        w = [3, 3, 3, 4, 8, 1, 5, 0, 2, 6, 7, 3][i % 12] if i >= 120 else 3
        if w == 0:
            row = ["2.5", "nan", "1.25"]
        elif w in (7, 8):       # binary: from 2**52 + 1 to about 2**55.4 or 2**62
            row = ["1.0000000000000002", "10.5" if w == 7 else "1000.5", "3"]
        else:
            low = int(rng.integers(-1000, 1000))
            row = [str(low), str(low + spans[w]), str(low + int(rng.integers(0, spans[w])))]
        rows.append(",".join(row))
        widths.append(w)
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", rows)
    codes = _check_exact_both_ways(path).codes
    assert codes.segment.tolist() == widths


@pytest.mark.parametrize("row, stored", [
    ("2.123456789012,3.5", 1e12),                     # 12 decimals: 6 bytes
    ("3.141592653589793,2.718281828459045", 1e15),    # 16 digits, 15 decimals: still decimal
    ("18.400000000000002,1.5", "binary"),              # 17 digits: 2**-52 units
    ("0.30000000000000004,0.1", "binary"),
    ("123456789012.5,1", 10.0),
    ("1e-12,2", 1e12),
    ("-0.0,1.5", "float64"),                           # no integer gives -0.0
    ("2.5,inf", "float64"),
    ("1e-300,1e300", "float64"),                       # no int64 spans these
    ("5e-324,2.2250738585072014e-308", "float64"),
])
def test_rows_are_stored_exactly_whatever_their_digits(tmp_path, row, stored):
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", [row, "2,3"])
    matrix = _check_exact_both_ways(path)
    codes = matrix.codes
    if stored == "float64":
        assert codes.segment[0] == 0
    elif stored == "binary":
        assert codes.segment[0] in (7, 8) and np.log2(codes.divisor[0]).is_integer()
        assert codes.divisor[0] >= 2**52
    else:
        assert codes.divisor[0] == stored and codes.segment[0] > 0
    assert codes.segment[1] == 1 and codes.divisor[1] == 1
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("later, divisor", [
    ("{:.9f}", {1e7, 1e8, 1e9}),
    ("{:.2f}e3", {1.0}),    # each row at its own fewest decimals (whole numbers), not at 6
    ("{!r}", "binary"),     # up to 17 significant digits after rows of 6 decimals
])
def test_later_rows_with_other_digits_are_exact(tmp_path, small_blocks, monkeypatch, later,
                                                divisor):
    rng = np.random.default_rng(4)
    first = [f"{a:.6f},{b:.6f}" for a, b in rng.uniform(1.5, 18.4, (200, 2))]
    last = [f"{later.format(float(a))},{later.format(float(b))}"
            for a, b in rng.uniform(1.5, 18.4, (200, 2))]
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", first + last)
    calls = _count_parses(monkeypatch)
    matrix = _check_exact_both_ways(path)
    assert len(calls) == 1 + 1  # built once, parsed once without cache
    assert set(matrix.codes.divisor[:200]) <= {1e5, 1e6}
    found = set(matrix.codes.divisor[200:])
    if divisor == "binary":
        # 16 digits below 9.007 still fit 15 decimals (integers up to 2**53); others: binary
        assert all(d in (1e14, 1e15) or (np.log2(d).is_integer() and d > 2**40) for d in found)
        assert any(np.log2(d).is_integer() for d in found)
    else:
        assert found <= divisor and max(divisor) in found


def test_select_rows_decodes_in_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    values = np.round(rng.uniform(1.5, 18.4, (500, 7)), 6)
    path = tmp_path / "MicroarrayExpression.csv"
    path.write_text(_matrix_csv(range(1, 501), values))
    monkeypatch.setattr(io, "_DECODE_VALUES", 7 * 30)  # 30 rows at a time
    matrix = io.load_matrix(path)
    assert set(matrix.codes.divisor) <= {1e5, 1e6}
    samples = np.array([True, False, True, True, False, False, True])
    rows = rng.permutation(500)[:170]
    cases = [
        ((None, None), values),
        ((rows, None), values[rows]),
        ((rows, samples), values[rows][:, samples]),
        ((np.arange(500) % 2 == 0, [6, 0]), values[::2][:, [6, 0]]),
        ((slice(None, None, -1), None), values[::-1]),
        ((slice(498, 3, -7), slice(1, 5)), values[498:3:-7, 1:5]),
        ((slice(10, 440, 3), None), values[10:440:3]),
        ((np.array([], dtype=int), None), values[:0]),
        ((np.array([-1, 0]), None), values[[-1, 0]]),
    ]
    for (picked, columns), expected in cases:
        out = io.select_rows(matrix, picked, samples=columns)
        _assert_bits_equal(out, expected)
        assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous


def _write_version1_cache(source: Path, location: Path) -> None:
    """A cache as format version 1 wrote it: float32 values (lossy), otherwise valid."""
    frame = _round_trip(source)
    values = np.ascontiguousarray(frame.to_numpy(np.float32))
    probe_ids = frame.index.to_numpy(np.int64)
    stat = source.stat()
    body = bytearray(64) + values.tobytes()
    body += bytes(-len(body) % 64)
    ids_offset = len(body)
    body += probe_ids.tobytes()
    header = json.dumps({
        "format": "ahba-app matrix cache", "version": 1, "kind": "microarray",
        "created_by": "ahba-app 0.0", "n_probes": len(probe_ids), "n_samples": values.shape[1],
        "source": {"path": str(source.resolve()), "size": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns},
        "values": {"offset": 64, "dtype": "<f4", "shape": list(values.shape),
                   "crc32": zlib.crc32(values)},
        "probe_ids": {"offset": ids_offset, "dtype": "<i8", "shape": [len(probe_ids)],
                      "crc32": zlib.crc32(probe_ids)},
    }).encode()
    body[:40] = struct.pack("<8sIIQQ", b"AHBAMTX\0", 1, 0, len(body), len(header))
    location.parent.mkdir(parents=True, exist_ok=True)
    location.write_bytes(bytes(body) + header)


def test_version1_float32_cache_is_rebuilt(donor, monkeypatch):
    path = donor / "MicroarrayExpression.csv"
    cache = io.cache_locations(path)[0]
    _write_version1_cache(path, cache)
    assert io.CACHE_FORMAT_VERSION == 4
    calls = _count_parses(monkeypatch)
    data = io.read_microarray(path)
    assert len(calls) == 1  # the old cache was not used
    _assert_exact(data, path)
    assert data.iloc[0, 2] == 2.6547653 != np.float64(np.float32(2.6547653))
    header = _cache_header(cache)
    assert header["version"] == 4 and header["values"]["encoding"] == "row-scaled"
    io.read_microarray(path)
    assert len(calls) == 1


@pytest.mark.parametrize("older", [2, 3])
def test_older_cache_is_rebuilt_not_misread(donor, monkeypatch, older):
    """The same bytes announced as format 2 (int32 decimals) or 3 (rows without checks)."""
    path = donor / "MicroarrayExpression.csv"
    cache = io.load_matrix(path).cache
    data = bytearray(cache.read_bytes())
    data[8:12] = struct.pack("<I", older)
    cache.write_bytes(bytes(data))
    calls = _count_parses(monkeypatch)
    _assert_exact(io.read_microarray(path), path)
    assert len(calls) == 1
    assert _cache_header(cache)["version"] == 4


def test_pacall_cache_records_its_encoding(donor):
    header = _cache_header(io.load_matrix(donor / "PACall.csv").cache)
    assert header["values"]["encoding"] == "packed-bits" and header["values"]["dtype"] == "|u1"
    assert header["version"] == io.CACHE_FORMAT_VERSION == 4


def test_read_probes(donor):
    probes = io.read_probes(donor / "Probes.csv")
    assert probes.index.name == "probe_id" and probes.index.tolist() == PROBE_IDS
    assert probes.columns.tolist() == ["probe_name", "gene_id", "gene_symbol", "gene_name",
                                       "entrez_id", "chromosome"]
    assert probes["entrez_id"].dtype == "Int64"
    assert probes["entrez_id"].isna().tolist() == [False] * 4 + [True]
    assert probes.loc[1058685, "gene_name"] == "complement component 8, gamma polypeptide"


def test_read_annotation(donor):
    annot = io.read_annotation(donor / "SampleAnnot.csv")
    assert annot.index.name == "sample_id" and annot.index.dtype == np.int64
    assert annot.index.tolist() == [1, 2, 3, 4]
    assert annot.shape == (4, 13)
    assert annot["well_id"].tolist() == [594, 2985, 1126, 2457]
    assert annot["mni_z"].dtype == np.float64


def test_read_annotation_renames_rnaseq_columns(donor):
    annot = io.read_annotation(_rna(donor) / "SampleAnnot.csv")
    assert "structure_id" in annot and "ontology_structure_id" not in annot
    assert "structure_acronym" in annot and annot.index.tolist() == [1, 2]
    raw = pd.read_csv(_rna(donor) / "SampleAnnot.csv")
    renamed = io.read_annotation(raw)
    assert "structure_id" in renamed
    assert "ontology_structure_id" in raw  # the caller's frame is left alone


def test_read_ontology(donor):
    onto = io.read_ontology(donor / "Ontology.csv")
    assert onto.columns.tolist()[:3] == ["id", "acronym", "name"]
    assert onto.index.tolist() == [0, 1, 2]
    assert onto["hemisphere"].isna().tolist() == [True, True, False]


def test_read_rnaseq(donor):
    rna = _rna(donor)
    genes = io.read_genes(rna / "Genes.csv")
    assert genes.index.name == "gene_symbol"
    assert genes.index.tolist() == ["A1BG", "A2M", "NAA20"]
    for reader, name, expected in ((io.read_tpm, "RNAseqTPM.csv", [[0.5, 2.25], [100.125, 0],
                                                                     [3, 4.5]]),
                                   (io.read_counts, "RNAseqCounts.csv", [[12, 30.5], [4000, 0],
                                                                         [55, 61]])):
        data = reader(rna / name)
        assert data.index.name == "gene_symbol"
        assert data.index.tolist() == ["A1BG", "A2M", "NAA20"]
        _assert_sample_columns(data, 2)
        assert (data.dtypes == np.float64).all()
        np.testing.assert_array_equal(data.to_numpy(), expected)


@pytest.mark.parametrize("reader", [io.read_microarray, io.read_pacall, io.read_probes,
                                    io.read_annotation, io.read_ontology, io.read_genes,
                                    io.read_tpm, io.read_counts])
def test_readers_pass_dataframes_through(reader):
    frame = pd.DataFrame({"a": [1, 2]})
    assert reader(frame) is frame
    copied = reader(frame, copy=True)
    assert copied is not frame
    pd.testing.assert_frame_equal(copied, frame)


@pytest.mark.parametrize("reader", [io.read_microarray, io.read_pacall, io.read_probes,
                                    io.read_tpm])
def test_readers_reject_other_types(reader):
    with pytest.raises(TypeError, match="Expected the path"):
        reader(42)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="MicroarrayExpression.csv"):
        io.read_microarray(tmp_path / "MicroarrayExpression.csv")


# ------------------------------------------------------------------------------------------
# The array API
# ------------------------------------------------------------------------------------------

def test_load_matrix_maps_the_cache_read_only(donor):
    matrix = io.load_matrix(donor / "MicroarrayExpression.csv")
    assert matrix.kind == "microarray" and matrix.shape == (5, 4)
    assert matrix.cache == donor / io.CACHE_DIRNAME / "MicroarrayExpression.csv.cache"
    assert matrix.probe_ids.dtype == np.int64 and matrix.probe_ids.tolist() == PROBE_IDS
    # each row as integers over its fewest decimals (9.9999999, 2.6547653: 7), minus its least
    codes = matrix.codes
    assert codes.divisor.tolist() == [1e7, 1e5, 1e4, 1e4, 1e7] and matrix.dtype == np.float64
    assert codes.base[0] == 23680000 and codes.segment[0] == 3
    row = codes.views[3][codes.slot[0]] & codes.masks[3]
    assert (row + codes.base[0]).tolist() == [23680000, 24163000, 26547653, 24255000]
    assert not matrix.values.flags.writeable and not matrix.probe_ids.flags.writeable
    assert not codes.views[3].flags.writeable
    assert isinstance(matrix.values, np.memmap)
    with pytest.raises(ValueError):
        matrix.values[0] = 1


def test_select_rows(donor):
    expr = io.load_matrix(donor / "MicroarrayExpression.csv")
    full = np.array(MICROARRAY, dtype=np.float64)
    _assert_bits_equal(io.select_rows(expr), full)
    _assert_bits_equal(io.select_rows(expr, [3, 0]), full[[3, 0]])
    mask = np.array([True, False, True, False, False])
    _assert_bits_equal(io.select_rows(expr, mask, samples=[1, 3]), full[mask][:, [1, 3]])
    _assert_bits_equal(io.select_rows(expr, slice(1, 3)), full[1:3])
    out = io.select_rows(expr, [1])
    assert out.flags.writeable and out.flags.owndata and out.dtype == np.float64
    with pytest.raises(IndexError, match="mask"):
        io.select_rows(expr, mask[:3])

    pacall = io.load_matrix(donor / "PACall.csv")
    assert pacall.packed and pacall.values.dtype == np.uint8 and pacall.values.shape == (5, 1)
    present = np.array(PACALL, dtype=bool)
    np.testing.assert_array_equal(io.select_rows(pacall), present)
    rows = io.probe_positions(pacall, [1058681, 1058685])
    assert rows.tolist() == [4, 0]
    picked = io.select_rows(pacall, rows, samples=slice(0, 2))
    assert picked.dtype == bool
    np.testing.assert_array_equal(picked, present[[4, 0], :2])
    with pytest.raises(KeyError, match="1"):
        io.probe_positions(pacall, [1058685, 1])


def test_largest_first_orders_by_file_size(tmp_path):
    sizes = {"a": 10, "b": 300, "c": 0, "d": 45}
    paths = {}
    for key, size in sizes.items():
        paths[key] = tmp_path / f"{key}.csv"
        paths[key].write_bytes(b"1" * size)
    paths["gone"] = tmp_path / "missing.csv"           # unreadable: counted as empty
    paths["frame"] = pd.DataFrame({"x": [1.0] * 1000})  # not a path: counted as empty
    order = io.largest_first(paths)
    assert order[:3] == ["b", "d", "a"]
    assert sorted(order[3:]) == ["c", "frame", "gone"]
    assert io.largest_first({}) == []


def test_load_matrix_kind(donor, tmp_path):
    other = tmp_path / "expression.csv"
    other.write_text(_matrix_csv(PROBE_IDS, MICROARRAY))
    with pytest.raises(ValueError, match="kind='microarray'"):
        io.load_matrix(other)
    assert io.load_matrix(other, "microarray").shape == (5, 4)
    with pytest.raises(ValueError, match="Unknown matrix kind"):
        io.load_matrix(other, "rnaseq")


def test_many_samples_pack_and_unpack(tmp_path):
    rng = np.random.default_rng(0)
    present = rng.random((40, 13)) < 0.5   # 13 samples: two bytes per row, 3 spare bits
    ids = np.arange(100, 140)
    path = tmp_path / "PACall.csv"
    path.write_text(_matrix_csv(ids, present.astype(int)))
    for _ in range(2):  # built, then cached
        np.testing.assert_array_equal(io.read_pacall(path).to_numpy(), present)


def _calls_by_pyarrow(path: Path, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """Probe ids and packed calls as pyarrow's general parser reads ``path``."""
    with monkeypatch.context() as patched:
        patched.setattr(io, "_plain_calls", lambda *args: None)
        blocks = list(io._iter_blocks(path, "pacall"))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _plain_calls_file(path: Path, rng, ids, n_samples: int) -> np.ndarray:
    calls = rng.random((len(ids), n_samples)) < 0.5
    path.write_text(_matrix_csv(ids, calls.astype(int)))
    return calls


@pytest.mark.parametrize("ids, n_samples", [
    (np.arange(1058000, 1058300), 13),                          # one length: one 2-D view
    (np.ravel(np.c_[np.arange(1, 40), np.arange(10**17, 10**17 + 39),  # runs of lengths
                    np.arange(1058685, 1058724)]), 8),
    ([1058685], 1),
    (np.arange(10**6, 10**6 + 3000), 946),                      # several chunks
])
def test_plain_pacall_is_read_from_its_bytes_as_pyarrow_reads_it(tmp_path, monkeypatch, ids,
                                                                 n_samples):
    monkeypatch.setattr(io, "_CALLS_CHUNK", 64 << 10)  # lines cut across chunks
    path = tmp_path / "PACall.csv"
    calls = _plain_calls_file(path, np.random.default_rng(3), ids, n_samples)
    plain = io._plain_calls(path, n_samples)
    assert plain is not None
    found_ids = np.concatenate([b[0] for b in plain])
    packed = np.concatenate([b[1] for b in plain])
    expected_ids, expected = _calls_by_pyarrow(path, monkeypatch)
    np.testing.assert_array_equal(found_ids, expected_ids)
    np.testing.assert_array_equal(found_ids, np.asarray(ids, dtype=np.int64))
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(
        np.unpackbits(packed, axis=1, count=n_samples).view(bool), calls)
    np.testing.assert_array_equal(io.read_pacall(path).to_numpy(), calls)  # and the cache
    np.testing.assert_array_equal(io.read_pacall(path, parquet=False).to_numpy(), calls)


@pytest.mark.parametrize("text", [
    "1,0,1\r\n2,1,1\r\n",          # CRLF
    '1,"0",1\n2,1,1\n',             # quotes
    '"1",0,1\n2,1,1\n',
    "1, 0,1\n2,1,1\n",              # a space
    "1,0,1\n\n2,1,1\n",            # an empty line (pyarrow skips it)
    "1,0,1\n2,1,1",                 # no newline at the end: still plain
    "01,0,1\n+2,1,1\n",             # a sign
    "1,0,1\n2,1,1,\n",
])
def test_other_pacall_forms_read_as_pyarrow_reads_them(tmp_path, monkeypatch, text):
    path = tmp_path / "PACall.csv"
    path.write_bytes(text.encode())
    plain = io._plain_calls(path, 2)
    if plain is not None:   # only the CRLF file and the file without a final newline are plain
        assert text.endswith("\r\n") or not text.endswith("\n")
    try:
        expected = _calls_by_pyarrow(path, monkeypatch)
    except io.AHBAFileError as err:
        with pytest.raises(io.AHBAFileError, match=re.escape(str(path))) as info:
            io.read_pacall(path)
        assert str(info.value) == str(err)
        return
    frame = io.read_pacall(path)
    np.testing.assert_array_equal(frame.index, expected[0])
    np.testing.assert_array_equal(np.packbits(frame.to_numpy().astype(bool), axis=1),
                                  expected[1])


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 8])
def test_stored_integers_keep_their_low_bytes(width):
    rng = np.random.default_rng(width)
    top = 2**(8 * width) - 1
    offsets = rng.integers(0, top, (7, 11), dtype=np.uint64, endpoint=True)
    offsets[0, :2] = 0, top
    source = offsets.astype("<u4") if width <= 4 else offsets
    packed = io._packed(source, width)
    expected = offsets.astype("<u8").view(np.uint8).reshape(7, 11, 8)[:, :, :width]
    np.testing.assert_array_equal(packed.view(np.uint8).reshape(7, 11, width), expected)


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------

def test_cache_is_built_once_and_reused(donor, monkeypatch):
    calls = _count_parses(monkeypatch)
    expr, pacall = donor / "MicroarrayExpression.csv", donor / "PACall.csv"
    first = io.read_microarray(expr), io.read_pacall(pacall)
    assert len(calls) == 2
    monkeypatch.setattr(io, "_iter_blocks", None)  # any parse now fails loudly
    second = io.read_microarray(expr), io.read_pacall(pacall)
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in (donor / io.CACHE_DIRNAME).glob("*.cache")) == [
        "MicroarrayExpression.csv.cache", "PACall.csv.cache"]
    assert not list((donor / io.CACHE_DIRNAME).glob("*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range: Linux")
def test_cache_build_starts_writing_the_file_out_as_it_grows(tmp_path, monkeypatch):
    """Each stretch of a cache being built is handed to the kernel to write out once, in order,
    from the first byte, while the file grows; the file is the same as without it."""
    rng = np.random.default_rng(5)
    rows = [",".join(f"{v:.6f}" for v in row) for row in rng.uniform(1.5, 18.4, (400, 40))]
    path = _write_rows(tmp_path / "MicroarrayExpression.csv", rows)
    cache = io.cache_locations(path)[0]
    io.load_matrix(path)
    plain = cache.read_bytes()
    cache.unlink()

    ranges = []

    class Recording(io._EarlyWriteback):
        def __init__(self, out):
            super().__init__(out)
            call = self.call

            def record(fd, start, length, flags):
                ranges.append((start, length, flags))
                return call(fd, start, length, flags)

            self.call = record

    monkeypatch.setattr(io, "_EarlyWriteback", Recording)
    monkeypatch.setattr(io, "_BLOCK_SIZE", 1 << 12)
    monkeypatch.setattr(io, "_WRITEBACK_STEP", 1 << 13)
    io.load_matrix(path)
    assert cache.read_bytes() == plain
    assert len(ranges) >= 5, ranges
    assert ranges[0][0] == 0
    assert all(start == prev + length for (prev, length, _), (start, _, _)
               in zip(ranges, ranges[1:]))
    assert all(length >= 1 << 13 and flags == io._SYNC_FILE_RANGE_WRITE
               for _, length, flags in ranges)
    assert sum(length for _, length, _ in ranges) <= len(plain)


def test_cache_is_rebuilt_when_the_source_changes(donor, monkeypatch):
    calls = _count_parses(monkeypatch)
    path = donor / "MicroarrayExpression.csv"
    assert io.read_microarray(path).iloc[0, 0] == 2.368
    changed = [row[:] for row in MICROARRAY]
    changed[0][0] = 3.368  # same size
    path.write_text(_matrix_csv(PROBE_IDS, changed))
    _bump_mtime(path)
    assert io.read_microarray(path).iloc[0, 0] == 3.368
    assert len(calls) == 2
    path.write_text(_matrix_csv(PROBE_IDS[:3], changed[:3]))  # other size
    assert io.read_microarray(path).shape == (3, 4)
    assert len(calls) == 3
    io.read_microarray(path)
    assert len(calls) == 3


def test_touched_source_rebuilds(donor, monkeypatch):
    calls = _count_parses(monkeypatch)
    path = donor / "PACall.csv"
    io.read_pacall(path)
    _bump_mtime(path)
    io.read_pacall(path)
    io.read_pacall(path)
    assert len(calls) == 2


def _deny_writes_under(monkeypatch, folder: Path) -> None:
    """Make ``folder`` look read-only to the cache (chmod does not stop root)."""
    real = io._can_write

    def can_write(path):
        return not Path(path).is_relative_to(folder) and real(path)

    monkeypatch.setattr(io, "_can_write", can_write)


def test_read_only_data_folder_uses_ahba_cache_dir(donor, tmp_path, monkeypatch):
    cache_root = tmp_path / "user-cache"
    monkeypatch.setenv("AHBA_CACHE_DIR", str(cache_root))
    _deny_writes_under(monkeypatch, donor)
    calls = _count_parses(monkeypatch)
    path = donor / "MicroarrayExpression.csv"
    matrix = io.load_matrix(path)
    assert matrix.cache == io.cache_locations(path)[1]
    assert matrix.cache.is_relative_to(cache_root / "matrix-cache")
    assert not (donor / io.CACHE_DIRNAME).exists()
    _assert_bits_equal(io.read_microarray(path).to_numpy(), MICROARRAY)
    assert len(calls) == 1
    # another folder with the same file name gets its own entry
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "MicroarrayExpression.csv").write_text(_matrix_csv([7], [[1.0, 2.0]]))
    _deny_writes_under(monkeypatch, twin)
    assert io.read_microarray(twin / "MicroarrayExpression.csv").shape == (1, 2)
    assert len(list((cache_root / "matrix-cache").iterdir())) == 2


def test_read_only_folder_falls_back_to_xdg_then_home(donor, monkeypatch):
    _deny_writes_under(monkeypatch, donor)
    path = donor / "PACall.csv"
    xdg = Path(os.environ["XDG_CACHE_HOME"])
    assert io.load_matrix(path).cache.is_relative_to(xdg / "ahba-app")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert io.load_matrix(path).cache.is_relative_to(Path.home() / ".cache" / "ahba-app")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_chmod_read_only_folder(donor, tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_CACHE_DIR", str(tmp_path / "user-cache"))
    donor.chmod(0o555)
    try:
        matrix = io.load_matrix(donor / "MicroarrayExpression.csv")
    finally:
        donor.chmod(0o755)
    assert matrix.cache.is_relative_to(tmp_path / "user-cache")


def test_cache_beside_read_only_data_is_still_used(donor, monkeypatch):
    path = donor / "MicroarrayExpression.csv"
    built = io.load_matrix(path).cache
    _deny_writes_under(monkeypatch, donor)
    calls = _count_parses(monkeypatch)
    assert io.load_matrix(path).cache == built
    assert not calls


def test_no_writable_location_parses_with_a_warning(donor, monkeypatch):
    monkeypatch.setattr(io, "_can_write", lambda path: False)
    with pytest.warns(UserWarning, match="AHBA_CACHE_DIR"):
        data = io.read_microarray(donor / "MicroarrayExpression.csv")
    assert data.shape == (5, 4)
    data.iloc[0, 0] = 1.0
    assert not (donor / io.CACHE_DIRNAME).exists()


def _corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 40)


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_value(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[64 + 1] ^= 0xFF  # inside the first value(s)
    path.write_bytes(bytes(data))


def _corrupt_probe_id(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = io._PREAMBLE.unpack(bytes(data[: io._PREAMBLE.size]))
    data[header[3] - 3] ^= 0x01  # last probe id, just before the header
    path.write_bytes(bytes(data))


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header_offset = io._PREAMBLE.unpack(bytes(data[: io._PREAMBLE.size]))[3]
    data[header_offset] = ord("[")
    path.write_bytes(bytes(data))


def _corrupt_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = (io.CACHE_FORMAT_VERSION + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_garbage, _corrupt_empty,
                                     _corrupt_value, _corrupt_probe_id, _corrupt_header,
                                     _corrupt_version])
@pytest.mark.parametrize("name", ["MicroarrayExpression.csv", "PACall.csv"])
def test_damaged_cache_is_rebuilt(donor, monkeypatch, corrupt, name):
    path = donor / name
    reader = io.read_microarray if name.startswith("Micro") else io.read_pacall
    good = reader(path).copy(deep=True)  # the frame maps the cache that is damaged in place
    cache = io.cache_locations(path)[0]
    corrupt(cache)
    calls = _count_parses(monkeypatch)
    pd.testing.assert_frame_equal(reader(path), good)
    assert len(calls) == 1
    reader(path)
    assert len(calls) == 1


def test_a_pacall_cache_is_read_whole_once_per_run_until_it_changes(donor, monkeypatch):
    """Within a run's record of checked caches (:func:`io.remembering_checks`)."""
    import time

    path = donor / "PACall.csv"
    with io.remembering_checks():
        good = io.read_pacall(path).copy(deep=True)  # built and checked
        checks = []
        real = io._file_crc32
        monkeypatch.setattr(io, "_file_crc32", lambda *a: checks.append(a) or real(*a))
        io.load_matrix(path)
        io.load_matrix(path, verify=True)
        assert checks == []  # the same file, unchanged: not read again
        time.sleep(0.05)  # a later clock tick: the damage moves the file's change time
        _corrupt_value(io.cache_locations(path)[0])
        calls = _count_parses(monkeypatch)
        pd.testing.assert_frame_equal(io.read_pacall(path), good)
        assert checks and len(calls) == 1  # the damage found: the cache was rebuilt
        checked = len(checks)
        io.load_matrix(path)
        assert len(checks) == checked  # the new file was known good when it was built


@pytest.mark.parametrize("name", ["MicroarrayExpression.csv", "PACall.csv"])
def test_a_cache_just_built_is_not_read_back_for_its_checksum(donor, monkeypatch, name):
    """The checksums of a cache are computed from the bytes as they are written, so the call
    that builds it does not read it whole again to check them; a later call does for a PACall
    cache (no record of checked caches passed), and finds them right; a microarray cache is
    never read whole (its rows are checked as they are read)."""
    path = donor / name
    checks = []
    real = io._file_crc32
    monkeypatch.setattr(io, "_file_crc32", lambda *a: checks.append(a) or real(*a))
    built = io.load_matrix(path)
    assert built.cache is not None and checks == []
    calls = _count_parses(monkeypatch)
    again = io.load_matrix(path)
    assert len(checks) == (1 if name == "PACall.csv" else 0) and not calls  # (not rebuilt)
    assert again.content_id == built.content_id


def test_checked_caches_are_the_callers_record(donor, monkeypatch):
    """A cache is read whole for its checksum at every opening, unless the caller passes the
    record of its run (``checked``, or :func:`io.remembering_checks` around the calls, which
    the pieces of ``thread_map`` share): then once, and again only when the file changed."""
    from ahba_app._blocks import thread_map

    path = donor / "PACall.csv"
    io.load_matrix(path)  # built (no check)
    checks = []
    real = io._file_crc32
    monkeypatch.setattr(io, "_file_crc32", lambda *a: checks.append(a) or real(*a))
    io.load_matrix(path)
    io.load_matrix(path)
    assert len(checks) == 2  # no record: each call checks
    record = io.CheckedCaches()
    io.load_matrix(path, checked=record)
    io.load_matrix(path, checked=record)
    assert len(checks) == 3 and len(record) == 1
    with io.remembering_checks() as run:
        with io.remembering_checks() as inner:  # (a block within a run shares its record)
            assert inner is run
        io.load_matrix(path)
        thread_map(lambda _: io.load_matrix(path), range(4), threads=2)  # (not again)
    assert len(checks) == 4 and len(run) == 1
    with io.remembering_checks(record):  # (the caller's record: already checked)
        io.load_matrix(path)
    assert len(checks) == 4
    io.load_matrix(path)  # outside any block: checked again
    assert len(checks) == 5
    cache = io.cache_locations(path)[0]
    os.utime(cache)  # a file changed in place is another file
    io.load_matrix(path, checked=record)
    assert len(checks) == 6 and len(record) == 2


def test_the_record_of_checked_caches_keeps_the_most_recent():
    record = io.CheckedCaches(size=2)
    for identity in ("a", "b", "a", "c"):
        record.add(identity)
    assert "a" in record and "c" in record and "b" not in record and len(record) == 2


def test_a_cache_replaced_as_it_is_built_is_checked(donor, monkeypatch):
    """Only the very file this process wrote is taken as checked: a copy renamed over it
    right after (another inode) is read whole for its checksum before it is used."""
    path = donor / "PACall.csv"
    good = io.read_pacall(path).copy(deep=True)
    cache = io.cache_locations(path)[0]
    copy = cache.read_bytes()
    cache.unlink()
    real_fsync = io.atomic.fsync_folder

    def swap(folder):  # between the rename into place and the look at what is there
        real_fsync(folder)
        other = cache.with_name("other")
        other.write_bytes(copy)
        os.replace(other, cache)

    monkeypatch.setattr(io.atomic, "fsync_folder", swap)
    checks = []
    real = io._file_crc32
    monkeypatch.setattr(io, "_file_crc32", lambda *a: checks.append(a) or real(*a))
    pd.testing.assert_frame_equal(io.read_pacall(path), good)
    assert len(checks) == 1


def _damage_row(cache: Path, matrix, row: int) -> None:
    """Flip one bit of a value of ``row`` in the cache file (as a failing disk would)."""
    codes = matrix.codes
    view = codes.views[int(codes.segment[row])]
    offset = 64 + (view.__array_interface__["data"][0]
                   - matrix.values.__array_interface__["data"][0]) \
        + int(codes.slot[row]) * view.strides[0]
    data = bytearray(cache.read_bytes())
    data[offset] ^= 0x01
    cache.write_bytes(bytes(data))


def test_a_microarray_cache_is_checked_row_by_row_as_read(donor, monkeypatch, caplog):
    """Opening a microarray cache reads none of its values; each row is checked as it is
    read, so a damaged row that a run does not read is harmless, and one it reads has the
    cache rebuilt from the CSV, the run going on with the right numbers (and the matrix
    mapped before the damage reading the new file from then on)."""
    path = donor / "MicroarrayExpression.csv"
    good = io.read_microarray(path).to_numpy().copy()
    matrix = io.load_matrix(path)
    cache = matrix.cache
    checks = []
    real = io._file_crc32
    monkeypatch.setattr(io, "_file_crc32", lambda *a: checks.append(a) or real(*a))
    _damage_row(cache, matrix, 0)
    calls = _count_parses(monkeypatch)
    damaged = io.load_matrix(path)
    assert checks == [] and not calls  # not read whole: the damage is not seen yet
    np.testing.assert_array_equal(io.decode_rows(damaged, np.arange(1, 5)), good[1:])
    assert not calls  # the rows read are sound
    with caplog.at_level("WARNING", logger=io.LOGGER.name):
        np.testing.assert_array_equal(io.decode_rows(damaged, np.array([2, 0])),
                                      good[[2, 0]])
    assert len(calls) == 1 and "fail their checks" in caplog.text  # rebuilt, once
    assert f"replacing it with a cache rebuilt from {path}" in caplog.text
    assert cache.read_bytes() != b""
    np.testing.assert_array_equal(io.decode_rows(damaged, np.arange(5)), good)
    np.testing.assert_array_equal(io.decode_rows(matrix, np.arange(5)), good)
    np.testing.assert_array_equal(io.decode_rows(io.load_matrix(path), np.arange(5)), good)
    assert len(calls) == 1


def test_rows_that_fail_again_once_rebuilt_stop_the_run_with_a_clear_error(donor, monkeypatch):
    path = donor / "MicroarrayExpression.csv"
    io.load_matrix(path)
    real = io._stored_rows

    def failing_disk(codes, w, rows):  # every read of row 0 comes back with a bit flipped
        stored = real(codes, w, rows)
        stored.view(np.uint8)[0] ^= 0x01
        return stored

    monkeypatch.setattr(io, "_stored_rows", failing_disk)
    calls = _count_parses(monkeypatch)
    with pytest.raises(io.DamagedCacheError,
                       match="fails its checks as soon as it is written.*Check the disk"):
        io.decode_rows(io.load_matrix(path), np.arange(3))
    assert len(calls) == 1


def test_a_damaged_cache_that_cannot_be_rebuilt_names_itself(donor, monkeypatch):
    path = donor / "MicroarrayExpression.csv"
    matrix = io.load_matrix(path)
    _damage_row(matrix.cache, matrix, 1)
    monkeypatch.setattr(io, "_can_write", lambda folder: False)  # (root ignores read-only)
    with pytest.warns(UserWarning, match="No writable place"), \
            pytest.raises(io.DamagedCacheError, match="cannot be rebuilt here") as raised:
        io.decode_rows(io.load_matrix(path), np.arange(3))
    assert str(matrix.cache) in str(raised.value) and "delete the cache file" in str(raised.value)


def test_row_checks_change_with_any_value_and_any_swap():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        stored = rng.integers(0, np.iinfo(dtype).max, (4, 300), dtype=dtype, endpoint=True)
        base = io.row_checks(stored)
        assert base.dtype == np.uint64 and base.shape == (4,)
        for j in (0, 150, 299):
            changed = stored.copy()
            changed[1, j] ^= dtype(1)
            assert (io.row_checks(changed) != base).tolist() == [False, True, False, False]
        swapped = stored.copy()
        swapped[2, [3, 4]] = stored[2, [4, 3]]
        if stored[2, 3] != stored[2, 4]:
            assert (io.row_checks(swapped) != base).tolist() == [False, False, True, False]
    floats = np.array([[0.0, 1.5, np.nan], [-0.0, 1.5, np.nan]])
    first, second = io.row_checks(floats)  # by their bits: 0.0 and -0.0 differ
    assert first != second


@pytest.mark.parametrize("mapped", [True, False])
def test_file_checksum_of_a_byte_range(tmp_path, monkeypatch, mapped):
    """The cache check's CRC-32 of a byte range equals zlib's over those bytes, read through a
    map a chunk at a time or, where the map cannot be made, read into a buffer; a range that
    runs past the end of the file checks the bytes there are (a damaged cache then fails)."""
    import mmap
    import zlib

    monkeypatch.setattr(io, "_CHECK_CHUNK", 3 * 4096 + 5)  # chunks not aligned on pages
    if not mapped:
        monkeypatch.delattr(mmap, "MADV_DONTNEED")
    data = np.random.default_rng(1).integers(0, 256, 50_003, dtype=np.uint8).tobytes()
    path = tmp_path / "bytes"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        for offset, length in ((0, len(data)), (4096, 100), (123, 40_000), (len(data) - 7, 7),
                               (10, 0)):
            assert io._file_crc32(handle, offset, length) == zlib.crc32(
                data[offset:offset + length]), (offset, length)
        assert io._file_crc32(handle, 100, len(data)) == zlib.crc32(data[100:])


def test_ensure_cache(donor, monkeypatch):
    path = donor / "PACall.csv"
    assert io.ensure_cache(path) == io.cache_locations(path)[0]
    assert io.cache_locations(path)[0].is_file()
    other = donor / "MicroarrayExpression.csv"
    monkeypatch.setattr(io, "_can_write", lambda folder: False)
    with pytest.warns(UserWarning, match="No writable place"):
        assert io.ensure_cache(other) is None


def test_stale_temporaries_are_removed(donor):
    path = donor / "MicroarrayExpression.csv"
    cache = io.cache_locations(path)[0]
    cache.parent.mkdir()
    leftover = cache.parent / (cache.name + ".dead1234.tmp")
    leftover.write_bytes(b"half a cache")
    io.load_matrix(path)
    assert not leftover.exists()


_BUILDER = """
import hashlib, os, sys, time
import numpy as np
from pathlib import Path
from ahba_app import io
path, go, log = map(Path, sys.argv[1:4])
real = io._write_cache
def logged(*args):
    with open(log, "a") as handle:
        handle.write("build\\n")
    real(*args)
io._write_cache = logged
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
data = io.read_microarray(path)
digest = hashlib.sha256(np.ascontiguousarray(data.to_numpy()).tobytes()).hexdigest()
print(data.shape[0], data.shape[1], digest)
"""


def test_two_processes_build_one_cache(tmp_path):
    rng = np.random.default_rng(1)
    values = np.round(rng.uniform(1.5, 18.4, (3000, 60)), 5)
    path = tmp_path / "MicroarrayExpression.csv"
    path.write_text(_matrix_csv(range(1, 3001), values))
    go, log = tmp_path / "go", tmp_path / "builds.log"
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(go), str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both have imported everything: release them together
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    digest = hashlib.sha256(values.tobytes()).hexdigest()  # exact float64: the CSV holds repr
    expected = f"3000 60 {digest}"
    assert [out.strip() for out, _ in outputs] == [expected, expected]
    assert log.read_text().count("build") == 1
    cache_dir = tmp_path / io.CACHE_DIRNAME
    assert [p.name for p in cache_dir.glob("*.cache")] == ["MicroarrayExpression.csv.cache"]
    assert not list(cache_dir.glob("*.tmp"))
    _assert_bits_equal(io.read_microarray(path).to_numpy(), values)


def test_cache_files_follow_the_umask(donor):
    old = os.umask(0o022)
    try:
        cache = io.load_matrix(donor / "PACall.csv").cache
    finally:
        os.umask(old)
    assert cache.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------
# Malformed files
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("\n\n", "empty"),
    ("1,2.5,3.5\n2,4.5\n", "Expected 3 columns, got 2"),
    ("1,2.5,3.5\n2,4.5,5.5,6.5\n", "Expected 3 columns, got 4"),
    ("1,2.5,3.5\n2,4.5,abc\n", "sample column 2"),
    ("probe_id,s1,s2\n1,2.5,3.5\n", "no header row"),
    ("1,2.5,3.5\n,4.5,5.5\n", "no probe id"),
    ("1058685\n1058684\n", "no sample columns"),
    ("1,2.5,3.5\n1,4.5,5.5\n", "more than once: 1"),
])
@pytest.mark.parametrize("parquet", [True, False])
def test_malformed_microarray_names_the_file(tmp_path, text, problem, parquet):
    path = tmp_path / "MicroarrayExpression.csv"
    path.write_text(text)
    with pytest.raises(io.AHBAFileError, match=problem) as info:
        io.read_microarray(path, parquet=parquet)
    assert str(path) in str(info.value)
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(tmp_path.rglob("*.cache"))


@pytest.mark.parametrize("text, problem", [
    ("1,0,1\n2,1,2\n", "row 2, sample column 2 holds 2; PACall values must be 0 or 1"),
    ("1,0,1\n2,1,\n", "sample column 2 has an empty value"),
    ("1,0,1\n2,1,0.5\n", "sample column 2"),
    ("1,0,1\n2,-1,1\n", "sample column 1"),
    ("1,0,1\n2,true,1\n", "sample column 1"),
])
def test_malformed_pacall_names_the_file(tmp_path, text, problem):
    path = tmp_path / "PACall.csv"
    path.write_text(text)
    with pytest.raises(io.AHBAFileError, match=problem) as info:
        io.read_pacall(path)
    assert str(path) in str(info.value)


def test_malformed_small_files_name_the_file(tmp_path):
    empty = tmp_path / "Probes.csv"
    empty.write_text("")
    with pytest.raises(io.AHBAFileError, match="Probes.csv"):
        io.read_probes(empty)
    tpm = tmp_path / "RNAseqTPM.csv"
    tpm.write_text("A1BG,1,2\nA2M,3,x\n")
    with pytest.raises(io.AHBAFileError, match="RNAseqTPM.csv"):
        io.read_tpm(tpm)


def test_long_rows_are_not_quoted_in_full(tmp_path):
    path = tmp_path / "MicroarrayExpression.csv"
    path.write_text("1," + ",".join(["2.5"] * 2000) + "\n2," + ",".join(["2.5"] * 1999) + "\n")
    with pytest.raises(io.AHBAFileError) as info:
        io.read_microarray(path)
    assert len(str(info.value)) < 600


def test_check_microarray_pacall(donor, tmp_path):
    expr, pacall = donor / "MicroarrayExpression.csv", donor / "PACall.csv"
    io.check_microarray_pacall(expr, pacall)
    io.check_microarray_pacall(io.read_microarray(expr), io.load_matrix(pacall))
    short = tmp_path / "PACall.csv"
    short.write_text(_matrix_csv(PROBE_IDS[:4], PACALL[:4]))
    with pytest.raises(io.AHBAFileError, match="shape") as info:
        io.check_microarray_pacall(expr, short)
    assert str(expr) in str(info.value) and str(short) in str(info.value)
    other_ids = PROBE_IDS[:2] + [99] + PROBE_IDS[3:]
    short.write_text(_matrix_csv(other_ids, PACALL))
    with pytest.raises(io.AHBAFileError, match="row 3 .1058683 against 99"):
        io.check_microarray_pacall(expr, short)


# ------------------------------------------------------------------------------------------
# abagen as the oracle
# ------------------------------------------------------------------------------------------

_ORACLE = """
import abagen.io as aio
for key, (reader, path) in PARAMS["files"].items():
    save(key, getattr(aio, reader)(path))
"""


def _oracle_files(donor_folder: Path, rna_folder: Path) -> dict:
    return {
        "microarray": ("read_microarray", donor_folder / "MicroarrayExpression.csv"),
        "pacall": ("read_pacall", donor_folder / "PACall.csv"),
        "probes": ("read_probes", donor_folder / "Probes.csv"),
        "annotation": ("read_annotation", donor_folder / "SampleAnnot.csv"),
        "ontology": ("read_ontology", donor_folder / "Ontology.csv"),
        "genes": ("read_genes", rna_folder / "Genes.csv"),
        "tpm": ("read_tpm", rna_folder / "RNAseqTPM.csv"),
        "counts": ("read_counts", rna_folder / "RNAseqCounts.csv"),
        "rna_annotation": ("read_annotation", rna_folder / "SampleAnnot.csv"),
    }


def _compare_with_abagen(files: dict, theirs: dict) -> None:
    for key, (reader, path) in files.items():
        ours, expected = getattr(io, reader)(path), theirs[key]
        for mine, theirs_ in ((ours.index, expected.index), (ours.columns, expected.columns)):
            assert mine.name == theirs_.name and mine.tolist() == theirs_.tolist(), key
            if theirs_.dtype != object:  # text: pandas 3's str against pandas 1.5's object
                assert mine.dtype == theirs_.dtype, key
        if key == "microarray":
            # abagen parses with pandas' default float parser: at most an ulp from ours
            assert (ours.dtypes == np.float64).all()
            np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=0)
        elif key == "pacall":
            np.testing.assert_array_equal(ours.to_numpy(), expected.to_numpy().astype(bool))
        else:
            pd.testing.assert_frame_equal(ours, expected, check_dtype=False,
                                          check_index_type=False, check_column_type=False)


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 1.26 pickles under numpy 2
def test_readers_match_abagen_on_hand_written_files(donor, tmp_path):
    from oracle import run_abagen

    files = _oracle_files(donor, _rna(donor))
    theirs = run_abagen(_ORACLE, tmp_path / "oracle",
                        files={k: (r, str(p)) for k, (r, p) in files.items()})
    _compare_with_abagen(files, theirs)


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readers_match_abagen_on_synthetic_data(ahba_small, tmp_path):
    from oracle import run_abagen

    files = _oracle_files(ahba_small / "microarray" / "normalized_microarray_donor10021",
                          ahba_small / "rnaseq" / "rnaseq_donor10021")
    theirs = run_abagen(_ORACLE, tmp_path / "oracle",
                        files={k: (r, str(p)) for k, (r, p) in files.items()})
    _compare_with_abagen(files, theirs)


def test_synthetic_donor_is_exact(ahba_small):
    path = ahba_small / "microarray" / "normalized_microarray_donor10021" / \
        "MicroarrayExpression.csv"
    data = io.read_microarray(path)
    _assert_exact(data, path)
    matrix = io.load_matrix(path)
    assert set(matrix.codes.divisor) <= {1e5, 1e6}  # synthetic: 6 decimals
    # 3 bytes a value (ranges below 16.7), plus the probe ids, the row table and the header
    assert matrix.codes.widths() == {3: len(data)}
    assert matrix.cache.stat().st_size < 3 * data.size + 25 * len(data) + 64 * 1024
    rows = np.arange(0, len(data), 3)
    _assert_bits_equal(io.select_rows(matrix, rows), data.to_numpy()[rows])


def test_synthetic_donors_read_and_agree(ahba_small):
    for folder in sorted((ahba_small / "microarray").glob("normalized_microarray_donor*")):
        expr = io.load_matrix(folder / "MicroarrayExpression.csv")
        pacall = io.load_matrix(folder / "PACall.csv")
        io.check_microarray_pacall(expr, pacall)
        annot = io.read_annotation(folder / "SampleAnnot.csv")
        probes = io.read_probes(folder / "Probes.csv")
        assert expr.shape == (len(probes), len(annot))
        assert (np.asarray(expr.probe_ids) == probes.index.to_numpy()).all()
        values = io.select_rows(expr)
        assert 1.5 <= values.min() and values.max() <= 18.4
        assert set(expr.codes.divisor) <= {1e5, 1e6}  # synthetic: 6 decimals
