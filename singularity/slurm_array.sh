#!/bin/bash
# ahba-app on a SLURM cluster with Apptainer/Singularity: one atlas per array task.
#
#   n=3   # the number of entries of ATLASES below
#   prep=$(sbatch --parsable singularity/slurm_array.sh prepare)
#   sbatch --dependency=afterok:$prep --array=0-$((n - 1)) singularity/slurm_array.sh
#
# `prepare` (one job) builds the binary cache of the AHBA CSVs once in CACHE_DIR, so the array
# tasks only read it instead of each parsing ~3.4 GB of CSV. The AHBA data must already be in
# AHBA_DIR: compute nodes are often offline, so download them beforehand on a node with network:
#   apptainer exec --cleanenv -B "$AHBA_DIR:/data/ahba" ahba-app.sif \
#       python -m ahba_app.fetch --data-dir /data/ahba
#
# Each array task binds the AHBA data and the atlas dataset read-only, processes one atlas
# (--atlas), keeps its Nipype work folder on the node's local scratch and writes its tables into
# the shared derivatives folder OUT_DIR.
#
# A multiverse sweep per atlas: MULTIVERSE=markello2021 (a bundled grid's name, or a grid file
# under ATLAS_DIR, given as /atlases/<file>) makes each task write
# OUT_DIR/<atlas>_desc-multiverse_pipelines.* and the multiverse report instead of the tables;
# the task's --nprocs processes share the sweep's work. (A single sweep larger than one task's
# time limit runs better from a login node with --nipype-plugin SLURM, one job per unit.)
#
# The settings below can also come from the environment: ATLAS_LABELS (space-separated, for
# ATLASES) and AHBA_EXTRA_ARGS (space-separated, for EXTRA_ARGS).
#
#SBATCH --job-name=ahba-app
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=ahba-app_%A_%a.log
set -euo pipefail

# ---- Site and study settings: edit these (or export them before sbatch) -------------------------
SIF=${SIF:-$HOME/containers/ahba-app_0.1.0.sif}
AHBA_DIR=${AHBA_DIR:-/project/shared/ahba}          # holds microarray/normalized_microarray_donor<N>/
ATLAS_DIR=${ATLAS_DIR:-/project/$USER/atlases}      # BIDS atlas dataset (tpl-*_atlas-<label>_*_dseg.*)
OUT_DIR=${OUT_DIR:-/project/$USER/derivatives/ahba-app}
CACHE_DIR=${CACHE_DIR:-/project/$USER/ahba-cache}   # persistent; shared by every task (read-write)
# One entry per array task: an atlas- label (every atlas with that label, e.g. all Schaefer2018
# resolutions) or an output name such as Schaefer2018400Parcels7Networks (one atlas).
read -r -a ATLASES <<<"${ATLAS_LABELS:-Schaefer2018400Parcels7Networks Schaefer2018100Parcels7Networks HCPMMP1}"
read -r -a EXTRA_ARGS <<<"${AHBA_EXTRA_ARGS:---preset abagen-defaults}"   # any other options
MULTIVERSE=${MULTIVERSE:-}                          # a grid: one sweep per atlas (see above)
# --------------------------------------------------------------------------------------------------

APPTAINER=${APPTAINER:-$(command -v apptainer || command -v singularity || true)}
[ -n "$APPTAINER" ] || { echo "neither apptainer nor singularity is on PATH (module load apptainer?)" >&2; exit 1; }
[ -f "$SIF" ] || { echo "no container image at SIF=$SIF" >&2; exit 1; }
mkdir -p "$OUT_DIR" "$CACHE_DIR"
threads=${SLURM_CPUS_PER_TASK:-1}

# Why --cleanenv: Apptainer otherwise passes the whole host environment into the container, where
# a PYTHONPATH or PYTHONHOME from `module load python`, a conda environment's variables or a
# personal AHBA_DATA / NIPYPE_CONFIG_DIR would override the image's settings. With --cleanenv only
# what is given with --env reaches the app (SingularityCE < 3.6: export SINGULARITYENV_NAME=...).
# Why --no-home: nothing needs the home folder (the app writes only to /out, /work and /cache), so
# it is not mounted: no dot-files of yours are read, none are written, quotas do not matter.
# The numeric libraries get as many threads as SLURM gave CPUs, not as many as the node has.
common=(--cleanenv --no-home
        -B "$AHBA_DIR:/data/ahba:ro"
        -B "$CACHE_DIR:/cache"
        --env AHBA_CACHE_DIR=/cache
        --env "OMP_NUM_THREADS=$threads" --env "OPENBLAS_NUM_THREADS=$threads"
        --env "MKL_NUM_THREADS=$threads")

if [ "${1:-}" = prepare ]; then
    # Build (or check) the CSV cache of every donor; no network is used.
    exec "$APPTAINER" exec "${common[@]}" "$SIF" python -c '
from ahba_app import fetch, io
for donor, files in fetch.find_microarray("/data/ahba").items():
    for key in ("microarray", "pacall"):
        print(donor, key, io.ensure_cache(files[key]), flush=True)
'
fi

task=${SLURM_ARRAY_TASK_ID:?run this script as a job array (sbatch --array=0-N), or with "prepare"}
label=${ATLASES[$task]:?no entry $task in ATLASES (it has ${#ATLASES[@]}: use --array=0-$((${#ATLASES[@]} - 1)))}

# The Nipype work folder on node-local scratch: fast, private to this task, deleted at the end.
# (SLURM_TMPDIR on some clusters, TMPDIR on many; /tmp otherwise.)
scratch=${SLURM_TMPDIR:-${TMPDIR:-/tmp}}
work=$(mktemp -d "$scratch/ahba-app.${SLURM_ARRAY_JOB_ID:-$$}_$task.XXXXXX")
trap 'rm -rf "$work"' EXIT

[ -n "$MULTIVERSE" ] && EXTRA_ARGS+=(--multiverse "$MULTIVERSE")
echo "$(date '+%F %T') task $task: atlas $label, work folder $work on $(hostname)"
"$APPTAINER" run "${common[@]}" \
    -B "$ATLAS_DIR:/atlases:ro" \
    -B "$OUT_DIR:/out" \
    -B "$work:/work" \
    "$SIF" /atlases /out group --atlas "$label" -w /work --nprocs "$threads" "${EXTRA_ARGS[@]}"
echo "$(date '+%F %T') task $task: done"
