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

The region x gene tables (:func:`write_float_tsv`) take their digits from orjson instead, which
writes a float64 array's shortest round-trip digits 4-5 times quicker than Arrow's cast, as
``repr`` writes them for zeros and magnitudes in [1e-4, 1e16); the few other values are put in
by ``repr``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["RowsHelper", "RowsServer", "float_texts", "sharing_rows_helper", "table_texts",
           "write_float_tsv", "write_table_tsv"]

#: Values a block of the TSV writer formats at once (~20 MB of text).
_BLOCK_VALUES = 1 << 20
#: Share of a table's rows a :class:`RowsHelper` formats: a little less than half, as its
#: process may have to start first (~0.15 s: an interpreter importing numpy and orjson; once
#: a run, :func:`sharing_rows_helper`) and its rows must be sent.
_HELPER_SHARE = 0.45
#: Tables with fewer values are formatted in this process alone: starting a helper costs
#: about what formatting 2 million values does.
HELPER_MIN_VALUES = 2_000_000


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
                    na_rep: str = "n/a", helper: RowsHelper | None = None) -> None:
    """A float64 table as ``DataFrame.to_csv(sep='\\t', na_rep=na_rep)`` writes it, byte for byte:
    a header of the index name and the columns, then each row's label and values (``repr`` of
    each float, ``na_rep`` for NaN), tab-separated, lines ending in ``\\n``.

    Labels and column names must hold no tab, newline or quote (they are written as they are).
    Blocks of rows are formatted on the threads of :func:`ahba_app._blocks.thread_map` and
    written in order: each row's values are written by orjson (the shortest round-trip
    digits), its commas turned into tabs, and the values whose text is not ``repr``'s put in
    by ``repr`` (:func:`_json_lines`). With ``helper`` (a :class:`RowsHelper` started on this
    table, with this ``na_rep``) its process formats the last rows meanwhile and writes them
    after this one's; should it fail, they are formatted here.
    """
    name = index_label if index_label is not None else (frame.index.name or "")
    values = frame.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    labels = [str(label) for label in frame.index.tolist()]
    if helper is not None and not helper.serves(values.shape, labels, na_rep):
        raise ValueError("This RowsHelper was started on another table.")
    here = n_rows if helper is None else helper.first

    with open(path, "wb") as handle:
        handle.write(("\t".join([name, *map(str, frame.columns)]) + "\n").encode("utf-8"))
        _write_rows(handle, values, labels, 0, here, na_rep)
        if here < n_rows:
            handle.flush()
            offset = handle.tell()
            written = helper.finish(path, offset)
            if written is None:  # (whatever it wrote is overwritten)
                _write_rows(handle, values, labels, here, n_rows, na_rep)
            else:
                handle.seek(offset + written)
            handle.truncate()


