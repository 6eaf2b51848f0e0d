"""Fault injection: the command line against broken inputs, kills, signals, full disks and
concurrent runs, as a hostile but realistic user would try them.

Every case runs ``ahba-app`` in a subprocess on two donors of the small synthetic data and
checks, for the faulty run: its exit status; exactly one ``ahba-app:`` line, naming the file
(or folder) at fault and saying what to do; no traceback; no output that looks complete (no
``atlas-*`` table and no completion marker in a fresh output folder). Then the fault is undone
and the same command is run again in the same work and output folders: it must exit 0 and write
the reference tables byte for byte, leave no staging folder and no half-written cache file.

Random choices (kill moments, bytes of garbage) come from ``random.Random(SEED + case)``, with
SEED from ``$AHBA_FAULT_SEED`` (default 18): a failure is replayed with the same seed. Every
wait is bounded. A summary by class is printed at the end of the session (tests/conftest.py).
Cases needing a small tmpfs skip when mounting is not allowed (not root, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from child_signals import default_signals
from polling import wait_for

SEED = int(os.environ.get("AHBA_FAULT_SEED", "18"))
DONORS = ["9861", "10021"]
ATLAS = "tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.nii.gz"
TABLE = "tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.tsv"
STEM = "atlas-DK_space-MNI152NLin6Asym_res-01_desc-abagendefaults"
TABLES = [f"{STEM}_{suffix}.tsv" for suffix in ("expression", "counts", "probes")]
MARKER = ".ahba-app-complete.json"
STAGING = ".ahba-app-staging-"
KINDS = {"microarray": "MicroarrayExpression.csv", "pacall": "PACall.csv",
         "probes": "Probes.csv", "annotation": "SampleAnnot.csv", "ontology": "Ontology.csv"}
# a message says what to do: one of these words
FIX = re.compile(r"\b(restore|download|replace|fix|check|use|give|choose|lower|raise|free|"
                 r"make room|wait|remove|rename|relabel|run|set|pick|resume|end it|put)\b",
                 re.IGNORECASE)
TIMEOUT = 300  # seconds any one command may take before the case fails


# --------------------------------------------------------------------------------------------
# the shared material: data with caches, the atlas folder, the reference tables
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def base(ahba_small, tmp_path_factory, worker_id) -> Path:
    """Built once per session (the first pytest-xdist worker builds, the others wait)."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    base = root / "faults-base"
    with FileLock(str(base) + ".lock"):
        if not (base / "reference" / MARKER).is_file():
            shutil.rmtree(base, ignore_errors=True)
            for donor in DONORS:
                src = ahba_small / "microarray" / f"normalized_microarray_donor{donor}"
                shutil.copytree(src, base / "data" / "microarray" / src.name,
                                ignore=shutil.ignore_patterns(".ahba-cache", "selection-*"))
            _atlas_folder(base / "atlases")
            result = _run(base, base / "atlases", base / "reference", base / "work")
            assert result.returncode == 0, result.stderr
    return base


def _atlas_folder(folder: Path) -> Path:
    from ahba_app.datasets import fetch_desikan_killiany

    folder.mkdir(parents=True, exist_ok=True)
    dk = fetch_desikan_killiany()
    shutil.copyfile(dk["image"], folder / ATLAS)
    info = pd.read_csv(dk["info"]).rename(columns={"id": "index", "label": "name"})
    info.to_csv(folder / TABLE, sep="\t", index=False)
    return folder


def _environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_DATA", "ABAGEN_DATA",
                        "AHBA_CACHE_DIR", "AHBA_APP_CONTAINER", "PYTEST_XDIST_WORKER")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONUNBUFFERED="1")
    return env


CLI = [sys.executable, "-m", "ahba_app.cli.run"]


def _command(data: Path, inp: Path, out: Path, work: Path, *extra, cli=CLI) -> list[str]:
    return [*cli, str(inp), str(out), "group", "--ahba-dir", str(data), "-w", str(work),
            "--donors", *DONORS, *map(str, extra)]


