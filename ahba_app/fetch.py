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

import requests
import urllib3
from filelock import FileLock, Timeout

from ._version import __version__
from .datasets import DONORS, RNASEQ_DONORS, check_donors

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
    "fetch_microarray",
    "fetch_rnaseq",
    "find_microarray",
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

    def zip_id(self, donor: str) -> int:
        info = DONORS[donor]
        return info.microarray_zip_id if self.name == "microarray" else info.rnaseq_zip_id


_MICROARRAY = _Kind("microarray", "microarray", "normalized_microarray_donor", MICROARRAY_FILES,
                    tuple(DONORS), "fetch_microarray")
_RNASEQ = _Kind("rnaseq", "RNA-seq", "rnaseq_donor", RNASEQ_FILES, RNASEQ_DONORS, "fetch_rnaseq")
_KIND_NAMES = (_MICROARRAY.name, _RNASEQ.name)


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
        f"{' --rnaseq' if kind is _RNASEQ else ''} or the ahba-app command line with "
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


def find_microarray(data_dir: str | os.PathLike | None = None, donors="all") -> dict:
    """Paths of the microarray files of ``donors`` already on disk; never downloads.

    Returns ``{donor: {'microarray', 'ontology', 'pacall', 'probes', 'annotation'}}`` (paths as
    str, donors in increasing number), like :func:`fetch_microarray`. Raises
    :class:`AHBADataNotFoundError` (a FileNotFoundError) naming every missing donor folder or
    file and how to get them.
    """
    return _find(_MICROARRAY, data_dir, donors)


def find_rnaseq(data_dir: str | os.PathLike | None = None, donors="all") -> dict:
    """Paths of the RNA-seq files of ``donors`` already on disk; never downloads.

    Returns ``{donor: {'counts', 'tpm', 'ontology', 'genes', 'annotation'}}`` like
    :func:`fetch_rnaseq`, or raises :class:`AHBADataNotFoundError`.
    """
    return _find(_RNASEQ, data_dir, donors)


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


def _unpack(archive: Path, root: Path, kind: _Kind, donor: str, url: str) -> None:
    """Unzip ``archive`` into ``root/<prefix><donor>``, all or nothing."""
    folder = root / f"{kind.prefix}{donor}"
    for stale in root.glob(f".{folder.name}.unpack-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # not mkdtemp: its folder is private (0700) and would stay so once moved into place
    scratch = root / f".{folder.name}.unpack-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    try:
        try:
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(scratch)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            archive.unlink(missing_ok=True)
            raise _donor_error(
                AHBAArchiveError, kind, donor, root,
                f"the archive downloaded from {url} ({archive}) is not a valid zip file ({exc}); "
                f"it has been deleted, so that the next run downloads it afresh") from None
        first = next(iter(kind.files.values()))
        source = scratch
        if not (scratch / first).is_file():
            hits = [p.parent for p in scratch.rglob(first)]
            if len(hits) == 1:
                source = hits[0]
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
    if not resume:
        archive.unlink(missing_ok=True)
        archive.with_name(archive.name + ".part").unlink(missing_ok=True)
    if not archive.exists():
        _say(verbose, f"Downloading AHBA {kind.label} donor {donor} from {url}")
        try:
            _download(url, archive, desc=f"donor {donor}", verbose=verbose, cancel=cancel)
        except AHBADownloadError as exc:
            raise _donor_error(AHBADownloadError, kind, donor, root,
                               f"the download from {url} failed: {exc}") from None
    if cancel.is_set():
        raise _Cancelled
    _unpack(archive, root, kind, donor, url)
    _say(verbose, f"AHBA {kind.label} donor {donor} is in {root / (kind.prefix + donor)}")


def _fix_download(kind: _Kind) -> str:
    mirror = os.environ.get("AHBA_APP_MIRROR")
    where = f" (now {mirror})" if mirror else ""
    return (f"To fix this, check the network and run again (an interrupted download resumes), "
            f"or download the data on a machine with internet access (`python -m "
            f"ahba_app.fetch --data-dir DIR{' --rnaseq' if kind is _RNASEQ else ''}`) and point "
            f"--ahba-dir (or $AHBA_DATA) at DIR, or set $AHBA_APP_MIRROR{where} to a server "
            f"that mirrors {ALLEN_URL}/{_DOWNLOAD_PATH.format(id='<id>')}.")


# --------------------------------------------------------------------------------------------
# Fetching

def _writable_root(root: Path, base: Path, kind: _Kind, donors: list[str]) -> FileLock:
    """Create ``root`` and return its lock, or explain why it cannot be written to."""
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
            failures = _in_threads(
                lambda donor, cancel: _fetch_donor(kind, donor, root, resume, verbose, cancel),
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


def fetch_microarray(data_dir: str | os.PathLike | None = None, donors="all", resume: bool = True,
                     verbose: int = 1, convert: bool = True, n_proc: int = 1) -> dict:
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


def fetch_rnaseq(data_dir: str | os.PathLike | None = None, donors="all", resume: bool = True,
                 verbose: int = 1) -> dict:
    """The AHBA RNA-seq files of ``donors`` (9861 and 10021 only), downloaded when missing.

    Returns ``{donor: {'counts', 'tpm', 'ontology', 'genes', 'annotation'}}`` mapping to
    ``RNAseqCounts.csv``, ``RNAseqTPM.csv``, ``Ontology.csv``, ``Genes.csv`` and
    ``SampleAnnot.csv`` paths. A donor without RNA-seq data is a ValueError (abagen silently
    dropped it). Otherwise as :func:`fetch_microarray`.
    """
    return _fetch(_RNASEQ, data_dir, donors, resume, verbose, 1)


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
    parser.add_argument("--rnaseq", action="store_true", help="the RNA-seq data instead")
    parser.add_argument("--n-proc", type=int, default=1, help="donors downloaded at once")
    parser.add_argument("--no-resume", action="store_true",
                        help="discard partial downloads instead of resuming them")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    verbose = 0 if args.quiet else 1
    try:
        if args.rnaseq:
            files = fetch_rnaseq(args.data_dir, args.donors, not args.no_resume, verbose)
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
    for donor, paths in files.items():
        print(donor, os.path.dirname(next(iter(paths.values()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