def _write_rows(handle, values: np.ndarray, labels: list, first: int, stop: int,
                na_rep: str) -> None:
    """Write the lines of rows ``first`` to ``stop``, formatted on threads a few blocks at a
    time (a few blocks in memory at a time)."""
    from ._blocks import n_threads, thread_map

    step = max(1, _BLOCK_VALUES // max(values.shape[1], 1))
    starts = list(range(first, stop, step))

    def block(start):
        end = min(start + step, stop)
        return _lines(values[start:end], labels[start:end], na_rep)

    group = max(1, n_threads())
    for at in range(0, len(starts), group):
        for pieces in thread_map(block, starts[at:at + group]):
            handle.writelines(pieces)


class RowsHelper:
    """A second process formatting the last rows of a float table for
    :func:`write_float_tsv` while this one formats the first rows.

    orjson holds the interpreter lock while it formats, so threads cannot share that work;
    another process can. It is given the rows before the table is written (so that its work
    overlaps the caller's other work) in an anonymous file (a pipe fed by a thread would take
    the interpreter lock from the formatting thread at every 64 kB); it formats them as
    :func:`_lines` does (the same bytes) and, when told the file and the offset where they go
    (:meth:`finish`, once this process's rows are written), writes them there. The process is
    a :class:`RowsServer`: the one of the run in progress (:func:`sharing_rows_helper`), else
    one started for this table alone. Close it (or use it as a context manager) to drop rows
    not asked to be written. POSIX only (the file is handed over as a file descriptor).
    """

    def __init__(self, frame, na_rep: str = "n/a"):
        values = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))
        self.labels = [str(label) for label in frame.index.tolist()]
        self.shape, self.na_rep = values.shape, na_rep
        self.first = len(values) - int(len(values) * _HELPER_SHARE)
        # the run's process, unless another table is using it (tables written side by side)
        shared = _RUN_SERVER.get()
        self._shared = shared if shared is not None and shared.lock.acquire(False) else None
        self._own, self._pending = self._shared is None, True
        try:
            if self._shared is not None and self._shared.server is None:
                self._shared.server = RowsServer()  # (started by the run's first large table)
            self._server = self._shared.server if self._shared is not None else RowsServer()
            self._server.send(values[self.first:], self.labels[self.first:], na_rep)
        except BaseException:
            self._pending = False
            if self._shared is not None:
                self._shared.lock.release()
                self._shared = None
            elif hasattr(self, "_server"):
                self._server.close()
            raise

    def serves(self, shape, labels: list, na_rep: str) -> bool:
        """Whether this helper was started on a table of this shape, labels and ``na_rep``."""
        return tuple(shape) == self.shape and labels == self.labels and na_rep == self.na_rep

    def finish(self, path: str | os.PathLike, offset: int) -> int | None:
        """Have the helper write its rows' lines into ``path`` (opened here, flushed) from byte
        ``offset`` on; the number of bytes written, or None if it failed."""
        try:
            self._pending = False
            return self._server.write(path, offset)
        finally:
            self.close()

    def close(self) -> None:
        """Drop the rows if they were not asked for; end the process if it is this table's."""
        if self._pending and self._own:  # (its work is of no use: not waited for)
            self._server.kill()
        elif self._pending:
            self._server.drop()
        self._pending = False
        if self._own:
            self._server.close()
        elif self._shared is not None:
            self._shared.lock.release()
            self._shared = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RowsServer:
    """A helper process formatting the rows it is sent, one table after the other
    (:class:`RowsHelper`). It is started once (an interpreter importing numpy and orjson:
    ~0.13 s CPU) and kept for the tables of a run (:func:`sharing_rows_helper`). Each table's
    rows go in an anonymous file whose descriptor is passed over a Unix socket. Once it has
    failed (died, or answered nonsense) it is closed and every later call raises OSError."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            here = str(Path(__file__).resolve().parents[1])  # this copy of ahba_app, first
            path = os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])
            self._process = subprocess.Popen(
                [sys.executable, "-c",
                 f"from ahba_app.floattext import _serve; _serve({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),), env=dict(os.environ, PYTHONPATH=path))
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()

    def send(self, rows: np.ndarray, labels: list, na_rep: str) -> None:
        """Give it ``rows`` (float64) to format with their ``labels``."""
        self._check()
        header = json.dumps({"labels": labels, "columns": rows.shape[1],
                             "na_rep": na_rep}).encode("utf-8") + b"\n"
        fd = _anonymous_file()
        try:
            with open(fd, "wb", closefd=False) as out:  # (the labels too: no size limit)
                out.write(header)
                out.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
            self._talk(lambda: socket.send_fds(self.sock, [b"rows"], [fd]))
        finally:
            os.close(fd)

    def write(self, path: str | os.PathLike, offset: int) -> int | None:
        """Have it write the lines of the rows sent last into ``path`` from byte ``offset``;
        the number of bytes written, or None if it failed (it is then closed)."""
        try:
            self._check()
            self._talk(lambda: self.sock.send(json.dumps([offset, os.fspath(path)])
                                              .encode("utf-8")))
            return int(self._talk(lambda: self.sock.recv(64)))
        except (OSError, ValueError):  # it died (or could not write): no number
            self.close()
            return None

    def drop(self) -> None:
        """Have it forget the rows sent last (their table was written otherwise)."""
        try:
            self._check()
            self._talk(lambda: self.sock.send(b"null"))
        except OSError:
            self.close()

    def _talk(self, call):
        """``call()``; the server closed, and OSError, should it fail."""
        try:
            return call()
        except OSError:
            self.close()
            raise

    def _check(self) -> None:
        if self.sock is None:
            raise OSError("The rows helper process has ended.")

    def kill(self) -> None:
        """End the process now."""
        self._process.kill()
        self.close()

    def close(self) -> None:
        """End the process: asked to by closing the socket, killed if it does not."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class _RunServer:
    """The :class:`RowsServer` of a run (None until its first large table)."""

    def __init__(self):
        self.server: RowsServer | None = None
        self.lock = threading.Lock()  # held by the table using it