def _run(case: Path, inp: Path, out: Path, work: Path, *extra, data: Path | None = None,
         cli=CLI) -> subprocess.CompletedProcess:
    case.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(_command(data or case / "data", inp, out, work, *extra, cli=cli),
                            cwd=case, env=_environment(case / "home"), capture_output=True,
                            text=True, timeout=TIMEOUT)
    with open(case / "runs.log", "a") as log:  # for whoever debugs a failing case
        log.write(f"$ {' '.join(result.args)}\nexit {result.returncode}\n{result.stderr}\n")
    return result


def _start(case: Path, inp: Path, out: Path, work: Path, *extra, data=None) -> subprocess.Popen:
    """The command line in the background; stderr goes to a file (a pipe would stay open
    while any worker lives), read back by :func:`_finish`."""
    case.mkdir(parents=True, exist_ok=True)
    with open(case / f"stderr-{time.monotonic_ns()}.txt", "w+") as err:
        proc = subprocess.Popen(_command(data or case / "data", inp, out, work, *extra),
                                cwd=case, env=_environment(case / "home"),
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                preexec_fn=default_signals)
    proc.stderr_path = err.name
    return proc


class Case:
    """One case's folders: a copy of the data (hard links; a file changed is replaced, never
    written through the link), the atlas folder, and fresh output and work folders."""

    def __init__(self, tmp_path: Path, base: Path, caches: bool = True):
        self.root, self.base = tmp_path, base
        self.data, self.inp = tmp_path / "data", tmp_path / "atlases"
        self.out, self.work = tmp_path / "out", tmp_path / "work"
        ignore = None if caches else shutil.ignore_patterns(".ahba-cache")
        shutil.copytree(base / "data", self.data, copy_function=os.link, ignore=ignore)
        shutil.copytree(base / "atlases", self.inp)

    def file(self, kind: str, donor: str = "9861") -> Path:
        return self.data / "microarray" / f"normalized_microarray_donor{donor}" / KINDS[kind]

    def run(self, *extra, out=None, work=None, **kwargs):
        return _run(self.root, self.inp, out or self.out, work or self.work, *extra,
                    data=self.data, **kwargs)

    def start(self, *extra, out=None, work=None, **kwargs):
        return _start(self.root, self.inp, out or self.out, work or self.work, *extra,
                      data=self.data, **kwargs)


def _replace(path: Path, content: bytes) -> bytes:
    """Write ``content`` as a new file at ``path`` (breaking any hard link); return the old."""
    old = path.read_bytes()
    path.unlink()
    path.write_bytes(content)
    return old


def assert_failed(result, names, code: int = 1, out: Path | None = None) -> str:
    """The faulty run: its status, one clear line naming ``names``, no traceback, nothing
    that looks complete in ``out``."""
    err = result.stderr if hasattr(result, "stderr") else result[1]
    status = result.returncode if hasattr(result, "returncode") else result[0]
    assert status == code, f"exit {status}, expected {code}:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ahba-app: ")]
    assert len(lines) == 1, err
    line = lines[0]
    for name in ([names] if isinstance(names, str) else names):
        assert str(name) in line, f"{name!r} not in: {line}"
    assert FIX.search(line.split(":", 2)[-1]), f"no fix in: {line}"
    if out is not None:
        assert_not_complete(out)
    return line


def assert_not_complete(out: Path) -> None:
    if out.is_dir():
        assert not (out / MARKER).exists()
        assert not list(out.glob("atlas-*")), sorted(p.name for p in out.glob("atlas-*"))


def assert_recovers(case: Case, out=None, work=None) -> None:
    """The next good run: exit 0, the reference tables byte for byte, nothing left over."""
    out = out or case.out
    result = case.run(out=out, work=work)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_reference(case.base, out)
    assert not list(case.data.rglob("*.tmp")), list(case.data.rglob("*.tmp"))


def assert_reference(base: Path, out: Path) -> None:
    for name in TABLES:
        assert (out / name).read_bytes() == (base / "reference" / name).read_bytes(), name
    assert (out / MARKER).is_file()
    assert not list(out.glob(STAGING + "*"))


