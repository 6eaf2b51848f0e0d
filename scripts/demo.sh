#!/usr/bin/env bash
# The main job, from a fresh machine: install ahba-app into .venv, make a small SYNTHETIC AHBA
# dataset (random numbers in the exact AHBA file layout, not Allen data: this machine cannot
# download the real 4 GB), and run the BIDS App's group level on the bundled Desikan-Killiany
# atlas. Outputs: demo-output/derivatives/ (expression TSV, counts, probes, HTML report).
# With real data: ahba-app INPUT_DIR OUTPUT_DIR group --ahba-dir /path/to/ahba
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
out=demo-output
[ -f "$out/ahba-synthetic/synthetic.json" ] ||
    .venv/bin/python -m ahba_app.synthetic "$out/ahba-synthetic" --size small --seed 0
mkdir -p "$out/atlases"   # empty: the bundled Desikan-Killiany atlas is used
.venv/bin/ahba-app "$out/atlases" "$out/derivatives" group \
    --ahba-dir "$out/ahba-synthetic" -w "$out/work" --nprocs 2 "$@"
echo "Done: see $out/derivatives (open the .html report in a browser)."
