"""Finding the AHBA donor folders on disk, and downloading the ones that are missing.

Where the data live
-------------------
The *data folder* is, in this order: the ``data_dir`` argument, ``$AHBA_DATA``,
``$ABAGEN_DATA``, else a per-user folder, ``$XDG_DATA_HOME/ahba-app`` (by default
``~/.local/share/ahba-app``). The first one that is set is used, with no silent fall-back to
the next: a data folder that cannot be written is an error only when something has to be
downloaded into it. Inside the data folder one donor's microarray files are looked for in
``microarray/normalized_microarray_donor<N>/`` (abagen's layout) and then in
``normalized_microarray_donor<N>/``; a data folder itself named ``microarray`` holds the donor
folders directly. RNA-seq files work the same with ``rnaseq/rnaseq_donor<N>/``; given a folder
named ``microarray``, RNA-seq files are looked for (and downloaded) in its sibling ``rnaseq``,
and the other way round. Missing donors are downloaded beside the donor folders already there,
else into ``<data folder>/microarray/`` (or ``rnaseq/``), which abagen can read too.

Downloads
---------
Each donor is one zip archive, served by the Allen Institute at
``https://human.brain-map.org/api/v2/well_known_file_download/<id>``, or by a mirror when
``$AHBA_APP_MIRROR`` is set (the same ``api/v2/well_known_file_download/<id>`` path under the
mirror's address). Unlike abagen, a download is only accepted when its size equals the size the
server announced; an interrupted download stays in ``<folder>.zip.part`` and the next attempt (or
the next run) resumes it with an HTTP Range request. The archive is unpacked into a hidden
temporary folder next to its destination and moved into place only once every expected CSV is
there, so a donor folder either is complete or does not exist. A lock file in the data folder
keeps two processes from downloading into it at the same time (the second waits, then finds the
data). Nothing touches the network, and nothing is written, when every requested file is already
on disk. Unreachable servers (connection refused, unknown host) fail at once; dropped
connections and short files are retried ``RETRIES`` times; Ctrl-C stops every download and keeps
the ``.part`` files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# requests, urllib3 and filelock are imported by the functions that download: a run on data
# already here never needs them (they are 0.05 s of every start-up)
from ._version import __version__
from .donors import DONORS, RNASEQ_DONORS, check_donors
from .options import DEFAULTS

__all__ = [
    "ALLEN_URL",
    "AHBAArchiveError",
    "AHBADataDirError",
    "AHBADataNotFoundError",
    "AHBADownloadError",
    "AHBAFetchError",
    "MICROARRAY_FILES",
    "RNASEQ_FILES",
    "download_url",
    "fetch_freesurfer",
    "fetch_fsnative",
    "fetch_microarray",
    "fetch_raw_mri",
    "fetch_rnaseq",
    "find_microarray",
    "find_raw_mri",
    "find_rnaseq",
    "get_data_dir",
]

#: Where the Allen Institute serves its "well known files".
ALLEN_URL = "https://human.brain-map.org"
_DOWNLOAD_PATH = "api/v2/well_known_file_download/{id}"

#: The files of one donor's microarray folder, under abagen's keys.
MICROARRAY_FILES = {
    "microarray": "MicroarrayExpression.csv",
    "ontology": "Ontology.csv",
    "pacall": "PACall.csv",
    "probes": "Probes.csv",
    "annotation": "SampleAnnot.csv",
}

#: The files of one donor's RNA-seq folder, under abagen's keys.
RNASEQ_FILES = {
    "counts": "RNAseqCounts.csv",
    "tpm": "RNAseqTPM.csv",
    "ontology": "Ontology.csv",
    "genes": "Genes.csv",
    "annotation": "SampleAnnot.csv",
}

#: The raw MRIs of one donor (Allen "well known files", gzipped NIfTI), under abagen's keys.
MRI_FILES = {"t1w": "T1.nii.gz", "t2w": "T2.nii.gz"}

#: The files of a donor's FreeSurfer folder that ahba-app reads (the folder holds many more).
FREESURFER_FILES = {"orig": "mri/orig.mgz", "lh_pial": "surf/lh.pial", "rh_pial": "surf/rh.pial"}

#: The donors' FreeSurfer reconstructions (Romero-Garcia et al. 2017, doi:10.17863/CAM.11392),
#: one archive per donor in the University of Cambridge repository (handle 1810/265272).
CAMBRIDGE_URL = "https://www.repository.cam.ac.uk"
_FREESURFER_PATH = "bitstream/handle/1810/265272/donor{donor}.zip"

# Network settings. Module attributes so that tests (and patient users) can change them.
CONNECT_TIMEOUT = 5.0    #: seconds to open a connection
READ_TIMEOUT = 60.0      #: seconds without a byte from the server before giving up on a try
RETRIES = 4              #: extra tries after a dropped connection or a short file
BACKOFF = 2.0            #: seconds before the first retry, doubled each time (at most 60)
CHUNK_SIZE = 1 << 20

_LOCK_NAME = ".ahba-app.lock"


class AHBAFetchError(OSError):
    """Base class of the errors raised while getting AHBA data onto disk."""


class AHBADownloadError(AHBAFetchError):
    """A donor archive could not be downloaded."""


class AHBAArchiveError(AHBADownloadError):
    """A downloaded donor archive is not a valid zip, or lacks an expected file."""


class AHBADataDirError(AHBAFetchError):
    """The data folder cannot be created or written to."""


class AHBADataNotFoundError(FileNotFoundError):
    """Requested AHBA donor folders or files are not on disk."""


@dataclass(frozen=True)
class _Kind:
    """One of the two AHBA datasets: the names of its folders and files, and its archives."""

    name: str                   # sub-folder of the data folder: 'microarray' or 'rnaseq'
    label: str                  # for messages
    prefix: str                 # donor folder name without the donor number
    files: dict                 # abagen key -> CSV file name
    valid: tuple                # donors that have this dataset
    fetcher: str                # the function that downloads it
    flag: str = ""              # the `python -m ahba_app.fetch` option that downloads it

    def zip_id(self, donor: str) -> int:
        info = DONORS[donor]
        return info.microarray_zip_id if self.name == "microarray" else info.rnaseq_zip_id


_MICROARRAY = _Kind("microarray", "microarray", "normalized_microarray_donor", MICROARRAY_FILES,
                    tuple(DONORS), "fetch_microarray")
_RNASEQ = _Kind("rnaseq", "RNA-seq", "rnaseq_donor", RNASEQ_FILES, RNASEQ_DONORS, "fetch_rnaseq",
                " --rnaseq")
_MRI = _Kind("mri", "raw MRI", "mri_donor", MRI_FILES, tuple(DONORS), "fetch_raw_mri", " --mri")
_FREESURFER = _Kind("freesurfer", "FreeSurfer", "donor", FREESURFER_FILES, tuple(DONORS),
                    "fetch_freesurfer", " --freesurfer")
_KIND_NAMES = (_MICROARRAY.name, _RNASEQ.name, _MRI.name, _FREESURFER.name)


# --------------------------------------------------------------------------------------------
# Where the data folder is

def get_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$AHBA_DATA``, else ``$ABAGEN_DATA``, else a default.

    The user folder is ``$XDG_DATA_HOME/ahba-app`` when ``XDG_DATA_HOME`` is set to an absolute
    path, and ``~/.local/share/ahba-app`` otherwise. The folder is neither created nor checked.
    """
    for value in (data_dir, os.environ.get("AHBA_DATA"), os.environ.get("ABAGEN_DATA")):
        if value is not None and str(value) != "":
            return Path(os.path.abspath(os.path.expanduser(os.fspath(value))))
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".local" / "share"
    return base / "ahba-app"