_wait_for = functools.partial(wait_for, timeout=TIMEOUT, step=0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the run did not end within {TIMEOUT} s:\n"
                    f"{Path(proc.stderr_path).read_text()}")
    return proc.returncode, Path(proc.stderr_path).read_text()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# corrupted and truncated inputs, every AHBA file kind
# --------------------------------------------------------------------------------------------
def _corrupt(content: bytes, how: str, rng: random.Random, kind: str) -> bytes:
    if how == "truncated":  # cut inside a line, as an interrupted copy leaves it
        return content[:int(len(content) * rng.uniform(0.3, 0.8))]
    if how == "empty":
        return b""
    if how == "garbage":  # binary noise over a stretch of the file
        start = int(len(content) * rng.uniform(0.2, 0.6))
        noise = bytes(rng.randrange(256) for _ in range(64))
        return content[:start] + noise + content[start + 64:]
    if how == "text":  # a word where a number belongs
        lines = content.decode().splitlines(keepends=True)
        row = rng.randrange(1, len(lines) - 1)
        cells = lines[row].split(",")
        column = {"microarray": rng.randrange(1, len(cells)), "pacall": 1, "probes": 0,
                  "annotation": 10, "ontology": 0}[kind]
        cells[column] = "oops"
        lines[row] = ",".join(cells) + ("" if cells[-1].endswith("\n") else "\n")
        return "".join(lines).encode()
    raise ValueError(how)


# every kind: cut short and empty; then binary noise or a word in a number's place, in turn
CORRUPTIONS = [(kind, how) for i, kind in enumerate(KINDS)
               for how in ("truncated", "empty", ("garbage", "text")[i % 2])]


@pytest.mark.parametrize(("kind", "how"), CORRUPTIONS,
                         ids=[f"{k}-{h}" for k, h in CORRUPTIONS])
def test_corrupt_input(tmp_path, base, kind, how):
    rng = random.Random(SEED + CORRUPTIONS.index((kind, how)))
    case = Case(tmp_path, base)
    path = case.file(kind)
    original = _replace(path, _corrupt(path.read_bytes(), how, rng, kind))
    assert_failed(case.run(), [path], out=case.out)
    _replace(path, original)
    assert_recovers(case)


# --------------------------------------------------------------------------------------------
# broken atlases
# --------------------------------------------------------------------------------------------
def _dk():
    img = nib.load(str(Path(__file__).resolve().parents[2] / "ahba_app" / "data"
                       / "atlas-desikankilliany.nii.gz"))
    return np.asarray(img.dataobj), img.affine.copy()


def _save(path: Path, data, affine) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    img.set_sform(affine, code=4)
    img.set_qform(None)
    nib.save(img, path)


def _break_atlas(case: Case, how: str, rng: random.Random) -> tuple[Path, str]:
    """Break the atlas; return the file the message must name (and its name)."""
    image, table = case.inp / ATLAS, case.inp / TABLE
    data, affine = _dk()
    if how == "truncated-gzip":
        _replace(image, image.read_bytes()[:int(image.stat().st_size * rng.uniform(0.2, 0.9))])
    elif how == "not-an-image":
        _replace(image, b"this is not a NIfTI file\n" * 10)
    elif how == "4d":
        _save(image, np.stack([data, data], axis=-1), affine)
    elif how == "nan-affine":
        affine[1, 3] = np.nan
        _save(image, data, affine)
    elif how == "scaled-affine":  # covers MNI brain coordinates, matches no sample
        affine[:3, :3] *= 10
        _save(image, data, affine)
    elif how == "negative-labels":
        data = data.astype(np.int32)
        data[data == 5] = -5
        _save(image, data, affine)
    elif how == "huge-label":
        data = data.astype(np.uint64)
        data[data == 5] = 2**63 + 5
        _save(image, data, affine)
    elif how == "fractional-labels":
        _save(image, data.astype(np.float32) + 0.5 * (data > 0), affine)
    elif how == "folder":
        image.unlink()
        image.mkdir()
        (image / "file").write_text("x")
    elif how == "table-short":
        lines = table.read_text().splitlines(keepends=True)
        _replace(table, "".join(lines[:40]).encode())
        return table, table.name
    elif how == "table-garbage":
        _replace(table, bytes(rng.randrange(256) for _ in range(300)))
        return table, table.name
    else:
        raise ValueError(how)
    return image, image.name


