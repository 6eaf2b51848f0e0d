"""BIDS derivatives: naming and writing ahba-app's outputs.

Output names are ``[sub-<donor>_]atlas-<label>[_space-<tpl>][_res-][_den-][_seg-][_scale-]
_desc-<desc>_<suffix>.<ext>`` (an atlas ``desc`` is folded into the label, as XCP-D does, because
``desc`` names the processing; :meth:`ahba_app.bids.AtlasInput.stem`). Every write is atomic
(:mod:`ahba_app.atomic`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from ._version import __version__
from .atomic import replacing
from .atomic import write_text as _write_text

if TYPE_CHECKING:
    from .bids import AtlasInput

CODE_URL = "https://github.com/ahba-app/ahba-app"
BIDS_VERSION = "1.10.0"
BIDSIGNORE = ("*_expression.tsv", "*_expression.json", "*_counts.tsv", "*_probes.tsv",
              "*_genes.tsv", "*_genes.json",
              "*_samples.tsv", "*_samples.json", "*_report.html", "CITATION.md", "logs/")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _atomic(path: Path, write) -> Path:
    """``write(tmp)``, then ``tmp`` replaces ``path`` (:func:`ahba_app.atomic.replacing`)."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def write_tsv(frame: pd.DataFrame, path: str | os.PathLike, index_label: str | None = None,
              index: bool = True, helper=None) -> Path:
    """Write a TSV atomically: tabs, ``n/a`` for missing values, floats at full precision
    (shortest representation that reads back to the same float64). ``helper``: the
    :func:`rows_helper` of this table (same ``index``), or None."""
    def write(tmp):
        from .floattext import write_table_tsv

        if _plain_float_table(frame, index) and not _SPECIAL.search(index_label or ""):
            _write_float_tsv(frame, tmp, index_label, helper)
        elif not write_table_tsv(frame, tmp, index=index, index_label=index_label,
                                 na_rep="n/a"):  # (other tables: pandas)
            frame.to_csv(tmp, sep="\t", na_rep="n/a", index=index, index_label=index_label,
                         lineterminator="\n")
    return _atomic(Path(path), write)


def rows_helper(frame: pd.DataFrame, index: bool = True):
    """A context manager giving a :class:`ahba_app.floattext.RowsHelper` started on ``frame``
    for :func:`write_tsv` (a process formatting part of its rows meanwhile), or None where
    it would not pay (a small table, one that is not a plain float table, one CPU) or cannot
    run (not POSIX). Whether it starts does not depend on what else runs on the machine (a
    load-average test did: the same run went with or without helpers as the load crossed it)."""
    from contextlib import nullcontext

    from ._blocks import n_threads
    from .floattext import HELPER_MIN_VALUES, RowsHelper

    if (frame.size < HELPER_MIN_VALUES or len(frame) < 2 or n_threads() <= 1
            or os.name != "posix" or not sys.executable
            or not _plain_float_table(frame, index)):
        return nullcontext()
    try:
        return RowsHelper(frame, na_rep="n/a")
    except OSError:  # no process could be started: the table is formatted here alone
        return nullcontext()


_SPECIAL = re.compile(r'[\t\n\r"]')


def _plain_float_table(frame: pd.DataFrame, index: bool) -> bool:
    """A region x gene table: float64 values, one level of int or plain str labels each way."""
    if not index or frame.shape[1] == 0:
        return False
    if isinstance(frame.index, pd.MultiIndex) or isinstance(frame.columns, pd.MultiIndex):
        return False
    if not all(dtype == np.float64 for dtype in frame.dtypes):
        return False
    for labels in (frame.index, frame.columns):
        if labels.dtype.kind in "iu":
            continue
        if labels.dtype.kind != "O" or not all(type(v) is str and not _SPECIAL.search(v)
                                               for v in labels):
            return False
    return frame.index.name is None or (type(frame.index.name) is str
                                        and not _SPECIAL.search(frame.index.name))


def _write_float_tsv(frame: pd.DataFrame, path: Path, index_label: str | None,
                     helper=None) -> None:
    """What ``to_csv`` writes for such a table, byte for byte, several times as fast
    (:func:`ahba_app.floattext.write_float_tsv`: ``repr`` of each float, in bulk)."""
    from .floattext import write_float_tsv

    write_float_tsv(frame, path, index_label, helper=helper)


def write_json(obj, path: str | os.PathLike) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
    return _atomic(Path(path), write)


def write_text(text: str, path: str | os.PathLike) -> Path:
    return _write_text(path, text)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def derivative_path(root: str | os.PathLike, atlas: AtlasInput, desc: str, suffix: str,
                    extension: str = ".tsv", donor: str | None = None) -> Path:
    """Where an output goes: ``root/[sub-<donor>/]<stem>_<suffix><extension>``."""
    folder = Path(root) / f"sub-{donor}" if donor else Path(root)
    return folder / f"{atlas.stem(desc, donor)}_{suffix}{extension}"


def container_info(environ: Mapping | None = None) -> dict | None:
    """``GeneratedBy.Container`` ({Type, Tag}) when running in ahba-app's image, else None.

    The image sets ``AHBA_APP_CONTAINER="<type>:<tag>"`` (e.g. ``docker:ahba-app/ahba-app:0.1.0``);
    under Apptainer/Singularity (``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER``) the type is
    theirs and the tag the image's (or the container file's name).
    """
    env = os.environ if environ is None else environ
    declared = env.get("AHBA_APP_CONTAINER", "")
    kind, _, tag = declared.partition(":")
    for var, runtime in (("APPTAINER_CONTAINER", "apptainer"),
                         ("SINGULARITY_CONTAINER", "singularity")):
        if env.get(var):
            return {"Type": runtime, "Tag": tag or Path(env[var]).name}
    if declared:
        return {"Type": kind or "docker", "Tag": tag or "unknown"}
    return None


def software_versions() -> dict:
    """Versions of ahba-app and the libraries whose behaviour shapes the numbers."""
    from importlib import metadata

    out = {"ahba-app": __version__,
           "python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("numpy", "pandas", "scipy", "nibabel", "nipype", "pybids", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return out


def dataset_description(input_dir: str | os.PathLike | None = None,
                        environ: Mapping | None = None) -> dict:
    """The ``dataset_description.json`` of the derivatives."""
    generated = {"Name": "ahba-app", "Version": __version__, "CodeURL": CODE_URL,
                 "Description": "Allen Human Brain Atlas microarray expression aggregated "
                                "over the regions of each atlas."}
    container = container_info(environ)
    if container:
        generated["Container"] = container
    desc = {"Name": "ahba-app: Allen Human Brain Atlas expression per atlas region",
            "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "HowToAcknowledge": "See CITATION.md."}
    if input_dir is not None:
        desc["SourceDatasets"] = [{"URL": Path(input_dir).resolve().as_uri()}]
    return desc