def download_url(zip_id: int) -> str:
    """Address of one Allen "well known file", on ``$AHBA_APP_MIRROR`` when that is set."""
    server = os.environ.get("AHBA_APP_MIRROR") or ALLEN_URL
    return f"{server.rstrip('/')}/{_DOWNLOAD_PATH.format(id=zip_id)}"


def _roots(base: Path, kind: _Kind) -> list[Path]:
    """Folders that may hold the donor folders, in the order they are searched."""
    if base.name == kind.name:
        return [base]
    roots = [base / kind.name, base]
    if base.name in _KIND_NAMES:    # e.g. RNA-seq wanted, the microarray folder given
        roots.append(base.parent / kind.name)
    return roots


def _download_root(base: Path, kind: _Kind) -> Path:
    """Where missing donor folders go: beside those already there, else ``<base>/<kind.name>``."""
    if base.name == kind.name:
        return base
    if base.name in _KIND_NAMES:
        return base.parent / kind.name
    nested = base / kind.name
    if not nested.is_dir() and base.is_dir() and any(
            p.is_dir() for p in base.glob(f"{kind.prefix}*")):
        return base
    return nested


def _ordered(donors: Iterable[str]) -> list[str]:
    return sorted(donors, key=int)


def _check(kind: _Kind, donors) -> list[str]:
    """Donor numbers for ``donors``, refusing unknown donors and donors that lack ``kind`` data."""
    every = check_donors(donors)                      # raises for an unknown donor
    try:
        chosen = check_donors(donors, valid=kind.valid)
    except ValueError:
        lacking = [d for d in every if d not in kind.valid]
        choices = ", ".join(f"{d} ({DONORS[d].uid})" for d in kind.valid)
        raise ValueError(f"AHBA donor(s) {', '.join(lacking)} have no {kind.label} data: "
                         f"{kind.label} donors are {choices}, or 'all'.") from None
    return _ordered(chosen)


@dataclass
class _Scan:
    found: dict        # donor -> {key: path}
    absent: list       # donors without a folder
    incomplete: dict   # donor -> (folder, [missing file names])


def _scan(base: Path, kind: _Kind, donors: list[str]) -> _Scan:
    scan = _Scan({}, [], {})
    roots = _roots(base, kind)
    for donor in donors:
        folder = next((r / f"{kind.prefix}{donor}" for r in roots
                       if (r / f"{kind.prefix}{donor}").is_dir()), None)
        if folder is None:
            scan.absent.append(donor)
            continue
        missing = [name for name in kind.files.values() if not (folder / name).is_file()]
        if missing:
            scan.incomplete[donor] = (folder, missing)
        else:
            scan.found[donor] = {key: str(folder / name) for key, name in kind.files.items()}
    return scan