ATLAS_FAULTS = ["truncated-gzip", "not-an-image", "4d", "nan-affine", "scaled-affine",
                "negative-labels", "huge-label", "fractional-labels", "folder", "table-short",
                "table-garbage"]


@pytest.mark.parametrize("how", ATLAS_FAULTS)
def test_broken_atlas(tmp_path, base, how):
    rng = random.Random(SEED + 100 + ATLAS_FAULTS.index(how))
    case = Case(tmp_path, base)
    _, name = _break_atlas(case, how, rng)
    names = [name] if how != "scaled-affine" else ["atlas"]
    assert_failed(case.run(), names, out=case.out)
    shutil.rmtree(case.inp)
    shutil.copytree(base / "atlases", case.inp)
    assert_recovers(case)


# --------------------------------------------------------------------------------------------
# SIGKILL at random points: cache building, workflow, publishing
# --------------------------------------------------------------------------------------------
def _assert_no_orphans(pids) -> None:
    assert _wait_for(lambda: not any(_alive(p) for p in pids), timeout=15), \
        f"processes {[p for p in pids if _alive(p)]} outlived their killed run"


@pytest.mark.parametrize("n", range(3))
def test_kill_cache_building(tmp_path, base, n):
    rng = random.Random(SEED + 200 + n)
    case = Case(tmp_path, base, caches=False)
    proc = case.start()
    # kill at a random moment while a cache file is being written
    building = _wait_for(lambda: list(case.data.rglob(".ahba-cache/*.tmp")) or proc.poll(),
                         step=0.01)
    time.sleep(rng.uniform(0, 0.05))
    family = _descendants(proc.pid)
    proc.kill()
    _finish(proc)
    assert building, "no cache file was being built"
    _assert_no_orphans(family)
    assert_not_complete(case.out)
    assert_recovers(case)


@pytest.mark.parametrize("n", range(3))
def test_kill_workflow(tmp_path, base, n):
    rng = random.Random(SEED + 300 + n)
    delay = rng.uniform(0.2, 4.0)
    # a run quicker than the delay ends before the kill and tests nothing: then a fresh case
    # is killed after half the delay. All or nothing: the output is complete and equal to the
    # reference, or nothing of it looks complete.
    for attempt in range(6):
        case = Case(tmp_path / f"attempt-{attempt}", base)
        proc = case.start("--nprocs", "2")
        started = _wait_for(lambda: list(case.out.glob(STAGING + "*")) or proc.poll())
        assert started and isinstance(started, list), "the workflow never started"
        if _wait_for(lambda: proc.poll() is not None, timeout=delay, step=0.02):
            _finish(proc)
            delay /= 2
            continue
        family = _descendants(proc.pid)
        proc.kill()
        _finish(proc)
        break
    else:
        pytest.fail("every run ended before it could be killed")
    _assert_no_orphans(family)
    if (case.out / MARKER).exists():
        # killed after publishing, while it ended (workers, logs): whole, as a finished run
        assert_reference(case.base, case.out)
    else:
        assert_not_complete(case.out)
    assert_recovers(case)


_KILL_AT_MOVE = textwrap.dedent("""
    import os, signal, sys, types
    import ahba_app.cli.publish as publish
    from ahba_app.cli.run import main
    target, calls = int(sys.argv.pop(1)), []
    proxy = types.ModuleType("os")
    proxy.__dict__.update(os.__dict__)
    def replace(src, dst):
        calls.append(dst)
        if len(calls) == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.replace(src, dst)
    proxy.replace = replace
    publish.os = proxy
    sys.argv[0] = "ahba-app"
    sys.exit(main())
""")


