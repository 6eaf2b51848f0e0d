#!/bin/bash
# A stand-in for the `apptainer` command on machines without Apptainer (tests only):
#   apptainer exec|run [--cleanenv] [--no-home] [-B src[:dst[:ro]]]... [--env K=V]... IMAGE.sif [ARGS]
# runs the SIF with ../shared/tools/containers/sif-run.sh (read-only root, unprivileged uid, no
# network). `run` runs the image's runscript, `ahba-app ARGS`. Differences from Apptainer:
# sif-run.sh always binds $HOME (--no-home is accepted and ignored) and knows no other option.
set -euo pipefail
tools=${AHBA_CONTAINER_TOOLS:?set AHBA_CONTAINER_TOOLS to the folder holding sif-run.sh}
action=${1:-}; shift || true
case "$action" in exec|run) ;; *) echo "apptainer (shim): only 'exec' and 'run'" >&2; exit 2 ;; esac
opts=(); envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cleanenv) opts+=(--cleanenv); shift ;;
        --no-home) shift ;;
        -B|--bind) opts+=(-B "$2"); shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --env=*) envs+=("${1#--env=}"); shift ;;
        -*) echo "apptainer (shim): unsupported option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
sif=${1:?no image}; shift
[ "$action" = run ] && set -- ahba-app "$@"
exec env SIF_ACTION=exec bash "$tools/sif-run.sh" "${opts[@]}" "$sif" /usr/bin/env "${envs[@]}" "$@"
