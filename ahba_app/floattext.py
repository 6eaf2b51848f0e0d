"""Python's ``repr`` of many float64 values at once, byte for byte, and the TSV writer built on it.

``repr`` of a float is its shortest round-trip decimal (the shortest digits that read back to
the same float64, the closest to it when several are as short), written positionally when the
decimal exponent is in [-4, 16) and in scientific notation otherwise (``1e-05``, ``1e+16``).
Formatting a region x gene table with it costs ~0.5 microseconds a value in the interpreter,
which made writing the TSVs of a batch of atlases (41 million values for ten atlases) a third of
the batch. Arrow's cast of float64 to string computes the same shortest digits in C++
(double-conversion), but writes them its own way (``1e-5``, ``123``, ``1.2e+14``). Here its
text is kept only where it is provably ``repr``'s: positional with a decimal point (for
magnitudes in [1e-4, 1e15)), or an integer that needs ``.0``; every other value (tiny, huge,
negative zero, infinities: few in practice) is formatted by ``repr`` itself.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["float_texts", "write_float_tsv"]

#: Values a block of the TSV writer formats at once (~20 MB of text).
_BLOCK_VALUES = 1 << 20


def float_texts(values, nan: str = "nan"):
    """``repr`` of each float64 of a 1-D array, as a ``pyarrow.StringArray``; NaN as ``nan``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    v = np.ascontiguousarray(values, dtype=np.float64).ravel()
    text = pc.cast(pa.array(v, type=pa.float64()), pa.string())
    magnitude = np.abs(v)
    with np.errstate(invalid="ignore"):
        positional = (magnitude >= 1e-4) & (magnitude < 1e15)
    # (in a whole block of text without an 'e', no value has one: one pass over the bytes)
    data = text.buffers()[2]
    if data is not None and np.any(np.frombuffer(data, dtype=np.uint8) == ord("e")):
        exponent = pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    else:
        exponent = np.zeros(len(v), dtype=bool)
    point = pc.match_substring(text, ".").to_numpy(zero_copy_only=False)
    fraction = positional & ~exponent & point          # already repr's text
    integral = positional & ~exponent & ~point         # '123' -> '123.0'
    missing = np.isnan(v)
    other = ~(fraction | integral | missing)
    if integral.any():
        text = pc.if_else(pa.array(integral), pc.binary_join_element_wise(text, ".0", ""), text)
    if missing.any():
        text = pc.if_else(pa.array(missing), pa.scalar(nan), text)
    which = np.flatnonzero(other)
    if which.size:
        text = pc.replace_with_mask(text, pa.array(other),
                                    pa.array([repr(x) for x in v[which].tolist()], pa.string()))
    return text


def write_float_tsv(frame, path: str | os.PathLike, index_label: str | None = None,
                    na_rep: str = "n/a") -> None:
    """A float64 table as ``DataFrame.to_csv(sep='\\t', na_rep=na_rep)`` writes it, byte for byte:
    a header of the index name and the columns, then each row's label and values (``repr`` of
    each float, ``na_rep`` for NaN), tab-separated, lines ending in ``\\n``.

    Labels and column names must hold no tab, newline or quote (they are written as they are).
    Blocks of rows are formatted on the threads of :func:`ahba_app._blocks.thread_map` (Arrow
    runs without the interpreter lock) and written in order: each block's values are formatted
    row by row into one string array, joined into lines by Arrow (one list per row), and the
    lines' bytes written as they lie in memory.
    """
    from ._blocks import n_threads, thread_map

    name = index_label if index_label is not None else (frame.index.name or "")
    values = frame.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    labels = [str(label) for label in frame.index.tolist()]
    step = max(1, _BLOCK_VALUES // max(n_cols, 1))
    starts = list(range(0, n_rows, step))

    def block(start):
        return _lines(values[start:start + step], labels[start:start + step], na_rep)

    with open(path, "wb") as handle:
        handle.write(("\t".join([name, *map(str, frame.columns)]) + "\n").encode("utf-8"))
        group = max(1, n_threads())
        for first in range(0, len(starts), group):  # a few blocks in memory at a time
            for text in thread_map(block, starts[first:first + group]):
                handle.write(text)


def _lines(rows: np.ndarray, labels: list, na_rep: str):
    """The TSV lines of ``rows`` (label, tab, the values' text separated by tabs, newline) as
    one buffer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    k, n_cols = rows.shape
    texts = float_texts(rows.ravel(order="C"), nan=na_rep)
    cells = pa.ListArray.from_arrays(
        pa.array(np.arange(0, k * n_cols + 1, n_cols, dtype=np.int32)), texts)
    lines = pc.binary_join_element_wise(pa.array(labels, pa.string()),
                                        pc.binary_join(cells, "\t"), "\t")
    lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # line + "\n" + ""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:
                                                                 lines.offset + k + 1]
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