@pytest.mark.parametrize("n", range(3))
def test_kill_publish(tmp_path, base, n):
    """SIGKILL between two renames of the publication (the k-th, k at random)."""
    rng = random.Random(SEED + 400 + n)
    case = Case(tmp_path, base)
    k = rng.randrange(1, 12)
    result = case.run(cli=[sys.executable, "-c", _KILL_AT_MOVE, str(k)])
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (case.out / MARKER).exists()
    if k > 1:  # the k-th move did not happen; dataset_description.json is always the first
        assert (case.out / "dataset_description.json").is_file()
    assert_recovers(case)


# --------------------------------------------------------------------------------------------
# SIGTERM and SIGINT
# --------------------------------------------------------------------------------------------
SIGNALS = [(signal.SIGTERM, "checks"), (signal.SIGTERM, "workflow"), (signal.SIGINT, "checks"),
           (signal.SIGINT, "workflow")]


@pytest.mark.parametrize(("signum", "when"), SIGNALS,
                         ids=[f"{s.name}-{w}" for s, w in SIGNALS])
def test_signal(tmp_path, base, signum, when):
    rng = random.Random(SEED + 500 + SIGNALS.index((signum, when)))
    # the delay drawn, then a short one if the run was quicker than that (runs get faster)
    delay = rng.uniform(0.8, 1.5) if when == "checks" else rng.uniform(0.2, 3.0)
    for attempt, wait in enumerate((delay, 0.1)):
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        case = Case(folder, base)
        proc = case.start("--nprocs", "2")
        if when == "workflow":  # once the workflow runs (else: while the inputs are checked)
            assert _wait_for(lambda: list(case.out.glob(STAGING + "*")) or proc.poll())
        time.sleep(wait)
        family = _descendants(proc.pid)
        proc.send_signal(signum)
        result = _finish(proc)
        if result[0] != 0 and not (case.out / MARKER).exists():
            break
        # it ended before the signal, or had published and was ending (its handlers given back:
        # the signal's default action, exit -N): whole, as a finished run; nothing tested yet
        assert_reference(case.base, case.out)
    else:  # the run finished before the signal both times: nothing to check
        pytest.skip("the run ended before the signal, twice")
    line = assert_failed(result, ["interrupted", signum.name], code=128 + signum, out=case.out)
    assert "failed" not in line
    assert not list(case.out.glob(STAGING + "*"))
    _assert_no_orphans(family)
    assert_recovers(case)


_SIGNAL_IN_FORK = textwrap.dedent("""
    import _thread, ctypes, functools, os, sys
    import filelock  # (its fork callbacks, as in a run: Nipype imports it)
    from ahba_app.cli.run import main
    signum, how = int(sys.argv.pop(1)), sys.argv.pop(1)
    # at the first fork, before filelock's callback: a signal the kernel delivers, or one
    # another thread received; through C functions only (no bytecode of this hook runs, where
    # Python would handle the signal), so that the handler runs in the next callback
    if how == "kernel":
        once = map(ctypes.CDLL(None).kill, [os.getpid()], [signum])
    else:
        once = map(_thread.interrupt_main, [signum])
    os.register_at_fork(before=functools.partial(next, once, None))
    sys.argv[0] = "ahba-app"
    sys.exit(main())
""")
FORK_SIGNALS = [(signal.SIGTERM, "kernel"), (signal.SIGTERM, "thread"), (signal.SIGINT, "kernel"),
                (signal.SIGINT, "thread")]


@pytest.mark.parametrize(("signum", "how"), FORK_SIGNALS,
                         ids=[f"{s.name}-{h}" for s, h in FORK_SIGNALS])
