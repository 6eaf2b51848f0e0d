"""How small can an exact cache of the microarray values be? Information content against sizes.

    python benchmarks/cache_bound.py DATA [DATA ...] [--rows 1000] [--work DIR]
        [--abagen-python PY | --parquet-mib MIB ...] [--share 0.5 ...] [--compress-rows 100]
        [--no-cache] [--json FILE]

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

Compared with: our cache (the ``MicroarrayExpression`` cache files, and with PACall's), abagen's
parquet files (built by ``--abagen-python``, abagen 0.1.3's own conversion, on hard links in
``--work``; or ``--parquet-mib``, sizes measured by ``benchmarks/run.py``), the target (``--share``
of them, given whole to the values and calls: the row tables would have to fit in it too), and
general-purpose compressors (xz -9e, zstd -19) over the text of ``--compress-rows`` rows per
donor and over their float64 bytes: what compression reaches in practice. The verdict: the
target is out of reach of any exact encoding when the ``model`` figure is above it.

What generic codecs could do beside per-row coding (cross-row models, call codecs, layouts, a
working prototype) is ``benchmarks/cache_codecs.py``, which reads the values with this
module's readers.
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


def sampled_values(path: Path, rows: int | None) -> tuple[list[int], list[bytes], Values]:
    """The lines of :func:`sampled_lines` and their :class:`Values`; a value the digit counts
    cannot take is an error naming the file."""
    ids, lines = sampled_lines(path, rows)
    try:
        return ids, lines, Values(lines, ids)
    except ValueError as err:
        raise SystemExit(f"{path}: {err}") from None


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
        raise ValueError(f"value {token!r} in exponent notation: these figures count the digits "
                         "of plain decimals only (as AHBA's files and ours write them); give "
                         "data written without exponents")
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


def value_cells(values: Values) -> np.ndarray:
    """Each value's cell: the step of the digits written, or float64's spacing if coarser."""
    grid = 10.0 ** (values.exponent - grid_places(values))
    return np.maximum(grid, np.spacing(np.abs(values.float)))


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
    cell = value_cells(values)
    inside = (v > floor) & (v < ceiling)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = (np.log2(math.sqrt(2 * math.pi * math.e) * sd)
                + np.log2(-np.expm1(-(v - floor) * math.log(2)))  # f'(v) = 1 - 2**-(v - floor)
                - np.log2(cell))
    return float(np.where(inside, bits, 0.0).sum() / len(v)), int((~inside).sum())


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
        ids, lines, values = sampled_values(folder / "MicroarrayExpression.csv", args.rows)
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
        result.update(target_figures(parquet, share, all_values))
    return result


def target_figures(parquet_bytes: float, share: float, values: int) -> dict:
    """abagen's parquet and the target (``share`` of it) in bits a value of ``values``."""
    return {"abagen parquet": 8 * parquet_bytes / values, "target share": share,
            "target": share * 8 * parquet_bytes / values}


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


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options this script and cache_codecs.py share: the data, the rows sampled, the
    target and the JSON file (their figures are read side by side, so they sample alike)."""
    parser.add_argument("data", nargs="+", type=Path, help="data folders (only read)")
    parser.add_argument("--rows", type=int, default=1000,
                        help="rows sampled per donor for the estimates (0: all; default 1000)")
    parser.add_argument("--parquet-mib", type=float, nargs="+",
                        help="abagen's parquet size (MiB, both files of every donor) if known: "
                             "one for each data folder")
    parser.add_argument("--share", type=float, nargs="+", default=[0.5],
                        help="the target as a share of abagen's parquet, one for all folders or "
                             "one for each (issue #16: 0.5 up to 12 digits, 1 at 17)")
    parser.add_argument("--json", type=Path, help="also write the figures here")


def parse_common(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list]:
    """The parsed options, and (data folder, parquet MiB or None, share) for each folder."""
    args = parser.parse_args(argv)
    args.rows = args.rows or None
    sizes = args.parquet_mib or [None] * len(args.data)
    shares = args.share * len(args.data) if len(args.share) == 1 else args.share
    if len(sizes) != len(args.data) or len(shares) != len(args.data):
        parser.error("give --parquet-mib and --share once for each data folder")
    return args, list(zip((data.resolve() for data in args.data), sizes, shares))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--lead", type=int, default=2,
                        help="significant digits in a value's leading part (default 2)")
    parser.add_argument("--compress-rows", type=int, default=100,
                        help="rows per donor given to the compressors (0: none; default 100)")
    parser.add_argument("--work", default="benchmarks/results/cache-bound",
                        help="folder for hard links and the caches built there")
    parser.add_argument("--abagen-python", help="abagen 0.1.3's python, to build its parquet "
                        "(instead of --parquet-mib)")
    parser.add_argument("--no-cache", action="store_true", help="do not build our cache")
    args, folders = parse_common(parser, argv)
    results = []
    for data, mib, share in folders:
        results.append(measure(data, args, mib, share))
        print_result(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