#: The rows helper of the run in progress (None outside :func:`sharing_rows_helper`).
_RUN_SERVER: ContextVar[_RunServer | None] = ContextVar("ahba_app_rows_server", default=None)


@contextmanager
def sharing_rows_helper() -> Iterator[None]:
    """Within the block (one run of the command line, its tables written one after the
    other), every :class:`RowsHelper` uses one helper process, started by the first of them
    and ended with the block, instead of starting one a table (~0.13 s CPU each)."""
    run = _RunServer()
    token = _RUN_SERVER.set(run)
    try:
        yield
    except BaseException:
        if run.server is not None:  # (a failed or interrupted run: its work is of no use)
            run.server.kill()
        raise
    finally:
        _RUN_SERVER.reset(token)
        if run.server is not None:
            run.server.close()


def _anonymous_file() -> int:
    """A file descriptor of a file without a name (in memory on Linux)."""
    try:
        fd = os.memfd_create("ahba-app-rows", 0)
    except (AttributeError, OSError):  # not Linux
        import tempfile

        with tempfile.TemporaryFile() as handle:
            fd = os.dup(handle.fileno())
    return fd


def _serve(fd: int) -> None:
    """A :class:`RowsServer`'s process, on the Unix socket ``fd``: for each table, the rows
    (a header and a file descriptor) then where to write their lines (or ``null``: nowhere);
    answers how many bytes it wrote. Ends when the socket closes."""
    # Ctrl-C reaches the whole process group: the run, which then ends this process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 64, 1)
        if not message:  # (the run is over)
            return
        with open(fds[0], "rb") as source:
            source.seek(0)
            header = json.loads(source.readline())
            labels, n_cols, na_rep = header["labels"], header["columns"], header["na_rep"]
            data = bytearray(len(labels) * n_cols * 8)
            if source.readinto(data) != len(data):
                sys.exit(1)
        values = np.frombuffer(data, dtype=np.float64).reshape(len(labels), n_cols)
        step = max(1, _BLOCK_VALUES // max(n_cols, 1))
        pieces = []
        for start in range(0, len(labels), step):
            pieces += _lines(values[start:start + step], labels[start:start + step], na_rep)
        where = json.loads(sock.recv(1 << 16) or b"null")
        if where is None:  # (not asked to write; or the run is over)
            continue
        offset, path = where
        with open(path, "r+b") as handle:
            handle.seek(int(offset))
            handle.writelines(pieces)
        sock.send(str(sum(memoryview(piece).nbytes for piece in pieces)).encode("ascii"))


def _lines(rows: np.ndarray, labels: list, na_rep: str) -> list:
    """The TSV lines of ``rows`` (label, tab, the values' text separated by tabs, newline) as
    buffers to write one after the other."""
    import pyarrow as pa
    import pyarrow.compute as pc

    k, n_cols = rows.shape
    if n_cols:
        return _json_lines(rows, labels, na_rep)
    texts = float_texts(rows.ravel(order="C"), nan=na_rep)
    cells = pa.ListArray.from_arrays(
        pa.array(np.arange(0, k * n_cols + 1, n_cols, dtype=np.int32)), texts)
    lines = pc.binary_join_element_wise(pa.array(labels, pa.string()),
                                        pc.binary_join(cells, "\t"), "\t")
    lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # line + "\n" + ""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:
                                                                 lines.offset + k + 1]
    return [lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))]


