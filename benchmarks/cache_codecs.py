"""What could a generic exact codec do beside per-row coding? Cross-row models, call codecs,
bit layouts and a working prototype, in bits a value of the sampled rows.

    python benchmarks/cache_codecs.py DATA [DATA ...] [--rows 1000] [--prototype]
        [--ranks K ...] [--combined K ...] [--fit-rows 4000] [--row-parameter-bits 16]
        [--parquet-mib MIB ... [--share 0.5 ...]] [--json FILE]

The companion of ``benchmarks/cache_bound.py`` (the information the values carry, our cache
and abagen's parquet): the same rows (``--rows`` of each donor, spread evenly), read by its
readers, so the two scripts' figures sit side by side. This one asks what a codec that knows
nothing of our generator could do better than per-row coding, reading each donor's matrix
whole: each model's residual coded exactly on each value's cell (one scale a row, one shape for
all: the pooled plug-in entropy of the standardized residuals) and its parameters charged
(``--row-parameter-bits`` each a row, 32 each a column): the row alone (its mean and scale: the
baseline); plus per-sample offsets; a rank-k model (k scores a row on the right singular
vectors of ``--fit-rows`` other rows); the row's best-correlated earlier row in the file (an
index and a slope: a decoder going down the file has it), its best two, and the best earlier
row on top of rank k. Then the PA calls (packed bits as ours; zstd and xz over them; per-row
coins and chains; one table of the call given the decoded value), the layouts of each row's
scaled integers (whole bytes as ours, bit widths, the top 8 bits entropy-coded), and the rows'
spread with the sd up to which a per-row normal code would meet the target (``--share`` of
abagen's parquet, ``--parquet-mib``, as ``cache_bound.py`` takes them).
``--prototype`` codes and decodes the sampled rows with a working reference-row codec (numba
rANS; every value checked bit for bit), its real size and decoding time beside a whole-byte
decoder's in the same runs.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cache_bound import (  # noqa: E402  (the values as written, the plug-in entropies)
    LOG2_10, Values, add_common_options, count_values, donor_folders, entropy_bits,
    grid_places, grouped_entropy_total, parse_common, read_calls, sampled_values,
    target_figures, value_cells)

# --------------------------------------------------------------------------------------------
# cross-row structure: what generic codecs could gain over per-row coding
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
        raise ValueError(f"only {len(others)} rows left beside the {len(picked)} coded to fit "
                         "the models on: sample fewer --rows")
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
    as cache_bound.py's estimates sample them), pooled over the donors by values."""
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
        ids, _, values = sampled_values(folder / "MicroarrayExpression.csv", args.rows)
        if values.missing:
            raise SystemExit(f"{folder}: missing values; the cross-row models need full rows "
                             "(data without NaN)")
        calls = read_calls(folder / "PACall.csv", ids, values.known)
        matrix = read_matrix(folder / "MicroarrayExpression.csv")
        n_samples = matrix.shape[1]
        exact = values.float.reshape(-1, n_samples)
        if np.abs(matrix[ids] - exact).max() > 1e-12:
            raise SystemExit(f"{folder}: pyarrow's parse and the text disagree")
        log2_cell = np.log2(value_cells(values)).reshape(-1, n_samples)
        n = values.float.size
        counts["values"] += n
        try:
            cross_row = cross_row_study(matrix, ids, exact, log2_cell, args.ranks,
                                        args.fit_rows, args.combined, args.row_parameter_bits)
        except ValueError as err:  # too few rows left to fit the models on
            raise SystemExit(f"{folder}: {err}") from None
        add("cross-row", cross_row, n)
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


def print_structure(st: dict, target: float | None) -> None:
    """The study's figures (bits a value), with the best practical total."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="ranks of the low-rank models (default 1 2 4 8 16 32)")
    parser.add_argument("--combined", type=int, nargs="*", default=[4, 8],
                        help="ranks combined with the best earlier row (default 4 8)")
    parser.add_argument("--fit-rows", type=int, default=4000,
                        help="other rows of each donor the low-rank models are fitted on")
    parser.add_argument("--row-parameter-bits", type=float, default=ROW_PARAMETER_BITS,
                        help="bits charged for each per-row parameter of the models "
                             f"(default {ROW_PARAMETER_BITS})")
    parser.add_argument("--prototype", action="store_true",
                        help="also code and decode the sampled rows with the reference-row "
                             "prototype codec (numba), sized and timed")
    args, folders = parse_common(parser, argv)
    results = []
    for data, mib, share in folders:
        result = structure_study(data, args)
        if mib:
            result.update(target_figures(mib * 2**20, share, sum(
                count_values(f / "MicroarrayExpression.csv") for f in donor_folders(data))))
        print(f"\n{data}:")
        print_structure(result, result.get("target"))
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
