"""Probe choices kept beside the matrix caches, so that the same choice is not made twice.

Choosing one probe per gene (differential stability above all) is the dearest step of a run
on cached data, and it does not depend on the atlas: a batch over many atlases, or the same job
run again, makes the same choice every time. Each choice is stored in a small ``.npz`` file
(``selection-<key>.npz``, next to the first donor's matrix cache) under a key that digests
everything the choice depends on:

- the method and how donors are combined (``donor_probes``), this format's version, ahba-app's,
  and a digest of the code that makes the choice (:func:`code_version`), so that a change of
  that code never reads a choice the old code made;
- the probe table (probe ids, in gene order, and their genes);
- for every donor: what its microarray cache holds (:attr:`ahba_app.io.CachedMatrix.content_id`),
  the samples used (their columns, in order) and their structures.

So an input that changed can only miss, never hit an old choice. A stored choice is checked
against the probe table before it is used (every probe must exist and belong to its gene); a
file that cannot be read or does not fit is ignored and written again. A folder that cannot be
written is skipped: the store only saves time, it never decides a result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np

from .atomic import replacing

LOGGER = logging.getLogger(__name__)

#: Version of the stored layout and of what the key digests; files of others never match.
FORMAT_VERSION = 1
#: File names: the prefix, then the key's first hex digits.
PREFIX = "selection-"
_KEY_DIGITS = 32
#: The modules whose code decides a probe choice (their source enters every key).
SELECTION_CODE = ("ahba_app.probes", "ahba_app.matrix", "ahba_app.exact", "ahba_app.io",
                  "ahba_app.selection_cache", "ahba_app._blocks")


def code_version() -> str:
    """A SHA-256 of the source of :data:`SELECTION_CODE`: any edit of the code that chooses
    probes changes every key (read each time: a few hundred KB, no module-level state)."""
    hasher = hashlib.sha256()
    for name in SELECTION_CODE:
        try:
            module = import_module(name)
        except ImportError:  # a module of the list that this version does not have
            hasher.update(f"no {name}".encode())
            continue
        hasher.update(name.encode() + b"\0" + Path(module.__file__).read_bytes())
    return hasher.hexdigest()


class ChoiceStore:
    """Where probe choices are stored: ``folder``, or (None) the folder of the first donor's
    microarray cache. Made by the front ends (the Python API, the command line) and passed to
    :func:`ahba_app.probes.select_probes`; without one, nothing is read or written."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = None if folder is None else Path(folder)

    def path(self, cache_folder: Path, key: str) -> Path:
        return path_for(self.folder if self.folder is not None else cache_folder, key)

    def load(self, path: Path, key: str, n_genes: int) -> dict[str, "StoredChoice"] | None:
        return load(path, key, n_genes)

    def save(self, path: Path, key: str, choices: dict[str, "StoredChoice"]) -> bool:
        return save(path, key, choices)


@dataclass(frozen=True)
class StoredChoice:
    """One probe per gene: the chosen probe id (-1: gene dropped), the criterion's value of
    that probe (NaN when none) and the criterion's name."""

    probe_ids: np.ndarray
    scores: np.ndarray
    criterion: str


def _digest_array(hasher, values) -> None:
    values = np.ascontiguousarray(values)
    hasher.update(f"{values.dtype.str}{values.shape}".encode())
    hasher.update(values.tobytes())


def choice_key(method: str, donor_probes: str, probe_ids, gene_of, symbols, donors) -> str:
    """The key of a choice: a SHA-256 hex digest of everything it depends on.

    ``probe_ids`` and ``gene_of`` list the probes in gene order with their gene numbers, and
    ``symbols`` the genes; ``donors`` is a sequence of ``(name, content_id, columns,
    structure_ids)``, one per donor in order (``structure_ids`` may be None).
    """
    from ._version import __version__

    hasher = hashlib.sha256(f"ahba-app {__version__} probe choice v{FORMAT_VERSION}\0"
                            f"{code_version()}\0{method}\0{donor_probes}\0".encode())
    _digest_array(hasher, np.asarray(probe_ids, dtype=np.int64))
    _digest_array(hasher, np.asarray(gene_of, dtype=np.int64))
    hasher.update("\0".join(str(s) for s in symbols).encode("utf-8", "surrogatepass"))
    for name, content_id, columns, structure_ids in donors:
        hasher.update(f"\0donor\0{name}\0{content_id}\0".encode())
        _digest_array(hasher, np.asarray(columns, dtype=np.int64))
        structure_ids = None if structure_ids is None else np.asarray(structure_ids)
        if structure_ids is None:
            hasher.update(b"no structures")
        elif structure_ids.dtype.kind in "biuf":
            _digest_array(hasher, structure_ids)
        else:  # object or text: their bytes would be addresses, digest their text
            hasher.update("\0".join(str(s) for s in structure_ids).encode("utf-8",
                                                                           "surrogatepass"))
    return hasher.hexdigest()


def path_for(folder: Path, key: str) -> Path:
    return Path(folder) / f"{PREFIX}{key[:_KEY_DIGITS]}.npz"


def load(path: Path, key: str, n_genes: int) -> dict[str, StoredChoice] | None:
    """The choices stored at ``path`` under ``key`` (a dict, as saved), or None when there are
    none or they cannot be used (logged; the caller makes the choice again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                raise ValueError("it was stored under another key")
            names = [str(n) for n in stored["names"]]
            criteria = [str(c) for c in stored["criteria"]]
            probe_ids = np.asarray(stored["probe_ids"])
            scores = np.asarray(stored["scores"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        LOGGER.info("Not using the stored probe choice %s (%s); choosing again", path, err)
        return None
    shape = (len(names), n_genes)
    if (len(criteria) != len(names) or probe_ids.shape != shape or scores.shape != shape
            or probe_ids.dtype != np.int64 or scores.dtype != np.float64):
        LOGGER.info("Not using the stored probe choice %s (it holds arrays of other shapes); "
                    "choosing again", path)
        return None
    return {name: StoredChoice(ids, values, criterion)
            for name, ids, values, criterion in zip(names, probe_ids, scores, criteria)}


def save(path: Path, key: str, choices: dict[str, StoredChoice]) -> bool:
    """Store ``choices`` at ``path`` (written aside, then renamed into place); False, with
    nothing left behind, when the folder cannot be written."""
    names = list(choices)
    arrays = {
        "key": np.array(key),
        "names": np.array(names, dtype=str),
        "criteria": np.array([choices[n].criterion for n in names], dtype=str),
        "probe_ids": np.array([choices[n].probe_ids for n in names], dtype=np.int64),
        "scores": np.array([choices[n].scores for n in names], dtype=np.float64),
    }
    try:
        with replacing(path, mkdir=False) as temporary, open(temporary, "wb") as out:
            np.savez(out, **arrays)
        return True
    except OSError as err:
        LOGGER.debug("Cannot store the probe choice at %s (%s)", path, err)
        return False