def _json_lines(rows: np.ndarray, labels: list, na_rep: str) -> list:
    """:func:`_lines` by orjson: each row's numbers as orjson writes a float64 array
    (``[x,y,...]``: the shortest round-trip digits, 4-5 times quicker than Arrow's cast to
    text), its commas turned into tabs and ``null`` (NaN) into ``na_rep``. orjson writes
    ``repr``'s text for zeros and magnitudes in [1e-4, 1e16); every other value (smaller ones,
    which orjson writes positionally, larger ones, infinities, which it writes as ``null``)
    is put in as ``repr`` writes it. A row that is NaN throughout (a region without samples)
    is ``na_rep`` throughout, written once for all such rows."""
    import orjson

    rows = np.ascontiguousarray(rows, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(rows)
        missing_values = np.isnan(rows)
        other = ~(((magnitude >= 1e-4) & (magnitude < 1e16)) | (magnitude == 0)
                  | missing_values)
    others, some_missing = other.any(axis=1), missing_values.any(axis=1)
    all_missing = missing_values.all(axis=1)
    missing = na_rep.encode("utf-8")
    empty_row = b"\t".join([missing] * rows.shape[1]) if all_missing.any() else b""
    lines = []
    for i, (label, row) in enumerate(zip(labels, rows)):
        if all_missing[i]:
            lines += [label.encode("utf-8"), b"\t", empty_row, b"\n"]
            continue
        # the brackets stay in the text and are left out as it is written (no copy)
        text = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)
        if others[i]:
            text = _with_repr(text, row, np.flatnonzero(other[i]), start=1)
        text = text.replace(b",", b"\t")
        if some_missing[i]:  # (infinities are repr's text by now: only NaN is null)
            text = text.replace(b"null", missing)
        lines += [label.encode("utf-8"), b"\t", memoryview(text)[1:-1], b"\n"]
    return lines


def _with_repr(text: bytes, row: np.ndarray, which: np.ndarray, start: int = 0) -> bytes:
    """``text`` (the values of ``row`` separated by commas, from position ``start`` to
    ``start`` characters before its end) with the values at positions ``which`` written by
    ``repr``."""
    commas = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord(","))
    starts = np.concatenate(([start], commas + 1))
    ends = np.concatenate((commas, [len(text) - start]))
    pieces, done = [], 0
    for j in which.tolist():
        pieces += [text[done:starts[j]], repr(float(row[j])).encode("ascii")]
        done = int(ends[j])
    pieces.append(text[done:])
    return b"".join(pieces)


#: Characters that make ``to_csv`` quote a field (tab-separated, lines ending in ``\n``).
_QUOTED = r'[\t\n\r"]'


