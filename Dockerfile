# ahba-app: Allen Human Brain Atlas microarray data to region x gene tables, as a BIDS App.
#
#   docker build -t ahba-app/ahba-app:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v /path/to/ahba:/data/ahba:ro \
#       -v /path/to/atlases:/in:ro -v "$PWD/out:/out" ahba-app/ahba-app:0.1.0 /in /out group
#
# (AHBA donor folders at /data/ahba; /in a BIDS atlas dataset, empty for the bundled
# Desikan-Killiany atlas. More in singularity/README.md.)
#
# Stages (each `FROM` below):
#   base          Debian bookworm-slim with Debian's Python 3.11; every other stage starts here,
#                 so the virtual environment built below runs unchanged in the final image.
#   requirements  only the dependency list of pyproject.toml. An edit of pyproject.toml that keeps
#                 the dependencies gives the same file, so the slow layer below stays cached.
#   deps          the virtual environment /opt/ahba-app with every dependency (slow, cached) and a
#                 throw-away build-tools environment (setuptools, wheel).
#   package       builds the ahba-app wheel from the source and installs it (--no-deps) into
#                 /pkgroot: a code change rebuilds only this stage and two small final layers.
#   (final)       base + the dependency environment + the package. No compiler, no build tools,
#                 no pip cache, no source tree.
#
# Runtime design (Docker, Podman, Apptainer/Singularity alike): the app runs as any uid, on a
# read-only root file system, with no network and with HOME unset, unwritable or the host's. It
# writes only to the output folder, its work folder (-w, default ./work, i.e. /tmp/work here) and
# the caches named below (defaults under /tmp). /tmp is writable under Podman (--read-only),
# Docker (--read-only --tmpfs /tmp) and Apptainer (the host's /tmp is bound in).

FROM debian:bookworm-slim AS base
# DL3008 (pin apt versions): we deliberately follow bookworm's security updates of python3; the
# Python minor version (3.11) is fixed by the Debian release itself.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*


FROM base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; open('/requirements.txt', 'w').write(''.join(d + chr(10) for d in deps))"


FROM base AS deps
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The wheel of ahba-app is built with these (pyproject.toml asks setuptools>=68; Debian has 66).
# Behind a TLS-inspecting proxy, give pip the site's CA bundle as a build secret (never stored in
# a layer): docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt (BuildKit).
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --no-cache-dir setuptools==80.9.0 wheel==0.45.1 \
 && python3 -m venv /opt/ahba-app
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# Binary wheels exist for every compiled dependency on CPython 3.11 (x86_64: checked), so no
# compiler is needed; pip byte-compiles everything it installs (the root is read-only at run time).
# The test suites of the large dependencies (~150 MB, never imported at run time) are dropped.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/ahba-app/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
 && sp=/opt/ahba-app/lib/python3.11/site-packages \
 && find "$sp/numpy" "$sp/scipy" "$sp/pandas" "$sp/pyarrow" "$sp/networkx" \
         "$sp/nibabel" "$sp/nipype" "$sp/prov" "$sp/traits" \
         -type d -name tests -prune -exec rm -rf {} +


FROM deps AS package
COPY pyproject.toml README.m[d] /src/
COPY workflows /src/workflows
COPY ahba_app /src/ahba_app
# ahba_app/presets is a symbolic link to ../workflows: setuptools copies the files it points to.
RUN /opt/build-tools/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /tmp/wheel /src \
 && /opt/ahba-app/bin/pip install --no-cache-dir --no-deps --no-warn-script-location \
        --root /pkgroot /tmp/wheel/ahba_app-*.whl


FROM base
# A home any uid can write to (chmod go=u), for runs with a writable root and no HOME of their own;
# /data/ahba is the default AHBA data folder (a mount point, read-only is fine).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash ahba \
 && mkdir -p /data/ahba \
 && chmod -R go=u /home/ahba

COPY --from=deps /opt/ahba-app /opt/ahba-app
COPY --from=package /pkgroot/ /

# PATH: the app's environment first. LANG: UTF-8 without locales installed.
# PYTHONNOUSERSITE: never import packages from a bind-mounted host ~/.local (Apptainer).
# NIPYPE_NO_ET: no version check over the network by nipype (offline compute nodes).
# HOME: a home any uid can write (when the root is writable). Nothing needs it: ahba-app puts
#   nipype's folder (NIPYPE_CONFIG_DIR) in its work folder (-w, default ./work) unless it is
#   set, so it is deliberately not set here.
# XDG_CACHE_HOME: caches under /tmp, writable under Docker (--read-only with --tmpfs /tmp),
#   Podman (--read-only) and Apptainer (the host's /tmp). The binary cache of the AHBA CSVs
#   goes beside the data when that folder is writable, else to $AHBA_CACHE_DIR, else to
#   $XDG_CACHE_HOME/ahba-app: set AHBA_CACHE_DIR to persistent storage to keep it between runs.
# AHBA_DATA: where the AHBA donor folders are looked for (mount them here, read-only is fine).
ENV PATH="/opt/ahba-app/bin:${PATH}" \
    LANG=C.UTF-8 \
    PYTHONNOUSERSITE=1 \
    NIPYPE_NO_ET=1 \
    HOME=/home/ahba \
    XDG_CACHE_HOME=/tmp/.cache \
    AHBA_DATA=/data/ahba

# The version this image is labelled with must be the package's: the build fails otherwise
# (pass --build-arg VERSION=... after a version bump). The check also proves the presets and the
# bundled atlases made it into the installed package.
ARG VERSION=0.1.0
RUN python -c "import sys, ahba_app; from importlib.resources import files; p = files('ahba_app'); presets = [f.name for f in p.joinpath('presets').iterdir() if f.name.endswith('.toml')]; dk = p.joinpath('data', 'atlas-desikankilliany.nii.gz').is_file(); sys.exit(None if ahba_app.__version__ == '${VERSION}' and presets and dk else f'VERSION=${VERSION}, package {ahba_app.__version__}, presets {presets}, DK atlas {dk}')"

# Read by the app to fill GeneratedBy.Container of dataset_description.json ("<type>:<tag>").
ENV AHBA_APP_CONTAINER="docker:ahba-app/ahba-app:${VERSION}"

ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="ahba-app" \
      org.opencontainers.image.description="Allen Human Brain Atlas microarray data to region x gene tables for any parcellation: a BIDS App" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/ahba-app/ahba-app" \
      org.opencontainers.image.url="https://github.com/ahba-app/ahba-app" \
      org.opencontainers.image.licenses="BSD-3-Clause AND CC-BY-4.0" \
      org.opencontainers.image.authors="The ahba-app developers" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

WORKDIR /tmp
ENTRYPOINT ["ahba-app"]
CMD ["--help"]