def _problems(base: Path, kind: _Kind, scan: _Scan) -> list[str]:
    lines = []
    roots = " or ".join(str(r) for r in _roots(base, kind))
    for donor in scan.absent:
        lines.append(f"  - donor {donor}: no folder {kind.prefix}{donor} in {roots}")
    for donor, (folder, missing) in scan.incomplete.items():
        lines.append(f"  - donor {donor}: {folder} lacks {', '.join(missing)}")
    return lines


def _missing_message(base: Path, kind: _Kind, scan: _Scan) -> str:
    lines = [f"AHBA {kind.label} files are missing from {base}:"]
    if not base.exists():
        lines = [f"AHBA {kind.label} files are missing: the data folder {base} does not exist."]
    lines += _problems(base, kind, scan)
    lines.append(
        f"To fix this, download them with ahba_app.fetch.{kind.fetcher}(data_dir='{base}'), "
        f"`python -m ahba_app.fetch --data-dir {base}`"
        f"{kind.flag} or the ahba-app command line with "
        f"--ahba-dir {base}; or point --ahba-dir (or $AHBA_DATA) at the folder that holds "
        f"{kind.prefix}<N>/ (or {kind.name}/{kind.prefix}<N>/).")
    if scan.incomplete:
        lines.append("An incomplete donor folder is never overwritten: put the missing files "
                     "back, or delete the folder so that it is downloaded again.")
    return "\n".join(lines)


def _find(kind: _Kind, data_dir, donors) -> dict:
    donors = _check(kind, donors)
    base = get_data_dir(data_dir)
    scan = _scan(base, kind, donors)
    if scan.absent or scan.incomplete:
        raise AHBADataNotFoundError(_missing_message(base, kind, scan))
    return {donor: scan.found[donor] for donor in donors}


def find_microarray(data_dir: str | os.PathLike | None = None, donors=DEFAULTS["donors"]) -> dict:
    """Paths of the microarray files of ``donors`` already on disk; never downloads.

    Returns ``{donor: {'microarray', 'ontology', 'pacall', 'probes', 'annotation'}}`` (paths as
    str, donors in increasing number), like :func:`fetch_microarray`. Raises
    :class:`AHBADataNotFoundError` (a FileNotFoundError) naming every missing donor folder or
    file and how to get them.
    """
    return _find(_MICROARRAY, data_dir, donors)


def find_rnaseq(data_dir: str | os.PathLike | None = None, donors=DEFAULTS["donors"]) -> dict:
    """Paths of the RNA-seq files of ``donors`` already on disk; never downloads.

    Returns ``{donor: {'counts', 'tpm', 'ontology', 'genes', 'annotation'}}`` like
    :func:`fetch_rnaseq`, or raises :class:`AHBADataNotFoundError`.
    """
    return _find(_RNASEQ, data_dir, donors)


def find_raw_mri(data_dir: str | os.PathLike | None = None, donors=DEFAULTS["donors"]) -> dict:
    """Paths of the raw MRIs of ``donors`` already on disk (``mri/mri_donor<N>/T1.nii.gz``,
    ``T2.nii.gz``); never downloads. Returns ``{donor: {'t1w', 't2w'}}`` or raises
    :class:`AHBADataNotFoundError` saying how to get them (:func:`fetch_raw_mri`)."""
    return _find(_MRI, data_dir, donors)


# --------------------------------------------------------------------------------------------
# Downloading one file

class _Retry(Exception):
    """A try failed in a way that another try may fix."""


class _Cancelled(Exception):
    """The fetch was interrupted (Ctrl-C in the main thread)."""


def _say(verbose: int, message: str) -> None:
    if verbose > 0:
        print(message, file=sys.stderr, flush=True)


