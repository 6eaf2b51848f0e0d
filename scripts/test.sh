#!/usr/bin/env bash
# Everything the test suite needs, from a fresh machine: our venv (.venv), abagen's oracle venv
# (.venv-abagen, pinned), then pytest on both cores. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c 'import sys; sys.path.insert(0, "tests"); import oracle; print("abagen oracle:", oracle.oracle_python())'
# The container tests run from .ci/run (they need root and podman); -m "" selects everything.
exec .venv/bin/python -m pytest -n 2 -m "not container" "$@"
