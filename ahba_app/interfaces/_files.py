"""Intermediate files passed between nodes: parquet tables (pyarrow) and small JSON documents.

Tables keep their dtypes (the expression matrices are float32 from the microarray onwards and
stay so; nothing is widened for storage), their index (sample ids may repeat: mirrored copies)
and the name of their column index (``gene_symbol``). No pickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["read_frame", "read_json", "read_labels", "write_frame", "write_json",
           "write_labels"]


def write_frame(frame: pd.DataFrame, path: str | os.PathLike) -> str:
    """Write ``frame`` (index included) as a zstd-compressed parquet file; returns the path."""
    path = Path(path)
    frame.to_parquet(path, engine="pyarrow", index=True, compression="zstd")
    return str(path.absolute())


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_frame`."""
    return pd.read_parquet(path, engine="pyarrow")


def write_labels(labels, path: str | os.PathLike) -> str:
    """Region label of every sample row (int64) as a one-column parquet file."""
    return write_frame(pd.DataFrame({"label": np.asarray(labels, dtype=np.int64)}), path)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    return read_frame(path)["label"].to_numpy(dtype=np.int64)


def write_json(obj, path: str | os.PathLike) -> str:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1, default=_plain)  # key order is donor order
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