def _show_bars(verbose: int) -> bool:
    try:
        return verbose > 0 and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header, None where not given."""
    if not value or not value.strip().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    return (int(first) if first.isdigit() else None,
            int(total) if total.strip().isdigit() else None)


def _causes(exc: BaseException):
    """``exc`` and the exceptions it wraps (urllib3 keeps them in ``reason`` and ``args``)."""
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        todo.extend([getattr(err, "reason", None), err.__cause__, err.__context__])
        todo.extend(a for a in getattr(err, "args", ()) if isinstance(a, BaseException))


def _unreachable(exc: Exception) -> bool:
    """Whether ``exc`` means no connection could be opened (refused, unknown host, no route)."""
    import requests
    import urllib3

    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.ProxyError)):
        return True
    return any(isinstance(err, (urllib3.exceptions.NewConnectionError,
                                urllib3.exceptions.ConnectTimeoutError))
               for err in _causes(exc))


def _try_once(session: requests.Session, url: str, part: Path, desc: str, verbose: int,
              state: dict, cancel: threading.Event) -> None:
    """One GET of ``url`` into ``part`` (resumed when it exists); returns when it is complete.

    Sets ``state['reached']`` once the server has answered.
    """
    import urllib3

    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    response = session.get(url, headers=headers, stream=True,
                           timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    state["reached"] = True
    with response:
        status = response.status_code
        if have and status == 416:
            # Nothing left to send: the part is complete, or no longer matches the server's file.
            if _content_range(response.headers.get("Content-Range"))[1] == have:
                return
            part.unlink()
            raise _Retry(f"the server refused to resume at byte {have}")
        if status >= 500 or status == 429:
            raise _Retry(f"the server answered HTTP {status} {response.reason}")
        if status >= 400:
            raise AHBADownloadError(f"the server answered HTTP {status} {response.reason}")
        if status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have:
                part.unlink(missing_ok=True)
                raise _Retry(f"the server resumed at byte {first} instead of {have}")
            mode = "ab"
        else:   # the whole file, whether or not a range was asked for
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.strip().isdigit() else None
        bar = None
        if _show_bars(verbose):
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=desc, file=sys.stderr, leave=False)
        # Read what has arrived, one socket read at a time, so that every byte received before a
        # connection drops is on disk for the next try (a buffered read would discard them).
        raw = response.raw
        read = getattr(raw, "read1", None) or raw.read
        broken = None
        try:
            with open(part, mode) as handle:
                while True:
                    if cancel.is_set():
                        raise _Cancelled
                    chunk = read(CHUNK_SIZE, decode_content=False)
                    if not chunk:
                        break
                    handle.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except urllib3.exceptions.HTTPError as exc:
            broken = exc
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    of_total = f" of {total:,}" if total is not None else ""
    if isinstance(broken, urllib3.exceptions.ReadTimeoutError):
        raise _Retry(f"the server sent nothing for {READ_TIMEOUT:g} s after {size:,}{of_total} "
                     f"bytes")
    if broken is not None or (total is not None and size != total):
        if total is not None and size > total:
            part.unlink()
            raise _Retry(f"the server sent {size:,} bytes instead of {total:,}")
        raise _Retry(f"the connection ended after {size:,}{of_total} bytes")


def _retrying(once, *, desc: str, verbose: int, fail=AHBADownloadError,
              cancel: threading.Event | None = None, kept=lambda: ""):
    """Return ``once(state)``, calling it again after failures another try may fix; or raise.

    ``once`` sets ``state['reached']`` once the server has answered, and raises ``_Retry`` for
    a failure worth another try. Dropped connections and timeouts are tried again too, up to
    ``RETRIES`` times with a doubling wait (``BACKOFF``); a server that cannot be reached before
    it answered (no network, refused, unknown host) fails at once. Failures raise
    ``fail(reason)``; ``kept()`` is added to the message of the last one. ``cancel`` (set by
    Ctrl-C handling) stops the waiting.
    """
    import requests
    import urllib3

    state = {"reached": False}
    reason = ""
    for attempt in range(RETRIES + 1):
        try:
            return once(state)
        except _Retry as exc:
            reason = str(exc)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if not state["reached"] and _unreachable(exc):
                raise fail(f"the server could not be reached ({_short(exc)})") from None
            reason = _short(exc)
        if attempt < RETRIES:
            wait = min(BACKOFF * 2 ** attempt, 60.0)
            _say(verbose, f"{desc}: {reason}; trying again in {wait:g} s "
                          f"({attempt + 1} of {RETRIES} retries)")
            if cancel is None:
                time.sleep(wait)
            elif cancel.wait(wait):
                raise _Cancelled
    raise fail(f"{reason}, {RETRIES + 1} tries{kept()}")


def _session() -> requests.Session:
    """A requests session that says who is asking."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = f"ahba-app/{__version__}"
    return session


def _download(url: str, dest: Path, *, desc: str, verbose: int, cancel: threading.Event) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming and retrying; or raise.

    The raised AHBADownloadError carries only the reason; the caller adds what and how to fix.
    """
    part = dest.with_name(dest.name + ".part")

    def kept() -> str:
        if part.exists():
            return (f"; the {part.stat().st_size:,} bytes received are kept in {part} for the "
                    f"next run")
        return ""

    with _session() as session:
        _retrying(lambda state: _try_once(session, url, part, desc, verbose, state, cancel),
                  desc=desc, verbose=verbose, cancel=cancel, kept=kept)
    os.replace(part, dest)


def _short(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error."""
    import urllib3

    for err in _causes(exc):
        if isinstance(err, (urllib3.exceptions.NewConnectionError,
                            urllib3.exceptions.ConnectTimeoutError)):
            text = str(err)   # "<connection object>: what went wrong"
            for marker in ("Failed to establish a new connection: ", "Failed to resolve "):
                if marker in text:
                    return marker + text.split(marker, 1)[1]
            return text
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Unpacking one archive

def _donor_error(cls, kind: _Kind, donor: str, root: Path, reason: str) -> AHBADownloadError:
    """An error saying what is missing, why (``reason``) and how to fix it."""
    fix = _fix_download(kind)
    error = cls(f"AHBA {kind.label} files of donor {donor} are missing from {root}: {reason}."
                f"\n{fix}")
    error.summary = f"  - donor {donor}: {reason}"    # for the message about several donors
    return error