def test_signal_while_forking_a_worker(tmp_path, base, signum, how):
    """The signal of issue #16's CI failure, at the moment that failed: while MultiProc forks its
    first worker, between the fork's callbacks (filelock 4.3.2's raised IndexError or KeyError
    after the fork, printed as "Exception ignored ... Traceback", and the run went on to the end
    of its workflow). The run ends there, as for any signal: no traceback, nothing published."""
    case = Case(tmp_path, base)
    result = case.run("--nprocs", "2", cli=[sys.executable, "-c", _SIGNAL_IN_FORK,
                                            str(int(signum)), how])
    line = assert_failed(result, ["interrupted", signum.name], code=128 + signum, out=case.out)
    assert "failed" not in line
    assert "Exception ignored" not in result.stderr, result.stderr
    assert not list(case.out.glob(STAGING + "*"))
    # it ended there, not after the workflow (where a signal lost in a callback is seen)
    assert not list(case.work.rglob("result_*.pklz"))
    # and the worker forked then (the run never learnt its pid) ends with it
    assert _wait_for(lambda: not _running_with(str(case.out)), timeout=15), \
        _running_with(str(case.out))
    assert_recovers(case)


def _running_with(argument: str) -> list[int]:
    """The live processes with ``argument`` on their command line (a worker forked by a run has
    the run's)."""
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            words = (folder / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in words and _alive(int(folder.name)):
            found.append(int(folder.name))
    return found


# --------------------------------------------------------------------------------------------
# full file systems (a small tmpfs)
# --------------------------------------------------------------------------------------------
def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` but ``leave`` bytes."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / ".filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def test_full_output_disk(tmp_path, base):
    case = Case(tmp_path, base)
    _mount_tmpfs(case.out, "4m")
    try:
        _fill(case.out, 600_000)   # room for small files, not for the expression table
        result = case.run()
        assert_failed(result, ["No space left on device"], out=case.out)
        assert not list(case.out.glob(STAGING + "*"))
        (case.out / ".filler").unlink()
        assert_recovers(case)
    finally:
        _unmount(case.out)


def test_full_work_disk(tmp_path, base):
    case = Case(tmp_path, base)
    _mount_tmpfs(case.work, "4m")
    try:
        _fill(case.work, 200_000)
        result = case.run()
        assert_failed(result, ["No space left on device"], out=case.out)
        (case.work / ".filler").unlink()
        assert_recovers(case)
    finally:
        _unmount(case.work)


def test_full_data_disk_while_caching(tmp_path, base):
    """No room for the cache beside the data: it goes to the user's cache folder, same table."""
    case = Case(tmp_path, base, caches=False)
    shutil.rmtree(case.data)
    _mount_tmpfs(case.data, "12m")
    try:
        shutil.copytree(base / "data", case.data, ignore=shutil.ignore_patterns(".ahba-cache"),
                        dirs_exist_ok=True)
        _fill(case.data, 100_000)
        result = case.run()
        assert result.returncode == 0, result.stderr
        assert_reference(base, case.out)
        assert list((case.root / "home" / ".cache" / "ahba-app").rglob("*.cache"))
        assert not list(case.data.rglob("*.tmp"))
    finally:
        _unmount(case.data)


# --------------------------------------------------------------------------------------------
# concurrent runs on shared folders
# --------------------------------------------------------------------------------------------
def test_concurrent_shared_work_folder(tmp_path, base):
    case = Case(tmp_path, base)
    outs = [case.out, case.root / "out2"]
    runs = [case.start(out=out) for out in outs]
    results = [_finish(proc) for proc in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    for (code, err), out in zip(results, outs):
        if code == 0:
            assert_reference(base, out)
        else:
            assert_failed((code, err), ["in use by another ahba-app run", str(case.work)],
                          out=out)
    assert_recovers(case, out=outs[1])


def test_concurrent_shared_output_folder(tmp_path, base):
    case = Case(tmp_path, base)
    runs = [case.start(work=case.root / f"work{i}") for i in range(2)]
    for proc in runs:
        code, err = _finish(proc)
        assert code == 0, err
    assert_reference(base, case.out)


def test_concurrent_cold_shared_data(tmp_path, base):
    case = Case(tmp_path, base, caches=False)
    runs = [case.start(out=case.root / f"out{i}", work=case.root / f"work{i}")
            for i in range(2)]
    for proc in runs:
        code, err = _finish(proc)
        assert code == 0, err
    for i in range(2):
        assert_reference(base, case.root / f"out{i}")
    caches = list(case.data.rglob("*.cache"))
    assert len(caches) == 2 * len(DONORS) and not list(case.data.rglob("*.tmp"))

