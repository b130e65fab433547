# pc-token-broker as a container sidecar. Two stages: the build stage installs the package into
# a virtual environment; the final image gets only that environment, runs as a non-root uid,
# writes nothing outside its volumes (works with a read-only root filesystem), and checks its
# own health with the broker's CLI (no curl in the image).
# PYTHON_IMAGE: any Debian-like image with python3 and its venv module; `make test-container`
# builds it on a local bookworm stand-in (debootstrap + python3, python3-venv), see the README.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt pyproject.toml README.md LICENSE ./
COPY broker ./broker
# Installed from the lock: requirements.txt is uv.lock's export (runtime dependencies and the
# build backend, each pinned with its hashes; `make lock` writes it, `make lint` checks it), so
# pip installs exactly what the tests ran, checks every hash and downloads nothing else. Then
# the broker itself, built with that locked setuptools (no build isolation: nothing fetched).
# Every dependency ships a manylinux wheel: no compiler is needed, even here.
# pip and setuptools leave the environment once it is installed.
RUN python3 -m venv /opt/pc-token-broker \
    && /opt/pc-token-broker/bin/pip install --quiet --no-compile --require-hashes --only-binary :all: \
       -r requirements.txt \
    && /opt/pc-token-broker/bin/pip install --quiet --no-compile --no-deps --no-build-isolation . \
    && /opt/pc-token-broker/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/pc-token-broker/bin/python -m compileall -q /opt/pc-token-broker

FROM ${PYTHON_IMAGE}
# pip is not needed at run time: one tool less in the image (a Debian base has none to remove).
# The volumes' mount points belong to the broker's uid, so a fresh volume can hold its socket.
RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall --yes pip; fi \
    && install -d -o 10001 -g 10001 -m 0755 /run/pc-token-broker /var/lib/pc-token-broker
COPY --from=build /opt/pc-token-broker /opt/pc-token-broker
# No $PC_TOKEN_BROKER_CONFIG: the config's default path is /etc/pc-token-broker/config.toml
# already, and a config named explicitly must be readable, which a tool container running
# `pc-token-broker token --socket ...` from this image has no reason to be able to do.
ENV PATH=/opt/pc-token-broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Config at /etc/pc-token-broker/config.toml, secrets as files (e.g. /run/secrets/...), the unix
# socket in a shared volume, a rotated refresh token in a writable state volume.
VOLUME ["/run/pc-token-broker", "/var/lib/pc-token-broker"]
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pc-token-broker", "healthcheck"]
ENTRYPOINT ["pc-token-broker"]
CMD ["serve"]
