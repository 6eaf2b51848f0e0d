"""How small can an exact cache of the microarray values be? Information content against sizes.

    python benchmarks/cache_bound.py DATA [DATA ...] [--rows 1000] [--work DIR]
        [--abagen-python PY | --parquet-mib MIB ...] [--share 0.5 ...] [--compress-rows 100]
        [--structure [--prototype] [--ranks K ...] [--combined K ...] [--fit-rows 4000]
         [--row-parameter-bits 16]] [--json FILE]

Issue #16 asks for our cache to be at most half of abagen's parquet files up to 12 significant
digits (and no larger at 17). Every cache must give back each value exactly, so no cache can
hold the values in fewer bits than they carry. For each data folder
(``microarray/normalized_microarray_donor<N>/``, only read: caches are built on hard links in
``--work``) this prints, in bits a value (``--rows`` rows of each donor, spread evenly):

``model``
    Rigorous for our synthetic generator (``synthetic.json`` of this generator version): the
    entropy of the values *given every parameter of the generator* (each value's mean, each
    probe's noise sd), each value being ``f(mean + sd * Z)`` written to its grid, ``f`` the
    soft floor at the background. A value's share is ``log2(sqrt(2 pi e) sd) + log2 f'(v) -
    log2 q(v)``: the normal noise's differential entropy, the floor squeezing values together,
    and ``q(v)`` the value's cell (the step of the digits written, or float64's spacing where
    that is coarser); a value at the floor or the ceiling counts nothing. Then the PA calls'
    entropy given the values (each call is ``value + N(0, 0.6) > the donor's background``, a
    coin of known bias). For any lossless code, the expected size over the generator's noise is
    at least the data's entropy, which is at least this conditional entropy (knowing the
    parameters adds no information): **no exact encoding, however clever its model of the
    signal, can hold such data in less on average.** (One fixed file has no computable bound: a
    seeded generator's output could be rebuilt from its seed; a cache cannot count on that.)
    The figure is the mean over the sampled values, an unbiased estimate of that expectation.
``row``
    For any data: an estimate of the information for an encoding that models each probe's row
    on its own (as ours and parquet's do): the row's empirical entropy of each value's leading
    part (sign, decimal exponent and first ``--lead`` significant digits; the plug-in estimate,
    never above the true entropy on average) plus, for each later significant digit up to the
    grid of the digits written, its empirical entropy at that place (by exponent), summed as if
    those digits were independent; the PA calls likewise, given the row and the leading part.
    Places finer than twice float64's spacing are left out (a function of the values carries no
    more than they do), so at 17 digits this is below ``model``. Only an estimate: it cannot see
    structure across rows, and a sum of per-digit entropies is exact only for independent
    digits. The last lines test that: each later digit's entropy against log2(10) = 3.32 bits,
    and the mutual information between neighbouring places, between the first later digit and
    the leading part, and between the same place of neighbouring values of a row (each near its
    plug-in bias, printed beside it, when independent).
``digits``
    The later digits alone (the leading part counted free): what even a perfect model of each
    value's leading digits would still have to store, if those digits are noise.

``--structure`` (reads each donor's matrix whole) asks what a generic codec, one that knows
nothing of our generator, could do better than per-row coding, in bits a value of the same
sampled rows, each model's residual coded exactly on each value's cell (one scale a row, one
shape for all: the pooled plug-in entropy of the standardized residuals) and its parameters
charged (``--row-parameter-bits`` each a row, 32 each a column): the row alone (its mean and
scale: the baseline); plus per-sample offsets; a rank-k model (k scores a row on the right
singular vectors of ``--fit-rows`` other rows); the row's best-correlated earlier row in the
file (an index and a slope: a decoder going down the file has it), its best two, and the best
earlier row on top of rank k. Then the PA calls (packed bits as ours; zstd and xz over them;
per-row coins and chains; one table of the call given the decoded value), the layouts of each
row's scaled integers (whole bytes as ours, bit widths, the top 8 bits entropy-coded), and the
rows' spread with the sd up to which a per-row normal code would meet the target.
``--prototype`` codes and decodes the sampled rows with a working reference-row codec (numba
rANS; every value checked bit for bit), its real size and decoding time beside a whole-byte
decoder's in the same runs.

Compared with: our cache (the ``MicroarrayExpression`` cache files, and with PACall's), abagen's
parquet files (built by ``--abagen-python``, abagen 0.1.3's own conversion, on hard links in
``--work``; or ``--parquet-mib``, sizes measured by ``benchmarks/run.py``), the target (``--share``
of them, given whole to the values and calls: the row tables would have to fit in it too), and
general-purpose compressors (xz -9e, zstd -19) over the text of ``--compress-rows`` rows per
donor and over their float64 bytes: what compression reaches in practice. The verdict: the
target is out of reach of any exact encoding when the ``model`` figure is above it.
"""

from __future__ import annotations

import argparse
import errno
import json
import lzma
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

FILES = ("MicroarrayExpression.csv", "PACall.csv")
LOG2_10 = math.log2(10)
#: What abagen 0.1.3 does when first reading a donor's files with parquet on: converts each
#: CSV to a ``.parq`` file beside it (``abagen.io._make_parquet``).
_ABAGEN_CONVERT = """
import sys
from abagen import io
if not io.use_parq:
    sys.exit("abagen cannot write parquet here (fastparquet or python-snappy missing)")
for folder in sys.argv[1:]:
    io.read_microarray(folder + "/MicroarrayExpression.csv")
    io.read_pacall(folder + "/PACall.csv")
"""


# --------------------------------------------------------------------------------------------
# the values as written
# --------------------------------------------------------------------------------------------
def donor_folders(data: Path) -> list[Path]:
    folders = sorted((data / "microarray").glob("normalized_microarray_donor*"))
    if not folders:
        raise SystemExit(f"{data}: no microarray/normalized_microarray_donor<N>/ folders")
    return folders


def sampled_lines(path: Path, rows: int | None) -> tuple[list[int], list[bytes]]:
    """``rows`` lines of a matrix file spread evenly over it (all with None): their positions
    and their text."""
    lines = path.read_bytes().splitlines()
    lines = [line for line in lines if line.strip()]
    picked = (range(len(lines)) if rows is None or rows >= len(lines)
              else np.unique(np.linspace(0, len(lines) - 1, rows).round().astype(int)))
    return [int(i) for i in picked], [lines[i] for i in picked]


class Values:
    """Values of matrix lines as their decimal digits: for each value its row, sign, decimal
    exponent ``E`` (value = 0.d1 d2 ... x 10**E) and significant digits (zeros past those
    written); ``float`` the value itself."""

    def __init__(self, lines: list[bytes], row_ids: list[int]):
        fields = [line.split(b",", 1)[1].strip() for line in lines]
        per_line = np.asarray([f.count(b",") + 1 for f in fields])
        tokens = b",".join(fields).split(b",")
        self.row = np.repeat(np.asarray(row_ids), per_line)
        plain = [t.strip() for t in tokens]
        known = np.asarray([_plain_number(t) for t in plain])
        self.missing = int((~known).sum())
        self.known = known
        self.row = self.row[known]
        plain = [t for t, ok in zip(plain, known) if ok]
        self.sign, self.exponent, self.digits = _digit_table(plain)
        self.float = np.asarray([float(t) for t in plain])

    def __len__(self) -> int:
        return len(self.float)


