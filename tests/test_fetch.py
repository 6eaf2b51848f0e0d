"""Finding AHBA folders and downloading them, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ahba_app import fetch
from ahba_app.datasets import DONORS, RNASEQ_DONORS

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Archives like the Allen Institute's, made here

def donor_files(donor: str, kind: str = "microarray", big: bool = False) -> dict[str, bytes]:
    """Tiny CSVs with the right names; their text names the donor so mix-ups show."""
    names = fetch.MICROARRAY_FILES if kind == "microarray" else fetch.RNASEQ_FILES
    files = {name: f"{kind},{donor},{name}\n1,2,3\n".encode() for name in names.values()}
    if big:   # a few hundred kB that do not compress, so a download takes many reads
        rng = random.Random(int(donor))
        rows = "".join(f"{i},{rng.random():.6f},{rng.random():.6f}\n" for i in range(12_000))
        files["MicroarrayExpression.csv"] = rows.encode()
    return files


def make_zip(files: dict[str, bytes], subfolder: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(subfolder + name, data)
    return buffer.getvalue()


def zip_path(donor: str, kind: str = "microarray") -> str:
    info = DONORS[donor]
    zip_id = info.microarray_zip_id if kind == "microarray" else info.rnaseq_zip_id
    return f"api/v2/well_known_file_download/{zip_id}"


def publish(root: Path, donor: str, data: bytes, kind: str = "microarray") -> Path:
    """Put ``data`` where a mirror rooted at ``root`` serves donor ``donor``'s archive."""
    target = root / zip_path(donor, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


# --------------------------------------------------------------------------------------------
# The server

class _State:
    """What the test server does (set by the tests) and what it saw."""

    def __init__(self, root: Path):
        self.root = root
        self.cuts = 0             # this many responses end early ...
        self.cut_at = 50_000      # ... after this many body bytes, with the full Content-Length
        self.ignore_range = False
        self.delay = 0.0          # seconds before a body is sent
        self.hold = None          # an Event the body waits for (at most 30 s)
        self.stalls = 0           # this many responses stop for `stall` s after `cut_at` bytes
        self.stall = 0.0
        self.trickle = 0.0        # seconds between 4 kB pieces of a body (0: all at once)
        self.hits: list[tuple[str, str | None, int]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.url = ""

    def gets(self, donor: str, kind: str = "microarray") -> list[tuple[str | None, int]]:
        path = "/" + zip_path(donor, kind)
        return [(rng, status) for p, rng, status in self.hits if p == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):   # keep pytest output clean
        pass

    def _send(self, status, headers, body=b""):
        state = self.server.state
        with state.lock:
            state.hits.append((self.path, self.headers.get("Range"), status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        return body

    def do_GET(self):
        state = self.server.state
        file = state.root / self.path.lstrip("/")
        if not file.is_file():
            self._send(404, {"Content-Length": "0"})
            return
        data = file.read_bytes()
        asked = self.headers.get("Range")
        if asked and not state.ignore_range:
            start = int(asked.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                return
            body = self._send(206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                    "Content-Length": str(len(data) - start)}, data[start:])
        else:
            body = self._send(200, {"Content-Length": str(len(data))}, data)
        with state.lock:
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            cut = state.cuts > 0
            if cut:
                state.cuts -= 1
            stall = state.stalls > 0
            if stall:
                state.stalls -= 1
        try:
            time.sleep(state.delay)
            if state.hold is not None:
                state.hold.wait(30)
            if stall:
                self.wfile.write(body[:state.cut_at])
                self.wfile.flush()
                time.sleep(state.stall)
                body = body[state.cut_at:]
            body = body[:state.cut_at] if cut else body
            step = 4096 if state.trickle else len(body) or 1
            for start in range(0, len(body), step):
                self.wfile.write(body[start:start + step])
                self.wfile.flush()
                time.sleep(state.trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the client gave up on a stalled response
        finally:
            with state.lock:
                state.active -= 1
        # HTTP/1.0: the connection closes now, so a cut body reaches the client short


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A mirror on 127.0.0.1 serving ``state.root``; AHBA_APP_MIRROR points at it."""
    state = _State(tmp_path / "mirror")
    state.root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("AHBA_APP_MIRROR", state.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_donor(files: dict, donor: str, kind: str = "microarray", big: bool = False) -> None:
    expected = donor_files(donor, kind, big)
    names = fetch.MICROARRAY_FILES if kind == "microarray" else fetch.RNASEQ_FILES
    assert set(files[donor]) == set(names)
    for key, name in names.items():
        path = Path(files[donor][key])
        assert path.name == name
        assert path.read_bytes() == expected[name]


def leftovers(folder: Path) -> list[str]:
    """Files a finished fetch should not leave behind (archives, parts, scratch folders)."""
    return sorted(p.name for p in folder.rglob("*")
                  if p.name.endswith((".zip", ".part")) or ".unpack-" in p.name)


def write_donor(folder: Path, donor: str, kind: str = "microarray") -> None:
    prefix = "normalized_microarray_donor" if kind == "microarray" else "rnaseq_donor"
    target = folder / f"{prefix}{donor}"
    target.mkdir(parents=True)
    for name, data in donor_files(donor, kind).items():
        (target / name).write_bytes(data)


# --------------------------------------------------------------------------------------------
# Downloads

@pytest.mark.network
def test_two_donors_in_parallel(server, tmp_path):
    for donor in ("9861", "10021"):
        publish(server.root, donor, make_zip(donor_files(donor)))
    server.delay = 0.3
    data = tmp_path / "data"
    files = fetch.fetch_microarray(data, donors=["10021", "H0351.2001"], verbose=0, n_proc=2)
    assert list(files) == ["9861", "10021"]           # abagen's order: increasing number
    for donor in files:
        assert_donor(files, donor)
        assert Path(files[donor]["probes"]).parent == \
            data / "microarray" / f"normalized_microarray_donor{donor}"
    assert server.max_active == 2
    umask = os.umask(0o022)
    os.umask(umask)
    folder = Path(files["9861"]["probes"]).parent
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask   # not mkdtemp's private 0700
    assert leftovers(data) == []
    # everything is on disk now: a second call must not touch the network
    hits = len(server.hits)
    assert fetch.fetch_microarray(data, donors=["9861", "10021"], verbose=0) == files
    assert len(server.hits) == hits


@pytest.mark.network
def test_rnaseq_download(server, tmp_path, monkeypatch, capsys):
    for donor in RNASEQ_DONORS:
        publish(server.root, donor, make_zip(donor_files(donor, "rnaseq")), "rnaseq")
    monkeypatch.setattr(fetch, "_show_bars", lambda verbose: True)   # as on a terminal
    files = fetch.fetch_rnaseq(tmp_path, verbose=1)
    assert "donor 9861" in capsys.readouterr().err
    assert list(files) == ["9861", "10021"]
    for donor in files:
        assert_donor(files, donor, "rnaseq")
    assert Path(files["9861"]["counts"]).parent == tmp_path / "rnaseq" / "rnaseq_donor9861"
    assert fetch.find_rnaseq(tmp_path) == files


@pytest.mark.network
def test_members_in_a_subfolder(server, tmp_path):
    publish(server.root, "12876", make_zip(donor_files("12876"), subfolder="inner/"))
    files = fetch.fetch_microarray(tmp_path, donors=12876, verbose=0)
    assert_donor(files, "12876")


@pytest.mark.network
def test_cut_connection_is_resumed(server, tmp_path, capsys):
    archive = make_zip(donor_files("9861", big=True))
    assert len(archive) > 4 * server.cut_at
    publish(server.root, "9861", archive)
    server.cuts = 2
    files = fetch.fetch_microarray(tmp_path, donors="9861", verbose=1)
    assert_donor(files, "9861", big=True)
    assert server.gets("9861") == [(None, 200), (f"bytes={server.cut_at}-", 206),
                                   (f"bytes={2 * server.cut_at}-", 206)]
    assert leftovers(tmp_path) == []
    err = capsys.readouterr().err
    assert "trying again" in err and "Downloading AHBA microarray donor 9861" in err


@pytest.mark.network
def test_retries_exhausted_keep_the_part(server, tmp_path, monkeypatch):
    archive = make_zip(donor_files("9861", big=True))
    publish(server.root, "9861", archive)
    monkeypatch.setattr(fetch, "RETRIES", 2)
    server.cuts = 100
    with pytest.raises(fetch.AHBADownloadError) as caught:
        fetch.fetch_microarray(tmp_path, donors="9861", verbose=0)
    message = str(caught.value)
    part = tmp_path / "microarray" / "normalized_microarray_donor9861.zip.part"
    assert "donor 9861" in message and server.url in message and str(part) in message
    assert f"after {3 * server.cut_at:,} of {len(archive):,} bytes" in message
    assert part.stat().st_size == 3 * server.cut_at          # refused, but kept for resuming
    assert not (tmp_path / "microarray" / "normalized_microarray_donor9861").exists()
    with pytest.raises(fetch.AHBADataNotFoundError):
        fetch.find_microarray(tmp_path, donors="9861")
    # the next run resumes where the last one stopped
    server.cuts = 0
    files = fetch.fetch_microarray(tmp_path, donors="9861", verbose=0)
    assert_donor(files, "9861", big=True)
    assert server.gets("9861")[-1] == (f"bytes={3 * server.cut_at}-", 206)
    assert leftovers(tmp_path) == []


@pytest.mark.network
def test_server_ignoring_range(server, tmp_path):
    archive = make_zip(donor_files("9861", big=True))
    publish(server.root, "9861", archive)
    server.ignore_range = True
    server.cuts = 1
    files = fetch.fetch_microarray(tmp_path, donors="9861", verbose=0)
    assert_donor(files, "9861", big=True)
    assert server.gets("9861") == [(None, 200), (f"bytes={server.cut_at}-", 200)]


@pytest.mark.network
def test_stale_part_larger_than_file_and_complete_part(server, tmp_path):
    archive = make_zip(donor_files("9861"))
    publish(server.root, "9861", archive)
    publish(server.root, "10021", make_zip(donor_files("10021")))
    root = tmp_path / "microarray"
    root.mkdir()
    # a part that is already the whole file: the server answers 416 and it is accepted
    (root / "normalized_microarray_donor9861.zip.part").write_bytes(archive)
    # a part longer than the file (the file changed on the server): started afresh
    (root / "normalized_microarray_donor10021.zip.part").write_bytes(b"x" * 10 ** 6)
    files = fetch.fetch_microarray(tmp_path, donors=["9861", "10021"], verbose=0)
    assert_donor(files, "9861")
    assert_donor(files, "10021")
    assert server.gets("9861") == [(f"bytes={len(archive)}-", 416)]
    assert server.gets("10021") == [("bytes=1000000-", 416), (None, 200)]
    assert leftovers(tmp_path) == []


@pytest.mark.network
def test_not_found_is_a_clear_error(server, tmp_path):
    with pytest.raises(fetch.AHBADownloadError) as caught:
        fetch.fetch_microarray(tmp_path, donors="15697", verbose=0)
    message = str(caught.value)
    assert "HTTP 404" in message and "donor 15697" in message
    assert f"{server.url}/{zip_path('15697')}" in message
    assert len(server.gets("15697")) == 1                    # a 404 is not retried
    assert not (tmp_path / "microarray" / "normalized_microarray_donor15697").exists()


@pytest.mark.network
def test_corrupt_zip(server, tmp_path):
    good = make_zip(donor_files("14380"))
    publish(server.root, "14380", good[: len(good) // 2] + b"\0" * 100)
    with pytest.raises(fetch.AHBAArchiveError) as caught:
        fetch.fetch_microarray(tmp_path, donors="14380", verbose=0)
    message = str(caught.value)
    archive = tmp_path / "microarray" / "normalized_microarray_donor14380.zip"
    assert "donor 14380" in message and str(archive) in message and "not a valid zip" in message
    assert not (tmp_path / "microarray" / "normalized_microarray_donor14380").exists()
    assert leftovers(tmp_path) == []                         # the bad zip is gone too
    # fixed on the server: the next run downloads it again
    publish(server.root, "14380", good)
    assert_donor(fetch.fetch_microarray(tmp_path, donors="14380", verbose=0), "14380")
    assert len(server.gets("14380")) == 2


@pytest.mark.network
def test_archive_lacking_a_file(server, tmp_path):
    files = donor_files("15496")
    del files["PACall.csv"]
    publish(server.root, "15496", make_zip(files))
    with pytest.raises(fetch.AHBAArchiveError, match="lacks PACall.csv"):
        fetch.fetch_microarray(tmp_path, donors="15496", verbose=0)
    assert not (tmp_path / "microarray" / "normalized_microarray_donor15496").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.network
def test_two_processes_share_one_download(server, tmp_path):
    publish(server.root, "9861", make_zip(donor_files("9861", big=True)))
    server.hold = threading.Event()
    code = ("import json, sys; from ahba_app.fetch import fetch_microarray; "
            "print(json.dumps(fetch_microarray(sys.argv[1], donors='9861', verbose=1)))")
    env = dict(os.environ, AHBA_APP_MIRROR=server.url, NO_PROXY="127.0.0.1")

    def start():
        return subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 30
    while not server.gets("9861") and time.monotonic() < deadline:   # first is downloading
        time.sleep(0.05)
    assert server.gets("9861"), first.communicate()[1]
    second = start()
    waiting = second.stderr.readline()      # second reached the lock that first holds
    server.hold.set()
    outputs = [run.communicate(timeout=60) for run in (first, second)]
    assert "Waiting for another process" in waiting
    for run, (out, err) in zip((first, second), outputs):
        assert run.returncode == 0, err
    files = [json.loads(out) for out, _ in outputs]
    assert files[0] == files[1]
    assert_donor(files[0], "9861", big=True)
    assert len(server.gets("9861")) == 1


@pytest.mark.network
def test_stalled_server_times_out_and_resumes(server, tmp_path, monkeypatch):
    publish(server.root, "9861", make_zip(donor_files("9861", big=True)))
    monkeypatch.setattr(fetch, "READ_TIMEOUT", 0.3)
    server.stalls, server.stall = 1, 2.0
    files = fetch.fetch_microarray(tmp_path, donors="9861", verbose=0)
    assert_donor(files, "9861", big=True)
    assert server.gets("9861") == [(None, 200), (f"bytes={server.cut_at}-", 206)]


@pytest.mark.network
def test_interrupt_keeps_the_part(server, tmp_path):
    archive = make_zip(donor_files("9861", big=True))
    publish(server.root, "9861", archive)
    # about 14 s for the whole archive (277 kB in 4 kB pieces), so that a download the signal
    # did not stop shows as one (at 0.02 s it ended in 1.4 s and the test saw only exit 0)
    server.trickle = 0.2
    # Ctrl-C in a terminal: Python's KeyboardInterrupt. The child must not inherit an ignored
    # SIGINT: a test run started as a background job of a non-interactive shell (`cmd &`) has
    # SIGINT ignored, and so would every process it starts (a Python started so raises nothing)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ahba_app.fetch import fetch_microarray; "
            "fetch_microarray(sys.argv[1], donors='9861')")
    env = dict(os.environ, AHBA_APP_MIRROR=server.url, NO_PROXY="127.0.0.1")
    run = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / "microarray" / "normalized_microarray_donor9861.zip.part"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 0):
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = run.communicate(timeout=30)
    assert time.monotonic() - start < 5, err     # not the 14 s the download would take
    assert run.returncode != 0 and "KeyboardInterrupt" in err
    kept = part.stat().st_size
    assert 0 < kept < len(archive)
    assert not (tmp_path / "microarray" / "normalized_microarray_donor9861").exists()
    server.trickle = 0
    assert_donor(fetch.fetch_microarray(tmp_path, donors="9861", verbose=0), "9861", big=True)
    assert server.gets("9861")[-1] == (f"bytes={kept}-", 206)


@pytest.mark.network
def test_no_network_fails_fast(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("AHBA_APP_MIRROR", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(fetch, "BACKOFF", 10.0)    # a retry would show as a slow test
    start = time.monotonic()
    with pytest.raises(fetch.AHBADownloadError) as caught:
        fetch.fetch_microarray(tmp_path / "data", donors=["9861", "12876"], verbose=0, n_proc=2)
    assert time.monotonic() - start < 5            # a hang guard, not a speed test
    message = str(caught.value)
    assert str(tmp_path / "data") in message and url in message
    assert "could not be reached" in message
    assert "AHBA_DATA" in message and "--ahba-dir" in message and "AHBA_APP_MIRROR" in message
    assert "donor 9861" in message and "donor 12876" in message
    assert leftovers(tmp_path) == []


def test_command_line(server, tmp_path, capsys, monkeypatch):
    publish(server.root, "9861", make_zip(donor_files("9861")))
    assert fetch.main(["--data-dir", str(tmp_path), "--donors", "9861", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.split() == ["9861", str(tmp_path / "microarray" / "normalized_microarray_donor9861")]
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())
    assert fetch.main(["--data-dir", str(tmp_path), "--donors", "10021", "-q"]) == 1
    assert "could not be reached" in capsys.readouterr().err


@pytest.mark.network
def test_download_beside_existing_donors(server, tmp_path):
    write_donor(tmp_path, "9861")                     # the flat layout is in use
    publish(server.root, "10021", make_zip(donor_files("10021")))
    files = fetch.fetch_microarray(tmp_path, donors=["9861", "10021"], verbose=0)
    assert Path(files["10021"]["pacall"]).parent == tmp_path / "normalized_microarray_donor10021"
    assert_donor(files, "10021")
    assert len(server.hits) == 1


@pytest.mark.network
def test_rnaseq_beside_a_microarray_folder(server, tmp_path):
    write_donor(tmp_path / "microarray", "9861")
    publish(server.root, "9861", make_zip(donor_files("9861", "rnaseq")), "rnaseq")
    files = fetch.fetch_rnaseq(tmp_path / "microarray", donors="9861", verbose=0)
    assert Path(files["9861"]["tpm"]).parent == tmp_path / "rnaseq" / "rnaseq_donor9861"
    assert fetch.find_rnaseq(tmp_path, donors="9861") == files
    assert fetch.find_microarray(tmp_path / "microarray", donors="9861")


# --------------------------------------------------------------------------------------------
# The data folder

def test_data_folder_under_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(fetch.AHBADataDirError) as caught:
        fetch.fetch_microarray(blocker / "data", donors="9861", verbose=0)
    message = str(caught.value)
    assert str(blocker / "data") in message and "not a writable folder" in message
    assert "AHBA_DATA" in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod; test_data_folder_under_a_file covers it")
def test_read_only_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())
    data = tmp_path / "data"
    (data / "microarray").mkdir(parents=True)
    write_donor(data / "microarray", "9861")
    os.chmod(data / "microarray", 0o555)
    try:
        # what is there can be read ...
        assert list(fetch.fetch_microarray(data, donors="9861", verbose=0)) == ["9861"]
        # ... what is not cannot be downloaded
        with pytest.raises(fetch.AHBADataDirError, match="not a writable folder"):
            fetch.fetch_microarray(data, donors="10021", verbose=0)
    finally:
        os.chmod(data / "microarray", 0o755)


def test_default_data_folder(tmp_path, monkeypatch):
    home = Path(os.environ["HOME"])
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert fetch.get_data_dir() == home / ".local" / "share" / "ahba-app"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert fetch.get_data_dir() == tmp_path / "xdg" / "ahba-app"
    monkeypatch.setenv("ABAGEN_DATA", str(tmp_path / "abagen"))
    assert fetch.get_data_dir() == tmp_path / "abagen"
    monkeypatch.setenv("AHBA_DATA", str(tmp_path / "ahba"))
    assert fetch.get_data_dir() == tmp_path / "ahba"
    assert fetch.get_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert fetch.get_data_dir("~/x") == home / "x"


def test_mirror_url(monkeypatch):
    assert fetch.download_url(178238387) == \
        "https://human.brain-map.org/api/v2/well_known_file_download/178238387"
    monkeypatch.setenv("AHBA_APP_MIRROR", "http://example.org/ahba/")
    assert fetch.download_url(5) == "http://example.org/ahba/api/v2/well_known_file_download/5"


# --------------------------------------------------------------------------------------------
# Finding data on disk

@pytest.mark.parametrize("layout", ["nested", "flat", "named"])
def test_find_layouts(tmp_path, layout, monkeypatch):
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())   # any download would fail
    base = tmp_path / ("microarray" if layout == "named" else "data")
    holder = base / "microarray" if layout == "nested" else base
    for donor in ("9861", "15697"):
        write_donor(holder, donor)
    files = fetch.find_microarray(base, donors=["15697", "9861"])
    assert list(files) == ["9861", "15697"]
    for donor in files:
        assert_donor(files, donor)
        folder = holder / f"normalized_microarray_donor{donor}"
        assert Path(files[donor]["microarray"]).parent == folder
    assert fetch.fetch_microarray(base, donors=["9861", "15697"], verbose=0) == files
    assert not list(base.rglob(".*"))       # finding writes nothing (no lock, no scratch)
    monkeypatch.setenv("AHBA_DATA", str(base))
    assert fetch.find_microarray(donors=["9861", "15697"]) == files


def test_find_rnaseq_flat(tmp_path):
    for donor in RNASEQ_DONORS:
        write_donor(tmp_path, donor, "rnaseq")
    files = fetch.find_rnaseq(tmp_path, donors="all")
    assert list(files) == ["9861", "10021"]
    assert_donor(files, "10021", "rnaseq")


def test_find_reports_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())
    write_donor(tmp_path / "microarray", "9861")
    write_donor(tmp_path / "microarray", "10021")
    (tmp_path / "microarray" / "normalized_microarray_donor10021" / "Probes.csv").unlink()
    with pytest.raises(fetch.AHBADataNotFoundError) as caught:
        fetch.find_microarray(tmp_path, donors=["9861", "10021", "12876"])
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "donor 9861" not in message
    assert f"{tmp_path / 'microarray' / 'normalized_microarray_donor10021'} lacks Probes.csv" \
        in message
    assert "donor 12876: no folder normalized_microarray_donor12876" in message
    assert "fetch_microarray" in message and "--ahba-dir" in message
    # fetching never overwrites (nor skips) an incomplete folder, and needs no network for that
    with pytest.raises(fetch.AHBADataNotFoundError, match="lacks Probes.csv"):
        fetch.fetch_microarray(tmp_path, donors=["10021"], verbose=0)


def test_find_in_missing_folder(tmp_path):
    with pytest.raises(fetch.AHBADataNotFoundError, match="does not exist"):
        fetch.find_microarray(tmp_path / "nowhere", donors="9861")


def test_donor_checks(tmp_path):
    with pytest.raises(ValueError, match="'notadonor'.*9861"):
        fetch.find_microarray(tmp_path, donors="notadonor")
    with pytest.raises(ValueError, match=r"12876 have no RNA-seq data.*9861 \(H0351.2001\)"):
        fetch.fetch_rnaseq(tmp_path, donors=["9861", "12876"])
    with pytest.raises(ValueError, match="notadonor"):
        fetch.fetch_rnaseq(tmp_path, donors=["notadonor"])


# --------------------------------------------------------------------------------------------
# The synthetic generator's mirror

@pytest.mark.network
def test_synthetic_mirror(server, tmp_path, request):
    pytest.importorskip("ahba_app.synthetic", reason="ahba_app/synthetic.py not written yet")
    zips = request.getfixturevalue("ahba_small_zips")
    server.root = zips / "mirror"
    files = fetch.fetch_microarray(tmp_path, verbose=0, n_proc=2)
    assert list(files) == sorted(DONORS, key=int)
    unpacked = fetch.find_microarray(zips)      # the generator's own unpacked copy
    for donor, paths in files.items():
        for key, path in paths.items():
            assert Path(path).read_bytes() == Path(unpacked[donor][key]).read_bytes()
    if (server.root / zip_path("9861", "rnaseq")).exists():
        rnaseq = fetch.fetch_rnaseq(tmp_path, verbose=0)
        assert list(rnaseq) == list(RNASEQ_DONORS)
        unpacked = fetch.find_rnaseq(zips)
        for donor, paths in rnaseq.items():
            for key, path in paths.items():
                assert Path(path).read_bytes() == Path(unpacked[donor][key]).read_bytes()
    assert leftovers(tmp_path) == []