def table_texts(frame, *, index: bool = True, index_label: str | None = None,
                na_rep: str = "n/a"):
    """The header fields and each column's text as ``DataFrame.to_csv(sep='\\t',
    na_rep=na_rep)`` writes them (the index first with ``index``), or None for a table this
    module does not write: columns of float64 (``repr``), integers (nullable too), or text
    (str, with missing values) only, two fields a line at least, no field that ``to_csv``
    would quote (a tab, a newline or a double quote in it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pandas as pd

    if isinstance(frame.columns, pd.MultiIndex) or isinstance(frame.index, pd.MultiIndex):
        return None
    columns = [frame.iloc[:, i] for i in range(frame.shape[1])]
    header = [str(c) for c in frame.columns]
    if index:
        columns.insert(0, frame.index.to_series(index=range(len(frame))))
        name = index_label if index_label is not None else frame.index.name
        header.insert(0, "" if name is None else str(name))
    if len(columns) < 2 or any(re.search(_QUOTED, field) for field in header):
        return None
    texts = []
    for column in columns:
        text = _column_texts(column, na_rep, pa, pc, pd)
        if text is None:
            return None
        texts.append(text)
    return header, texts


def _column_texts(column, na_rep: str, pa, pc, pd):
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype == np.float64:
        return float_texts(column.to_numpy(), nan=na_rep)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return pc.cast(pa.array(column.to_numpy()), pa.string())
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "iu":
        missing = column.isna().to_numpy()
        values = column.to_numpy(dtype=np.int64 if dtype.kind == "i" else np.uint64,
                                 na_value=0)
        text = pc.cast(pa.array(values), pa.string())
        return pc.if_else(pa.array(missing), pa.scalar(na_rep), text) if missing.any() \
            else text
    if isinstance(column.array, pd.arrays.ArrowStringArray):
        # text stored by Arrow (tables read from the nodes' files): taken as it is, missing
        # values as nulls, rather than made into a Python string per value and back (the
        # genes table's texts: ~100 -> ~5 ms)
        text = pa.array(column.array)
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        text = pc.cast(text, pa.string())
    elif dtype == object or isinstance(dtype, pd.StringDtype):
        values = column.to_numpy(dtype=object)
        missing = pd.isna(values)
        if not all(type(v) is str for v in values[~missing].tolist()):
            return None
        text = pa.array(np.where(missing, None, values), type=pa.string())
    else:
        return None
    if _may_need_quotes(text):
        return None
    return pc.fill_null(text, na_rep)


#: The bytes of :data:`_QUOTED`, as a table of 256 flags.
_QUOTED_BYTES = np.zeros(256, dtype=bool)
_QUOTED_BYTES[[ord(c) for c in '\t\n\r"']] = True


def _may_need_quotes(text) -> bool:
    """Whether a string array's bytes hold a character of :data:`_QUOTED` (the bytes of its
    values, and of nothing else unless the array shares a larger buffer: then it may say True
    for a field that needs no quotes, and the table is left to ``to_csv``, which writes the
    same). A look-up per byte: the regular expression took ~10 ns a byte on the genes table's
    reasons."""
    if text.null_count == len(text) or text.buffers()[2] is None:
        return False
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)
    first, last = int(offsets[text.offset]), int(offsets[text.offset + len(text)])
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)[first:last]
    return bool(_QUOTED_BYTES[data].any())


def write_table_tsv(frame, path: str | os.PathLike, *, index: bool = True,
                    index_label: str | None = None, na_rep: str = "n/a") -> bool:
    """Write ``frame`` as ``DataFrame.to_csv(path, sep='\\t', na_rep=na_rep, index=index,
    index_label=index_label, lineterminator='\\n')`` would, byte for byte, and return True; or
    return False, writing nothing, for a table :func:`table_texts` does not handle. The lines
    are joined by Arrow (the probe and genes tables: ~30,000 lines of text and numbers)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = table_texts(frame, index=index, index_label=index_label, na_rep=na_rep)
    if found is None:
        return False
    header, texts = found
    with open(path, "wb") as handle:
        handle.write(("\t".join(header) + "\n").encode("utf-8"))
        if len(frame):
            lines = pc.binary_join_element_wise(*texts, "\t")
            lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # line + "\n"
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[
                lines.offset:lines.offset + len(lines) + 1]
            handle.write(lines.buffers()[2].slice(int(offsets[0]),
                                                  int(offsets[-1] - offsets[0])))
    return True