def read_calls(path: Path, row_ids: list[int], known: np.ndarray) -> np.ndarray:
    """The PA calls of the lines ``row_ids`` of ``path``, for the values kept (``known``)."""
    _, lines = sampled_lines(path, None)
    calls = np.asarray(b",".join(lines[i].split(b",", 1)[1].strip() for i in row_ids)
                       .split(b","), dtype=np.int64)
    if len(calls) != len(known):
        raise SystemExit(f"{path}: not the shape of MicroarrayExpression.csv")
    return calls[known]


def _plain_number(token: bytes) -> bool:
    """Whether ``token`` is a number in plain decimal notation (NaN or empty: missing)."""
    if not token or token.lower() in (b"nan", b"na", b"inf", b"-inf"):
        return False
    if any(c in token for c in b"eE"):
        raise SystemExit(f"value {token!r} in exponent notation: only plain decimals are "
                         "handled (AHBA files and our synthetic ones write them plainly)")
    return True


def _digit_table(tokens: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sign, E, digits): digits is (values, places) uint8, place j holding the (j+1)-th
    significant digit (zero past the digits written, and everywhere for a zero)."""
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    buf = np.frombuffer(b"".join(tokens), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = np.repeat(np.arange(len(tokens)), lengths)
    pos = np.arange(len(buf))
    is_digit = (buf >= 48) & (buf <= 57)
    is_point = buf == ord(".")
    sign = np.zeros(len(tokens), dtype=bool)
    sign[owner[buf == ord("-")]] = True
    ends = starts + lengths
    point = np.minimum.reduceat(np.where(is_point, pos, np.iinfo(np.int64).max), starts)
    point = np.minimum(point, ends)
    first = np.minimum.reduceat(np.where(is_digit & (buf != ord("0")), pos,
                                         np.iinfo(np.int64).max), starts)
    zero = first >= ends
    first = np.where(zero, ends, first)
    exponent = np.where(first < point, point - first, -(first - point - 1))
    exponent[zero] = 0
    significant = is_digit & (pos >= first[owner])
    # place of each significant digit: significant digits of its value before it
    before = np.concatenate([[0], np.cumsum(significant)])
    place = before[1:] - 1 - before[first[owner]]
    width = int(place[significant].max()) + 1 if significant.any() else 1
    digits = np.zeros((len(tokens), width), dtype=np.uint8)
    digits[owner[significant], place[significant]] = buf[significant] - 48
    return sign, exponent.astype(np.int64), digits


# --------------------------------------------------------------------------------------------
# information estimates
# --------------------------------------------------------------------------------------------
def entropy_bits(counts: np.ndarray) -> float:
    """Plug-in entropy (bits a symbol) of a table of counts."""
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def grouped_entropy_total(groups: np.ndarray, symbols: np.ndarray) -> float:
    """Sum over groups of (group size x plug-in entropy of ``symbols`` in the group): the bits
    of a code fitted to each group's own frequencies."""
    if not len(symbols):
        return 0.0
    _, g = np.unique(groups, return_inverse=True)
    _, k = np.unique(symbols, return_inverse=True)
    counts = np.bincount(g.astype(np.int64) * (k.max() + 1) + k,
                         minlength=(g.max() + 1) * (k.max() + 1))
    size = np.repeat(np.bincount(g), k.max() + 1)
    used = counts > 0
    return float(-(counts[used] * np.log2(counts[used] / size[used])).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Plug-in mutual information of two symbol arrays (bits), and its bias when they are
    independent ((cells - 1) / (2 N ln 2), the first-order term)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = ia.astype(np.int64) * (ib.max() + 1) + ib
    mi = (entropy_bits(np.bincount(ia)) + entropy_bits(np.bincount(ib))
          - entropy_bits(np.bincount(joint)))
    cells = (ia.max() + 1 - 1) * (ib.max() + 1 - 1)
    return mi, cells / (2 * len(a) * math.log(2))


def grid_places(values: Values) -> np.ndarray:
    """Significant digits of each value's grid: the most any value of its exponent writes."""
    written = np.where(values.digits.any(axis=1),
                       values.digits.shape[1] - np.argmax(values.digits[:, ::-1] != 0, axis=1), 0)
    most = {e: int(written[values.exponent == e].max()) for e in np.unique(values.exponent)}
    return np.asarray([most[e] for e in values.exponent]) if len(values) else written


def counted_places(values: Values) -> np.ndarray:
    """(values, places) bool: places on the value's grid whose step is at least twice float64's
    spacing at the value (finer places are left out, so the bound stays one)."""
    n_places = values.digits.shape[1]
    j = np.arange(1, n_places + 1)
    step = 10.0 ** (values.exponent[:, None] - j[None, :])
    spacing = np.spacing(np.abs(values.float))[:, None]
    on_grid = j[None, :] <= grid_places(values)[:, None]
    return on_grid & (step >= 2 * spacing)


def row_estimate(values: Values, lead: int, calls: np.ndarray | None = None) -> dict:
    """The ``row`` and ``digits`` estimates (see the module text), with the digit tests."""
    n = len(values)
    counted = counted_places(values)
    lead = min(lead, values.digits.shape[1])
    key = (values.sign.astype(np.int64) * 1000 + values.exponent + 500) * 10**lead
    for j in range(lead):
        key = key + values.digits[:, j].astype(np.int64) * 10**(lead - 1 - j)
    lead_bits = grouped_entropy_total(values.row, key)
    later_bits, worst, places = 0.0, (0.0, None, None), 0
    for j in range(lead, values.digits.shape[1]):
        use = counted[:, j]
        if not use.any():
            continue
        digit = values.digits[use, j]
        later_bits += grouped_entropy_total(values.exponent[use], digit)
        for e in np.unique(values.exponent[use]):
            at = values.exponent[use] == e
            if at.sum() >= 1000:  # (the plug-in's bias is then below 0.007 bits)
                short = LOG2_10 - entropy_bits(np.bincount(digit[at], minlength=10))
                worst = max(worst, (short, j + 1, int(e)), key=lambda w: w[0])
        places += 1
    tests = {}
    j = lead
    if j + 1 < values.digits.shape[1]:
        both = counted[:, j] & counted[:, j + 1]
        tests["neighbouring places"] = mutual_information(values.digits[both, j],
                                                          values.digits[both, j + 1])
    if j < values.digits.shape[1]:
        use = counted[:, j]
        tests["first later digit vs leading part"] = mutual_information(
            values.digits[use, j], key[use])
        same_row = (values.row[1:] == values.row[:-1]) & use[1:] & use[:-1]
        tests["same place, neighbouring values"] = mutual_information(
            values.digits[1:][same_row, j], values.digits[:-1][same_row, j])
    # the calls given the value's leading part, row by row (a plug-in estimate)
    call_bits = (grouped_entropy_total(values.row * 10**(lead + 4) + key, calls)
                 if calls is not None else float("nan"))
    return {"row": (lead_bits + later_bits) / n, "digits": later_bits / n,
            "calls (row)": call_bits / n,
            "lead_bits": lead_bits / n, "later_places": places,
            "most_below_log2_10": worst[0], "worst place": worst[1:], "independence": tests}


def generator_parameters(data: Path):
    """Each probe's noise sd, when ``data`` was written by this version of our generator (the
    same make_model draw), else None."""
    try:
        manifest = json.loads((data / "synthetic.json").read_text())
        from ahba_app import synthetic
    except (OSError, ValueError, ImportError):
        return None
    if manifest.get("generator_version") != synthetic.GENERATOR_VERSION:
        return None
    seed, spec = int(manifest["seed"]), synthetic.SIZES[manifest["size"]]
    probes = synthetic.make_probes(spec, np.random.default_rng([seed, 3]))
    model = synthetic.make_model(probes, np.random.default_rng([seed, 1]))
    return {"noise": model.noise, "floor": synthetic.MIN_LOG2, "ceiling": synthetic.MAX_LOG2,
            "background": model.background, "call_sd": _CALL_SD}


#: The sd of the noise our generator adds to a value before comparing it with the donor's
#: background to make its PA call (``synthetic.expression_chunk``).
_CALL_SD = 0.6


def call_bound(values: Values, background: float, sd: float) -> float:
    """Mean bits a value of the PA calls given the values and the generator's parameters:
    each call is ``value + N(0, sd) > background``, a coin of known bias."""
    from scipy.special import ndtr

    p = ndtr((values.float - background) / sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(np.nan_to_num(h).sum() / len(values))


def model_bound(values: Values, noise: np.ndarray, floor: float, ceiling: float
                ) -> tuple[float, int]:
    """The ``model`` figure (see the module text): mean bits a value, and how many values sit
    at the floor or the ceiling (counted as nothing)."""
    v = values.float
    sd = noise[values.row]
    grid = 10.0 ** (values.exponent - grid_places(values))
    cell = np.maximum(grid, np.spacing(np.abs(v)))
    inside = (v > floor) & (v < ceiling)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = (np.log2(math.sqrt(2 * math.pi * math.e) * sd)
                + np.log2(-np.expm1(-(v - floor) * math.log(2)))  # f'(v) = 1 - 2**-(v - floor)
                - np.log2(cell))
    return float(np.where(inside, bits, 0.0).sum() / len(v)), int((~inside).sum())


# --------------------------------------------------------------------------------------------
# cross-row structure (--structure): what generic codecs could gain over per-row coding
# --------------------------------------------------------------------------------------------
#: Bits charged for each stored parameter: a per-row one (a mean, a scale, a score, a slope;
#: ``--row-parameter-bits``) and a per-column one (a loading, an offset, shared by every row
#: of the donor).
ROW_PARAMETER_BITS, COLUMN_PARAMETER_BITS = 16, 32
#: Bin width (in residual sds) of the pooled plug-in entropy of standardized residuals.
_Z_BIN = 1 / 16


def read_matrix(path: Path) -> np.ndarray:
    """(rows, samples) float64 of a matrix file (the first column, the probe id, dropped)."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    return np.column_stack([column.to_numpy(zero_copy_only=False)
                            for column in table.columns[1:]]).astype(np.float64)


def value_cells(values: Values) -> np.ndarray:
    """Each value's cell: the step of the digits written, or float64's spacing if coarser."""
    grid = 10.0 ** (values.exponent - grid_places(values))
    return np.maximum(grid, np.spacing(np.abs(values.float)))


def residual_bits(residual: np.ndarray, log2_cell: np.ndarray) -> float:
    """Mean bits a value of coding ``residual`` (rows, samples) exactly on each value's cell,
    with one scale per row (its RMS) and one shape for all rows: the pooled plug-in entropy of
    the standardized residuals (bins of ``_Z_BIN``) plus log2(scale / cell) for each value. An
    arithmetic coder with that model reaches it (the shape's table costs nothing a value)."""
    scale = np.sqrt(np.mean(residual ** 2, axis=1, keepdims=True))
    scale = np.where(scale > 0, scale, 1.0)
    z = np.floor(residual / scale / _Z_BIN).astype(np.int64).ravel()
    shape = entropy_bits(np.bincount(z - z.min())) + math.log2(_Z_BIN)
    return float((shape + np.log2(scale) - log2_cell).mean())


def cross_row_study(matrix: np.ndarray, picked: list[int], exact: np.ndarray,
                    log2_cell: np.ndarray, ranks: list[int], fit_rows: int,
                    combined: tuple[int, ...] = (), row_bits: float = ROW_PARAMETER_BITS,
                    seed: int = 0) -> dict:
    """Bits a value of the rows ``picked`` of ``matrix`` (their exact values ``exact``) under
    generic models, each ``gross`` (the residual) and ``net`` (plus its parameters, charged
    ``row_bits`` a row's, ``COLUMN_PARAMETER_BITS`` a column's):

    - ``row``: the row's mean and scale only (what a per-row codec models: the baseline);
    - ``column offsets``: plus one offset per sample (the mean of ``fit_rows`` other rows);
    - ``rank k``: plus k scores per row on the top k right singular vectors of ``fit_rows``
      other rows, row-centred (fitted without the coded rows: no overfitting counted as gain);
    - ``best earlier row``: plus a slope on the row before it in the file that it correlates
      best with (an index and a slope per row; every earlier row searched, so a decoder going
      down the file has it; the file's first row has none); ``best 2 earlier rows``: the two
      best, fitted together; ``+ rank k``: the best on what the rank-k model leaves (found
      among the earlier rows' leftovers), for each k of ``combined``.
    """
    n_rows, n_samples = matrix.shape
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(n_rows), picked)
    if len(others) < 2 * max([*ranks, *combined, 1]):
        raise SystemExit(f"--structure: {len(others)} rows left beside the {len(picked)} coded "
                         "to fit the models on; sample fewer --rows")
    fit = matrix[np.sort(rng.choice(others, min(fit_rows, len(others)), replace=False))]
    fit = fit - fit.mean(axis=1, keepdims=True)
    centred = exact - exact.mean(axis=1, keepdims=True)
    per_row = row_bits / n_samples
    out = {"row": {"gross": residual_bits(centred, log2_cell), "parameters": 2 * per_row}}
    offsets = fit.mean(axis=0)
    out["column offsets"] = {
        "gross": residual_bits(centred - (offsets - offsets.mean()), log2_cell),
        "parameters": 2 * per_row + COLUMN_PARAMETER_BITS / n_rows}
    _, singular, loadings = np.linalg.svd(fit, full_matrices=False)
    for k in ranks:
        basis = loadings[:k]
        out[f"rank {k}"] = {
            "gross": residual_bits(centred - (centred @ basis.T) @ basis, log2_cell),
            "parameters": (2 + k) * per_row + k * COLUMN_PARAMETER_BITS / n_rows}
    for count, k in [(1, 0), (2, 0), *((1, k) for k in combined)]:
        basis = loadings[:k]
        references, r = best_earlier_rows(matrix, picked, centred, basis, count)
        residual = fitted_leftover(centred - (centred @ basis.T) @ basis, references)
        name = "best earlier row" if count == 1 else f"best {count} earlier rows"
        out[name + (f" + rank {k}" if k else "")] = {
            "gross": residual_bits(residual, log2_cell),
            "parameters": (2 + k + count) * per_row
            + count * math.log2(n_rows) / n_samples + k * COLUMN_PARAMETER_BITS / n_rows,
            "median |r|": r}
    for entry in out.values():
        entry["net"] = entry["gross"] + entry["parameters"]
    out["variance share of the first 8 components"] = (
        (singular[:8] ** 2) / (singular ** 2).sum()).round(4).tolist()
    return out


def best_earlier_rows(matrix: np.ndarray, picked: np.ndarray, centred: np.ndarray,
                      basis: np.ndarray, count: int = 1) -> tuple[np.ndarray, float]:
    """For each row ``picked`` (``centred``: its values less its mean), the ``count`` earlier
    rows of ``matrix`` whose parts outside ``basis`` (orthonormal rows) correlate best with its
    own: those parts, (count, rows, samples; zeros where there are fewer earlier rows), and the
    median absolute correlation of the best."""
    def leftover(rows):
        rows = rows - rows.mean(axis=1, keepdims=True)
        return rows - (rows @ basis.T) @ basis

    own = leftover(centred)
    unit = own / np.linalg.norm(own, axis=1, keepdims=True)
    picked = np.asarray(picked)
    best = np.full((len(picked), count), -1.0)
    best_row = np.full((len(picked), count), -1)
    last = int(picked.max())
    for start in range(0, last, 4096):  # (blocks: memory)
        block = leftover(matrix[start:min(start + 4096, last)])
        norms = np.linalg.norm(block, axis=1)
        corr = np.abs(unit @ (block / np.where(norms > 0, norms, 1.0)[:, None]).T)
        corr[start + np.arange(len(block))[None, :] >= picked[:, None]] = -1.0
        top = np.argpartition(-corr, count - 1, axis=1)[:, :count]
        both = np.concatenate([best, np.take_along_axis(corr, top, axis=1)], axis=1)
        rows = np.concatenate([best_row, start + top], axis=1)
        keep = np.argsort(-both, axis=1)[:, :count]
        best = np.take_along_axis(both, keep, axis=1)
        best_row = np.take_along_axis(rows, keep, axis=1)
    best_row[best < 0] = -1
    found = (best_row >= 0).T[:, :, None]
    references = np.where(found, leftover(matrix[np.maximum(best_row, 0).T.ravel()]).reshape(
        count, len(picked), -1), 0.0)
    return references, float(np.median(np.maximum(best[:, 0], 0.0)))


def fitted_leftover(residual: np.ndarray, references: np.ndarray) -> np.ndarray:
    """``residual`` less its least-squares fit on ``references`` (count, rows, samples), row by
    row."""
    gram = np.einsum("ars,brs->rab", references, references)
    gram += np.eye(len(references)) * 1e-12 * np.maximum(np.trace(gram, axis1=1, axis2=2), 1e-300
                                                         )[:, None, None]
    target = np.einsum("ars,rs->ra", references, residual)
    slopes = np.linalg.solve(gram, target[:, :, None])[:, :, 0]
    return residual - np.einsum("ra,ars->rs", slopes, references)


def call_codecs(calls: np.ndarray, values: np.ndarray) -> dict:
    """Bits a value of PA calls (rows, samples; 0/1) under codecs that see only the calls
    (packed bits, as our cache holds them; zstd -19 and xz -9e over those; a per-row coin; a
    per-row two-state chain along the samples) and one that sees the decoded values (one
    table of the call's frequency by value, bins of 0.05, pooled over the rows)."""
    rows, samples = calls.shape
    n = calls.size
    packed = np.packbits(calls.astype(bool), axis=1)
    out = {"packed bits (ours)": 8 * packed.size / n}
    try:
        import pyarrow as pa

        out["zstd -19 over packed bits"] = 8 * pa.Codec("zstd", compression_level=19).compress(
            packed.tobytes()).size / n
    except (ImportError, ValueError, OSError):
        pass
    out["xz -9e over packed bits"] = 8 * len(lzma.compress(
        packed.tobytes(), preset=9 | lzma.PRESET_EXTREME)) / n
    p = calls.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        coin = np.nan_to_num(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
    out["per-row coin (plug-in)"] = float(coin.mean())
    previous = calls[:, :-1].astype(np.int64)
    chain = grouped_entropy_total(
        np.repeat(np.arange(rows), samples - 1) * 2 + previous.ravel(), calls[:, 1:].ravel())
    out["per-row two-state chain (plug-in)"] = float((chain + rows) / n)
    bins = np.floor(values / 0.05).astype(np.int64).ravel()
    out["given the value, one table (plug-in)"] = grouped_entropy_total(
        bins, calls.ravel()) / n
    return out


def width_layouts(values: Values, n_samples: int, top_bits: int = 8) -> dict:
    """Bits a value of layouts of each row's scaled integers (on the row's finest grid, minus
    the row's least): whole bytes (ours), the row's bit width, and the bit width with the top
    ``top_bits`` bits entropy-coded (one table for each width, pooled over the rows)."""
    decimals = (grid_places(values) - values.exponent).reshape(-1, n_samples).max(axis=1)
    floats = values.float.reshape(-1, n_samples)
    ints = np.rint(floats * 10.0 ** decimals[:, None]).astype(np.int64)
    ints -= ints.min(axis=1, keepdims=True)
    width = np.ceil(np.log2(ints.max(axis=1) + 1)).astype(np.int64)
    low = np.maximum(width - top_bits, 0)
    coded = grouped_entropy_total(np.repeat(width, n_samples), (ints >> low[:, None]).ravel())
    return {"whole bytes": float(8 * np.ceil(width / 8).mean()),
            "bit width": float(width.mean()),
            f"bit width, top {top_bits} bits entropy-coded": float(
                (coded + (low * n_samples).sum()) / ints.size)}


def normal_row_bits(sd: float, level: float, digits: int = 12) -> float:
    """Bits a value of a per-row code (a normal model of the row, exact on each value's cell)
    for values N(level, sd) written to ``digits`` significant digits: the normal's
    differential entropy less the mean log2 of the cell (tenfold wider past each power of ten
    the values reach)."""
    z = np.linspace(-6, 6, 2401)
    weight = np.exp(-z * z / 2)
    v = np.abs(level + sd * z)
    log2_cell = (np.floor(np.log10(np.where(v > 0, v, 1e-300))) + 1 - digits) * LOG2_10
    return float(math.log2(math.sqrt(2 * math.pi * math.e) * sd)
                 - (weight * log2_cell).sum() / weight.sum())


def structure_study(data: Path, args) -> dict:
    """The cross-row, calls and layout figures of every donor of ``data`` (``--rows`` rows each,
    as the estimates above sample them), pooled over the donors by values."""
    totals: dict = {}
    sds, levels, level_share, counts = [], [], [], {"values": 0}

    def add(group, figures, weight):
        for name, figure in figures.items():
            if isinstance(figure, dict):
                for part, x in figure.items():
                    if isinstance(x, float):
                        key = (group, name, part)
                        totals[key] = totals.get(key, 0.0) + x * weight
            elif isinstance(figure, float):
                totals[(group, name)] = totals.get((group, name), 0.0) + figure * weight

    for folder in donor_folders(data):
        ids, lines = sampled_lines(folder / "MicroarrayExpression.csv", args.rows)
        values = Values(lines, ids)
        if values.missing:
            raise SystemExit(f"{folder}: missing values; --structure needs full rows")
        calls = read_calls(folder / "PACall.csv", ids, values.known)
        matrix = read_matrix(folder / "MicroarrayExpression.csv")
        n_samples = matrix.shape[1]
        exact = values.float.reshape(-1, n_samples)
        if np.abs(matrix[ids] - exact).max() > 1e-12:
            raise SystemExit(f"{folder}: pyarrow's parse and the text disagree")
        log2_cell = np.log2(value_cells(values)).reshape(-1, n_samples)
        n = values.float.size
        counts["values"] += n
        add("cross-row", cross_row_study(matrix, ids, exact, log2_cell, args.ranks,
                                         args.fit_rows, args.combined,
                                         args.row_parameter_bits), n)
        if args.prototype:
            references, _ = best_earlier_rows(matrix, np.asarray(ids), exact, np.zeros(
                (0, n_samples)))
            add("prototype", {"best earlier row": prototype_codec(
                exact, references[0], matrix.shape[0])}, n)
        add("calls", call_codecs(calls.reshape(-1, n_samples), exact), n)
        del matrix
        add("layout", width_layouts(values, n_samples), n)
        sds.append(exact.std(axis=1))
        levels.append(exact.mean(axis=1))
        level_share.append(np.abs(exact) >= 10)
        digits = int(np.median(grid_places(values)))
    n = counts["values"]
    result: dict = {"data": str(data), "sampled_values": n}
    for key, total in totals.items():
        node = result
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = total / n
    sd, level = np.concatenate(sds), np.concatenate(levels)
    result["row spread"] = {
        "sd percentiles 5/25/50/75/95": np.percentile(sd, [5, 25, 50, 75, 95]).round(3).tolist(),
        "geometric mean sd": float(np.exp(np.log(sd).mean())),
        "normal per-row code at the rows' sd and level": float(np.mean(
            [normal_row_bits(s, m, digits) for s, m in zip(sd, level)])),
        "share of values from 10 up": float(np.mean(np.concatenate(
            [share.ravel() for share in level_share])))}
    result["significant digits"] = digits
    result["row parameter bits"] = args.row_parameter_bits
    return result


def passing_sd(target: float, calls: float, level: float, digits: int = 12) -> float:
    """The largest row sd at which a per-row normal code of values N(level, sd) at ``digits``
    significant digits, plus ``calls`` bits a value for the calls, stays within ``target`` bits
    a value (bisection on a log scale; the code's size grows with the sd)."""
    low, high = 1e-4, 1e2
    for _ in range(60):
        middle = math.sqrt(low * high)
        if normal_row_bits(middle, level, digits) + calls <= target:
            low = middle
        else:
            high = middle
    return low


# --------------------------------------------------------------------------------------------
# a working prototype (--prototype): a generic reference-row codec, exact, sized and timed
# --------------------------------------------------------------------------------------------
#: The prototype's coder: probabilities in 1/2**_RANS_BITS, and the range of the entropy-coded
#: top part of each residual (the rest of the residual is stored as raw bits).
_RANS_BITS, _TOP = 15, 256


def _rans_kernels():
    """The prototype's encoder and decoder, compiled by numba (a function, not module state)."""
    import numba

    @numba.njit(cache=False)
    def predicted(row_ref, slope, mean, scale):
        return np.rint((mean + slope * row_ref) * scale)

    @numba.njit(cache=False)
    def encode(ints, refs, slopes, means, scales, shifts, table, freq, cum, out_bytes, raw):
        """rANS over every value's top part (last value first, as rANS wants), raw low bits in
        ``raw`` (64-bit words); returns (bytes used from the end of out_bytes, raw bits)."""
        rows, samples = ints.shape
        # raw bits first, in decoding order
        bit = 0
        for i in range(rows):
            low_bits = shifts[i]
            for j in range(samples):
                q = predicted(refs[i, j], slopes[i], means[i], scales[i])
                r = ints[i, j] - np.int64(q)
                top = r >> low_bits
                if top < -_TOP or top >= _TOP:
                    low = r  # escape: the whole residual, 64 raw bits
                    width = 64
                else:
                    low = r & ((np.int64(1) << low_bits) - 1)
                    width = low_bits
                bits = np.uint64(low)
                if width < 64:
                    bits &= (np.uint64(1) << np.uint64(width)) - np.uint64(1)
                word, off = bit >> 6, bit & 63
                raw[word] |= bits << np.uint64(off)
                if off + width > 64:
                    raw[word + 1] |= bits >> np.uint64(64 - off)
                bit += width
        x = np.uint64(1 << 23)
        pos = out_bytes.shape[0]
        for i in range(rows - 1, -1, -1):
            low_bits = shifts[i]
            for j in range(samples - 1, -1, -1):
                q = predicted(refs[i, j], slopes[i], means[i], scales[i])
                r = ints[i, j] - np.int64(q)
                top = r >> low_bits
                s = 2 * _TOP if (top < -_TOP or top >= _TOP) else top + _TOP
                f = np.uint64(freq[table[i], s])
                limit = ((np.uint64(1 << 23) >> np.uint64(_RANS_BITS)) << np.uint64(8)) * f
                while x >= limit:
                    pos -= 1
                    out_bytes[pos] = np.uint8(x & np.uint64(255))
                    x >>= np.uint64(8)
                x = ((x // f) << np.uint64(_RANS_BITS)) + (x % f) + np.uint64(cum[table[i], s])
        for _ in range(4):
            pos -= 1
            out_bytes[pos] = np.uint8(x & np.uint64(255))
            x >>= np.uint64(8)
        return out_bytes.shape[0] - pos, bit

    @numba.njit(cache=False)
    def decode_bytes(packed, width, bases, scales, out):
        """Our layout's decoding, for comparison: little-endian ``width``-byte integers."""
        rows, samples = out.shape
        for i in range(rows):
            for j in range(samples):
                n = np.int64(0)
                for b in range(width):
                    n |= np.int64(packed[i, j * width + b]) << (8 * b)
                out[i, j] = (bases[i] + n) / scales[i]

    @numba.njit(cache=False)
    def decode(stream, raw, refs, slopes, means, scales, shifts, table, freq, cum, symbol, out):
        rows, samples = out.shape
        x = np.uint64(0)
        pos = 0
        for _ in range(4):
            x = (x << np.uint64(8)) | np.uint64(stream[pos])
            pos += 1
        mask = np.uint64((1 << _RANS_BITS) - 1)
        bit = 0
        for i in range(rows):
            low_bits, t = shifts[i], table[i]
            for j in range(samples):
                slot = x & mask
                s = symbol[t, slot]
                x = (np.uint64(freq[t, s]) * (x >> np.uint64(_RANS_BITS)) + slot
                     - np.uint64(cum[t, s]))
                while x < np.uint64(1 << 23):
                    x = (x << np.uint64(8)) | np.uint64(stream[pos])
                    pos += 1
                width = 64 if s == 2 * _TOP else low_bits
                word, off = bit >> 6, bit & 63
                bits = raw[word] >> np.uint64(off)
                if off + width > 64:
                    bits |= raw[word + 1] << np.uint64(64 - off)
                if width < 64:
                    bits &= (np.uint64(1) << np.uint64(width)) - np.uint64(1)
                low = np.int64(bits)
                bit += width
                r = low if s == 2 * _TOP else ((np.int64(s) - _TOP) << low_bits) | low
                q = predicted(refs[i, j], slopes[i], means[i], scales[i])
                out[i, j] = (np.int64(q) + r) / scales[i]
    return encode, decode, decode_bytes


def prototype_codec(exact: np.ndarray, reference: np.ndarray, file_rows: int,
                    repeat: int = 5) -> dict:
    """Code the rows ``exact`` (rows, samples; decimals of at most 15 significant digits) with
    a generic reference-row codec and decode them back, checking every value bit for bit.

    Each row is predicted as its mean plus a slope times the centred row ``reference`` (its
    best earlier row, decoded first in a real file; here given), on the row's own decimal grid
    (the fewest decimals holding it, as our cache's); the residual integer's top part (its
    value above ``shift`` low bits, ``shift`` chosen from the row's residual sd so the top part
    spans 16 to 32 steps a sd) is rANS-coded with a frequency table for each of four classes of
    rows, the low bits stored raw. Returns the size in bits a value (the coded stream, the raw
    bits, 40 bits a row for its mean, slope, shift and table, the reference's index, the tables
    once for the ``file_rows`` rows of the file) and the decoding time (numba; the reference
    rows given, as decoded before)."""
    import time

    rows, samples = exact.shape
    decimals = np.zeros(rows, dtype=np.int64)
    for i in range(rows):  # the fewest decimals holding the row exactly
        while not np.array_equal(np.rint(exact[i] * 10.0 ** decimals[i]) / 10.0 ** decimals[i],
                                 exact[i]):
            decimals[i] += 1
    scales = 10.0 ** decimals
    ints = np.rint(exact * scales[:, None]).astype(np.int64)
    ref = reference - reference.mean(axis=1, keepdims=True)
    # the mean and the slope stored in 16 bits each (steps of 1/256 and 1/4096)
    means = np.rint(exact.mean(axis=1) * 256) / 256
    centred = exact - means[:, None]
    slopes = np.clip(np.rint((centred * ref).sum(axis=1)
                             / np.maximum((ref ** 2).sum(axis=1), 1e-300) * 4096) / 4096, -8, 8)
    encode, decode, decode_bytes = _rans_kernels()
    predicted = np.rint((means[:, None] + slopes[:, None] * ref) * scales[:, None])
    residual = ints - predicted.astype(np.int64)
    # the top part spans 16 to 32 steps a sd (escapes past 8 sd); rows in four classes of that
    # ratio, a table each
    octaves = np.log2(np.maximum(residual.std(axis=1), 1) / 16)
    shifts = np.maximum(0, np.floor(octaves)).astype(np.int64)
    table = np.where(octaves > 0, np.floor(4 * (octaves - np.floor(octaves))), 0).astype(np.int64)
    top = residual >> shifts[:, None]
    symbols = np.where((top < -_TOP) | (top >= _TOP), 2 * _TOP, top + _TOP)
    freq = np.zeros((4, 2 * _TOP + 1), dtype=np.int64)
    for t in range(4):
        counts = np.bincount(symbols[table == t].ravel(), minlength=2 * _TOP + 1)
        freq[t] = np.maximum(1, np.floor(counts / max(counts.sum(), 1) * (1 << _RANS_BITS)))
        freq[t, np.argmax(freq[t])] -= freq[t].sum() - (1 << _RANS_BITS)
    cum = np.concatenate([np.zeros((4, 1), dtype=np.int64), np.cumsum(freq, axis=1)[:, :-1]],
                         axis=1)
    symbol = np.stack([np.repeat(np.arange(2 * _TOP + 1), f) for f in freq])
    out_bytes = np.zeros(ints.size * 9 + 64, dtype=np.uint8)
    raw = np.zeros(ints.size + 64, dtype=np.uint64)
    used, raw_bits = encode(ints, ref, slopes, means, scales, shifts, table, freq, cum, out_bytes,
                            raw)
    stream = out_bytes[len(out_bytes) - used:].copy()
    bases = ints.min(axis=1)
    width = max(1, int(np.ceil(np.log2(int((ints - bases[:, None]).max()) + 1) / 8)))
    packed = ((ints - bases[:, None])[:, :, None] >> (8 * np.arange(width))).astype(np.uint8)
    packed = packed.reshape(rows, samples * width)
    out, plain = np.empty_like(exact), np.empty_like(exact)
    times, plain_times = [], []
    for _ in range(repeat):  # alternating, the machine being shared
        start = time.perf_counter()
        decode(stream, raw, ref, slopes, means, scales, shifts, table, freq, cum, symbol, out)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        decode_bytes(packed, width, bases, scales, plain)
        plain_times.append(time.perf_counter() - start)
    for decoded in (out, plain):
        if not np.array_equal(decoded.view(np.int64), exact.view(np.int64)):
            raise AssertionError("a prototype decoder did not give the values back bit for bit")
    n = exact.size
    # per row: mean and slope (16 bits each), shift and table (8 bits), the reference's index;
    # the tables (16 bits a frequency) once for the file's rows
    bits = (8 * used + raw_bits + rows * (40 + math.log2(file_rows))
            + freq.size * 16 * rows / file_rows)
    return {"bits a value": bits / n, "coded top part": 8 * used / n, "raw low bits": raw_bits / n,
            "decode ns a value (best of runs)": 1e9 * min(times) / n,
            "whole-byte integers, decode ns a value (the same runs)": 1e9 * min(plain_times) / n}


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------
def link_folder(source: Path, target: Path) -> Path:
    """``target`` with hard links to (or copies of) the matrix files of ``source``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (target / name).exists():
            try:
                os.link(source / name, target / name)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(source / name, target / name)
    return target


def count_values(path: Path) -> int:
    """Values (fields past the first) of a matrix file, counted from its first line."""
    rows = 0
    with open(path, "rb") as handle:
        first = handle.readline()
        handle.seek(0)
        while block := handle.read(1 << 24):
            rows += block.count(b"\n")
    return rows * first.count(b",")


def our_cache_bytes(folders: list[Path]) -> dict:
    """Sizes of ahba-app's cache files of each folder's two matrices (built if absent)."""
    from ahba_app import io

    sizes = {}
    for name in FILES:
        total = 0
        for folder in folders:
            built = io.ensure_cache(folder / name)
            if built is None:
                raise SystemExit(f"no cache could be built for {folder / name}")
            total += Path(built).stat().st_size
        sizes[name] = total
    return sizes


def abagen_parquet_bytes(folders: list[Path], python: str | None) -> int | None:
    """Size of abagen's .parq files beside the CSVs, converted by abagen itself if absent."""
    missing = [str(f) for f in folders if not all((f / n).with_suffix(".parq").exists()
                                                  for n in FILES)]
    if missing and python:
        subprocess.run([python, "-c", _ABAGEN_CONVERT, *missing], check=True)
    parqs = [(f / n).with_suffix(".parq") for f in folders for n in FILES]
    if not all(p.exists() for p in parqs):
        return None
    return sum(p.stat().st_size for p in parqs)


def compressed_bits(lines: list[bytes], n_values: int) -> dict:
    """Bits a value of the rows' numbers compressed by general-purpose compressors."""
    text = b"\n".join(line.split(b",", 1)[1] for line in lines)
    doubles = np.asarray([float(t) for line in lines for t in line.split(b",")[1:]
                          if t.strip()]).tobytes()
    out = {}
    for label, payload in (("text", text), ("float64", doubles)):
        out[f"xz -9e, {label}"] = len(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
        try:
            import pyarrow as pa

            out[f"zstd -19, {label}"] = pa.Codec("zstd", compression_level=19).compress(
                payload).size
        except (ImportError, ValueError, OSError):
            pass
    return {k: 8 * v / n_values for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def measure(data: Path, args, parquet_mib: float | None = None, share: float = 0.5) -> dict:
    folders = donor_folders(data)
    parameters = generator_parameters(data)
    totals = dict.fromkeys(("values", "row", "digits", "lead", "calls (row)", "model",
                            "calls (model)", "clipped"), 0.0)
    tests: dict = {}
    worst = (0.0, None, None)
    compress_lines, compress_values = [], 0
    for folder in folders:
        ids, lines = sampled_lines(folder / "MicroarrayExpression.csv", args.rows)
        values = Values(lines, ids)
        calls = read_calls(folder / "PACall.csv", ids, values.known)
        est = row_estimate(values, args.lead, calls)
        n = len(values)
        totals["values"] += n
        totals["row"] += est["row"] * n
        totals["digits"] += est["digits"] * n
        totals["lead"] += est["lead_bits"] * n
        totals["calls (row)"] += est["calls (row)"] * n
        worst = max(worst, (est["most_below_log2_10"], *est["worst place"]),
                    key=lambda w: w[0])
        for name, (mi, bias) in est["independence"].items():
            tests.setdefault(name, []).append((mi, bias))
        if parameters is not None:
            bits, clipped = model_bound(values, parameters["noise"], parameters["floor"],
                                        parameters["ceiling"])
            totals["model"] += bits * n
            totals["clipped"] += clipped
            donor = folder.name.rsplit("donor", 1)[-1]
            totals["calls (model)"] += call_bound(values, parameters["background"][donor],
                                                  parameters["call_sd"]) * n
        if args.compress_rows:
            step = max(1, len(lines) // args.compress_rows)
            picked = lines[::step][:args.compress_rows]
            compress_lines += picked
            compress_values += sum(line.count(b",") for line in picked)
    n = totals["values"]
    result = {"data": str(data), "sampled_values": int(n),
              "bits": {"row": totals["row"] / n, "digits": totals["digits"] / n,
                       "leading part (row)": totals["lead"] / n,
                       "calls (row)": totals["calls (row)"] / n},
              "later digits most below log2(10)": worst[0],
              "worst place (significant digit, exponent)": worst[1:],
              "independence (bits, mean over donors; plug-in bias)": {
                  k: (float(np.mean([m for m, _ in v])), float(np.mean([b for _, b in v])))
                  for k, v in tests.items()}}
    if parameters is not None:
        result["bits"]["model"] = totals["model"] / n
        result["bits"]["calls (model)"] = totals["calls (model)"] / n
        result["values at the floor or the ceiling"] = int(totals["clipped"])
    if compress_lines:
        result["compressors"] = compressed_bits(compress_lines, compress_values)

    if args.structure:
        result["structure"] = structure_study(data, args)
    all_values = sum(count_values(f / "MicroarrayExpression.csv") for f in folders)
    result["values"] = all_values
    work = Path(args.work) / data.name
    linked = [link_folder(f, work / f.name) for f in folders]
    if not args.no_cache:
        cache = our_cache_bytes(linked)
        result["ours"] = {"expression": 8 * cache["MicroarrayExpression.csv"] / all_values,
                          "with PACall": 8 * sum(cache.values()) / all_values}
    parquet = (parquet_mib * 2**20 if parquet_mib
               else abagen_parquet_bytes(linked, args.abagen_python))
    if parquet:
        result["abagen parquet"] = 8 * parquet / all_values
        result["target share"] = share
        result["target"] = share * 8 * parquet / all_values
    return result


def print_result(r: dict) -> None:
    bits = r["bits"]
    print(f"\n{r['data']}: {r['values']:,} values, {r['sampled_values']:,} sampled "
          f"(bits a value; bytes in brackets)")
    rows = []
    if "model" in bits:
        rows += [("model: values, given the generator's parameters (a bound)", bits["model"]),
                 ("model: + PA calls given the values (a bound)",
                  bits["model"] + bits["calls (model)"])]
    rows += [("row: values, per-row estimate (leading part + later digits)", bits["row"]),
             ("row: + PA calls given row and leading part (estimate)",
              bits["row"] + bits["calls (row)"]),
             ("digits: later digits alone (leading part free)", bits["digits"])]
    if "ours" in r:
        rows += [("ours: expression cache", r["ours"]["expression"]),
                 ("ours: + PACall cache", r["ours"]["with PACall"])]
    if "abagen parquet" in r:
        rows += [("abagen parquet: both files", r["abagen parquet"]),
                 (f"target: {r['target share']:g} of abagen's parquet", r["target"])]
    for label, value in r.get("compressors", {}).items():
        rows.append((f"{label} (sampled rows, values only)", value))
    for label, value in rows:
        print(f"  {label:<66} {value:7.2f}  ({value / 8:.2f})")
    if "values at the floor or the ceiling" in r:
        print(f"  values at the generator's floor or ceiling (no bits in model): "
              f"{r['values at the floor or the ceiling']:,}")
    place, exponent = r["worst place (significant digit, exponent)"]
    print(f"  later digits: at most {r['later digits most below log2(10)']:.4f} bits below "
          f"log2(10) = {LOG2_10:.4f} at any place (digit {place} of values 0.d x 10**"
          f"{exponent})")
    for name, (mi, bias) in r["independence (bits, mean over donors; plug-in bias)"].items():
        print(f"  mutual information, {name}: {mi:.5f} bits (independent: ~{bias:.5f})")
    for line in verdict(r):
        print("  " + line)
    if "structure" in r:
        print_structure(r["structure"], r.get("target"))


def print_structure(st: dict, target: float | None) -> None:
    """The ``--structure`` figures (bits a value), with the best practical total."""
    print(f"  cross-row structure ({st['sampled_values']:,} values; parameters at "
          f"{st['row parameter bits']:g} bits a row's, {COLUMN_PARAMETER_BITS} a column's):")
    print(f"    {'values: model':<40} {'gross':>8} {'params':>8} {'net':>8} {'gain':>7}")
    base = st["cross-row"]["row"]["net"]
    for name, entry in st["cross-row"].items():
        extra = (f"   median |r| {entry['median |r|']:.2f}" if "median |r|" in entry else "")
        print(f"    {name:<40} {entry['gross']:8.3f} {entry['parameters']:8.3f} "
              f"{entry['net']:8.3f} {base - entry['net']:7.3f}{extra}")
    for name, entry in st.get("prototype", {}).items():
        print(f"    prototype codec, {name}: {entry['bits a value']:.3f} bits a value (exact; "
              f"decode {entry['decode ns a value (best of runs)']:.1f} ns a value against "
              f"{entry['whole-byte integers, decode ns a value (the same runs)']:.1f} for whole-"
              "byte integers, numba, the same runs)")
    print("    calls: " + "; ".join(f"{k} {v:.3f}" for k, v in st["calls"].items()))
    print("    layout of per-row scaled integers: " + "; ".join(
        f"{k} {v:.3f}" for k, v in st["layout"].items()))
    spread = st["row spread"]
    normal = spread["normal per-row code at the rows' sd and level"]
    print(f"    row sd percentiles 5/25/50/75/95: {spread['sd percentiles 5/25/50/75/95']}, "
          f"geometric mean {spread['geometric mean sd']:.3f}; values from 10 up "
          f"{spread['share of values from 10 up']:.3f}; a normal per-row code at each row's sd: "
          f"{normal:.3f}")
    calls = st["calls"]["given the value, one table (plug-in)"]
    values = min(entry["net"] for entry in st["cross-row"].values())
    best = min(st["cross-row"], key=lambda name: st["cross-row"][name]["net"])
    line = (f"    best generic model: {best}, {values:.3f} + calls given the values {calls:.3f} "
            f"= {values + calls:.3f} bits a value (row tables and probe ids not counted)")
    if target:
        line += f": {'within' if values + calls <= target else 'above'} the target {target:.2f}"
        print(line)
        digits = st["significant digits"]
        print(f"    a per-row normal code (+ calls {calls:.2f}) meets the target when a row's sd "
              f"is at most: " + ", ".join(
                  f"{passing_sd(target, calls, level, digits):.3f} at level {level:g}"
                  for level in (3, 6, 9, 11, 13)))
    else:
        print(line)


def verdict(r: dict) -> list[str]:
    """Whether the target (a share of abagen's parquet) is below what the values carry."""
    if "target" not in r:
        return ["no verdict: abagen's parquet size unknown (--abagen-python or --parquet-mib)"]
    bits, target, parquet = r["bits"], r["target"], r["abagen parquet"]
    out = []
    if "model" in bits:
        need = bits["model"] + bits["calls (model)"]
        out.append(f"verdict: the data carry {need:.2f} bits a value ({need / parquet:.3f} of "
                   f"abagen's parquet), the target allows {target:.2f}: " + (
                       "OUT OF REACH of any exact encoding" if need > target else
                       f"not excluded ({target - need:.2f} bits a value to spare, for an "
                       "encoding that knew the signal as well as the generator)"))
    row = bits["row"] + bits["calls (row)"]
    out.append(f"per-row modelling (estimate): {row:.2f} bits a value ({row / parquet:.3f}): "
               + ("above the target" if row > target else "within the target"))
    if "ours" in r:
        ours = r["ours"]["with PACall"]
        out.append(f"our cache: {ours:.2f} bits a value ({ours / parquet:.3f}): "
                   + ("misses the target" if ours > target else "meets the target"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", type=Path, help="data folders (only read)")
    parser.add_argument("--rows", type=int, default=1000,
                        help="rows sampled per donor for the estimates (0: all; default 1000)")
    parser.add_argument("--lead", type=int, default=2,
                        help="significant digits in a value's leading part (default 2)")
    parser.add_argument("--compress-rows", type=int, default=100,
                        help="rows per donor given to the compressors (0: none; default 100)")
    parser.add_argument("--work", default="benchmarks/results/cache-bound",
                        help="folder for hard links and the caches built there")
    parser.add_argument("--abagen-python", help="abagen 0.1.3's python, to build its parquet")
    parser.add_argument("--parquet-mib", type=float, nargs="+",
                        help="abagen's parquet size (MiB, both files of every donor) if known: "
                             "one for each data folder")
    parser.add_argument("--share", type=float, nargs="+", default=[0.5],
                        help="the target as a share of abagen's parquet, one for all folders or "
                             "one for each (issue #16: 0.5 up to 12 digits, 1 at 17)")
    parser.add_argument("--no-cache", action="store_true", help="do not build our cache")
    parser.add_argument("--structure", action="store_true",
                        help="also measure what generic cross-row models, call codecs and bit "
                             "layouts would take (reads each donor's matrix whole)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="ranks of the --structure low-rank models (default 1 2 4 8 16 32)")
    parser.add_argument("--combined", type=int, nargs="*", default=[4, 8],
                        help="ranks combined with the best earlier row (default 4 8)")
    parser.add_argument("--fit-rows", type=int, default=4000,
                        help="other rows of each donor the low-rank models are fitted on")
    parser.add_argument("--row-parameter-bits", type=float, default=ROW_PARAMETER_BITS,
                        help="bits charged for each per-row parameter of the --structure "
                             f"models (default {ROW_PARAMETER_BITS})")
    parser.add_argument("--prototype", action="store_true",
                        help="with --structure: code and decode the sampled rows with the "
                             "reference-row prototype codec (numba), sized and timed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.rows = args.rows or None
    sizes = args.parquet_mib or [None] * len(args.data)
    shares = args.share * len(args.data) if len(args.share) == 1 else args.share
    if len(sizes) != len(args.data) or len(shares) != len(args.data):
        parser.error("give --parquet-mib and --share once for each data folder")
    results = []
    for data, mib, share in zip(args.data, sizes, shares):
        results.append(measure(data.resolve(), args, mib, share))
        print_result(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
