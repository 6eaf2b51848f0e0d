"""The container image: built with podman and run the way Docker and Apptainer run it.

The work is done by ``tests/container/run_container_tests.sh`` (read it for what is checked): it
builds the image, checks its contents, runs the full ``group`` workflow on synthetic AHBA data
read-only, as an unprivileged uid, with no network and no usable HOME, in podman and in a SIF, and
compares every output table byte for byte with the host install's. It takes minutes (about 4 with
a warm podman build cache, 10-15 from a clean machine), so deselect it with ``-m "not container"``
or ``AHBA_SKIP_CONTAINER_TESTS=1`` when iterating on other things.

Skipped, with the reason, when the machine cannot run it: not Linux, not root, or podman neither
installed nor installable (no ``podman-setup.sh`` beside the shared container tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "container" / "run_container_tests.sh"
#: podman-setup.sh, oci2sif.sh and sif-run.sh: $AHBA_CONTAINER_TOOLS, else the shared tools folder
#: beside the checkout, else the one of the development machines.
TOOLS = next((Path(p) for p in (os.environ.get("AHBA_CONTAINER_TOOLS"),
                                REPO.parent / "shared" / "tools" / "containers",
                                "/work/shared/tools/containers") if p and Path(p).is_dir()),
             REPO.parent / "shared" / "tools" / "containers")
#: The script's exit status when the machine cannot run the tests (as automake's test drivers).
EXIT_SKIP = 77


def _cannot_run() -> str | None:
    """Why the container tests cannot run on this machine, or None when they can."""
    if os.environ.get("AHBA_SKIP_CONTAINER_TESTS", "") not in ("", "0"):
        return "AHBA_SKIP_CONTAINER_TESTS is set"
    if not sys.platform.startswith("linux"):
        return "the container tests run on Linux only"
    if os.geteuid() != 0:
        return "the container tests need root (rootful podman; loop and squashfs mounts for the SIF)"
    if shutil.which("bash") is None:
        return "bash is not installed"
    if shutil.which("podman") is None and not (TOOLS / "podman-setup.sh").is_file():
        return f"podman is not installed and there is no {TOOLS / 'podman-setup.sh'} to install it"
    return None


def test_container_image(tmp_path):
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, AHBA_HOST_PYTHON=sys.executable, AHBA_CONTAINER_TOOLS=str(TOOLS))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    (tmp_path / "container-tests.log").write_text(proc.stdout)
    print(proc.stdout)  # shown by pytest when the test fails
    lines = proc.stdout.splitlines()
    if proc.returncode == EXIT_SKIP:
        skips = [line for line in lines if line.startswith("SKIP:")]
        pytest.skip(skips[-1][len("SKIP:"):].strip() if skips else "the container tests cannot run here")
    failures = [line for line in lines if line.startswith("FAIL:")]
    assert proc.returncode == 0, (
        f"{SCRIPT.relative_to(REPO)} exited with {proc.returncode}:\n"
        + ("\n".join(failures) if failures else "\n".join(lines[-30:])))
