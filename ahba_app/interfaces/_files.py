"""Intermediate files passed between nodes: tables (pyarrow) and small JSON documents.

Tables keep their dtypes (nothing is widened for storage), their index (sample ids may repeat:
mirrored copies) and the name of their column index (``gene_symbol``). No pickles.

A donor's samples x genes table after probe selection is usually not written at all: the node
writes which probe was chosen for each gene (``.json``, with the microarray cache's
``content_id``), and the next node reads only the samples it needs from the cache, as the Python
API does (:func:`write_chosen_probes`, :func:`read_samples`).

Every table is an Arrow IPC file (``.arrow``), written aside and renamed into place. Small
tables (sample tables, labels, the probes chosen...) are stored as pandas gives them to Arrow,
index included, uncompressed: a node reads one in well under a millisecond, where a compressed
parquet file took a few (a run over ten atlases reads some 500 of them). Matrices (samples or
regions x thousands of genes, one float dtype) are stored differently: the matrix's buffer
(little-endian) as one column of fixed-size binary values, one per row (row-major: each value is
a row; column-major: the same bytes in as many pieces), beside the index columns, with the gene
labels and the layout in the file's metadata. They are written at the speed of a memory copy
(parquet's column-per-gene layout takes seconds per table, and even this layout in parquet
takes ~1 s per 100 MB to encode) and read back memory-mapped, as read-only arrays laid out as
they were written (row- or column-major: nothing is transposed on the way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import replacing

__all__ = ["DonorSamples", "SharedTables", "check_lengths", "read_frame", "read_json",
           "read_labels", "read_samples", "write_chosen_probes", "write_frame", "write_json",
           "write_labels"]


#: Matrices with at least this many columns are stored as one column of lists.
_MATRIX_COLUMNS = 64
_VALUES = "__ahba_values__"
_MATRIX_KEY = b"ahba_app.matrix"
_ARROW_MAGIC = b"ARROW1"
_CHOSEN_KIND = "ahba_app.chosen_probes"


def write_frame(frame: pd.DataFrame, path: str | os.PathLike) -> str:
    """Write ``frame`` (index included) at ``path`` with the suffix ``.arrow`` (a matrix or a
    small table: see the module's notes); returns the path written."""
    path = Path(path).with_suffix(".arrow")
    if _is_matrix(frame):
        _write_matrix(frame, path)
    else:
        _write_table(frame, path)
    return str(path.absolute())


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_frame` (or any parquet file)."""
    with open(path, "rb") as handle:
        magic = handle.read(len(_ARROW_MAGIC))
    if magic != _ARROW_MAGIC:
        return pd.read_parquet(path, engine="pyarrow")
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as source:  # the arrays keep the mapping alive
        table = ipc.open_file(source).read_all()
    if _MATRIX_KEY in (table.schema.metadata or {}):
        return _read_matrix(table)
    return table.to_pandas()


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = pa.Table.from_pandas(frame, preserve_index=True)
    with replacing(path) as partial, pa.OSFile(str(partial), "wb") as sink, \
            ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _is_matrix(frame: pd.DataFrame) -> bool:
    """Many columns of one float dtype, labelled by one level of all-str or all-int labels."""
    columns = frame.columns
    if frame.shape[1] < _MATRIX_COLUMNS or isinstance(columns, pd.MultiIndex):
        return False
    dtypes = frame.dtypes.unique()
    if len(dtypes) != 1 or not isinstance(dtypes[0], np.dtype) or dtypes[0].kind != "f":
        return False
    labels = columns.tolist()
    return (all(type(label) is str for label in labels)
            or all(isinstance(label, (int, np.integer)) for label in labels))


def _write_matrix(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    values = frame.to_numpy()
    # a column-major table (each gene's values contiguous, as probe selection gives them) is
    # written as it lies in memory: the same buffer cut into as many pieces as there are rows,
    # read back column-major; anything else row by row
    order = "F" if values.flags.f_contiguous and not values.flags.c_contiguous else "C"
    values = np.asarray(values, order=order)
    values = values.astype(values.dtype.newbyteorder("<"), copy=False, order=order)
    table = pa.Table.from_pandas(pd.DataFrame(index=frame.index), preserve_index=None)
    width = max(1, values.shape[1] * values.itemsize)
    rows_bytes = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(values.reshape(-1, order=order))])
    table = table.append_column(_VALUES, rows_bytes)
    labels = frame.columns.tolist()
    described = {"labels": [label if isinstance(label, str) else int(label) for label in labels],
                 "labels_dtype": str(frame.columns.dtype),
                 "name": frame.columns.name, "dtype": values.dtype.str, "order": order}
    metadata = dict(table.schema.metadata or {})
    metadata[_MATRIX_KEY] = json.dumps(described).encode()
    table = table.replace_schema_metadata(metadata)
    # written aside, then renamed: a reader still mapping an earlier version keeps it intact
    with replacing(path) as partial:
        _write_mapped(table, partial)


def _write_mapped(table, path: Path) -> None:
    """``table`` as an Arrow IPC file at ``path`` (which exists), through a map of the file:
    the same bytes as a file stream writes, without copying them into the page cache by
    write() (which takes each fresh page one at a time: 72 MB of normalized samples 0.14-0.16
    -> 0.03-0.08 s CPU). The file's blocks are reserved first, so that a full disk is an
    ``OSError`` (ENOSPC) here and never a SIGBUS while writing into the map; a file system that
    cannot reserve them is written the ordinary way."""
    import errno

    import pyarrow as pa
    import pyarrow.ipc as ipc

    def write_into(sink) -> None:
        with ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    counted = pa.MockOutputStream()  # (counts the bytes a writer gives it: the file's size)
    write_into(counted)
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, counted.size())
            reserved = True
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
            reserved = False
    with (pa.memory_map(str(path), "r+") if reserved else pa.OSFile(str(path), "wb")) as sink:
        write_into(sink)


def _read_matrix(table) -> pd.DataFrame:
    described = json.loads(table.schema.metadata[_MATRIX_KEY])
    labels = described["labels"]
    dtype = np.dtype(described["dtype"])
    column = table.column(_VALUES)
    # one record batch (as written): its buffer is the mapped file, used without a copy
    stored = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    count = len(stored) * len(labels)
    flat = np.frombuffer(stored.buffers()[1], dtype=dtype, count=count,
                         offset=stored.offset * stored.type.byte_width)
    if described.get("order", "C") == "F":
        rows = flat.reshape(len(labels), len(stored)).T
    else:
        rows = flat.reshape(-1, len(labels))
    index = table.drop_columns([_VALUES]).to_pandas().index
    columns = pd.Index(labels, name=described["name"], dtype=described["labels_dtype"])
    return pd.DataFrame(rows, index=index, columns=columns, copy=False)


def write_labels(labels, path: str | os.PathLike) -> str:
    """Region label of every sample row (int64) as a one-column table (:func:`write_frame`)."""
    return write_frame(pd.DataFrame({"label": np.asarray(labels, dtype=np.int64)}), path)


def write_chosen_probes(chosen: pd.DataFrame, matrix, path: str | os.PathLike) -> str:
    """Which probe of the cached microarray ``matrix`` (an :class:`ahba_app.io.CachedMatrix`)
    was chosen for each gene (``chosen``: index ``probe_id``, column ``gene_symbol``), as JSON
    at ``path`` (suffix ``.json``): what :func:`read_samples` needs to read the donor's samples
    x genes table from the cache, instead of a copy of the table."""
    return write_json({"kind": _CHOSEN_KIND, "microarray": os.fspath(matrix.source),
                       "content_id": matrix.content_id,
                       "probe_id": chosen.index.tolist(),
                       "gene_symbol": chosen["gene_symbol"].tolist()},
                      Path(path).with_suffix(".json"))


def read_samples(path: str | os.PathLike, annotation: pd.DataFrame, rows=None,
                 order: str = "F", *, sample_norm=None, buffer=None, columns=None
                 ) -> pd.DataFrame:
    """A donor's samples x genes table from probe selection: from its microarray cache for a
    file of :func:`write_chosen_probes` (only the rows at positions ``rows``, laid out in
    ``order``, in ``buffer``'s memory if given: a large enough 1-D float64 array), else the
    table written (``order`` is then the table's own). A table read to be normalized gives its
    ``sample_norm`` instead: the layout is then the one that normalization needs to give
    abagen's numbers (:func:`ahba_app.pipeline.read_order`). ``columns``: positions of the
    genes to read, in that order (:meth:`DonorSamples.file_order`; by default all, in symbol order)."""
    return DonorSamples(path).read(annotation, rows, order, sample_norm=sample_norm,
                                   buffer=buffer, columns=columns).frame()


class DonorSamples:
    """A donor's samples x genes table from probe selection (a file of
    :func:`write_chosen_probes`, or a table written whole), its file read once (when first
    needed) for all that a node asks of it: :attr:`n_columns`, :attr:`genes`,
    :meth:`file_order`, :meth:`read` (:func:`read_samples` opens it for one read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._document = None

    @property
    def _chosen(self) -> tuple[dict, pd.DataFrame] | None:
        """:func:`_chosen` of the file, None for a table written whole."""
        if Path(self.path).suffix != ".json":
            return None
        if self._document is None:
            self._document = _chosen(self.path)
        return self._document

    @property
    def n_columns(self) -> int:
        if self._chosen is None:
            return read_frame(self.path).shape[1]
        return len(self._chosen[1])

    @property
    def genes(self) -> pd.Index:
        """The genes of the table, in the order it is read by default (symbol order)."""
        if self._chosen is None:
            return read_frame(self.path).columns
        return pd.Index(self._chosen[1]["gene_symbol"])

    def file_order(self, annotation: pd.DataFrame) -> np.ndarray | None:
        """Positions of the genes read in the order of the donor's microarray cache's rows
        (:func:`ahba_app.pipeline.donor_file_order`); None for a table written whole."""
        from .. import pipeline

        if self._chosen is None:
            return None
        found, chosen = self._chosen
        return pipeline.donor_file_order(found["microarray"], found["content_id"], annotation,
                                         chosen)

    def read(self, annotation: pd.DataFrame, rows=None, order: str = "F", *,
             sample_norm=None, buffer=None, columns=None):
        """:func:`read_samples`'s table with the array it was read into, the caller's to
        overwrite (a :class:`ahba_app.probes.SampleTable`; a table written whole is copied,
        in its own layout, into ``buffer`` if given)."""
        from .. import pipeline
        from .._blocks import own_copy
        from ..probes import SampleTable

        if sample_norm is not None:
            order = pipeline.read_order(sample_norm)
        if self._chosen is None:
            frame = read_frame(self.path)
            frame = frame if columns is None else frame.iloc[:, columns]
            frame = frame if rows is None else frame.iloc[rows]
            return SampleTable(own_copy(frame.to_numpy(), "K", buffer), frame.index,
                               frame.columns)
        found, chosen = self._chosen
        return pipeline.read_donor_samples(found["microarray"], found["content_id"],
                                           annotation, chosen, rows, order=order,
                                           buffer=buffer, columns=columns)


def _chosen(path) -> tuple[dict, pd.DataFrame]:
    """The document of :func:`write_chosen_probes` and its table of chosen probes."""
    found = read_json(path)
    if not isinstance(found, dict) or found.get("kind") != _CHOSEN_KIND:
        raise ValueError(f"{path} does not list chosen probes (no kind {_CHOSEN_KIND!r}).")
    return found, pd.DataFrame({"gene_symbol": np.array(found["gene_symbol"], dtype=object)},
                               index=pd.Index(found["probe_id"], dtype=np.int64,
                                              name="probe_id"))


def read_labels(path: str | os.PathLike) -> np.ndarray:
    return read_frame(path)["label"].to_numpy(dtype=np.int64)


def check_lengths(donors, **lists) -> None:
    """Error unless every list of per-donor files has one file per donor."""
    for name, values in lists.items():
        if len(values) != len(donors):
            raise ValueError(f"{name}: {len(values)} files for {len(donors)} donors.")


def write_json(obj, path: str | os.PathLike) -> str:
    path = Path(path)
    # json.dumps without indent: the compiled encoder (json.dump and indents run the pure-Python
    # one: 20-25 ms for each donor's chosen probes instead of 7-10); key order is donor order
    text = json.dumps(obj, default=_plain)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path.absolute())


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _plain(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Cannot store {type(obj).__name__} in JSON.")


# ---------------------------------------------------------------------------------------------
# tables shared by the atlases of a run
# ---------------------------------------------------------------------------------------------
#: Modules whose source decides a normalized table's values (any edit changes every key).
NORMALIZE_CODE = ("ahba_app.normalize", "ahba_app.pipeline", "ahba_app.exact",
                  "ahba_app.probes", "ahba_app.io", "ahba_app.matrix")


def _code_digest(modules) -> bytes:
    hasher = hashlib.sha256()
    for name in modules:
        hasher.update(name.encode() + b"\0" + Path(import_module(name).__file__).read_bytes())
    return hasher.digest()


class SharedTables:
    """A folder of tables that several nodes of one run would otherwise compute alike (the
    atlases of a run normalizing the same samples of a donor with the same options): each
    entry is a sub-folder named by the SHA-256 of everything its tables depend on (the
    content of the input files, the arrays, the options and the source of the code), made
    complete in a temporary folder and renamed into place, so that an entry that exists is
    whole. The command line keeps it in its work folder (``--clean-workdir`` removes it)."""

    def __init__(self, folder: str | os.PathLike, code=NORMALIZE_CODE):
        self.folder = Path(folder)
        self.code = tuple(code)
        self._code_digest = None

    def key(self, *, files=(), arrays=(), options: dict | None = None) -> str:
        """The SHA-256 naming the entry of these inputs."""
        if self._code_digest is None:  # (the sources, read once for the donors of a node)
            self._code_digest = _code_digest(self.code)
        hasher = hashlib.sha256(self._code_digest)
        for path in files:
            with open(path, "rb") as handle:
                hasher.update(hashlib.file_digest(handle, "sha256").digest())
        for array in arrays:
            array = np.ascontiguousarray(array)
            hasher.update(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())
        hasher.update(json.dumps(options or {}, sort_keys=True, default=str).encode())
        return hasher.hexdigest()

    def find(self, key: str) -> dict[str, str] | None:
        """Name -> path of each table of the entry ``key`` (None when there is none)."""
        entry = self.folder / key
        if not entry.is_dir():
            return None
        return {p.stem: str(p.absolute()) for p in sorted(entry.iterdir())}

    def add(self, key: str, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
        """Write ``tables`` (name -> frame, :func:`write_frame`) as the entry ``key`` and return
        :meth:`find`; an entry that another process completed meanwhile is kept (same
        content), and nothing is left behind on an error."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.folder))
        try:
            for name, frame in tables.items():
                write_frame(frame, partial / name)
            try:
                os.rename(partial, self.folder / key)
            except OSError:
                if not (self.folder / key).is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return self.find(key)
