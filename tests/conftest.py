"""Shared fixtures: an isolated environment for every test and the synthetic AHBA datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_SEED = 1234


def _test_cache() -> Path:
    """Where generated test data is kept between runs (``$AHBA_TEST_CACHE`` or ``<repo>/.cache``)."""
    return Path(os.environ.get("AHBA_TEST_CACHE", REPO / ".cache"))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test reads the user's data folders or home, or reaches a mirror by accident."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in ("AHBA_DATA", "ABAGEN_DATA", "AHBA_APP_MIRROR", "AHBA_APP_ALLEN_API",
                "AHBA_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)


def _synthetic(size: str, seed: int, zips: bool = False) -> Path:
    """Generate (once, shared by every pytest worker) a synthetic AHBA dataset."""
    from ahba_app import synthetic

    target = _test_cache() / f"synthetic-{size}-seed{seed}{'-zips' if zips else ''}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        stamp = target / ".complete"
        if not stamp.exists() or stamp.read_text() != synthetic.GENERATOR_VERSION:
            synthetic.generate(target, size=size, seed=seed, zips=zips)
            stamp.write_text(synthetic.GENERATOR_VERSION)
    return target


@pytest.fixture(scope="session")
def ahba_small() -> Path:
    """Folder holding ``microarray/normalized_microarray_donor<N>/`` (and ``rnaseq/``) files."""
    return _synthetic("small", SYNTHETIC_SEED)


@pytest.fixture(scope="session")
def ahba_small_zips() -> Path:
    """Like ``ahba_small`` but with the per-donor zip archives the Allen Institute serves."""
    return _synthetic("small", SYNTHETIC_SEED, zips=True)


def pytest_terminal_summary(terminalreporter):
    """The fault-injection suite's summary: cases, passed, by class (tests/faults/)."""
    by_class: dict = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_faults.py::" not in nodeid or getattr(report, "when", "call") not in (
                    "call", "setup") or (report.when == "setup" and outcome == "passed"):
                continue
            name = nodeid.split("::", 1)[1].split("[", 1)[0].removeprefix("test_")
            counts = by_class.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})
            counts["failed" if outcome == "error" else outcome] += 1
    if not by_class:
        return
    total = {k: sum(c[k] for c in by_class.values()) for k in ("passed", "failed", "skipped")}
    write = terminalreporter.write_line
    terminalreporter.section("fault-injection suite")
    write(f"{sum(total.values())} cases: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped")
    for name, counts in sorted(by_class.items()):
        write(f"  {name:<36} {sum(counts.values()):>3} cases, {counts['passed']:>3} passed"
              + (f", {counts['failed']} failed" if counts["failed"] else "")
              + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))


def _with_anatomy(source: Path, donors=("12876", "15496")) -> Path:
    """A copy of ``source`` (a generated data folder; hard links) with synthetic raw MRIs and
    FreeSurfer folders of ``donors`` added (once, shared by every pytest worker)."""
    import shutil

    from ahba_app import synthetic

    default = tuple(donors) == ("12876", "15496")
    target = source.parent / (f"{source.name}-anatomy" if default
                              else f"{source.name}-anatomy-{'-'.join(donors)}")
    with FileLock(str(target) + ".lock"):
        stamp = target / ".anatomy-complete"
        # the copy's files are links to the source's: a regenerated source needs a new copy
        source_stamp = (source / ".complete").read_text() if (source / ".complete").exists() \
            else "?"
        wanted = f"{synthetic.ANATOMY_VERSION} {' '.join(donors)} source {source_stamp}"
        if not stamp.exists() or stamp.read_text() != wanted:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, copy_function=os.link,
                            ignore=shutil.ignore_patterns(".ahba-cache", "selection-*"))
            synthetic.generate_anatomy(target, donors=donors, seed=SYNTHETIC_SEED)
            stamp.write_text(wanted)
    return target


@pytest.fixture(scope="session")
def ahba_anatomy() -> Path:
    """Synthetic raw MRIs and FreeSurfer folders of donors 12876 and 15496 (``mri/``,
    ``freesurfer/``) and what the servers send for them (``mirror/``)."""
    from ahba_app import synthetic

    target = _test_cache() / "synthetic-anatomy"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        stamp = target / ".complete"
        if not stamp.exists() or stamp.read_text() != synthetic.ANATOMY_VERSION:
            synthetic.generate_anatomy(target, donors=("12876", "15496"), seed=SYNTHETIC_SEED,
                                       archives=True)
            stamp.write_text(synthetic.ANATOMY_VERSION)
    return target