def _zip_extract(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(target)


def _csv_folder(scratch: Path, kind: _Kind) -> Path:
    """The folder of the unpacked archive holding the kind's files (at the top, or the one
    sub-folder that holds them)."""
    first = next(iter(kind.files.values()))
    if (scratch / first).is_file():
        return scratch
    hits = [p.parent for p in scratch.rglob(first)]
    return hits[0] if len(hits) == 1 else scratch


def _unpack(archive: Path, root: Path, kind: _Kind, donor: str, url: str, *,
            extract=_zip_extract, locate=_csv_folder, what: str = "a valid zip file") -> None:
    """Unpack ``archive`` into ``root/<prefix><donor>``, all or nothing.

    ``extract(archive, folder)`` unpacks; ``locate(folder, kind)`` finds the unpacked folder
    that holds ``kind.files``. An archive that cannot be unpacked, or lacks a file, is deleted
    (so that the next run downloads it afresh) and an AHBAArchiveError raised.
    """
    folder = root / f"{kind.prefix}{donor}"
    for stale in root.glob(f".{folder.name}.unpack-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # not mkdtemp: its folder is private (0700) and would stay so once moved into place
    scratch = root / f".{folder.name}.unpack-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    try:
        try:
            extract(archive, scratch)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            archive.unlink(missing_ok=True)
            raise _donor_error(
                AHBAArchiveError, kind, donor, root,
                f"the archive downloaded from {url} ({archive}) is not {what} ({exc}); "
                f"it has been deleted, so that the next run downloads it afresh") from None
        source = locate(scratch, kind)
        missing = [name for name in kind.files.values() if not (source / name).is_file()]
        if missing:
            archive.unlink(missing_ok=True)
            raise _donor_error(
                AHBAArchiveError, kind, donor, root,
                f"the archive downloaded from {url} ({archive}) lacks {', '.join(missing)}; "
                f"it has been deleted")
        os.replace(source, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    archive.unlink(missing_ok=True)


def _fetch_donor(kind: _Kind, donor: str, root: Path, resume: bool, verbose: int,
                 cancel: threading.Event) -> None:
    url = download_url(kind.zip_id(donor))
    archive = root / f"{kind.prefix}{donor}.zip"
    _fetched(kind, donor, root, url, archive, resume, verbose, cancel)
    _unpack(archive, root, kind, donor, url)
    _say(verbose, f"AHBA {kind.label} donor {donor} is in {root / (kind.prefix + donor)}")


def _fix_download(kind: _Kind) -> str:
    mirror = os.environ.get("AHBA_APP_MIRROR")
    where = f" (now {mirror})" if mirror else ""
    return (f"To fix this, check the network and run again (an interrupted download resumes), "
            f"or download the data on a machine with internet access (`python -m "
            f"ahba_app.fetch --data-dir DIR{kind.flag}`) and point "
            f"--ahba-dir (or $AHBA_DATA) at DIR, or set $AHBA_APP_MIRROR{where} to a server "
            f"that mirrors {_source(kind)}.")


def _source(kind: _Kind) -> str:
    if kind is _FREESURFER:
        return f"{CAMBRIDGE_URL}/{_FREESURFER_PATH.format(donor='<N>')}"
    return f"{ALLEN_URL}/{_DOWNLOAD_PATH.format(id='<id>')}"


# --------------------------------------------------------------------------------------------
# Fetching

def _writable_root(root: Path, base: Path, kind: _Kind, donors: list[str]) -> FileLock:
    """Create ``root`` and return its lock, or explain why it cannot be written to."""
    from filelock import FileLock  # (only a download needs it: not imported by every run)

    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise AHBADataDirError(
            f"AHBA {kind.label} files of donor(s) {', '.join(donors)} are missing from {base} "
            f"and cannot be downloaded there: {root} is not a writable folder "
            f"({exc.strerror or exc}). To fix this, point --ahba-dir (or $AHBA_DATA) at a "
            f"writable folder, or download the data elsewhere and copy the donor folders "
            f"into {root}.") from None
    return FileLock(str(root / _LOCK_NAME), mode=0o664)   # group members may share a folder


def _in_threads(job, items: list[str], workers: int) -> dict:
    """Run ``job(item, cancel)`` for each item on ``workers`` threads; the exceptions by item.

    The threads are daemons and the main thread only waits for them, so Ctrl-C reaches it at
    once; it then asks the jobs to stop (``cancel``), waits until they have (a job checks
    between two reads from the network), and raises.
    """
    todo = list(items)
    guard = threading.Lock()
    cancel = threading.Event()
    failures: dict = {}

    def work():
        while not cancel.is_set():
            with guard:
                if not todo:
                    return
                item = todo.pop(0)
            try:
                job(item, cancel)
            except BaseException as exc:   # handed to the main thread
                failures[item] = exc

    threads = [threading.Thread(target=work, name=f"ahba-fetch-{n}", daemon=True)
               for n in range(max(1, min(workers, len(todo))))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        cancel.set()
        for thread in threads:
            thread.join(READ_TIMEOUT + CONNECT_TIMEOUT)
        raise
    return failures


def _fetch(kind: _Kind, data_dir, donors, resume: bool, verbose: int, n_proc: int) -> dict:
    donors = _check(kind, donors)
    base = get_data_dir(data_dir)
    scan = _scan(base, kind, donors)
    if scan.incomplete:
        raise AHBADataNotFoundError(_missing_message(base, kind, scan))
    if not scan.absent:
        return {donor: scan.found[donor] for donor in donors}

    from filelock import Timeout

    root = _download_root(base, kind)
    lock = _writable_root(root, base, kind, scan.absent)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _say(verbose, f"Waiting for another process that is downloading into {root} "
                          f"(lock file {lock.lock_file})")
            lock.acquire()
    except OSError as exc:
        raise AHBADataDirError(
            f"Cannot lock {lock.lock_file} to download AHBA {kind.label} files into {root} "
            f"({exc.strerror or exc}). To fix this, make the lock file writable (or delete it), "
            f"or point --ahba-dir (or $AHBA_DATA) at another folder.") from None
    try:
        scan = _scan(base, kind, donors)    # the other process may have fetched them
        if scan.incomplete:
            raise AHBADataNotFoundError(_missing_message(base, kind, scan))
        if scan.absent:
            workers = n_proc if n_proc > 0 else (os.cpu_count() or 1) + n_proc + 1
            fetch_one = _FETCH_ONE.get(kind.name, _fetch_donor)
            failures = _in_threads(
                lambda donor, cancel: fetch_one(kind, donor, root, resume, verbose, cancel),
                scan.absent, workers)
            errors = [failures[d] for d in scan.absent if d in failures]
            if len(errors) == 1:
                raise errors[0]
            if errors:
                failed = [d for d in scan.absent if d in failures]
                lines = [getattr(e, "summary", f"  - {type(e).__name__}: {e}") for e in errors]
                raise AHBADownloadError(
                    f"AHBA {kind.label} files of donors {', '.join(failed)} are missing from "
                    f"{root}:\n" + "\n".join(lines) + "\n" + _fix_download(kind)) from errors[0]
            scan = _scan(base, kind, donors)
            if scan.absent or scan.incomplete:   # e.g. deleted under our feet
                raise AHBADataNotFoundError(_missing_message(base, kind, scan))
    finally:
        lock.release()
    return {donor: scan.found[donor] for donor in donors}


def fetch_microarray(data_dir: str | os.PathLike | None = None, donors=DEFAULTS["donors"],
                     resume: bool = True, verbose: int = 1, convert: bool = True, n_proc: int = 1) -> dict:
    """The AHBA microarray files of ``donors``, downloaded first when they are not on disk.

    Parameters
    ----------
    data_dir : path, optional
        Data folder (see :func:`get_data_dir` for the default and the module docstring for the
        folder layouts accepted).
    donors : 'all', str, int or list, optional
        Donor numbers and/or uids. Default: all six (abagen's default is donor 12876 alone).
    resume : bool, optional
        Continue an interrupted download from its ``.part`` file. Default: True.
    verbose : int, optional
        0 is silent; 1 reports downloads (with progress bars when stderr is a terminal).
    convert : bool, optional
        Accepted for abagen compatibility and ignored: :mod:`ahba_app.io` keeps its own cache.
    n_proc : int, optional
        Donors downloaded at once (threads); negative counts back from the number of CPUs.

    Returns
    -------
    dict
        ``{donor: {'microarray', 'ontology', 'pacall', 'probes', 'annotation'}}`` mapping to
        ``MicroarrayExpression.csv``, ``Ontology.csv``, ``PACall.csv``, ``Probes.csv`` and
        ``SampleAnnot.csv`` paths (str), donors in increasing number.

    Raises
    ------
    ValueError
        An unknown donor.
    AHBADataNotFoundError
        A donor folder exists but lacks a file (it is never overwritten).
    AHBADownloadError, AHBAArchiveError, AHBADataDirError
        A download or unpacking failed, or the data folder cannot be written; the message
        says what is missing, why, and how to fix it.
    """
    return _fetch(_MICROARRAY, data_dir, donors, resume, verbose, n_proc)


def fetch_rnaseq(data_dir: str | os.PathLike | None = None, donors=DEFAULTS["donors"],
                 resume: bool = True, verbose: int = 1) -> dict:
    """The AHBA RNA-seq files of ``donors`` (9861 and 10021 only), downloaded when missing.

    Returns ``{donor: {'counts', 'tpm', 'ontology', 'genes', 'annotation'}}`` mapping to
    ``RNAseqCounts.csv``, ``RNAseqTPM.csv``, ``Ontology.csv``, ``Genes.csv`` and
    ``SampleAnnot.csv`` paths. A donor without RNA-seq data is a ValueError (abagen silently
    dropped it). Otherwise as :func:`fetch_microarray`.
    """
    return _fetch(_RNASEQ, data_dir, donors, resume, verbose, 1)


# --------------------------------------------------------------------------------------------
# The donors' raw MRIs and FreeSurfer reconstructions

def _mirrored(url: str, home: str) -> str:
    """``url`` (below ``home``) moved below ``$AHBA_APP_MIRROR`` when that is set."""
    server = os.environ.get("AHBA_APP_MIRROR")
    return url if not server else server.rstrip("/") + url[len(home):]


def freesurfer_url(donor: str) -> str:
    """Address of a donor's FreeSurfer archive, on ``$AHBA_APP_MIRROR`` when that is set."""
    return _mirrored(f"{CAMBRIDGE_URL}/{_FREESURFER_PATH.format(donor=donor)}", CAMBRIDGE_URL)


def _fetched(kind: _Kind, donor: str, root: Path, url: str, archive: Path, resume: bool,
             verbose: int, cancel: threading.Event, what: str | None = None) -> None:
    """Download ``url`` to ``archive`` (resumable, size-checked) unless it is already there;
    ``what`` names the file in messages (default: the donor's archive of ``kind``)."""
    if not resume:
        archive.unlink(missing_ok=True)
        archive.with_name(archive.name + ".part").unlink(missing_ok=True)
    if not archive.exists():
        _say(verbose, f"Downloading AHBA {kind.label} donor {donor} from {url}" if what is None
             else f"Downloading the {what} of AHBA donor {donor} from {url}")
        desc = f"donor {donor}" if what is None else f"donor {donor} {what}"
        try:
            _download(url, archive, desc=desc, verbose=verbose, cancel=cancel)
        except AHBADownloadError as exc:
            raise _donor_error(AHBADownloadError, kind, donor, root,
                               f"the download from {url} failed: {exc}") from None
    if cancel.is_set():
        raise _Cancelled


def _check_nifti(path: Path, kind: _Kind, donor: str, root: Path, url: str) -> None:
    """A gzipped NIfTI whose header nibabel reads, else the file is deleted and an error raised."""
    import nibabel as nib

    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                raise ValueError("not gzip-compressed")
        nib.Nifti1Image.from_filename(str(path)).header.get_data_shape()
    except Exception as exc:  # nibabel raises many kinds for a bad file
        path.unlink(missing_ok=True)
        raise _donor_error(AHBAArchiveError, kind, donor, root,
                           f"the file downloaded from {url} is not a gzipped NIfTI image "
                           f"({type(exc).__name__}: {exc}); it has been deleted, so that the "
                           f"next run downloads it afresh") from None


def _fetch_mri(kind: _Kind, donor: str, root: Path, resume: bool, verbose: int,
               cancel: threading.Event) -> None:
    """Both raw MRIs of ``donor`` into ``root/mri_donor<N>/``, all or nothing."""
    info = DONORS[donor]
    folder = root / f"{kind.prefix}{donor}"
    downloads = {}
    for key, ident in (("t1w", info.t1w_id), ("t2w", info.t2w_id)):
        url = download_url(ident)
        target = root / f"{folder.name}.{MRI_FILES[key]}"
        _fetched(kind, donor, root, url, target, resume, verbose, cancel, key.upper())
        _check_nifti(target, kind, donor, root, url)
        downloads[key] = target
    _into_place(folder, {MRI_FILES[key]: path for key, path in downloads.items()})
    _say(verbose, f"Raw MRIs of AHBA donor {donor} are in {folder}")


def _into_place(folder: Path, files: dict) -> None:
    """Move ``files`` ({name in folder: path}) into a new ``folder`` at once."""
    scratch = folder.parent / f".{folder.name}.unpack-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    try:
        for name, path in files.items():
            os.replace(path, scratch / name)
        os.replace(scratch, folder)
    except BaseException:
        for name, path in files.items():   # keep the downloads for the next run
            if (scratch / name).exists():
                os.replace(scratch / name, path)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _extract(archive: Path, target: Path) -> None:
    """Unpack a zip or a (gzipped) tar archive into ``target``, refusing paths that leave it."""
    import tarfile

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target)
        return
    try:
        with tarfile.open(archive, "r:*") as handle:
            handle.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        raise zipfile.BadZipFile("its format is not recognised") from None


def _reconstruction(scratch: Path, kind: _Kind) -> Path:
    """The unpacked FreeSurfer folder: the one holding ``mri/orig.mgz``, else the archive's
    only top-level folder."""
    hits = [p.parent.parent for p in scratch.rglob("orig.mgz") if p.parent.name == "mri"]
    tops = [p for p in scratch.iterdir() if p.is_dir()]
    return hits[0] if len(hits) == 1 else (tops[0] if len(tops) == 1 else scratch)


def _fetch_freesurfer_donor(kind: _Kind, donor: str, root: Path, resume: bool, verbose: int,
                            cancel: threading.Event) -> None:
    """The FreeSurfer folder of ``donor`` into ``root/donor<N>/``, all or nothing."""
    folder = root / f"{kind.prefix}{donor}"
    url = freesurfer_url(donor)
    archive = root / f"{folder.name}.freesurfer-archive"
    _fetched(kind, donor, root, url, archive, resume, verbose, cancel, "FreeSurfer archive")
    _unpack(archive, root, kind, donor, url, extract=_extract, locate=_reconstruction,
            what="a zip or tar archive")
    _say(verbose, f"FreeSurfer reconstruction of AHBA donor {donor} is in {folder}")


_FETCH_ONE = {_MRI.name: _fetch_mri, _FREESURFER.name: _fetch_freesurfer_donor}


def fetch_raw_mri(data_dir: str | os.PathLike | None = None, donors=None, resume: bool = True,
                  verbose: int = 1, n_proc: int = 1) -> dict:
    """The raw T1w and T2w MRIs of ``donors``, downloaded first when they are not on disk.

    They lie in ``<data folder>/mri/mri_donor<N>/T1.nii.gz`` and ``T2.nii.gz`` (abagen's
    layout), downloaded from the Allen Institute (or ``$AHBA_APP_MIRROR``) with the guarantees
    of :func:`fetch_microarray`. ``donors`` defaults to donor 12876, as in abagen.

    Returns ``{donor: {'t1w': path, 't2w': path}}`` (str), donors in increasing number.
    """
    return _fetch(_MRI, data_dir, "12876" if donors is None else donors, resume, verbose,
                  n_proc)


def fetch_freesurfer(data_dir: str | os.PathLike | None = None, donors=None, resume: bool = True,
                     verbose: int = 1, n_proc: int = 1) -> dict:
    """The FreeSurfer reconstructions of ``donors``, downloaded first when not on disk.

    Each is the folder ``<data folder>/freesurfer/donor<N>/`` (``mri/``, ``surf/``, ...: abagen's
    layout), unpacked from the University of Cambridge repository's archive (handle 1810/265272,
    or ``$AHBA_APP_MIRROR`` with the same path) with the guarantees of
    :func:`fetch_microarray`. ``donors`` defaults to donor 12876, as in abagen.

    Returns ``{donor: folder}`` (str), donors in increasing number.
    """
    found = _fetch(_FREESURFER, data_dir, "12876" if donors is None else donors, resume,
                   verbose, n_proc)
    return {donor: os.path.dirname(os.path.dirname(files["orig"]))
            for donor, files in found.items()}


_SURFACES = ("orig", "white", "pial", "inflated", "sphere")


def fetch_fsnative(donors, surf: str = "pial", load: bool = True,
                   data_dir: str | os.PathLike | None = None, resume: bool = True,
                   verbose: int = 1):
    """One FreeSurfer surface (``surf``) of each donor's two hemispheres.

    Returns ``Hemispheres(lh, rh)`` for one donor, ``{donor: Hemispheres}`` for several; each
    hemisphere is a ``Surface(vertices, faces)`` with ``load=True``, else the file's path.
    The FreeSurfer folders are fetched with :func:`fetch_freesurfer` when missing.
    ``donors=None`` is donor 12876, as in abagen (and as :func:`fetch_freesurfer`).
    """
    import nibabel as nib

    from .geometry import Hemispheres, Surface

    if surf not in _SURFACES:
        raise ValueError(f"Unknown FreeSurfer surface {surf!r}: choose one of {_SURFACES}.")
    wanted = check_donors("12876" if donors is None else donors)
    folders = fetch_freesurfer(data_dir=data_dir, donors=wanted, resume=resume, verbose=verbose)
    out = {}
    for donor, folder in folders.items():
        paths = [os.path.join(folder, "surf", f"{hemi}.{surf}") for hemi in ("lh", "rh")]
        for path in paths:
            if not os.path.isfile(path):
                raise AHBADataNotFoundError(
                    f"{path} is missing: the FreeSurfer folder of donor {donor} has no {surf} "
                    f"surface. To fix this, delete {folder} so that fetch_freesurfer downloads "
                    f"it again, or choose another surf= of {_SURFACES}.")
        if load:
            paths = [Surface(*nib.freesurfer.read_geometry(path)) for path in paths]
        out[donor] = Hemispheres(*paths)
    return out[wanted[0]] if len(wanted) == 1 else out


# --------------------------------------------------------------------------------------------
# python -m ahba_app.fetch

def main(argv: list[str] | None = None) -> int:
    """Download AHBA data from the command line: ``python -m ahba_app.fetch --data-dir DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m ahba_app.fetch",
        description="Download the Allen Human Brain Atlas donor files that are not yet in the "
                    "data folder (set AHBA_APP_MIRROR to use a mirror).")
    parser.add_argument("--data-dir", help="data folder (default: $AHBA_DATA, $ABAGEN_DATA, "
                                           f"else {get_data_dir(None)})")
    parser.add_argument("--donors", nargs="+", default=["all"],
                        help="donor numbers or uids (default: all)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--rnaseq", action="store_true", help="the RNA-seq data instead")
    what.add_argument("--mri", action="store_true",
                      help="the donors' raw T1w/T2w MRIs instead (for donor-native volumes)")
    what.add_argument("--freesurfer", action="store_true",
                      help="the donors' FreeSurfer reconstructions instead (for donor-native "
                           "surfaces)")
    parser.add_argument("--n-proc", type=int, default=1, help="donors downloaded at once")
    parser.add_argument("--no-resume", action="store_true",
                        help="discard partial downloads instead of resuming them")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    verbose = 0 if args.quiet else 1
    try:
        if args.rnaseq:
            files = fetch_rnaseq(args.data_dir, args.donors, not args.no_resume, verbose)
        elif args.mri or args.freesurfer:
            fetcher = fetch_raw_mri if args.mri else fetch_freesurfer
            files = fetcher(args.data_dir, args.donors, not args.no_resume, verbose,
                            n_proc=args.n_proc)
        else:
            files = fetch_microarray(args.data_dir, args.donors, not args.no_resume, verbose,
                                     n_proc=args.n_proc)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: partial downloads are kept as .part files and resume next time",
              file=sys.stderr)
        return 130
    for donor, paths in files.items():   # a FreeSurfer donor's value is its folder
        print(donor, paths if isinstance(paths, str) else
              os.path.dirname(next(iter(paths.values()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
